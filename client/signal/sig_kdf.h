/* Symmetric primitives of the Signal core: HMAC-SHA256, HKDF-SHA256 (RFC 5869) and
 * AES-256-CBC with PKCS#7 padding (OpenSSL EVP). */
#ifndef SIG_KDF_H
#define SIG_KDF_H

#include <stddef.h>
#include <stdint.h>

/* HMAC-SHA256(key, part[0] || part[1] || ... ) into out; n parts. */
int sig_hmac_sha256(uint8_t out[32], const uint8_t *key, size_t klen, size_t n,
    const uint8_t *const *parts, const size_t *lens);

/* HKDF-SHA256: out (outlen <= 255*32) from ikm, salt (NULL means 32 zero bytes) and
 * the info string. */
int sig_hkdf(uint8_t *out, size_t outlen, const uint8_t *ikm, size_t ikmlen,
    const uint8_t *salt, size_t saltlen, const char *info);

/* Message-key seed and next chain key from a chain key (WIRE.md §4). */
void sig_chain_step(const uint8_t ck[32], uint8_t seed[32], uint8_t next_ck[32]);

/* AES-256-CBC + PKCS#7. On success *out (caller frees; it holds plaintext on decrypt,
 * so wipe before free) receives *outlen bytes. Decrypt fails with SP_ECRYPTO on bad
 * length or padding. */
int sig_aes_cbc_encrypt(const uint8_t key[32], const uint8_t iv[16], const uint8_t *in,
    size_t len, uint8_t **out, size_t *outlen);
int sig_aes_cbc_decrypt(const uint8_t key[32], const uint8_t iv[16], const uint8_t *in,
    size_t len, uint8_t **out, size_t *outlen);

#endif
