/* Sender Keys in the official v3 format of @signalapp/libsignal-client (WIRE.md §6).
 * A record holds up to SIG_SK_MAX_STATES chains of one sender in one group (newest
 * first); our own record also holds the signing private keys. Out-of-order messages
 * are accepted up to SIG_SK_MAX_FORWARD iterations ahead, and at most SIG_SK_MAX_KEYS
 * skipped keys are kept per state (oldest dropped). */
#ifndef SIG_SENDERKEY_H
#define SIG_SENDERKEY_H

#include <stddef.h>
#include <stdint.h>

#define SIG_SK_MAX_STATES 5
#define SIG_SK_MAX_FORWARD 2000
#define SIG_SK_MAX_KEYS 2000

typedef struct sig_sk_record sig_sk_record;

/* New empty record (caller frees with sig_sk_record_free), NULL on ENOMEM. */
sig_sk_record *sig_sk_record_new(void);
/* Wipes and frees; NULL is fine. */
void sig_sk_record_free(sig_sk_record *r);
/* Deep copy into *out (caller frees). */
int sig_sk_record_dup(sig_sk_record **out, const sig_sk_record *r);
/* Number of states held. */
unsigned sig_sk_record_count(const sig_sk_record *r);

/* Our own sending chain: starts a new state (fresh chain id, chain key and signing key)
 * and makes it current. distribution_id: the 16-byte distribution UUID to use, or NULL
 * to keep the current one (a random v4 UUID when the record is empty). This is both
 * the initial creation and the rotation (e.g. when the group epoch changes). */
int sig_sk_rotate(sig_sk_record *own, const uint8_t *distribution_id);

/* SenderKeyDistributionMessage for our current state (at its current iteration);
 * *out owned by the caller (wipe: it carries the chain key). SP_ESTATE if the record
 * has no own state. */
int sig_sk_distribution(const sig_sk_record *own, uint8_t **out, size_t *outlen);

/* Distribution UUID of the current state; SP_ESTATE if empty. */
int sig_sk_distribution_id(const sig_sk_record *r, uint8_t id[16]);

/* Adds the sender state carried by an SKDM to a receiving record. An SKDM for a state
 * we already hold (same distribution id, chain id and signing key) is ignored; a state
 * with the same chain id but another signing key is replaced. On error r is unchanged. */
int sig_sk_process(sig_sk_record *r, const uint8_t *skdm, size_t len);

/* Encrypts with our current state: *out (caller frees) is a SenderKeyMessage signed by
 * our signing key; the chain advances. */
int sig_sk_encrypt(sig_sk_record *own, const uint8_t *pt, size_t len, uint8_t **out,
    size_t *outlen);

/* Decrypts a SenderKeyMessage: signature verified before decrypting. On success *pt
 * (caller wipes and frees) and r advances; on error r is unchanged (SP_EBADSIG,
 * SP_EREPLAY, SP_ELIMIT, SP_ENOTFOUND for an unknown chain, SP_ECRYPTO, framing). */
int sig_sk_decrypt(sig_sk_record *r, const uint8_t *msg, size_t len, uint8_t **pt,
    size_t *ptlen);

#endif
