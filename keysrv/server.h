/*
 * keysrv's request layer: the context (store, OTP sender, rate limits, metrics), the
 * dispatch of one decoded request with the authenticated-caller check, and the NNG REP
 * server: `workers` threads, each with its own REP context, each request in its own LMDB
 * transaction.
 *
 * Caller check. Requests that act on behalf of a device need AUTH_USER and AUTH_DEVICE
 * (set by connsrv from the authenticated session) naming a current device of that user,
 * else SP_EAUTH. REGISTER, VERIFY, LINK_REQUEST and LINK_STATUS are unauthenticated;
 * AUTH_KEY_GET is connsrv's login lookup; DEVICES_GET may come with or without a caller
 * (device lists are public); GROUP_DEVICES needs only AUTH_USER, which must be a member.
 */
#ifndef KEYS_SERVER_H
#define KEYS_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include <nng/nng.h>

#include "keysrv/internal.h"

typedef struct keys_rate_cfg {
	unsigned burst, per_min;
} keys_rate_cfg;

typedef struct keys_ctx_cfg {
	const char *data_dir;
	size_t map_size;
	keys_otp_sender_cfg otp;
	keys_cfg keys;
	keys_rate_cfg rate_phone, rate_source, rate_bundle, rate_link;
	size_t rate_max_keys;
	bool replicated; /* one copy of a replicated key store: the secret comes from the log */
} keys_ctx_cfg;

/* Opens the store, the OTP sender and the rate limiters. On SP_OK the caller owns *out
 * (keys_ctx_close). */
int keys_ctx_open(keys_ctx **out, const keys_ctx_cfg *cfg);
void keys_ctx_close(keys_ctx *ctx);

/* Handles one decoded request `in` (which must outlive r). Always leaves a reply in
 * r->out: the answer, or ERROR {code, reason, retry_after (ms)}. Returns the SP code.
 * The caller releases the reply's memory with keys_req_fini after packing it. */
int keys_call(keys_ctx *ctx, const sp_frame *in, keys_req *r);
/* Whether keys_call has a handler for frame type `type`. */
bool keys_server_serves(unsigned type);
void keys_req_fini(keys_req *r);

/* Handles one request message and returns the reply message (caller owns it), or NULL
 * when out of memory. */
nng_msg *keys_handle_msg(keys_ctx *ctx, nng_msg *in);

typedef struct keys_server keys_server;

/* Listens on `url` and serves with `workers` threads. On SP_OK the caller owns *out. */
int keys_server_start(keys_server **out, keys_ctx *ctx, const char *url, unsigned workers);

/* The push listener (docs/PUSH.md): serves PUSH_TOKEN_GET and PUSH_DROP only (any other
 * request: ERROR SP_EBADTYPE, keysrv_push_listener_refused_total), for pushsrv, whose
 * role must not reach the rest of keysrv. On a tls+tcp:// URL a peer's certificate must
 * chain to `peer_ca` (PEM bundle; NULL: the process's client CAs). */
int keys_server_start_push(keys_server **out, keys_ctx *ctx, const char *url, const char *peer_ca,
    unsigned workers);

/* Closes the socket (requests in flight finish or fail) and joins the workers. */
void keys_server_stop(keys_server *srv);

#endif
