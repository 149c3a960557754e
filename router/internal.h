/* The router process: one libevent loop thread owns the map, the NNG sockets (polled
 * through their file descriptors) and the HTTP endpoints, so nothing here takes a lock. */
#ifndef ROUTER_INTERNAL_H
#define ROUTER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "map.h"
#include "sp_etcd.h"
#include "sp_metrics.h"

/* Why an admin request was refused (the reason label of sp_router_admin_refused_total). */
typedef enum {
	ROUTER_ADMIN_REFUSED_NO_TOKEN,	/* admin listener: no bearer credential */
	ROUTER_ADMIN_REFUSED_BAD_TOKEN, /* admin listener: a credential that is not the token */
	ROUTER_ADMIN_REFUSED_PUBLIC,	/* an admin endpoint asked on the public listener */
	ROUTER_ADMIN_REFUSED_N
} router_admin_refusal;

struct event_base;
struct sp_frame;
struct event;
typedef struct router_server router_server;
typedef struct router_http router_http;
typedef struct router_etcd router_etcd;
typedef struct router_store router_store;
typedef struct router_admin_token router_admin_token;

typedef struct router_config {
	const char *cluster_file;
	const char *state_file; /* NULL: cluster_file + ".state" */
	const char *listen_url;
	const char *publish_url;
	const char *http_addr;
	int http_port; /* 0: any free port */
	const char *admin_addr;
	int admin_port;		    /* -1: no admin listener; 0: any free port */
	const char *admin_token_file; /* NULL: no admin listener, unless admin_no_token */
	bool admin_no_token;	    /* admin listener without a token (loopback only) */
	bool public_map;	    /* GET /map on the public listener too */
	uint64_t heartbeat_timeout_ms;
	const char *etcd_endpoints; /* NULL: no etcd mirror (every copy's role unknown) */
	const char *etcd_ca, *etcd_cert, *etcd_key; /* PEM files for https and client auth */
	const char *etcd_user, *etcd_password; /* etcd with auth enabled (NULL: none) */
	const char *etcd_cluster;   /* NULL: "sealpost" */
} router_config;

typedef struct router {
	router_map *map;
	char *state_path;
	struct event_base *base;
	struct event *tick;
	struct event *sigint, *sigterm;
	router_server *server;
	router_http *http;
	router_etcd *etcd; /* NULL without --etcd */
	router_store *store; /* NULL without --etcd: then this router's own map is published */
	struct event *status_timer; /* republishes LSN-only changes, at most once a second */
	bool status_pending;
	uint64_t last_publish_ms;
	int http_port; /* as bound */
	int admin_port; /* as bound; -1: no admin listener */
	uint64_t timeout_ms;
	sp_metric *m_members[4][2]; /* [role][healthy] */
	sp_metric *m_draining, *m_epoch, *m_heartbeats, *m_publishes, *m_where_ok, *m_where_none;
	sp_metric *m_admin_refused[ROUTER_ADMIN_REFUSED_N]; /* by router_admin_refusal */
} router;

/* Monotonic milliseconds: the clock of heartbeat health. */
uint64_t router_now_ms(void);

/* After the map changed (epoch bumped): saves the state file (before anyone can see the
 * new epoch), publishes the MAP and updates the gauges. */
void router_changed(router *r);

/* With the map in etcd: after the store installed a new map read from etcd, publishes it
 * and updates the gauges. */
void router_published(router *r);

/* After LSN-only changes (no epoch bump yet): bumps and publishes once at least a second
 * has passed since the last publication, so that copies' status updates cannot flood the
 * members with maps; any publication before then carries them anyway. */
void router_status_changed(router *r);

/* Sets up everything from `cfg`; on SP_ECONFIG `err` says why. On SP_OK *out is the
 * caller's: router_run, then router_free. */
int router_new(const router_config *cfg, router **out, char *err, size_t errlen);

/* Runs the loop until SIGINT/SIGTERM. */
int router_run(router *r);
void router_free(router *r);

/* NNG side (server.c): REP for MAP_GET/HEARTBEAT, PUB for map changes. */
int router_server_start(router *r, const char *listen_url, const char *publish_url,
			router_server **out);
int router_server_publish(router_server *s, const router_map *m);
/* Publishes an encoded MAP frame as it is (the map read from etcd). */
int router_server_publish_frame(router_server *s, const struct sp_frame *f);
void router_server_free(router_server *s);
/* Whether the REP socket has a handler for frame type `type`. */
bool router_server_serves(unsigned type);

/* The etcd mirror (etcd.c): a thread that reads and watches every inbox shard's group
 * under /sealpost/<cluster>/ and applies each fresh view on the loop. SP_ECONFIG with
 * `err` set for bad endpoints or cluster name. On SP_OK *out is the caller's. */
int router_etcd_start(router *r, const sp_etcd_cfg *etcd, const char *cluster,
		      router_etcd **out, char *err, size_t errlen);
/* Stops and joins the thread (within about a second), then frees. NULL is a no-op. */
void router_etcd_free(router_etcd *e);

/* The map in etcd (store.c): with --etcd every router publishes the map etcd holds, and
 * the one holding the leader key writes its own view there. SP_ECONFIG with `err` set for
 * bad endpoints. `self` names this router in the leader key. On SP_OK *out is the
 * caller's. */
int router_store_start(router *r, const sp_etcd_cfg *etcd, const char *cluster,
		       const char *self, router_store **out, char *err, size_t errlen);
/* Loop: this router's view changed; the leader writes it to etcd if it differs. */
void router_store_offer(router_store *s, const router_map *m);
/* Loop: sets or clears draining/<name> in etcd (a blocking call, bounded by the etcd
 * timeout). SP_OK or the etcd error. */
int router_store_set_draining(router_store *s, const char *name, bool draining);
/* Loop: the map last read from etcd (owned by the store, valid until the next loop
 * callback), with its epoch and etcd revision; NULL before the first. */
const struct sp_frame *router_store_map(router_store *s, uint64_t *epoch, int64_t *rev);
/* Whether this router holds the leader key (any thread). */
bool router_store_leader(router_store *s);
/* Stops and joins the thread (revoking its lease), then frees. NULL is a no-op. */
void router_store_free(router_store *s);

/* HTTP side (http.c): the public listener (/where, /health, /metrics, and /map unless
 * cfg->public_map is false) and the admin listener (/drain, /undrain, /map, /health, each
 * only with the operator token). Sets r->http_port and r->admin_port to the ports bound
 * (useful with port 0; admin_port -1 when there is no admin listener). SP_ECONFIG (a bad
 * token file or admin option) or SP_EIO (cannot listen) with `err` set. On SP_OK *out is
 * the caller's, freed with router_http_free. */
int router_http_start(router *r, const router_config *cfg, router_http **out, char *err,
		      size_t errlen);
void router_http_free(router_http *h);

/* The operator token (admin.c). */
#define ROUTER_ADMIN_TOKEN_MIN 16
#define ROUTER_ADMIN_TOKEN_MAX 512
typedef enum { ROUTER_ADMIN_OK, ROUTER_ADMIN_NO_TOKEN, ROUTER_ADMIN_BAD_TOKEN } router_admin_auth;
/* Reads the token from `path`: the file's content less trailing white space,
 * ROUTER_ADMIN_TOKEN_MIN..MAX visible ASCII characters. Refuses (SP_ECONFIG, `err` naming
 * the file and why, never the content) a file that is not regular or that group or others
 * have any access to. On SP_OK *out is the caller's, freed with router_admin_token_free. */
int router_admin_token_load(const char *path, router_admin_token **out, char *err, size_t errlen);
/* Checks an Authorization header value (NULL: none) against the token: OK for
 * "Bearer <token>" (scheme case-insensitive), NO_TOKEN when it holds no bearer credential,
 * BAD_TOKEN otherwise. Takes the same time whatever part of the token matched. */
router_admin_auth router_admin_check(const router_admin_token *t, const char *authorization);
/* Wipes and frees; NULL is a no-op. */
void router_admin_token_free(router_admin_token *t);

#endif
