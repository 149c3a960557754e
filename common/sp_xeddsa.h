/*
 * Verification of Signal's curve25519 (XEdDSA-style) signatures (shared/signal/WIRE.md
 * §2): the signer's X25519 key is converted to its Edwards form and the signature is
 * checked as Ed25519. Shared by keysrv (signed prekeys of uploaded bundles) and the
 * client's Signal core. Verification only: signing needs the private key and stays in
 * the client.
 */
#ifndef SP_XEDDSA_H
#define SP_XEDDSA_H

#include <stddef.h>
#include <stdint.h>

#define SP_XEDDSA_KEY_TYPE 0x05
#define SP_XEDDSA_PUB_LEN 33 /* SP_XEDDSA_KEY_TYPE || X25519 u-coordinate */
#define SP_XEDDSA_SIG_LEN 64

/* 1 if pub is a well-formed 33-byte 0x05-prefixed public key, else 0. */
int sp_xeddsa_pubkey_valid(const uint8_t *pub, size_t len);

/* SP_OK if sig is a valid signature of msg by pub, SP_EBADSIG if not, SP_EINVAL for a
 * malformed key, SP_ENOMEM / SP_ECRYPTO if the crypto libraries fail. The top bit of
 * the u-coordinate is ignored (RFC 7748). */
int sp_xeddsa_verify(const uint8_t pub[SP_XEDDSA_PUB_LEN], const uint8_t *msg, size_t len,
    const uint8_t sig[SP_XEDDSA_SIG_LEN]);

#endif
