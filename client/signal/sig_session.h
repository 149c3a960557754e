/* One Signal v3 session (WIRE.md §3-5): X3DH initiation on either side and the
 * Double Ratchet with its message framing. A session knows both identity keys; the
 * peer bookkeeping (several sessions, trusted identity, prekeys) is in sig_state.h.
 *
 * Limits: a message may be at most SIG_MAX_SKIP (2000) counters ahead of its chain;
 * at most SIG_MAX_SKIP skipped keys are kept per chain (oldest dropped), at most
 * SIG_MAX_SKIPPED_TOTAL per session, and at most SIG_MAX_RECV_CHAINS receiving chains
 * (oldest dropped). */
#ifndef SIG_SESSION_H
#define SIG_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "client/signal/sig_curve.h"
#include "client/signal/sig_proto.h"

#define SIG_MAX_SKIP 2000
#define SIG_MAX_RECV_CHAINS 5
#define SIG_MAX_SKIPPED_TOTAL 5000
#define SIG_MAX_PLAINTEXT (SIG_MAX_MESSAGE - 4096)

/* Message types, numbered like the official CiphertextMessageType. */
enum { SIG_MSG_WHISPER = 2, SIG_MSG_PREKEY = 3, SIG_MSG_SENDERKEY = 7 };

typedef struct sig_session sig_session;

/* A peer device's published keys. */
typedef struct {
	uint32_t registration_id;
	uint32_t device_id;
	uint8_t identity_key[SIG_PUB_LEN];
	uint32_t signed_prekey_id;
	uint8_t signed_prekey[SIG_PUB_LEN];
	uint8_t signed_prekey_sig[SIG_SIG_LEN];
	int has_prekey;
	uint32_t prekey_id;
	uint8_t prekey[SIG_PUB_LEN];
} sig_bundle;

/* Initiator (Alice) side of X3DH from bob's bundle. The signed-prekey signature is
 * verified first (SP_EBADSIG). base_key and ratchet_key are normally NULL (fresh
 * random keys); test vectors pass fixed ones. On success *out is a new session owned by
 * the caller (sig_session_free). Identity trust is the caller's business. */
int sig_session_init_alice(sig_session **out, const sig_keypair *identity, uint32_t reg_id,
    const sig_bundle *bundle, const sig_keypair *base_key, const sig_keypair *ratchet_key);

/* Responder (Bob) side from a decoded PreKeySignalMessage: our identity, the signed
 * prekey it names, and the one-time prekey it names (NULL when m has none). Does not
 * decrypt m->message: call sig_session_decrypt() on the new session for that. */
int sig_session_init_bob(sig_session **out, const sig_keypair *identity, uint32_t reg_id,
    const sig_keypair *signed_prekey, const sig_keypair *one_time_prekey, const sig_prekey_msg *m);

/* Encrypts pt. On success *out (caller frees) holds a SignalMessage (*type =
 * SIG_MSG_WHISPER) or, until the session has received a reply, a PreKeySignalMessage
 * (*type = SIG_MSG_PREKEY); the sending chain advances. On error s is unchanged. */
int sig_session_encrypt(sig_session *s, const uint8_t *pt, size_t len, uint8_t **out,
    size_t *outlen, int *type);

/* Decrypts a SignalMessage. On success *pt (caller wipes and frees; never NULL) holds
 * *ptlen bytes and s has advanced. On any error s is unchanged: SP_ECRYPTO (bad MAC or
 * padding), SP_EREPLAY (key already used), SP_ELIMIT (too far ahead), SP_ESTATE
 * (closed chain), SP_EMALFORMED / SP_EPROTO / SP_ETRUNC (framing). */
int sig_session_decrypt(sig_session *s, const uint8_t *msg, size_t len, uint8_t **pt,
    size_t *ptlen);

/* Deep copy into *out (caller frees). */
int sig_session_dup(sig_session **out, const sig_session *s);

/* Wipes and frees; NULL is fine. */
void sig_session_free(sig_session *s);

const uint8_t *sig_session_remote_identity(const sig_session *s);
uint32_t sig_session_remote_registration_id(const sig_session *s);
/* 1 if this session was set up with the initiator base key `base`. */
int sig_session_has_base_key(const sig_session *s, const uint8_t base[SIG_PUB_LEN]);
/* 1 while the session still sends PreKeySignalMessages. */
int sig_session_is_pending(const sig_session *s);

/* Test hook: the next DH ratchet step uses kp (copied) instead of a fresh key. */
void sig_session_preset_ratchet_key(sig_session *s, const sig_keypair *kp);

#endif
