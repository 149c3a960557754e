#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "keysrv/devices.h"
#include "keysrv/links.h"
#include "sp_error.h"
#include "sp_log.h"

/* 32 symbols: digits and upper-case letters without 0, O, 1 and I. */
static const char alphabet[] = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ";

/* Reads LINK_CODE upper-cased into code[9]; SP_EINVAL if a character is not in the
 * alphabet. */
static int
read_code(keys_req *r, char code[KEYS_LINK_CODE_LEN + 1])
{
	if (sp_frame_str(r->in, SP_F_LINK_CODE, code, KEYS_LINK_CODE_LEN + 1) != SP_OK ||
	    strlen(code) != KEYS_LINK_CODE_LEN)
		return keys_fail(r, SP_EINVAL, "link code must be 8 characters");
	for (int i = 0; i < KEYS_LINK_CODE_LEN; i++) {
		if (code[i] >= 'a' && code[i] <= 'z')
			code[i] = (char)(code[i] - 'a' + 'A');
		if (!strchr(alphabet, code[i]) || code[i] == '\0')
			return keys_fail(r, SP_EINVAL, "link code has a character outside the alphabet");
	}
	return SP_OK;
}

static void
code_key(keys_req *r, const char *code, uint8_t key[KEYS_HASH_LEN])
{
	keys_hash(r->ctx, "link", code, KEYS_LINK_CODE_LEN, NULL, 0, key);
}

/* Loads an unexpired link by code. */
static int
load_link(keys_req *r, MDB_txn *txn, const char *code, keys_link *l)
{
	uint8_t key[KEYS_HASH_LEN];
	code_key(r, code, key);
	int rc = keys_link_get(r->ctx->store, txn, key, l);
	if (rc == SP_ENOTFOUND)
		return keys_fail(r, rc, "no such link code");
	if (rc)
		return rc;
	if (l->expires_ms <= r->ctx->now_ms())
		return keys_fail(r, SP_EEXPIRED, "link code expired");
	return SP_OK;
}

static uint64_t
ttl_s(keys_req *r, const keys_link *l)
{
	uint64_t now = r->ctx->now_ms();
	return l->expires_ms > now ? (l->expires_ms - now + 999) / 1000 : 0;
}

static char *
arena_code(keys_req *r, const char *code)
{
	char *c = keys_arena_alloc(&r->arena, KEYS_LINK_CODE_LEN + 1);
	if (c)
		memcpy(c, code, KEYS_LINK_CODE_LEN + 1);
	return c;
}

int
keys_links_request(keys_req *r)
{
	keys_store *s = r->ctx->store;
	uint8_t key[KEYS_HASH_LEN];
	char code[KEYS_LINK_CODE_LEN + 1];
	keys_newdev nd;
	keys_link l;
	MDB_txn *txn;
	int rc;

	if ((rc = keys_rate_take(r, r->ctx->rl_source, r->source, "source")))
		return rc;
	if ((rc = keys_devices_parse_new(r, &nd)))
		return rc;
	memset(&l, 0, sizeof(l));
	l.state = KEYS_LINK_PENDING;
	l.expires_ms = r->ctx->now_ms() + r->ctx->cfg.link_ttl_ms;
	memcpy(l.ik, nd.ik, KEYS_PUB_LEN);
	memcpy(l.auth_key, nd.auth_key, KEYS_AUTH_LEN);
	l.reg_id = nd.reg_id;
	l.has_spk = nd.has_spk;
	if (nd.has_spk) {
		l.spk_id = nd.spk_id;
		memcpy(l.spk, nd.spk, KEYS_PUB_LEN);
		memcpy(l.spk_sig, nd.spk_sig, KEYS_SIG_LEN);
	}
	l.push_len = nd.push_len;
	if (nd.push_len)
		memcpy(l.push, nd.push, nd.push_len);

	if ((rc = keys_store_begin(s, true, &txn)))
		return rc;
	for (int tries = 0;; tries++) {
		uint8_t rnd[KEYS_LINK_CODE_LEN];
		randombytes_buf(rnd, sizeof(rnd));
		for (int i = 0; i < KEYS_LINK_CODE_LEN; i++)
			code[i] = alphabet[rnd[i] & 31];
		code[KEYS_LINK_CODE_LEN] = '\0';
		code_key(r, code, key);
		keys_link old;
		rc = keys_link_get(s, txn, key, &old);
		/* A live code is never reused; an expired one may be overwritten. */
		if (rc == SP_ENOTFOUND || (rc == SP_OK && old.expires_ms <= r->ctx->now_ms()))
			break;
		if (rc != SP_OK || tries == 8) {
			keys_store_abort(txn);
			return rc ? rc : SP_ESTORE;
		}
	}
	if ((rc = keys_link_put(s, txn, key, &l))) {
		keys_store_abort(txn);
		return rc;
	}
	if ((rc = keys_store_commit(txn)))
		return rc;
	char *c = arena_code(r, code);
	if (!c)
		return SP_ENOMEM;
	keys_reply_init(r, SP_T_LINK_PENDING);
	sp_frame_set_str(&r->out, SP_F_LINK_CODE, c);
	sp_frame_set_u64(&r->out, SP_F_TTL, r->ctx->cfg.link_ttl_ms / 1000);
	return SP_OK;
}

/* LINK_LOOKUP and LINK_CONFIRM: the primary only, rate limited per user. */
static int
primary_gate(keys_req *r)
{
	char key[24];
	if (!r->caller_primary)
		return keys_fail(r, SP_EPERM, "only the primary device may link devices");
	snprintf(key, sizeof(key), "%llu", (unsigned long long)r->user);
	return keys_rate_take(r, r->ctx->rl_link, key, "link");
}

int
keys_links_lookup(keys_req *r)
{
	char code[KEYS_LINK_CODE_LEN + 1];
	keys_link *l = keys_arena_alloc(&r->arena, sizeof(*l));
	MDB_txn *txn;
	int rc;

	if (!l)
		return SP_ENOMEM;
	if ((rc = primary_gate(r)) || (rc = read_code(r, code)))
		return rc;
	if ((rc = keys_store_begin(r->ctx->store, false, &txn)))
		return rc;
	rc = load_link(r, txn, code, l);
	keys_store_abort(txn);
	if (rc)
		return rc;
	if (l->state != KEYS_LINK_PENDING && l->user != r->user)
		return keys_fail(r, SP_ESTATE, "link code already used");
	keys_reply_init(r, SP_T_LINK_INFO);
	sp_frame_set_bin(&r->out, SP_F_IDENTITY_KEY, l->ik, KEYS_PUB_LEN);
	sp_frame_set_bin(&r->out, SP_F_AUTH_KEY, l->auth_key, KEYS_AUTH_LEN);
	sp_frame_set_u64(&r->out, SP_F_REG_ID, l->reg_id);
	sp_frame_set_u64(&r->out, SP_F_TTL, ttl_s(r, l));
	return SP_OK;
}

int
keys_links_confirm(keys_req *r)
{
	keys_store *s = r->ctx->store;
	char code[KEYS_LINK_CODE_LEN + 1];
	uint8_t key[KEYS_HASH_LEN], msg[sizeof(KEYS_LINK_SIG_TAG) - 1 + KEYS_PUB_LEN + KEYS_AUTH_LEN];
	sp_bin sig = sp_frame_bin(r->in, SP_F_PRIMARY_SIG);
	keys_link l;
	keys_user u;
	MDB_txn *txn;
	int rc;

	if ((rc = primary_gate(r)) || (rc = read_code(r, code)))
		return rc;
	if ((rc = keys_store_begin(s, true, &txn)))
		return rc;
	if ((rc = load_link(r, txn, code, &l)))
		goto fail;
	if (l.state == KEYS_LINK_CONFIRMED) {
		/* A resent confirmation gets the first answer. */
		if (l.user != r->user) {
			rc = keys_fail(r, SP_ESTATE, "link code already used");
			goto fail;
		}
		keys_store_abort(txn);
		goto reply;
	}
	memcpy(msg, KEYS_LINK_SIG_TAG, sizeof(KEYS_LINK_SIG_TAG) - 1);
	memcpy(msg + sizeof(KEYS_LINK_SIG_TAG) - 1, l.ik, KEYS_PUB_LEN);
	memcpy(msg + sizeof(KEYS_LINK_SIG_TAG) - 1 + KEYS_PUB_LEN, l.auth_key, KEYS_AUTH_LEN);
	if (sig.len != KEYS_SIG_LEN ||
	    crypto_sign_verify_detached(sig.p, msg, sizeof(msg), r->caller_dev.auth_key) != 0) {
		rc = keys_fail(r, SP_EBADSIG, "primary signature over the new keys does not verify");
		goto fail;
	}
	if ((rc = keys_user_get(s, txn, r->user, &u)))
		goto fail;
	if (u.ndevices >= KEYS_MAX_DEVICES) {
		rc = keys_fail(r, SP_ELIMIT, "at most 4 linked devices");
		goto fail;
	}
	keys_newdev nd = {
		.ik = l.ik,
		.auth_key = l.auth_key,
		.reg_id = l.reg_id,
		.push = l.push,
		.push_len = l.push_len,
		.has_spk = l.has_spk,
		.spk_id = l.spk_id,
		.spk = l.spk,
		.spk_sig = l.spk_sig,
	};
	if ((rc = keys_devices_add(r, txn, &u, &nd, false, &l.device)) ||
	    (rc = keys_user_put(s, txn, &u)))
		goto fail;
	l.state = KEYS_LINK_CONFIRMED;
	l.user = r->user;
	code_key(r, code, key);
	if ((rc = keys_link_put(s, txn, key, &l)))
		goto fail;
	if ((rc = keys_store_commit(txn)))
		return rc;
	sp_info("linked device %016llx to user %016llx", (unsigned long long)l.device,
	    (unsigned long long)l.user);
reply:
	keys_reply_init(r, SP_T_VERIFIED);
	sp_frame_set_u64(&r->out, SP_F_USER, l.user);
	sp_frame_set_u64(&r->out, SP_F_DEVICE, l.device);
	return SP_OK;
fail:
	keys_store_abort(txn);
	return rc;
}

int
keys_links_status(keys_req *r)
{
	char code[KEYS_LINK_CODE_LEN + 1];
	uint8_t msg[sizeof(KEYS_LINK_STATUS_TAG) - 1 + KEYS_LINK_CODE_LEN];
	sp_bin sig = sp_frame_bin(r->in, SP_F_SIG);
	keys_link l;
	keys_user *u = keys_arena_alloc(&r->arena, sizeof(*u));
	MDB_txn *txn;
	int rc;

	if (!u)
		return SP_ENOMEM;
	if ((rc = read_code(r, code)))
		return rc;
	if ((rc = keys_store_begin(r->ctx->store, false, &txn)))
		return rc;
	if ((rc = load_link(r, txn, code, &l)))
		goto out;
	memcpy(msg, KEYS_LINK_STATUS_TAG, sizeof(KEYS_LINK_STATUS_TAG) - 1);
	memcpy(msg + sizeof(KEYS_LINK_STATUS_TAG) - 1, code, KEYS_LINK_CODE_LEN);
	if (sig.len != KEYS_SIG_LEN || crypto_sign_verify_detached(sig.p, msg, sizeof(msg), l.auth_key)) {
		rc = keys_fail(r, SP_EBADSIG, "status signature does not verify");
		goto out;
	}
	if (l.state == KEYS_LINK_PENDING) {
		char *c = arena_code(r, code);
		if (!c) {
			rc = SP_ENOMEM;
			goto out;
		}
		keys_reply_init(r, SP_T_LINK_PENDING);
		sp_frame_set_str(&r->out, SP_F_LINK_CODE, c);
		sp_frame_set_u64(&r->out, SP_F_TTL, ttl_s(r, &l));
		goto out;
	}
	if ((rc = keys_user_get(r->ctx->store, txn, l.user, u)))
		goto out;
	keys_reply_init(r, SP_T_VERIFIED);
	sp_frame_set_u64(&r->out, SP_F_USER, l.user);
	sp_frame_set_u64(&r->out, SP_F_DEVICE, l.device);
	sp_frame_set_str(&r->out, SP_F_PHONE, u->phone);
out:
	keys_store_abort(txn);
	return rc;
}
