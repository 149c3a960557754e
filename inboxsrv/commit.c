#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "commit.h"
#include "internal.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

#define COLLECT_IDLE_MS 20 /* an idle writer collects garbage this often */

#define INLINE_DONE_MAX 8 /* batches up to this size are completed by the writer itself */

struct inbox_commit {
	inbox_store *store;
	inbox_commit_config cfg;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	inbox_req *head, *tail; /* queued, under lock */
	bool stopping;
	/* Committed ops wait here for their completion calls, which run on a thread of their
	 * own so that building and sending replies overlaps the next commit. */
	pthread_t done_thread;
	pthread_cond_t done_cond;
	inbox_req *done_head, *done_tail; /* under lock */
	bool writer_exited;
	_Atomic uint64_t commits;
};

static uint64_t
wall_clock(void *arg)
{
	(void)arg;
	return sp_time_ms();
}

/* Exits the process: after a failed commit or fsync the state on disk is unknown, and
 * retrying could report success for data the kernel dropped. Nothing the failed commit
 * covered was acknowledged. */
static void
fatal(const char *what, int rc)
{
	sp_error("FATAL: %s failed (%s): exiting without acknowledging the batch", what,
	    sp_strerror(rc));
	_exit(70);
}

static bool
grows(const inbox_op *op)
{
	return op->kind == INBOX_OP_APPEND || op->kind == INBOX_OP_BLOB_PUT;
}

static bool
disk_low(inbox_commit *c)
{
	struct statvfs sv;
	if (c->cfg.disk_reserve == 0 || statvfs(inbox_store_cfg(c->store)->dir, &sv) != 0)
		return false;
	return (uint64_t)sv.f_bavail * sv.f_frsize < c->cfg.disk_reserve;
}

static void
count_op(const inbox_op *op)
{
	if (op->rc != SP_OK) {
		sp_metric_inc(inbox_m.op_errors);
		if (op->rc == SP_EFULL && op->kind == INBOX_OP_APPEND && op->append.targets
		    && op->append.targets[0].rc == SP_EFULL && !op->append.shared)
			sp_metric_inc(inbox_m.append_full);
		else if (op->rc == SP_EFULL)
			sp_metric_inc(inbox_m.store_full);
		return;
	}
	sp_metric_inc(inbox_m.ops);
	switch (op->kind) {
	case INBOX_OP_APPEND:
		for (uint32_t i = 0; i < op->append.ntargets; i++) {
			const inbox_target *t = &op->append.targets[i];
			if (t->rc == SP_EFULL)
				sp_metric_inc(inbox_m.append_full);
			else if (t->dup)
				sp_metric_inc(inbox_m.append_dups);
			else
				sp_metric_inc(inbox_m.appends);
		}
		break;
	case INBOX_OP_ACK:
		sp_metric_inc(inbox_m.acks);
		sp_metric_add(inbox_m.acked, op->ack.nrefs);
		break;
	case INBOX_OP_PURGE:
		sp_metric_add(inbox_m.purged, op->purge.removed);
		break;
	case INBOX_OP_SWEEP:
		sp_metric_add(inbox_m.ttl_expired, op->sweep.expired);
		sp_metric_add(inbox_m.ttl_dedup, op->sweep.dedup_gone);
		sp_metric_add(inbox_m.blob_expired, op->sweep.blobs);
		break;
	case INBOX_OP_BLOB_PUT:
		sp_metric_inc(inbox_m.blob_puts);
		sp_metric_add(inbox_m.blob_bytes, op->blob_put.len);
		break;
	case INBOX_OP_BLOB_DONE:
		break; /* counted in ops alone */
	case INBOX_OP_BLOB_FETCHED:
		if (op->blob_fetched.deleted)
			sp_metric_inc(inbox_m.blob_deleted);
		break;
	default:
		SP_ASSERT(!"count_op: unknown op kind"); /* every kind has its case above */
	}
}

/* Applies one op in a nested txn of `txn`. Returns false if the op must be retried in a
 * fresh transaction (this one has no room left). */
static bool
apply_nested(inbox_commit *c, MDB_txn *txn, inbox_req *r, uint64_t now)
{
	MDB_txn *child;
	int rc;

	if ((rc = inbox_store_txn_begin(c->store, txn, &child)))
		fatal("nested txn begin", rc);
	rc = inbox_store_apply(c->store, child, &r->op, now);
	if (rc == SP_OK) {
		if ((rc = inbox_store_txn_commit(c->store, child)))
			fatal("nested commit", rc);
		return true;
	}
	inbox_store_txn_abort(c->store, child);
	if (rc == SP_ELIMIT) {
		inbox_op_reset(&r->op);
		return false;
	}
	return true;
}

static bool
is_blob_op(const inbox_req *r)
{
	return r->op.kind == INBOX_OP_BLOB_PUT || r->op.kind == INBOX_OP_BLOB_DONE
	    || r->op.kind == INBOX_OP_BLOB_FETCHED;
}

/*
 * Takes a batch off the queue (lock held). Replayed ops go in queue order, as they were
 * logged. New ops go in two lanes (rule 7 of docs/REPLICATION.md): every queued op that is
 * not a media op, in order, and media ops, in order, only up to INBOX_MEDIA_LANE_BYTES (at
 * least one), so a small append waits for at most one lane's worth of chunk bytes to be
 * written, shipped and fsynced, never for every upload queued before it. Media ops keep
 * their order among themselves (BLOB_DONE after its chunks); they touch no queue, so
 * letting other ops pass them changes nothing but timing.
 */
static inbox_req *
take_batch(inbox_commit *c, uint32_t *n)
{
	inbox_req *first = c->head, *taken = NULL, **tail = &taken, *prev = NULL;
	size_t bytes = 0, media = 0;
	bool media_full = false;
	*n = 0;
	for (inbox_req *r = c->head; r && *n < c->cfg.max_batch_ops;) {
		inbox_req *next = r->next;
		if (*n > 0 && (bytes + r->cost > c->cfg.max_batch_bytes || r->replay != first->replay))
			break;
		bool take = true;
		if (!r->replay && is_blob_op(r)) {
			if (media_full || (media > 0 && media + r->cost > INBOX_MEDIA_LANE_BYTES)) {
				media_full = true;
				take = false;
			} else {
				media += r->cost;
			}
		}
		if (take) {
			bytes += r->cost;
			(*n)++;
			if (prev)
				prev->next = next;
			else
				c->head = next;
			if (c->tail == r)
				c->tail = prev;
			r->next = NULL;
			*tail = r;
			tail = &r->next;
		} else {
			prev = r;
		}
		r = next;
	}
	return taken;
}

/* Puts `rest` (a list) back at the front of the queue. */
static void
requeue(inbox_commit *c, inbox_req *rest)
{
	inbox_req *last = rest;
	while (last->next)
		last = last->next;
	pthread_mutex_lock(&c->lock);
	last->next = c->head;
	c->head = rest;
	if (!c->tail)
		c->tail = last;
	pthread_mutex_unlock(&c->lock);
}

/* Calls the completions of a list of reqs, in order. */
static void
complete(inbox_req *r)
{
	while (r) {
		inbox_req *next = r->next;
		r->next = NULL;
		r->done(r);
		r = next;
	}
}

/* Fast path: every op straight in `txn`. Refusals found before any write (queue cap,
 * gap, ...) leave the txn usable; any other failure means the txn must be dropped. Returns
 * false then, with the txn aborted. */
static bool
apply_direct(inbox_commit *c, MDB_txn *txn, inbox_req *batch, uint64_t now, bool low)
{
	for (inbox_req *r = batch; r; r = r->next) {
		if (low && grows(&r->op)) {
			r->op.rc = SP_EFULL;
			continue;
		}
		if (inbox_store_apply(c->store, txn, &r->op, now) != SP_OK
		    && !inbox_op_failed_clean(&r->op)) {
			inbox_store_txn_abort(c->store, txn);
			return false;
		}
	}
	return true;
}

/* Slow path, after the fast one failed: each op in a nested txn, so a failing op (map
 * full) is undone alone. Ops that do not fit the txn are split off into *rest. */
static uint32_t
apply_each_nested(
    inbox_commit *c, MDB_txn *txn, inbox_req **batch, inbox_req **rest, uint64_t now, bool low)
{
	inbox_req *r, *prev = NULL;
	uint32_t applied = 0;
	for (r = *batch; r; prev = r, r = r->next) {
		if (low && grows(&r->op)) {
			r->op.rc = SP_EFULL;
			continue;
		}
		if (!apply_nested(c, txn, r, now)) {
			*rest = r;
			if (prev)
				prev->next = NULL;
			else
				*batch = NULL;
			break;
		}
		applied++;
	}
	return applied;
}

/* One collector step in `txn` (a failure only skips it: its nested txn is undone). */
static void
collect(inbox_commit *c, MDB_txn *txn, uint32_t limit)
{
	uint64_t deleted;
	if (limit && inbox_store_collect(c->store, txn, limit, &deleted) == SP_OK)
		sp_metric_add(inbox_m.collected, deleted);
}

/* The writer has nothing queued: a commit of collection alone. */
static void
collect_idle(inbox_commit *c)
{
	uint32_t limit = inbox_store_collect_limit(c->store, true);
	MDB_txn *txn;
	int rc;
	if (!limit)
		return;
	if ((rc = inbox_store_txn_begin(c->store, NULL, &txn)))
		fatal("txn begin", rc);
	collect(c, txn, limit);
	if ((rc = inbox_store_txn_commit(c->store, txn)) == SP_EFULL)
		return;
	if (rc)
		fatal("commit", rc);
	atomic_fetch_add(&c->commits, 1);
	sp_metric_inc(inbox_m.commits);
	sp_metric_set(inbox_m.garbage, (int64_t)inbox_store_garbage(c->store));
}

/* Hands the applied batch to the replication hook; on failure aborts `txn`. */
static int
replicate(inbox_commit *c, MDB_txn *txn, inbox_req *batch)
{
	bool any = false;
	for (inbox_req *r = batch; r && !any; r = r->next)
		any = r->op.rc == SP_OK && r->op.lsn;
	if (!any)
		return SP_OK;
	int rc = c->cfg.repl->replicate(c->cfg.repl->arg, batch);
	if (rc)
		inbox_store_txn_abort(c->store, txn);
	return rc;
}

void
inbox_commit_fail_queued(inbox_commit *c, int rc)
{
	inbox_req *keep = NULL, **kt = &keep, *fail = NULL, **ft = &fail;
	pthread_mutex_lock(&c->lock);
	for (inbox_req *r = c->head, *next; r; r = next) {
		next = r->next;
		r->next = NULL;
		if (r->replay) {
			*kt = r;
			kt = &r->next;
		} else {
			r->op.rc = rc;
			*ft = r;
			ft = &r->next;
		}
	}
	c->head = keep;
	c->tail = keep ? (inbox_req *)((char *)kt - offsetof(inbox_req, next)) : NULL;
	pthread_mutex_unlock(&c->lock);
	for (inbox_req *r = fail; r; r = r->next)
		count_op(&r->op);
	complete(fail);
}

static void
run_batch(inbox_commit *c, inbox_req *batch, uint32_t n)
{
	uint64_t t0 = sp_mono_ns(), now = c->cfg.clock(c->cfg.clock_arg);
	bool low = disk_low(c);
	inbox_req *r, *rest = NULL;
	MDB_txn *txn;
	uint32_t applied = n;
	int rc;

	sp_metric_set(inbox_m.disk_low, low);
	if (!batch->replay && c->cfg.repl && (rc = c->cfg.repl->admit(c->cfg.repl->arg))) {
		for (r = batch; r; r = r->next)
			r->op.rc = rc;
		goto done;
	}
	if ((rc = inbox_store_txn_begin(c->store, NULL, &txn)))
		fatal("txn begin", rc);
	if (batch->replay) {
		/* The primary applied these: a copy that cannot is no longer a copy of it. */
		if (!apply_direct(c, txn, batch, now, false))
			fatal("replaying a replicated op", batch->op.rc);
		for (r = batch; r; r = r->next)
			if (r->op.rc != SP_OK)
				fatal("replaying a replicated op", r->op.rc);
	} else if (!apply_direct(c, txn, batch, now, low)) {
		txn = NULL;
		if (n > 1) {
			/* Otherwise the op failed alone: its error is the reply, nothing to commit.
			 */
			for (r = batch; r; r = r->next)
				inbox_op_reset(&r->op);
			if ((rc = inbox_store_txn_begin(c->store, NULL, &txn)))
				fatal("txn begin", rc);
			applied = apply_each_nested(c, txn, &batch, &rest, now, low);
		}
	}
	if (txn) {
		/* A replica's replay is off the reply path (its records are durable in the log
		 * already): it collects as much as an idle commit would, so the garbage does
		 * not cost commits (and fsyncs) of its own between replays. */
		collect(c, txn, inbox_store_collect_limit(c->store, batch && batch->replay));
		inbox_shard_stat st;
		if (inbox_store_shard_stat(c->store, txn, &st) == SP_OK) {
			sp_metric_set(inbox_m.lsn, (int64_t)st.lsn);
			sp_metric_set(inbox_m.entries, (int64_t)st.entries);
			sp_metric_set(inbox_m.blobs, (int64_t)st.blobs);
			sp_metric_set(inbox_m.map_used, (int64_t)st.map_used);
		}
		uint64_t dn, db;
		inbox_store_dedup_stat(c->store, &dn, &db);
		sp_metric_set(inbox_m.dedup_entries, (int64_t)dn);
		sp_metric_set(inbox_m.dedup_bytes, (int64_t)db);
		sp_metric_set(inbox_m.garbage, (int64_t)inbox_store_garbage(c->store));
		uint64_t qd, qe, qb;
		inbox_store_queue_stat(c->store, &qd, &qe, &qb);
		sp_metric_set(inbox_m.queue_devices, (int64_t)qd);
		sp_metric_set(inbox_m.queue_index_bytes, (int64_t)qb);
		if (batch && !batch->replay && c->cfg.repl && (rc = replicate(c, txn, batch))) {
			for (r = batch; r; r = r->next) {
				inbox_op_fini(&r->op);
				r->op.rc = rc;
			}
			txn = NULL;
		}
	}
	if (txn) {
		uint64_t t1 = sp_mono_ns();
		rc = inbox_store_txn_commit(c->store, txn);
		sp_metric_observe(inbox_m.sync_seconds, (double)(sp_mono_ns() - t1) / 1e9);
		if (rc == SP_EFULL && !c->cfg.repl) {
			/* Replicated, the batch is already in the log: refusing it here would
			 * leave this copy behind its own log, so it is fatal below. */
			for (r = batch; r; r = r->next)
				r->op.rc = SP_EFULL;
		} else if (rc) {
			fatal("commit", rc);
		} else {
			atomic_fetch_add(&c->commits, 1);
			sp_metric_inc(inbox_m.commits);
			inbox_metrics_batch(applied);
		}
	}
	if (rest) {
		if (!batch) {
			/* Not even one op fits an empty transaction. */
			inbox_req *next = rest->next;
			rest->next = NULL;
			rest->op.rc = SP_ELIMIT;
			batch = rest;
			rest = next;
		}
		if (rest)
			requeue(c, rest);
	}
	sp_metric_observe(inbox_m.commit_seconds, (double)(sp_mono_ns() - t0) / 1e9);
done:
	if (!batch)
		return;
	inbox_req *last = batch;
	uint32_t nbatch = 0;
	for (r = batch; r; r = r->next) {
		count_op(&r->op);
		last = r;
		nbatch++;
	}
	pthread_mutex_lock(&c->lock);
	if (nbatch <= INLINE_DONE_MAX && !c->done_head && !c->head) {
		/* Light load: reply from here, saving a thread wake-up on the latency path. */
		pthread_mutex_unlock(&c->lock);
		complete(batch);
		return;
	}
	if (c->done_tail)
		c->done_tail->next = batch;
	else
		c->done_head = batch;
	c->done_tail = last;
	pthread_cond_signal(&c->done_cond);
	pthread_mutex_unlock(&c->lock);
}

static void *
done_main(void *arg)
{
	inbox_commit *c = arg;
	pthread_mutex_lock(&c->lock);
	for (;;) {
		while (!c->done_head && !c->writer_exited)
			pthread_cond_wait(&c->done_cond, &c->lock);
		inbox_req *r = c->done_head;
		if (!r)
			break;
		c->done_head = c->done_tail = NULL;
		pthread_mutex_unlock(&c->lock);
		complete(r);
		pthread_mutex_lock(&c->lock);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

static void *
writer_main(void *arg)
{
	inbox_commit *c = arg;
	for (;;) {
		uint32_t n;
		pthread_mutex_lock(&c->lock);
		while (!c->head && !c->stopping) {
			if (inbox_store_garbage(c->store) == 0) {
				pthread_cond_wait(&c->cond, &c->lock);
				continue;
			}
			/* Idle with garbage left: collect a step every COLLECT_IDLE_MS. */
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += COLLECT_IDLE_MS * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			if (pthread_cond_timedwait(&c->cond, &c->lock, &ts) == ETIMEDOUT && !c->head
			    && !c->stopping) {
				pthread_mutex_unlock(&c->lock);
				collect_idle(c);
				pthread_mutex_lock(&c->lock);
			}
		}
		if (!c->head) {
			pthread_mutex_unlock(&c->lock);
			break;
		}
		inbox_req *batch = take_batch(c, &n);
		pthread_mutex_unlock(&c->lock);
		run_batch(c, batch, n);
	}
	pthread_mutex_lock(&c->lock);
	c->writer_exited = true;
	pthread_cond_signal(&c->done_cond);
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

int
inbox_commit_start(inbox_commit **out, inbox_store *s, const inbox_commit_config *cfg)
{
	inbox_commit *c = calloc(1, sizeof(*c));
	if (!c)
		return SP_ENOMEM;
	c->store = s;
	c->cfg = *cfg;
	if (!c->cfg.clock)
		c->cfg.clock = wall_clock;
	if (!c->cfg.max_batch_ops)
		c->cfg.max_batch_ops = 4096;
	if (!c->cfg.max_batch_bytes)
		c->cfg.max_batch_bytes = 64u << 20;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	pthread_cond_init(&c->done_cond, NULL);
	if (pthread_create(&c->done_thread, NULL, done_main, c) != 0)
		goto fail;
	if (pthread_create(&c->thread, NULL, writer_main, c) != 0) {
		pthread_mutex_lock(&c->lock);
		c->writer_exited = true;
		pthread_cond_signal(&c->done_cond);
		pthread_mutex_unlock(&c->lock);
		pthread_join(c->done_thread, NULL);
		goto fail;
	}
	*out = c;
	return SP_OK;
fail:
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
	pthread_cond_destroy(&c->done_cond);
	free(c);
	return SP_ENOMEM;
}

void
inbox_commit_submit(inbox_commit *c, inbox_req *req)
{
	req->next = NULL;
	inbox_commit_submit_chain(c, req);
}

void
inbox_commit_submit_chain(inbox_commit *c, inbox_req *first)
{
	inbox_req *last = first;
	while (last->next)
		last = last->next;
	pthread_mutex_lock(&c->lock);
	if (c->stopping) {
		pthread_mutex_unlock(&c->lock);
		for (inbox_req *r = first, *next; r; r = next) {
			next = r->next;
			r->next = NULL;
			r->op.rc = SP_ECLOSED;
			r->done(r);
		}
		return;
	}
	if (c->tail)
		c->tail->next = first;
	else
		c->head = first;
	c->tail = last;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

uint64_t
inbox_commit_count(const inbox_commit *c)
{
	return atomic_load(&c->commits);
}

void
inbox_commit_stop(inbox_commit *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->stopping = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->thread, NULL);
	pthread_join(c->done_thread, NULL);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
	pthread_cond_destroy(&c->done_cond);
	free(c);
}
