/* Structures shared inside client/signal: session and sender-key internals, and the
 * store's records, which the state serializer (sig_state_codec.c) reads and builds.
 * Not for use outside this directory.
 *
 * Files of client/signal:
 *   sig_curve.c        33-byte 0x05 keys, X25519, curve25519 signing (verification in
 *                      common/sp_xeddsa.c)
 *   sig_kdf.c          HMAC-SHA256, HKDF, chain-key step, AES-256-CBC
 *   sig_proto.c        bounded protobuf codec of the Signal wire messages
 *   sig_session.c      X3DH and the Double Ratchet of one session
 *   sig_senderkey.c    Sender Keys: distribution, chains, signatures
 *   sig_skip.c         skipped message-key lists (sessions and sender keys)
 *   sig_state.c        a party's store: keys, prekeys, peers with their sessions,
 *                      sender keys; encrypt/decrypt through the right session
 *   sig_state_codec.c  versioned blobs of the whole store, one session, one sender-key
 *                      record
 *   sig_buf.c          bounded byte buffers for the codecs (big-endian integers)
 */
#ifndef SIG_INTERNAL_H
#define SIG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "client/signal/sig_curve.h"
#include "client/signal/sig_senderkey.h"
#include "client/signal/sig_session.h"
#include "client/signal/sig_state.h"

typedef struct {
	uint32_t counter;
	uint8_t seed[32];
} sig_skipped_key;

/* A receiving chain: their ratchet key, the chain key for counter `next`, and the
 * message-key seeds skipped on it (oldest first, at most SIG_MAX_SKIP). */
typedef struct {
	uint8_t ratchet_key[SIG_PUB_LEN];
	uint8_t chain_key[32];
	uint32_t next;
	int closed;
	sig_skipped_key *skipped;
	uint32_t nskipped;
	uint32_t capskipped;
} sig_recv_chain;

struct sig_session {
	uint8_t local_identity[SIG_PUB_LEN];
	uint8_t remote_identity[SIG_PUB_LEN];
	uint32_t local_reg_id;
	uint32_t remote_reg_id;
	uint8_t root_key[32];
	sig_keypair ratchet; /* our current ratchet key pair */
	int has_their_ratchet;
	uint8_t their_ratchet[SIG_PUB_LEN];
	int has_send_chain;
	uint8_t send_chain_key[32];
	uint32_t send_counter; /* counter of send_chain_key */
	uint32_t prev_counter;
	sig_recv_chain chains[SIG_MAX_RECV_CHAINS]; /* oldest first */
	uint32_t nchains;
	int pending; /* initiator: wrap messages in PreKeySignalMessage until a reply */
	int pending_has_opk;
	uint32_t pending_opk_id;
	uint32_t pending_spk_id;
	uint8_t base_key[SIG_PUB_LEN]; /* the initiator's base key (both sides) */
	int has_preset;                /* test hook, never serialized */
	sig_keypair preset;
};

/* One sender-key state (WIRE.md §6, official format). */
typedef struct {
	uint8_t distribution_id[16];
	uint32_t chain_id;
	uint32_t iteration; /* iteration of chain_key */
	uint8_t chain_key[32];
	uint8_t signing_pub[SIG_PUB_LEN];
	int has_signing_priv;
	uint8_t signing_priv[SIG_PRIV_LEN];
	sig_skipped_key *skipped; /* seeds by iteration, oldest first */
	uint32_t nskipped;
	uint32_t capskipped;
} sig_sk_state;

struct sig_sk_record {
	sig_sk_state states[SIG_SK_MAX_STATES]; /* [0] newest */
	uint32_t nstates;
};

/* ---- the store (sig_state.c), read and built by sig_state_codec.c ---- */

/* A peer device: its trusted identity key and its sessions. */
typedef struct {
	char *name;
	int has_identity;
	uint8_t identity[SIG_PUB_LEN];
	sig_session *sessions[SIG_MAX_SESSIONS]; /* [0] current */
	uint32_t nsessions;
} sig_peer_rec;

/* A one-time prekey; handed_out once it went into a bundle. */
typedef struct {
	uint32_t id;
	int handed_out;
	sig_keypair kp;
} sig_prekey_rec;

/* A signed prekey with the identity key's signature of its public part. */
typedef struct {
	uint32_t id;
	sig_keypair kp;
	uint8_t sig[SIG_SIG_LEN];
} sig_spk_rec;

/* The sender-key record of (group, sender). */
typedef struct {
	char *group;
	char *sender; /* NULL for our own sending chain */
	sig_sk_record *rec;
} sig_sk_entry;

struct sig_store {
	sig_keypair identity;
	uint32_t reg_id;
	uint32_t device_id;
	uint32_t next_prekey_id;
	sig_spk_rec spks[SIG_MAX_SIGNED_PREKEYS]; /* [0] current */
	uint32_t nspks;
	sig_prekey_rec *prekeys;
	uint32_t nprekeys, capprekeys;
	sig_peer_rec **peers;
	uint32_t npeers, cappeers;
	sig_sk_entry *sks;
	uint32_t nsks, capsks;
};

/* Grows a typed array to hold n+1 elements (SP_ELIMIT when n reaches max). */
int sig_state_grow(void **arr, uint32_t *cap, uint32_t n, size_t elem, uint32_t max);
sig_peer_rec *sig_state_peer_find(const sig_store *s, const char *name);
/* Adds p to the store; on success the store owns it. */
int sig_state_peer_insert(sig_store *s, sig_peer_rec *p);
/* The entry of (group, sender); sender NULL names our own sending chain. */
sig_sk_entry *sig_state_sk_find(const sig_store *s, const char *group, const char *sender);

/* Skipped-key lists (sig_skip.c). add keeps at most max entries, dropping the oldest;
 * take removes and returns the seed for counter (SP_ENOTFOUND if absent). */
int sig_skip_add(sig_skipped_key **arr, uint32_t *n, uint32_t *cap, uint32_t max, uint32_t counter,
    const uint8_t seed[32]);
int sig_skip_take(sig_skipped_key *arr, uint32_t *n, uint32_t counter, uint8_t seed[32]);
void sig_skip_drop_oldest(sig_skipped_key *arr, uint32_t *n, uint32_t k);
int sig_skip_dup(sig_skipped_key **dst, uint32_t *dcap, const sig_skipped_key *src, uint32_t n);
void sig_skip_free(sig_skipped_key **arr, uint32_t *n, uint32_t *cap);

#endif
