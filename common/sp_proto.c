#include <string.h>

#include <sodium.h>

#include "sp_bytes.h"
#include "sp_error.h"
#include "sp_proto.h"

_Static_assert(SP_LOGIN_SIG_LEN == crypto_sign_BYTES, "login signatures are Ed25519");

void
sp_login_message(uint8_t msg[SP_LOGIN_MSG_LEN], const uint8_t nonce[SP_LOGIN_NONCE_LEN],
		 uint64_t user, uint64_t device)
{
	size_t k = sizeof(SP_LOGIN_CONTEXT) - 1;
	memcpy(msg, SP_LOGIN_CONTEXT, k);
	memcpy(msg + k, nonce, SP_LOGIN_NONCE_LEN);
	k += SP_LOGIN_NONCE_LEN;
	sp_be64_put(msg + k, user);
	sp_be64_put(msg + k + 8, device);
}

void
sp_login_sign(uint8_t sig[SP_LOGIN_SIG_LEN], const uint8_t nonce[SP_LOGIN_NONCE_LEN],
	      uint64_t user, uint64_t device, const uint8_t *auth_sk)
{
	uint8_t msg[SP_LOGIN_MSG_LEN];
	sp_login_message(msg, nonce, user, device);
	crypto_sign_detached(sig, NULL, msg, sizeof(msg), auth_sk);
}

int
sp_login_verify(const uint8_t *sig, size_t sig_len, const uint8_t nonce[SP_LOGIN_NONCE_LEN],
		uint64_t user, uint64_t device, const uint8_t *auth_pk, size_t pk_len)
{
	uint8_t msg[SP_LOGIN_MSG_LEN];
	if (sig_len != SP_LOGIN_SIG_LEN || pk_len != crypto_sign_PUBLICKEYBYTES)
		return SP_EAUTH;
	sp_login_message(msg, nonce, user, device);
	return crypto_sign_verify_detached(sig, msg, sizeof(msg), auth_pk) == 0 ? SP_OK : SP_EAUTH;
}
