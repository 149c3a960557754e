/*
 * Calls to inbox shards and the key store that outlive a failover. A shard (and the key
 * store) has several copies, one of them primary, and the cluster map names the primary
 * of each. A call may meet a copy that
 * is no longer primary (ERROR SP_ENOTPRIMARY), a primary that cannot reach enough copies
 * (ERROR SP_EUNAVAIL, perhaps with retry_after), or a copy that is dead (NNG timeout,
 * connection closed). Such a call is sent again, the same bytes, after a backoff (50 ms
 * doubling to 1 s, jittered so that the calls of a failover do not return in step, or the
 * shard's retry_after), each time to the shard's primary in the newest installed map, until
 * a copy answers it or `budget_ms` after the first attempt have passed (an attempt in flight
 * to a copy that a new map no longer names is cut short). Then it gives up
 * with SP_EUNAVAIL, which clients take as "not done, retry later". Any other answer,
 * success or error, goes to the caller at once.
 *
 * Only requests that are safe to send twice may come here (a retried attempt may have been
 * served already, its answer lost): docs/CONNSRV.md, "Inbox failover", says which ones
 * connsrv sends and why each is. Loop thread only; a callback never runs inside a
 * cs_shardcall_* call.
 */
#ifndef CS_SHARDCALL_H
#define CS_SHARDCALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "connsrv/rpc.h"
#include "sp_cluster.h"
#include "sp_frame.h"

/* Longest blob key a call may be routed by (a blob id is 16 bytes). */
#define CS_SHARDCALL_KEY_MAX 16

typedef struct cs_shardcall cs_shardcall;

/* Creates the dispatcher on `base`: attempts go out through `rpc`, retries find the shard's
 * primary in `cluster`'s newest map (all borrowed: they must outlive it). No attempt starts
 * later than budget_ms after the first; with 0 a call is never retried, and `cluster` may
 * then be NULL. */
int cs_shardcall_new(struct event_base *base, cs_rpc *rpc, sp_cluster *cluster, int budget_ms,
		     cs_shardcall **out);

/* Completes every call waiting for its next attempt with SP_ECLOSED (reply NULL), then
 * frees the dispatcher. Free `rpc` first: its calls in flight complete into this. */
void cs_shardcall_free(cs_shardcall *sc);

/* Sends `req` (packed before this returns) to the shard at `url`, the owner of every one of
 * `devices` (n >= 1, all owned by one shard; copied). `cb` gets, later on the loop, what
 * cs_rpc_cb describes: SP_OK with the reply, a non-retryable ERROR's code with the ERROR
 * frame, a non-retryable transport error; or SP_EUNAVAIL with reply NULL when the call gave
 * up (its budget spent, or its devices no longer on one shard). On SP_OK `cb` runs exactly
 * once; on error (SP_ENOMEM, SP_ECLOSED once freeing began, or cs_rpc_call's errors for the
 * first attempt) it never runs. */
int cs_shardcall_devices(cs_shardcall *sc, const char *url, const uint64_t *devices, size_t n,
			 const sp_frame *req, cs_rpc_cb cb, void *arg);

/* As cs_shardcall_devices for a request routed by a blob id (key_len <= CS_SHARDCALL_KEY_MAX,
 * else SP_EINVAL). */
int cs_shardcall_blob(cs_shardcall *sc, const char *url, const uint8_t *key, size_t key_len,
		      const sp_frame *req, cs_rpc_cb cb, void *arg);

/* As cs_shardcall_devices for a request to the key store: a write goes to the keysrv
 * primary the newest map names (sp_cluster_map_keysrv_target); a read that tolerates
 * bounded staleness (`read`: AUTH_KEY_GET, DEVICES_GET) goes there first, and on a
 * failover-like failure round the other copies (sp_cluster_map_keysrv_reader), which
 * serve it while fresh enough. SP_EUNAVAIL when the map has no keysrv (yet). */
int cs_shardcall_keysrv(cs_shardcall *sc, bool read, const sp_frame *req, cs_rpc_cb cb,
			void *arg);

/* A new cluster map is installed (loop thread): an attempt in flight to a copy that the map
 * no longer names as its shard's (or the key store's) primary, or a read to a keysrv copy
 * the map no longer shows healthy, is cancelled and goes again after the usual backoff,
 * instead of waiting out its timeout at a copy that may be dead. */
void cs_shardcall_map_changed(cs_shardcall *sc);

/* Calls waiting for their next attempt (not in flight: cs_rpc_inflight counts those). A
 * drain waits for both. */
unsigned cs_shardcall_waiting(const cs_shardcall *sc);

#endif
