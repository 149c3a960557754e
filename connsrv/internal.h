/*
 * connsrv's shared state: the server (one per worker process) and the sessions it holds.
 * Everything here runs on the worker's single libevent loop thread; NNG and Redis results
 * are handed back to that thread before they touch a session.
 *
 * Files (who calls whom: session.c dispatches client frames to the handler files; handler
 * files reach other concerns only through srv->ops, set up by main.c):
 *   main.c      options, start-up and shutdown, drain, signals; fills srv->ops
 *   session.c   TLS accept, frame loop, dispatch table, device registry, kicks, close/reap,
 *               pre-login limits (frame size, login deadline)
 *   admit.c     per-source admission at accept: unauthenticated connections, handshake rate
 *   limits.c    abuse limits in Redis per user, source and target (limits.h); session.c asks
 *   login.c     HELLO/AUTH: challenge, key check at keysrv, route claim (login.h)
 *   send.c      SEND and SEND_GROUP: device checks, appends, SENT (send.h)
 *   deliver.c   delivery window, FETCH, push hints, ACK, lost-push check (deliver.h)
 *   receipts.c  READ and DELIVERED receipts as envelopes to a user's devices (receipts.h)
 *   notify.c    after appends: route lookup, DELIVER hints to the holding connsrvs (notify.h)
 *   peer.c      the NNG pull socket (DELIVER hints, KICK) and route refresh (peer.h)
 *   proxy.c     keysrv frames and media frames forwarded (proxy.h)
 *   revoke.c    removed devices kicked wherever they are; sessions' periodic device check
 *   typing.c    TYPING to the recipient's online devices, never stored (typing.h)
 *   presence.c  online / last seen in Redis, subscriptions, coalesced publishing (presence.h)
 *   routes.c    device routes in Redis, the only reader and writer of route values (routes.h)
 *   devcache.c  users' device lists from keysrv, cached
 *   members.c   addresses of shards from the cluster map (keysrv calls: shardcall.c)
 *   appendq.c   per-shard coalescing of appends into APPEND_MULTI (appendq.h)
 *   shardcall.c inbox shard and keysrv calls, retried on the new primary (shardcall.h)
 *   rpc.c       NNG requests and pushes, completed on the loop (rpc.h)
 */
#ifndef CS_INTERNAL_H
#define CS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <nng/nng.h>
#include <openssl/ssl.h>
#include <uthash.h>

#include "connsrv/admit.h"
#include "connsrv/appendq.h"
#include "connsrv/limits.h"
#include "connsrv/routes.h"
#include "connsrv/rpc.h"
#include "connsrv/shardcall.h"
#include "sp_cluster.h"
#include "sp_frame.h"
#include "sp_metrics.h"
#include "sp_proto.h"

#define CS_MAX_INFLIGHT 64      /* server calls in flight per session before reading pauses */

typedef struct cs_cfg {
	char *name;         /* cluster member name, e.g. connsrv-0 */
	char *listen;       /* host:port of the TLS listener */
	char *cert, *key;   /* PEM files */
	bool tls12;
	char *pull;         /* NNG url to listen on for DELIVER/KICK (worker index added to port) */
	char *advertise;    /* the url peers dial for it, when it differs (0.0.0.0 listeners) */
	char *router, *router_pub;
	char *redis;        /* host:port */
	char *redis_user, *redis_password_file;
	long long workers, worker; /* worker: index of this process */
	long long max_conns;
	long long idle_timeout_ms;
	long long expire_after_s; /* told to clients in AUTH_OK: when an undelivered message is expired */
	long long rpc_timeout_ms;
	long long shard_retry_ms;   /* how long an inbox call is retried through a failover */
	long long window;           /* DELIVERs written and not yet ACKed */
	long long out_pause_bytes;  /* stop delivering while the socket holds more */
	long long out_max_bytes;    /* disconnect a client that lets replies pile up past this */
	long long send_rate, send_burst;
	long long route_ttl_s;
	long long check_interval_ms;
	long long check_per_tick;
	long long devcache_ms;
	char *metrics_addr;
	long long metrics_port;
	long long drain_timeout_ms;
	/* Before login (0: off): frame size, the time to log in (PING does not extend it), and
	 * per source (admit.h) unauthenticated connections, handshakes per second and burst,
	 * and the size of the table of sources. */
	long long prelogin_frame_max;
	long long login_timeout_ms;
	long long prelogin_per_source;
	long long handshake_rate, handshake_burst;
	long long source_table_size;
} cs_cfg;

typedef enum {
	CS_ST_HELLO,      /* waiting for HELLO (or registration frames) */
	CS_ST_CHALLENGED, /* CHALLENGE sent, waiting for AUTH */
	CS_ST_AUTHING,    /* AUTH being checked */
	CS_ST_READY,      /* logged in */
} cs_state;

typedef struct cs_server cs_server;

typedef struct cs_session {
	cs_server *srv;
	struct bufferevent *bev;
	bool closing; /* closed or closing: no more frames in or out */
	bool flush_close; /* close once the output buffer has drained */
	bool reaping;     /* on srv->reap: freed when the loop next runs the reaper */
	cs_state st;
	uint8_t nonce[SP_LOGIN_NONCE_LEN];
	uint64_t user, device, conn_epoch;
	char peer[64];
	cs_admit_key src;   /* the source the connection came from */
	bool admit_held;    /* holds one of its source's unauthenticated slots (admit.h) */
	struct event *login_ev; /* the login deadline; NULL when off or logged in */
	unsigned inflight; /* server calls outstanding (cs_session_call_begin/_end) */
	bool read_paused;
	/* Delivery (deliver.c): the highest seq written to the client on this session (every
	 * stored entry at or below it was written on this session: delivery starts at the
	 * oldest entry whatever AUTH's last_seq says), the client's cumulative ACK, and the
	 * last_seq AUTH claimed (only tells a legitimate re-ACK from an out-of-range one). */
	uint64_t sent_seq, acked_seq, claimed_seq;
	bool fetching, refetch, queue_empty_sent, checking;
	/* A cumulative INBOX_ACK is in flight; ack_next: the highest upto the client ACKed
	 * since (0: none), sent when it is answered. */
	bool ack_sending;
	uint64_t ack_next;
	/* Revocation (revoke.c): when the device was last seen in its user's device list
	 * (monotonic ms; set at login), and whether a check is in flight. */
	uint64_t verified_ms;
	bool verifying;
	uint64_t typing_ms; /* the last TYPING taken (typing.c; monotonic ms) */
	struct cs_pres_subs *pres; /* presence subscriptions (presence.c); NULL: none */
	/* Token bucket of the SP_FL_RATED frames. */
	double tokens;
	uint64_t tokens_ms;
	uint64_t last_seen_ms;
	UT_hash_handle hh; /* srv->by_device, once logged in */
	struct cs_session *prev, *next; /* srv->sessions, srv->closed or srv->reap */
} cs_session;

/* How one concern reaches another (nng's ops tables): handler files never call each other
 * by name. main.c points srv->ops at the real functions; a unit test may point it at fakes.
 * Each runs on the loop thread and returns without calling back into its caller. */
typedef struct cs_ops {
	/* A DELIVER hint (seq, device, conn_epoch set) for a device of this worker: from
	 * notify.c and peer.c to deliver.c (cs_deliver_push). */
	void (*push)(cs_server *srv, const sp_frame *deliver);
	/* Entries were appended: tell the connsrvs holding `devices` (seqs[i] is devices[i]'s).
	 * `entry` is the DELIVER frame without SEQ/DEVICE/CONN_EPOCH, borrowed for the call.
	 * From send.c and receipts.c to notify.c (cs_notify_appended). */
	void (*notify)(cs_server *srv, const sp_frame *entry, const uint64_t *devices,
		       const uint64_t *seqs, size_t n);
	/* The shard deleted the entries of the session's ACK; `acked` is its ACKED reply,
	 * borrowed for the call. From deliver.c to receipts.c (cs_receipts_acked). */
	void (*acked)(cs_session *s, const sp_frame *acked);
} cs_ops;

typedef struct cs_devcache cs_devcache;

struct cs_server {
	cs_cfg cfg;
	const cs_ops *ops;
	struct event_base *base;
	SSL_CTX *tls;
	struct evconnlistener *listener;
	cs_admit *admit; /* per-source admission of the listener's connections */
	cs_rpc *rpc;
	cs_shardcall *shards; /* every inbox shard call: retried on the shard's new primary */
	cs_appendq *appendq; /* 1:1 and receipt appends, coalesced per shard */
	cs_routes *routes;
	cs_limits *limits; /* abuse limits of the costly frames (session.c asks before dispatch) */
	sp_cluster *cluster;
	cs_devcache *devcache;
	struct cs_presence *presence; /* presence.c */
	char pull_url[256];   /* what peers dial (routes carry it) */
	char pull_listen[256];
	nng_socket pull;
	nng_aio *pull_aio;
	struct event *pull_ev;
	void *pull_q; /* peer.c: received messages waiting for the loop */
	cs_session *sessions;  /* open connections */
	cs_session *closed;    /* closing: flushing, or server calls outstanding */
	cs_session *reap;      /* closed and unreferenced: freed by reap_ev */
	struct event *reap_ev;
	cs_session *by_device; /* logged-in sessions by device id */
	cs_session *check_cursor;
	uint64_t nconns;
	unsigned nflushing; /* closed sessions still writing their last frames */
	bool draining;
	struct event *check_ev, *refresh_ev, *sig_hup, *sig_term, *sig_int, *drain_ev;
	uint64_t drain_deadline_ms;
	struct evhttp *metrics_http;
	struct {
		sp_metric *conns, *accepts, *rejects, *logins, *login_fail, *kicks, *revoked,
			  *typing_sent, *typing_dropped, *frames_in,
			*frames_out, *sends, *sent_latency, *deliveries, *delivered_rt, *drains,
			*gap_fetches, *checks, *errors, *acks, *receipts, *rpc_latency, *redis_latency,
			*rate_limited, *malformed, *slow_pauses, *receipts_dropped, *fetches_dropped,
			*acks_dropped, *acks_merged, *pushes_dropped, *pushes_stale, *peer_dropped, *checks_failed,
			*acks_refused, *acks_clamped;
		/* sp_connsrv_prelogin_refused_total{reason}: admit verdicts, then frame size
		 * and login deadline. */
		sp_metric *prelogin_refused[CS_ADMIT_TABLE + 1], *prelogin_frame, *prelogin_timeout;
	} m;
};

/* ---- session.c: connections, dispatch, the device registry ---- */
/* The reaper (an event on srv->base) / shutdown: frees every closed session. */
int cs_session_start(cs_server *srv);
void cs_session_stop(cs_server *srv);
/* A session on `bev` (TLS from the listener; a test may give a bufferevent pair), owned by
 * srv from then on. NULL if out of memory (the caller keeps bev). */
cs_session *cs_session_new(cs_server *srv, struct bufferevent *bev, const char *peer);
/* Queues `f` to the client (with the session's framing). A client whose output has piled
 * up past out_max_bytes is disconnected instead. Returns SP_OK or an error. */
int cs_session_send(cs_session *s, const sp_frame *f);
/* Sends ERROR{code, reason[, msg_id]} echoing request id `id`. */
void cs_session_error(cs_session *s, uint64_t id, bool has_id, int code, const char *reason,
		      const uint8_t *msg_id);
/* Closes now (after a best-effort flush of what is queued when `flush` is set): the session
 * leaves the device registry and its route at once, refuses frames in and out, and is freed
 * later from the loop once no server call is outstanding for it. Safe to call from any
 * callback, also on a closing session; the session stays valid until the callback returns. */
void cs_session_close(cs_session *s, bool flush);
/* Counts a server call made for the session: the session is not freed before _end (a
 * closing one is, after it), and reading pauses while CS_MAX_INFLIGHT are outstanding. */
void cs_session_call_begin(cs_session *s);
void cs_session_call_end(cs_session *s);
bool cs_session_output_full(const cs_session *s);
/* Listens on cfg.listen with per-source admission (srv->admit, freed by cs_session_stop). */
int cs_server_accept_start(cs_server *srv);
/* The first frame type whose catalogue tier (SP_TIER_CONNSRV or not) disagrees with the
 * dispatch table (a handler or none), or -1 when they agree. */
int cs_session_dispatch_mismatch(void);
/* Login checked (user, device, conn_epoch set): the session becomes the device's, an older
 * session of the device on this worker is kicked, and the session is READY. */
void cs_session_bind(cs_session *s);
/* The login's AUTH_OK is written: delivery starts (see cs_deliver_login for `last_seq`). */
void cs_session_logged_in(cs_session *s, uint64_t last_seq);
/* KICKED {reason: `why`, NULL: "logged in elsewhere"} and closes the device's session if
 * it is still the one of `conn_epoch`. */
void cs_session_kick(cs_server *srv, uint64_t device, uint64_t conn_epoch, const char *why);

/* ---- members.c: addresses from the current cluster map ---- */
/* NNG url of the inbox shard that owns `device` / of the blob id, copied into
 * buf (the cluster map may change under us). SP_OK or SP_EUNAVAIL when the map has none. */
int cs_members_shard_url(cs_server *srv, uint64_t device, char *buf, size_t cap);
int cs_members_blob_url(cs_server *srv, const uint8_t *blob_id, size_t len, char *buf,
			size_t cap);

/* ---- devcache.c: device lists of users (from keysrv), cached for a short time ---- */
typedef void (*cs_devices_cb)(void *arg, int rc, const uint64_t *devices, size_t n);
int cs_devcache_new(cs_server *srv, cs_devcache **out);
void cs_devcache_free(cs_devcache *c);
/* Calls cb once, later on the loop (never inside this call), with the devices of `user`;
 * `fresh` bypasses the cache. */
void cs_devcache_get(cs_server *srv, uint64_t user, bool fresh, cs_devices_cb cb, void *arg);
void cs_devcache_forget(cs_server *srv, uint64_t user);

#endif
