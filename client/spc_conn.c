#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "client/spc_conn.h"
#include "sp_error.h"
#include "sp_framer.h"
#include "sp_proto.h"
#include "sp_time.h"
#include "sp_tls.h"

struct spc_conn {
	int fd;
	SSL_CTX *ctx;
	SSL *ssl;
	uint8_t *buf; /* received bytes; a frame handed out sits at the front */
	size_t len, cap, handed; /* handed: bytes of the frame last returned (dropped next time) */
	uint64_t auth_ts, exp_after; /* AUTH_OK's server_ts and exp_after (0: not said) */
};

/* One address: a non-blocking connect bounded by timeout_ms. */
static int
connect_addr(const struct addrinfo *ai, const char *host, int port, int timeout_ms, char *err,
	     size_t errlen)
{
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
	if (rc && errno == EINPROGRESS) {
		struct pollfd p = {fd, POLLOUT, 0};
		int e = 0;
		socklen_t el = sizeof(e);
		if (poll(&p, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) || e) {
			snprintf(err, errlen, "connect %s:%d: %s", host, port, e ? strerror(e) : "timed out");
			close(fd);
			return -1;
		}
	} else if (rc) {
		snprintf(err, errlen, "connect %s:%d: %s", host, port, strerror(errno));
		close(fd);
		return -1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* Connects to host:port; a name with several addresses is tried address by address
 * (timeout_ms each), so one name can stand for several routers or servers. */
static int
connect_tcp(const char *host, int port, int timeout_ms, char *err, size_t errlen)
{
	struct addrinfo hints = {0}, *res;
	char ps[16];
	snprintf(ps, sizeof(ps), "%d", port);
	hints.ai_socktype = SOCK_STREAM;
	int g = getaddrinfo(host, ps, &hints, &res);
	if (g) {
		snprintf(err, errlen, "%s: %s", host, gai_strerror(g));
		return -1;
	}
	int fd = -1;
	for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
		fd = connect_addr(ai, host, port, timeout_ms, err, errlen);
	freeaddrinfo(res);
	return fd;
}

/* Waits until the socket is readable/writable as SSL asks; false on timeout. */
static bool
wait_io(spc_conn *c, int ssl_err, uint64_t deadline_ms)
{
	uint64_t now = sp_time_ms();
	if (now >= deadline_ms)
		return false;
	struct pollfd p = {c->fd, ssl_err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, 0};
	return poll(&p, 1, (int)(deadline_ms - now)) == 1;
}

int
spc_conn_fd(const spc_conn *c)
{
	return c->fd;
}

void
spc_conn_close(spc_conn *c)
{
	if (!c)
		return;
	if (c->ssl) {
		SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
	}
	SSL_CTX_free(c->ctx);
	if (c->fd >= 0)
		close(c->fd);
	free(c->buf);
	free(c);
}

int
spc_conn_open(const char *host, int port, const char *ca_file, int timeout_ms, spc_conn **out,
	      char *err, size_t errlen)
{
	uint64_t deadline = sp_time_ms() + (uint64_t)timeout_ms;
	spc_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(err, errlen, "out of memory");
		return SP_ENOMEM;
	}
	c->fd = -1;
	if (!(c->ctx = sp_tls_client_ctx(ca_file, false, err, errlen))) {
		spc_conn_close(c);
		return SP_ETLS;
	}
	if ((c->fd = connect_tcp(host, port, timeout_ms, err, errlen)) < 0) {
		spc_conn_close(c);
		return SP_ECLOSED;
	}
	c->ssl = SSL_new(c->ctx);
	if (!c->ssl) {
		snprintf(err, errlen, "out of memory");
		spc_conn_close(c);
		return SP_ENOMEM;
	}
	SSL_set_fd(c->ssl, c->fd);
	/* Check the certificate names the host we dialled (IP or DNS name). */
	X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
	struct in_addr a4;
	if (inet_pton(AF_INET, host, &a4) == 1)
		X509_VERIFY_PARAM_set1_ip_asc(vp, host);
	else
		X509_VERIFY_PARAM_set1_host(vp, host, 0);
	SSL_set_tlsext_host_name(c->ssl, host);
	for (;;) {
		int r = SSL_connect(c->ssl);
		if (r == 1)
			break;
		int e = SSL_get_error(c->ssl, r);
		if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && wait_io(c, e, deadline))
			continue;
		long v = SSL_get_verify_result(c->ssl);
		unsigned long oe = ERR_get_error();
		char reason[256] = "timed out";
		if (v != X509_V_OK)
			snprintf(reason, sizeof(reason), "certificate: %s", X509_verify_cert_error_string(v));
		else if (oe)
			ERR_error_string_n(oe, reason, sizeof(reason));
		ERR_clear_error();
		snprintf(err, errlen, "TLS handshake with %s:%d failed: %s", host, port, reason);
		spc_conn_close(c);
		return SP_ETLS;
	}
	*out = c;
	return SP_OK;
}

int
spc_conn_send(spc_conn *c, const sp_frame *f)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	int rc = sp_frame_pack_prefixed(f, &sb);
	size_t off = 0;
	uint64_t deadline = sp_time_ms() + 30000;
	while (rc == SP_OK && off < sb.size) {
		int w = SSL_write(c->ssl, sb.data + off, (int)(sb.size - off));
		if (w > 0) {
			off += (size_t)w;
			continue;
		}
		int e = SSL_get_error(c->ssl, w);
		if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && wait_io(c, e, deadline))
			continue;
		rc = e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL ? SP_ECLOSED : SP_EIO;
	}
	msgpack_sbuffer_destroy(&sb);
	return rc;
}

int
spc_conn_recv(spc_conn *c, int timeout_ms, sp_frame *f)
{
	uint64_t deadline = sp_time_ms() + (uint64_t)timeout_ms;
	if (c->handed) {
		memmove(c->buf, c->buf + c->handed, c->len - c->handed);
		c->len -= c->handed;
		c->handed = 0;
	}
	for (;;) {
		size_t body;
		int rc = sp_framer_split(c->buf, c->len, sp_frame_limit_large(), &body);
		if (rc == SP_OK) {
			c->handed = 4 + body;
			return sp_frame_decode(c->buf + 4, body, f);
		}
		if (rc != SP_EAGAIN)
			return rc;
		if (c->cap - c->len < 16384) {
			size_t ncap = c->cap ? c->cap * 2 : 65536;
			uint8_t *nb = realloc(c->buf, ncap);
			if (!nb)
				return SP_ENOMEM;
			c->buf = nb;
			c->cap = ncap;
		}
		int r = SSL_read(c->ssl, c->buf + c->len, (int)(c->cap - c->len));
		if (r > 0) {
			c->len += (size_t)r;
			continue;
		}
		int e = SSL_get_error(c->ssl, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			if (!wait_io(c, e, deadline))
				return SP_ETIMEDOUT;
			continue;
		}
		ERR_clear_error();
		return SP_ECLOSED;
	}
}

/* Receives the reply to a request, failing on anything but `want` or ERROR. */
static int
expect(spc_conn *c, unsigned want, sp_frame *f)
{
	int rc = spc_conn_recv(c, 10000, f);
	if (rc)
		return rc;
	if (f->type == want)
		return SP_OK;
	rc = f->type == SP_T_ERROR ? (int)sp_frame_i64(f, SP_F_CODE) : SP_EPROTO;
	sp_frame_fini(f);
	return rc < 0 ? rc : SP_EPROTO;
}

int
spc_conn_login(spc_conn *c, uint64_t user, uint64_t device,
	       const uint8_t auth_sk[crypto_sign_SECRETKEYBYTES], uint64_t last_seq, uint64_t *conn_epoch)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_HELLO, 1, true);
	sp_frame_set_u64(&f, SP_F_VERSION, SP_PROTO_VERSION);
	int rc = spc_conn_send(c, &f);
	if (rc || (rc = expect(c, SP_T_CHALLENGE, &f)))
		return rc;
	uint8_t sig[SP_LOGIN_SIG_LEN];
	sp_login_sign(sig, sp_frame_bin(&f, SP_F_NONCE).p, user, device, auth_sk);
	sp_frame_fini(&f);
	sp_frame_init(&f, SP_T_AUTH, 2, true);
	sp_frame_set_u64(&f, SP_F_USER, user);
	sp_frame_set_u64(&f, SP_F_DEVICE, device);
	sp_frame_set_bin(&f, SP_F_SIG, sig, 64);
	if (last_seq)
		sp_frame_set_u64(&f, SP_F_LAST_SEQ, last_seq);
	if ((rc = spc_conn_send(c, &f)) || (rc = expect(c, SP_T_AUTH_OK, &f)))
		return rc;
	if (conn_epoch)
		*conn_epoch = sp_frame_u64(&f, SP_F_CONN_EPOCH);
	c->auth_ts = sp_frame_u64(&f, SP_F_SERVER_TS);
	c->exp_after = sp_frame_u64(&f, SP_F_EXP_AFTER);
	sp_frame_fini(&f);
	return SP_OK;
}

void
spc_conn_login_info(const spc_conn *c, uint64_t *server_ts, uint64_t *exp_after)
{
	*server_ts = c->auth_ts;
	*exp_after = c->exp_after;
}

int
spc_hostport(const char *s, size_t len, char *host, size_t hostcap, int *port)
{
	const char *colon = len ? memrchr(s, ':', len) : NULL;
	if (!colon || colon == s || (size_t)(colon - s) >= hostcap)
		return SP_EINVAL;
	char ps[8];
	size_t pl = len - (size_t)(colon + 1 - s);
	if (pl == 0 || pl >= sizeof(ps))
		return SP_EINVAL;
	memcpy(ps, colon + 1, pl);
	ps[pl] = '\0';
	char *end;
	long p = strtol(ps, &end, 10);
	if (*end || p <= 0 || p > 65535)
		return SP_EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	*port = (int)p;
	return SP_OK;
}

/* Copies one {"host","port"} object into *sv; false when it is not one. */
static bool
server_from_json(json_t *o, spc_server *sv)
{
	const char *h = NULL;
	json_int_t jp = 0;
	if (json_unpack(o, "{s:s, s:I}", "host", &h, "port", &jp) || !h[0] ||
	    strlen(h) >= sizeof(sv->host) || jp <= 0 || jp > 65535)
		return false;
	strcpy(sv->host, h);
	sv->port = (int)jp;
	return true;
}

/* GET /where from one router. */
static int
where_one(const char *rhost, int rport, spc_server *sv, size_t cap, size_t *n, char *err,
	  size_t errlen)
{
	int fd = connect_tcp(rhost, rport, SPC_ROUTER_TIMEOUT_MS, err, errlen);
	if (fd < 0)
		return SP_EUNAVAIL;
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	struct timeval tv = {SPC_ROUTER_TIMEOUT_MS / 1000, (SPC_ROUTER_TIMEOUT_MS % 1000) * 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	char req[512], resp[8192];
	int rn = snprintf(req, sizeof(req), "GET /where HTTP/1.0\r\nHost: %s:%d\r\n\r\n", rhost, rport);
	size_t got = 0;
	if (write(fd, req, (size_t)rn) != rn) {
		close(fd);
		snprintf(err, errlen, "router %s:%d: write failed", rhost, rport);
		return SP_EUNAVAIL;
	}
	ssize_t r;
	while (got < sizeof(resp) - 1 && (r = read(fd, resp + got, sizeof(resp) - 1 - got)) > 0)
		got += (size_t)r;
	close(fd);
	resp[got] = '\0';
	const char *body = strstr(resp, "\r\n\r\n");
	if (strncmp(resp, "HTTP/1.", 7) != 0 || strncmp(resp + 8, " 200", 4) != 0 || !body) {
		snprintf(err, errlen, "router %s:%d has no connsrv to offer", rhost, rport);
		return SP_EUNAVAIL;
	}
	json_error_t jerr;
	json_t *j = json_loads(body + 4, 0, &jerr);
	if (!j || !server_from_json(j, &sv[0])) {
		snprintf(err, errlen, "router %s:%d: bad reply", rhost, rport);
		json_decref(j);
		return SP_EPROTO;
	}
	*n = 1;
	/* The other connsrvs (routers before several-router support send none). */
	json_t *all = json_object_get(j, "servers"), *o;
	size_t i;
	json_array_foreach(all, i, o)
	{
		if (*n >= cap)
			break;
		spc_server x;
		if (!server_from_json(o, &x) ||
		    (strcmp(x.host, sv[0].host) == 0 && x.port == sv[0].port))
			continue;
		sv[(*n)++] = x;
	}
	json_decref(j);
	return SP_OK;
}

int
spc_bootstrap_list(const char *routers, spc_server *servers, size_t cap, size_t *n,
		   char *answered, size_t answered_cap, char *err, size_t errlen)
{
	char rhost[256];
	int rport, rc = SP_EINVAL;
	assert(cap >= 1);
	*n = 0;
	const char *p = routers;
	for (;;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		if (spc_hostport(p, len, rhost, sizeof(rhost), &rport)) {
			snprintf(err, errlen, "router address must be host:port[,host:port...], got '%s'",
				 routers);
			return SP_EINVAL;
		}
		rc = where_one(rhost, rport, servers, cap, n, err, errlen);
		if (rc == SP_OK && answered && answered_cap)
			snprintf(answered, answered_cap, "%.*s", (int)len, p);
		if (rc == SP_OK || !comma)
			return rc == SP_OK ? SP_OK : SP_EUNAVAIL;
		p = comma + 1;
	}
}

int
spc_bootstrap(const char *router, char *host, size_t hostcap, int *port, char *err, size_t errlen)
{
	spc_server sv[1];
	size_t n;
	int rc = spc_bootstrap_list(router, sv, 1, &n, NULL, 0, err, errlen);
	if (rc)
		return rc;
	if (strlen(sv[0].host) >= hostcap) {
		snprintf(err, errlen, "router: host name too long");
		return SP_EPROTO;
	}
	strcpy(host, sv[0].host);
	*port = sv[0].port;
	return SP_OK;
}
