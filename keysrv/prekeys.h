/*
 * Prekeys: signed prekey and one-time prekey uploads, and bundles. A bundle takes each
 * target device's lowest-numbered one-time prekey and deletes it in the same write
 * transaction; LMDB serializes write transactions, so no key is ever handed out twice.
 */
#ifndef KEYS_PREKEYS_H
#define KEYS_PREKEYS_H

#include <stdint.h>

#include "keysrv/internal.h"

/* SP_OK if sig is the identity key's Signal curve25519 signature over the 33-byte signed
 * prekey (WIRE.md §2), SP_EBADSIG if not, SP_EINVAL for a malformed key. */
int keys_prekeys_verify_spk(const uint8_t ik[KEYS_PUB_LEN], const uint8_t spk[KEYS_PUB_LEN],
    const uint8_t sig[KEYS_SIG_LEN]);

/* Deletes every one-time prekey of `device` in `txn`. */
int keys_prekeys_delete_all(keys_store *s, MDB_txn *txn, uint64_t device);

int keys_prekeys_upload(keys_req *r);
int keys_prekeys_status(keys_req *r);
int keys_prekeys_bundle(keys_req *r);

/* Counts live devices under the low-water mark (for the gauge at start-up). */
int keys_prekeys_count_low(keys_ctx *ctx, int64_t *n);

#endif
