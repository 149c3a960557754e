/*
 * Client connections: TLS accept, the frame loop, dispatch from the frame catalogue,
 * bounded buffers, the registry of logged-in devices, and deferred free (a closing session
 * is freed by the reaper on the loop, once no server call is outstanding for it).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>

#include "connsrv/deliver.h"
#include "connsrv/internal.h"
#include "connsrv/revoke.h"
#include "connsrv/presence.h"
#include "connsrv/typing.h"
#include "connsrv/login.h"
#include "connsrv/proxy.h"
#include "connsrv/receipts.h"
#include "connsrv/send.h"
#include "sp_error.h"
#include "sp_framer.h"
#include "sp_log.h"
#include "sp_time.h"

/* Sessions live on one of three lists: srv->sessions (open), srv->closed (closing: still
 * flushing its last frames, or a server call is outstanding for it) and srv->reap (nothing
 * refers to it any more). The reap list is emptied by an event made active when a session
 * joins it, so a session is freed from the loop, never inside a callback that touched it. */
static void
list_add(cs_session **head, cs_session *s)
{
	s->prev = NULL;
	s->next = *head;
	if (*head)
		(*head)->prev = s;
	*head = s;
}

static void
list_del(cs_session **head, cs_session *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		*head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
}

static void
session_free(cs_session *s)
{
	if (s->login_ev)
		event_free(s->login_ev);
	if (s->bev)
		bufferevent_free(s->bev);
	free(s);
}

/* A closing session that no flush and no server call holds any more goes to the reaper. */
static void
reap_maybe(cs_session *s)
{
	cs_server *srv = s->srv;
	if (!s->closing || s->flush_close || s->inflight > 0 || s->reaping)
		return;
	s->reaping = true;
	list_del(&srv->closed, s);
	list_add(&srv->reap, s);
	event_active(srv->reap_ev, EV_READ, 0);
}

static void
on_reap(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_server *srv = arg;
	cs_session *s;
	while ((s = srv->reap)) {
		SP_ASSERT(s->closing && s->inflight == 0 && !s->flush_close);
		list_del(&srv->reap, s);
		session_free(s);
	}
}

int
cs_session_start(cs_server *srv)
{
	srv->reap_ev = event_new(srv->base, -1, 0, on_reap, srv);
	return srv->reap_ev ? SP_OK : SP_ENOMEM;
}

void
cs_session_stop(cs_server *srv)
{
	cs_session *s;
	/* Shutdown: every server and Redis call has completed (their owners are freed), so
	 * nothing can refer to a session any more. */
	while ((s = srv->closed)) {
		list_del(&srv->closed, s);
		session_free(s);
	}
	on_reap(-1, 0, srv);
	if (srv->reap_ev)
		event_free(srv->reap_ev);
	srv->reap_ev = NULL;
	cs_admit_free(srv->admit);
	srv->admit = NULL;
}

bool
cs_session_output_full(const cs_session *s)
{
	return s->closing || evbuffer_get_length(bufferevent_get_output(s->bev)) >=
				     (size_t)s->srv->cfg.out_pause_bytes;
}

/* The socket closes at once (libevent defers freeing a bufferevent inside its own callback
 * until the callback returns); the session's memory waits for the reaper. */
static void
close_socket(cs_session *s)
{
	bufferevent_free(s->bev);
	s->bev = NULL;
}

/* A session closed with flush: its last frames are written (or the socket died). */
static void
flush_done(cs_session *s)
{
	close_socket(s);
	s->flush_close = false;
	s->srv->nflushing--;
	reap_maybe(s);
}

/* The connection no longer counts against its source's unauthenticated connections. */
static void
admit_release(cs_session *s)
{
	if (!s->admit_held)
		return;
	cs_admit_release(s->srv->admit, &s->src);
	s->admit_held = false;
}

/* Logged in or closing: the pre-login deadline and frame limit end. */
static void
prelogin_end(cs_session *s)
{
	admit_release(s);
	if (s->login_ev)
		event_del(s->login_ev);
}

/* The device no longer reaches this session: out of the registry, its route released. */
static void
logout(cs_session *s)
{
	cs_server *srv = s->srv;
	cs_session *cur;
	HASH_FIND(hh, srv->by_device, &s->device, sizeof(s->device), cur);
	if (cur == s)
		HASH_DEL(srv->by_device, s);
	cs_routes_release(srv->routes, s->device, srv->pull_url, s->conn_epoch);
	cs_presence_offline(s);
	s->st = CS_ST_HELLO;
}

static void
kick(cs_session *old, const char *why)
{
	sp_frame k;
	sp_frame_init(&k, SP_T_KICKED, 0, false);
	sp_frame_set_str(&k, SP_F_REASON, why);
	cs_session_send(old, &k);
	sp_metric_inc(old->srv->m.kicks);
	cs_session_close(old, true);
}

void
cs_session_kick(cs_server *srv, uint64_t device, uint64_t conn_epoch, const char *why)
{
	cs_session *old;
	HASH_FIND(hh, srv->by_device, &device, sizeof(device), old);
	if (old && old->conn_epoch == conn_epoch)
		kick(old, why ? why : "logged in elsewhere");
}

void
cs_session_bind(cs_session *s)
{
	cs_server *srv = s->srv;
	cs_session *old;
	HASH_FIND(hh, srv->by_device, &s->device, sizeof(s->device), old);
	if (old) {
		HASH_DEL(srv->by_device, old);
		old->st = CS_ST_HELLO; /* it no longer owns the route */
		kick(old, "logged in elsewhere");
	}
	HASH_ADD(hh, srv->by_device, device, sizeof(s->device), s);
	s->st = CS_ST_READY;
	s->verified_ms = sp_mono_ms(); /* keysrv just vouched for the device's key */
	prelogin_end(s);
	bufferevent_setwatermark(s->bev, EV_READ, 0, sp_frame_limit_large() + 4);
}

void
cs_session_logged_in(cs_session *s, uint64_t last_seq)
{
	cs_deliver_login(s, last_seq);
	cs_presence_online(s);
}

void
cs_session_close(cs_session *s, bool flush)
{
	if (s->closing) {
		if (!flush && s->flush_close)
			flush_done(s);
		return;
	}
	s->closing = true;
	cs_server *srv = s->srv;
	prelogin_end(s);
	cs_presence_session_gone(s);
	if (s->st == CS_ST_READY)
		logout(s);
	if (srv->check_cursor == s)
		srv->check_cursor = s->next;
	list_del(&srv->sessions, s);
	list_add(&srv->closed, s);
	srv->nconns--;
	sp_metric_gauge_add(srv->m.conns, -1);
	sp_cluster_set_conns(srv->cluster, srv->nconns);
	if (flush && evbuffer_get_length(bufferevent_get_output(s->bev)) > 0) {
		/* Let the queued ERROR/KICKED/DRAIN reach the client; on_write ends the flush. */
		struct timeval limit = {5, 0};
		s->flush_close = true;
		srv->nflushing++;
		bufferevent_disable(s->bev, EV_READ);
		bufferevent_set_timeouts(s->bev, NULL, &limit);
		return;
	}
	close_socket(s);
	reap_maybe(s);
}

int
cs_session_send(cs_session *s, const sp_frame *f)
{
	if (s->closing)
		return SP_ECLOSED;
	SP_ASSERT(s->bev != NULL);
	struct evbuffer *out = bufferevent_get_output(s->bev);
	if (evbuffer_get_length(out) > (size_t)s->srv->cfg.out_max_bytes) {
		/* Redis-style: a client that does not read its replies is cut off. */
		sp_warn("%s: output buffer over %lld bytes, disconnecting", s->peer,
			s->srv->cfg.out_max_bytes);
		cs_session_close(s, false);
		return SP_EFULL;
	}
	int rc = sp_framer_write(out, f);
	if (rc == SP_OK)
		sp_metric_inc(s->srv->m.frames_out);
	return rc;
}

void
cs_session_error(cs_session *s, uint64_t id, bool has_id, int code, const char *reason,
		 const uint8_t *msg_id)
{
	sp_frame e;
	sp_frame_init(&e, SP_T_ERROR, id, has_id);
	sp_frame_set_i64(&e, SP_F_CODE, code);
	sp_frame_set_str(&e, SP_F_REASON, reason ? reason : sp_strerror(code));
	if (msg_id)
		sp_frame_set_bin(&e, SP_F_MSG_ID, msg_id, 16);
	sp_metric_inc(s->srv->m.errors);
	cs_session_send(s, &e);
}

void
cs_session_call_begin(cs_session *s)
{
	SP_ASSERT(!s->reaping);
	if (++s->inflight >= CS_MAX_INFLIGHT && !s->read_paused && !s->closing) {
		s->read_paused = true;
		bufferevent_disable(s->bev, EV_READ);
	}
}

static void process_input(cs_session *s);
static void login_deadline_arm(cs_session *s);

void
cs_session_call_end(cs_session *s)
{
	SP_ASSERT(s->inflight > 0);
	s->inflight--;
	if (s->closing) {
		reap_maybe(s);
		return;
	}
	if (s->read_paused && s->inflight < CS_MAX_INFLIGHT / 2) {
		s->read_paused = false;
		bufferevent_enable(s->bev, EV_READ);
		/* Frames may already be buffered: handle them without waiting for more bytes. */
		process_input(s);
	}
}

/* Token bucket for the catalogue's SP_FL_RATED frames; returns 0 or the ms to wait. */
static uint64_t
rate_take(cs_session *s)
{
	cs_cfg *c = &s->srv->cfg;
	uint64_t now = sp_time_ms();
	s->tokens += (double)(now - s->tokens_ms) * (double)c->send_rate / 1000.0;
	if (s->tokens > (double)c->send_burst)
		s->tokens = (double)c->send_burst;
	s->tokens_ms = now;
	if (s->tokens >= 1.0) {
		s->tokens -= 1.0;
		return 0;
	}
	return (uint64_t)((1.0 - s->tokens) * 1000.0 / (double)c->send_rate) + 1;
}

/* Takes a token, or answers the frame ERROR{SP_ERATELIMIT, retry_after}. */
static bool
rate_admit(cs_session *s, const sp_frame *f)
{
	uint64_t wait = rate_take(s);
	if (!wait)
		return true;
	sp_frame e;
	sp_frame_init(&e, SP_T_ERROR, f->id, f->has_id);
	sp_frame_set_i64(&e, SP_F_CODE, SP_ERATELIMIT);
	sp_frame_set_str(&e, SP_F_REASON, "rate_limited");
	sp_frame_set_u64(&e, SP_F_RETRY_AFTER, wait);
	if (sp_frame_has(f, SP_F_MSG_ID))
		sp_frame_set_bin(&e, SP_F_MSG_ID, sp_frame_bin(f, SP_F_MSG_ID).p, 16);
	sp_metric_inc(s->srv->m.rate_limited);
	cs_session_send(s, &e);
	return false;
}

/* The abuse limits in Redis (limits.h): takes the frame's costs, or answers it
 * ERROR{SP_ERATELIMIT, "limit: <kind>", retry_after}. */
static bool
limits_admit(cs_session *s, const sp_frame *f)
{
	cs_limit_ask asks[4];
	size_t n = s->srv->limits ? cs_limits_asks(f, s->user, &s->src, asks) : 0, which = 0;
	uint64_t wait = n ? cs_limits_take(s->srv->limits, asks, n, &which) : 0;
	if (!wait)
		return true;
	char reason[48];
	snprintf(reason, sizeof(reason), "limit: %s", cs_limit_kind_name(asks[which].kind));
	sp_frame e;
	sp_frame_init(&e, SP_T_ERROR, f->id, f->has_id);
	sp_frame_set_i64(&e, SP_F_CODE, SP_ERATELIMIT);
	sp_frame_set_str(&e, SP_F_REASON, reason);
	sp_frame_set_u64(&e, SP_F_RETRY_AFTER, wait);
	if (sp_frame_has(f, SP_F_MSG_ID))
		sp_frame_set_bin(&e, SP_F_MSG_ID, sp_frame_bin(f, SP_F_MSG_ID).p, 16);
	cs_session_send(s, &e);
	return false;
}

static void
on_ping(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	sp_frame p;
	sp_frame_init(&p, SP_T_PONG, f->id, f->has_id);
	cs_session_send(s, &p);
}

static void
on_pong(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)s;
	(void)f;
	(void)raw;
	(void)len;
}

typedef void (*cs_handler_fn)(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);

typedef struct cs_handler {
	cs_handler_fn fn;
	/* Bit per cs_state the frame is accepted in; 0: whenever the catalogue's login column
	 * lets a client send it. */
	unsigned states;
} cs_handler;

#define CS_IN(st) (1u << (st))

/* connsrv's own frames: exactly the catalogue's SP_TIER_CONNSRV rows (checked at start-up
 * by cs_session_dispatch_mismatch). Client frames of SP_TIER_KEYSRV need no row: they all
 * go to the one keysrv forwarder. */
static const cs_handler handlers[SP_T__MAX] = {
	[SP_T_PING] = {on_ping, 0},
	[SP_T_PONG] = {on_pong, 0},
	[SP_T_HELLO] = {cs_login_hello, CS_IN(CS_ST_HELLO)},
	[SP_T_AUTH] = {cs_login_auth, CS_IN(CS_ST_CHALLENGED)},
	[SP_T_SEND] = {cs_send_one, 0},
	[SP_T_SEND_GROUP] = {cs_send_group, 0},
	[SP_T_SEND_SK] = {cs_send_sk, 0},
	[SP_T_READ] = {cs_receipts_read, 0},
	[SP_T_READ_UPTO] = {cs_receipts_read_upto, 0},
	[SP_T_ACK] = {cs_deliver_ack, 0},
	[SP_T_MEDIA_PUT] = {cs_proxy_media, 0},
	[SP_T_MEDIA_DONE] = {cs_proxy_media, 0},
	[SP_T_MEDIA_GET] = {cs_proxy_media, 0},
	[SP_T_TYPING] = {cs_typing, 0},
	[SP_T_PRESENCE_SUB] = {cs_presence_sub, 0},
	[SP_T_PRESENCE_GET] = {cs_presence_get, 0},
};

int
cs_session_dispatch_mismatch(void)
{
	for (unsigned t = 0; t < SP_T__MAX; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		bool ours = d && d->tier == SP_TIER_CONNSRV;
		if (ours != (handlers[t].fn != NULL))
			return (int)t;
	}
	return -1;
}

/* A frame the session may not send now: an error once logged in; before login an error
 * and a close, unless the login is being checked (the AUTH answer decides then). */
static void
refuse(cs_session *s, const sp_frame *f)
{
	if (s->st == CS_ST_READY) {
		cs_session_error(s, f->id, f->has_id, SP_EPROTO, "frame not accepted from a client", NULL);
		return;
	}
	cs_session_error(s, f->id, f->has_id, SP_EAUTH, "log in first (HELLO, AUTH)", NULL);
	if (s->st != CS_ST_AUTHING)
		cs_session_close(s, true);
}

static void
dispatch(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	s->last_seen_ms = sp_time_ms();
	const sp_frame_def *d = sp_frame_def_get(f->type);
	const cs_handler *h = &handlers[f->type];
	if (!d || !sp_frame_client_may_send(f->type, s->st == CS_ST_READY) ||
	    (h->states && !(h->states & CS_IN(s->st)))) {
		refuse(s, f);
		return;
	}
	if ((d->flags & SP_FL_RATED) && !rate_admit(s, f))
		return;
	if (s->st == CS_ST_READY && !limits_admit(s, f))
		return;
	cs_revoke_check(s);
	if (d->tier == SP_TIER_CONNSRV) {
		h->fn(s, f, raw, len);
	} else if (d->tier == SP_TIER_KEYSRV) {
		/* Registration and linking make progress through keysrv (which rate-limits each
		 * source), and a new device polls LINK_STATUS until its link is confirmed: such
		 * a frame restarts the login deadline. PING never does. */
		if (s->st != CS_ST_READY)
			login_deadline_arm(s);
		cs_proxy_keysrv(s, f);
	} else {
		refuse(s, f);
	}
}

/* sp_connsrv_frames_in_total{type="..."}, made on first use of each type. */
static sp_metric *
type_counter(unsigned type)
{
	static sp_metric *by_type[256];
	if (!by_type[type & 255]) {
		char name[96];
		snprintf(name, sizeof(name), "sp_connsrv_frames_in_by_type_total{type=\"%s\"}",
			 sp_frame_type_name(type));
		by_type[type & 255] = sp_metric_counter(name, "frames from clients, by type");
	}
	return by_type[type & 255];
}

/* The largest frame the session may send now: small until it has logged in. */
static size_t
frame_max(const cs_session *s)
{
	long long pre = s->srv->cfg.prelogin_frame_max;
	return s->st == CS_ST_READY || pre <= 0 ? sp_frame_limit_large() : (size_t)pre;
}

static void
process_input(cs_session *s)
{
	struct evbuffer *in = bufferevent_get_input(s->bev);
	while (!s->closing && !s->read_paused) {
		sp_frame f;
		size_t used;
		size_t max = frame_max(s);
		int rc = sp_framer_next(in, max, &f, &used);
		if (rc == SP_EAGAIN)
			return;
		if (rc == SP_ETOOBIG && max < sp_frame_limit_large()) {
			/* Before login only small frames are legitimate: refused at the length
			 * prefix, before the body is buffered. */
			sp_metric_inc(s->srv->m.prelogin_frame);
			sp_warn_rl("%s: frame over %zu bytes before login, closing", s->peer, max);
			cs_session_error(s, 0, false, SP_ETOOBIG, "frame too large before login", NULL);
			cs_session_close(s, true);
			return;
		}
		if (rc != SP_OK) {
			/* The stream cannot be trusted after a bad frame: answer and close. */
			sp_metric_inc(s->srv->m.malformed);
			sp_info("%s: malformed frame: %s", s->peer, sp_strerror(rc));
			cs_session_error(s, 0, false, rc, sp_strerror(rc), NULL);
			cs_session_close(s, true);
			return;
		}
		sp_metric_inc(s->srv->m.frames_in);
		sp_metric_inc(type_counter(f.type));
		const uint8_t *raw = evbuffer_pullup(in, (ev_ssize_t)used) + 4;
		dispatch(s, &f, raw, used - 4);
		sp_frame_fini(&f);
		if (s->closing)
			return; /* the rest of the input is discarded with the session */
		sp_framer_consume(in, used);
	}
}

static void
on_read(struct bufferevent *bev, void *arg)
{
	(void)bev;
	process_input(arg);
}

static void
on_write(struct bufferevent *bev, void *arg)
{
	(void)bev;
	cs_session *s = arg;
	if (s->flush_close) {
		flush_done(s);
		return;
	}
	cs_deliver_writable(s);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	cs_session *s = arg;
	if (what & BEV_EVENT_CONNECTED)
		return;
	if (s->flush_close) {
		flush_done(s);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT)
		sp_debug("%s: idle timeout", s->peer);
	else if (what & BEV_EVENT_ERROR)
		sp_debug("%s: connection error", s->peer);
	cs_session_close(s, false);
}

static void
on_login_deadline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_session *s = arg;
	if (s->closing || s->st == CS_ST_READY)
		return;
	sp_metric_inc(s->srv->m.prelogin_timeout);
	sp_warn_rl("%s: not logged in within %lld ms, closing", s->peer, s->srv->cfg.login_timeout_ms);
	cs_session_error(s, 0, false, SP_ETIMEDOUT, "log in sooner", NULL);
	cs_session_close(s, true);
}

static void
login_deadline_arm(cs_session *s)
{
	if (!s->login_ev)
		return;
	long long ms = s->srv->cfg.login_timeout_ms;
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	evtimer_add(s->login_ev, &tv);
}

cs_session *
cs_session_new(cs_server *srv, struct bufferevent *bev, const char *peer)
{
	cs_session *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	if (srv->cfg.login_timeout_ms > 0 &&
	    !(s->login_ev = evtimer_new(srv->base, on_login_deadline, s))) {
		free(s);
		return NULL;
	}
	s->srv = srv;
	s->bev = bev;
	s->st = CS_ST_HELLO;
	s->tokens = (double)srv->cfg.send_burst;
	s->tokens_ms = s->last_seen_ms = sp_time_ms();
	snprintf(s->peer, sizeof(s->peer), "%s", peer);
	struct timeval idle = {srv->cfg.idle_timeout_ms / 1000, (srv->cfg.idle_timeout_ms % 1000) * 1000};
	bufferevent_set_timeouts(bev, &idle, NULL);
	/* Reading stops while a whole maximum frame is buffered and not yet handled (before
	 * login: the pre-login maximum). */
	bufferevent_setwatermark(bev, EV_READ, 0, frame_max(s) + 4);
	bufferevent_setwatermark(bev, EV_WRITE, (size_t)srv->cfg.out_pause_bytes / 2, 0);
	bufferevent_setcb(bev, on_read, on_write, on_event, s);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	login_deadline_arm(s);
	list_add(&srv->sessions, s);
	srv->nconns++;
	sp_metric_gauge_add(srv->m.conns, 1);
	sp_cluster_set_conns(srv->cluster, srv->nconns);
	return s;
}

static void
on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	(void)l;
	(void)salen;
	cs_server *srv = arg;
	sp_metric_inc(srv->m.accepts);
	if (srv->draining || (long long)srv->nconns >= srv->cfg.max_conns) {
		sp_metric_inc(srv->m.rejects);
		evutil_closesocket(fd);
		return;
	}
	/* Per-source limits, decided before any TLS work: a refused connection costs an
	 * accept and a close. */
	cs_admit_key src;
	cs_admit_key_of(sa, &src);
	cs_admit_verdict v = cs_admit_take(srv->admit, &src, sp_mono_ms());
	if (v != CS_ADMIT_OK) {
		char who[INET6_ADDRSTRLEN] = "?";
		if (sa->sa_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, who, sizeof(who));
		else if (sa->sa_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, who, sizeof(who));
		sp_metric_inc(srv->m.prelogin_refused[v]);
		sp_warn_rl("%s: connection refused before TLS: %s", who, cs_admit_verdict_name(v));
		evutil_closesocket(fd);
		return;
	}
	SSL *ssl = SSL_new(srv->tls);
	if (!ssl) {
		cs_admit_release(srv->admit, &src);
		evutil_closesocket(fd);
		return;
	}
	struct bufferevent *bev = bufferevent_openssl_socket_new(
		srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (!bev) {
		cs_admit_release(srv->admit, &src);
		SSL_free(ssl);
		evutil_closesocket(fd);
		return;
	}
	/* Clients that vanish without close_notify are normal on mobile networks. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	char host[INET6_ADDRSTRLEN] = "?", peer[64];
	int port = 0;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 *in = (struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in->sin6_addr, host, sizeof(host));
		port = ntohs(in->sin6_port);
	}
	snprintf(peer, sizeof(peer), "%s:%d", host, port);
	cs_session *s = cs_session_new(srv, bev, peer);
	if (!s) {
		cs_admit_release(srv->admit, &src);
		bufferevent_free(bev); /* frees the SSL and closes fd */
		return;
	}
	s->src = src;
	s->admit_held = true;
}

static void
on_accept_error(struct evconnlistener *l, void *arg)
{
	(void)l;
	(void)arg;
	/* EMFILE and friends: keep the listener; the next accept may succeed. */
	sp_warn("accept failed: %s", strerror(errno));
}

int
cs_server_accept_start(cs_server *srv)
{
	char host[256];
	const char *colon = strrchr(srv->cfg.listen, ':');
	if (!colon || (size_t)(colon - srv->cfg.listen) >= sizeof(host))
		return SP_ECONFIG;
	memcpy(host, srv->cfg.listen, (size_t)(colon - srv->cfg.listen));
	host[colon - srv->cfg.listen] = '\0';
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);
	char spec[300];
	snprintf(spec, sizeof(spec), "%s:%s", host, colon + 1);
	if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sslen))
		return SP_ECONFIG;
	cs_admit_cfg ac = {
		.max_unauth = srv->cfg.prelogin_per_source,
		.hs_rate = (double)srv->cfg.handshake_rate,
		.hs_burst = srv->cfg.handshake_burst,
		.max_sources = (size_t)srv->cfg.source_table_size,
	};
	int rc = cs_admit_new(&ac, &srv->admit);
	if (rc)
		return rc;
	/* SO_REUSEPORT: several worker processes share the port, the kernel spreads accepts. */
	srv->listener = evconnlistener_new_bind(
		srv->base, on_accept, srv,
		LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT | LEV_OPT_CLOSE_ON_EXEC,
		4096, (struct sockaddr *)&ss, sslen);
	if (!srv->listener)
		return SP_EIO;
	evconnlistener_set_error_cb(srv->listener, on_accept_error);
	return SP_OK;
}
