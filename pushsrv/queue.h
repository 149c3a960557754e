/*
 * pushsrv's soft state in Redis (docs/PUSH.md), all under r: (the ACL user may touch only
 * ~r:*):
 *   r:push:due          sorted set: device -> due time (ms); connsrv adds (ZADD NX), a login
 *                       removes, pushsrv pops what is due and re-adds a retry (ZADD LT)
 *   r:push:sent:<dev>   exists while the device's period runs (SET NX PX): one wake-up
 *                       per device per period, across every pushsrv
 *   r:push:try:<dev>    failed attempts of the current wake-up (INCR, expires)
 *   r:<dev>             the device's route (connsrv/routes.h): present while it is online
 * Blocking hiredis; a failed command drops the connection, and the next call reconnects.
 * Not thread-safe. Errors: SP_EREDIS (no connection, an error reply), SP_ENOMEM.
 */
#ifndef PS_QUEUE_H
#define PS_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ps_queue ps_queue;

/* addr: host:port; user/password as connsrv's (password NULL or "": no AUTH; copied).
 * SP_ECONFIG for a bad address. Connects on first use. */
int ps_queue_new(const char *addr, const char *user, const char *password, int timeout_ms,
		 ps_queue **out);
void ps_queue_free(ps_queue *q);

/* Atomically removes and returns up to `max` devices due at or before now_ms (one Lua
 * script, so two pushsrv never pop the same entry). Members that are not a device id are
 * removed and counted in *bad. */
int ps_queue_pop(ps_queue *q, uint64_t now_ms, uint64_t *devices, size_t max, size_t *n,
		 size_t *bad);

/* Whether the device has a route (is connected somewhere). */
int ps_queue_online(ps_queue *q, uint64_t device, bool *online);

/* Starts the device's period (period_ms) unless one runs: *claimed, else *left_ms is what
 * is left of it. */
int ps_queue_claim(ps_queue *q, uint64_t device, int period_ms, bool *claimed,
		   int64_t *left_ms);
/* Ends the device's period early (a wake-up that did not go out). */
int ps_queue_unclaim(ps_queue *q, uint64_t device);

/* Makes a wake-up due at due_ms, or earlier if one is already due sooner (ZADD LT). */
int ps_queue_schedule(ps_queue *q, uint64_t device, uint64_t due_ms);

/* Counts a failed attempt: *attempt is the count including this one. */
int ps_queue_failed_attempt(ps_queue *q, uint64_t device, int *attempt);
/* Forgets the failed attempts (the wake-up went out, or was given up). */
int ps_queue_forget(ps_queue *q, uint64_t device);

#endif
