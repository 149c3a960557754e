#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"

int
sp_nng_err(int rv)
{
	switch (rv) {
	case 0:
		return SP_OK;
	case NNG_ETIMEDOUT:
		return SP_ETIMEDOUT;
	case NNG_ECLOSED:
	case NNG_ECONNRESET:
	case NNG_ECONNREFUSED:
	case NNG_ECONNSHUT:
		return SP_ECLOSED;
	case NNG_ENOMEM:
		return SP_ENOMEM;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
		return SP_EINVAL;
	default:
		return SP_ENNG;
	}
}

static int
open_fail(nng_socket *s, int rv)
{
	nng_close(*s);
	return sp_nng_err(rv);
}

/* The process's TLS identity (sp_nng_tls_init). */
static struct {
	bool set;
	char *cert, *key, *peer_ca, *client_ca;
} tls_id;

/* sp_nng_require_tls */
static bool tls_required;

static char *
read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *buf = NULL;
	long n = -1;
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && n < (1L << 20)
	    && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
		if (fread(buf, 1, (size_t)n, f) == (size_t)n) {
			buf[n] = '\0';
		} else {
			free(buf);
			buf = NULL;
		}
	}
	fclose(f);
	return buf;
}

void
sp_nng_tls_fini(void)
{
	if (tls_id.key)
		memset(tls_id.key, 0, strlen(tls_id.key));
	free(tls_id.cert);
	free(tls_id.key);
	free(tls_id.peer_ca);
	free(tls_id.client_ca);
	memset(&tls_id, 0, sizeof(tls_id));
}

int
sp_nng_tls_init(const sp_nng_tls *tls)
{
	if (!tls || !tls->cert || !tls->key || !tls->peer_ca)
		return SP_EINVAL;
	sp_nng_tls_fini();
	tls_id.cert = read_file(tls->cert);
	tls_id.key = read_file(tls->key);
	tls_id.peer_ca = strdup(tls->peer_ca);
	tls_id.client_ca = strdup(tls->client_ca ? tls->client_ca : tls->peer_ca);
	if (!tls_id.peer_ca || !tls_id.client_ca) {
		sp_nng_tls_fini();
		return SP_ENOMEM;
	}
	if (!tls_id.cert || !tls_id.key) {
		sp_error("internal TLS: cannot read %s", !tls_id.cert ? tls->cert : tls->key);
		sp_nng_tls_fini();
		return SP_EIO;
	}
	tls_id.set = true;
	return SP_OK;
}

bool
sp_nng_url_tls(const char *url)
{
	return url && strncmp(url, "tls+", 4) == 0;
}

bool
sp_nng_url_plain(const char *url)
{
	return url && !sp_nng_url_tls(url) && strncmp(url, "inproc://", 9) != 0
	    && strncmp(url, "ipc://", 6) != 0;
}

void
sp_nng_require_tls(bool on)
{
	tls_required = on;
}

/* Whether a dial or listen on `url` may go ahead (logged when not). */
static bool
url_allowed(const char *url)
{
	if (!tls_required || !sp_nng_url_plain(url))
		return true;
	sp_warn_rl("internal link %s refused: not tls+tcp:// and --insecure-internal was not "
		   "given (docs/SECURITY.md)",
	    url);
	return false;
}

/* A TLS config with the process's identity, certificates required from the peer. */
static int
tls_config(nng_tls_mode mode, const char *peer_ca, nng_tls_config **out)
{
	if (!tls_id.set) {
		sp_error("a tls+tcp:// URL, but no certificate was set (the tier's TLS options)");
		return NNG_EINVAL;
	}
	nng_tls_config *cfg;
	int rv = nng_tls_config_alloc(&cfg, mode);
	if (rv)
		return rv;
	if ((rv = nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED))
	    || (rv = nng_tls_config_ca_file(cfg,
		    peer_ca ? peer_ca
			    : (mode == NNG_TLS_MODE_SERVER ? tls_id.client_ca : tls_id.peer_ca)))
	    || (rv = nng_tls_config_own_cert(cfg, tls_id.cert, tls_id.key, NULL))) {
		sp_error("internal TLS: %s", nng_strerror(rv));
		nng_tls_config_free(cfg);
		return rv;
	}
	*out = cfg;
	return 0;
}

static int
dial(nng_socket s, const char *url)
{
	if (!url_allowed(url))
		return NNG_EINVAL;
	if (!sp_nng_url_tls(url))
		return nng_dial(s, url, NULL, NNG_FLAG_NONBLOCK);
	nng_dialer d;
	nng_tls_config *cfg;
	int rv = tls_config(NNG_TLS_MODE_CLIENT, NULL, &cfg);
	if (rv)
		return rv;
	if ((rv = nng_dialer_create(&d, s, url)) == 0) {
		if ((rv = nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, cfg)) == 0)
			rv = nng_dialer_start(d, NNG_FLAG_NONBLOCK);
		if (rv)
			nng_dialer_close(d);
	}
	nng_tls_config_free(cfg); /* the dialer holds its own reference */
	return rv;
}

static int
listen_on(nng_socket s, const char *url, const char *peer_ca)
{
	if (!url_allowed(url))
		return NNG_EINVAL;
	if (!sp_nng_url_tls(url))
		return nng_listen(s, url, NULL, 0);
	nng_listener l;
	nng_tls_config *cfg;
	int rv = tls_config(NNG_TLS_MODE_SERVER, peer_ca, &cfg);
	if (rv)
		return rv;
	if ((rv = nng_listener_create(&l, s, url)) == 0) {
		if ((rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, cfg)) == 0)
			rv = nng_listener_start(l, 0);
		if (rv)
			nng_listener_close(l);
	}
	nng_tls_config_free(cfg);
	return rv;
}

int
sp_nng_dial(nng_socket s, const char *url)
{
	return sp_nng_err(dial(s, url));
}

int
sp_nng_listen(nng_socket s, const char *url, const char *peer_ca)
{
	return sp_nng_err(listen_on(s, url, peer_ca));
}

int
sp_nng_req_open(nng_socket *s, const char *url, int timeout_ms, int resend_ms)
{
	int rv = nng_req0_open(s);
	if (rv)
		return sp_nng_err(rv);
	if ((rv = nng_socket_set_ms(*s, NNG_OPT_RECVTIMEO, timeout_ms)) ||
	    (rv = nng_socket_set_ms(*s, NNG_OPT_SENDTIMEO, timeout_ms)) ||
	    (rv = nng_socket_set_ms(*s, NNG_OPT_RECONNMINT, 20)) ||
	    (rv = nng_socket_set_ms(*s, NNG_OPT_RECONNMAXT, 1000)) ||
	    (resend_ms > 0 && (rv = nng_socket_set_ms(*s, NNG_OPT_REQ_RESENDTIME, resend_ms))) ||
	    (rv = nng_socket_set_size(*s, NNG_OPT_RECVMAXSZ, sp_frame_limit_large() + 64)) ||
	    (rv = dial(*s, url)))
		return open_fail(s, rv);
	return SP_OK;
}

int
sp_nng_rep_listen_ca(nng_socket *s, const char *url, const char *peer_ca)
{
	int rv = nng_rep0_open(s);
	if (rv)
		return sp_nng_err(rv);
	if ((rv = nng_socket_set_size(*s, NNG_OPT_RECVMAXSZ, sp_frame_limit_large() + 64)) ||
	    (rv = listen_on(*s, url, peer_ca)))
		return open_fail(s, rv);
	return SP_OK;
}

int
sp_nng_rep_listen(nng_socket *s, const char *url)
{
	return sp_nng_rep_listen_ca(s, url, NULL);
}

int
sp_nng_push_open(nng_socket *s, const char *url, int send_timeout_ms)
{
	int rv = nng_push0_open(s);
	if (rv)
		return sp_nng_err(rv);
	/* A queue, so that a non-blocking send under load waits for the peer instead of
	 * failing whenever no pipe is ready at that instant. */
	if ((rv = nng_socket_set_ms(*s, NNG_OPT_SENDTIMEO, send_timeout_ms)) ||
	    (rv = nng_socket_set_int(*s, NNG_OPT_SENDBUF, SP_NNG_QUEUE)) ||
	    (rv = nng_socket_set_ms(*s, NNG_OPT_RECONNMINT, 20)) ||
	    (rv = nng_socket_set_ms(*s, NNG_OPT_RECONNMAXT, 1000)) ||
	    (rv = dial(*s, url)))
		return open_fail(s, rv);
	return SP_OK;
}

int
sp_nng_pull_listen(nng_socket *s, const char *url)
{
	int rv = nng_pull0_open(s);
	if (rv)
		return sp_nng_err(rv);
	if ((rv = nng_socket_set_size(*s, NNG_OPT_RECVMAXSZ, sp_frame_limit_large() + 64)) ||
	    (rv = nng_socket_set_int(*s, NNG_OPT_RECVBUF, SP_NNG_QUEUE)) ||
	    (rv = listen_on(*s, url, NULL)))
		return open_fail(s, rv);
	return SP_OK;
}

int
sp_nng_msg_from_frame(const sp_frame *f, nng_msg **out)
{
	msgpack_sbuffer sb;
	nng_msg *m;
	msgpack_sbuffer_init(&sb);
	int rc = sp_frame_pack(f, &sb);
	if (rc == SP_OK) {
		int rv = nng_msg_alloc(&m, 0);
		if (!rv && (rv = nng_msg_append(m, sb.data, sb.size)))
			nng_msg_free(m);
		rc = sp_nng_err(rv);
	}
	msgpack_sbuffer_destroy(&sb);
	if (rc == SP_OK)
		*out = m;
	return rc;
}

int
sp_nng_msg_decode(nng_msg *m, sp_frame *f)
{
	return sp_frame_decode(nng_msg_body(m), nng_msg_len(m), f);
}

/* One send-then-receive exchange on its own context; the aio carries the timeout. */
static int
ctx_exchange(nng_socket s, nng_msg **m)
{
	nng_ctx ctx;
	nng_aio *aio;
	nng_duration t = NNG_DURATION_DEFAULT;
	int rv;

	nng_socket_get_ms(s, NNG_OPT_RECVTIMEO, &t);
	if ((rv = nng_aio_alloc(&aio, NULL, NULL)))
		return rv;
	if ((rv = nng_ctx_open(&ctx, s))) {
		nng_aio_free(aio);
		return rv;
	}
	nng_aio_set_timeout(aio, t);
	nng_aio_set_msg(aio, *m);
	nng_ctx_send(ctx, aio);
	nng_aio_wait(aio);
	if ((rv = nng_aio_result(aio)) == 0) {
		*m = NULL; /* the send took it */
		nng_ctx_recv(ctx, aio);
		nng_aio_wait(aio);
		if ((rv = nng_aio_result(aio)) == 0)
			*m = nng_aio_get_msg(aio);
	}
	nng_ctx_close(ctx);
	nng_aio_free(aio);
	return rv;
}

int
sp_nng_call(nng_socket s, const sp_frame *req, nng_msg **rep_msg, sp_frame *rep)
{
	nng_msg *m = NULL;
	int rc;

	if ((rc = sp_nng_msg_from_frame(req, &m)))
		return rc;
	int rv = ctx_exchange(s, &m);
	if (rv) {
		if (m)
			nng_msg_free(m);
		return sp_nng_err(rv);
	}
	if ((rc = sp_nng_msg_decode(m, rep))) {
		nng_msg_free(m);
		return rc;
	}
	*rep_msg = m;
	if (rep->type == SP_T_ERROR) {
		int64_t code = sp_frame_i64(rep, SP_F_CODE);
		return code < 0 ? (int)code : SP_EPROTO;
	}
	return SP_OK;
}

int
sp_nng_send_frame(nng_socket s, const sp_frame *f)
{
	nng_msg *m;
	int rc = sp_nng_msg_from_frame(f, &m);
	if (rc)
		return rc;
	int rv = nng_sendmsg(s, m, 0);
	if (rv) {
		nng_msg_free(m);
		return sp_nng_err(rv);
	}
	return SP_OK;
}

/* ERROR{code, reason}: the reason is left out when NULL, and sent empty when too long. */
static void
error_frame(sp_frame *f, uint64_t id, bool has_id, int code, const char *reason)
{
	sp_frame_init(f, SP_T_ERROR, id, has_id);
	sp_frame_set_i64(f, SP_F_CODE, code);
	if (reason)
		sp_frame_set_str(f, SP_F_REASON, strlen(reason) > 256 ? "" : reason);
}

int
sp_nng_error_msg(uint64_t id, bool has_id, int code, const char *reason, nng_msg **out)
{
	sp_frame f;
	error_frame(&f, id, has_id, code, reason);
	return sp_nng_msg_from_frame(&f, out);
}

int
sp_nng_send_error(nng_socket s, uint64_t id, bool has_id, int code, const char *reason)
{
	sp_frame f;
	error_frame(&f, id, has_id, code, reason);
	return sp_nng_send_frame(s, &f);
}
