/*
 * Asynchronous NNG requests from a libevent loop. Requests run on NNG's threads; their
 * completions are queued and handed to the caller's callback on the loop thread, so
 * callbacks never race with the rest of connsrv.
 */
#ifndef CS_RPC_H
#define CS_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <nng/nng.h>

#include "sp_frame.h"

typedef struct cs_rpc cs_rpc;

/* Called on the loop thread. rc is SP_OK with `reply` decoded, the code of an ERROR reply
 * (reply then holds the ERROR frame), or a transport error (reply NULL). `reply` and the
 * memory it points into are valid only during the call. */
typedef void (*cs_rpc_cb)(void *arg, int rc, const sp_frame *reply);

/* Creates the dispatcher on `base`. timeout_ms bounds every request. */
int cs_rpc_new(struct event_base *base, int timeout_ms, cs_rpc **out);

/* Cancels requests in flight (their callbacks run with SP_ECLOSED before this returns),
 * closes every cached socket and frees the dispatcher. */
void cs_rpc_free(cs_rpc *r);

/* Sends `req` to the REP peer at `url` (a REQ socket per url, opened on first use and
 * kept). `req` is packed before this returns (its borrowed values may go away after).
 * On SP_OK the callback runs exactly once, later; on error it never runs. */
int cs_rpc_call(cs_rpc *r, const char *url, const sp_frame *req, cs_rpc_cb cb, void *arg);

/* As cs_rpc_call with a frame already packed (`len` bytes of msgpack, copied before this
 * returns): what a caller that sends the same request again keeps. */
int cs_rpc_call_packed(cs_rpc *r, const char *url, const void *req, size_t len, cs_rpc_cb cb,
		       void *arg);

/* Cancels the calls in flight made with callback `cb` whose `arg` `pick` chooses (one pass
 * over the calls in flight): each still completes exactly once, later on the loop, with
 * SP_ENNG (cancelled) unless its answer came first, or, rarely, by its timeout. For a caller
 * that learns the answers will not come from where its calls went. */
void cs_rpc_cancel(cs_rpc *r, cs_rpc_cb cb, bool (*pick)(void *arg));

/* Fire-and-forget push of `f` to the PULL peer at `url` (a PUSH socket per url). `f` is
 * packed before this returns; the frames pushed to one url during one pass of the loop
 * leave together when the pass ends (a lone frame as itself, more as one PEER_BATCH of at
 * most 256 frames and ~256 KiB: one NNG message, one wake-up of the peer), in order. A
 * peer that is down or not keeping up makes them be dropped, counted in
 * sp_connsrv_pushes_dropped_total; callers never rely on a push arriving. SP_OK: queued;
 * an error: not queued (the caller counts it). */
int cs_rpc_push(cs_rpc *r, const char *url, const sp_frame *f);

/* Requests in flight (for drain and metrics). */
unsigned cs_rpc_inflight(const cs_rpc *r);

#endif
