/*
 * Names shared by the files of inboxsrv, not by other tiers. The files:
 *   main.c           configuration, start-up and shutdown
 *   server.c         NNG REP contexts: receive, hand to dispatch, send the reply
 *   dispatch.c       the request table: decode, serve reads, build ops and their replies
 *   commit.c         the group-commit writer thread and its completion thread
 *   sweep.c          the TTL sweep timer (INBOX_OP_SWEEP ops)
 *   store*.c         the LMDB store (store_internal.h lists its files)
 *   blob.c           blob ops, deletion and TTL
 *   dedup.c          the in-memory dedup index
 *   qindex.c         the in-memory queue index
 *   metrics.c        the metrics and the drop counter (inbox_drop)
 */
#ifndef INBOX_INTERNAL_H
#define INBOX_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include <lmdb.h>

#include "dedup.h"
#include "qindex.h"
#include "sp_bytes.h"
#include "sp_metrics.h"
#include "store.h"

/* Process-wide metrics (metrics.c). Every pointer may be NULL (not initialised, as in unit
 * tests): sp_metric_* updates then do nothing. */
#define INBOX_BATCH_BUCKETS 6
typedef struct inbox_metrics {
	sp_metric *commits, *ops, *op_errors, *appends, *append_dups, *append_full, *store_full;
	sp_metric *acks, *acked, *purged, *fetches, *fetched, *stat_reqs, *bad_requests;
	sp_metric *ttl_expired, *ttl_dedup, *blob_expired, *blob_deleted, *blob_puts, *blob_bytes;
	sp_metric *blob_gets, *commit_seconds, *sync_seconds, *request_seconds;
	sp_metric *dedup_evicted, *dedup_entries, *dedup_bytes;
	sp_metric *collected, *garbage, *queue_devices, *queue_index_bytes;
	sp_metric *unserved, *dropped_requests, *dropped_replies, *dropped_ops;
	sp_metric *batch[INBOX_BATCH_BUCKETS];
	sp_metric *lsn, *entries, *blobs, *map_used, *disk_low;
} inbox_metrics;

extern inbox_metrics inbox_m;

/* Registers the metrics; call once at start-up. */
void inbox_metrics_init(void);

/* Counts a commit of `ops` ops in the batch-size buckets. */
void inbox_metrics_batch(uint32_t ops);

/* Counts one request, reply or op dropped with nobody told (in `m`, one of the dropped_*
 * metrics) and logs why, at most one line a second for the whole process: a flood of drops
 * must not become a flood of log lines. Any thread. */
void inbox_drop(sp_metric *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The LMDB databases of a shard. Keys are big-endian so they sort numerically; values
 * are little-endian fixed layouts described where they are written. */
struct inbox_store {
	inbox_store_config cfg;
	char *dir;
	int lock_fd; /* flock'ed: one process per environment */
	MDB_env *env;
	MDB_dbi meta; /* "lsn", "next_body", "entries", "dedups" -> u64 */
	/* Entry id (lsn << 13 | target index) -> entry header (with device and seq) + ct +
	 * envelope | body id. Ids grow with the LSN, so appends write at the end of one tree;
	 * the queue index (qindex.h) says which ids make up each device's queue. */
	MDB_dbi log;
	MDB_dbi dev; /* device -> {last seq, acknowledged seq} (store_ack.c: dev_get) */
	/* (ts, device, seq) -> {from_device, msg_id}: the TTL index of entries and the log of
	 * dedup records, in time order (appends add at its end). */
	MDB_dbi ttl;
	MDB_dbi bref; /* body id -> refcount */
	MDB_dbi body; /* body id -> body bytes */
	MDB_dbi blob; /* blob id -> blob header + devices */
	MDB_dbi bchunk; /* (blob id, offset) -> bytes */
	MDB_dbi bttl; /* (created, blob id) -> "" */
	/* Dedup lookups: (device, from_device, msg_id) -> TTL record, in memory (dedup.h). */
	inbox_dedup *dx;
	inbox_qindex *qx; /* device -> queued entry ids and counters, in memory */
	size_t marks[8]; /* dedup undo mark of each open write txn, outermost first */
	size_t qmarks[8]; /* queue index undo mark of each open write txn */
	int depth; /* index of the innermost open write txn in marks, -1: none */
	uint8_t evict_key[24]; /* TTL records before this key are not indexed (dedup_max) */
	uint8_t gc_key[8]; /* where the collector goes on in the log */
};

static inline void
inbox_le64_put(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++, v >>= 8)
		p[i] = (uint8_t)v;
}

static inline uint64_t
inbox_le64_get(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static inline void
inbox_le32_put(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++, v >>= 8)
		p[i] = (uint8_t)v;
}

static inline uint32_t
inbox_le32_get(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Maps an LMDB return code: MDB_MAP_FULL -> SP_EFULL, MDB_NOTFOUND -> SP_ENOTFOUND,
 * MDB_TXN_FULL -> SP_ELIMIT, anything else -> SP_ESTORE (logged). */
int inbox_lmdb_err(int rc, const char *what);

/* Blob ops and deletion (blob.c), applied by inbox_store_apply. */
int inbox_blob_apply_put(inbox_store *s, MDB_txn *txn, inbox_op *op);
int inbox_blob_apply_done(inbox_store *s, MDB_txn *txn, inbox_op *op);
int inbox_blob_apply_fetched(inbox_store *s, MDB_txn *txn, inbox_op *op);
int inbox_blob_delete(inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, uint64_t created);

/* Sweeps up to `limit` blobs created before `cutoff`; counts them in *n. Sets *more if
 * the limit was hit. */
int inbox_blob_sweep(
    inbox_store *s, MDB_txn *txn, uint64_t cutoff, uint32_t limit, uint64_t *n, bool *more);

#endif
