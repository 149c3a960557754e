/*
 * This home's account as the store holds it: user and device ids, phone, the device's
 * auth key and the Signal state (saved inside the caller's transaction, reloaded after
 * a failure).
 */
#include <stdio.h>
#include <stdlib.h>

#include "client/cl_internal.h"
#include "sp_error.h"

int
cl_sig_save(sealpost *sp)
{
	uint8_t *blob;
	size_t len;
	int rc = sig_store_serialize(sp->sig, &blob, &len);
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_OTHER, "serializing the Signal state: %s", sp_strerror(rc));
	sqlite3_stmt *st;
	if ((rc = cl_prep(sp, &st, "INSERT OR REPLACE INTO signal_state(id, blob) VALUES(1, ?)")) == SP_OK) {
		sqlite3_bind_blob(st, 1, blob, (int)len, SQLITE_STATIC);
		rc = cl_step_done(sp, st);
	}
	sodium_memzero(blob, len);
	free(blob);
	return rc;
}

int
cl_sig_reload(sealpost *sp)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "SELECT blob FROM signal_state WHERE id = 1");
	if (rc)
		return rc;
	sig_store *s = NULL;
	rc = SP_ENOTFOUND;
	if (sqlite3_step(st) == SQLITE_ROW)
		rc = sig_store_deserialize(&s, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0));
	sqlite3_finalize(st);
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_CRYPTO, "the Signal state in the store is unreadable: %s",
			       sp_strerror(rc));
	sig_store_free(sp->sig);
	sp->sig = s;
	return SP_OK;
}

int
cl_account_load(sealpost *sp)
{
	sp->user = cl_meta_u64(sp, "user");
	sp->device = cl_meta_u64(sp, "device");
	sp->last_seq = cl_meta_u64(sp, "last_seq");
	int n = cl_meta_blob(sp, "phone", sp->phone, sizeof(sp->phone) - 1);
	sp->phone[n > 0 ? n : 0] = '\0';
	if (!sp->user)
		return SP_OK;
	if (cl_meta_blob(sp, "auth_sk", sp->auth_sk, sizeof(sp->auth_sk)) != (int)sizeof(sp->auth_sk))
		return cl_fail(sp, SP_EMALFORMED, SEALPOST_ERR_CRYPTO, "the store has no device key");
	crypto_sign_ed25519_sk_to_pk(sp->auth_pk, sp->auth_sk);
	return cl_sig_reload(sp);
}

bool
cl_registered(const sealpost *sp)
{
	return sp->user != 0 && sp->sig != NULL;
}

int
cl_need_account(sealpost *sp)
{
	if (cl_registered(sp))
		return SP_OK;
	return cl_fail(sp, SP_ESTATE, SEALPOST_ERR_USAGE,
		       "this home has no account: run `sealpost register` and `verify`, or `link`");
}

int
sealpost_whoami(sealpost *sp, uint64_t *user, uint64_t *device, char *phone, size_t cap)
{
	int rc = cl_need_account(sp);
	if (rc)
		return rc;
	*user = sp->user;
	*device = sp->device;
	snprintf(phone, cap, "%s", sp->phone);
	return SP_OK;
}
