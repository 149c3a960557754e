#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "keysrv/accounts.h"
#include "keysrv/devices.h"
#include "sp_bytes.h"
#include "sp_error.h"
#include "sp_log.h"

bool
keys_phone_valid(const char *s)
{
	size_t n = 0;
	if (s[0] != '+' || s[1] < '1' || s[1] > '9')
		return false;
	for (const char *p = s + 1; *p; p++, n++)
		if (*p < '0' || *p > '9')
			return false;
	return n >= 8 && n <= 15;
}

/* Reads and validates the PHONE field into buf. */
static int
read_phone(keys_req *r, char buf[KEYS_PHONE_MAX + 1])
{
	if (sp_frame_str(r->in, SP_F_PHONE, buf, KEYS_PHONE_MAX + 1) != SP_OK || !keys_phone_valid(buf))
		return keys_fail(r, SP_EINVAL, "phone must be E.164: + and 8 to 15 digits");
	return SP_OK;
}

int
keys_accounts_register(keys_req *r)
{
	keys_ctx *ctx = r->ctx;
	char phone[KEYS_PHONE_MAX + 1], code[KEYS_CODE_LEN + 1];
	keys_otp o;
	MDB_txn *txn;
	int rc;

	if ((rc = read_phone(r, phone)))
		return rc;
	if ((rc = keys_rate_take(r, ctx->rl_source, r->source, "source")) ||
	    (rc = keys_rate_take(r, ctx->rl_phone, phone, "phone")))
		return rc;
	snprintf(code, sizeof(code), "%06u", (unsigned)randombytes_uniform(1000000));
	memset(&o, 0, sizeof(o));
	keys_hash(ctx, "otp", phone, strlen(phone), code, KEYS_CODE_LEN, o.hash);
	o.expires_ms = ctx->now_ms() + ctx->cfg.otp_ttl_ms;
	o.attempts_left = (uint8_t)ctx->cfg.otp_attempts;
	o.state = KEYS_OTP_PENDING;
	/* A new code replaces any earlier one (and its remaining attempts). It is durable
	 * before it is sent, so every code a user receives can be verified. */
	if ((rc = keys_store_begin(ctx->store, true, &txn)))
		goto out;
	if ((rc = keys_otp_put(ctx->store, txn, phone, &o))) {
		keys_store_abort(txn);
		goto out;
	}
	if ((rc = keys_store_commit(txn)))
		goto out;
	if ((rc = keys_otp_send(ctx->otp, phone, code))) {
		rc = keys_fail(r, rc == SP_EFULL ? SP_EUNAVAIL : rc, "could not send the code");
		goto out;
	}
	keys_reply_init(r, SP_T_REGISTERED);
	sp_frame_set_u64(&r->out, SP_F_TTL, ctx->cfg.otp_ttl_ms / 1000);
out:
	sodium_memzero(code, sizeof(code));
	return rc;
}

/* Checks a presented code against the record. On a wrong code the attempt is counted
 * (and the record dropped when none are left) in `txn`. */
static int
check_code(keys_req *r, MDB_txn *txn, const char *phone, keys_otp *o, const uint8_t hash[32],
    bool *wrote)
{
	keys_store *s = r->ctx->store;
	int rc;

	*wrote = false;
	if (o->expires_ms <= r->ctx->now_ms()) {
		*wrote = keys_store_del(s, txn, KDB_OTPS, phone, strlen(phone)) == SP_OK;
		return keys_fail(r, SP_EEXPIRED, "code expired; register again");
	}
	if (sodium_memcmp(o->hash, hash, KEYS_HASH_LEN) == 0)
		return SP_OK;
	if (o->attempts_left > 0)
		o->attempts_left--;
	if (o->attempts_left == 0)
		rc = keys_store_del(s, txn, KDB_OTPS, phone, strlen(phone));
	else
		rc = keys_otp_put(s, txn, phone, o);
	*wrote = rc == SP_OK;
	if (rc)
		return rc;
	return keys_fail(r, SP_EAUTH, o->attempts_left ? "wrong code" : "wrong code; no attempts left");
}

/* Creates the user (or revokes the devices of an existing one) and its primary device. */
static int
create_account(keys_req *r, MDB_txn *txn, const char *phone, const keys_newdev *nd, keys_user *u,
    uint64_t *device, uint64_t *revoked, uint32_t *nrevoked)
{
	keys_store *s = r->ctx->store;
	uint64_t uid;
	uint8_t be[8];
	int rc = keys_user_by_phone(s, txn, phone, &uid);

	*nrevoked = 0;
	if (rc == SP_OK) {
		if ((rc = keys_user_get(s, txn, uid, u)))
			return rc;
		while (u->ndevices > 0) {
			revoked[(*nrevoked)++] = u->devices[0];
			if ((rc = keys_devices_revoke(r, txn, u, u->devices[0])))
				return rc;
		}
	} else if (rc == SP_ENOTFOUND) {
		memset(u, 0, sizeof(*u));
		if ((rc = keys_store_new_id(s, txn, KDB_USERS, &u->id)))
			return rc;
		snprintf(u->phone, sizeof(u->phone), "%s", phone);
		u->created_ms = r->ctx->now_ms();
		sp_be64_put(be, u->id);
		if ((rc = keys_store_put(s, txn, KDB_PHONES, phone, strlen(phone), be, 8, 0)))
			return rc;
	} else {
		return rc;
	}
	if ((rc = keys_devices_add(r, txn, u, nd, true, device)))
		return rc;
	return keys_user_put(s, txn, u);
}

int
keys_accounts_verify(keys_req *r)
{
	keys_ctx *ctx = r->ctx;
	char phone[KEYS_PHONE_MAX + 1], code[17];
	uint8_t hash[KEYS_HASH_LEN], khash[KEYS_HASH_LEN];
	uint64_t *revoked = keys_arena_alloc(&r->arena, sizeof(uint64_t) * KEYS_MAX_DEVICES);
	uint32_t nrevoked = 0;
	keys_newdev nd;
	keys_otp o;
	keys_user u;
	uint64_t device = 0;
	MDB_txn *txn;
	bool wrote;
	int rc;

	if (!revoked)
		return SP_ENOMEM;
	if ((rc = read_phone(r, phone)))
		return rc;
	if ((rc = keys_rate_take(r, ctx->rl_source, r->source, "source")))
		return rc;
	if (sp_frame_str(r->in, SP_F_OTP, code, sizeof(code)) != SP_OK || strlen(code) != KEYS_CODE_LEN ||
	    strspn(code, "0123456789") != KEYS_CODE_LEN)
		return keys_fail(r, SP_EINVAL, "code must be 6 digits");
	if ((rc = keys_devices_parse_new(r, &nd)))
		return rc;
	keys_hash(ctx, "otp", phone, strlen(phone), code, KEYS_CODE_LEN, hash);
	keys_hash(ctx, "verify-keys", nd.ik, KEYS_PUB_LEN, nd.auth_key, KEYS_AUTH_LEN, khash);
	sodium_memzero(code, sizeof(code));

	if ((rc = keys_store_begin(ctx->store, true, &txn)))
		return rc;
	rc = keys_otp_get(ctx->store, txn, phone, &o);
	if (rc == SP_ENOTFOUND) {
		rc = keys_fail(r, rc, "no code pending for this phone; register first");
		goto fail;
	}
	if (rc)
		goto fail;
	if (o.state == KEYS_OTP_USED) {
		/* A resent VERIFY (same code, same keys) gets the first answer; anything else is
		 * a reuse. */
		if (o.expires_ms > ctx->now_ms() && sodium_memcmp(o.hash, hash, KEYS_HASH_LEN) == 0 &&
		    sodium_memcmp(o.keys_hash, khash, KEYS_HASH_LEN) == 0) {
			keys_store_abort(txn);
			keys_reply_init(r, SP_T_VERIFIED);
			sp_frame_set_u64(&r->out, SP_F_USER, o.user);
			sp_frame_set_u64(&r->out, SP_F_DEVICE, o.device);
			return SP_OK;
		}
		rc = keys_fail(r, SP_EREPLAY, "code already used; register again");
		goto fail;
	}
	if ((rc = check_code(r, txn, phone, &o, hash, &wrote))) {
		/* The counted attempt (or the dropped record) must stick. */
		if (wrote) {
			int crc = keys_store_commit(txn);
			return crc ? crc : rc;
		}
		goto fail;
	}
	if ((rc = create_account(r, txn, phone, &nd, &u, &device, revoked, &nrevoked)))
		goto fail;
	o.state = KEYS_OTP_USED;
	o.user = u.id;
	o.device = device;
	memcpy(o.keys_hash, khash, KEYS_HASH_LEN);
	if ((rc = keys_otp_put(ctx->store, txn, phone, &o)))
		goto fail;
	if ((rc = keys_store_commit(txn)))
		return rc;
	sp_info("verified user %016llx device %016llx%s", (unsigned long long)u.id,
	    (unsigned long long)device, nrevoked ? " (re-registration)" : "");
	keys_reply_init(r, SP_T_VERIFIED);
	sp_frame_set_u64(&r->out, SP_F_USER, u.id);
	sp_frame_set_u64(&r->out, SP_F_DEVICE, device);
	char *ph = keys_arena_alloc(&r->arena, sizeof(phone));
	if (ph) {
		memcpy(ph, phone, sizeof(phone));
		sp_frame_set_str(&r->out, SP_F_PHONE, ph);
	}
	if (nrevoked)
		sp_frame_set_u64s(&r->out, SP_F_DEVICES, revoked, nrevoked);
	return SP_OK;
fail:
	keys_store_abort(txn);
	return rc;
}
