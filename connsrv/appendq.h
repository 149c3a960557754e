/*
 * Per-shard coalescing of single-device appends. Appends to one shard that are queued
 * during one pass of the event loop leave together, as one APPEND_MULTI request (at most
 * 256 items and CS_APPENDQ_MAX_BYTES of items each), when the pass ends: the flush is an
 * event activated by the first append of the pass, so it adds no delay, and an NNG round
 * trip is paid per shard and pass instead of per append. Each append keeps its own
 * completion. Loop thread only.
 */
#ifndef CS_APPENDQ_H
#define CS_APPENDQ_H

#include <stdint.h>

#include <event2/event.h>

#include "connsrv/shardcall.h"
#include "sp_frame.h"

/* Bytes of items per request: half the large-frame limit's default, so a request stays well
 * under the limit whatever its items are. */
#define CS_APPENDQ_MAX_BYTES (512 * 1024)

typedef struct cs_appendq cs_appendq;

/* Called once per append, on the loop thread and never from inside cs_appendq_add. rc is
 * SP_OK with the entry's seq (for a duplicate: the first append's seq), the SP_E* code the
 * shard gave that item, or the request's failure as cs_shardcall gives it: the code of a
 * non-retryable ERROR reply, a transport error, or SP_EUNAVAIL when the shard stayed
 * unreachable through its retries (seq 0 unless SP_OK). */
typedef void (*cs_appendq_cb)(void *arg, int rc, uint64_t seq);

/* Creates the queues on `base`, sending through `shards` (borrowed: both must outlive it).
 * A request that meets a failover is retried there, the same bytes: APPEND_MULTI is safe
 * to repeat, each item being deduplicated by the shard on (device, from_device, msg_id). */
int cs_appendq_new(struct event_base *base, cs_shardcall *shards, cs_appendq **out);

/* Completes every append not yet sent with SP_ECLOSED, then frees the queues. Appends
 * already sent complete through the rpc dispatcher and the shard calls (cs_rpc_free and
 * cs_shardcall_free run them), which hold no reference to the queues; free those first so
 * that appends queued by their completions are completed here. */
void cs_appendq_free(cs_appendq *q);

/* Queues `item` (an APPEND_ITEM record) for the shard at `url`. The item is copied, but the
 * values it borrows (msg_id, env) must stay valid until `cb` has run. On SP_OK `cb` runs
 * exactly once, later; on error (SP_EFIELDLEN for an env outside its bounds, SP_ENOMEM,
 * SP_ECLOSED after cs_appendq_free began, SP_EINVAL for a url too long) it never runs. */
int cs_appendq_add(cs_appendq *q, const char *url, const sp_frame *item, cs_appendq_cb cb,
		   void *arg);

/* Appends queued and not yet sent (they are sent when the current loop pass ends). */
unsigned cs_appendq_queued(const cs_appendq *q);

#endif
