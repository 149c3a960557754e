/*
 * Group commit: one writer thread applies queued write ops and makes them durable together.
 *
 * The writer takes everything queued (up to a batch bound), applies each op in a nested
 * transaction of one write transaction (so one op's failure -- queue cap, map full --
 * aborts only that op), commits once (LMDB's synchronous commit: the fsync), and only then
 * calls each op's completion. Ops that arrive during a commit form the next batch.
 * A failed commit or fsync is fatal: the process logs it and exits (the data it covered
 * was never acknowledged; a retried fsync may report success after the kernel dropped it).
 */
#ifndef INBOX_COMMIT_H
#define INBOX_COMMIT_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* Bytes of media ops (chunks) one batch of new ops takes at most, beyond its first. */
#define INBOX_MEDIA_LANE_BYTES (1u << 20)

typedef struct inbox_commit inbox_commit;
typedef struct inbox_req inbox_req;

/* Called once req->op is durable (op.rc SP_OK) or refused (op.rc an error), on the
 * completion thread or (small batches under light load) on the writer thread; the req
 * belongs to the caller again from this call on. It must not block. */
typedef void (*inbox_done_fn)(inbox_req *req);

/* A queued write, embedded in (or allocated by) the caller. */
struct inbox_req {
	inbox_op op;
	inbox_done_fn done;
	void *arg; /* for the caller */
	size_t cost; /* approximate bytes written, bounds a batch */
	/* A replicated op being replayed (op.lsn, ts, seqs already assigned by the primary
	 * that logged it): applied without the replication hooks; a failure is fatal. A
	 * batch holds replayed ops or new ones, never both. */
	bool replay;
	inbox_req *next;
};

/* Replication (inboxsrv/repl.h), called on the writer thread for batches of new ops:
 * admit before a batch is applied (SP_OK, or the error every op of it gets: nothing is
 * written); replicate after it is applied in the still-open transaction, with the batch
 * (the ops whose op.lsn is set, in LSN order, are the ones to log). replicate returns
 * SP_OK once they are durable on every copy the shard's commit needs; then the
 * transaction commits and the ops complete. Any other result aborts the transaction
 * and every op of the batch completes with it (the primary was fenced: the logged
 * records stay in its log as an uncommitted tail). */
typedef struct inbox_commit_repl {
	int (*admit)(void *arg);
	int (*replicate)(void *arg, inbox_req *batch);
	void *arg;
} inbox_commit_repl;

typedef uint64_t (*inbox_clock_fn)(void *arg); /* ms */

typedef struct inbox_commit_config {
	inbox_clock_fn clock; /* NULL: sp_time_ms */
	void *clock_arg;
	uint32_t max_batch_ops; /* 0: 4096 */
	size_t max_batch_bytes; /* 0: 64 MiB */
	uint64_t disk_reserve; /* refuse growth ops when the disk has less free; 0: off */
	const inbox_commit_repl *repl; /* NULL: a shard of one copy */
} inbox_commit_config;

/* Starts the writer thread on `s` (which must outlive it). On SP_OK the caller owns *out
 * (inbox_commit_stop). */
int inbox_commit_start(inbox_commit **out, inbox_store *s, const inbox_commit_config *cfg);

/* Queues `req` (caller keeps ownership until req->done is called). After stop has begun,
 * completes it at once with SP_ECLOSED (on the caller's thread). */
void inbox_commit_submit(inbox_commit *c, inbox_req *req);

/* Queues a NULL-terminated list of reqs linked by `next`, in order, at once (so they land
 * in one batch); ownership as for inbox_commit_submit. */
void inbox_commit_submit_chain(inbox_commit *c, inbox_req *first);

/* Completes every queued new (not replayed) op with `rc` without applying it: called by
 * a replicate hook that waits for copies, so requests arriving meanwhile get a retryable
 * error instead of a timeout. Writer thread only. */
void inbox_commit_fail_queued(inbox_commit *c, int rc);

/* Total commits so far (each one durable fsync'd LMDB commit). */
uint64_t inbox_commit_count(const inbox_commit *c);

/* Applies and completes everything queued, stops the thread and frees `c`. */
void inbox_commit_stop(inbox_commit *c);

#endif
