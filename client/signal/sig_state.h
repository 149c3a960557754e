/* One party's whole Signal state (a "store"): identity key, registration id, signed
 * prekeys, one-time prekeys, the sessions with each peer device (with its trusted
 * identity key), and sender keys per group; plus serialization of the whole store and
 * of single records (one session, one peer, one sender-key record) to byte blobs, for
 * the client's SQLite store. Blobs are versioned and parsed with bounds checks; a
 * damaged blob yields SP_EMALFORMED / SP_ETRUNC, never a crash.
 *
 * Peers and groups are named by caller-chosen strings (at most SIG_MAX_NAME bytes).
 * Unless stated otherwise, every mutating function leaves the store unchanged when it
 * fails. */
#ifndef SIG_STATE_H
#define SIG_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "client/signal/sig_curve.h"
#include "client/signal/sig_senderkey.h"
#include "client/signal/sig_session.h"

#define SIG_MAX_NAME 256
#define SIG_MAX_SESSIONS 5       /* per peer: the current one plus archived ones */
#define SIG_MAX_SIGNED_PREKEYS 4 /* the newest kept */
#define SIG_MAX_PREKEYS 10000
#define SIG_MAX_PEERS 100000
#define SIG_MAX_GROUP_KEYS 100000

typedef struct sig_store sig_store;

/* Empty store for a given identity (copied). *out owned by the caller. */
int sig_store_new(sig_store **out, const sig_keypair *identity, uint32_t reg_id, uint32_t device_id);

/* Fresh identity, signed prekey id 1 and n_prekeys one-time prekeys. */
int sig_store_generate(sig_store **out, uint32_t reg_id, uint32_t device_id, uint32_t n_prekeys);

/* Wipes and frees everything; NULL is fine. */
void sig_store_free(sig_store *s);

const sig_keypair *sig_store_identity(const sig_store *s);
uint32_t sig_store_registration_id(const sig_store *s);

/* Adds a signed prekey (copied) and makes it current; sig NULL means sign it now with
 * the identity key. Keeps the newest SIG_MAX_SIGNED_PREKEYS. SP_EEXIST for a used id. */
int sig_store_add_signed_prekey(sig_store *s, uint32_t id, const sig_keypair *kp, const uint8_t *sig);

/* Adds one one-time prekey (copied). SP_EINVAL for id 0 (it means "none" on the
 * wire), SP_EEXIST for a used id, SP_ELIMIT when full. */
int sig_store_add_prekey(sig_store *s, uint32_t id, const sig_keypair *kp);

/* Generates n more one-time prekeys with fresh ids. */
int sig_store_generate_prekeys(sig_store *s, uint32_t n);

/* Fills b with our bundle. With take_prekey, the next one-time prekey not yet handed
 * out is included and marked handed out (it stays usable until a message consumes it);
 * b->has_prekey is 0 when none is left. */
int sig_store_bundle(sig_store *s, sig_bundle *b, int take_prekey);

/* One-time prekeys not yet handed out. */
uint32_t sig_store_prekeys_available(const sig_store *s);

/* Encrypts for peer. With a bundle, a new session is started first (the bundle's
 * signature is verified: SP_EBADSIG; an identity key different from the one trusted for
 * this peer: SP_EIDENTITY). Without one the current session is used (SP_ENOTFOUND if
 * none). *out (caller frees) is of *type SIG_MSG_PREKEY or SIG_MSG_WHISPER. */
int sig_store_encrypt(sig_store *s, const char *peer, const sig_bundle *bundle,
    const uint8_t *pt, size_t len, uint8_t **out, size_t *outlen, int *type);

/* Decrypts a SIG_MSG_PREKEY or SIG_MSG_WHISPER message from peer. A PreKeySignalMessage
 * whose identity key differs from the trusted one fails with SP_EIDENTITY (the
 * "security code changed" case: the caller asks the user, then sig_store_trust_identity).
 * On success *pt (caller wipes and frees); on failure the store is unchanged. */
int sig_store_decrypt(sig_store *s, const char *peer, int type, const uint8_t *msg,
    size_t len, uint8_t **pt, size_t *ptlen);

/* The current session with peer, borrowed (valid until the store is next modified), or
 * NULL. For per-session persistence with sig_state_session_serialize(). */
const sig_session *sig_store_current_session(const sig_store *s, const char *peer);

/* 1 if we have a session with peer. */
int sig_store_has_session(const sig_store *s, const char *peer);

/* Trusted identity key of peer into id; SP_ENOTFOUND if none. */
int sig_store_peer_identity(const sig_store *s, const char *peer, uint8_t id[SIG_PUB_LEN]);

/* Accepts a (new) identity key for peer: it becomes the trusted one and sessions made
 * with any other identity are dropped. */
int sig_store_trust_identity(sig_store *s, const char *peer, const uint8_t id[SIG_PUB_LEN]);

/* Sender keys. Our own chain for group: sk_distribution creates it when missing (or
 * rotates it when `rotate` is set, e.g. on a group epoch change) and returns the
 * SenderKeyDistributionMessage (*out caller frees; it carries a chain key: wipe). */
int sig_store_sk_distribution(sig_store *s, const char *group, int rotate, uint8_t **out,
    size_t *outlen);
int sig_store_sk_process(sig_store *s, const char *group, const char *sender,
    const uint8_t *skdm, size_t len);
int sig_store_sk_encrypt(sig_store *s, const char *group, const uint8_t *pt, size_t len,
    uint8_t **out, size_t *outlen);
int sig_store_sk_decrypt(sig_store *s, const char *group, const char *sender,
    const uint8_t *msg, size_t len, uint8_t **pt, size_t *ptlen);

/* Whole-store blob. *out owned by the caller; it holds private keys: wipe before free. */
int sig_store_serialize(const sig_store *s, uint8_t **out, size_t *outlen);
int sig_store_deserialize(sig_store **out, const uint8_t *in, size_t len);

/* Single-record blobs (same ownership rules). */
int sig_state_session_serialize(const sig_session *ss, uint8_t **out, size_t *outlen);
int sig_state_session_deserialize(sig_session **out, const uint8_t *in, size_t len);
int sig_state_sk_serialize(const sig_sk_record *r, uint8_t **out, size_t *outlen);
int sig_state_sk_deserialize(sig_sk_record **out, const uint8_t *in, size_t len);

#endif
