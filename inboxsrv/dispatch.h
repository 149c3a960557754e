/*
 * Request dispatch: decodes one request frame and looks its type up in one table
 * (dispatch.c: `serve`), which names the handler: reads (FETCH, STAT, LAST_SEQS, BLOB_GET,
 * PING) are answered at once on the calling thread; writes become ops for the group-commit
 * writer, replied to after their commit. Independent of the transport so unit tests drive
 * it without sockets.
 *
 * Every malformed, oversize or out-of-range request is answered ERROR{code, reason}; none
 * reaches the store. A frame of a type the table does not serve is ERROR{SP_EBADTYPE},
 * counted in sp_inbox_unserved_requests_total.
 */
#ifndef INBOX_DISPATCH_H
#define INBOX_DISPATCH_H

#include <stdbool.h>
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
	/* A replicated shard's gate (inbox_repl_gate): asked before every request but PING
	 * is served; a non-zero result is the ERROR code of the answer (SP_ENOTPRIMARY,
	 * SP_EUNAVAIL). NULL: a shard of one copy serves everything. */
	int (*gate)(void *arg, bool write);
	void *gate_arg;
} inbox_dispatch_config;

/* `s` and `c` must outlive the dispatcher. On SP_OK the caller owns *out. */
int inbox_dispatch_new(
    inbox_dispatch **out, inbox_store *s, inbox_commit *c, const inbox_dispatch_config *cfg);
void inbox_dispatch_free(inbox_dispatch *d);

/* Handles one request; takes ownership of `req`. Calls reply(arg, ...) exactly once:
 * before returning (reads, errors) or later on the commit completion thread (writes, after their
 * commit). */
void inbox_dispatch_handle(inbox_dispatch *d, nng_msg *req, inbox_reply_fn reply, void *arg);

/* Whether the dispatch table serves request frames of `type` (any other type is answered
 * ERROR{SP_EBADTYPE}). */
bool inbox_dispatch_serves(unsigned type);

#endif
