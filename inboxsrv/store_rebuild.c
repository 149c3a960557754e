/* The in-memory indexes rebuilt at open: dedup records from the TTL table, seqs from the
 * TTL and dev tables, queues from the log. */
#include <string.h>

#include "store_internal.h"

#define REBUILD_AHEAD 16 /* dedup records in flight while the index is rebuilt */

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
		if ((rc = inbox_qindex_load_seq(s->qx, sp_be64_get(key.mv_data), inbox_le64_get(v),
		         inbox_le64_get(v + 8))))
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
		if (key.mv_size != LKEY_LEN || inbox_entry_check(&val)) {
			rc = MDB_CORRUPTED;
			break;
		}
		const uint8_t *p = val.mv_data;
		if ((rc = inbox_qindex_load_entry(s->qx, inbox_le64_get(p + QH_DEVICE),
		         inbox_le64_get(p + QH_FROM_USER), inbox_le64_get(p + QH_SEQ), sp_be64_get(key.mv_data),
		         inbox_entry_bytes(p))))
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
int
inbox_store_rebuild(inbox_store *s)
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
		if ((rc = inbox_qindex_load_seq(s->qx, sp_be64_get(k + 8), sp_be64_get(k + 16), 0)))
			goto out;
		if (skip) {
			skip--;
			continue;
		}
		if (first) {
			memcpy(s->evict_key, k, TKEY_LEN);
			first = false;
		}
		uint64_t fp = inbox_ttl_fp(s, k, val.mv_data);
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
