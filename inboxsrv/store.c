#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "sp_error.h"
#include "sp_log.h"
#include "store.h"

/* Queue entry (log value): header, then ct bytes, then the envelope or (shared) the body
 * id. */
#define Q_FLAG_GROUP 0x1
#define Q_FLAG_SHARED 0x2
enum {
	QH_FLAGS = 0, /* u32 */
	QH_CT_LEN = 4, /* u32 */
	QH_ENV_LEN = 8, /* u32: envelope or body length */
	QH_TS = 16, /* u64 store time */
	QH_SERVER_TS = 24, /* u64 */
	QH_FROM_USER = 32, /* u64 */
	QH_FROM_DEVICE = 40, /* u64 */
	QH_ETYPE = 48, /* u64 */
	QH_GROUP = 56, /* u64 */
	QH_MSG_ID = 64, /* 16 bytes */
	QH_DEVICE = 80, /* u64 */
	QH_SEQ = 88, /* u64 */
	QH_SIZE = 96
};

#define ENTRY_WIRE_OVERHEAD 160 /* >= msgpack keys, numbers and headers of one ENTRY (145) */

#define LKEY_LEN 8 /* log DB: entry id = lsn << TARGET_BITS | target index */
#define TARGET_BITS 13 /* > log2 of the most targets of one op (5120) */
#define TKEY_LEN 24 /* ttl DB: ts, device, seq */
#define TVAL_LEN 24 /* ttl DB: from_device, msg_id */
#define REBUILD_AHEAD 16 /* dedup records in flight while the index is rebuilt */
#define EVICT_BATCH 1024 /* dedup records forgotten at once when the index is at its cap */

#define LAYOUT 2 /* 1: per-device queue table "q" */

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

static int index_rebuild(inbox_store *s);
static int entry_check(const MDB_val *v);
static uint64_t entry_bytes(const uint8_t *p);

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
	    || (rc = mdb_env_open(s->env, s->dir, MDB_NOTLS, 0600))) {
		sp_error("store: open %s: %s", s->dir, mdb_strerror(rc));
		rc = SP_ESTORE;
		goto fail;
	}
	/* Reader slots left by a killed process would pin old pages forever. */
	mdb_reader_check(s->env, &dead);
	if ((rc = open_dbis(s)) || (rc = index_rebuild(s)))
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

static int
get_u64(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t klen, uint64_t *v)
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

static int
put_u64(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t klen, uint64_t v)
{
	uint8_t b[8];
	inbox_le64_put(b, v);
	MDB_val key = { klen, (void *)k }, val = { 8, b };
	return inbox_lmdb_err(mdb_put(txn, dbi, &key, &val, 0), "put");
}

/* dev table: device -> {last seq, acknowledged seq}. Written when an ACK leaves entries
 * in the log for the collector (acknowledged), and when the sweep removes a device's last
 * TTL record (last seq): what the queue index cannot rebuild from the log and TTL table. */
static int
dev_get(inbox_store *s, MDB_txn *txn, uint64_t device, uint64_t *last, uint64_t *acked)
{
	uint8_t k[8];
	MDB_val key = { 8, k }, val;
	sp_be64_put(k, device);
	int rc = mdb_get(txn, s->dev, &key, &val);
	*last = *acked = 0;
	if (rc == MDB_NOTFOUND)
		return SP_OK;
	if (rc)
		return inbox_lmdb_err(rc, "dev get");
	if (val.mv_size != 16)
		return inbox_lmdb_err(MDB_CORRUPTED, "dev record");
	*last = inbox_le64_get(val.mv_data);
	*acked = inbox_le64_get((const uint8_t *)val.mv_data + 8);
	return SP_OK;
}

/* Raises the device's persisted last seq and acknowledged seq to at least these. */
static int
dev_raise(inbox_store *s, MDB_txn *txn, uint64_t device, uint64_t last, uint64_t acked)
{
	uint64_t l, a;
	uint8_t k[8], v[16];
	int rc;
	if ((rc = dev_get(s, txn, device, &l, &a)))
		return rc;
	sp_be64_put(k, device);
	inbox_le64_put(v, last > l ? last : l);
	inbox_le64_put(v + 8, acked > a ? acked : a);
	MDB_val key = { 8, k }, val = { 16, v };
	return inbox_lmdb_err(mdb_put(txn, s->dev, &key, &val, 0), "dev put");
}

static void
log_key(uint8_t k[LKEY_LEN], uint64_t id)
{
	sp_be64_put(k, id);
}

static void
ttl_key(uint8_t k[TKEY_LEN], uint64_t ts, uint64_t device, uint64_t seq)
{
	sp_be64_put(k, ts);
	sp_be64_put(k + 8, device);
	sp_be64_put(k + 16, seq);
}

/* The fingerprint of a TTL record (key k, value v). */
static uint64_t
ttl_fp(const inbox_store *s, const uint8_t *k, const uint8_t *v)
{
	return inbox_dedup_fp(s->dx, sp_be64_get(k + 8), inbox_le64_get(v), v + 8);
}

/* A dedup lookup: the full key, checked against the TTL record a fingerprint points at. */
typedef struct dedup_probe {
	inbox_store *s;
	MDB_txn *txn;
	uint64_t device, from_device;
	const uint8_t *msg_id;
	int rc; /* an LMDB error met while checking */
} dedup_probe;

static bool
dedup_match(void *arg, uint64_t ts, uint64_t seq)
{
	dedup_probe *p = arg;
	uint8_t k[TKEY_LEN];
	ttl_key(k, ts, p->device, seq);
	MDB_val key = { TKEY_LEN, k }, val;
	int rc = mdb_get(p->txn, p->s->ttl, &key, &val);
	if (rc) {
		/* Not found: another device's record with the same fingerprint. */
		if (rc != MDB_NOTFOUND)
			p->rc = inbox_lmdb_err(rc, "ttl get");
		return false;
	}
	const uint8_t *v = val.mv_data;
	return val.mv_size == TVAL_LEN && inbox_le64_get(v) == p->from_device
	    && memcmp(v + 8, p->msg_id, INBOX_MSG_ID_LEN) == 0;
}

/* Forgets the oldest dedup records (EVICT_BATCH of them) to stay under cfg.dedup_max. */
static int
dedup_evict(inbox_store *s, MDB_txn *txn)
{
	MDB_cursor *c;
	MDB_val key = { TKEY_LEN, s->evict_key }, val;
	uint64_t n = 0;
	int rc;
	if ((rc = mdb_cursor_open(txn, s->ttl, &c)))
		return inbox_lmdb_err(rc, "cursor");
	rc = mdb_cursor_get(c, &key, &val, MDB_SET_RANGE);
	while (rc == 0 && n < EVICT_BATCH) {
		if (key.mv_size != TKEY_LEN || val.mv_size != TVAL_LEN) {
			rc = MDB_CORRUPTED;
			break;
		}
		const uint8_t *k = key.mv_data;
		if ((rc = inbox_dedup_remove(s->dx, ttl_fp(s, k, val.mv_data), sp_be64_get(k),
			 sp_be64_get(k + 16), false)))
			goto out;
		/* Next time, go on right after this key. */
		memcpy(s->evict_key, k, TKEY_LEN);
		for (int i = TKEY_LEN - 1; i >= 0 && ++s->evict_key[i] == 0; i--)
			;
		n++;
		rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
	}
	sp_metric_add(inbox_m.dedup_evicted, n);
	rc = rc == MDB_NOTFOUND ? SP_OK : rc ? inbox_lmdb_err(rc, "ttl scan") : SP_OK;
out:
	mdb_cursor_close(c);
	return rc;
}

/* Loads the queue index: the dev table's last and acknowledged seqs, then every entry of
 * the log (in key order, so each device's seqs come in increasing order); acknowledged
 * ones are garbage for the collector. */
static int
queue_rebuild(inbox_store *s, MDB_txn *txn)
{
	MDB_cursor *c = NULL;
	MDB_val key, val;
	int rc;

	if ((rc = mdb_cursor_open(txn, s->dev, &c)))
		return inbox_lmdb_err(rc, "cursor");
	for (rc = mdb_cursor_get(c, &key, &val, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(c, &key, &val, MDB_NEXT)) {
		if (key.mv_size != 8 || val.mv_size != 16) {
			rc = MDB_CORRUPTED;
			break;
		}
		const uint8_t *v = val.mv_data;
		if ((rc = inbox_qindex_load_seq(s->qx, sp_be64_get(key.mv_data),
			 inbox_le64_get(v), inbox_le64_get(v + 8))))
			goto out;
	}
	if (rc != MDB_NOTFOUND)
		goto lmdb;
	mdb_cursor_close(c);
	if ((rc = mdb_cursor_open(txn, s->log, &c))) {
		c = NULL;
		goto lmdb;
	}
	for (rc = mdb_cursor_get(c, &key, &val, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(c, &key, &val, MDB_NEXT)) {
		if (key.mv_size != LKEY_LEN || entry_check(&val)) {
			rc = MDB_CORRUPTED;
			break;
		}
		const uint8_t *p = val.mv_data;
		if ((rc = inbox_qindex_load_entry(s->qx, inbox_le64_get(p + QH_DEVICE),
			 inbox_le64_get(p + QH_SEQ), sp_be64_get(key.mv_data), entry_bytes(p))))
			goto out;
	}
	if (rc == MDB_NOTFOUND) {
		rc = SP_OK;
		goto out;
	}
lmdb:
	rc = inbox_lmdb_err(rc, "queue rebuild");
out:
	if (c)
		mdb_cursor_close(c);
	return rc;
}

/* Builds the in-memory indexes: the dedup index from the TTL log (its newest
 * cfg.dedup_max records), every device's last seq from all of it, then the queues. */
static int
index_rebuild(inbox_store *s)
{
	MDB_txn *txn;
	MDB_cursor *c = NULL;
	MDB_stat ms;
	MDB_val key, val;
	int rc;

	s->depth = -1;
	if (!(s->qx = inbox_qindex_new()))
		return SP_ENOMEM;
	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)))
		return inbox_lmdb_err(rc, "read begin");
	if ((rc = mdb_stat(txn, s->ttl, &ms)) || (rc = mdb_cursor_open(txn, s->ttl, &c))) {
		rc = inbox_lmdb_err(rc, "ttl stat");
		goto out;
	}
	uint64_t skip = 0, keep = ms.ms_entries;
	if (s->cfg.dedup_max && keep > s->cfg.dedup_max) {
		skip = keep - s->cfg.dedup_max;
		keep = s->cfg.dedup_max;
	}
	if (!(s->dx = inbox_dedup_new(keep))) {
		rc = SP_ENOMEM;
		goto out;
	}
	memset(s->evict_key, 0, TKEY_LEN);
	bool first = true;
	/* Records wait in a small ring after their slot was prefetched: inserting into a
	 * table much larger than the caches is otherwise one memory stall per record. */
	struct {
		uint64_t fp, ts, seq;
	} ring[REBUILD_AHEAD];
	size_t nring = 0;
	rc = mdb_cursor_get(c, &key, &val, MDB_FIRST);
	for (; rc == 0; rc = mdb_cursor_get(c, &key, &val, MDB_NEXT)) {
		if (key.mv_size != TKEY_LEN || val.mv_size != TVAL_LEN) {
			rc = MDB_CORRUPTED;
			break;
		}
		const uint8_t *k = key.mv_data;
		if ((rc = inbox_qindex_load_seq(
			 s->qx, sp_be64_get(k + 8), sp_be64_get(k + 16), 0)))
			goto out;
		if (skip) {
			skip--;
			continue;
		}
		if (first) {
			memcpy(s->evict_key, k, TKEY_LEN);
			first = false;
		}
		uint64_t fp = ttl_fp(s, k, val.mv_data);
		inbox_dedup_prefetch(s->dx, fp);
		if (nring == REBUILD_AHEAD) {
			size_t i = (size_t)(inbox_dedup_count(s->dx) % REBUILD_AHEAD);
			if ((rc = inbox_dedup_insert(s->dx, ring[i].fp, ring[i].ts, ring[i].seq)))
				goto out;
			ring[i].fp = fp;
			ring[i].ts = sp_be64_get(k);
			ring[i].seq = sp_be64_get(k + 16);
		} else {
			ring[nring].fp = fp;
			ring[nring].ts = sp_be64_get(k);
			ring[nring++].seq = sp_be64_get(k + 16);
		}
		/* Nothing to undo: this is the committed state. */
		inbox_dedup_settle(s->dx);
	}
	for (size_t j = 0; rc == MDB_NOTFOUND && j < nring; j++) {
		size_t i = (size_t)(inbox_dedup_count(s->dx) % REBUILD_AHEAD);
		if (inbox_dedup_insert(s->dx, ring[i].fp, ring[i].ts, ring[i].seq)) {
			rc = SP_ENOMEM;
			goto out;
		}
	}
	inbox_dedup_settle(s->dx);
	if (rc != MDB_NOTFOUND) {
		rc = inbox_lmdb_err(rc, "ttl scan");
		goto out;
	}
	rc = queue_rebuild(s, txn);
out:
	if (c)
		mdb_cursor_close(c);
	mdb_txn_abort(txn);
	return rc;
}

void
inbox_store_dedup_stat(const inbox_store *s, uint64_t *records, uint64_t *bytes)
{
	*records = inbox_dedup_count(s->dx);
	*bytes = inbox_dedup_bytes(s->dx);
}

/* Adds `delta` to a shard-wide counter in the meta DB. */
static int
count_add(inbox_store *s, MDB_txn *txn, const char *name, int64_t delta)
{
	uint64_t v;
	int rc;
	if (delta == 0)
		return SP_OK;
	if ((rc = get_u64(txn, s->meta, name, strlen(name), &v)))
		return rc;
	v = delta < 0 && (uint64_t)-delta > v ? 0 : v + (uint64_t)delta;
	return put_u64(txn, s->meta, name, strlen(name), v);
}

/* Drops one reference to a shared body, deleting it at zero. */
static int
body_unref(inbox_store *s, MDB_txn *txn, uint64_t body_id)
{
	uint8_t k[8];
	uint64_t refs;
	int rc;
	sp_be64_put(k, body_id);
	if ((rc = get_u64(txn, s->bref, k, 8, &refs)))
		return rc;
	if (refs > 1)
		return put_u64(txn, s->bref, k, 8, refs - 1);
	MDB_val key = { 8, k };
	rc = mdb_del(txn, s->bref, &key, NULL);
	if (rc && rc != MDB_NOTFOUND)
		return inbox_lmdb_err(rc, "bref del");
	rc = mdb_del(txn, s->body, &key, NULL);
	if (rc && rc != MDB_NOTFOUND)
		return inbox_lmdb_err(rc, "body del");
	return SP_OK;
}

static int
entry_check(const MDB_val *v)
{
	if (v->mv_size < QH_SIZE)
		return SP_ESTORE;
	const uint8_t *p = v->mv_data;
	uint32_t flags = inbox_le32_get(p + QH_FLAGS), ct_len = inbox_le32_get(p + QH_CT_LEN);
	size_t payload = (flags & Q_FLAG_SHARED) ? 8 : inbox_le32_get(p + QH_ENV_LEN);
	return v->mv_size == QH_SIZE + (size_t)ct_len + payload ? SP_OK : SP_ESTORE;
}

/* Envelope/body + ct bytes of an entry: what counts against the device's byte cap. */
static uint64_t
entry_bytes(const uint8_t *p)
{
	return (uint64_t)inbox_le32_get(p + QH_CT_LEN) + inbox_le32_get(p + QH_ENV_LEN);
}

/* The shared body an entry refers to, or 0 if it carries its envelope. */
static uint64_t
entry_body(const MDB_val *v)
{
	const uint8_t *p = v->mv_data;
	if (inbox_le32_get(p + QH_FLAGS) & Q_FLAG_SHARED)
		return inbox_le64_get(p + v->mv_size - 8);
	return 0;
}

/* The log record of entry (device, seq) at log id `id`, in `txn`: SP_OK, SP_ENOTFOUND, or
 * SP_ESTORE if the record is not that entry. */
static int
log_entry(inbox_store *s, MDB_txn *txn, uint64_t id, uint64_t device, uint64_t seq, MDB_val *val)
{
	uint8_t k[LKEY_LEN];
	MDB_val key = { LKEY_LEN, k };
	log_key(k, id);
	int rc = mdb_get(txn, s->log, &key, val);
	if (rc)
		return inbox_lmdb_err(rc, "log get");
	const uint8_t *p = val->mv_data;
	if (entry_check(val) || inbox_le64_get(p + QH_DEVICE) != device
	    || inbox_le64_get(p + QH_SEQ) != seq)
		return inbox_lmdb_err(MDB_CORRUPTED, "queue entry");
	return SP_OK;
}

/* Takes queued entry (device, seq) at log id `id` off its queue and, if `ref` is non-NULL,
 * reports who sent it. `now`: delete its record and drop its body reference at once;
 * otherwise leave the record to the collector (deleting it now would dirty one page of
 * the log per entry: a device's entries are spread over it). */
static int
entry_take(inbox_store *s, MDB_txn *txn, uint64_t device, uint64_t seq, uint64_t id,
    inbox_ref *ref, bool now)
{
	MDB_val val;
	int rc = log_entry(s, txn, id, device, seq, &val);
	if (rc)
		return rc == SP_ENOTFOUND ? inbox_lmdb_err(MDB_CORRUPTED, "queue entry") : rc;
	const uint8_t *p = val.mv_data;
	uint64_t bytes = entry_bytes(p), body = entry_body(&val);
	if (ref) {
		ref->from_user = inbox_le64_get(p + QH_FROM_USER);
		ref->from_device = inbox_le64_get(p + QH_FROM_DEVICE);
		memcpy(ref->msg_id, p + QH_MSG_ID, INBOX_MSG_ID_LEN);
	}
	if (now) {
		uint8_t k[LKEY_LEN];
		MDB_val key = { LKEY_LEN, k };
		log_key(k, id);
		if ((rc = mdb_del(txn, s->log, &key, NULL)))
			return inbox_lmdb_err(rc, "log del");
		if (body && (rc = body_unref(s, txn, body)))
			return rc;
	}
	return inbox_qindex_remove(s->qx, device, seq, bytes, !now);
}

/* ---- append ---- */

static int
append_target(inbox_store *s, MDB_txn *txn, inbox_op *op, uint64_t id, inbox_target *t,
    uint64_t *body_id, uint64_t *refs)
{
	uint8_t k[LKEY_LEN], tk[TKEY_LEN], tv[TVAL_LEN];
	MDB_val key, val;
	inbox_qmeta m;
	uint64_t fts, fseq;
	int rc;

	uint64_t fp = inbox_dedup_fp(s->dx, t->device, op->append.from_device, op->append.msg_id);
	dedup_probe probe = { s, txn, t->device, op->append.from_device, op->append.msg_id, 0 };
	if (inbox_dedup_find(s->dx, fp, dedup_match, &probe, &fts, &fseq)) {
		t->seq = fseq;
		t->dup = true;
		t->rc = SP_OK;
		return SP_OK;
	}
	if (probe.rc)
		return probe.rc;
	inbox_qindex_meta(s->qx, t->device, &m);
	uint64_t n = (uint64_t)op->append.body_len + t->ct_len;
	if (m.count + 1 > s->cfg.max_queue_entries || m.bytes + n > s->cfg.max_queue_bytes) {
		t->seq = 0;
		t->rc = SP_EFULL;
		return SP_OK;
	}
	if (op->append.shared && *body_id == 0) {
		uint64_t next;
		if ((rc = get_u64(txn, s->meta, "next_body", 9, &next)))
			return rc;
		next++;
		if (op->append.body_id && op->append.body_id != next)
			return SP_EMISMATCH;
		if ((rc = put_u64(txn, s->meta, "next_body", 9, next)))
			return rc;
		*body_id = next;
	}

	uint64_t seq = m.last_seq + 1;
	size_t payload = op->append.shared ? 8 : op->append.body_len;
	log_key(k, id);
	key = (MDB_val) { LKEY_LEN, k };
	val = (MDB_val) { QH_SIZE + t->ct_len + payload, NULL };
	/* Ids grow with the LSN: every append lands at the end of the log. */
	if ((rc = mdb_put(txn, s->log, &key, &val, MDB_RESERVE | MDB_APPEND)))
		return inbox_lmdb_err(rc, "log put");
	uint8_t *p = val.mv_data;
	memset(p, 0, QH_SIZE);
	inbox_le32_put(p + QH_FLAGS,
	    (op->append.has_group ? Q_FLAG_GROUP : 0) | (op->append.shared ? Q_FLAG_SHARED : 0));
	inbox_le32_put(p + QH_CT_LEN, t->ct_len);
	inbox_le32_put(p + QH_ENV_LEN, op->append.body_len);
	inbox_le64_put(p + QH_TS, op->ts);
	inbox_le64_put(p + QH_SERVER_TS, op->append.server_ts);
	inbox_le64_put(p + QH_FROM_USER, op->append.from_user);
	inbox_le64_put(p + QH_FROM_DEVICE, op->append.from_device);
	inbox_le64_put(p + QH_ETYPE, op->append.etype);
	inbox_le64_put(p + QH_GROUP, op->append.group);
	memcpy(p + QH_MSG_ID, op->append.msg_id, INBOX_MSG_ID_LEN);
	inbox_le64_put(p + QH_DEVICE, t->device);
	inbox_le64_put(p + QH_SEQ, seq);
	if (t->ct_len)
		memcpy(p + QH_SIZE, t->ct, t->ct_len);
	if (op->append.shared)
		inbox_le64_put(p + QH_SIZE + t->ct_len, *body_id);
	else
		memcpy(p + QH_SIZE + t->ct_len, op->append.body, op->append.body_len);

	ttl_key(tk, op->ts, t->device, seq);
	inbox_le64_put(tv, op->append.from_device);
	memcpy(tv + 8, op->append.msg_id, INBOX_MSG_ID_LEN);
	key = (MDB_val) { TKEY_LEN, tk };
	val = (MDB_val) { TVAL_LEN, tv };
	if ((rc = mdb_put(txn, s->ttl, &key, &val, 0)))
		return inbox_lmdb_err(rc, "ttl put");
	if (s->cfg.dedup_max && inbox_dedup_count(s->dx) >= s->cfg.dedup_max
	    && (rc = dedup_evict(s, txn)))
		return rc;
	if ((rc = inbox_dedup_insert(s->dx, fp, op->ts, seq)))
		return rc;
	if (t->seq && t->seq != seq)
		return SP_EMISMATCH;
	if ((rc = inbox_qindex_add(s->qx, t->device, seq, id, n)))
		return rc;
	t->seq = seq;
	t->dup = false;
	t->rc = SP_OK;
	if (op->append.shared)
		(*refs)++;
	return SP_OK;
}

static int
apply_append(inbox_store *s, MDB_txn *txn, inbox_op *op, uint64_t lsn)
{
	uint64_t body_id = 0, refs = 0;
	int rc;

	if (op->append.ntargets == 0 || (!op->append.shared && op->append.ntargets != 1))
		return SP_EINVAL;
	if (op->append.ntargets >= 1u << TARGET_BITS)
		return SP_EINVAL;
	for (uint32_t i = 0; i < op->append.ntargets; i++)
		if ((rc = append_target(s, txn, op, lsn << TARGET_BITS | i, &op->append.targets[i],
			 &body_id, &refs)))
			return rc;
	if (refs) {
		uint8_t k[8];
		sp_be64_put(k, body_id);
		MDB_val key = { 8, k }, val = { op->append.body_len, (void *)op->append.body };
		if ((rc = mdb_put(txn, s->body, &key, &val, 0)))
			return inbox_lmdb_err(rc, "body put");
		if ((rc = put_u64(txn, s->bref, k, 8, refs)))
			return rc;
		op->append.body_id = body_id;
	}
	int64_t added = 0;
	for (uint32_t i = 0; i < op->append.ntargets; i++)
		added += op->append.targets[i].rc == SP_OK && !op->append.targets[i].dup;
	if ((rc = count_add(s, txn, "entries", added)) || (rc = count_add(s, txn, "dedups", added)))
		return rc;
	/* A single-target append reports its refusal as the op's result. */
	if (!op->append.shared)
		return op->append.targets[0].rc;
	return SP_OK;
}

/* ---- ack / purge ---- */

static int
refs_reserve(inbox_op *op, uint32_t n)
{
	if (n == 0)
		n = 1;
	op->ack.refs = malloc(sizeof(inbox_ref) * n);
	return op->ack.refs ? SP_OK : SP_ENOMEM;
}

static int
apply_ack(inbox_store *s, MDB_txn *txn, inbox_op *op)
{
	uint64_t device = op->ack.device, seq, id;
	inbox_qmeta m;
	int rc;

	op->ack.nrefs = 0;
	op->ack.more = false;
	inbox_qindex_meta(s->qx, device, &m);
	if (m.count == 0)
		return SP_OK;
	if (op->ack.nseqs) {
		if ((rc = refs_reserve(op, op->ack.nseqs)))
			return rc;
		for (uint32_t i = 0; i < op->ack.nseqs; i++) {
			seq = op->ack.seqs[i];
			if (inbox_qindex_find(s->qx, device, seq, &id))
				continue;
			if ((rc = entry_take(s, txn, device, seq, id, &op->ack.refs[op->ack.nrefs], true)))
				return rc;
			op->ack.nrefs++;
		}
	} else {
		uint64_t cap = m.count < INBOX_ACK_MAX ? m.count : INBOX_ACK_MAX, last = 0;
		if ((rc = refs_reserve(op, (uint32_t)cap)))
			return rc;
		for (uint64_t after = 0; inbox_qindex_next(s->qx, device, after, &seq, &id) == SP_OK
		     && seq <= op->ack.upto_seq;
		     after = seq) {
			if (op->ack.nrefs == cap) {
				op->ack.more = true;
				break;
			}
			if ((rc = entry_take(s, txn, device, seq, id, &op->ack.refs[op->ack.nrefs], false)))
				return rc;
			op->ack.nrefs++;
			last = seq;
		}
		/* One small record says it all for the restart: seqs up to `last` are gone. */
		if (last && (rc = dev_raise(s, txn, device, m.last_seq, last)))
			return rc;
	}
	return count_add(s, txn, "entries", -(int64_t)op->ack.nrefs);
}

static int
apply_purge(inbox_store *s, MDB_txn *txn, inbox_op *op)
{
	uint64_t device = op->purge.device, seq, id;
	int rc;

	/* The device's last seq stays (in memory, and in its TTL records on disk), so seqs stay
	 * monotonic if the device id were ever appended to again. */
	op->purge.removed = 0;
	for (uint64_t after = 0; inbox_qindex_next(s->qx, device, after, &seq, &id) == SP_OK;
	     after = seq) {
		if ((rc = entry_take(s, txn, device, seq, id, NULL, false)))
			return rc;
		op->purge.removed++;
	}
	inbox_qmeta m;
	inbox_qindex_meta(s->qx, device, &m);
	if (op->purge.removed && (rc = dev_raise(s, txn, device, m.last_seq, m.last_seq)))
		return rc;
	return count_add(s, txn, "entries", -(int64_t)op->purge.removed);
}

/* ---- TTL sweep ---- */

/* Removes one expired TTL record: the entry if still queued, and its dedup record. The
 * device's last seq lives on in the TTL records; when its last one goes, it is kept in
 * the dev table so seqs never restart. */
static int
sweep_one(inbox_store *s, MDB_txn *txn, const uint8_t *tk, const MDB_val *tv, inbox_op *op)
{
	uint64_t device = sp_be64_get(tk + 8), seq = sp_be64_get(tk + 16), id;
	inbox_qmeta m;
	int rc;

	if (tv->mv_size != TVAL_LEN)
		return inbox_lmdb_err(MDB_CORRUPTED, "ttl record");
	/* Copied first: writes below may move the page tv points into. */
	uint8_t p[TVAL_LEN];
	memcpy(p, tv->mv_data, TVAL_LEN);
	if (inbox_qindex_find(s->qx, device, seq, &id) == SP_OK) {
		if ((rc = entry_take(s, txn, device, seq, id, NULL, true)))
			return rc;
		op->sweep.expired++;
	}
	if ((rc = inbox_dedup_remove(s->dx, ttl_fp(s, tk, p), sp_be64_get(tk), seq, true)))
		return rc;
	op->sweep.dedup_gone++;
	inbox_qindex_meta(s->qx, device, &m);
	if (m.last_seq == seq && (rc = dev_raise(s, txn, device, seq, 0)))
		return rc;
	return SP_OK;
}

static int
apply_sweep(inbox_store *s, MDB_txn *txn, inbox_op *op)
{
	uint64_t cutoff = op->ts > s->cfg.msg_ttl_ms ? op->ts - s->cfg.msg_ttl_ms : 0;
	uint64_t bcutoff = op->ts > s->cfg.media_ttl_ms ? op->ts - s->cfg.media_ttl_ms : 0;
	uint32_t n = 0;
	MDB_cursor *c;
	MDB_val key, val;
	int rc;

	op->sweep.expired = op->sweep.dedup_gone = op->sweep.blobs = 0;
	op->sweep.more = false;
	if ((rc = mdb_cursor_open(txn, s->ttl, &c)))
		return inbox_lmdb_err(rc, "cursor");
	rc = mdb_cursor_get(c, &key, &val, MDB_FIRST);
	while (rc == 0) {
		if (key.mv_size != TKEY_LEN) {
			rc = inbox_lmdb_err(MDB_CORRUPTED, "ttl key");
			goto out;
		}
		if (sp_be64_get(key.mv_data) >= cutoff)
			break;
		if (n == op->sweep.limit) {
			op->sweep.more = true;
			break;
		}
		uint8_t tk[TKEY_LEN];
		memcpy(tk, key.mv_data, TKEY_LEN);
		if ((rc = sweep_one(s, txn, tk, &val, op)))
			goto out;
		if ((rc = mdb_cursor_del(c, 0))) {
			rc = inbox_lmdb_err(rc, "ttl del");
			goto out;
		}
		n++;
		rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
	}
	if (rc && rc != MDB_NOTFOUND) {
		rc = inbox_lmdb_err(rc, "ttl scan");
		goto out;
	}
	if ((rc = count_add(s, txn, "entries", -(int64_t)op->sweep.expired))
	    || (rc = count_add(s, txn, "dedups", -(int64_t)op->sweep.dedup_gone)))
		goto out;
	bool bmore = false;
	rc = inbox_blob_sweep(s, txn, bcutoff, op->sweep.limit, &op->sweep.blobs, &bmore);
	op->sweep.more = op->sweep.more || bmore;
out:
	mdb_cursor_close(c);
	return rc;
}

/* ---- the collector ---- */

static int
collect(inbox_store *s, MDB_txn *txn, uint32_t limit, uint64_t *deleted)
{
	MDB_cursor *c;
	MDB_val key = { LKEY_LEN, s->gc_key }, val;
	uint64_t n = 0, id;
	int rc;

	*deleted = 0;
	if ((rc = mdb_cursor_open(txn, s->log, &c)))
		return inbox_lmdb_err(rc, "cursor");
	rc = mdb_cursor_get(c, &key, &val, MDB_SET_RANGE);
	for (uint32_t seen = 0; rc == 0 && seen < limit; seen++) {
		if (key.mv_size != LKEY_LEN || entry_check(&val)) {
			rc = MDB_CORRUPTED;
			break;
		}
		const uint8_t *p = val.mv_data;
		uint64_t device = inbox_le64_get(p + QH_DEVICE), seq = inbox_le64_get(p + QH_SEQ);
		if (inbox_qindex_find(s->qx, device, seq, &id) != SP_OK
		    || id != sp_be64_get(key.mv_data)) {
			uint64_t body = entry_body(&val);
			if ((rc = mdb_cursor_del(c, 0)))
				break;
			if (body && (rc = body_unref(s, txn, body)))
				goto out;
			n++;
		}
		rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
	}
	if (rc == 0) {
		memcpy(s->gc_key, key.mv_data, LKEY_LEN);
	} else if (rc == MDB_NOTFOUND) {
		memset(s->gc_key, 0, LKEY_LEN); /* the end: next time from the start */
		rc = 0;
	}
	if (rc) {
		rc = inbox_lmdb_err(rc, "collect");
		goto out;
	}
	if ((rc = inbox_qindex_collected(s->qx, n)) == SP_OK)
		*deleted = n;
out:
	mdb_cursor_close(c);
	return rc;
}

uint64_t
inbox_store_garbage(inbox_store *s)
{
	return inbox_qindex_garbage(s->qx);
}

uint32_t
inbox_store_collect_limit(inbox_store *s, bool idle)
{
	uint64_t garbage = inbox_qindex_garbage(s->qx), devices, entries, bytes;
	if (garbage == 0)
		return 0;
	if (idle)
		return INBOX_COLLECT_LIMIT;
	/* Under load, only once garbage is at least half of the log: then most leaves the
	 * collector walks hold some, and a commit's extra pages buy many deletions. */
	inbox_qindex_stats(s->qx, &devices, &entries, &bytes);
	return garbage > (entries > 65536 ? entries : 65536) ? INBOX_COLLECT_LIMIT / 4 : 0;
}

int
inbox_store_collect(inbox_store *s, MDB_txn *txn, uint32_t limit, uint64_t *deleted)
{
	MDB_txn *child;
	int rc;

	*deleted = 0;
	if (inbox_qindex_garbage(s->qx) == 0)
		return SP_OK;
	if ((rc = inbox_store_txn_begin(s, txn, &child)))
		return rc;
	if ((rc = collect(s, child, limit, deleted)) == SP_OK)
		return inbox_store_txn_commit(s, child);
	inbox_store_txn_abort(s, child);
	*deleted = 0;
	return rc;
}

/* ---- apply ---- */

int
inbox_store_apply(inbox_store *s, MDB_txn *txn, inbox_op *op, uint64_t now)
{
	uint64_t lsn;
	int rc;

	if (op->ts == 0)
		op->ts = now;
	if ((rc = get_u64(txn, s->meta, "lsn", 3, &lsn)))
		goto out;
	lsn++;
	if (op->lsn && op->lsn != lsn) {
		rc = SP_EMISMATCH;
		goto out;
	}
	switch (op->kind) {
	case INBOX_OP_APPEND:
		rc = apply_append(s, txn, op, lsn);
		break;
	case INBOX_OP_ACK:
		rc = apply_ack(s, txn, op);
		break;
	case INBOX_OP_PURGE:
		rc = apply_purge(s, txn, op);
		break;
	case INBOX_OP_SWEEP:
		rc = apply_sweep(s, txn, op);
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
		assert(!"inbox_store_apply: unknown op kind");
		rc = SP_EINVAL;
	}
	if (rc == SP_OK && (rc = put_u64(txn, s->meta, "lsn", 3, lsn)) == SP_OK)
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
		return op->kind == INBOX_OP_APPEND && !op->append.shared
		    && op->append.targets[0].rc == SP_EFULL;
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

/* ---- reads ---- */

size_t
inbox_entry_wire_size(const inbox_entry *e)
{
	return ENTRY_WIRE_OVERHEAD + e->env_len + e->ct_len;
}

static int
entry_decode(inbox_store *s, MDB_txn *txn, const MDB_val *v, inbox_entry *e)
{
	if (entry_check(v))
		return inbox_lmdb_err(MDB_CORRUPTED, "queue entry");
	const uint8_t *p = v->mv_data;
	uint32_t flags = inbox_le32_get(p + QH_FLAGS);
	e->seq = inbox_le64_get(p + QH_SEQ);
	e->ts = inbox_le64_get(p + QH_TS);
	e->server_ts = inbox_le64_get(p + QH_SERVER_TS);
	e->from_user = inbox_le64_get(p + QH_FROM_USER);
	e->from_device = inbox_le64_get(p + QH_FROM_DEVICE);
	e->etype = inbox_le64_get(p + QH_ETYPE);
	e->group = inbox_le64_get(p + QH_GROUP);
	e->has_group = flags & Q_FLAG_GROUP;
	e->msg_id = p + QH_MSG_ID;
	e->ct_len = inbox_le32_get(p + QH_CT_LEN);
	e->ct = e->ct_len ? p + QH_SIZE : NULL;
	e->env_len = inbox_le32_get(p + QH_ENV_LEN);
	if (flags & Q_FLAG_SHARED) {
		uint8_t k[8];
		MDB_val bk = { 8, k }, bv;
		sp_be64_put(k, entry_body(v));
		int rc = mdb_get(txn, s->body, &bk, &bv);
		if (rc)
			return inbox_lmdb_err(rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc, "body get");
		e->env = bv.mv_data;
		e->env_len = (uint32_t)bv.mv_size;
	} else {
		e->env = p + QH_SIZE + e->ct_len;
	}
	return SP_OK;
}

#define CANDIDATES 256 /* queue index candidates taken per lock */

/* Calls fn(arg, seq, value) for each entry of `device` after `after` that the snapshot of
 * `txn` holds, in seq order, until fn returns false. */
static int
visible_entries(inbox_store *s, MDB_txn *txn, uint64_t device, uint64_t after,
    bool (*fn)(void *arg, const MDB_val *v, int *rc), void *arg)
{
	inbox_qcand c[CANDIDATES];
	bool more = true;
	MDB_val val;
	int rc = SP_OK;

	while (more) {
		size_t n = inbox_qindex_candidates(s->qx, device, after, c, CANDIDATES, &more);
		for (size_t i = 0; i < n; i++) {
			after = c[i].seq;
			int lrc = log_entry(s, txn, c[i].key, device, c[i].seq, &val);
			/* Written by a commit after this snapshot, or deleted before it. */
			if (lrc == SP_ENOTFOUND)
				continue;
			if (lrc)
				return lrc;
			if (!fn(arg, &val, &rc))
				return rc;
		}
	}
	return rc;
}

typedef struct fetch_state {
	inbox_store *s;
	MDB_txn *txn;
	inbox_entry *out;
	uint32_t n, max_count;
	size_t bytes, max_bytes;
	bool more;
} fetch_state;

static bool
fetch_one(void *arg, const MDB_val *v, int *rc)
{
	fetch_state *f = arg;
	if (f->n == f->max_count) {
		f->more = true;
		return false;
	}
	if ((*rc = entry_decode(f->s, f->txn, v, &f->out[f->n])))
		return false;
	size_t sz = inbox_entry_wire_size(&f->out[f->n]);
	if (f->n > 0 && f->bytes + sz > f->max_bytes) {
		f->more = true;
		return false;
	}
	f->bytes += sz;
	f->n++;
	return true;
}

int
inbox_store_fetch(inbox_store *s, MDB_txn *txn, uint64_t device, uint64_t after_seq,
    uint32_t max_count, size_t max_bytes, inbox_entry *out, bool *more)
{
	fetch_state f = { s, txn, out, 0, max_count, 0, max_bytes, false };
	*more = false;
	if (after_seq == UINT64_MAX || max_count == 0)
		return 0;
	int rc = visible_entries(s, txn, device, after_seq, fetch_one, &f);
	if (rc)
		return rc;
	*more = f.more;
	return (int)f.n;
}

static bool
oldest_one(void *arg, const MDB_val *v, int *rc)
{
	(void)rc;
	*(uint64_t *)arg = inbox_le64_get((const uint8_t *)v->mv_data + QH_TS);
	return false;
}

int
inbox_store_stat(inbox_store *s, MDB_txn *txn, uint64_t device, inbox_stat *st)
{
	inbox_qmeta m;

	memset(st, 0, sizeof(*st));
	inbox_qindex_committed(s->qx, device, &m);
	st->depth = m.count;
	st->bytes = m.bytes;
	st->last_seq = m.last_seq;
	if (m.count == 0)
		return SP_OK;
	return visible_entries(s, txn, device, 0, oldest_one, &st->oldest_ts);
}

uint64_t
inbox_store_last_seq(inbox_store *s, uint64_t device)
{
	inbox_qmeta m;
	inbox_qindex_committed(s->qx, device, &m);
	return m.count ? m.last_seq : 0;
}

void
inbox_store_queue_stat(inbox_store *s, uint64_t *devices, uint64_t *entries, uint64_t *bytes)
{
	inbox_qindex_stats(s->qx, devices, entries, bytes);
}

int
inbox_store_shard_stat(inbox_store *s, MDB_txn *txn, inbox_shard_stat *st)
{
	MDB_stat ms;
	MDB_envinfo ei;
	int rc;

	memset(st, 0, sizeof(*st));
	if ((rc = get_u64(txn, s->meta, "lsn", 3, &st->lsn)))
		return rc;
	if ((rc = get_u64(txn, s->meta, "entries", 7, &st->entries))
	    || (rc = get_u64(txn, s->meta, "dedups", 6, &st->dedup)))
		return rc;
	if ((rc = mdb_stat(txn, s->body, &ms)))
		return inbox_lmdb_err(rc, "stat");
	st->bodies = ms.ms_entries;
	if ((rc = mdb_stat(txn, s->blob, &ms)))
		return inbox_lmdb_err(rc, "stat");
	st->blobs = ms.ms_entries;
	if ((rc = mdb_env_info(s->env, &ei)) || (rc = mdb_env_stat(s->env, &ms)))
		return inbox_lmdb_err(rc, "env info");
	st->map_used = (uint64_t)(ei.me_last_pgno + 1) * ms.ms_psize;
	return SP_OK;
}
