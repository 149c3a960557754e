/* Reads, on any thread, each in its caller's read-only transaction: FETCH and STAT check
 * the queue index's candidates against their own snapshot; LAST_SEQS and the queue
 * figures come from the queue index alone. */
#include <string.h>

#include "store_internal.h"

#define ENTRY_WIRE_OVERHEAD 160 /* >= msgpack keys, numbers and headers of one ENTRY (145) */

size_t
inbox_entry_wire_size(const inbox_entry *e)
{
	return ENTRY_WIRE_OVERHEAD + e->env_len + e->ct_len;
}

static int
entry_decode(inbox_store *s, MDB_txn *txn, const MDB_val *v, inbox_entry *e)
{
	if (inbox_entry_check(v))
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
		sp_be64_put(k, inbox_entry_body(v));
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
			int lrc = inbox_store_log_entry(s, txn, c[i].key, device, c[i].seq, &val);
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
	if ((rc = inbox_store_get_u64(txn, s->meta, "lsn", 3, &st->lsn)))
		return rc;
	if ((rc = inbox_store_get_u64(txn, s->meta, "entries", 7, &st->entries))
	    || (rc = inbox_store_get_u64(txn, s->meta, "dedups", 6, &st->dedup)))
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

void
inbox_store_dedup_stat(const inbox_store *s, uint64_t *records, uint64_t *bytes)
{
	*records = inbox_dedup_count(s->dx);
	*bytes = inbox_dedup_bytes(s->dx);
}
