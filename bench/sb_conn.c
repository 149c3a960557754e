/* One benchmark client connection: a non-blocking connect from one of the 127.0.0.x
 * source addresses (so more than one port range of connections can reach one server
 * port), TLS 1.3 through a libevent OpenSSL bufferevent with the CA checked, the login,
 * and cumulative ACKs of everything delivered. Scenarios see events through one callback. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "bench/sb.h"
#include "client/spc_conn.h"
#include "sp_error.h"
#include "sp_framer.h"
#include "sp_proto.h"
#include "sp_tls.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define CONNECT_TIMEOUT_S 30

enum { ST_IDLE, ST_CONNECTING, ST_TLS, ST_HELLO, ST_AUTH, ST_OPEN };

int
sb_net_init(sb_net *net, sb_stats *st)
{
	char err[512];
	memset(net, 0, sizeof(*net));
	net->st = st;
	if (!(net->base = event_base_new()))
		return SP_ENOMEM;
	if (!(net->tls = sp_tls_client_ctx(sb_o.ca, false, err, sizeof(err)))) {
		fprintf(stderr, "spbench: %s\n", err);
		event_base_free(net->base);
		net->base = NULL;
		return SP_ETLS;
	}
	/* Idle connections give their 16 KiB+ record buffers back. */
	SSL_CTX_set_mode(net->tls, SSL_MODE_RELEASE_BUFFERS);
	return SP_OK;
}

void
sb_net_fini(sb_net *net)
{
	if (net->tls)
		SSL_CTX_free(net->tls);
	if (net->base)
		event_base_free(net->base);
	memset(net, 0, sizeof(*net));
}

size_t
sb_conn_outq(const sb_conn *c)
{
	return c->bev ? evbuffer_get_length(bufferevent_get_output(c->bev)) : 0;
}

void
sb_conn_close(sb_conn *c)
{
	if (c->cev) {
		event_free(c->cev);
		c->cev = NULL;
	}
	if (c->bev) {
		bufferevent_free(c->bev); /* closes the fd and frees the SSL */
		c->bev = NULL;
		c->fd = -1;
	} else if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	c->state = ST_IDLE;
	c->open = false;
}

/* The connection failed or the server closed it: tell the scenario once. */
static void
lost(sb_conn *c)
{
	sb_stats *st = c->net->st;
	if (c->state == ST_OPEN)
		st->closed++;
	else if (c->state == ST_HELLO || c->state == ST_AUTH)
		st->login_fail++;
	else
		st->conn_fail++;
	sb_conn_close(c);
	c->cb(c, SB_EV_CLOSED, NULL);
}

int
sb_conn_send(sb_conn *c, const sp_frame *f)
{
	if (!c->bev || c->state < ST_HELLO)
		return SP_ECLOSED;
	return sp_framer_write(bufferevent_get_output(c->bev), f);
}

static void
send_auth(sb_conn *c, const sp_frame *ch)
{
	const sb_account *a = c->acct;
	uint8_t sig[SP_LOGIN_SIG_LEN];
	sp_login_sign(sig, sp_frame_bin(ch, SP_F_NONCE).p, a->user, a->device, a->sk);
	sp_frame f;
	sp_frame_init(&f, SP_T_AUTH, 2, true);
	sp_frame_set_u64(&f, SP_F_USER, a->user);
	sp_frame_set_u64(&f, SP_F_DEVICE, a->device);
	sp_frame_set_bin(&f, SP_F_SIG, sig, 64);
	sp_framer_write(bufferevent_get_output(c->bev), &f);
	c->state = ST_AUTH;
}

/* One frame; false if the connection was closed while handling it. */
static bool
on_frame(sb_conn *c, const sp_frame *f)
{
	sb_stats *st = c->net->st;
	switch (c->state) {
	case ST_HELLO:
		if (f->type != SP_T_CHALLENGE || !sp_frame_has(f, SP_F_NONCE)) {
			lost(c);
			return false;
		}
		send_auth(c, f);
		return true;
	case ST_AUTH:
		if (f->type != SP_T_AUTH_OK) {
			lost(c);
			return false;
		}
		c->state = ST_OPEN;
		c->open = true;
		st->conns_ready++;
		uint64_t now = sb_now_ns();
		st->t_last_ready = now;
		sb_hist_add(&st->lat_login, (now - c->t_start) / 1000);
		c->cb(c, SB_EV_READY, f);
		return c->bev != NULL;
	default:
		break;
	}
	if (f->type == SP_T_DELIVER) {
		uint64_t seq = sp_frame_u64(f, SP_F_SEQ);
		if (seq > c->last_seq)
			c->last_seq = seq;
	}
	if (f->type == SP_T_QUEUE_EMPTY) {
		c->empty = true;
		c->cb(c, SB_EV_EMPTY, f);
	} else {
		c->cb(c, SB_EV_FRAME, f);
	}
	return c->bev != NULL;
}

static void
on_read(struct bufferevent *bev, void *arg)
{
	sb_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	for (;;) {
		sp_frame f;
		size_t used = 0;
		int rc = sp_framer_next(in, sp_frame_limit_large(), &f, &used);
		if (rc == SP_EAGAIN)
			break;
		if (rc) {
			if (!used) {
				lost(c);
				return;
			}
			sp_framer_consume(in, used);
			continue;
		}
		bool alive = on_frame(c, &f);
		sp_frame_fini(&f);
		if (!alive || c->bev != bev)
			return; /* closed in a callback: `in` belongs to a freed bufferevent */
		sp_framer_consume(in, used);
	}
	/* One cumulative ACK per read burst covers every DELIVER in it. */
	if (c->state == ST_OPEN && c->last_seq > c->acked_seq) {
		sp_frame a;
		sp_frame_init(&a, SP_T_ACK, 0, false);
		sp_frame_set_u64(&a, SP_F_UPTO_SEQ, c->last_seq);
		sp_framer_write(bufferevent_get_output(c->bev), &a);
		c->acked_seq = c->last_seq;
		c->net->st->acks++;
	}
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	sb_conn *c = arg;
	if (what & BEV_EVENT_CONNECTED) {
		c->net->st->conns_tls++;
		if (!c->acct) {
			c->state = ST_OPEN;
			c->open = true;
			c->cb(c, SB_EV_TLS, NULL);
			return;
		}
		c->state = ST_HELLO;
		sp_frame f;
		sp_frame_init(&f, SP_T_HELLO, 1, true);
		sp_frame_set_u64(&f, SP_F_VERSION, SP_PROTO_VERSION);
		sp_framer_write(bufferevent_get_output(c->bev), &f);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
		while (ERR_get_error())
			;
		lost(c);
	}
}

static void
on_connect(evutil_socket_t fd, short what, void *arg)
{
	sb_conn *c = arg;
	int e = 0;
	socklen_t el = sizeof(e);
	event_free(c->cev);
	c->cev = NULL;
	if ((what & EV_TIMEOUT) || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) || e) {
		lost(c);
		return;
	}
	SSL *ssl = SSL_new(c->net->tls);
	if (!ssl) {
		lost(c);
		return;
	}
	X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), sb_o.targets[c->target].host);
	c->bev = bufferevent_openssl_socket_new(c->net->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
						BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		SSL_free(ssl);
		lost(c);
		return;
	}
	c->state = ST_TLS;
	bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

int
sb_conn_start(sb_conn *c, sb_net *net, int target, const sb_account *acct, sb_conn_cb cb, void *user)
{
	size_t idx = c->idx;
	int tag = c->tag;
	memset(c, 0, sizeof(*c));
	c->idx = idx;
	c->tag = tag;
	c->net = net;
	c->acct = acct;
	c->cb = cb;
	c->user = user;
	c->target = target;
	c->fd = -1;
	c->state = ST_CONNECTING;
	c->t_start = sb_now_ns();
	if (!net->st->t_first_connect)
		net->st->t_first_connect = c->t_start;
	const sb_target *t = &sb_o.targets[target];
	struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)t->port)};
	if (inet_pton(AF_INET, t->host, &dst.sin_addr) != 1)
		return SP_EINVAL;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		c->state = ST_IDLE;
		net->st->conn_fail++;
		return errno == EMFILE || errno == ENFILE ? SP_ELIMIT : SP_EIO;
	}
	c->fd = fd;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (sb_o.sources > 0 && ntohl(dst.sin_addr.s_addr) >> 24 == 127) {
		/* The port is picked at connect time per destination, not at bind. */
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		struct sockaddr_in src = {.sin_family = AF_INET};
		src.sin_addr.s_addr = htonl((127u << 24) | (10u + net->next_src++ % (unsigned)sb_o.sources));
		if (bind(fd, (struct sockaddr *)&src, sizeof(src))) {
			sb_conn_close(c);
			net->st->conn_fail++;
			return SP_EIO;
		}
	}
	if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) && errno != EINPROGRESS) {
		sb_conn_close(c);
		net->st->conn_fail++;
		return SP_ECLOSED;
	}
	c->cev = event_new(net->base, fd, EV_WRITE, on_connect, c);
	struct timeval tv = {CONNECT_TIMEOUT_S, 0};
	if (!c->cev || event_add(c->cev, &tv)) {
		sb_conn_close(c);
		net->st->conn_fail++;
		return SP_ENOMEM;
	}
	return SP_OK;
}
