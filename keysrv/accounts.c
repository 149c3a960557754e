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

/* Reads the PIN field (the catalogue bounds its length) into buf: printable ASCII only,
 * so that every client hashes the same bytes for the same PIN. */
static int
read_pin(keys_req *r, char buf[KEYS_PIN_MAX + 1])
{
	if (sp_frame_str(r->in, SP_F_PIN, buf, KEYS_PIN_MAX + 1) != SP_OK ||
	    strlen(buf) < KEYS_PIN_MIN)
		goto bad;
	for (const char *p = buf; *p; p++)
		if (*p < 0x20 || *p > 0x7e)
			goto bad;
	return SP_OK;
bad:
	sodium_memzero(buf, KEYS_PIN_MAX + 1);
	return keys_fail(r, SP_EINVAL, "PIN must be 4 to 64 printable ASCII characters");
}

/* Refuses a request because the phone's budget for this window is spent: counted, logged
 * (rate limited: a flood must not flood the log) and answered with when it renews. */
static int
budget_refuse(keys_req *r, const keys_budget *b, sp_metric *m, const char *what, const char *reason)
{
	uint64_t now = r->ctx->now_ms();
	r->retry_after_ms = b->expires_ms > now ? b->expires_ms - now : 1;
	sp_metric_inc(m);
	sp_metric_inc(r->ctx->m_ratelimited);
	sp_warn_rl("phone budget spent (%s): refused for %llu s more", what,
	    (unsigned long long)(r->retry_after_ms / 1000));
	return keys_fail(r, SP_ERATELIMIT, reason);
}

int
keys_accounts_register(keys_req *r)
{
	keys_ctx *ctx = r->ctx;
	char phone[KEYS_PHONE_MAX + 1], code[KEYS_CODE_LEN + 1];
	keys_otp o;
	keys_budget b;
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
	/* A new code replaces any earlier one (and its remaining attempts, but not the
	 * phone's budget of wrong guesses). It is durable before it is sent, so every code a
	 * user receives can be verified. */
	if ((rc = keys_store_begin(ctx->store, true, &txn)))
		goto out;
	if ((rc = keys_budget_get(ctx->store, txn, phone, ctx->now_ms(), &b))) {
		keys_store_abort(txn);
		goto out;
	}
	if (ctx->cfg.phone_sends && b.sends >= ctx->cfg.phone_sends) {
		keys_store_abort(txn);
		rc = budget_refuse(r, &b, ctx->m_budget_register, "register",
		    "too many codes sent to this number today; retry later");
		goto out;
	}
	b.sends++;
	if ((rc = keys_otp_put(ctx->store, txn, phone, &o)) ||
	    (rc = keys_budget_put(ctx->store, txn, phone, &b))) {
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

/* Checks a presented code against the record. On a wrong code the attempt is counted in
 * the record (dropped when none are left) and in the phone's budget, in `txn`. */
static int
check_code(keys_req *r, MDB_txn *txn, const char *phone, keys_otp *o, keys_budget *b,
    const uint8_t hash[32], bool *wrote)
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
	b->verify_fails++;
	if (rc == SP_OK)
		rc = keys_budget_put(s, txn, phone, b);
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

/* What VERIFY learnt of the registration lock before its write transaction. */
typedef struct pin_pre {
	bool checked; /* a PIN was given and checked against `hash` */
	bool ok;
	char hash[KEYS_PIN_HASH_MAX];
} pin_pre;

/* The PIN hash check is slow by design (argon2id), so it runs before the write
 * transaction, not holding LMDB's writer lock, and only for a request that carries the
 * right pending code (so that no one without the code can make keysrv hash). The write
 * transaction then uses the result only if the lock still holds the same hash. */
static int
pin_precheck(keys_req *r, const char *phone, const uint8_t hash[KEYS_HASH_LEN], const char *pin,
    pin_pre *pp)
{
	keys_ctx *ctx = r->ctx;
	keys_otp o;
	keys_pin p;
	keys_budget b;
	uint64_t uid, now = ctx->now_ms();
	MDB_txn *txn;
	int rc;

	memset(pp, 0, sizeof(*pp));
	if (!pin)
		return SP_OK;
	if ((rc = keys_store_begin(ctx->store, false, &txn)))
		return rc;
	rc = keys_budget_get(ctx->store, txn, phone, now, &b);
	/* A spent budget is refused later without looking at the PIN: no need to hash. */
	if (rc == SP_OK &&
	    ((ctx->cfg.phone_verify_fails && b.verify_fails >= ctx->cfg.phone_verify_fails) ||
		(ctx->cfg.phone_pin_fails && b.pin_fails >= ctx->cfg.phone_pin_fails)))
		rc = SP_ENOTFOUND;
	if (rc == SP_OK)
		rc = keys_otp_get(ctx->store, txn, phone, &o);
	if (rc == SP_OK && (o.state != KEYS_OTP_PENDING || o.expires_ms <= now ||
			       sodium_memcmp(o.hash, hash, KEYS_HASH_LEN) != 0))
		rc = SP_ENOTFOUND;
	if (rc == SP_OK)
		rc = keys_user_by_phone(ctx->store, txn, phone, &uid);
	if (rc == SP_OK)
		rc = keys_pin_get(ctx->store, txn, uid, &p);
	keys_store_abort(txn);
	if (rc == SP_ENOTFOUND)
		return SP_OK; /* nothing to check now; the write transaction decides */
	if (rc)
		return rc;
	memcpy(pp->hash, p.hash, sizeof(pp->hash));
	pp->checked = true;
	pp->ok = crypto_pwhash_str_verify(p.hash, pin, strlen(pin)) == 0;
	return SP_OK;
}

/* The registration lock, once the code is right: an account whose number is locked is
 * re-registered only with its PIN. A wrong PIN is counted in the phone's budget (and the
 * code stays pending, so the user may try again with the right one). Sets *wrote when the
 * transaction holds a counted attempt that must be committed. */
static int
check_lock(keys_req *r, MDB_txn *txn, const char *phone, keys_budget *b, bool has_pin,
    const pin_pre *pp, bool *wrote)
{
	keys_ctx *ctx = r->ctx;
	keys_pin p;
	uint64_t uid;
	int rc = keys_user_by_phone(ctx->store, txn, phone, &uid);

	*wrote = false;
	if (rc == SP_OK)
		rc = keys_pin_get(ctx->store, txn, uid, &p);
	if (rc == SP_ENOTFOUND)
		return SP_OK;
	if (rc)
		return rc;
	if (ctx->cfg.phone_pin_fails && b->pin_fails >= ctx->cfg.phone_pin_fails)
		return budget_refuse(r, b, ctx->m_budget_pin, "pin",
		    "registration lock: too many wrong PINs today; retry later");
	if (!has_pin)
		return keys_fail(r, SP_EPERM, "registration lock: this number needs its PIN");
	if (!pp->checked || strcmp(pp->hash, p.hash) != 0)
		return keys_fail(r, SP_EUNAVAIL, "registration lock changed meanwhile; retry");
	if (pp->ok)
		return SP_OK;
	b->pin_fails++;
	sp_metric_inc(ctx->m_pin_wrong);
	if ((rc = keys_budget_put(ctx->store, txn, phone, b)))
		return rc;
	*wrote = true;
	return keys_fail(r, SP_EAUTH, "registration lock: wrong PIN");
}

int
keys_accounts_verify(keys_req *r)
{
	keys_ctx *ctx = r->ctx;
	char phone[KEYS_PHONE_MAX + 1], code[17], pin[KEYS_PIN_MAX + 1];
	uint8_t hash[KEYS_HASH_LEN], khash[KEYS_HASH_LEN];
	keys_budget b;
	pin_pre pp;
	bool has_pin = sp_frame_has(r->in, SP_F_PIN);
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
	if (has_pin && (rc = read_pin(r, pin)))
		return rc;
	rc = pin_precheck(r, phone, hash, has_pin ? pin : NULL, &pp);
	sodium_memzero(pin, sizeof(pin));
	if (rc)
		return rc;

	if ((rc = keys_store_begin(ctx->store, true, &txn)))
		return rc;
	if ((rc = keys_budget_get(ctx->store, txn, phone, ctx->now_ms(), &b)))
		goto fail;
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
	/* Spent: refused before the code is even compared, so that guesses past the budget
	 * learn nothing. */
	if (ctx->cfg.phone_verify_fails && b.verify_fails >= ctx->cfg.phone_verify_fails) {
		rc = budget_refuse(r, &b, ctx->m_budget_verify, "verify",
		    "too many wrong codes for this number today; retry later");
		goto fail;
	}
	if ((rc = check_code(r, txn, phone, &o, &b, hash, &wrote)) ||
	    (rc = check_lock(r, txn, phone, &b, has_pin, &pp, &wrote))) {
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

int
keys_accounts_set_pin(keys_req *r)
{
	keys_ctx *ctx = r->ctx;
	bool lock = sp_frame_has(r->in, SP_F_PIN);
	char pin[KEYS_PIN_MAX + 1];
	keys_pin p;
	MDB_txn *txn;
	int rc;

	if (!r->caller_primary)
		return keys_fail(r, SP_EPERM, "only the primary device sets the registration lock");
	memset(&p, 0, sizeof(p));
	if (lock) {
		if ((rc = read_pin(r, pin)))
			return rc;
		unsigned long long ops = ctx->cfg.pin_opslimit ? ctx->cfg.pin_opslimit :
								 crypto_pwhash_OPSLIMIT_INTERACTIVE;
		size_t mem = ctx->cfg.pin_memlimit ? ctx->cfg.pin_memlimit :
						     crypto_pwhash_MEMLIMIT_INTERACTIVE;
		_Static_assert(crypto_pwhash_STRBYTES <= KEYS_PIN_HASH_MAX, "PIN hash fits its record");
		/* Hashed before the transaction: argon2id is slow by design. */
		rc = crypto_pwhash_str_alg(p.hash, pin, strlen(pin), ops, mem, crypto_pwhash_ALG_ARGON2ID13);
		sodium_memzero(pin, sizeof(pin));
		if (rc != 0)
			return keys_fail(r, SP_ENOMEM, "could not hash the PIN");
		p.set_ms = ctx->now_ms();
	}
	if ((rc = keys_store_begin(ctx->store, true, &txn)))
		return rc;
	if (lock) {
		rc = keys_pin_put(ctx->store, txn, r->user, &p);
	} else {
		uint8_t key[8];
		sp_be64_put(key, r->user);
		rc = keys_store_del(ctx->store, txn, KDB_PINS, key, sizeof(key));
		if (rc == SP_ENOTFOUND)
			rc = SP_OK;
	}
	if (rc) {
		keys_store_abort(txn);
		return rc;
	}
	if ((rc = keys_store_commit(txn)))
		return rc;
	sp_info("registration lock %s for user %016llx", lock ? "set" : "cleared",
	    (unsigned long long)r->user);
	keys_reply_init(r, SP_T_PIN_SET);
	sp_frame_set_bool(&r->out, SP_F_LOCKED, lock);
	return SP_OK;
}
