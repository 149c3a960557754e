#include <stdio.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "sp_error.h"
#include "sp_tls.h"

/* Formats "what file: reason" from the OpenSSL error queue (and clears it). */
static void
tls_err(char *err, size_t errlen, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char reason[256] = "unknown error";
	if (e)
		ERR_error_string_n(e, reason, sizeof(reason));
	ERR_clear_error();
	snprintf(err, errlen, "%s %s: %s", what, file ? file : "", reason);
}

static int
load_pair(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t errlen)
{
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		tls_err(err, errlen, "cannot load certificate", cert);
		return SP_ETLS;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		tls_err(err, errlen, "cannot load private key", key);
		return SP_ETLS;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		tls_err(err, errlen, "private key does not match certificate", key);
		return SP_ETLS;
	}
	return SP_OK;
}

SSL_CTX *
sp_tls_server_ctx(const char *cert, const char *key, bool allow_tls12, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		tls_err(err, errlen, "cannot create TLS context", NULL);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, allow_tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
	/* Small idle footprint: free read/write buffers between records. */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	/* Clients log in with a signature on every connection; resumption would only add
	 * per-connection and cache memory on the server. */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_num_tickets(ctx, 0);
	if (load_pair(ctx, cert, key, err, errlen)) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

int
sp_tls_server_reload(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t errlen)
{
	/* Validate into a scratch context first so a bad file leaves `ctx` untouched. */
	SSL_CTX *probe = SSL_CTX_new(TLS_server_method());
	if (!probe) {
		tls_err(err, errlen, "cannot create TLS context", NULL);
		return SP_ETLS;
	}
	int rc = load_pair(probe, cert, key, err, errlen);
	SSL_CTX_free(probe);
	if (rc)
		return rc;
	return load_pair(ctx, cert, key, err, errlen);
}

SSL_CTX *
sp_tls_client_ctx(const char *ca_file, bool allow_tls12, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx) {
		tls_err(err, errlen, "cannot create TLS context", NULL);
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, allow_tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
		tls_err(err, errlen, "cannot load CA file", ca_file);
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	return ctx;
}
