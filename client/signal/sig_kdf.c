#include "client/signal/sig_kdf.h"

#include <limits.h>
#include <openssl/evp.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/sig_curve.h"
#include "sp_error.h"

int
sig_hmac_sha256(uint8_t out[32], const uint8_t *key, size_t klen, size_t n,
    const uint8_t *const *parts, const size_t *lens)
{
	crypto_auth_hmacsha256_state st;

	if (sig_crypto_init() != SP_OK)
		return SP_ECRYPTO;
	crypto_auth_hmacsha256_init(&st, key, klen);
	for (size_t i = 0; i < n; i++)
		if (lens[i])
			crypto_auth_hmacsha256_update(&st, parts[i], lens[i]);
	crypto_auth_hmacsha256_final(&st, out);
	sodium_memzero(&st, sizeof(st));
	return SP_OK;
}

int
sig_hkdf(uint8_t *out, size_t outlen, const uint8_t *ikm, size_t ikmlen,
    const uint8_t *salt, size_t saltlen, const char *info)
{
	static const uint8_t zero[32];
	uint8_t prk[32], t[32];
	size_t tlen = 0, done = 0, ilen = strlen(info);
	uint8_t ctr = 1;

	if (outlen > 255 * 32)
		return SP_EINVAL;
	if (salt == NULL) {
		salt = zero;
		saltlen = sizeof(zero);
	}
	{
		const uint8_t *p[1] = { ikm };
		size_t l[1] = { ikmlen };
		if (sig_hmac_sha256(prk, salt, saltlen, 1, p, l) != SP_OK)
			return SP_ECRYPTO;
	}
	while (done < outlen) {
		const uint8_t *p[3] = { t, (const uint8_t *)info, &ctr };
		size_t l[3] = { tlen, ilen, 1 };
		size_t take;

		sig_hmac_sha256(t, prk, sizeof(prk), 3, p, l);
		tlen = 32;
		take = outlen - done < 32 ? outlen - done : 32;
		memcpy(out + done, t, take);
		done += take;
		ctr++;
	}
	sodium_memzero(prk, sizeof(prk));
	sodium_memzero(t, sizeof(t));
	return SP_OK;
}

void
sig_chain_step(const uint8_t ck[32], uint8_t seed[32], uint8_t next_ck[32])
{
	static const uint8_t one = 1, two = 2;
	const uint8_t *p1[1] = { &one }, *p2[1] = { &two };
	size_t l[1] = { 1 };
	uint8_t tmp[32];

	sig_hmac_sha256(seed, ck, 32, 1, p1, l);
	sig_hmac_sha256(tmp, ck, 32, 1, p2, l);
	memcpy(next_ck, tmp, 32);
	sodium_memzero(tmp, sizeof(tmp));
}

static int
aes_cbc(int enc, const uint8_t key[32], const uint8_t iv[16], const uint8_t *in, size_t len,
    uint8_t **out, size_t *outlen)
{
	EVP_CIPHER_CTX *ctx;
	uint8_t *buf;
	size_t cap;
	int l1 = 0, l2 = 0, rc = SP_ECRYPTO;

	*out = NULL;
	*outlen = 0;
	if (len > (size_t)INT_MAX - 32)
		return SP_ETOOBIG;
	if (!enc && (len == 0 || len % 16 != 0))
		return SP_ECRYPTO;
	cap = len + 16;
	if ((buf = malloc(cap)) == NULL)
		return SP_ENOMEM;
	if ((ctx = EVP_CIPHER_CTX_new()) == NULL) {
		free(buf);
		return SP_ENOMEM;
	}
	if (EVP_CipherInit_ex(ctx, EVP_aes_256_cbc(), NULL, key, iv, enc) != 1)
		goto out;
	if (len && EVP_CipherUpdate(ctx, buf, &l1, in, (int)len) != 1)
		goto out;
	if (EVP_CipherFinal_ex(ctx, buf + l1, &l2) != 1)
		goto out;
	rc = SP_OK;
out:
	EVP_CIPHER_CTX_free(ctx);
	if (rc != SP_OK) {
		sodium_memzero(buf, cap);
		free(buf);
		return rc;
	}
	*out = buf;
	*outlen = (size_t)l1 + (size_t)l2;
	return SP_OK;
}

int
sig_aes_cbc_encrypt(const uint8_t key[32], const uint8_t iv[16], const uint8_t *in,
    size_t len, uint8_t **out, size_t *outlen)
{
	return aes_cbc(1, key, iv, in, len, out, outlen);
}

int
sig_aes_cbc_decrypt(const uint8_t key[32], const uint8_t iv[16], const uint8_t *in,
    size_t len, uint8_t **out, size_t *outlen)
{
	return aes_cbc(0, key, iv, in, len, out, outlen);
}
