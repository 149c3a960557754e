/*
 * Abuse limits that survive reconnects: token buckets in Redis per user, per source address
 * and per target device, for every costly client frame (docs/CONNSRV.md "Abuse limits",
 * docs/SECURITY.md). One Lua script (EVALSHA; loaded when the connection is made) takes
 * from a batch of buckets atomically, refilling each by Redis's clock; keys are
 * r:l:<kind>:<scope><id> and expire once their bucket would be full again.
 *
 * The decision never waits for Redis: a subject is refused while the last reply for its
 * bucket said it is in debt (until the retry_after Redis computed), and admitted
 * otherwise; the cost is then taken in Redis, possibly into debt (at most one burst).
 * Takes of one loop pass are sent as one EVALSHA per 128 buckets, pipelined on the one
 * connection. So a worker may admit what arrives during one round trip past an empty
 * bucket; the debt makes the subject wait for it afterwards.
 *
 * Without Redis (not connected, or a call failed) the same buckets are kept in this worker
 * only (fail open with a local bucket): Redis holds soft state, and refusing every send
 * while it is away would be an outage; a user spread over W workers then gets W times
 * the rate until Redis is back. Counted in sp_connsrv_limit_local_total.
 *
 * Everything runs on the worker's loop thread.
 */
#ifndef CS_LIMITS_H
#define CS_LIMITS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "connsrv/admit.h"
#include "connsrv/routes.h"
#include "sp_frame.h"

typedef enum {
	CS_LIM_SEND,          /* SEND and SEND_GROUP, one per frame */
	CS_LIM_RECEIPT,       /* READ */
	CS_LIM_MEDIA_BYTES,   /* MEDIA_PUT bytes: the per-user media quota */
	CS_LIM_MEDIA_BLOB,    /* MEDIA_DONE */
	CS_LIM_GROUP,         /* GROUP_CREATE (1 + users listed), GROUP_ADD (users listed) */
	CS_LIM_BUNDLE,        /* BUNDLE_GET, per requester */
	CS_LIM_BUNDLE_TARGET, /* BUNDLE_GET, per target device (the target user without one) */
	CS_LIM_LOOKUP,        /* USER_LOOKUP */
	CS_LIM_PUSH_REGISTER, /* PUSH_REGISTER (a keysrv write each) */
	CS_LIM_PRESENCE,      /* PRESENCE_SUB, PRESENCE_GET (a keysrv rules lookup each) */
	CS_LIM__N
} cs_limit_kind;

typedef enum {
	CS_SCOPE_USER,   /* the logged-in user */
	CS_SCOPE_SOURCE, /* the source address (admit.h: an IPv4 address or an IPv6 /64) */
	CS_SCOPE_TARGET, /* a target device (or user) */
	CS_SCOPE__N
} cs_limit_scope;

/* A bucket's setting: refill per ms and size; per_ms == 0: no limit. */
typedef struct cs_limit_rate {
	double per_ms, burst;
} cs_limit_rate;

typedef struct cs_limits_cfg {
	cs_limit_rate rate[CS_LIM__N][CS_SCOPE__N];
	size_t max_entries; /* local bucket records (subjects seen recently) */
} cs_limits_cfg;

/* Parses "<n>/<s|min|h|day>[,<burst>]" (n and burst may end in K, M or G, powers of 1024;
 * the burst defaults to n), or "off" / "0" for no limit. SP_OK or SP_ECONFIG. */
int cs_limit_parse(const char *spec, cs_limit_rate *out);
/* "send", "receipt", ...: metric labels, option names, Redis keys. */
const char *cs_limit_kind_name(cs_limit_kind k);

/* One bucket to take from. `id` is the user or device; `src` is used for CS_SCOPE_SOURCE;
 * `target_user`: a target scope keyed by a user (no device given). */
typedef struct cs_limit_ask {
	cs_limit_kind kind;
	cs_limit_scope scope;
	uint64_t id;
	const cs_admit_key *src;
	bool target_user;
	double cost;
} cs_limit_ask;

typedef struct cs_limits cs_limits;

/* The buckets go to Redis on routes' connection (cs_routes_redis: one connection, one
 * AUTH, one reconnect loop per worker); the script is loaded as each new connection
 * becomes ready (cs_routes_on_ready: the limits take routes' one hook).
 * `routes` is borrowed: free it before `l` (its pending calls then end with no reply,
 * which does not touch `l`). SP_OK or SP_ENOMEM. */
int cs_limits_new(struct event_base *base, cs_routes *routes, const cs_limits_cfg *cfg,
		  cs_limits **out);
void cs_limits_free(cs_limits *l);

/* The buckets a client frame takes from (at most 4 written to `out`), given the session's
 * user and source; 0 for a frame no limit covers. Bounds its inputs (the frame decoded). */
size_t cs_limits_asks(const sp_frame *f, uint64_t user, const cs_admit_key *src,
		      cs_limit_ask out[4]);

/* All or nothing: admits (returns 0 and takes each ask's cost) unless one of the asks'
 * buckets is in debt; then returns the ms to wait (>= 1) and sets *which to that ask,
 * counts sp_connsrv_limited_total{kind,scope} and logs (rate-limited). */
uint64_t cs_limits_take(cs_limits *l, const cs_limit_ask *asks, size_t n, size_t *which);

bool cs_limits_connected(const cs_limits *l);

#endif
