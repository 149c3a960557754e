#include "client/signal/sig_curve.h"

#include <sodium.h>
#include <string.h>

#include "sp_error.h"
#include "sp_xeddsa.h"

int
sig_crypto_init(void)
{
	return sodium_init() < 0 ? SP_ECRYPTO : SP_OK;
}

int
sig_keypair_from_private(sig_keypair *kp, const uint8_t priv[SIG_PRIV_LEN])
{
	if (sig_crypto_init() != SP_OK)
		return SP_ECRYPTO;
	memmove(kp->priv, priv, SIG_PRIV_LEN);
	kp->pub[0] = SIG_KEY_TYPE;
	if (crypto_scalarmult_base(kp->pub + 1, kp->priv) != 0) {
		sig_keypair_wipe(kp);
		return SP_ECRYPTO;
	}
	return SP_OK;
}

int
sig_keypair_generate(sig_keypair *kp)
{
	uint8_t priv[SIG_PRIV_LEN];
	int rc;

	if (sig_crypto_init() != SP_OK)
		return SP_ECRYPTO;
	randombytes_buf(priv, sizeof(priv));
	rc = sig_keypair_from_private(kp, priv);
	sodium_memzero(priv, sizeof(priv));
	return rc;
}

void
sig_keypair_wipe(sig_keypair *kp)
{
	sodium_memzero(kp, sizeof(*kp));
}

int
sig_pubkey_valid(const uint8_t *pub, size_t len)
{
	return sp_xeddsa_pubkey_valid(pub, len);
}

int
sig_curve_dh(uint8_t out[32], const uint8_t priv[SIG_PRIV_LEN], const uint8_t pub[SIG_PUB_LEN])
{
	if (!sig_pubkey_valid(pub, SIG_PUB_LEN))
		return SP_EINVAL;
	if (sig_crypto_init() != SP_OK)
		return SP_ECRYPTO;
	if (crypto_scalarmult(out, priv, pub + 1) != 0) {
		sodium_memzero(out, 32);
		return SP_ECRYPTO;
	}
	return SP_OK;
}

/* Ed25519 signing with the clamped X25519 scalar a; nonce from prefix||a||M||suffix. */
static int
curve_sign(uint8_t sig[64], const uint8_t priv[32], const uint8_t *msg, size_t len,
    const uint8_t *prefix, size_t plen, const uint8_t *suffix, size_t slen)
{
	uint8_t a[32], a64[64], A[32], r64[64], r[32], h64[64], h[32], ha[32];
	crypto_hash_sha512_state st;
	int rc = SP_ECRYPTO;

	if (sig_crypto_init() != SP_OK)
		return SP_ECRYPTO;
	memcpy(a, priv, 32);
	a[0] &= 248;
	a[31] &= 127;
	a[31] |= 64;
	if (crypto_scalarmult_ed25519_base_noclamp(A, a) != 0)
		goto out;

	crypto_hash_sha512_init(&st);
	if (plen)
		crypto_hash_sha512_update(&st, prefix, plen);
	crypto_hash_sha512_update(&st, a, 32);
	if (len)
		crypto_hash_sha512_update(&st, msg, len);
	if (slen)
		crypto_hash_sha512_update(&st, suffix, slen);
	crypto_hash_sha512_final(&st, r64);
	crypto_core_ed25519_scalar_reduce(r, r64);
	if (crypto_scalarmult_ed25519_base_noclamp(sig, r) != 0)
		goto out;

	crypto_hash_sha512_init(&st);
	crypto_hash_sha512_update(&st, sig, 32);
	crypto_hash_sha512_update(&st, A, 32);
	if (len)
		crypto_hash_sha512_update(&st, msg, len);
	crypto_hash_sha512_final(&st, h64);
	crypto_core_ed25519_scalar_reduce(h, h64);

	memset(a64, 0, sizeof(a64));
	memcpy(a64, a, 32);
	crypto_core_ed25519_scalar_reduce(a, a64);
	crypto_core_ed25519_scalar_mul(ha, h, a);
	crypto_core_ed25519_scalar_add(sig + 32, r, ha);
	sig[63] |= A[31] & 0x80;
	rc = SP_OK;
out:
	sodium_memzero(a, sizeof(a));
	sodium_memzero(a64, sizeof(a64));
	sodium_memzero(r64, sizeof(r64));
	sodium_memzero(r, sizeof(r));
	sodium_memzero(ha, sizeof(ha));
	sodium_memzero(&st, sizeof(st));
	if (rc != SP_OK)
		sodium_memzero(sig, 64);
	return rc;
}

int
sig_curve_sign(uint8_t sig[SIG_SIG_LEN], const uint8_t priv[SIG_PRIV_LEN], const uint8_t *msg,
    size_t len)
{
	uint8_t prefix[32], z[64];
	int rc;

	if (sig_crypto_init() != SP_OK)
		return SP_ECRYPTO;
	prefix[0] = 0xfe;
	memset(prefix + 1, 0xff, 31);
	randombytes_buf(z, sizeof(z));
	rc = curve_sign(sig, priv, msg, len, prefix, sizeof(prefix), z, sizeof(z));
	sodium_memzero(z, sizeof(z));
	return rc;
}

int
sig_curve_sign_deterministic(uint8_t sig[SIG_SIG_LEN], const uint8_t priv[SIG_PRIV_LEN],
    const uint8_t *msg, size_t len)
{
	return curve_sign(sig, priv, msg, len, NULL, 0, NULL, 0);
}

int
sig_curve_verify(const uint8_t pub[SIG_PUB_LEN], const uint8_t *msg, size_t len,
    const uint8_t sig[SIG_SIG_LEN])
{
	return sp_xeddsa_verify(pub, msg, len, sig);
}
