/* Curve25519 keys for the Signal core (WIRE.md §1-2): 33-byte 0x05-prefixed public
 * keys, X25519 agreement, and Signal's curve25519 (XEdDSA-style) signatures (signing
 * here; verification in common/sp_xeddsa.c). */
#ifndef SIG_CURVE_H
#define SIG_CURVE_H

#include <stddef.h>
#include <stdint.h>

#include "sp_xeddsa.h"

#define SIG_KEY_TYPE SP_XEDDSA_KEY_TYPE
#define SIG_PUB_LEN SP_XEDDSA_PUB_LEN
#define SIG_PRIV_LEN 32
#define SIG_SIG_LEN SP_XEDDSA_SIG_LEN

/* A key pair held by value; wipe it with sig_keypair_wipe() when done. priv holds the
 * raw 32 bytes (not necessarily clamped: clamping happens at use). */
typedef struct {
	uint8_t priv[SIG_PRIV_LEN];
	uint8_t pub[SIG_PUB_LEN];
} sig_keypair;

/* Initialises libsodium once; every sig_* entry point that needs it calls this. */
int sig_crypto_init(void);

/* Fresh random key pair (libsodium randombytes). */
int sig_keypair_generate(sig_keypair *kp);

/* Key pair from 32 private bytes (public part derived). */
int sig_keypair_from_private(sig_keypair *kp, const uint8_t priv[SIG_PRIV_LEN]);

void sig_keypair_wipe(sig_keypair *kp);

/* 1 if pub is a well-formed 33-byte 0x05 key, else 0. */
int sig_pubkey_valid(const uint8_t *pub, size_t len);

/* X25519(priv, pub) into out. SP_EINVAL for a badly typed key, SP_ECRYPTO if the
 * result is all zero (small-order point). */
int sig_curve_dh(uint8_t out[32], const uint8_t priv[SIG_PRIV_LEN], const uint8_t pub[SIG_PUB_LEN]);

/* Curve25519 signature over msg with a random nonce (official libsignal style). */
int sig_curve_sign(uint8_t sig[SIG_SIG_LEN], const uint8_t priv[SIG_PRIV_LEN], const uint8_t *msg,
    size_t len);

/* Same signature scheme with the deterministic nonce r = SHA-512(a || M) that
 * libsignal-node / curve25519-js use; reproduces their signatures byte for byte. */
int sig_curve_sign_deterministic(uint8_t sig[SIG_SIG_LEN], const uint8_t priv[SIG_PRIV_LEN],
    const uint8_t *msg, size_t len);

/* SP_OK if sig is a valid signature of msg by pub (33-byte form), SP_EBADSIG if not,
 * SP_EINVAL for a malformed key: sp_xeddsa_verify(), the verifier keysrv uses too. */
int sig_curve_verify(const uint8_t pub[SIG_PUB_LEN], const uint8_t *msg, size_t len,
    const uint8_t sig[SIG_SIG_LEN]);

#endif
