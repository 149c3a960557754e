/*
 * The inbox store: one LMDB environment holding per-device queues, dedup records, group
 * bodies, the TTL index and media blobs of one shard.
 *
 * Every write is an inbox_op applied by inbox_store_apply() inside a write transaction.
 * Apply is deterministic given the store's state and the op: every value the primary
 * assigns (the op's LSN, its timestamp, new seqs, body ids) is written back into the op,
 * so the sequence of applied ops is a log a replica can replay in order (a replica passes
 * ops with those values set and apply checks they match). The op's LSN is stored in the
 * same transaction.
 *
 * Time is always passed in (`now`, milliseconds): the store never reads a clock, so tests
 * drive TTLs with any clock they like.
 */
#ifndef INBOX_STORE_H
#define INBOX_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#define INBOX_MSG_ID_LEN 16
#define INBOX_BLOB_ID_LEN 16
#define INBOX_SHA256_LEN 32
#define INBOX_ACK_MAX 4096 /* entries one upto_seq ACK deletes */

typedef struct inbox_store inbox_store;

typedef struct inbox_store_config {
	const char *dir; /* created if missing */
	size_t map_size; /* LMDB map size (sparse file) */
	uint64_t max_queue_entries; /* per device */
	uint64_t max_queue_bytes; /* per device: envelope/body + ct bytes */
	/* Percent of both caps one sender (from_user) may hold in a device's queue; past it
	 * that sender's appends to the device are refused with SP_ELIMIT (0 or 100: off). */
	unsigned queue_share_pct;
	uint64_t msg_ttl_ms;
	uint64_t media_ttl_ms;
	uint64_t upload_ttl_ms; /* an unfinished upload is swept this long after its start */
	uint64_t max_blob_size;
	unsigned max_readers; /* concurrent read transactions */
	/* Most dedup records held in memory (0: no limit). Past it the oldest are forgotten
	 * early (a retry that old is stored again), counted in sp_inbox_dedup_evicted_total. */
	uint64_t dedup_max;
	/* A replicated copy: its replication log, fsynced before anything is acknowledged,
	 * is the durable record, so a commit skips LMDB's meta-page flush (MDB_NOMETASYNC:
	 * integrity is kept; a host crash may undo the last commits, which are then applied
	 * again from the log). */
	bool log_is_durable;
} inbox_store_config;

typedef enum {
	INBOX_OP_APPEND = 1, /* one message to one or more devices */
	INBOX_OP_ACK, /* delete by upto_seq or by a list of seqs */
	INBOX_OP_PURGE, /* delete a device's whole queue */
	INBOX_OP_SWEEP, /* TTL: one bounded batch of expired entries and blobs */
	INBOX_OP_BLOB_PUT, /* one chunk of a media blob */
	INBOX_OP_BLOB_DONE, /* upload complete (digest verified by the caller) */
	INBOX_OP_BLOB_FETCHED /* a listed device read the blob to the end */
} inbox_op_kind;

typedef struct inbox_target {
	uint64_t device;
	const uint8_t *ct; /* optional per-device part; NULL if none */
	uint32_t ct_len;
	uint64_t seq; /* assigned (or checked, on a replica); 0 if refused */
	int rc; /* SP_OK, SP_EFULL (queue over its cap) or SP_ELIMIT (sender over its share) */
	bool dup; /* already stored: seq is the first append's */
} inbox_target;

typedef struct inbox_ref {
	uint64_t from_user, from_device;
	uint8_t msg_id[INBOX_MSG_ID_LEN];
} inbox_ref;

/* An op. Inputs are borrowed (pointers must stay valid until apply returns); results are
 * written into the op. Fields marked "assigned" are set by the primary's apply and
 * replayed as given on a replica. */
typedef struct inbox_op {
	inbox_op_kind kind;
	uint64_t lsn; /* assigned: shard-wide op sequence number */
	uint64_t ts; /* assigned: store time in ms (TTL and dedup window start here) */
	int rc; /* result of the whole op */

	union {
		struct {
			uint8_t msg_id[INBOX_MSG_ID_LEN];
			uint64_t from_user, from_device, server_ts, etype, group;
			bool has_group;
			const uint8_t *body; /* the envelope (one target) or the shared body */
			uint32_t body_len;
			bool shared; /* store the body once, refcounted (batch append) */
			uint64_t body_id; /* assigned when shared and stored */
			inbox_target *targets;
			uint32_t ntargets;
		} append;
		struct {
			uint64_t device;
			uint64_t upto_seq; /* used when nseqs == 0 */
			const uint64_t *seqs;
			uint32_t nseqs;
			inbox_ref *refs; /* result, malloc'd: free with inbox_op_fini */
			uint32_t nrefs;
			bool more; /* upto ACK stopped at INBOX_ACK_MAX */
		} ack;
		struct {
			uint64_t device;
			uint64_t removed; /* result */
		} purge;
		struct {
			uint32_t limit; /* max records examined per kind */
			uint64_t expired; /* result: undelivered entries removed */
			uint64_t dedup_gone; /* result: dedup records removed */
			uint64_t blobs; /* result: blobs removed */
			bool more; /* result: the limit was hit */
		} sweep;
		struct {
			uint8_t blob_id[INBOX_BLOB_ID_LEN];
			uint64_t offset;
			const uint8_t *bytes;
			uint32_t len;
			uint64_t have; /* result: contiguous bytes stored */
		} blob_put;
		struct {
			uint8_t blob_id[INBOX_BLOB_ID_LEN];
			uint64_t size;
			uint8_t sha256[INBOX_SHA256_LEN];
			const uint64_t *devices;
			uint32_t ndevices;
		} blob_done;
		struct {
			uint8_t blob_id[INBOX_BLOB_ID_LEN];
			uint64_t device;
			bool deleted; /* result: that was the last device */
		} blob_fetched;
	};
} inbox_op;

/* Frees what apply allocated in `op` (ACK refs). Safe on any op. */
void inbox_op_fini(inbox_op *op);

/* Forgets what an aborted apply assigned (LSN, timestamp, seqs, body id, results), so the
 * op can be applied again as a new primary op. */
void inbox_op_reset(inbox_op *op);

/* Opens (creating if needed) the store in cfg->dir. cfg is copied. On SP_OK the caller
 * owns *out (inbox_store_close). SP_ESTORE on an LMDB error (logged). */
int inbox_store_open(inbox_store **out, const inbox_store_config *cfg);
void inbox_store_close(inbox_store *s);

const inbox_store_config *inbox_store_cfg(const inbox_store *s);

/* Write transactions, on one thread at a time. begin/commit/abort wrap LMDB's and keep
 * the in-memory dedup index in step (an abort rolls it back); `parent` is the innermost
 * open txn or NULL. Commit is synchronous (fsync). A failed commit leaves the environment
 * in an unknown state: callers treat it as fatal. */
int inbox_store_txn_begin(inbox_store *s, MDB_txn *parent, MDB_txn **txn);
int inbox_store_txn_commit(inbox_store *s, MDB_txn *txn); /* SP_OK, SP_EFULL, SP_ESTORE */
void inbox_store_txn_abort(inbox_store *s, MDB_txn *txn);

/* Applies `op` in write txn `txn` at time `now` (ms; used when op->ts is 0). Returns
 * op->rc: SP_OK, or an error that must abort `txn` (apply in a nested txn to keep the rest
 * of a batch): SP_EFULL (map full or queue cap for a single-target append), SP_EGAP,
 * SP_ETOOBIG, SP_ESTATE, SP_EDIGEST, SP_ENOTFOUND, SP_EMISMATCH (replica value differs),
 * SP_ENOMEM, SP_ESTORE. Per-target refusals of a multi-target append are reported in
 * the targets with op->rc SP_OK. */
int inbox_store_apply(inbox_store *s, MDB_txn *txn, inbox_op *op, uint64_t now);

/* Whether a failed apply left `txn` untouched (a refusal found before any write: queue cap,
 * gap, bad state, not found, ...), so the transaction can go on with other ops. Any other
 * failure (map full, LMDB error, out of memory) may have written part of the op: the
 * transaction (or the nested one the op ran in) must be aborted. */
bool inbox_op_failed_clean(const inbox_op *op);

/* The collector. Acknowledged entries leave their queue at once but their log records stay
 * (a device's entries are spread over the log: deleting them one by one would dirty a page
 * each). This deletes such records, walking the log from where it stopped last time, up to
 * `limit` records per call, in a nested txn of the caller's write txn `txn`. It changes
 * no queue, counter or seq (a replica collects its own garbage). Sets *deleted. SP_OK, or
 * an error after which its nested txn was rolled back and `txn` can go on. */
int inbox_store_collect(inbox_store *s, MDB_txn *txn, uint32_t limit, uint64_t *deleted);

#define INBOX_COLLECT_LIMIT 4096 /* log records one collect call examines */

/* Convenience for tests and tools: applies each op in its own nested txn of one write
 * txn, collects (as the writer does after each batch) and commits once. Returns the commit's result; each op's own result is in op->rc. */
int inbox_store_write(inbox_store *s, inbox_op **ops, size_t n, uint64_t now);

/* ---- reads (any thread; each in its own read-only txn) ---- */

/* A read txn. Values returned through it point into the map and stay valid until
 * inbox_store_read_end. */
int inbox_store_read_begin(inbox_store *s, MDB_txn **txn);
void inbox_store_read_end(MDB_txn *txn);

typedef struct inbox_entry {
	uint64_t seq, ts, server_ts, from_user, from_device, etype, group;
	bool has_group;
	const uint8_t *msg_id; /* INBOX_MSG_ID_LEN bytes */
	const uint8_t *env; /* envelope or shared body */
	uint32_t env_len;
	const uint8_t *ct; /* per-device part, NULL if none */
	uint32_t ct_len;
} inbox_entry;

/* Entries of `device` with seq > after_seq, in seq order: at most max_count, and stop
 * before the total of env+ct+overhead bytes would pass max_bytes (the first entry is
 * always returned). `out` has room for max_count entries. *more is set if entries
 * remain. Returns the count (>= 0) or SP_ESTORE. */
int inbox_store_fetch(inbox_store *s, MDB_txn *txn, uint64_t device, uint64_t after_seq,
    uint32_t max_count, size_t max_bytes, inbox_entry *out, bool *more);

/* Bytes an entry adds to a FETCH reply, for the max_bytes budget. */
size_t inbox_entry_wire_size(const inbox_entry *e);

typedef struct inbox_stat {
	uint64_t depth, bytes, last_seq, oldest_ts; /* oldest_ts 0 if the queue is empty */
} inbox_stat;

int inbox_store_stat(inbox_store *s, MDB_txn *txn, uint64_t device, inbox_stat *st);

/* The last committed seq of `device`, or 0 if its queue is empty (LAST_SEQS): from the
 * queue index alone, no transaction. Any thread. */
uint64_t inbox_store_last_seq(inbox_store *s, uint64_t device);

typedef struct inbox_shard_stat {
	uint64_t lsn, entries, dedup, bodies, blobs, map_used;
} inbox_shard_stat;

int inbox_store_shard_stat(inbox_store *s, MDB_txn *txn, inbox_shard_stat *st);

/* Devices and queued entries (committed) in the in-memory queue index, and the bytes it
 * holds. Any thread. */
void inbox_store_queue_stat(inbox_store *s, uint64_t *devices, uint64_t *entries, uint64_t *bytes);

/* Log records waiting for the collector (writer's view). Writer thread only. */
uint64_t inbox_store_garbage(inbox_store *s);

/* How many records the writer's next collect call should examine: 0 when there is no
 * garbage, or (not `idle`: a batch of requests is being committed) while it is less than
 * half of the log; INBOX_COLLECT_LIMIT in a commit of its own when the writer is idle.
 * Writer thread only. */
uint32_t inbox_store_collect_limit(inbox_store *s, bool idle);

/* Records in the in-memory dedup index and the bytes it holds. Writer thread only. */
void inbox_store_dedup_stat(const inbox_store *s, uint64_t *records, uint64_t *bytes);

typedef struct inbox_blob_info {
	bool done;
	uint64_t have, size, created;
	uint8_t sha256[INBOX_SHA256_LEN];
	uint32_t ndevices;
	const uint8_t *devices; /* ndevices little-endian u64, in the map */
} inbox_blob_info;

/* SP_OK or SP_ENOTFOUND. */
int inbox_store_blob_info(
    inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, inbox_blob_info *info);

/* Copies up to `len` bytes of the blob at `offset` into buf; returns the count (>= 0, 0
 * at the end), or SP_ENOTFOUND / SP_ERANGE (offset past what is stored) / SP_ESTORE. */
long inbox_store_blob_read(inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, uint64_t offset,
    uint8_t *buf, size_t len);

/* SHA-256 of the first `size` bytes of the blob (chunks below `have` never change, so a
 * read txn is enough). SP_OK, SP_ENOTFOUND, SP_ERANGE (fewer bytes stored), SP_ESTORE. */
int inbox_store_blob_sha256(inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, uint64_t size,
    uint8_t out[INBOX_SHA256_LEN]);

/* ---- snapshots (inboxsrv/snapshot.c) ---- */

/* Writes a consistent, compacted copy of the environment, as of one read txn, to `fd`
 * (mdb_env_copyfd2 with MDB_CP_COMPACT): a data.mdb another copy can open. Any thread;
 * writes go on meanwhile. SP_OK or SP_ESTORE. */
int inbox_store_copy_fd(inbox_store *s, int fd);

/* Flushes every commit to disk (mdb_env_sync, forced): before the replication log drops
 * records, the store must hold them durably even with MDB_NOMETASYNC. Any thread. SP_OK or
 * SP_EIO. */
int inbox_store_sync(inbox_store *s);

/* The LSN held by an environment file written by inbox_store_copy_fd, opened read-only
 * without a lock file. SP_OK, or SP_ESTORE when it is not such a file. */
int inbox_store_file_lsn(const char *path, uint64_t *lsn);

#endif
