/*
 * Request dispatch: decodes one request frame, serves reads (FETCH, STAT, BLOB_GET) at once
 * from a read-only transaction on the calling thread, and turns writes into ops for the
 * group-commit writer, replying after their commit. Independent of the transport so unit
 * tests drive it without sockets.
 *
 * Every malformed, oversize or out-of-range request is answered ERROR{code, reason}; none
 * reaches the store.
 */
#ifndef INBOX_DISPATCH_H
#define INBOX_DISPATCH_H

#include <stdint.h>

#include <nng/nng.h>

#include "commit.h"
#include "store.h"

typedef struct inbox_dispatch inbox_dispatch;

/* Receives the reply to one request. `reply` (ownership passes to the callee) is NULL only
 * if no reply could be built (out of memory): the requester's resend will retry. */
typedef void (*inbox_reply_fn)(void *arg, nng_msg *reply);

typedef struct inbox_dispatch_config {
	uint64_t shard;
	uint32_t fetch_default_count; /* 0: 256 */
	size_t fetch_default_bytes; /* 0: 256 KiB */
} inbox_dispatch_config;

/* `s` and `c` must outlive the dispatcher. On SP_OK the caller owns *out. */
int inbox_dispatch_new(
    inbox_dispatch **out, inbox_store *s, inbox_commit *c, const inbox_dispatch_config *cfg);
void inbox_dispatch_free(inbox_dispatch *d);

/* Handles one request; takes ownership of `req`. Calls reply(arg, ...) exactly once:
 * before returning (reads, errors) or later on the commit completion thread (writes, after their
 * commit). */
void inbox_dispatch_handle(inbox_dispatch *d, nng_msg *req, inbox_reply_fn reply, void *arg);

#endif
