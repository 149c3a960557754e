/*
 * Consistent-hash ring of inbox shards: `vnodes` points per member, an epoch number, and a
 * deterministic owner (and replica: the next distinct member clockwise) for any key.
 * Two processes given the same member names and vnode count build the same ring, whatever
 * order the names come in. Hashing is SipHash-2-4 (libsodium crypto_shorthash) under a
 * fixed public key: it only spreads keys, it protects nothing.
 */
#ifndef SP_RING_H
#define SP_RING_H

#include <stddef.h>
#include <stdint.h>

typedef struct sp_ring sp_ring;

#define SP_RING_DEFAULT_VNODES 1024

/* Builds a ring over `n` member names (copied; duplicates are SP_EINVAL). On SP_OK *out
 * is the caller's, freed with sp_ring_free. Member indices used below are positions in
 * `members` as given. */
int sp_ring_new(uint64_t epoch, const char *const *members, size_t n, unsigned vnodes,
		sp_ring **out);
void sp_ring_free(sp_ring *r);

uint64_t sp_ring_epoch(const sp_ring *r);
size_t sp_ring_size(const sp_ring *r);
const char *sp_ring_member(const sp_ring *r, size_t i);

/* Owner and replica member indices of a key. *replica is -1 when the ring has one member.
 * Returns SP_OK, or SP_EINVAL on an empty ring. */
int sp_ring_lookup(const sp_ring *r, const void *key, size_t len, int *owner, int *replica);

/* The same for a 64-bit id (device id), hashed as 8 big-endian bytes. */
int sp_ring_lookup_u64(const sp_ring *r, uint64_t id, int *owner, int *replica);

#endif
