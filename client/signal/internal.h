/* Structures shared inside client/signal (session and sender-key internals that the
 * state serializer needs). Not for use outside this directory. */
#ifndef SIG_INTERNAL_H
#define SIG_INTERNAL_H

#include <stdint.h>

#include "client/signal/sig_curve.h"
#include "client/signal/sig_session.h"
#include "client/signal/sig_senderkey.h"

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

/* Skipped-key lists (sig_skip.c). add keeps at most max entries, dropping the oldest;
 * take removes and returns the seed for counter (SP_ENOTFOUND if absent). */
int sig_skip_add(sig_skipped_key **arr, uint32_t *n, uint32_t *cap, uint32_t max, uint32_t counter,
    const uint8_t seed[32]);
int sig_skip_take(sig_skipped_key *arr, uint32_t *n, uint32_t counter, uint8_t seed[32]);
void sig_skip_drop_oldest(sig_skipped_key *arr, uint32_t *n, uint32_t k);
int sig_skip_dup(sig_skipped_key **dst, uint32_t *dcap, const sig_skipped_key *src, uint32_t n);
void sig_skip_free(sig_skipped_key **arr, uint32_t *n, uint32_t *cap);

#endif
