/* The store's core: open/close, transactions (keeping the in-memory indexes in step),
 * small records, and inbox_store_apply, which hands each op kind to its file. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "repl/lmdbfx.h"
#include "sp_log.h"
#include "store_internal.h"

int
inbox_lmdb_err(int rc, const char *what)
{
	switch (rc) {
	case 0:
		return SP_OK;
	case MDB_NOTFOUND:
		return SP_ENOTFOUND;
	case MDB_MAP_FULL:
		sp_warn("store: %s: map full", what);
		return SP_EFULL;
	case MDB_TXN_FULL:
		return SP_ELIMIT;
	default:
		sp_error("store: %s: %s", what, mdb_strerror(rc));
		return SP_ESTORE;
	}
}

void
inbox_op_fini(inbox_op *op)
{
	if (op->kind == INBOX_OP_ACK) {
		free(op->ack.refs);
		op->ack.refs = NULL;
		op->ack.nrefs = 0;
	}
}

void
inbox_op_reset(inbox_op *op)
{
	inbox_op_fini(op);
	op->lsn = 0;
	op->ts = 0;
	op->rc = SP_OK;
	if (op->kind == INBOX_OP_APPEND) {
		op->append.body_id = 0;
		for (uint32_t i = 0; i < op->append.ntargets; i++) {
			op->append.targets[i].seq = 0;
			op->append.targets[i].rc = SP_OK;
			op->append.targets[i].dup = false;
		}
	}
}

const inbox_store_config *
inbox_store_cfg(const inbox_store *s)
{
	return &s->cfg;
}

/* ---- open / close ---- */

static int
open_dbis(inbox_store *s)
{
	static const struct {
		const char *name;
		size_t off;
	} dbs[] = {
		{ "meta", offsetof(inbox_store, meta) },
		{ "log", offsetof(inbox_store, log) },
		{ "dev", offsetof(inbox_store, dev) },
		{ "ttl", offsetof(inbox_store, ttl) },
		{ "bref", offsetof(inbox_store, bref) },
		{ "body", offsetof(inbox_store, body) },
		{ "blob", offsetof(inbox_store, blob) },
		{ "bchunk", offsetof(inbox_store, bchunk) },
		{ "bttl", offsetof(inbox_store, bttl) },
	};
	MDB_txn *txn;
	MDB_dbi old;
	int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
	if (rc)
		return inbox_lmdb_err(rc, "begin");
	/* Queues of the first layout would be invisible to this one: refuse, do not lose. */
	if (mdb_dbi_open(txn, "q", 0, &old) == 0) {
		mdb_txn_abort(txn);
		sp_error("store: %s holds queues in an older layout; drain it with the release "
		         "that wrote it, or start this shard on an empty data-dir",
		    s->dir);
		return SP_ESTORE;
	}
	for (size_t i = 0; i < sizeof(dbs) / sizeof(dbs[0]); i++) {
		MDB_dbi *dbi = (MDB_dbi *)((char *)s + dbs[i].off);
		if ((rc = mdb_dbi_open(txn, dbs[i].name, MDB_CREATE, dbi))) {
			mdb_txn_abort(txn);
			return inbox_lmdb_err(rc, "dbi open");
		}
	}
	if ((rc = mdb_txn_commit(txn)))
		return inbox_lmdb_err(rc, "commit");
	return SP_OK;
}

int
inbox_store_open(inbox_store **out, const inbox_store_config *cfg)
{
	inbox_store *s = calloc(1, sizeof(*s));
	int rc, dead;
	if (!s)
		return SP_ENOMEM;
	s->cfg = *cfg;
	if (!(s->dir = strdup(cfg->dir))) {
		free(s);
		return SP_ENOMEM;
	}
	s->cfg.dir = s->dir;
	s->lock_fd = -1;
	if (mkdir(s->dir, 0700) != 0 && errno != EEXIST) {
		sp_error("store: mkdir %s: %s", s->dir, strerror(errno));
		rc = SP_ESTORE;
		goto fail;
	}
	/* Two shards writing one environment would both hand out seqs: refuse the second. */
	char lock_path[4096];
	snprintf(lock_path, sizeof(lock_path), "%s/inboxsrv.lock", s->dir);
	if ((s->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0
	    || flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		sp_error("store: %s: %s", lock_path,
		    errno == EWOULDBLOCK ? "in use by another process" : strerror(errno));
		rc = errno == EWOULDBLOCK ? SP_EEXIST : SP_ESTORE;
		goto fail;
	}
	if ((rc = mdb_env_create(&s->env))) {
		rc = inbox_lmdb_err(rc, "env create");
		goto fail;
	}
	/* NOTLS: read txns are begun and ended on nng's worker threads. Default (synchronous)
	 * commits: an acknowledged append is on disk. */
	if ((rc = mdb_env_set_maxdbs(s->env, 16))
	    || (rc = mdb_env_set_mapsize(s->env, cfg->map_size))
	    || (rc = mdb_env_set_maxreaders(s->env, cfg->max_readers ? cfg->max_readers : 256))
	    || (rc = mdb_env_open(s->env, s->dir, MDB_NOTLS | (cfg->log_is_durable ? MDB_NOMETASYNC : 0), 0600))) {
		sp_error("store: open %s: %s", s->dir, mdb_strerror(rc));
		rc = SP_ESTORE;
		goto fail;
	}
	/* Reader slots left by a killed process would pin old pages forever. */
	mdb_reader_check(s->env, &dead);
	if ((rc = open_dbis(s)) || (rc = inbox_store_rebuild(s)))
		goto fail;
	*out = s;
	return SP_OK;
fail:
	inbox_dedup_free(s->dx);
	inbox_qindex_free(s->qx);
	if (s->env)
		mdb_env_close(s->env);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	free(s->dir);
	free(s);
	return rc;
}

void
inbox_store_close(inbox_store *s)
{
	if (!s)
		return;
	inbox_dedup_free(s->dx);
	inbox_qindex_free(s->qx);
	mdb_env_close(s->env);
	close(s->lock_fd);
	free(s->dir);
	free(s);
}

int
inbox_store_txn_begin(inbox_store *s, MDB_txn *parent, MDB_txn **txn)
{
	int depth = parent ? s->depth + 1 : 0;
	if (depth >= (int)(sizeof(s->marks) / sizeof(s->marks[0])))
		return SP_ELIMIT;
	int rc = inbox_lmdb_err(mdb_txn_begin(s->env, parent, 0, txn), "txn begin");
	if (rc == SP_OK) {
		s->depth = depth;
		s->marks[depth] = inbox_dedup_mark(s->dx);
		s->qmarks[depth] = inbox_qindex_mark(s->qx);
	}
	return rc;
}

/* The innermost txn ended: committed into its parent, or rolled back. */
static void
txn_end(inbox_store *s, bool keep)
{
	if (!keep) {
		inbox_dedup_rollback(s->dx, s->marks[s->depth]);
		inbox_qindex_rollback(s->qx, s->qmarks[s->depth]);
	} else if (s->depth == 0) {
		inbox_dedup_settle(s->dx);
		inbox_qindex_publish(s->qx);
	}
	s->depth--;
}

int
inbox_store_txn_commit(inbox_store *s, MDB_txn *txn)
{
	/* LMDB aborts a txn whose commit fails. */
	int rc = inbox_lmdb_err(mdb_txn_commit(txn), "commit");
	txn_end(s, rc == SP_OK);
	return rc;
}

void
inbox_store_txn_abort(inbox_store *s, MDB_txn *txn)
{
	mdb_txn_abort(txn);
	txn_end(s, false);
}

int
inbox_store_read_begin(inbox_store *s, MDB_txn **txn)
{
	return inbox_lmdb_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn), "read begin");
}

void
inbox_store_read_end(MDB_txn *txn)
{
	mdb_txn_abort(txn);
}

/* ---- small record helpers ---- */

int
inbox_store_get_u64(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t klen, uint64_t *v)
{
	MDB_val key = { klen, (void *)k }, val;
	int rc = mdb_get(txn, dbi, &key, &val);
	if (rc == MDB_NOTFOUND) {
		*v = 0;
		return SP_OK;
	}
	if (rc)
		return inbox_lmdb_err(rc, "get");
	if (val.mv_size != 8)
		return inbox_lmdb_err(MDB_CORRUPTED, "u64 record");
	*v = inbox_le64_get(val.mv_data);
	return SP_OK;
}

int
inbox_store_put_u64(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t klen, uint64_t v)
{
	uint8_t b[8];
	inbox_le64_put(b, v);
	MDB_val key = { klen, (void *)k }, val = { 8, b };
	return inbox_lmdb_err(mdb_put(txn, dbi, &key, &val, 0), "put");
}

/* Adds `delta` to a shard-wide counter in the meta DB. */
int
inbox_store_count_add(inbox_store *s, MDB_txn *txn, const char *name, int64_t delta)
{
	uint64_t v;
	int rc;
	if (delta == 0)
		return SP_OK;
	if ((rc = inbox_store_get_u64(txn, s->meta, name, strlen(name), &v)))
		return rc;
	v = delta < 0 && (uint64_t)-delta > v ? 0 : v + (uint64_t)delta;
	return inbox_store_put_u64(txn, s->meta, name, strlen(name), v);
}

/* The log record of entry (device, seq) at log id `id`, in `txn`: SP_OK, SP_ENOTFOUND, or
 * SP_ESTORE if the record is not that entry. */
int
inbox_store_log_entry(
    inbox_store *s, MDB_txn *txn, uint64_t id, uint64_t device, uint64_t seq, MDB_val *val)
{
	uint8_t k[LKEY_LEN];
	MDB_val key = { LKEY_LEN, k };
	inbox_log_key(k, id);
	int rc = mdb_get(txn, s->log, &key, val);
	if (rc)
		return inbox_lmdb_err(rc, "log get");
	const uint8_t *p = val->mv_data;
	if (inbox_entry_check(val) || inbox_le64_get(p + QH_DEVICE) != device
	    || inbox_le64_get(p + QH_SEQ) != seq)
		return inbox_lmdb_err(MDB_CORRUPTED, "queue entry");
	return SP_OK;
}

/* ---- apply ---- */

int
inbox_store_apply(inbox_store *s, MDB_txn *txn, inbox_op *op, uint64_t now)
{
	uint64_t lsn;
	int rc;

	if (op->ts == 0)
		op->ts = now;
	if ((rc = inbox_store_get_u64(txn, s->meta, "lsn", 3, &lsn)))
		goto out;
	lsn++;
	if (op->lsn && op->lsn != lsn) {
		rc = SP_EMISMATCH;
		goto out;
	}
	switch (op->kind) {
	case INBOX_OP_APPEND:
		rc = inbox_store_apply_append(s, txn, op, lsn);
		break;
	case INBOX_OP_ACK:
		rc = inbox_store_apply_ack(s, txn, op);
		break;
	case INBOX_OP_PURGE:
		rc = inbox_store_apply_purge(s, txn, op);
		break;
	case INBOX_OP_SWEEP:
		rc = inbox_store_apply_sweep(s, txn, op);
		break;
	case INBOX_OP_BLOB_PUT:
		rc = inbox_blob_apply_put(s, txn, op);
		break;
	case INBOX_OP_BLOB_DONE:
		rc = inbox_blob_apply_done(s, txn, op);
		break;
	case INBOX_OP_BLOB_FETCHED:
		rc = inbox_blob_apply_fetched(s, txn, op);
		break;
	default:
		/* Ops are built by this tier only: an unknown kind is a bug, not a request. */
		SP_ASSERT(!"inbox_store_apply: unknown op kind");
		rc = SP_EINVAL;
	}
	if (rc == SP_OK && (rc = inbox_store_put_u64(txn, s->meta, "lsn", 3, lsn)) == SP_OK)
		op->lsn = lsn;
out:
	op->rc = rc;
	return rc;
}

bool
inbox_op_failed_clean(const inbox_op *op)
{
	switch (op->rc) {
	case SP_EINVAL:
	case SP_EGAP:
	case SP_ETOOBIG:
	case SP_ESTATE:
	case SP_ENOTFOUND:
	case SP_ERANGE:
		return true;
	case SP_EFULL: /* the queue cap, not the map */
	case SP_ELIMIT: /* the sender's share of the queue */
		return op->kind == INBOX_OP_APPEND && !op->append.shared
		    && op->append.targets[0].rc == op->rc;
	default:
		return false;
	}
}

int
inbox_store_write(inbox_store *s, inbox_op **ops, size_t n, uint64_t now)
{
	MDB_txn *txn, *child;
	int rc;

	if ((rc = inbox_store_txn_begin(s, NULL, &txn)))
		return rc;
	for (size_t i = 0; i < n; i++) {
		if ((rc = inbox_store_txn_begin(s, txn, &child))) {
			inbox_store_txn_abort(s, txn);
			return rc;
		}
		if (inbox_store_apply(s, child, ops[i], now) == SP_OK) {
			if ((rc = inbox_store_txn_commit(s, child))) {
				inbox_store_txn_abort(s, txn);
				return rc;
			}
		} else {
			inbox_store_txn_abort(s, child);
		}
	}
	uint64_t collected;
	inbox_store_collect(s, txn, INBOX_COLLECT_LIMIT, &collected);
	return inbox_store_txn_commit(s, txn);
}

int
inbox_store_copy_fd(inbox_store *s, int fd)
{
	int rc = mdb_env_copyfd2(s->env, fd, MDB_CP_COMPACT);
	if (rc) {
		sp_error("store: snapshot copy: %s", mdb_strerror(rc));
		return SP_ESTORE;
	}
	return SP_OK;
}

int
inbox_store_file_lsn(const char *path, uint64_t *lsn)
{
	uint8_t b[8];
	int rc = repl_lmdb_file_get(path, "meta", "lsn", 3, b, sizeof(b));
	if (rc == SP_ENOTFOUND) {
		*lsn = 0;
		return SP_OK;
	}
	if (rc == SP_OK)
		*lsn = inbox_le64_get(b);
	return rc;
}

int
inbox_store_sync(inbox_store *s)
{
	int rc = mdb_env_sync(s->env, 1);
	if (rc) {
		sp_error("store: sync: %s", mdb_strerror(rc));
		return SP_EIO;
	}
	return SP_OK;
}
