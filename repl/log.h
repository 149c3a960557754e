/*
 * The replication log: one copy's durable, ordered log of opaque records, each tagged with
 * (epoch, lsn). The primary appends the ops it decided; a replica appends the batches it
 * receives, strictly in order (log matching); both ship from it and apply from it up to
 * the commit LSN. See docs/REPLICATION.md "The replication log".
 *
 * On disk, in a directory of its own:
 *   <first lsn, 20 digits>.log  segments of records (a new one starts past segment_bytes)
 *   epochs                      the epoch table: where each epoch present starts
 *   incarnation                 16 random bytes made when the directory was made
 * A record is: u32 payload length, u64 epoch, u64 lsn, u32 CRC32C (over length, epoch, lsn
 * and payload), then the payload; all integers big-endian.
 *
 * Thread model. One writer thread (at a time) calls append, sync, truncate, trim and
 * close. Every other function (read, epoch_end, set_committed and the accessors) may be
 * called from any thread, concurrently with the writer: the state they see is protected
 * by a mutex inside the log, and a read sees every record appended before it started
 * (flushed or not: bound it with `upto_lsn`). A read's callback runs on the reader's
 * thread after the lock is released, so it may call any function of the log its thread is
 * allowed to call; the records it is given are a copy taken at the time of the read.
 *
 * Durability. append writes to the kernel (buffered); sync makes every appended record,
 * the segment files' names and the epoch table durable, and only then advances flushed.
 * truncate and trim are durable when they return. A failed write or fsync puts the log in
 * a failed state in which every later writer call returns SP_EIO: after a failed fsync the
 * kernel may have dropped the data, so the only safe reaction is to stop (the caller exits
 * and recovers from disk, as PostgreSQL does).
 */
#ifndef REPL_LOG_H
#define REPL_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define REPL_LOG_INCARNATION_LEN 16
#define REPL_LOG_DEFAULT_SEGMENT (64u << 20) /* bytes per segment file */
#define REPL_LOG_DEFAULT_MAX_RECORD (4u << 20) /* payload bytes */
#define REPL_LOG_MIN_SEGMENT 4096u
#define REPL_LOG_MAX_SEGMENT (1u << 30)
#define REPL_LOG_MAX_MAX_RECORD (64u << 20)
#define REPL_LOG_BATCH_MAX 4096 /* records per append (the group commit's op limit) */
#define REPL_LOG_HEADER_LEN 24 /* bytes before a record's payload */
#define REPL_LOG_EPOCHS_MAX 65536 /* entries in the epoch table (failovers retained) */

typedef struct repl_log repl_log;

/* Zero fields take the defaults; a NULL config means all defaults. */
typedef struct repl_log_config {
	uint32_t segment_bytes; /* [REPL_LOG_MIN_SEGMENT, REPL_LOG_MAX_SEGMENT] */
	uint32_t max_record; /* payload bound, [1, REPL_LOG_MAX_MAX_RECORD] */
} repl_log_config;

/* A position in a log: the (epoch, lsn) of a record; (0, 0) is "before the first". */
typedef struct repl_log_pos {
	uint64_t epoch;
	uint64_t lsn;
} repl_log_pos;

/* One record. On append, `data` is only read during the call (the caller keeps it); in a
 * read callback it is valid until the callback returns. */
typedef struct repl_log_rec {
	uint64_t epoch;
	uint64_t lsn;
	const uint8_t *data;
	uint32_t len;
} repl_log_rec;

/*
 * Opens the log in `dir` (created, mode 0700, if missing; its parent must exist), taking an
 * exclusive lock on it (SP_ESTATE if another open log holds it). Recovery: every segment is
 * scanned and every record's checksum verified. A bad record at the end of the last segment
 * with no valid record after it is a torn write (a crash mid-append): the segment is cut
 * back to the last good record, durably. A bad record anywhere else, a gap or a decreasing
 * epoch is SP_ESTORE: the copy must be rebuilt, nothing is skipped. The epoch table is
 * rebuilt from the records (the file supplies only the epochs of trimmed records) and
 * rewritten if it differed.
 * A directory without an incarnation file gets a new one; repl_log_fresh() then says true
 * (also when old segments were found: a directory that lost its identity is not trusted).
 * After open, committed = the last trimmed LSN (the caller raises it to its applied LSN);
 * flushed = the last LSN (recovery fsyncs what a crashed process left in the page cache).
 * Errors: SP_EINVAL, SP_ENOMEM, SP_EIO, SP_ESTORE, SP_ESTATE.
 */
int repl_log_open(const char *dir, const repl_log_config *cfg, repl_log **out);

/*
 * Creates a new log in `dir` (which must hold no log) whose trim point is `base`: it holds
 * no record, its last position is `base`, and the next append follows it. For a copy
 * rebuilt from a snapshot of a store at base.lsn, base.epoch being that record's epoch on
 * the primary. base.epoch and base.lsn >= 1. A crash part-way leaves a directory without
 * an incarnation, which a later open treats as fresh. Errors as repl_log_open, and
 * SP_EEXIST if `dir` already holds segments.
 */
int repl_log_open_at(const char *dir, const repl_log_config *cfg, repl_log_pos base, repl_log **out);

/* Closes the files and frees the log; does not sync (unsynced records may or may not
 * survive, as after a crash). NULL is a no-op. No other thread may be using the log. */
void repl_log_close(repl_log *log);

/*
 * Appends `n` records (n <= REPL_LOG_BATCH_MAX) after the log's last record, which must be
 * exactly (prev_epoch, prev_lsn): the last record, or the trim point of a log holding no
 * record, or (0, 0) for a new log. Each record's lsn is the previous one + 1; epochs are
 * >= 1 and never decrease (starting from prev_epoch); payloads are at most max_record.
 * Refusals write nothing: SP_EGAP (prev is not the last record, or an lsn does not follow),
 * SP_ESTATE (an epoch lower than the one before it), SP_ETOOBIG (payload or batch too big),
 * SP_EINVAL (epoch 0, NULL data with len > 0), SP_ELIMIT (REPL_LOG_EPOCHS_MAX epochs in the
 * table), SP_ENOMEM. SP_EIO: the write failed; the log is failed.
 * The records are visible to readers on return, durable after the next repl_log_sync().
 */
int repl_log_append(repl_log *log, uint64_t prev_epoch, uint64_t prev_lsn, const repl_log_rec *recs,
    size_t n);

/* Makes everything appended durable (fdatasync of the segments written, fsync of the
 * directory if a segment was created, the epoch table written and fsynced if it changed),
 * then flushed = last. SP_EIO: the log is failed. */
int repl_log_sync(repl_log *log);

/*
 * Drops every record with lsn > after_lsn, and the epoch-table entries that start after
 * it; durable on return (flushed becomes after_lsn). SP_ERANGE if after_lsn < committed
 * (a committed record is never removed; after_lsn == committed is allowed) or below the
 * trim point; truncating at or past the end is a no-op.
 */
int repl_log_truncate(repl_log *log, uint64_t after_lsn);

/*
 * Retention: deletes whole segments whose records all have lsn <= min(upto_lsn,
 * committed); never the segment holding the last record. Epoch-table entries wholly
 * before the new trim point are dropped, except the one covering it.
 */
int repl_log_trim(repl_log *log, uint64_t upto_lsn);

/* repl_log_trim that also keeps at least `keep_bytes` of segments (a retention floor for
 * copies that fall behind for a while: they catch up from the log, not by snapshot). */
int repl_log_retain(repl_log *log, uint64_t upto_lsn, uint64_t keep_bytes);
/* Whether repl_log_retain with these bounds would delete a segment now (any thread). */
bool repl_log_would_trim(repl_log *log, uint64_t upto_lsn, uint64_t keep_bytes);

/* Records the commit LSN (any thread). Lower than the current value: ignored (SP_OK);
 * above the last record: SP_ERANGE (a replica commits only what it holds: it passes
 * min(primary's commit, its last matched LSN)). */
int repl_log_set_committed(repl_log *log, uint64_t lsn);

/*
 * Reading. Calls `cb` for each record with lsn in [from_lsn, upto_lsn] (upto_lsn clipped to
 * the last record), in order, as many as fit in max_bytes of payload (always at least one
 * if one is in range, however big), stopping early when `cb` returns non-zero. `*count`
 * (optional) gets the number of records delivered. Returns SP_OK, the callback's non-zero
 * return, SP_ERANGE if from_lsn is at or before the trim point (the caller needs a
 * snapshot) or past last + 1, SP_EINVAL, SP_ENOMEM or SP_EIO.
 */
typedef int (*repl_log_read_cb)(void *arg, const repl_log_rec *rec);
int repl_log_read(repl_log *log, uint64_t from_lsn, uint64_t upto_lsn, size_t max_bytes,
    repl_log_read_cb cb, void *arg, size_t *count);

/*
 * The leader's answer to "where does your history of `epoch` end?" (KIP-101's
 * OffsetsForLeaderEpoch): the (epoch', lsn) of the last record whose epoch <= `epoch`,
 * epoch' being the largest epoch <= `epoch` in the log; the log's end when `epoch` >= the
 * last epoch; (0, s - 1) when every record is in a later epoch, s the first epoch's start
 * ((0, 0) for an untrimmed log). SP_ERANGE when the answer lies in trimmed history whose
 * epochs are no longer known (the asking copy needs a snapshot).
 */
int repl_log_epoch_end(repl_log *log, uint64_t epoch, repl_log_pos *out);

/*
 * Where a follower must truncate its log after asking the leader (pure).
 * follower_last = the follower's last record, or more generally the follower's own
 * repl_log_epoch_end(q) for the epoch q it asked about; leader_answer = the leader's
 * repl_log_epoch_end(follower_last.epoch). Returns min(follower_last.lsn,
 * leader_answer.lsn): every record of the follower past it is in an epoch the leader's
 * history does not have at that LSN, so it diverges.
 * If leader_answer.epoch == follower_last.epoch the result is final: both logs hold
 * records of that epoch up to it, and records of one epoch were all written by that
 * epoch's leader from the same start, so the logs agree up to it (Raft's log matching).
 * If leader_answer.epoch < follower_last.epoch (the leader never had the follower's epoch)
 * the follower truncates to the result and asks again with q = leader_answer.epoch, taking
 * follower_last = its own repl_log_epoch_end(q), until the epochs agree (KIP-279's fix of
 * KIP-101: one round is not enough when the follower also holds an epoch the leader
 * lacks below the leader's answer). The follower then calls repl_log_truncate(); an
 * SP_ERANGE there means a committed record would go: the copy must be rebuilt.
 */
uint64_t repl_divergence(repl_log_pos follower_last, repl_log_pos leader_answer);

/* The epoch of the record at `lsn` (any thread): for the trim point and every retained
 * record; SP_ERANGE outside [trim point, last]; 0 for lsn 0. */
int repl_log_epoch_at(repl_log *log, uint64_t lsn, uint64_t *epoch);

/* Bytes of segment files the log holds (any thread). */
uint64_t repl_log_bytes(repl_log *log);

/* Accessors (any thread). first_lsn: the first retained record's LSN (trim point + 1;
 * last + 1 when the log holds no record). */
uint64_t repl_log_first_lsn(repl_log *log);
repl_log_pos repl_log_last(repl_log *log);
uint64_t repl_log_flushed(repl_log *log);
uint64_t repl_log_committed(repl_log *log);
/* True when this open created the incarnation (a new or identity-less directory). */
bool repl_log_fresh(const repl_log *log);
void repl_log_incarnation(const repl_log *log, uint8_t out[REPL_LOG_INCARNATION_LEN]);

#endif
