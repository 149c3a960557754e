/*
 * The NNG face of a shard: one REP socket with many contexts, each a small state machine
 * (receive -> dispatch -> send -> receive) driven by its aio callback, so many requests
 * are in flight and writes from many peers share a commit.
 */
#ifndef INBOX_SERVER_H
#define INBOX_SERVER_H

#include "dispatch.h"

typedef struct inbox_server inbox_server;

/* Listens on `url` with `nctx` contexts serving `d` (which must outlive the server). On
 * SP_OK the caller owns *out. */
int inbox_server_start(inbox_server **out, const char *url, int nctx, inbox_dispatch *d);

/* Closes the socket. Replies still owed (writes being committed) are dropped after their
 * commit; the requesters' resends find them deduplicated elsewhere or here on restart. */
void inbox_server_close(inbox_server *srv);

/* Frees the contexts; call after the commit writer has stopped (it may still reply). */
void inbox_server_free(inbox_server *srv);

#endif
