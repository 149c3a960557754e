/* The router process: one libevent loop thread owns the map, the NNG sockets (polled
 * through their file descriptors) and the HTTP endpoints, so nothing here takes a lock. */
#ifndef ROUTER_INTERNAL_H
#define ROUTER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "map.h"
#include "sp_etcd.h"
#include "sp_metrics.h"

struct event_base;
struct sp_frame;
struct event;
typedef struct router_server router_server;
typedef struct router_http router_http;
typedef struct router_etcd router_etcd;
typedef struct router_store router_store;

typedef struct router_config {
	const char *cluster_file;
	const char *state_file; /* NULL: cluster_file + ".state" */
	const char *listen_url;
	const char *publish_url;
	const char *http_addr;
	int http_port; /* 0: any free port */
	uint64_t heartbeat_timeout_ms;
	const char *etcd_endpoints; /* NULL: no etcd mirror (every copy's role unknown) */
	const char *etcd_ca, *etcd_cert, *etcd_key; /* PEM files for https and client auth */
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
	uint64_t timeout_ms;
	sp_metric *m_members[4][2]; /* [role][healthy] */
	sp_metric *m_draining, *m_epoch, *m_heartbeats, *m_publishes, *m_where_ok, *m_where_none;
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

/* HTTP side (http.c): /where, /map, /drain, /undrain, /health, /metrics. *bound_port is
 * the port actually bound (useful with port 0). */
int router_http_start(router *r, const char *addr, int port, router_http **out, int *bound_port);
void router_http_free(router_http *h);

#endif
