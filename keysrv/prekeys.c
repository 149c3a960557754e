#include <stdio.h>
#include <string.h>

#include "keysrv/prekeys.h"
#include "keysrv/replies.h"
#include "sp_bytes.h"
#include "sp_error.h"
#include "sp_xeddsa.h"

_Static_assert(KEYS_PUB_LEN == SP_XEDDSA_PUB_LEN && KEYS_SIG_LEN == SP_XEDDSA_SIG_LEN,
    "keysrv stores Signal keys and signatures as they are on the wire");

int
keys_prekeys_verify_spk(const uint8_t ik[KEYS_PUB_LEN], const uint8_t spk[KEYS_PUB_LEN],
    const uint8_t sig[KEYS_SIG_LEN])
{
	if (!sp_xeddsa_pubkey_valid(ik, KEYS_PUB_LEN) || !sp_xeddsa_pubkey_valid(spk, KEYS_PUB_LEN))
		return SP_EINVAL;
	int rc = sp_xeddsa_verify(ik, spk, KEYS_PUB_LEN, sig);
	return rc == SP_OK ? SP_OK : rc == SP_EINVAL ? SP_EINVAL : SP_EBADSIG;
}

static void
opk_key(uint8_t key[12], uint64_t device, uint32_t id)
{
	sp_be64_put(key, device);
	sp_be32_put(key + 8, id);
}

int
keys_prekeys_delete_all(keys_store *s, MDB_txn *txn, uint64_t device)
{
	uint8_t key[12];
	MDB_cursor *c;
	MDB_val k = {sizeof(key), key}, v;
	int rc;

	opk_key(key, device, 0);
	if ((rc = mdb_cursor_open(txn, keys_store_dbi(s, KDB_OPKS), &c)))
		return keys_store_err(rc);
	for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	     rc == 0 && k.mv_size == sizeof(key) && memcmp(k.mv_data, key, 8) == 0;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		/* MDB_NEXT after a delete yields the entry that followed the deleted one. */
		if ((rc = keys_store_cursor_del(s, txn, c, KDB_OPKS)))
			break;
	}
	mdb_cursor_close(c);
	return rc == 0 || rc == MDB_NOTFOUND ? SP_OK : keys_store_err(rc);
}

/* The reply shared by KEYS_UPLOAD and KEYS_STATUS. */
static void
uploaded_reply(keys_req *r, const keys_device *d)
{
	keys_reply_init(r, SP_T_KEYS_UPLOADED);
	sp_frame_set_u64(&r->out, SP_F_COUNT, d->opk_count);
	sp_frame_set_bool(&r->out, SP_F_REFILL, d->opk_count < r->ctx->cfg.low_water);
	if (d->flags & KEYS_DEV_HAS_SPK)
		sp_frame_set_u64(&r->out, SP_F_SPK_ID, d->spk_id);
}

int
keys_prekeys_upload(keys_req *r)
{
	keys_store *s = r->ctx->store;
	const sp_frame *in = r->in;
	bool s1 = sp_frame_has(in, SP_F_SPK_ID), s2 = sp_frame_has(in, SP_F_SPK),
	     s3 = sp_frame_has(in, SP_F_SPK_SIG);
	const sp_val *pv = sp_frame_get(in, SP_F_PREKEYS);
	uint32_t npk = pv ? pv->rs.n : 0;
	keys_device d;
	MDB_txn *txn;
	int rc;

	if (s1 != s2 || s2 != s3)
		return keys_fail(r, SP_EINVAL, "spk_id, spk and spk_sig go together");
	if (s1 && sp_frame_u64(in, SP_F_SPK_ID) > UINT32_MAX)
		return keys_fail(r, SP_ERANGE, "signed prekey id must fit in 32 bits");
	if (npk > KEYS_OPK_PER_UPLOAD)
		return keys_fail(r, SP_ELIMIT, "at most 200 one-time prekeys per upload");
	for (uint32_t i = 0; i < npk; i++) {
		sp_bin k = sp_frame_bin(&pv->rs.v[i], SP_F_OPK);
		if (sp_frame_u64(&pv->rs.v[i], SP_F_OPK_ID) > UINT32_MAX)
			return keys_fail(r, SP_ERANGE, "one-time prekey id must fit in 32 bits");
		if (k.len != KEYS_PUB_LEN || k.p[0] != 0x05)
			return keys_fail(r, SP_EINVAL, "one-time prekey must be 33 bytes starting with 0x05");
	}
	/* The identity key never changes, so the signature is checked before the write
	 * transaction, against the key the caller check read. */
	if (s1 && keys_prekeys_verify_spk(r->caller_dev.ik, sp_frame_bin(in, SP_F_SPK).p,
		      sp_frame_bin(in, SP_F_SPK_SIG).p) != SP_OK)
		return keys_fail(r, SP_EBADSIG, "signed prekey signature does not verify");

	if ((rc = keys_store_begin(s, true, &txn)))
		return rc;
	if ((rc = keys_device_get(s, txn, r->device, &d)))
		goto fail;
	if (d.flags & KEYS_DEV_REVOKED) {
		rc = keys_fail(r, SP_EAUTH, "device was removed");
		goto fail;
	}
	uint32_t before = d.opk_count;
	for (uint32_t i = 0; i < npk; i++) {
		uint8_t key[12];
		sp_bin k = sp_frame_bin(&pv->rs.v[i], SP_F_OPK);
		opk_key(key, d.id, (uint32_t)sp_frame_u64(&pv->rs.v[i], SP_F_OPK_ID));
		rc = keys_store_put(s, txn, KDB_OPKS, key, sizeof(key), k.p, k.len, MDB_NOOVERWRITE);
		if (rc == SP_EEXIST) {
			/* A resent upload or a reused id: the newest key wins, the count stays. */
			rc = keys_store_put(s, txn, KDB_OPKS, key, sizeof(key), k.p, k.len, 0);
		} else if (rc == SP_OK) {
			d.opk_count++;
		}
		if (rc)
			goto fail;
	}
	if (d.opk_count > KEYS_OPK_PER_DEVICE) {
		rc = keys_fail(r, SP_ELIMIT, "at most 1000 one-time prekeys stored per device");
		goto fail;
	}
	if (s1) {
		d.flags |= KEYS_DEV_HAS_SPK;
		d.spk_id = (uint32_t)sp_frame_u64(in, SP_F_SPK_ID);
		memcpy(d.spk, sp_frame_bin(in, SP_F_SPK).p, KEYS_PUB_LEN);
		memcpy(d.spk_sig, sp_frame_bin(in, SP_F_SPK_SIG).p, KEYS_SIG_LEN);
	}
	if (sp_frame_has(in, SP_F_PUSH_TOKEN)) {
		sp_bin pt = sp_frame_bin(in, SP_F_PUSH_TOKEN);
		if (pt.len > KEYS_PUSH_MAX) {
			rc = keys_fail(r, SP_EFIELDLEN, "push token too long");
			goto fail;
		}
		memcpy(d.push, pt.p, pt.len);
		d.push_len = (uint16_t)pt.len;
		d.push[pt.len] = '\0';
	}
	if ((rc = keys_device_put(s, txn, &d)))
		goto fail;
	if ((rc = keys_store_commit(txn)))
		return rc;
	keys_req_note(r, before, d.opk_count);
	uploaded_reply(r, &d);
	return SP_OK;
fail:
	keys_store_abort(txn);
	return rc;
}

int
keys_prekeys_status(keys_req *r)
{
	uploaded_reply(r, &r->caller_dev);
	return SP_OK;
}

/* Takes device d's lowest-numbered one-time prekey out of the store into the record. */
static int
take_opk(keys_req *r, MDB_txn *txn, keys_device *d, sp_frame *rec)
{
	uint8_t key[12];
	MDB_cursor *c;
	MDB_val k = {sizeof(key), key}, v;
	int rc;

	opk_key(key, d->id, 0);
	if ((rc = mdb_cursor_open(txn, keys_store_dbi(r->ctx->store, KDB_OPKS), &c)))
		return keys_store_err(rc);
	rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	if (rc == MDB_NOTFOUND || (rc == 0 && (k.mv_size != sizeof(key) ||
	    memcmp(k.mv_data, key, 8) != 0))) {
		mdb_cursor_close(c);
		sp_metric_inc(r->ctx->m_opk_empty);
		return SP_OK;
	}
	if (rc == 0 && v.mv_size != KEYS_PUB_LEN)
		rc = MDB_CORRUPTED;
	uint8_t *opk = rc == 0 ? keys_arena_alloc(&r->arena, KEYS_PUB_LEN) : NULL;
	if (rc == 0 && !opk) {
		mdb_cursor_close(c);
		return SP_ENOMEM;
	}
	if (rc == 0) {
		const uint8_t *kp = k.mv_data;
		uint32_t id = (uint32_t)kp[8] << 24 | (uint32_t)kp[9] << 16 | (uint32_t)kp[10] << 8 | kp[11];
		memcpy(opk, v.mv_data, KEYS_PUB_LEN);
		rc = keys_store_cursor_del(r->ctx->store, txn, c, KDB_OPKS);
		if (rc == 0) {
			sp_frame_set_u64(rec, SP_F_OPK_ID, id);
			sp_frame_set_bin(rec, SP_F_OPK, opk, KEYS_PUB_LEN);
			if (d->opk_count)
				d->opk_count--;
		}
	}
	mdb_cursor_close(c);
	return keys_store_err(rc);
}

int
keys_prekeys_bundle(keys_req *r)
{
	keys_store *s = r->ctx->store;
	uint64_t user = sp_frame_u64(r->in, SP_F_USER);
	bool one = sp_frame_has(r->in, SP_F_DEVICE);
	uint64_t want = sp_frame_u64(r->in, SP_F_DEVICE);
	sp_frame *recs = keys_arena_alloc(&r->arena, sizeof(sp_frame) * KEYS_MAX_DEVICES);
	keys_device *devs = keys_arena_alloc(&r->arena, sizeof(keys_device) * KEYS_MAX_DEVICES);
	int64_t before[KEYS_MAX_DEVICES];
	uint32_t n = 0;
	MDB_txn *txn;
	keys_user u;
	int rc;

	if (!recs || !devs)
		return SP_ENOMEM;
	char key[24];
	snprintf(key, sizeof(key), "%llu", (unsigned long long)r->user);
	if ((rc = keys_rate_take(r, r->ctx->rl_bundle, key, "bundle")))
		return rc;
	if ((rc = keys_store_begin(s, true, &txn)))
		return rc;
	/* A retry (connsrv's, after a failover or a lost answer) of a hand-out that committed
	 * gets the same keys: a one-time prekey goes out once. */
	rc = keys_replies_replay(r, txn, SP_T_BUNDLE_R);
	if (rc == SP_OK) {
		keys_store_abort(txn);
		return SP_OK;
	}
	if (rc != SP_ENOTFOUND)
		goto fail;
	if ((rc = keys_user_get(s, txn, user, &u))) {
		if (rc == SP_ENOTFOUND)
			keys_fail(r, rc, "no such user");
		goto fail;
	}
	bool found = false;
	for (int i = 0; i < u.ndevices; i++) {
		keys_device *d = &devs[n];
		/* A device never needs a session with itself. */
		if ((one && u.devices[i] != want) || (!one && u.devices[i] == r->device))
			continue;
		found = true;
		if ((rc = keys_device_get(s, txn, u.devices[i], d)))
			goto fail;
		if (!(d->flags & KEYS_DEV_HAS_SPK))
			continue;
		sp_frame *rec = &recs[n];
		sp_frame_init(rec, SP_T_BUNDLE_DEV, 0, false);
		sp_frame_set_u64(rec, SP_F_DEVICE, d->id);
		sp_frame_set_u64(rec, SP_F_REG_ID, d->reg_id);
		sp_frame_set_bin(rec, SP_F_IDENTITY_KEY, d->ik, KEYS_PUB_LEN);
		sp_frame_set_u64(rec, SP_F_SPK_ID, d->spk_id);
		sp_frame_set_bin(rec, SP_F_SPK, d->spk, KEYS_PUB_LEN);
		sp_frame_set_bin(rec, SP_F_SPK_SIG, d->spk_sig, KEYS_SIG_LEN);
		before[n] = d->opk_count;
		if ((rc = take_opk(r, txn, d, rec)))
			goto fail;
		if (d->opk_count != before[n] && (rc = keys_device_put(s, txn, d)))
			goto fail;
		n++;
	}
	if (one && !found) {
		rc = keys_fail(r, SP_ENOTFOUND, "no such current device of that user");
		goto fail;
	}
	if (one && n == 0) {
		rc = keys_fail(r, SP_ENOTFOUND, "device has not uploaded a signed prekey");
		goto fail;
	}
	/* The caller's own count, which this very bundle may have lowered. */
	int64_t own = r->caller_dev.opk_count;
	for (uint32_t i = 0; i < n; i++)
		if (devs[i].id == r->device)
			own = devs[i].opk_count;
	keys_reply_init(r, SP_T_BUNDLE_R);
	sp_frame_set_u64(&r->out, SP_F_USER, user);
	sp_frame_set_recs(&r->out, SP_F_BUNDLES, recs, n);
	if (own < r->ctx->cfg.low_water)
		sp_frame_set_bool(&r->out, SP_F_REFILL, true);
	if ((rc = keys_replies_store(r, txn)))
		goto fail;
	if ((rc = keys_store_commit(txn)))
		return rc;
	for (uint32_t i = 0; i < n; i++) {
		if (devs[i].opk_count != before[i]) {
			sp_metric_inc(r->ctx->m_opk_given);
			keys_req_note(r, before[i], devs[i].opk_count);
		}
	}
	return SP_OK;
fail:
	keys_store_abort(txn);
	return rc;
}

int
keys_prekeys_count_low(keys_ctx *ctx, int64_t *n)
{
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_val k, v;
	int rc = keys_store_begin(ctx->store, false, &txn);
	*n = 0;
	if (rc)
		return rc;
	if ((rc = mdb_cursor_open(txn, keys_store_dbi(ctx->store, KDB_DEVICES), &c))) {
		keys_store_abort(txn);
		return keys_store_err(rc);
	}
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		keys_device d;
		if (k.mv_size != 8 || keys_device_get(ctx->store, txn, sp_be64_get(k.mv_data), &d))
			continue;
		if (!(d.flags & KEYS_DEV_REVOKED) && d.opk_count < ctx->cfg.low_water)
			(*n)++;
	}
	mdb_cursor_close(c);
	keys_store_abort(txn);
	return rc == MDB_NOTFOUND ? SP_OK : keys_store_err(rc);
}
