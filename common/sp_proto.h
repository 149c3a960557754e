/*
 * Protocol facts shared by connsrv, the client library and the load generator: the
 * protocol version, the login message, envelope types and the fan-out bounds. The frame
 * layouts themselves are in the catalogue (sp_frame.h, defs/); docs/PROTOCOL.md tells the
 * whole exchange.
 */
#ifndef SP_PROTO_H
#define SP_PROTO_H

#include <stddef.h>
#include <stdint.h>

/* HELLO{version}: a connsrv refuses any other version. */
#define SP_PROTO_VERSION 1

/* Login: connsrv sends CHALLENGE{nonce}; the device answers AUTH{user, device, sig} with
 * sig = Ed25519(auth key, SP_LOGIN_CONTEXT || nonce || user (BE64) || device (BE64)). */
#define SP_LOGIN_CONTEXT "sealpost-auth-v1"
#define SP_LOGIN_NONCE_LEN 32
#define SP_LOGIN_SIG_LEN 64
#define SP_LOGIN_MSG_LEN (sizeof(SP_LOGIN_CONTEXT) - 1 + SP_LOGIN_NONCE_LEN + 16)

/* Envelope types (SEND_ITEM/DELIVER etype). 1..9 are client ciphertexts (Signal message
 * types, chosen by the client); 10.. are made by the server. */
enum {
	SP_ETYPE_RECEIPT_DELIVERED = 10, /* env: RECEIPT{kind, msg_ids, ...} */
	SP_ETYPE_RECEIPT_READ = 11,
};

/* Targets of one 1:1 SEND (the recipient's devices plus the sender's other devices). */
#define SP_MAX_SEND_DEVICES 64
/* Devices one SEND_GROUP may reach (1024 members x 5 devices). */
#define SP_MAX_FANOUT_DEVICES 5120

/* Fills `msg` with the login message for (nonce, user, device). */
void sp_login_message(uint8_t msg[SP_LOGIN_MSG_LEN], const uint8_t nonce[SP_LOGIN_NONCE_LEN],
		      uint64_t user, uint64_t device);

/* Signs the login message with the device's Ed25519 secret key (libsodium layout, 64 bytes). */
void sp_login_sign(uint8_t sig[SP_LOGIN_SIG_LEN], const uint8_t nonce[SP_LOGIN_NONCE_LEN],
		   uint64_t user, uint64_t device, const uint8_t *auth_sk);

/* SP_OK when `sig` is the device's login signature under `auth_pk` (`pk_len` bytes, must be
 * an Ed25519 public key); SP_EAUTH otherwise. */
int sp_login_verify(const uint8_t *sig, size_t sig_len, const uint8_t nonce[SP_LOGIN_NONCE_LEN],
		    uint64_t user, uint64_t device, const uint8_t *auth_pk, size_t pk_len);

#endif
