/* The inbox shard on the replication mechanism (repl/node.h): the writer's hooks encode each
 * applied op as an effect record (oplog.h) for the node to log and ship; a replica's
 * committed records are decoded and replayed through the same writer. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "oplog.h"
#include "repl.h"
#include "repl/node.h"
#include "sp_error.h"
#include "sp_log.h"

#define STORE_FILE "data.mdb"
#define STORE_LOCK_FILE "lock.mdb"

const repl_snap_files inbox_repl_files = { STORE_FILE, STORE_LOCK_FILE };

struct inbox_repl {
	repl_node *node;
	inbox_store *store;
	inbox_commit *commit;
	inbox_commit_repl hooks;
};

/* ---- a replica's replay through the writer ---- */

typedef struct replay {
	inbox_req req;
	inbox_oplog_rec rec;
	uint8_t *data;
	inbox_repl *r;
	bool last; /* the last record of its sm_apply call: reports the applied LSN */
} replay;

static void
replay_free(replay *rp)
{
	inbox_oplog_fini(&rp->rec);
	free(rp->data);
	free(rp);
}

static void
replay_done(inbox_req *req)
{
	replay *rp = (replay *)req;
	inbox_repl *r = rp->r;
	rp->rec.op = rp->req.op; /* what the writer applied, with its results */
	/* The writer refused nothing (a failed replay is fatal there); the outcome of each
	 * target must also be the one the primary recorded. */
	if (inbox_oplog_check(&rp->rec) != SP_OK) {
		sp_error("FATAL: replication: a replayed op had another outcome than on the "
			 "primary: exiting; rebuild this copy from an empty data dir");
		_exit(70);
	}
	uint64_t lsn = rp->rec.op.lsn;
	bool last = rp->last;
	replay_free(rp);
	/* Once per call, not per record: each report takes the node's lock and wakes its
	 * waiters, which per record made the replica's threads contend on every batch. */
	if (last)
		repl_node_applied(r->node, lsn);
}

static int
sm_apply(void *arg, repl_node *node, const repl_log_rec *recs, size_t n)
{
	inbox_repl *r = arg;
	replay *head = NULL, **tail = &head, *prev = NULL;
	(void)node;
	for (size_t i = 0; i < n; i++) {
		replay *rp = calloc(1, sizeof(*rp));
		if (!rp || !(rp->data = malloc(recs[i].len ? recs[i].len : 1))) {
			free(rp);
			goto fail_nomem;
		}
		memcpy(rp->data, recs[i].data, recs[i].len);
		int rc = inbox_oplog_decode(rp->data, recs[i].len, &rp->rec);
		if (rc == SP_OK && rp->rec.op.lsn != recs[i].lsn)
			rc = SP_EMISMATCH;
		if (rc) {
			replay_free(rp);
			sp_error("repl: log record %" PRIu64 " does not decode: %s", recs[i].lsn,
			    sp_strerror(rc));
			for (replay *q = head, *next; q; q = next) {
				next = (replay *)q->req.next;
				replay_free(q);
			}
			return rc;
		}
		rp->r = r;
		rp->req.op = rp->rec.op;
		rp->req.replay = true;
		rp->req.done = replay_done;
		rp->req.cost = recs[i].len;
		*tail = rp;
		tail = (replay **)&rp->req.next;
		prev = rp;
	}
	if (prev)
		prev->last = true;
	if (head)
		inbox_commit_submit_chain(r->commit, &head->req);
	return SP_OK;
fail_nomem:
	for (replay *q = head, *next; q; q = next) {
		next = (replay *)q->req.next;
		replay_free(q);
	}
	return SP_ENOMEM;
}

static int
sm_store_lsn(void *arg, uint64_t *lsn)
{
	inbox_repl *r = arg;
	MDB_txn *txn;
	inbox_shard_stat st;
	int rc = inbox_store_read_begin(r->store, &txn);
	if (rc)
		return rc;
	rc = inbox_store_shard_stat(r->store, txn, &st);
	inbox_store_read_end(txn);
	*lsn = st.lsn;
	return rc;
}

static int
sm_store_sync(void *arg)
{
	inbox_repl *r = arg;
	return inbox_store_sync(r->store);
}

static void
sm_fail_queued(void *arg, int rc)
{
	inbox_repl *r = arg;
	inbox_commit_fail_queued(r->commit, rc);
}

static int
sm_snapshot_copy(void *arg, int fd, const char *path, uint64_t *lsn)
{
	inbox_repl *r = arg;
	int rc = inbox_store_copy_fd(r->store, fd);
	return rc ? rc : inbox_store_file_lsn(path, lsn);
}

/* ---- the writer's hooks (writer thread) ---- */

static int
hook_admit(void *arg)
{
	inbox_repl *r = arg;
	return repl_node_admit(r->node);
}

static void
free_recs(repl_log_rec *recs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free((void *)recs[i].data);
	free(recs);
}

static int
hook_replicate(void *arg, inbox_req *batch)
{
	inbox_repl *r = arg;
	size_t n = 0, cap = 0;
	for (inbox_req *q = batch; q; q = q->next)
		cap += q->op.rc == SP_OK && q->op.lsn;
	if (cap > REPL_LOG_BATCH_MAX)
		return SP_ETOOBIG; /* the writer's batch bound is below it */
	repl_log_rec *recs = calloc(cap ? cap : 1, sizeof(*recs));
	if (!recs)
		return SP_ENOMEM;
	for (inbox_req *q = batch; q; q = q->next) {
		if (q->op.rc != SP_OK || !q->op.lsn)
			continue;
		size_t len = inbox_oplog_size(&q->op);
		uint8_t *buf = len ? malloc(len) : NULL;
		if (!buf) {
			free_recs(recs, n);
			return len ? SP_ENOMEM : SP_EINVAL; /* 0: an op the codec cannot hold */
		}
		long w = inbox_oplog_encode(&q->op, buf, len);
		if (w < 0) {
			free(buf);
			free_recs(recs, n);
			sp_error("repl: op lsn %" PRIu64 " does not encode: %s", q->op.lsn,
			    sp_strerror((int)w));
			return (int)w;
		}
		recs[n++] = (repl_log_rec) { 0, q->op.lsn, buf, (uint32_t)w };
	}
	int rc = repl_node_replicate(r->node, recs, n);
	free_recs(recs, n);
	return rc;
}

/* ---- life cycle ---- */

int
inbox_repl_open(inbox_repl **out, const repl_node_config *cfg, uint64_t shard, inbox_store *store)
{
	char group[32];
	inbox_repl *r = calloc(1, sizeof(*r));
	if (!r)
		return SP_ENOMEM;
	r->store = store;
	snprintf(group, sizeof(group), "inbox-%" PRIu64, shard);
	repl_node_config nc = *cfg;
	nc.group = group;
	nc.metric_prefix = "sp_inbox_repl";
	nc.files = &inbox_repl_files;
	nc.lazy_commit = true; /* an inbox replica serves no reads */
	repl_node_sm sm = {
		.arg = r,
		.store_lsn = sm_store_lsn,
		.store_sync = sm_store_sync,
		.apply = sm_apply,
		.fail_queued = sm_fail_queued,
		.snapshot_copy = sm_snapshot_copy,
	};
	int rc = repl_node_open(&r->node, &nc, &sm);
	if (rc) {
		free(r);
		return rc;
	}
	r->hooks = (inbox_commit_repl) { hook_admit, hook_replicate, r };
	*out = r;
	return SP_OK;
}

const inbox_commit_repl *
inbox_repl_hooks(inbox_repl *r)
{
	return &r->hooks;
}

int
inbox_repl_start(inbox_repl *r, inbox_commit *c)
{
	r->commit = c;
	return repl_node_start(r->node);
}

int
inbox_repl_gate(void *arg, bool write)
{
	inbox_repl *r = arg;
	return repl_node_gate(r->node, write);
}

void
inbox_repl_primary_name(inbox_repl *r, char *buf, size_t cap)
{
	repl_node_primary_name(r->node, buf, cap);
}

bool
inbox_repl_restart_wanted(inbox_repl *r)
{
	return r && repl_node_restart_wanted(r->node);
}

void
inbox_repl_stop(inbox_repl *r, bool resign)
{
	if (r)
		repl_node_stop(r->node, resign);
}

void
inbox_repl_free(inbox_repl *r)
{
	if (!r)
		return;
	repl_node_free(r->node);
	free(r);
}

bool
inbox_repl_serves(unsigned type)
{
	return repl_node_serves(type);
}
