/*
 * TLS contexts (OpenSSL 3). Servers speak TLS 1.3 only unless TLS 1.2 is allowed
 * explicitly; clients verify the server against a CA file. Errors come back as one
 * readable line (file name and OpenSSL's reason).
 */
#ifndef SP_TLS_H
#define SP_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

/* Server context with `cert` (PEM chain) and `key` (PEM), checked to match. On success
 * the caller owns the context (SSL_CTX_free); on failure NULL and a message in err. */
SSL_CTX *sp_tls_server_ctx(const char *cert, const char *key, bool allow_tls12, char *err,
			   size_t errlen);

/* Replaces the certificate and key of an existing server context (SIGHUP rotation): new
 * handshakes use the new pair, established connections keep theirs. On failure the
 * context is unchanged. Returns SP_OK or SP_ETLS (message in err). */
int sp_tls_server_reload(SSL_CTX *ctx, const char *cert, const char *key, char *err,
			 size_t errlen);

/* Client context trusting `ca_file` (PEM) and verifying the peer certificate. */
SSL_CTX *sp_tls_client_ctx(const char *ca_file, bool allow_tls12, char *err, size_t errlen);

#endif
