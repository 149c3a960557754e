/* Entries leaving their queue: ACK, PURGE, the TTL sweep, and the collector that deletes
 * the log records ACK and PURGE leave behind. */
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

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

/* Drops one reference to a shared body, deleting it at zero. */
static int
body_unref(inbox_store *s, MDB_txn *txn, uint64_t body_id)
{
	uint8_t k[8];
	uint64_t refs;
	int rc;
	sp_be64_put(k, body_id);
	if ((rc = inbox_store_get_u64(txn, s->bref, k, 8, &refs)))
		return rc;
	if (refs > 1)
		return inbox_store_put_u64(txn, s->bref, k, 8, refs - 1);
	MDB_val key = { 8, k };
	rc = mdb_del(txn, s->bref, &key, NULL);
	if (rc && rc != MDB_NOTFOUND)
		return inbox_lmdb_err(rc, "bref del");
	rc = mdb_del(txn, s->body, &key, NULL);
	if (rc && rc != MDB_NOTFOUND)
		return inbox_lmdb_err(rc, "body del");
	return SP_OK;
}

/* Takes queued entry (device, seq) at log id `id` off its queue and, if `ref` is non-NULL,
 * reports who sent it. `now`: delete its record and drop its body reference at once;
 * otherwise leave the record to the collector (deleting it now would dirty one page of
 * the log per entry: a device's entries are spread over it). */
static int
entry_take(inbox_store *s, MDB_txn *txn, uint64_t device, uint64_t seq, uint64_t id, inbox_ref *ref,
    bool now)
{
	MDB_val val;
	int rc = inbox_store_log_entry(s, txn, id, device, seq, &val);
	if (rc)
		return rc == SP_ENOTFOUND ? inbox_lmdb_err(MDB_CORRUPTED, "queue entry") : rc;
	const uint8_t *p = val.mv_data;
	uint64_t bytes = inbox_entry_bytes(p), body = inbox_entry_body(&val);
	uint64_t sender = inbox_le64_get(p + QH_FROM_USER);
	if (ref) {
		ref->from_user = inbox_le64_get(p + QH_FROM_USER);
		ref->from_device = inbox_le64_get(p + QH_FROM_DEVICE);
		memcpy(ref->msg_id, p + QH_MSG_ID, INBOX_MSG_ID_LEN);
	}
	if (now) {
		uint8_t k[LKEY_LEN];
		MDB_val key = { LKEY_LEN, k };
		inbox_log_key(k, id);
		if ((rc = mdb_del(txn, s->log, &key, NULL)))
			return inbox_lmdb_err(rc, "log del");
		if (body && (rc = body_unref(s, txn, body)))
			return rc;
	}
	return inbox_qindex_remove(s->qx, device, sender, seq, bytes, !now);
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

int
inbox_store_apply_ack(inbox_store *s, MDB_txn *txn, inbox_op *op)
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
			if ((rc = entry_take(
			         s, txn, device, seq, id, &op->ack.refs[op->ack.nrefs], true)))
				return rc;
			op->ack.nrefs++;
		}
	} else {
		/* Acknowledging past the highest seq this shard ever gave the device means the
		 * client's seqs came from another history of the shard (one that restarted its
		 * seqs): deleting by them would drop entries the device never saw. */
		if (op->ack.upto_seq > m.last_seq)
			return SP_ERANGE;
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
			if ((rc = entry_take(
			         s, txn, device, seq, id, &op->ack.refs[op->ack.nrefs], false)))
				return rc;
			op->ack.nrefs++;
			last = seq;
		}
		/* One small record says it all for the restart: seqs up to `last` are gone. */
		if (last && (rc = dev_raise(s, txn, device, m.last_seq, last)))
			return rc;
	}
	return inbox_store_count_add(s, txn, "entries", -(int64_t)op->ack.nrefs);
}

int
inbox_store_apply_purge(inbox_store *s, MDB_txn *txn, inbox_op *op)
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
	return inbox_store_count_add(s, txn, "entries", -(int64_t)op->purge.removed);
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
	if ((rc = inbox_dedup_remove(s->dx, inbox_ttl_fp(s, tk, p), sp_be64_get(tk), seq, true)))
		return rc;
	op->sweep.dedup_gone++;
	inbox_qindex_meta(s->qx, device, &m);
	if (m.last_seq == seq && (rc = dev_raise(s, txn, device, seq, 0)))
		return rc;
	return SP_OK;
}

int
inbox_store_apply_sweep(inbox_store *s, MDB_txn *txn, inbox_op *op)
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
	if ((rc = inbox_store_count_add(s, txn, "entries", -(int64_t)op->sweep.expired))
	    || (rc = inbox_store_count_add(s, txn, "dedups", -(int64_t)op->sweep.dedup_gone)))
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
		if (key.mv_size != LKEY_LEN || inbox_entry_check(&val)) {
			rc = MDB_CORRUPTED;
			break;
		}
		const uint8_t *p = val.mv_data;
		uint64_t device = inbox_le64_get(p + QH_DEVICE), seq = inbox_le64_get(p + QH_SEQ);
		if (inbox_qindex_find(s->qx, device, seq, &id) != SP_OK
		    || id != sp_be64_get(key.mv_data)) {
			uint64_t body = inbox_entry_body(&val);
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
