/*
 * A blocking client connection to connsrv: TLS 1.3 with the CA checked, length-prefixed
 * frames, login (HELLO / CHALLENGE / AUTH signed with the device's Ed25519 auth key), and
 * the router bootstrap (GET /where). Used by the sealpost CLI, the client library and the
 * integration tests. One connection per thread.
 */
#ifndef SPC_CONN_H
#define SPC_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

#include "sp_frame.h"

typedef struct spc_conn spc_conn;

/* Connects and completes the TLS handshake within timeout_ms, verifying the server against
 * ca_file (and its name/IP against host). On SP_OK *out is the caller's (spc_conn_close).
 * On failure a one-line reason is in err. */
int spc_conn_open(const char *host, int port, const char *ca_file, int timeout_ms, spc_conn **out,
		  char *err, size_t errlen);
void spc_conn_close(spc_conn *c);

/* Sends one frame (blocking until written). */
int spc_conn_send(spc_conn *c, const sp_frame *f);

/* Receives the next frame within timeout_ms (SP_ETIMEDOUT otherwise; SP_ECLOSED when the
 * server closed). `f` points into the connection's buffer: valid until the next
 * spc_conn_recv or spc_conn_close; call sp_frame_fini(f) when done with it. */
int spc_conn_recv(spc_conn *c, int timeout_ms, sp_frame *f);

/* HELLO, CHALLENGE, AUTH (the login message is sp_login_message in sp_proto.h). auth_sk is the device's Ed25519 secret key (libsodium 64-byte
 * form). On SP_OK *conn_epoch (if non-NULL) is the session's epoch. Frames other than the
 * expected replies are an SP_EPROTO; an ERROR reply gives its code. */
int spc_conn_login(spc_conn *c, uint64_t user, uint64_t device,
		   const uint8_t auth_sk[crypto_sign_SECRETKEYBYTES], uint64_t last_seq,
		   uint64_t *conn_epoch);

/* Asks the router (host:port of its HTTP endpoint) which connsrv to use. */
int spc_bootstrap(const char *router, char *host, size_t hostcap, int *port, char *err,
		  size_t errlen);

#endif
