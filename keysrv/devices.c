#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "keysrv/accounts.h"
#include "keysrv/devices.h"
#include "keysrv/prekeys.h"
#include "sp_error.h"

int
keys_devices_parse_new(keys_req *r, keys_newdev *nd)
{
	const sp_frame *in = r->in;
	sp_bin ik = sp_frame_bin(in, SP_F_IDENTITY_KEY), ak = sp_frame_bin(in, SP_F_AUTH_KEY);
	uint64_t reg = sp_frame_u64(in, SP_F_REG_ID);
	bool s1 = sp_frame_has(in, SP_F_SPK_ID), s2 = sp_frame_has(in, SP_F_SPK),
	     s3 = sp_frame_has(in, SP_F_SPK_SIG);

	memset(nd, 0, sizeof(*nd));
	if (ik.len != KEYS_PUB_LEN || ik.p[0] != 0x05)
		return keys_fail(r, SP_EINVAL, "identity key must be 33 bytes starting with 0x05");
	if (ak.len != KEYS_AUTH_LEN || !crypto_core_ed25519_is_valid_point(ak.p))
		return keys_fail(r, SP_EINVAL, "auth key is not a valid Ed25519 public key");
	if (reg > KEYS_REG_ID_MAX)
		return keys_fail(r, SP_ERANGE, "registration id must fit in 14 bits");
	if (s1 != s2 || s2 != s3)
		return keys_fail(r, SP_EINVAL, "spk_id, spk and spk_sig go together");
	nd->ik = ik.p;
	nd->auth_key = ak.p;
	nd->reg_id = (uint32_t)reg;
	if (sp_frame_has(in, SP_F_PUSH_TOKEN)) {
		sp_bin pt = sp_frame_bin(in, SP_F_PUSH_TOKEN);
		if (pt.len > KEYS_PUSH_MAX)
			return keys_fail(r, SP_EFIELDLEN, "push token too long");
		nd->push = (const char *)pt.p;
		nd->push_len = (uint16_t)pt.len;
	}
	if (s1) {
		uint64_t id = sp_frame_u64(in, SP_F_SPK_ID);
		if (id > UINT32_MAX)
			return keys_fail(r, SP_ERANGE, "signed prekey id must fit in 32 bits");
		nd->has_spk = true;
		nd->spk_id = (uint32_t)id;
		nd->spk = sp_frame_bin(in, SP_F_SPK).p;
		nd->spk_sig = sp_frame_bin(in, SP_F_SPK_SIG).p;
		int rc = keys_prekeys_verify_spk(nd->ik, nd->spk, nd->spk_sig);
		if (rc == SP_EINVAL)
			return keys_fail(r, rc, "signed prekey must be 33 bytes starting with 0x05");
		if (rc)
			return keys_fail(r, SP_EBADSIG, "signed prekey signature does not verify");
	}
	return SP_OK;
}

int
keys_devices_add(keys_req *r, MDB_txn *txn, keys_user *u, const keys_newdev *nd, bool primary,
    uint64_t *device)
{
	keys_store *s = r->ctx->store;
	keys_device d;
	int rc;

	if (u->ndevices >= KEYS_MAX_DEVICES)
		return keys_fail(r, SP_ELIMIT, "at most 4 linked devices");
	memset(&d, 0, sizeof(d));
	if ((rc = keys_store_new_id(s, txn, KDB_DEVICES, &d.id)))
		return rc;
	d.user = u->id;
	d.flags = primary ? KEYS_DEV_PRIMARY : 0;
	d.reg_id = nd->reg_id;
	d.created_ms = r->ctx->now_ms();
	memcpy(d.ik, nd->ik, KEYS_PUB_LEN);
	memcpy(d.auth_key, nd->auth_key, KEYS_AUTH_LEN);
	if (nd->has_spk) {
		d.flags |= KEYS_DEV_HAS_SPK;
		d.spk_id = nd->spk_id;
		memcpy(d.spk, nd->spk, KEYS_PUB_LEN);
		memcpy(d.spk_sig, nd->spk_sig, KEYS_SIG_LEN);
	}
	d.push_len = nd->push_len;
	if (nd->push_len)
		memcpy(d.push, nd->push, nd->push_len);
	if ((rc = keys_device_put(s, txn, &d)))
		return rc;
	if (primary) {
		/* The primary is listed first. */
		memmove(&u->devices[1], &u->devices[0], u->ndevices * sizeof(u->devices[0]));
		u->devices[0] = d.id;
		u->primary = d.id;
	} else {
		u->devices[u->ndevices] = d.id;
	}
	u->ndevices++;
	keys_req_note(r, -1, 0);
	*device = d.id;
	return SP_OK;
}

int
keys_devices_revoke(keys_req *r, MDB_txn *txn, keys_user *u, uint64_t id)
{
	keys_store *s = r->ctx->store;
	keys_device d;
	int rc;

	if ((rc = keys_device_get(s, txn, id, &d)))
		return rc;
	if ((rc = keys_prekeys_delete_all(s, txn, id)))
		return rc;
	if (!(d.flags & KEYS_DEV_REVOKED))
		keys_req_note(r, d.opk_count, -1);
	d.flags = (uint8_t)((d.flags | KEYS_DEV_REVOKED) & ~KEYS_DEV_HAS_SPK);
	d.opk_count = 0;
	d.push_len = 0;
	d.push[0] = '\0';
	if ((rc = keys_device_put(s, txn, &d)))
		return rc;
	for (int i = 0; i < u->ndevices; i++) {
		if (u->devices[i] == id) {
			memmove(&u->devices[i], &u->devices[i + 1],
			    (size_t)(u->ndevices - i - 1) * sizeof(u->devices[0]));
			u->ndevices--;
			break;
		}
	}
	if (u->primary == id)
		u->primary = 0;
	return SP_OK;
}

int
keys_devices_check_caller(keys_req *r, MDB_txn *txn, uint64_t user, uint64_t device)
{
	keys_device *d = &r->caller_dev;
	int rc = keys_device_get(r->ctx->store, txn, device, d);
	if (rc == SP_ENOTFOUND || (rc == SP_OK && (d->user != user || (d->flags & KEYS_DEV_REVOKED))))
		return keys_fail(r, SP_EAUTH, "caller is not a current device of that user");
	if (rc)
		return rc;
	r->user = user;
	r->device = device;
	r->caller_primary = (d->flags & KEYS_DEV_PRIMARY) != 0;
	return SP_OK;
}

int
keys_devices_get(keys_req *r)
{
	keys_store *s = r->ctx->store;
	MDB_txn *txn;
	keys_user u;
	int rc;

	if ((rc = keys_store_begin(s, false, &txn)))
		return rc;
	if ((rc = keys_user_get(s, txn, sp_frame_u64(r->in, SP_F_USER), &u))) {
		keys_store_abort(txn);
		return rc == SP_ENOTFOUND ? keys_fail(r, rc, "no such user") : rc;
	}
	sp_frame *info = keys_arena_alloc(&r->arena, sizeof(sp_frame) * KEYS_MAX_DEVICES);
	keys_device *devs = keys_arena_alloc(&r->arena, sizeof(keys_device) * KEYS_MAX_DEVICES);
	if (!info || !devs) {
		keys_store_abort(txn);
		return SP_ENOMEM;
	}
	uint32_t n = 0;
	for (int i = 0; i < u.ndevices; i++) {
		keys_device *d = &devs[n];
		if ((rc = keys_device_get(s, txn, u.devices[i], d))) {
			keys_store_abort(txn);
			return rc;
		}
		sp_frame_init(&info[n], SP_T_DEVICE_INFO, 0, false);
		sp_frame_set_u64(&info[n], SP_F_DEVICE, d->id);
		sp_frame_set_bin(&info[n], SP_F_IDENTITY_KEY, d->ik, KEYS_PUB_LEN);
		sp_frame_set_u64(&info[n], SP_F_REG_ID, d->reg_id);
		sp_frame_set_bool(&info[n], SP_F_PRIMARY, (d->flags & KEYS_DEV_PRIMARY) != 0);
		n++;
	}
	keys_store_abort(txn);
	keys_reply_init(r, SP_T_DEVICES_R);
	sp_frame_set_u64(&r->out, SP_F_USER, u.id);
	sp_frame_set_recs(&r->out, SP_F_DEVICE_LIST, info, n);
	if (r->device && r->caller_dev.opk_count < r->ctx->cfg.low_water)
		sp_frame_set_bool(&r->out, SP_F_REFILL, true);
	return SP_OK;
}

int
keys_devices_remove(keys_req *r)
{
	keys_store *s = r->ctx->store;
	uint64_t target = sp_frame_u64(r->in, SP_F_DEVICE);
	MDB_txn *txn;
	keys_device d;
	keys_user u;
	int rc;

	if ((rc = keys_store_begin(s, true, &txn)))
		return rc;
	rc = keys_device_get(s, txn, target, &d);
	if (rc == SP_ENOTFOUND || (rc == SP_OK && d.user != r->user)) {
		rc = keys_fail(r, SP_ENOTFOUND, "no such device on this account");
		goto fail;
	}
	if (rc)
		goto fail;
	if (d.flags & KEYS_DEV_PRIMARY) {
		rc = keys_fail(r, SP_EPERM, "the primary device cannot be removed; register again");
		goto fail;
	}
	if (!r->caller_primary && target != r->device) {
		rc = keys_fail(r, SP_EPERM, "only the primary may remove another device");
		goto fail;
	}
	/* Already revoked: a resent request gets the same answer. */
	if (!(d.flags & KEYS_DEV_REVOKED)) {
		if ((rc = keys_user_get(s, txn, r->user, &u)) ||
		    (rc = keys_devices_revoke(r, txn, &u, target)) ||
		    (rc = keys_user_put(s, txn, &u)))
			goto fail;
		if ((rc = keys_store_commit(txn)))
			return rc;
	} else {
		keys_store_abort(txn);
	}
	keys_reply_init(r, SP_T_DEVICE_REMOVED);
	sp_frame_set_u64(&r->out, SP_F_USER, r->user);
	sp_frame_set_u64(&r->out, SP_F_DEVICE, target);
	return SP_OK;
fail:
	keys_store_abort(txn);
	return rc;
}

/* The device the request's `device` names, read in a transaction of its own into the
 * request's arena (*out). SP_OK, SP_ENOTFOUND or an error. */
static int
read_device(keys_req *r, keys_device **out)
{
	keys_store *s = r->ctx->store;
	keys_device *d = keys_arena_alloc(&r->arena, sizeof(*d));
	MDB_txn *txn;
	int rc;

	if (!d)
		return SP_ENOMEM;
	if ((rc = keys_store_begin(s, false, &txn)))
		return rc;
	rc = keys_device_get(s, txn, sp_frame_u64(r->in, SP_F_DEVICE), d);
	keys_store_abort(txn);
	*out = d;
	return rc;
}

int
keys_devices_auth_key(keys_req *r)
{
	uint64_t user = sp_frame_u64(r->in, SP_F_USER);
	keys_device *d;
	int rc = read_device(r, &d);
	if (rc == SP_ENOTFOUND || (rc == SP_OK && (d->user != user || (d->flags & KEYS_DEV_REVOKED))))
		return keys_fail(r, SP_ENOTFOUND, "no such current device of that user");
	if (rc)
		return rc;
	keys_reply_init(r, SP_T_AUTH_KEY_R);
	sp_frame_set_u64(&r->out, SP_F_USER, user);
	sp_frame_set_u64(&r->out, SP_F_DEVICE, d->id);
	sp_frame_set_bin(&r->out, SP_F_AUTH_KEY, d->auth_key, KEYS_AUTH_LEN);
	sp_frame_set_bin(&r->out, SP_F_IDENTITY_KEY, d->ik, KEYS_PUB_LEN);
	if (d->push_len)
		sp_frame_set_bin(&r->out, SP_F_PUSH_TOKEN, d->push, d->push_len);
	return SP_OK;
}

int
keys_devices_lookup(keys_req *r)
{
	keys_store *s = r->ctx->store;
	char phone[KEYS_PHONE_MAX + 1], key[32];
	MDB_txn *txn;
	uint64_t user;
	int rc;

	if (sp_frame_str(r->in, SP_F_PHONE, phone, sizeof(phone)) || !keys_phone_valid(phone))
		return keys_fail(r, SP_EINVAL, "phone must be E.164 (+ and 8-15 digits)");
	/* Lookups share the bundle budget: both reveal who is on the service. */
	snprintf(key, sizeof(key), "lookup:%llu", (unsigned long long)r->user);
	if ((rc = keys_rate_take(r, r->ctx->rl_bundle, key, "lookup")))
		return rc;
	if ((rc = keys_store_begin(s, false, &txn)))
		return rc;
	rc = keys_user_by_phone(s, txn, phone, &user);
	keys_store_abort(txn);
	if (rc)
		return rc == SP_ENOTFOUND ? keys_fail(r, rc, "no account with that phone number") : rc;
	keys_reply_init(r, SP_T_USER_FOUND);
	sp_frame_set_bin(&r->out, SP_F_PHONE, sp_frame_bin(r->in, SP_F_PHONE).p,
			 sp_frame_bin(r->in, SP_F_PHONE).len);
	sp_frame_set_u64(&r->out, SP_F_USER, user);
	return SP_OK;
}

/* ---- push tokens ---- */

bool
keys_push_platform_valid(const char *p)
{
	return strcmp(p, "fcm") == 0 || strcmp(p, "apns") == 0;
}

/* A token goes into a JSON body and an URL path at the gateway: printable ASCII without
 * space, quote, backslash or slash, so neither needs escaping by anyone. */
static bool
push_token_valid(const uint8_t *p, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (p[i] <= 0x20 || p[i] >= 0x7f || p[i] == '"' || p[i] == '\\' || p[i] == '/')
			return false;
	return true;
}

/* Reads {platform, token} of r->in into "<platform>:<token>" (out, KEYS_PUSH_MAX + 1). */
static int
push_value(keys_req *r, char *out, uint16_t *len)
{
	char plat[16];
	sp_bin tok = sp_frame_bin(r->in, SP_F_PUSH_TOKEN);
	if (sp_frame_str(r->in, SP_F_PUSH_PLATFORM, plat, sizeof(plat)) ||
	    !keys_push_platform_valid(plat))
		return keys_fail(r, SP_EINVAL, "push platform must be fcm or apns");
	if (!push_token_valid(tok.p, tok.len))
		return keys_fail(r, SP_EINVAL, "push token must be printable ASCII without space, quote, backslash or slash");
	size_t pl = strlen(plat);
	if (pl + 1 + tok.len > KEYS_PUSH_MAX)
		return keys_fail(r, SP_EFIELDLEN, "push token too long");
	memcpy(out, plat, pl);
	out[pl] = ':';
	memcpy(out + pl + 1, tok.p, tok.len);
	out[pl + 1 + tok.len] = '\0';
	*len = (uint16_t)(pl + 1 + tok.len);
	return SP_OK;
}

/* Changes the push field of `device` (of any user when user is 0) in one write
 * transaction: to `value` (len 0: cleared); with `expect`, only while it is that value. */
static int
push_update(keys_req *r, uint64_t user, uint64_t device, const char *value, uint16_t len,
	    const char *expect, uint16_t expect_len)
{
	keys_store *s = r->ctx->store;
	keys_device *d = keys_arena_alloc(&r->arena, sizeof(*d));
	MDB_txn *txn;
	int rc;

	if (!d)
		return SP_ENOMEM;
	if ((rc = keys_store_begin(s, true, &txn)))
		return rc;
	rc = keys_device_get(s, txn, device, d);
	if (rc == SP_ENOTFOUND || (rc == SP_OK && ((user && d->user != user) ||
						   (d->flags & KEYS_DEV_REVOKED)))) {
		keys_store_abort(txn);
		return keys_fail(r, SP_ENOTFOUND, "no such current device");
	}
	if (rc == SP_OK && expect &&
	    (d->push_len != expect_len || memcmp(d->push, expect, expect_len) != 0)) {
		keys_store_abort(txn);
		return SP_OK; /* replaced since: the new token is not known dead */
	}
	if (rc == SP_OK) {
		memcpy(d->push, value, len);
		d->push[len] = '\0';
		d->push_len = len;
		rc = keys_device_put(s, txn, d);
	}
	if (rc) {
		keys_store_abort(txn);
		return rc;
	}
	return keys_store_commit(txn);
}

int
keys_devices_push_register(keys_req *r)
{
	char value[KEYS_PUSH_MAX + 1] = "";
	uint16_t len = 0;
	bool hp = sp_frame_has(r->in, SP_F_PUSH_PLATFORM), ht = sp_frame_has(r->in, SP_F_PUSH_TOKEN);
	int rc;

	if (hp != ht)
		return keys_fail(r, SP_EINVAL, "push_platform and push_token go together");
	if (ht && (rc = push_value(r, value, &len)))
		return rc;
	if ((rc = push_update(r, r->user, r->device, value, len, NULL, 0)))
		return rc;
	keys_reply_init(r, SP_T_OK);
	return SP_OK;
}

int
keys_devices_push_get(keys_req *r)
{
	keys_device *d;
	int rc = read_device(r, &d);
	if (rc == SP_ENOTFOUND || (rc == SP_OK && (d->flags & KEYS_DEV_REVOKED)))
		return keys_fail(r, SP_ENOTFOUND, "no such current device");
	if (rc)
		return rc;
	keys_reply_init(r, SP_T_PUSH_TOKEN_R);
	sp_frame_set_u64(&r->out, SP_F_DEVICE, d->id);
	sp_frame_set_u64(&r->out, SP_F_USER, d->user);
	char *colon = memchr(d->push, ':', d->push_len);
	if (colon) {
		*colon = '\0';
		if (keys_push_platform_valid(d->push)) {
			size_t pl = (size_t)(colon - d->push);
			sp_frame_set_str(&r->out, SP_F_PUSH_PLATFORM, d->push);
			sp_frame_set_bin(&r->out, SP_F_PUSH_TOKEN, colon + 1, d->push_len - pl - 1);
		}
	}
	return SP_OK;
}

int
keys_devices_push_drop(keys_req *r)
{
	char value[KEYS_PUSH_MAX + 1];
	uint16_t len = 0;
	int rc;

	if ((rc = push_value(r, value, &len)))
		return rc;
	if ((rc = push_update(r, 0, sp_frame_u64(r->in, SP_F_DEVICE), "", 0, value, len)))
		return rc;
	keys_reply_init(r, SP_T_OK);
	return SP_OK;
}
