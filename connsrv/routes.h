/*
 * Device routes in Redis: r:<device> -> "<connsrv pull url>|<conn_epoch>", with an expiry
 * refreshed while the device is connected. Redis holds soft state only: every failure here
 * delays real-time push (the periodic check and the next login repair it), none loses a
 * message. hiredis async on the worker's libevent loop; reconnects by itself.
 */
#ifndef CS_ROUTES_H
#define CS_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

typedef struct cs_routes cs_routes;

/* `addr` is host:port. The connection is made in the background. */
int cs_routes_new(struct event_base *base, const char *addr, int ttl_s, cs_routes **out);
void cs_routes_free(cs_routes *r);

/* old: the previous value ("" if none; NULL on error). Called once, later. */
typedef void (*cs_route_claim_cb)(void *arg, int rc, const char *old);
/* Sets the route and returns the one it replaced (SET ... EX ttl GET). SP_OK: cb will run;
 * an error: it will not. */
int cs_routes_claim(cs_routes *r, uint64_t device, const char *value, cs_route_claim_cb cb,
		    void *arg);

/* Deletes / extends the route only if it still holds `value` (Lua compare-and-delete /
 * compare-and-expire), fire-and-forget. */
void cs_routes_release(cs_routes *r, uint64_t device, const char *value);
void cs_routes_refresh(cs_routes *r, uint64_t device, const char *value);

/* values[i]: route of devices[i] or NULL. Arrays valid during the call only. */
typedef void (*cs_route_lookup_cb)(void *arg, int rc, const char *const *values, size_t n);
int cs_routes_lookup(cs_routes *r, const uint64_t *devices, size_t n, cs_route_lookup_cb cb,
		     void *arg);

bool cs_routes_connected(const cs_routes *r);

#endif
