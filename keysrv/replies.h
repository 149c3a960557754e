/*
 * Deduplicated keysrv writes. A write that is not idempotent (a one-time prekey hand-out,
 * a group's creation) carries a random request id that connsrv made (REQ_ID; a client's
 * own is dropped). The handler stores its reply under (caller device, id) in the write's
 * own transaction, and a retry of a write that committed -- connsrv's, after a failover
 * or a lost answer -- gets that reply back instead of running again. Replies live
 * KEYS_REPLY_TTL_MS (swept) and replicate like every write, so the retry may land on a new
 * primary. Called on the handler's thread, inside its write transaction.
 */
#ifndef KEYS_REPLIES_H
#define KEYS_REPLIES_H

#include <lmdb.h>

#include "internal.h"

/* When the request carries an id and a reply of `type` is stored under it: SP_OK with
 * r->out set to that reply (with the request's frame id; the caller aborts its
 * transaction and answers it). SP_ENOTFOUND: run the write. Else an error. */
int keys_replies_replay(keys_req *r, MDB_txn *txn, unsigned type);

/* Stores r->out under the request's id (SP_OK and nothing stored when it has none), in
 * `txn`, before the caller commits. */
int keys_replies_store(keys_req *r, MDB_txn *txn);

#endif
