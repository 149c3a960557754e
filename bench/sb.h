/*
 * spbench internals: a load generator that drives a Sealpost cluster through the real
 * client protocol (TLS 1.3, HELLO/CHALLENGE/AUTH, SEND/DELIVER/ACK) with many libevent
 * connections per process and, when asked, several processes (one event loop each).
 *
 * Modules: sb_hist (latency histograms), sb_conn (one client connection), sb_accounts
 * (registration and the account cache), sb_proc (worker processes, their stats and the
 * progress line), sb_sys (/proc, HTTP, cluster discovery), sb_track (payloads and the
 * lost/duplicate check), sb_crypto (optional Signal sessions), and one sb_scen_*.c per
 * scenario. Everything runs on one libevent loop per process; nothing is shared between
 * processes except through the stats pipe.
 */
#ifndef SB_H
#define SB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include <sodium.h>

#include "sp_frame.h"

/* ---- options ---- */

#define SB_MAX_TARGETS 8
#define SB_MAX_PIDS 128

typedef struct sb_target {
	char host[64];
	int port;
	char name[64];
} sb_target;

typedef struct sb_opts {
	const char *scenario;
	const char *router, *ca, *accounts;
	const char *state_dir;
	bool json, crypto, quiet;
	int procs;
	int conns;        /* connections: how many */
	int hold_s;       /* connections: seconds to hold them after the last login */
	int concurrency;  /* handshakes + logins in flight per process */
	int sources;      /* 127.0.0.x source addresses to spread connections over */
	int pairs;        /* throughput/latency: sender/recipient pairs */
	int window;       /* throughput: messages in flight per pair; group: per sender */
	double duration_s;
	double rate;      /* latency: messages per second (all pairs together) */
	int size;         /* payload bytes */
	int users, queued;      /* storm: devices and messages queued for each */
	int storm_senders;
	char group_sizes[128];  /* group: comma-separated member counts */
	int group_msgs;         /* group: messages per group size and phase */
	int timeout_s;          /* whole run bound */
	char inbox_metrics[512];/* host:port,... of the shards' metrics endpoints */
	char connsrv_pids[512]; /* pid,... of connsrv processes (workers are found from them) */
	sb_target targets[SB_MAX_TARGETS];
	int ntargets;
} sb_opts;

extern sb_opts sb_o;

/* ---- histograms (microseconds; log-linear, 1/64 relative resolution) ---- */

#define SB_HIST_BUCKETS (128 + 25 * 64)

typedef struct sb_hist {
	uint64_t n, sum_us, max_us;
	uint32_t b[SB_HIST_BUCKETS];
} sb_hist;

void sb_hist_add(sb_hist *h, uint64_t us);
void sb_hist_merge(sb_hist *dst, const sb_hist *src);
/* The p-th percentile (0 < p <= 100) in milliseconds (upper bound of its bucket), 0 if empty. */
double sb_hist_pct_ms(const sb_hist *h, double p);

/* ---- statistics of one process (summed across processes by the parent) ---- */

typedef struct sb_stats {
	uint64_t conns_target, conns_tls, conns_ready, conn_fail, login_fail, closed;
	uint64_t sent, sent_ok, rate_limited, send_err;
	uint64_t delivered, receipts, dups, lost, bad_payload, drained, acks;
	uint64_t sent_ok_win, delivered_win; /* within the measured --duration (tails excluded) */
	uint64_t crypto_enc, crypto_dec, crypto_enc_ns, crypto_dec_ns, crypto_fail;
	/* CLOCK_MONOTONIC ns (the machine's clock, comparable across processes); 0 = unset. */
	uint64_t t_first_connect, t_last_ready, t_go, t_last_send, t_last_delivery, t_done;
	sb_hist lat_sent, lat_recv, lat_login;
} sb_stats;

void sb_stats_merge(sb_stats *dst, const sb_stats *src);

/* ---- accounts ---- */

typedef struct sb_account {
	uint64_t user, device;
	uint8_t sk[crypto_sign_SECRETKEYBYTES];
	char phone[24];
} sb_account;

/* Loads the cache (opts.accounts) and registers more accounts until there are `need`,
 * appending each new one to the cache. On SP_OK *out (caller frees) holds at least
 * `need` accounts. */
int sb_accounts_get(size_t need, sb_account **out, size_t *n);

/* ---- one client connection (libevent + OpenSSL) ---- */

typedef struct sb_net {
	struct event_base *base;
	SSL_CTX *tls;
	sb_stats *st;
	unsigned next_src;
} sb_net;

int sb_net_init(sb_net *net, sb_stats *st);
void sb_net_fini(sb_net *net);

typedef struct sb_conn sb_conn;

enum {
	SB_EV_TLS,    /* handshake done; no login (registration connections) */
	SB_EV_READY,  /* AUTH_OK */
	SB_EV_EMPTY,  /* QUEUE_EMPTY: the inbox drain after login is over */
	SB_EV_FRAME,  /* any other frame (DELIVERs are ACKed by the connection itself) */
	SB_EV_CLOSED, /* the connection is gone (failed, closed by the server or by us) */
};

typedef void (*sb_conn_cb)(sb_conn *c, int ev, const sp_frame *f);

struct sb_conn {
	sb_net *net;
	const sb_account *acct; /* NULL: TLS only */
	sb_conn_cb cb;
	void *user;
	size_t idx;
	int tag; /* the scenario's */
	int target;
	int fd;
	struct event *cev;
	struct bufferevent *bev;
	int state;
	uint64_t t_start, last_seq, acked_seq;
	bool open, empty;
};

/* Starts connecting to target `target` from the next source address; the result comes to
 * cb (SB_EV_READY or SB_EV_TLS, else SB_EV_CLOSED). `c` must stay put until closed. */
int sb_conn_start(sb_conn *c, sb_net *net, int target, const sb_account *acct, sb_conn_cb cb,
		  void *user);
/* Queues a frame; SP_ECLOSED when the connection is not open. */
int sb_conn_send(sb_conn *c, const sp_frame *f);
/* Closes without calling cb. Safe on a never-started or closed connection. */
void sb_conn_close(sb_conn *c);
/* Bytes waiting in the connection's output buffer. */
size_t sb_conn_outq(const sb_conn *c);

/* ---- payloads and the lost/duplicate check ---- */

#define SB_PAYLOAD_MIN 32

/* What a benchmark message carries, in its payload and (stream, seq, t) in its msg_id. */
typedef struct sb_msg {
	uint32_t run;    /* this run's random id: leftovers of earlier runs are ignored */
	uint32_t stream; /* sender/recipient pair (or recipient) index */
	uint32_t seq;    /* per-stream sequence number */
	uint64_t t_ns;   /* scheduled send time, CLOCK_MONOTONIC */
} sb_msg;

/* Writes the payload (header and padding): `len` bytes, len >= SB_PAYLOAD_MIN. */
void sb_payload_make(uint8_t *p, size_t len, const sb_msg *m);
/* Parses a payload; false if it is not one of ours. */
bool sb_payload_parse(const uint8_t *p, size_t len, sb_msg *m);
/* msg_id = stream, seq, t (unique per message of a run; the shards dedup on it). */
void sb_msg_id(uint8_t id[16], const sb_msg *m);
void sb_msg_from_id(const uint8_t id[16], sb_msg *m);

/* Which seqs of one stream were received: a growable bitmap. */
typedef struct sb_track {
	uint8_t *bits;
	size_t cap; /* bits */
	uint64_t distinct;
} sb_track;

/* Marks seq; returns 1 if new, 0 if a duplicate, negative on allocation failure. */
int sb_track_mark(sb_track *t, uint64_t seq);
/* How many of seqs [0, n) were never marked. */
uint64_t sb_track_missing(const sb_track *t, uint64_t n);
/* How many seqs marked in `want` are not marked in `got`. */
uint64_t sb_track_lost(const sb_track *want, const sb_track *got);
void sb_track_free(sb_track *t);

/* ---- optional Signal-protocol encryption between a sender and a recipient ---- */

typedef struct sb_crypto_pair sb_crypto_pair;
/* A session pair set up locally (X3DH + the first reply), as two devices would after a
 * bundle fetch. On SP_OK *out is the caller's (sb_crypto_pair_free). */
int sb_crypto_pair_new(sb_crypto_pair **out);
void sb_crypto_pair_free(sb_crypto_pair *p);
/* Sender side: encrypts pt; *out (caller frees) is the ciphertext. Timed into st. */
int sb_crypto_encrypt(sb_crypto_pair *p, sb_stats *st, const uint8_t *pt, size_t len, uint8_t **out,
		      size_t *outlen);
/* Recipient side: decrypts into *pt (caller frees). Timed into st. */
int sb_crypto_decrypt(sb_crypto_pair *p, sb_stats *st, const uint8_t *ct, size_t len, uint8_t **pt,
		      size_t *ptlen);

/* ---- worker processes ---- */

typedef struct sb_worker sb_worker;

/* A scenario's per-process part. `setup` starts the work (connects, provisioning-free
 * preparation) and calls sb_worker_ready when the process is ready for the measured
 * phase; `go` starts it; `stop` (the parent's request, or the run's timeout) asks it to
 * finish; the scenario calls sb_worker_done when it has. */
typedef struct sb_scen {
	const char *name;
	void (*setup)(sb_worker *w);
	void (*go)(sb_worker *w);
	void (*stop)(sb_worker *w);
	void *arg; /* scenario data prepared by the parent before the fork */
} sb_scen;

struct sb_worker {
	const sb_scen *sc;
	int idx, nprocs;
	sb_net net;
	sb_stats st;
	int ctl_fd, rep_fd;
	struct event *ctl_ev, *tick_ev;
	bool ready_sent, done_sent;
	void *priv; /* the scenario's per-process state */
};

void sb_worker_ready(sb_worker *w);
void sb_worker_done(sb_worker *w);
/* This process's share [lo, hi) of n items. */
void sb_worker_slice(const sb_worker *w, size_t n, size_t *lo, size_t *hi);

/* Parent side. `on_ready` runs once every process is ready (NULL: go at once); it returns
 * true to send go, false to send stop (e.g. after holding connections). `on_progress` may
 * add to the progress line. Blocks until every process is done (or the timeout) and
 * leaves the sum of their stats in *total. SP_OK if every process exited cleanly. */
typedef bool (*sb_ready_fn)(const sb_stats *total, void *arg);
int sb_procs_run(const sb_scen *sc, int nprocs, sb_ready_fn on_ready, void *arg, sb_stats *total);

/* Prints a progress line to stderr (unless --quiet). */
void sb_progress(const char *phase, const sb_stats *s, double elapsed_s);

/* ---- system: /proc, HTTP, cluster ---- */

uint64_t sb_now_ns(void);
/* GET http://hostport/path; on SP_OK *body (caller frees) is the response body. */
int sb_http_get(const char *hostport, const char *path, char **body);
/* Fills opts.targets from the router's /map (connsrvs that are healthy). */
int sb_discover(void);
/* Sum of VmRSS (bytes) of the connsrv processes and their worker children; *nproc = how
 * many processes were counted. */
uint64_t sb_connsrv_rss(int *nproc);
/* Kernel TCP buffer memory (bytes, from /proc/net/sockstat "mem" pages). */
uint64_t sb_kernel_tcp_mem(void);
/* Kernel slab memory (bytes, /proc/meminfo Slab): sockets, files, epoll items live there. */
uint64_t sb_kernel_slab(void);
/* Sums metric `name` (first sample line) over the inbox metrics endpoints; -1 if none. */
double sb_inbox_metric(const char *name);

/* ---- scenarios ---- */

typedef struct sb_result {
	const char *scenario;
	sb_stats st;
	double elapsed_s, sent_per_s, delivered_per_s, login_per_s;
	uint64_t connections;
	double rss_per_conn, kernel_mem_per_conn, kernel_slab_per_conn, rss_total;
	int connsrv_procs;
	double extra[16];
	const char *extra_names[16];
	int nextra;
	void *json_extra; /* json_t * with scenario-specific results, owned */
} sb_result;

void sb_result_extra(sb_result *r, const char *name, double v);

int sb_scen_connections(sb_result *r);
int sb_scen_throughput(sb_result *r);
int sb_scen_latency(sb_result *r);
int sb_scen_storm(sb_result *r);
int sb_scen_group(sb_result *r);

#endif
