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

/* The socket, for a caller's poll() (readable: call spc_conn_recv). Frames already read
 * into the connection's buffer do not make it readable: poll only after spc_conn_recv
 * came back with SP_ETIMEDOUT. */
int spc_conn_fd(const spc_conn *c);

/* HELLO, CHALLENGE, AUTH (the login message is sp_login_message in sp_proto.h). auth_sk is the device's Ed25519 secret key (libsodium 64-byte
 * form). On SP_OK *conn_epoch (if non-NULL) is the session's epoch. Frames other than the
 * expected replies are an SP_EPROTO; an ERROR reply gives its code. */
int spc_conn_login(spc_conn *c, uint64_t user, uint64_t device,
		   const uint8_t auth_sk[crypto_sign_SECRETKEYBYTES], uint64_t last_seq,
		   uint64_t *conn_epoch);
/* After a login: AUTH_OK's server_ts and exp_after (ms; 0 from a server that does not say). */
void spc_conn_login_info(const spc_conn *c, uint64_t *server_ts, uint64_t *exp_after);

/* A connsrv's client listener, as a router offers it. */
typedef struct spc_server {
	char host[256];
	int port;
} spc_server;

/* How long one router may take to connect and to answer /where. */
#define SPC_ROUTER_TIMEOUT_MS 2000

/* Parses "host:port" (len bytes of s, no NUL needed) into host (hostcap) and *port.
 * SP_OK or SP_EINVAL. */
int spc_hostport(const char *s, size_t len, char *host, size_t hostcap, int *port);

/* Asks the routers (comma-separated host:port of their HTTP endpoints; a host with several
 * addresses is tried address by address) in turn which connsrv to use: GET /where, until
 * one answers. On SP_OK servers[0] is the connsrv to use and servers[1 .. *n) the other
 * healthy connsrvs that router listed (at most cap in all; cap >= 1), and `answered` (when
 * not NULL) the router's host:port as given in the list. SP_EINVAL (with err)
 * for a malformed list; SP_EUNAVAIL when no router offered a connsrv (err says why, for
 * the last router tried). */
int spc_bootstrap_list(const char *routers, spc_server *servers, size_t cap, size_t *n,
		       char *answered, size_t answered_cap, char *err, size_t errlen);

/* spc_bootstrap_list for one connsrv: the routers' first offer. */
int spc_bootstrap(const char *router, char *host, size_t hostcap, int *port, char *err,
		  size_t errlen);

#endif
