/*
 * Push wake-ups, connsrv's side (docs/PUSH.md): after an append is acknowledged for a
 * device with no route (offline), a wake-up is made due `delay` later in Redis (sorted set
 * r:push:due, member the device id, score the due time in ms; ZADD NX keeps the earliest);
 * a login of that device cancels it (ZREM). pushsrv sends what falls due. Soft state: a
 * command that fails is counted (sp_connsrv_push_errors_total) and costs at most one
 * wake-up. Loop thread only; nothing here calls back into the caller.
 */
#ifndef CS_PUSH_H
#define CS_PUSH_H

#include <stdint.h>

#include "connsrv/internal.h"

/* The Redis key of the due set (shared with pushsrv/queue.c). */
#define CS_PUSH_DUE_KEY "r:push:due"

/* delay_ms: how long after the append a wake-up falls due; 0 turns wake-ups off (nothing
 * is recorded). Registers the metrics; call once before the loop. */
void cs_push_init(int delay_ms);

/* An entry was stored for `device`, which has no route. */
void cs_push_due(cs_server *srv, uint64_t device);

/* `device` logged in: its pending wake-up is dropped. */
void cs_push_cancel(cs_server *srv, uint64_t device);

#endif
