/* Presence: state in Redis, subscriptions, coalesced publishing (see presence.h). */
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "connsrv/presence.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

#define PRES_TICK_MS 500
#define PRES_LS_TTL_S (30 * 24 * 3600) /* last seen is kept for 30 days */

typedef struct pres_sub {
	uint64_t target;
	unsigned rule;
	cs_session *s;
	struct pres_sub *prev, *next; /* in its target's list */
} pres_sub;

/* A session's subscriptions (s->pres). */
struct cs_pres_subs {
	size_t n;
	pres_sub subs[];
};

/* A user some session of this worker follows. */
typedef struct pres_target {
	uint64_t user;
	pres_sub *head;
	size_t n;
	UT_hash_handle hh;
} pres_target;

/* A user of this worker whose change is being or waits to be published. */
typedef struct pres_pub {
	uint64_t user;
	uint64_t last_ms; /* monotonic ms at which the last publish started */
	bool pending;     /* changed since that publish started */
	bool busy;        /* a publish is in flight */
	UT_hash_handle hh;
} pres_pub;

struct cs_presence {
	cs_server *srv;
	pres_target *targets;
	pres_pub *pubs;
	struct event *tick;
	uint64_t renew_ms; /* monotonic ms of the next renewal of this worker's r:pw entries */
	sp_metric *events, *publishes, *coalesced, *pushes, *dropped, *hidden, *subs;
};

bool
cs_presence_view(unsigned rule, bool online, uint64_t last_seen, uint64_t now_ms,
		 cs_presence_shown *out)
{
	memset(out, 0, sizeof(*out));
	if (rule & CS_PRES_ONLINE) {
		out->has_online = true;
		out->online = online;
	}
	switch (CS_PRES_LS(rule)) {
	case 2:
		if (last_seen) {
			out->has_last_seen = true;
			out->last_seen = last_seen;
		}
		break;
	case 1:
		/* Coarse: "recently" says only that the user was around in the last days;
		 * an online state the viewer may not see is folded in the same way. */
		out->recent = online || (last_seen && last_seen <= now_ms &&
					 now_ms - last_seen <= CS_PRESENCE_RECENT_MS);
		break;
	default:
		break;
	}
	return out->has_online || out->has_last_seen || out->recent;
}

static void
set_shown(sp_frame *f, uint64_t user, const cs_presence_shown *v)
{
	sp_frame_set_u64(f, SP_F_USER, user);
	if (v->has_online)
		sp_frame_set_bool(f, SP_F_PRES_ONLINE, v->online);
	if (v->has_last_seen)
		sp_frame_set_u64(f, SP_F_PRES_LAST_SEEN, v->last_seen);
	if (v->recent)
		sp_frame_set_bool(f, SP_F_PRES_RECENT, true);
}

/* ---- state: online sessions, last seen and watching workers, from Redis ---- */

typedef void (*state_cb)(cs_server *srv, void *arg, int rc, uint64_t user, bool online,
			 uint64_t last_seen, const redisReply *watchers);

typedef struct state_op {
	cs_server *srv;
	uint64_t user;
	bool online;
	uint64_t last_seen;
	int rc;
	bool want_watchers;
	unsigned pending; /* replies still to come: the last one ends the op */
	state_cb cb;
	void *arg;
} state_op;

/* One reply came: the last ends the op (`watchers`: the reply of ZRANGEBYSCORE, if it was
 * that one). */
static void
state_reply(state_op *op, const redisReply *watchers)
{
	SP_ASSERT(op->pending > 0);
	if (--op->pending > 0)
		return;
	int rc = op->rc ? op->rc : (op->want_watchers && !watchers ? SP_EREDIS : SP_OK);
	op->cb(op->srv, op->arg, rc, op->user, op->online, op->last_seen, rc ? NULL : watchers);
	free(op);
}

static void
on_watchers(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)ac;
	state_op *op = privdata;
	redisReply *rep = reply;
	if (!rep || rep->type != REDIS_REPLY_ARRAY)
		op->rc = SP_EREDIS;
	state_reply(op, rep);
}

static void
on_last_seen(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)ac;
	state_op *op = privdata;
	redisReply *rep = reply;
	if (!rep || rep->type == REDIS_REPLY_ERROR)
		op->rc = SP_EREDIS;
	else if (rep->type == REDIS_REPLY_STRING)
		op->last_seen = strtoull(rep->str, NULL, 10);
	state_reply(op, NULL);
}

static void
on_online(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)ac;
	state_op *op = privdata;
	redisReply *rep = reply;
	if (!rep || rep->type != REDIS_REPLY_INTEGER)
		op->rc = SP_EREDIS;
	else
		op->online = rep->integer > 0;
	state_reply(op, NULL);
}

/* Calls cb once with the user's state (and, with want_watchers, the ZRANGEBYSCORE reply
 * naming the pull urls of the workers following it): later on the loop, or at once with
 * an error when no command could be sent. The commands go after any change this worker
 * sent on the same connection, so they see it. */
static void
state_fetch(cs_server *srv, uint64_t user, bool want_watchers, state_cb cb, void *arg)
{
	state_op *op = calloc(1, sizeof(*op));
	redisAsyncContext *ac = cs_routes_redis(srv->routes);
	unsigned long long u = (unsigned long long)user, now = (unsigned long long)sp_time_ms();
	if (!op || !ac) {
		free(op);
		cb(srv, arg, op ? SP_EREDIS : SP_ENOMEM, user, false, 0, NULL);
		return;
	}
	op->srv = srv;
	op->user = user;
	op->want_watchers = want_watchers;
	op->cb = cb;
	op->arg = arg;
	op->pending = 1; /* held while queueing */
	if (redisAsyncCommand(ac, on_online, op, "ZCOUNT r:po:%llu %llu +inf", u, now) == REDIS_OK)
		op->pending++;
	else
		op->rc = SP_EREDIS;
	if (!op->rc && redisAsyncCommand(ac, on_last_seen, op, "GET r:ls:%llu", u) == REDIS_OK)
		op->pending++;
	else
		op->rc = SP_EREDIS;
	if (!op->rc && want_watchers) {
		if (redisAsyncCommand(ac, on_watchers, op, "ZRANGEBYSCORE r:pw:%llu %llu +inf", u, now) ==
		    REDIS_OK)
			op->pending++;
		else
			op->rc = SP_EREDIS;
	}
	state_reply(op, NULL);
}

/* ---- delivery to this worker's subscribers ---- */

static void
deliver_local(cs_server *srv, uint64_t user, bool online, uint64_t last_seen)
{
	cs_presence *p = srv->presence;
	pres_target *t;
	HASH_FIND(hh, p->targets, &user, sizeof(user), t);
	uint64_t now = sp_time_ms();
	/* `next` is taken first: a send may close its session, which unlinks (only) that
	 * session's one entry here, and frees t only when no other entry is left. */
	for (pres_sub *sub = t ? t->head : NULL, *next; sub; sub = next) {
		cs_presence_shown v;
		next = sub->next;
		if (sub->s->closing)
			continue;
		if (!cs_presence_view(sub->rule, online, last_seen, now, &v)) {
			sp_metric_inc(p->hidden);
			continue;
		}
		if (cs_session_output_full(sub->s)) {
			sp_metric_inc(p->dropped); /* a slow reader: the next change comes again */
			continue;
		}
		sp_frame e;
		sp_frame_init(&e, SP_T_PRESENCE_EV, 0, false);
		set_shown(&e, user, &v);
		if (cs_session_send(sub->s, &e) == SP_OK)
			sp_metric_inc(p->events);
		else
			sp_metric_inc(p->dropped);
	}
}

void
cs_presence_push(cs_server *srv, const sp_frame *f)
{
	deliver_local(srv, sp_frame_u64(f, SP_F_USER), sp_frame_u64(f, SP_F_PRES_ONLINE) != 0,
		      sp_frame_u64(f, SP_F_PRES_LAST_SEEN));
}

/* ---- publishing, at most once per user per CS_PRESENCE_MIN_MS ---- */

static void
on_published_state(cs_server *srv, void *arg, int rc, uint64_t user, bool online,
		   uint64_t last_seen, const redisReply *watchers)
{
	(void)arg;
	cs_presence *p = srv->presence;
	pres_pub *pub;
	HASH_FIND(hh, p->pubs, &user, sizeof(user), pub);
	if (pub)
		pub->busy = false;
	if (rc) {
		sp_metric_inc(p->dropped);
		sp_warn_rl("presence of user %llu not published: %s", (unsigned long long)user,
			   sp_strerror(rc));
		return;
	}
	sp_metric_inc(p->publishes);
	sp_frame push;
	sp_frame_init(&push, SP_T_PRESENCE_PUSH, 0, false);
	sp_frame_set_u64(&push, SP_F_USER, user);
	sp_frame_set_bool(&push, SP_F_PRES_ONLINE, online);
	if (last_seen)
		sp_frame_set_u64(&push, SP_F_PRES_LAST_SEEN, last_seen);
	for (size_t i = 0; i < watchers->elements; i++) {
		const redisReply *u = watchers->element[i];
		if (u->type != REDIS_REPLY_STRING)
			continue;
		if (strcmp(u->str, srv->pull_url) == 0) {
			deliver_local(srv, user, online, last_seen);
		} else if (cs_rpc_push(srv->rpc, u->str, &push) == SP_OK) {
			sp_metric_inc(p->pushes);
		} else {
			sp_metric_inc(p->dropped);
		}
	}
}

static void
publish_start(cs_presence *p, pres_pub *pub)
{
	pub->busy = true;
	pub->pending = false;
	pub->last_ms = sp_mono_ms();
	state_fetch(p->srv, pub->user, true, on_published_state, NULL);
}

static void
changed(cs_server *srv, uint64_t user)
{
	cs_presence *p = srv->presence;
	pres_pub *pub;
	HASH_FIND(hh, p->pubs, &user, sizeof(user), pub);
	if (!pub) {
		if (!(pub = calloc(1, sizeof(*pub)))) {
			sp_metric_inc(p->dropped);
			return;
		}
		pub->user = user;
		HASH_ADD(hh, p->pubs, user, sizeof(pub->user), pub);
		publish_start(p, pub);
		return;
	}
	if (!pub->busy && sp_mono_ms() - pub->last_ms >= CS_PRESENCE_MIN_MS) {
		publish_start(p, pub);
		return;
	}
	if (pub->pending)
		sp_metric_inc(p->coalesced);
	pub->pending = true; /* the tick publishes the state of then */
}

/* The session's member of r:po:<user> (scored by its expiry, wall-clock ms): a device's
 * session, so that an older session of the device closing elsewhere removes only its own. */
static void
session_member(const cs_session *s, char *buf, size_t cap)
{
	snprintf(buf, cap, "%llu|%llu", (unsigned long long)s->device,
		 (unsigned long long)s->conn_epoch);
}

/* Adds or renews the session's member of r:po:<user>; entries past their expiry (a
 * worker that died) are trimmed. */
static int
mark_online(cs_session *s)
{
	redisAsyncContext *ac = cs_routes_redis(s->srv->routes);
	char m[48];
	unsigned long long u = (unsigned long long)s->user, now = (unsigned long long)sp_time_ms();
	long long ttl = s->srv->cfg.route_ttl_s;
	session_member(s, m, sizeof(m));
	if (!ac ||
	    redisAsyncCommand(ac, NULL, NULL, "ZREMRANGEBYSCORE r:po:%llu -inf %llu", u, now) != REDIS_OK ||
	    redisAsyncCommand(ac, NULL, NULL, "ZADD r:po:%llu %llu %s", u, now + (unsigned long long)ttl * 1000,
			      m) != REDIS_OK ||
	    redisAsyncCommand(ac, NULL, NULL, "EXPIRE r:po:%llu %lld", u, ttl) != REDIS_OK)
		return SP_EREDIS;
	return SP_OK;
}

void
cs_presence_online(cs_session *s)
{
	if (!s->srv->presence)
		return; /* a server without presence (a unit test's) */
	if (mark_online(s))
		sp_metric_inc(s->srv->presence->dropped);
	changed(s->srv, s->user);
}

void
cs_presence_offline(cs_session *s)
{
	if (!s->srv->presence)
		return;
	redisAsyncContext *ac = cs_routes_redis(s->srv->routes);
	char m[48];
	session_member(s, m, sizeof(m));
	if (!ac ||
	    redisAsyncCommand(ac, NULL, NULL, "ZREM r:po:%llu %s", (unsigned long long)s->user, m) != REDIS_OK ||
	    redisAsyncCommand(ac, NULL, NULL, "SET r:ls:%llu %llu EX %d", (unsigned long long)s->user,
			      (unsigned long long)sp_time_ms(), PRES_LS_TTL_S) != REDIS_OK)
		sp_metric_inc(s->srv->presence->dropped);
	changed(s->srv, s->user);
}

/* ---- subscriptions ---- */

/* This worker follows / no longer follows `user`: its entry in r:pw:<user>. */
static void
watch(cs_server *srv, uint64_t user, bool on)
{
	redisAsyncContext *ac = cs_routes_redis(srv->routes);
	int rc = REDIS_ERR;
	if (ac && on) {
		uint64_t ttl_ms = (uint64_t)srv->cfg.route_ttl_s * 1000;
		rc = redisAsyncCommand(ac, NULL, NULL, "ZADD r:pw:%llu %llu %s", (unsigned long long)user,
				       (unsigned long long)(sp_time_ms() + ttl_ms), srv->pull_url);
		if (rc == REDIS_OK)
			rc = redisAsyncCommand(ac, NULL, NULL, "EXPIRE r:pw:%llu %lld",
					       (unsigned long long)user, srv->cfg.route_ttl_s);
	} else if (ac) {
		rc = redisAsyncCommand(ac, NULL, NULL, "ZREM r:pw:%llu %s", (unsigned long long)user,
				       srv->pull_url);
	}
	/* Without Redis the renewal tick registers it again; an entry left behind expires. */
	if (rc != REDIS_OK)
		sp_metric_inc(srv->presence->dropped);
}

static void
drop_subs(cs_session *s)
{
	cs_presence *p = s->srv->presence;
	struct cs_pres_subs *ps = s->pres;
	if (!ps)
		return;
	for (size_t i = 0; i < ps->n; i++) {
		pres_sub *sub = &ps->subs[i];
		pres_target *t;
		HASH_FIND(hh, p->targets, &sub->target, sizeof(sub->target), t);
		SP_ASSERT(t != NULL && t->n > 0);
		if (sub->prev)
			sub->prev->next = sub->next;
		else
			t->head = sub->next;
		if (sub->next)
			sub->next->prev = sub->prev;
		if (--t->n == 0) {
			HASH_DEL(p->targets, t);
			watch(s->srv, t->user, false);
			free(t);
		}
	}
	sp_metric_gauge_add(p->subs, -(int64_t)ps->n);
	free(ps);
	s->pres = NULL;
}

void
cs_presence_session_gone(cs_session *s)
{
	drop_subs(s);
}

/* Replaces the session's subscriptions with users[i] under rules[i]. */
static int
install(cs_session *s, const uint64_t *users, const uint64_t *rules, size_t n)
{
	cs_presence *p = s->srv->presence;
	drop_subs(s);
	struct cs_pres_subs *ps = calloc(1, sizeof(*ps) + n * sizeof(pres_sub));
	if (!ps)
		return SP_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		pres_target *t;
		HASH_FIND(hh, p->targets, &users[i], sizeof(users[i]), t);
		if (!t) {
			if (!(t = calloc(1, sizeof(*t)))) {
				s->pres = ps; /* the ones linked so far are undone */
				drop_subs(s);
				return SP_ENOMEM;
			}
			t->user = users[i];
			HASH_ADD(hh, p->targets, user, sizeof(t->user), t);
			watch(s->srv, t->user, true);
		}
		pres_sub *sub = &ps->subs[i];
		sub->target = users[i];
		sub->rule = (unsigned)rules[i];
		sub->s = s;
		sub->next = t->head;
		if (t->head)
			t->head->prev = sub;
		t->head = sub;
		t->n++;
		ps->n++;
		sp_metric_gauge_add(p->subs, 1);
	}
	s->pres = ps;
	return SP_OK;
}

typedef struct req_op {
	cs_session *s;
	uint64_t id;
	bool has_id;
	unsigned rule;          /* GET: the rule of the one user */
	size_t n;
	uint64_t users[];       /* SUB: sorted, without duplicates; GET: the one user */
} req_op;

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void
req_end(req_op *op)
{
	cs_session_call_end(op->s);
	free(op);
}

/* The session's error for a failed rules or state lookup. */
static void
req_fail(req_op *op, int rc)
{
	if (op->s->closing)
		return;
	sp_metric_inc(op->s->srv->presence->dropped);
	bool server_side = rc == SP_ENOMEM || rc == SP_EREDIS || rc == SP_ETIMEDOUT || rc == SP_ECLOSED ||
			   rc == SP_ENNG || rc == SP_ESTORE;
	cs_session_error(op->s, op->id, op->has_id, server_side ? SP_EUNAVAIL : rc,
			 "presence unavailable, retry", NULL);
}

/* Asks keysrv what the session's user may see of op->users; cb gets the reply. */
static int
ask_rules(req_op *op, cs_rpc_cb cb)
{
	sp_frame q;
	sp_frame_init(&q, SP_T_PRESENCE_RULES, 0, false);
	sp_frame_set_u64s(&q, SP_F_PRES_USERS, op->users, (uint32_t)op->n);
	sp_frame_set_u64(&q, SP_F_AUTH_USER, op->s->user);
	return cs_shardcall_keysrv(op->s->srv->shards, false, &q, cb, op);
}

/* The rules of a PRESENCE_RULES_R, if it has one per user asked. */
static const uint64_t *
rules_of(const sp_frame *reply, size_t n)
{
	const sp_val *v = sp_frame_get(reply, SP_F_PRES_RULES);
	return v && v->us.n == n ? v->us.v : NULL;
}

static void
on_sub_rules(void *arg, int rc, const sp_frame *reply)
{
	req_op *op = arg;
	cs_session *s = op->s;
	const uint64_t *rules = rc == SP_OK ? rules_of(reply, op->n) : NULL;
	if (rc == SP_OK && !rules)
		rc = SP_EPROTO;
	if (rc == SP_OK && !s->closing)
		rc = install(s, op->users, rules, op->n);
	if (rc) {
		req_fail(op, rc);
	} else if (!s->closing) {
		sp_frame ok;
		sp_frame_init(&ok, SP_T_OK, op->id, op->has_id);
		cs_session_send(s, &ok);
	}
	req_end(op);
}

static req_op *
req_new(cs_session *s, const sp_frame *f, size_t n)
{
	req_op *op = calloc(1, sizeof(*op) + (n ? n : 1) * sizeof(uint64_t));
	if (!op) {
		cs_session_error(s, f->id, f->has_id, SP_ENOMEM, NULL, NULL);
		return NULL;
	}
	op->s = s;
	op->id = f->id;
	op->has_id = f->has_id;
	return op;
}

void
cs_presence_sub(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	const sp_val *v = sp_frame_get(f, SP_F_PRES_USERS);
	size_t n = v ? v->us.n : 0;
	SP_ASSERT(n <= CS_PRESENCE_MAX_SUBS); /* the catalogue bounds the field */
	req_op *op = req_new(s, f, n);
	if (!op)
		return;
	for (size_t i = 0; i < n; i++)
		if (v->us.v[i] != 0)
			op->users[op->n++] = v->us.v[i];
	qsort(op->users, op->n, sizeof(uint64_t), cmp_u64);
	size_t k = 0;
	for (size_t i = 0; i < op->n; i++)
		if (k == 0 || op->users[k - 1] != op->users[i])
			op->users[k++] = op->users[i];
	op->n = k;
	if (op->n == 0) { /* no rules needed: unsubscribes from all */
		drop_subs(s);
		sp_frame ok;
		sp_frame_init(&ok, SP_T_OK, op->id, op->has_id);
		cs_session_send(s, &ok);
		free(op);
		return;
	}
	cs_session_call_begin(s);
	int rc = ask_rules(op, on_sub_rules);
	if (rc) {
		req_fail(op, rc);
		req_end(op);
	}
}

static void
on_get_state(cs_server *srv, void *arg, int rc, uint64_t user, bool online, uint64_t last_seen,
	     const redisReply *watchers)
{
	(void)srv;
	(void)watchers;
	req_op *op = arg;
	if (rc) {
		req_fail(op, rc);
	} else if (!op->s->closing) {
		cs_presence_shown v;
		cs_presence_view(op->rule, online, last_seen, sp_time_ms(), &v);
		sp_frame r;
		sp_frame_init(&r, SP_T_PRESENCE_R, op->id, op->has_id);
		set_shown(&r, user, &v);
		cs_session_send(op->s, &r);
	}
	req_end(op);
}

static void
on_get_rules(void *arg, int rc, const sp_frame *reply)
{
	req_op *op = arg;
	const uint64_t *rules = rc == SP_OK ? rules_of(reply, 1) : NULL;
	if (rc == SP_OK && !rules)
		rc = SP_EPROTO;
	if (rc || op->s->closing) {
		req_fail(op, rc);
		req_end(op);
		return;
	}
	op->rule = (unsigned)rules[0];
	state_fetch(op->s->srv, op->users[0], false, on_get_state, op);
}

void
cs_presence_get(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	uint64_t user = sp_frame_u64(f, SP_F_USER);
	if (user == 0) {
		cs_session_error(s, f->id, f->has_id, SP_EINVAL, "no such user", NULL);
		return;
	}
	req_op *op = req_new(s, f, 1);
	if (!op)
		return;
	op->users[0] = user;
	op->n = 1;
	cs_session_call_begin(s);
	int rc = ask_rules(op, on_get_rules);
	if (rc) {
		req_fail(op, rc);
		req_end(op);
	}
}

/* ---- the tick: pending publishes, registrations renewed ---- */

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_presence *p = arg;
	uint64_t now = sp_mono_ms();
	pres_pub *pub, *tmp;
	HASH_ITER(hh, p->pubs, pub, tmp) {
		if (pub->busy || now - pub->last_ms < CS_PRESENCE_MIN_MS)
			continue;
		if (pub->pending) {
			publish_start(p, pub);
		} else {
			HASH_DEL(p->pubs, pub);
			free(pub);
		}
	}
	if (now >= p->renew_ms) {
		pres_target *t, *ttmp;
		HASH_ITER(hh, p->targets, t, ttmp)
			watch(p->srv, t->user, true);
		for (cs_session *s = p->srv->sessions; s; s = s->next)
			if (s->st == CS_ST_READY && mark_online(s))
				sp_metric_inc(p->dropped);
		p->renew_ms = now + (uint64_t)p->srv->cfg.route_ttl_s * 1000 / 3;
	}
}

int
cs_presence_new(cs_server *srv)
{
	cs_presence *p = calloc(1, sizeof(*p));
	if (!p)
		return SP_ENOMEM;
	p->srv = srv;
	p->events = sp_metric_counter("sp_connsrv_presence_events_total", "PRESENCE_EV frames written to subscribers");
	p->publishes = sp_metric_counter("sp_connsrv_presence_publishes_total", "presence changes published (after coalescing)");
	p->coalesced = sp_metric_counter("sp_connsrv_presence_coalesced_total", "presence changes folded into a pending publish");
	p->pushes = sp_metric_counter("sp_connsrv_presence_pushes_total", "PRESENCE_PUSH frames sent to other connsrv workers");
	p->dropped = sp_metric_counter("sp_connsrv_presence_dropped_total", "presence work not done: Redis or keysrv unavailable, slow subscriber, out of memory");
	p->hidden = sp_metric_counter("sp_connsrv_presence_hidden_total", "presence updates not written because the subscriber may see nothing of them");
	p->subs = sp_metric_gauge("sp_connsrv_presence_subscriptions", "presence subscriptions held by sessions");
	p->tick = event_new(srv->base, -1, EV_PERSIST, on_tick, p);
	if (!p->tick) {
		free(p);
		return SP_ENOMEM;
	}
	struct timeval tv = {0, PRES_TICK_MS * 1000};
	event_add(p->tick, &tv);
	srv->presence = p;
	return SP_OK;
}

void
cs_presence_free(cs_server *srv)
{
	cs_presence *p = srv->presence;
	if (!p)
		return;
	event_free(p->tick);
	pres_pub *pub, *ptmp;
	HASH_ITER(hh, p->pubs, pub, ptmp) {
		HASH_DEL(p->pubs, pub);
		free(pub);
	}
	/* Sessions dropped theirs when closed; the map is empty by now. */
	SP_ASSERT(p->targets == NULL);
	free(p);
	srv->presence = NULL;
}
