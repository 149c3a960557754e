/*
 * Device routes in Redis: r:<device> -> "<connsrv pull url>|<conn_epoch>", with an expiry
 * refreshed while the device is connected. routes.c is the only file that writes or parses
 * that value; the rest of connsrv sees (url, epoch). Redis holds soft state only: every
 * failure here delays real-time push (the periodic check and the next login repair it), none
 * loses a message. hiredis async on the worker's libevent loop; reconnects by itself.
 */
#ifndef CS_ROUTES_H
#define CS_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

typedef struct cs_routes cs_routes;

/* `addr` is host:port. With a password, every connection starts with AUTH (as `user`, an
 * ACL user, or the default user when user is NULL or ""), and is used only once Redis
 * accepted it; a refused AUTH is logged (never the password) and retried like a failed
 * connect. SP_ECONFIG: a bad address, a user without a password, or either too long. The
 * connection is made in the background. */
int cs_routes_new(struct event_base *base, const char *addr, const char *user,
		  const char *password, int ttl_s, cs_routes **out);
void cs_routes_free(cs_routes *r);

/* A route read back from Redis, parsed: the pull url of the connsrv worker holding the
 * device and the connection's epoch. url is NULL when there is no route (or the stored value
 * is not one). Valid during the callback only. */
typedef struct cs_route {
	const char *url;
	uint64_t epoch;
} cs_route;

/* old: the route replaced (old->url NULL if none); old is NULL on error. Called once, later. */
typedef void (*cs_route_claim_cb)(void *arg, int rc, const cs_route *old);
/* Sets the device's route to (url, epoch) and returns the one it replaced (SET ... EX ttl
 * GET). SP_OK: cb will run; an error: it will not. */
int cs_routes_claim(cs_routes *r, uint64_t device, const char *url, uint64_t epoch,
		    cs_route_claim_cb cb, void *arg);

/* Deletes / extends the route only if it still is (url, epoch) (Lua compare-and-delete /
 * compare-and-expire), fire-and-forget. */
void cs_routes_release(cs_routes *r, uint64_t device, const char *url, uint64_t epoch);
void cs_routes_refresh(cs_routes *r, uint64_t device, const char *url, uint64_t epoch);

/* routes[i]: route of devices[i]. */
typedef void (*cs_route_lookup_cb)(void *arg, int rc, const cs_route *routes, size_t n);
int cs_routes_lookup(cs_routes *r, const uint64_t *devices, size_t n, cs_route_lookup_cb cb,
		     void *arg);

bool cs_routes_connected(const cs_routes *r);

/* One command (argv form) on the same connection, for another concern's soft state in
 * Redis (push wake-ups: connsrv/push.h); its keys must start with "r:". `cb` runs once,
 * later, with SP_OK or SP_EREDIS (an error reply or a lost connection). An error here
 * (SP_EREDIS: not connected; SP_ENOMEM): cb never runs. */
typedef void (*cs_routes_cmd_cb)(void *arg, int rc);
int cs_routes_command(cs_routes *r, int argc, const char **argv, const size_t *lens,
		      cs_routes_cmd_cb cb, void *arg);
/* The Redis connection, for the other soft state connsrv keeps there (presence.c; keys
 * under "r:"), or NULL while it is not connected and authenticated. Commands sent on it
 * run in order with the route commands. Pending callbacks run with a NULL reply when it
 * goes (cs_routes_free included). */
struct redisAsyncContext *cs_routes_redis(cs_routes *r);
/* Counts the connections made ready so far (0: none yet): a change means a new
 * connection, maybe to a restarted Redis (per-connection set-up, e.g. a script, is due). */
uint64_t cs_routes_generation(const cs_routes *r);
/* `cb(arg)` runs each time a connection becomes ready (after its AUTH), before any other
 * callback on it, so that set-up commands sent from it go first. One hook; NULL clears it.
 * `arg` must stay valid while the hook is set or until cs_routes_free. */
void cs_routes_on_ready(cs_routes *r, void (*cb)(void *arg), void *arg);

#endif
