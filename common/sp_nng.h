/*
 * NNG helpers: sockets that carry one sp_frame (msgpack map, no length prefix) per message.
 *
 * Requests use REQ/REP with a context per call, so many threads can share one socket, a
 * receive timeout, and REQ's own resend after `resend_ms` (servers must therefore treat
 * every request as idempotent). Delivery between servers uses PUSH/PULL.
 */
#ifndef SP_NNG_H
#define SP_NNG_H

#include <stdbool.h>
#include <stdint.h>

#include <nng/nng.h>

#include "sp_frame.h"

/* Messages a PUSH socket queues for its peers, and a PULL socket for its reader. */
#define SP_NNG_QUEUE 4096

/* Maps an nng error to SP_ETIMEDOUT, SP_ECLOSED, SP_ENOMEM or SP_ENNG. */
int sp_nng_err(int nng_rv);

/*
 * Mutual TLS for links between servers (docs/SECURITY.md "Internal links"). A process
 * sets its identity once, before it opens a socket: its certificate (PEM, with the chain up
 * to but excluding the root when it is signed by an intermediate), its key, the CAs a
 * server it dials must chain to (`peer_ca`, PEM bundle: the role CAs of the servers this
 * process dials), and the CAs a peer connecting to its listeners must chain to
 * (`client_ca`: the role CAs it serves; NULL: `peer_ca`; a listener may have its own,
 * sp_nng_rep_listen_ca). From then on every socket opened here on a `tls+tcp://` URL uses
 * TLS 1.2+ with certificates required on both ends. nng 1.5 does not expose the peer's
 * subject, so which roles may connect is decided by which role CAs a listener trusts; a
 * certificate of another CA fails the handshake before any message is read. `tcp://`
 * URLs stay plain unless sp_nng_require_tls is on. Files are read at once (the key is kept
 * in memory). Not thread-safe with opens.
 * SP_EINVAL (a missing setting), SP_EIO (unreadable file), SP_ENOMEM.
 */
typedef struct sp_nng_tls {
	const char *cert, *key, *peer_ca, *client_ca;
} sp_nng_tls;
int sp_nng_tls_init(const sp_nng_tls *tls);
/* Forgets the identity (frees the key). */
void sp_nng_tls_fini(void);
/* True when `url` is a TLS URL (tls+tcp://). */
bool sp_nng_url_tls(const char *url);
/* True when `url` crosses the network in clear: neither TLS nor inproc:// / ipc://. */
bool sp_nng_url_plain(const char *url);

/* When on, every dial or listen on a plain URL (sp_nng_url_plain) fails with SP_EINVAL
 * (logged, rate-limited): a server started without --insecure-internal never opens a
 * plain internal link, even to an address it learns later (the cluster map, etcd). Off by
 * default (tools and tests). Set before opening sockets. */
void sp_nng_require_tls(bool on);

/* Dials `url` on an open socket in the background (TLS for tls+tcp:// URLs, retried until
 * the peer listens). SP_OK, SP_EINVAL (a plain URL refused, no identity for a TLS one) or
 * another mapped nng error. */
int sp_nng_dial(nng_socket s, const char *url);
/* Listens on `url` on an open socket; a TLS listener accepts only peers whose certificate
 * chains to the CAs in `peer_ca` (PEM bundle; NULL: the process's client_ca). */
int sp_nng_listen(nng_socket s, const char *url, const char *peer_ca);

/* Opens a REQ socket dialling `url` (asynchronously: the dial is retried in the
 * background until the peer listens). timeout_ms bounds each sp_nng_call; resend_ms is
 * REQ's resend interval (0: nng default, 60 s). */
int sp_nng_req_open(nng_socket *s, const char *url, int timeout_ms, int resend_ms);

/* Opens a REP socket listening on `url`. */
int sp_nng_rep_listen(nng_socket *s, const char *url);
/* The same, a tls+tcp:// listener accepting only peers whose certificate chains to the
 * CAs in `peer_ca` (PEM bundle; NULL: the process's client_ca). */
int sp_nng_rep_listen_ca(nng_socket *s, const char *url, const char *peer_ca);

/* Opens a PUSH socket dialling `url` / a PULL socket listening on `url`. send_timeout_ms
 * bounds a push when no peer is connected (the message is dropped after it). */
int sp_nng_push_open(nng_socket *s, const char *url, int send_timeout_ms);
int sp_nng_pull_listen(nng_socket *s, const char *url);

/* Packs `f` into a new message. On SP_OK the caller owns *out (nng_msg_free, or give it to
 * nng_sendmsg / nng_aio_set_msg). */
int sp_nng_msg_from_frame(const sp_frame *f, nng_msg **out);

/* Decodes a received message. On SP_OK `f`'s values point into `m`: keep `m` until done
 * with `f`, then sp_frame_fini(f) and nng_msg_free(m). `m` stays owned by the caller. */
int sp_nng_msg_decode(nng_msg *m, sp_frame *f);

/* Synchronous request. On SP_OK *rep_msg (caller frees with nng_msg_free after
 * sp_frame_fini(rep)) holds the reply and `rep` is decoded from it. If the reply is an
 * ERROR frame, its code is returned (and the reply is still handed over). Transport
 * failures return SP_ETIMEDOUT / SP_ENNG etc. with nothing to free. */
int sp_nng_call(nng_socket s, const sp_frame *req, nng_msg **rep_msg, sp_frame *rep);

/* Sends one frame on a socket (PUSH, or REP in reply). */
int sp_nng_send_frame(nng_socket s, const sp_frame *f);

/* Builds ERROR{code, reason (omitted when NULL)} with a request's id; on SP_OK the caller
 * owns *out. */
int sp_nng_error_msg(uint64_t id, bool has_id, int code, const char *reason, nng_msg **out);

/* Builds and sends ERROR{code, reason} on `s` with the request id of the request. */
int sp_nng_send_error(nng_socket s, uint64_t id, bool has_id, int code, const char *reason);

#endif
