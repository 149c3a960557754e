/* APPEND ops: dedup lookups through the in-memory index, queue caps, and the log and TTL
 * records, every one written at the end of its tree. */
#include <string.h>

#include "store_internal.h"

#define EVICT_BATCH 1024 /* dedup records forgotten at once when the index is at its cap */

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
	inbox_ttl_key(k, ts, p->device, seq);
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
		if ((rc = inbox_dedup_remove(s->dx, inbox_ttl_fp(s, k, val.mv_data), sp_be64_get(k),
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

/* sp_inbox_append_share_refused_total, registered on first use (writer thread). */
static sp_metric *
share_refused(void)
{
	static sp_metric *m;
	if (!m)
		m = sp_metric_counter("sp_inbox_append_share_refused_total",
		    "appends refused: the sender holds its share of the device's queue (SP_ELIMIT)");
	return m;
}

/* Whether one more entry of `n` bytes from `sender` would take it past its share of the
 * device's queue: no single sender may fill a queue and lock every other sender out. The
 * counts derive from the stored entries, so a replica replaying the op (or a new primary
 * after a rebuild) reaches the same answer with the same caps and share. */
static bool
over_share(inbox_store *s, uint64_t device, uint64_t sender, uint64_t n)
{
	unsigned pct = s->cfg.queue_share_pct;
	if (pct == 0 || pct >= 100)
		return false;
	uint64_t count, bytes;
	inbox_qindex_sender(s->qx, device, sender, &count, &bytes);
	uint64_t max_n = s->cfg.max_queue_entries / 100 * pct
	    + s->cfg.max_queue_entries % 100 * pct / 100;
	uint64_t max_b = s->cfg.max_queue_bytes / 100 * pct + s->cfg.max_queue_bytes % 100 * pct / 100;
	return count + 1 > (max_n ? max_n : 1) || bytes + n > max_b;
}

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
	if (over_share(s, t->device, op->append.from_user, n)) {
		t->seq = 0;
		t->rc = SP_ELIMIT;
		sp_metric_inc(share_refused());
		return SP_OK;
	}
	if (op->append.shared && *body_id == 0) {
		uint64_t next;
		if ((rc = inbox_store_get_u64(txn, s->meta, "next_body", 9, &next)))
			return rc;
		next++;
		if (op->append.body_id && op->append.body_id != next)
			return SP_EMISMATCH;
		if ((rc = inbox_store_put_u64(txn, s->meta, "next_body", 9, next)))
			return rc;
		*body_id = next;
	}

	uint64_t seq = m.last_seq + 1;
	size_t payload = op->append.shared ? 8 : op->append.body_len;
	inbox_log_key(k, id);
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

	inbox_ttl_key(tk, op->ts, t->device, seq);
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
	if ((rc = inbox_qindex_add(s->qx, t->device, op->append.from_user, seq, id, n)))
		return rc;
	t->seq = seq;
	t->dup = false;
	t->rc = SP_OK;
	if (op->append.shared)
		(*refs)++;
	return SP_OK;
}

int
inbox_store_apply_append(inbox_store *s, MDB_txn *txn, inbox_op *op, uint64_t lsn)
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
		if ((rc = inbox_store_put_u64(txn, s->bref, k, 8, refs)))
			return rc;
		op->append.body_id = body_id;
	}
	int64_t added = 0;
	for (uint32_t i = 0; i < op->append.ntargets; i++)
		added += op->append.targets[i].rc == SP_OK && !op->append.targets[i].dup;
	if ((rc = inbox_store_count_add(s, txn, "entries", added))
	    || (rc = inbox_store_count_add(s, txn, "dedups", added)))
		return rc;
	/* A single-target append reports its refusal as the op's result. */
	if (!op->append.shared)
		return op->append.targets[0].rc;
	return SP_OK;
}
