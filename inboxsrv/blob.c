/* Media blobs: ciphertext uploaded in chunks (resumable by offset), verified at BLOB_DONE,
 * deleted when every listed device has read it to the end, or at the media TTL. */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "internal.h"
#include "sp_error.h"
#include "store.h"

/* Blob header value, then ndevices little-endian u64 device ids. */
enum {
	BH_DONE = 0, /* u64: 0 uploading, 1 complete */
	BH_HAVE = 8, /* u64: contiguous bytes stored */
	BH_CREATED = 16, /* u64: ms */
	BH_SIZE = 24, /* u64: declared at BLOB_DONE */
	BH_SHA = 32, /* 32 bytes */
	BH_NDEV = 64, /* u64 */
	BH_SIZE_ALL = 72
};

static void
chunk_key(uint8_t k[24], const uint8_t *blob_id, uint64_t offset)
{
	memcpy(k, blob_id, INBOX_BLOB_ID_LEN);
	sp_be64_put(k + 16, offset);
}

/* The SHA-256 state of the blob's stored bytes, kept next to its chunks (after them: no
 * chunk has this offset, and deleting the blob's chunks deletes it), updated with every
 * chunk, so that BLOB_DONE costs one finalisation and never reads the blob again. A blob
 * stored before the state existed has none: BLOB_DONE hashes it whole. */
#define HASH_KEY_OFFSET UINT64_MAX

static int
hash_get(inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, crypto_hash_sha256_state *st)
{
	uint8_t k[24];
	chunk_key(k, blob_id, HASH_KEY_OFFSET);
	MDB_val key = { 24, k }, val;
	int rc = mdb_get(txn, s->bchunk, &key, &val);
	if (rc)
		return rc == MDB_NOTFOUND ? SP_ENOTFOUND : inbox_lmdb_err(rc, "blob hash get");
	if (val.mv_size != sizeof(*st))
		return inbox_lmdb_err(MDB_CORRUPTED, "blob hash state");
	memcpy(st, val.mv_data, sizeof(*st));
	return SP_OK;
}

static int
hash_put(inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, const crypto_hash_sha256_state *st)
{
	uint8_t k[24];
	chunk_key(k, blob_id, HASH_KEY_OFFSET);
	MDB_val key = { 24, k }, val = { sizeof(*st), (void *)st };
	int rc = mdb_put(txn, s->bchunk, &key, &val, 0);
	return rc ? inbox_lmdb_err(rc, "blob hash put") : SP_OK;
}

static int
header_get(inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, inbox_blob_info *info)
{
	MDB_val key = { INBOX_BLOB_ID_LEN, (void *)blob_id }, val;
	int rc = mdb_get(txn, s->blob, &key, &val);
	if (rc)
		return rc == MDB_NOTFOUND ? SP_ENOTFOUND : inbox_lmdb_err(rc, "blob get");
	const uint8_t *p = val.mv_data;
	if (val.mv_size < BH_SIZE_ALL
	    || val.mv_size != BH_SIZE_ALL + 8 * inbox_le64_get(p + BH_NDEV))
		return inbox_lmdb_err(MDB_CORRUPTED, "blob header");
	info->done = inbox_le64_get(p + BH_DONE) != 0;
	info->have = inbox_le64_get(p + BH_HAVE);
	info->created = inbox_le64_get(p + BH_CREATED);
	info->size = inbox_le64_get(p + BH_SIZE);
	memcpy(info->sha256, p + BH_SHA, INBOX_SHA256_LEN);
	info->ndevices = (uint32_t)inbox_le64_get(p + BH_NDEV);
	info->devices = p + BH_SIZE_ALL;
	return SP_OK;
}

/* Writes the header with `devices` (ndevices u64, host order; or, when `le_devices` is
 * set, little-endian bytes as stored). */
static int
header_put(inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, const inbox_blob_info *info,
    const uint64_t *devices, const uint8_t *le_devices)
{
	MDB_val key = { INBOX_BLOB_ID_LEN, (void *)blob_id };
	MDB_val val = { BH_SIZE_ALL + 8 * (size_t)info->ndevices, NULL };
	int rc = mdb_put(txn, s->blob, &key, &val, MDB_RESERVE);
	if (rc)
		return inbox_lmdb_err(rc, "blob put");
	uint8_t *p = val.mv_data;
	inbox_le64_put(p + BH_DONE, info->done);
	inbox_le64_put(p + BH_HAVE, info->have);
	inbox_le64_put(p + BH_CREATED, info->created);
	inbox_le64_put(p + BH_SIZE, info->size);
	memcpy(p + BH_SHA, info->sha256, INBOX_SHA256_LEN);
	inbox_le64_put(p + BH_NDEV, info->ndevices);
	for (uint32_t i = 0; i < info->ndevices; i++) {
		if (le_devices)
			memcpy(p + BH_SIZE_ALL + 8 * i, le_devices + 8 * i, 8);
		else
			inbox_le64_put(p + BH_SIZE_ALL + 8 * i, devices[i]);
	}
	return SP_OK;
}

/* The bttl time of an unfinished upload. The sweep deletes a blob whose bttl time is older
 * than media_ttl; an upload is filed earlier by (media_ttl - upload_ttl) so that the same
 * sweep drops it upload_ttl after it started. BLOB_DONE files it again at `created`. */
static uint64_t
upload_ttl_ts(const inbox_store *s, uint64_t created)
{
	uint64_t media = s->cfg.media_ttl_ms, upload = s->cfg.upload_ttl_ms;
	uint64_t shift = upload && upload < media ? media - upload : 0;
	return created > shift ? created - shift : 0;
}

static int
bttl_put(inbox_store *s, MDB_txn *txn, const uint8_t *id, uint64_t ts)
{
	uint8_t tk[8 + INBOX_BLOB_ID_LEN];
	sp_be64_put(tk, ts);
	memcpy(tk + 8, id, INBOX_BLOB_ID_LEN);
	MDB_val key = { sizeof(tk), tk }, val = { 0, NULL };
	int rc = mdb_put(txn, s->bttl, &key, &val, 0);
	return rc ? inbox_lmdb_err(rc, "bttl put") : SP_OK;
}

static int
bttl_del(inbox_store *s, MDB_txn *txn, const uint8_t *id, uint64_t ts)
{
	uint8_t tk[8 + INBOX_BLOB_ID_LEN];
	sp_be64_put(tk, ts);
	memcpy(tk + 8, id, INBOX_BLOB_ID_LEN);
	MDB_val key = { sizeof(tk), tk };
	int rc = mdb_del(txn, s->bttl, &key, NULL);
	return rc && rc != MDB_NOTFOUND ? inbox_lmdb_err(rc, "bttl del") : SP_OK;
}

int
inbox_blob_apply_put(inbox_store *s, MDB_txn *txn, inbox_op *op)
{
	const uint8_t *id = op->blob_put.blob_id;
	uint64_t off = op->blob_put.offset, len = op->blob_put.len;
	inbox_blob_info info;
	bool fresh = false;
	int rc;

	if (off > s->cfg.max_blob_size || len > s->cfg.max_blob_size - off)
		return SP_ETOOBIG;
	rc = header_get(s, txn, id, &info);
	if (rc == SP_ENOTFOUND) {
		if (off != 0)
			return SP_EGAP;
		memset(&info, 0, sizeof(info));
		info.created = op->ts;
		fresh = true;
		if ((rc = bttl_put(s, txn, id, upload_ttl_ts(s, info.created))))
			return rc;
	} else if (rc) {
		return rc;
	}
	if (off > info.have)
		return SP_EGAP;
	op->blob_put.have = info.have;
	if (off + len <= info.have && !fresh)
		return SP_OK; /* a retry of bytes already stored */
	if (info.done)
		return SP_ESTATE;
	uint64_t skip = info.have - off;
	if (len > skip) {
		uint8_t k[24];
		chunk_key(k, id, info.have);
		MDB_val key = { 24, k }, val = { len - skip, (void *)(op->blob_put.bytes + skip) };
		if ((rc = mdb_put(txn, s->bchunk, &key, &val, 0)))
			return inbox_lmdb_err(rc, "chunk put");
		crypto_hash_sha256_state st;
		rc = info.have == 0 ? (crypto_hash_sha256_init(&st), SP_OK) : hash_get(s, txn, id, &st);
		if (rc == SP_OK) {
			crypto_hash_sha256_update(&st, op->blob_put.bytes + skip, len - skip);
			rc = hash_put(s, txn, id, &st);
		}
		if (rc && rc != SP_ENOTFOUND)
			return rc;
		info.have += len - skip;
	}
	op->blob_put.have = info.have;
	return header_put(s, txn, id, &info, NULL, NULL);
}

int
inbox_blob_apply_done(inbox_store *s, MDB_txn *txn, inbox_op *op)
{
	const uint8_t *id = op->blob_done.blob_id;
	inbox_blob_info info;
	int rc;

	if ((rc = header_get(s, txn, id, &info)))
		return rc;
	if (info.done) {
		bool same = info.size == op->blob_done.size
		    && memcmp(info.sha256, op->blob_done.sha256, INBOX_SHA256_LEN) == 0;
		return same ? SP_OK : SP_ESTATE;
	}
	if (op->blob_done.size > s->cfg.max_blob_size)
		return SP_ETOOBIG;
	if (info.have != op->blob_done.size)
		return info.have < op->blob_done.size ? SP_EGAP : SP_ERANGE;
	/* Complete: it now lives for the media TTL. */
	if (upload_ttl_ts(s, info.created) != info.created
	    && ((rc = bttl_del(s, txn, id, upload_ttl_ts(s, info.created)))
	        || (rc = bttl_put(s, txn, id, info.created))))
		return rc;
	info.done = true;
	info.size = op->blob_done.size;
	memcpy(info.sha256, op->blob_done.sha256, INBOX_SHA256_LEN);
	info.ndevices = op->blob_done.ndevices;
	return header_put(s, txn, id, &info, op->blob_done.devices, NULL);
}

int
inbox_blob_apply_fetched(inbox_store *s, MDB_txn *txn, inbox_op *op)
{
	const uint8_t *id = op->blob_fetched.blob_id;
	inbox_blob_info info;
	uint32_t i;
	int rc;

	op->blob_fetched.deleted = false;
	if ((rc = header_get(s, txn, id, &info)))
		return rc;
	if (!info.done)
		return SP_ESTATE;
	for (i = 0; i < info.ndevices; i++)
		if (inbox_le64_get(info.devices + 8 * i) == op->blob_fetched.device)
			break;
	if (i == info.ndevices)
		return SP_OK;
	if (info.ndevices == 1) {
		op->blob_fetched.deleted = true;
		return inbox_blob_delete(s, txn, id, info.created);
	}
	/* The device list lives in the map: copy it out before rewriting the record. */
	uint8_t *rest = malloc(8 * (size_t)(info.ndevices - 1));
	if (!rest)
		return SP_ENOMEM;
	memcpy(rest, info.devices, 8 * (size_t)i);
	memcpy(rest + 8 * i, info.devices + 8 * (i + 1), 8 * (size_t)(info.ndevices - i - 1));
	info.ndevices--;
	rc = header_put(s, txn, id, &info, NULL, rest);
	free(rest);
	return rc;
}

int
inbox_blob_delete(inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, uint64_t created)
{
	uint8_t k[24], tk[8 + INBOX_BLOB_ID_LEN];
	MDB_val key, val;
	MDB_cursor *c;
	int rc;

	if ((rc = mdb_cursor_open(txn, s->bchunk, &c)))
		return inbox_lmdb_err(rc, "cursor");
	chunk_key(k, blob_id, 0);
	key = (MDB_val) { 24, k };
	rc = mdb_cursor_get(c, &key, &val, MDB_SET_RANGE);
	while (
	    rc == 0 && key.mv_size == 24 && memcmp(key.mv_data, blob_id, INBOX_BLOB_ID_LEN) == 0) {
		if ((rc = mdb_cursor_del(c, 0)))
			break;
		rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
	}
	mdb_cursor_close(c);
	if (rc && rc != MDB_NOTFOUND)
		return inbox_lmdb_err(rc, "chunk del");
	sp_be64_put(tk, created);
	memcpy(tk + 8, blob_id, INBOX_BLOB_ID_LEN);
	key = (MDB_val) { sizeof(tk), tk };
	rc = mdb_del(txn, s->bttl, &key, NULL);
	if (rc && rc != MDB_NOTFOUND)
		return inbox_lmdb_err(rc, "bttl del");
	key = (MDB_val) { INBOX_BLOB_ID_LEN, (void *)blob_id };
	rc = mdb_del(txn, s->blob, &key, NULL);
	if (rc && rc != MDB_NOTFOUND)
		return inbox_lmdb_err(rc, "blob del");
	return SP_OK;
}

int
inbox_blob_sweep(
    inbox_store *s, MDB_txn *txn, uint64_t cutoff, uint32_t limit, uint64_t *n, bool *more)
{
	MDB_cursor *c;
	MDB_val key, val;
	int rc;

	*n = 0;
	*more = false;
	if ((rc = mdb_cursor_open(txn, s->bttl, &c)))
		return inbox_lmdb_err(rc, "cursor");
	/* Each deletion rewrites bttl, so restart from the first key every time. */
	while ((rc = mdb_cursor_get(c, &key, &val, MDB_FIRST)) == 0) {
		uint8_t tk[8 + INBOX_BLOB_ID_LEN];
		if (key.mv_size != sizeof(tk)) {
			rc = MDB_CORRUPTED;
			break;
		}
		memcpy(tk, key.mv_data, sizeof(tk));
		if (sp_be64_get(tk) >= cutoff)
			break;
		if (*n == limit) {
			*more = true;
			break;
		}
		/* An upload's time left behind by a BLOB_DONE under another upload TTL (the
		 * option changed in between): only that record goes, the blob is complete. */
		inbox_blob_info info;
		if (header_get(s, txn, tk + 8, &info) == SP_OK && info.done
		    && info.created != sp_be64_get(tk)) {
			if ((rc = bttl_del(s, txn, tk + 8, sp_be64_get(tk)))) {
				mdb_cursor_close(c);
				return rc;
			}
			continue;
		}
		if ((rc = inbox_blob_delete(s, txn, tk + 8, sp_be64_get(tk)))) {
			mdb_cursor_close(c);
			return rc;
		}
		(*n)++;
	}
	mdb_cursor_close(c);
	return rc == 0 || rc == MDB_NOTFOUND ? SP_OK : inbox_lmdb_err(rc, "bttl scan");
}

/* ---- reads ---- */

int
inbox_store_blob_info(inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, inbox_blob_info *info)
{
	return header_get(s, txn, blob_id, info);
}

/* Positions `c` on the chunk holding byte `offset` of the blob. */
static int
chunk_seek(MDB_cursor *c, const uint8_t *blob_id, uint64_t offset, MDB_val *key, MDB_val *val)
{
	uint8_t k[24];
	chunk_key(k, blob_id, offset);
	*key = (MDB_val) { 24, k };
	int rc = mdb_cursor_get(c, key, val, MDB_SET_RANGE);
	if (rc == 0 && key->mv_size == 24 && memcmp(key->mv_data, k, 24) == 0)
		return 0;
	rc = mdb_cursor_get(c, key, val, rc == MDB_NOTFOUND ? MDB_LAST : MDB_PREV);
	if (rc)
		return rc;
	if (key->mv_size != 24 || memcmp(key->mv_data, blob_id, INBOX_BLOB_ID_LEN) != 0)
		return MDB_NOTFOUND;
	return 0;
}

long
inbox_store_blob_read(
    inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, uint64_t offset, uint8_t *buf, size_t len)
{
	inbox_blob_info info;
	MDB_cursor *c;
	MDB_val key, val;
	size_t got = 0;
	int rc;

	if ((rc = header_get(s, txn, blob_id, &info)))
		return rc;
	if (offset > info.have)
		return SP_ERANGE;
	if (len > info.have - offset)
		len = info.have - offset;
	if (len == 0)
		return 0;
	if ((rc = mdb_cursor_open(txn, s->bchunk, &c)))
		return inbox_lmdb_err(rc, "cursor");
	rc = chunk_seek(c, blob_id, offset, &key, &val);
	while (rc == 0 && got < len) {
		if (key.mv_size != 24 || memcmp(key.mv_data, blob_id, INBOX_BLOB_ID_LEN) != 0)
			break;
		uint64_t start = sp_be64_get((const uint8_t *)key.mv_data + 16);
		uint64_t pos = offset + got;
		if (start > pos || pos - start >= val.mv_size)
			break; /* chunks are contiguous below `have`: a hole is corruption */
		size_t n = val.mv_size - (pos - start);
		if (n > len - got)
			n = len - got;
		memcpy(buf + got, (const uint8_t *)val.mv_data + (pos - start), n);
		got += n;
		rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
	}
	mdb_cursor_close(c);
	if (got < len)
		return inbox_lmdb_err(rc && rc != MDB_NOTFOUND ? rc : MDB_CORRUPTED, "blob read");
	return (long)got;
}

int
inbox_store_blob_sha256(inbox_store *s, MDB_txn *txn, const uint8_t *blob_id, uint64_t size,
    uint8_t out[INBOX_SHA256_LEN])
{
	inbox_blob_info info;
	crypto_hash_sha256_state st;
	MDB_cursor *c;
	MDB_val key, val;
	uint64_t got = 0;
	uint8_t k[24];
	int rc;

	if ((rc = header_get(s, txn, blob_id, &info)))
		return rc;
	if (info.have < size)
		return SP_ERANGE;
	if (info.have == size && (rc = hash_get(s, txn, blob_id, &st)) != SP_ENOTFOUND) {
		if (rc == SP_OK)
			crypto_hash_sha256_final(&st, out);
		return rc;
	}
	crypto_hash_sha256_init(&st);
	if ((rc = mdb_cursor_open(txn, s->bchunk, &c)))
		return inbox_lmdb_err(rc, "cursor");
	chunk_key(k, blob_id, 0);
	key = (MDB_val) { 24, k };
	rc = mdb_cursor_get(c, &key, &val, MDB_SET_RANGE);
	while (rc == 0 && got < size && key.mv_size == 24
	    && memcmp(key.mv_data, blob_id, INBOX_BLOB_ID_LEN) == 0) {
		if (sp_be64_get((const uint8_t *)key.mv_data + 16) != got)
			break;
		uint64_t n = val.mv_size < size - got ? val.mv_size : size - got;
		crypto_hash_sha256_update(&st, val.mv_data, n);
		got += n;
		rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
	}
	mdb_cursor_close(c);
	if (got < size)
		return inbox_lmdb_err(rc && rc != MDB_NOTFOUND ? rc : MDB_CORRUPTED, "blob hash");
	crypto_hash_sha256_final(&st, out);
	return SP_OK;
}
