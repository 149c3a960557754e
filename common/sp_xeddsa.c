#include "sp_xeddsa.h"

#include <openssl/bn.h>
#include <sodium.h>
#include <string.h>

#include "sp_error.h"

/* Edwards y = (u - 1) / (u + 1) mod p, compressed with the given sign bit. */
static int
mont_to_edwards(uint8_t ed[32], const uint8_t u_in[32], int sign)
{
	uint8_t u[32];
	BN_CTX *ctx = BN_CTX_new();
	BIGNUM *p, *u_bn, *num, *den, *one, *y;
	int rc = SP_ECRYPTO;

	if (ctx == NULL)
		return SP_ENOMEM;
	BN_CTX_start(ctx);
	p = BN_CTX_get(ctx);
	u_bn = BN_CTX_get(ctx);
	num = BN_CTX_get(ctx);
	den = BN_CTX_get(ctx);
	one = BN_CTX_get(ctx);
	y = BN_CTX_get(ctx);
	if (y == NULL) {
		rc = SP_ENOMEM;
		goto out;
	}
	memcpy(u, u_in, 32);
	u[31] &= 0x7f;
	if (!BN_set_bit(p, 255) || !BN_sub_word(p, 19) || !BN_one(one) ||
	    BN_lebin2bn(u, 32, u_bn) == NULL || !BN_nnmod(u_bn, u_bn, p, ctx) ||
	    !BN_mod_sub(num, u_bn, one, p, ctx) || !BN_mod_add(den, u_bn, one, p, ctx))
		goto out;
	if (BN_is_zero(den))
		goto out;
	if (BN_mod_inverse(den, den, p, ctx) == NULL || !BN_mod_mul(y, num, den, p, ctx))
		goto out;
	if (BN_bn2lebinpad(y, ed, 32) != 32)
		goto out;
	ed[31] |= (uint8_t)(sign << 7);
	rc = SP_OK;
out:
	BN_CTX_end(ctx);
	BN_CTX_free(ctx);
	return rc;
}

int
sp_xeddsa_pubkey_valid(const uint8_t *pub, size_t len)
{
	return pub != NULL && len == SP_XEDDSA_PUB_LEN && pub[0] == SP_XEDDSA_KEY_TYPE;
}

int
sp_xeddsa_verify(const uint8_t pub[SP_XEDDSA_PUB_LEN], const uint8_t *msg, size_t len,
    const uint8_t sig[SP_XEDDSA_SIG_LEN])
{
	uint8_t ed[32], s[64];
	int rc;

	if (!sp_xeddsa_pubkey_valid(pub, SP_XEDDSA_PUB_LEN))
		return SP_EINVAL;
	if (sodium_init() < 0)
		return SP_ECRYPTO;
	/* the signer's Edwards sign bit travels in the top bit of s */
	memcpy(s, sig, 64);
	s[63] &= 0x7f;
	if ((rc = mont_to_edwards(ed, pub + 1, sig[63] >> 7)) != SP_OK)
		return rc == SP_ENOMEM ? rc : SP_EBADSIG;
	if (crypto_sign_ed25519_verify_detached(s, msg, len, ed) != 0)
		return SP_EBADSIG;
	return SP_OK;
}
