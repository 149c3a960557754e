/*
 * Account and device life cycle: registration with a one-time code, prekey upload and
 * refill, linking a new device (code shown on the new device, signed on the primary),
 * listing and removing devices.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cl_internal.h"
#include "sp_error.h"
#include "sp_time.h"

#define LINK_SIG_TAG "sealpost-link-v1"
#define LINK_STATUS_TAG "sealpost-link-status-v1"

int
cl_keys_new_identity(sealpost *sp, sig_store **out)
{
	crypto_sign_keypair(sp->auth_pk, sp->auth_sk);
	uint32_t reg_id = 1 + randombytes_uniform(16380);
	int rc = sig_store_generate(out, reg_id, 1, CL_PREKEYS_BATCH);
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_CRYPTO, "generating keys: %s", sp_strerror(rc));
	return SP_OK;
}

int
cl_keys_upload(sealpost *sp, uint32_t n)
{
	uint32_t avail = sig_store_prekeys_available(sp->sig);
	int rc;
	if (avail < n && (rc = sig_store_generate_prekeys(sp->sig, n - avail)))
		return cl_fail(sp, rc, SEALPOST_ERR_CRYPTO, "generating prekeys: %s", sp_strerror(rc));
	sig_bundle *b = calloc(n, sizeof(*b));
	sp_frame *recs = calloc(n, sizeof(*recs));
	if (!b || !recs) {
		free(b);
		free(recs);
		return cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
	}
	uint32_t k = 0;
	for (; k < n; k++) {
		if ((rc = sig_store_bundle(sp->sig, &b[k], 1)) || !b[k].has_prekey)
			break;
		sp_frame_init(&recs[k], SP_T_PREKEY, 0, false);
		sp_frame_set_u64(&recs[k], SP_F_OPK_ID, b[k].prekey_id);
		sp_frame_set_bin(&recs[k], SP_F_OPK, b[k].prekey, SIG_PUB_LEN);
	}
	sp_frame q, r;
	sp_frame_init(&q, SP_T_KEYS_UPLOAD, 0, false);
	sp_frame_set_recs(&q, SP_F_PREKEYS, recs, k);
	rc = cl_call_want(sp, &q, SP_T_KEYS_UPLOADED, &r);
	free(recs);
	free(b);
	if (rc) {
		cl_sig_reload(sp); /* the prekeys are handed out again next time */
		return rc;
	}
	sp->refill = sp_frame_u64(&r, SP_F_REFILL) != 0;
	sp_frame_fini(&r);
	if ((rc = cl_begin(sp)) || (rc = cl_sig_save(sp)) || (rc = cl_meta_set_u64(sp, "prekeys_ok", 1)) ||
	    (rc = cl_commit(sp))) {
		cl_rollback(sp);
		return rc;
	}
	return SP_OK;
}

int
cl_keys_refill(sealpost *sp)
{
	if (!sp->refill || !sp->logged_in)
		return SP_OK;
	sp->refill = false;
	return cl_keys_upload(sp, CL_PREKEYS_BATCH);
}

int
cl_online(sealpost *sp, int attempts)
{
	int rc = cl_connect(sp, attempts);
	if (rc || !sp->logged_in)
		return rc;
	if (!cl_meta_u64(sp, "prekeys_ok") && (rc = cl_keys_upload(sp, CL_PREKEYS_BATCH)))
		return rc;
	if (!sp->status_checked) {
		/* Others take our one-time prekeys while we are away: ask once per connection
		 * whether we are under the low-water mark (the reply's refill flag). */
		sp_frame q, r;
		sp_frame_init(&q, SP_T_KEYS_STATUS, 0, false);
		if ((rc = cl_call_want(sp, &q, SP_T_KEYS_UPLOADED, &r)))
			return rc;
		sp_frame_fini(&r);
		sp->status_checked = true;
	}
	return cl_keys_refill(sp);
}

int
cl_attempts(const sealpost *sp)
{
	return sp->cfg.connect_attempts ? sp->cfg.connect_attempts : 3;
}

int
sealpost_register(sealpost *sp, const char *phone, uint64_t *ttl_s)
{
	int rc = cl_connect(sp, cl_attempts(sp));
	if (rc)
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_REGISTER, 0, false);
	sp_frame_set_str(&q, SP_F_PHONE, phone);
	if ((rc = cl_call_want(sp, &q, SP_T_REGISTERED, &r)))
		return rc;
	if (ttl_s)
		*ttl_s = sp_frame_u64(&r, SP_F_TTL);
	sp_frame_fini(&r);
	return SP_OK;
}

/* Stores a new account (after VERIFIED) and uploads its prekeys. s is taken. */
static int
save_account(sealpost *sp, sig_store *s, uint64_t user, uint64_t device, const char *phone)
{
	int rc;
	sig_store_free(sp->sig);
	sp->sig = s;
	sp->user = user;
	sp->device = device;
	sp->last_seq = 0;
	snprintf(sp->phone, sizeof(sp->phone), "%s", phone);
	if ((rc = cl_begin(sp)) || (rc = cl_meta_set_u64(sp, "user", user)) ||
	    (rc = cl_meta_set_u64(sp, "device", device)) ||
	    (rc = cl_meta_set_blob(sp, "phone", sp->phone, strlen(sp->phone))) ||
	    (rc = cl_meta_set_blob(sp, "auth_sk", sp->auth_sk, sizeof(sp->auth_sk))) ||
	    (rc = cl_meta_set_u64(sp, "prekeys_ok", 0)) || (rc = cl_sig_save(sp)) || (rc = cl_commit(sp))) {
		cl_rollback(sp);
		sig_store_free(sp->sig);
		sp->sig = NULL;
		sp->user = 0;
		return rc;
	}
	/* Log in as the new device and upload its one-time prekeys. */
	cl_disconnect(sp);
	return cl_online(sp, cl_attempts(sp));
}

static int
fresh_home(sealpost *sp)
{
	if (cl_registered(sp))
		return cl_fail(sp, SP_EEXIST, SEALPOST_ERR_USAGE,
			       "this home already holds an account (user %" PRIu64 "); use another --home", sp->user);
	return SP_OK;
}

/* First steps of VERIFY and LINK_REQUEST on a fresh home: connected, a new identity (*s
 * the caller's on success) and its bundle without a one-time prekey. */
static int
new_device(sealpost *sp, sig_store **s, sig_bundle *b)
{
	int rc;
	*s = NULL;
	if ((rc = fresh_home(sp)) || (rc = cl_connect(sp, cl_attempts(sp))) || (rc = cl_keys_new_identity(sp, s)))
		return rc;
	if ((rc = sig_store_bundle(*s, b, 0))) {
		sig_store_free(*s);
		*s = NULL;
		return cl_fail(sp, rc, SEALPOST_ERR_CRYPTO, "bundle: %s", sp_strerror(rc));
	}
	return SP_OK;
}

/* The signed prekey part of our bundle, for VERIFY and LINK_REQUEST. */
static void
set_keys(sp_frame *q, const sealpost *sp, const sig_bundle *b, uint32_t reg_id)
{
	sp_frame_set_bin(q, SP_F_IDENTITY_KEY, b->identity_key, SIG_PUB_LEN);
	sp_frame_set_bin(q, SP_F_AUTH_KEY, sp->auth_pk, sizeof(sp->auth_pk));
	sp_frame_set_u64(q, SP_F_REG_ID, reg_id);
	sp_frame_set_u64(q, SP_F_SPK_ID, b->signed_prekey_id);
	sp_frame_set_bin(q, SP_F_SPK, b->signed_prekey, SIG_PUB_LEN);
	sp_frame_set_bin(q, SP_F_SPK_SIG, b->signed_prekey_sig, SIG_SIG_LEN);
}

int
sealpost_verify(sealpost *sp, const char *phone, const char *code)
{
	return sealpost_verify_pin(sp, phone, code, NULL);
}

int
sealpost_verify_pin(sealpost *sp, const char *phone, const char *code, const char *pin)
{
	sig_store *s;
	sig_bundle b;
	int rc;
	if ((rc = new_device(sp, &s, &b)))
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_VERIFY, 0, false);
	sp_frame_set_str(&q, SP_F_PHONE, phone);
	sp_frame_set_str(&q, SP_F_OTP, code);
	if (pin)
		sp_frame_set_str(&q, SP_F_PIN, pin);
	set_keys(&q, sp, &b, sig_store_registration_id(s));
	if ((rc = cl_call_want(sp, &q, SP_T_VERIFIED, &r))) {
		sig_store_free(s);
		return rc;
	}
	uint64_t user = sp_frame_u64(&r, SP_F_USER), device = sp_frame_u64(&r, SP_F_DEVICE);
	sp_frame_fini(&r);
	return save_account(sp, s, user, device, phone);
}

int
sealpost_set_pin(sealpost *sp, const char *pin)
{
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_online(sp, cl_attempts(sp))))
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_SET_PIN, 0, false);
	if (pin)
		sp_frame_set_str(&q, SP_F_PIN, pin);
	if ((rc = cl_call_want(sp, &q, SP_T_PIN_SET, &r)))
		return rc;
	sp_frame_fini(&r);
	return SP_OK;
}

int
sealpost_link(sealpost *sp, int wait_s, sealpost_code_cb code_cb, void *arg)
{
	sig_store *s;
	sig_bundle b;
	int rc;
	if ((rc = new_device(sp, &s, &b)))
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_LINK_REQUEST, 0, false);
	set_keys(&q, sp, &b, sig_store_registration_id(s));
	if ((rc = cl_call_want(sp, &q, SP_T_LINK_PENDING, &r))) {
		sig_store_free(s);
		return rc;
	}
	char code[16] = "";
	sp_frame_str(&r, SP_F_LINK_CODE, code, sizeof(code));
	uint64_t ttl = sp_frame_u64(&r, SP_F_TTL);
	sp_frame_fini(&r);
	if (code_cb)
		code_cb(code, ttl, arg);
	uint8_t msg[sizeof(LINK_STATUS_TAG) - 1 + 8], sig[crypto_sign_BYTES];
	memcpy(msg, LINK_STATUS_TAG, sizeof(LINK_STATUS_TAG) - 1);
	memcpy(msg + sizeof(LINK_STATUS_TAG) - 1, code, 8);
	crypto_sign_detached(sig, NULL, msg, sizeof(msg), sp->auth_sk);
	uint64_t deadline = sp_time_ms() + (uint64_t)(wait_s > 0 ? wait_s : 120) * 1000;
	for (;;) {
		if ((rc = cl_connect(sp, cl_attempts(sp))))
			break;
		sp_frame_init(&q, SP_T_LINK_STATUS, 0, false);
		sp_frame_set_str(&q, SP_F_LINK_CODE, code);
		sp_frame_set_bin(&q, SP_F_SIG, sig, sizeof(sig));
		if ((rc = cl_call(sp, &q, &r)))
			break;
		if (r.type == SP_T_VERIFIED) {
			char phone[33] = "";
			sp_frame_str(&r, SP_F_PHONE, phone, sizeof(phone));
			uint64_t user = sp_frame_u64(&r, SP_F_USER), device = sp_frame_u64(&r, SP_F_DEVICE);
			sp_frame_fini(&r);
			return save_account(sp, s, user, device, phone);
		}
		sp_frame_fini(&r);
		if (sp_time_ms() >= deadline) {
			rc = cl_fail(sp, SP_EEXPIRED, SEALPOST_ERR_SERVER, "link code %s was not confirmed in time",
				     code);
			break;
		}
		cl_sleep_ms(500);
	}
	sig_store_free(s);
	return rc;
}

int
sealpost_link_confirm(sealpost *sp, const char *code, uint64_t *device)
{
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_online(sp, cl_attempts(sp))))
		return rc;
	if (strlen(code) != 8)
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "a link code has 8 characters");
	char up[9];
	for (int i = 0; i < 8; i++)
		up[i] = (char)(code[i] >= 'a' && code[i] <= 'z' ? code[i] - 32 : code[i]);
	up[8] = '\0';
	sp_frame q, r;
	sp_frame_init(&q, SP_T_LINK_LOOKUP, 0, false);
	sp_frame_set_str(&q, SP_F_LINK_CODE, up);
	if ((rc = cl_call_want(sp, &q, SP_T_LINK_INFO, &r)))
		return rc;
	uint8_t msg[sizeof(LINK_SIG_TAG) - 1 + SIG_PUB_LEN + crypto_sign_PUBLICKEYBYTES], sig[crypto_sign_BYTES];
	size_t k = sizeof(LINK_SIG_TAG) - 1;
	memcpy(msg, LINK_SIG_TAG, k);
	memcpy(msg + k, sp_frame_bin(&r, SP_F_IDENTITY_KEY).p, SIG_PUB_LEN);
	memcpy(msg + k + SIG_PUB_LEN, sp_frame_bin(&r, SP_F_AUTH_KEY).p, crypto_sign_PUBLICKEYBYTES);
	sp_frame_fini(&r);
	crypto_sign_detached(sig, NULL, msg, sizeof(msg), sp->auth_sk);
	sp_frame_init(&q, SP_T_LINK_CONFIRM, 0, false);
	sp_frame_set_str(&q, SP_F_LINK_CODE, up);
	sp_frame_set_bin(&q, SP_F_PRIMARY_SIG, sig, sizeof(sig));
	if ((rc = cl_call_want(sp, &q, SP_T_VERIFIED, &r)))
		return rc;
	if (device)
		*device = sp_frame_u64(&r, SP_F_DEVICE);
	sp_frame_fini(&r);
	/* Our device list changed: the next send re-reads it. */
	return cl_devices_refresh(sp, sp->user);
}

int
sealpost_devices(sealpost *sp, sealpost_device_cb cb, void *arg)
{
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_online(sp, cl_attempts(sp))))
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_DEVICES_GET, 0, false);
	sp_frame_set_u64(&q, SP_F_USER, sp->user);
	if ((rc = cl_call_want(sp, &q, SP_T_DEVICES_R, &r)))
		return rc;
	const sp_val *v = sp_frame_get(&r, SP_F_DEVICE_LIST);
	for (uint32_t i = 0; v && i < v->rs.n; i++) {
		sealpost_device d = {sp_frame_u64(&v->rs.v[i], SP_F_DEVICE),
				     sp_frame_u64(&v->rs.v[i], SP_F_PRIMARY) != 0, 0};
		d.self = d.device == sp->device;
		if (cb)
			cb(&d, arg);
	}
	sp_frame_fini(&r);
	return cl_keys_refill(sp);
}

int
sealpost_device_remove(sealpost *sp, uint64_t device)
{
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_online(sp, cl_attempts(sp))))
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_REMOVE_DEVICE, 0, false);
	sp_frame_set_u64(&q, SP_F_DEVICE, device);
	if ((rc = cl_call_want(sp, &q, SP_T_DEVICE_REMOVED, &r)))
		return rc;
	sp_frame_fini(&r);
	if (device == sp->device) {
		cl_disconnect(sp);
		return SP_OK;
	}
	return cl_devices_refresh(sp, sp->user);
}
