#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>
#include <sodium.h>
#include <uthash.h>

#include "connsrv/limits.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_metrics.h"
#include "sp_time.h"

/* KEYS: the buckets; ARGV: per key (refill per ms, burst, cost). Returns per key the ms
 * until its bucket is out of debt (0: not in debt). Redis's own clock: every connsrv sees
 * the same time. A bucket starts full; its key expires when it would be full again. */
static const char take_script[] =
	"local t = redis.call('TIME') "
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
	"local out = {} "
	"for i = 1, #KEYS do "
	"  local rate = tonumber(ARGV[3 * i - 2]) "
	"  local burst = tonumber(ARGV[3 * i - 1]) "
	"  local cost = tonumber(ARGV[3 * i]) "
	"  local v = redis.call('HMGET', KEYS[i], 't', 'ts') "
	"  local tokens = tonumber(v[1]) or burst "
	"  local ts = tonumber(v[2]) or now "
	"  if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end "
	"  tokens = math.max(tokens - cost, -burst) "
	"  local wait = 0 "
	"  if tokens < 0 then wait = math.ceil(-tokens / rate) end "
	"  redis.call('HSET', KEYS[i], 't', tostring(tokens), 'ts', tostring(now)) "
	"  redis.call('PEXPIRE', KEYS[i], math.ceil((burst - tokens) / rate) + 1000) "
	"  out[i] = wait "
	"end "
	"return out";

#define BATCH_MAX 128 /* buckets per EVALSHA */
#define KEY_MAX 64
#define IDLE_MS 120000 /* a local record unused this long is dropped */

typedef struct lentry {
	char key[KEY_MAX];
	cs_limit_kind kind;
	cs_limit_scope scope;
	uint64_t blocked_until; /* monotonic ms: Redis said the bucket is in debt until then */
	double pend;            /* cost taken this loop pass, not yet sent */
	bool in_batch;
	double tokens;          /* the local bucket (without Redis) */
	uint64_t tokens_ms, used_ms;
	struct lentry *bnext;
	UT_hash_handle hh;
} lentry;

struct cs_limits {
	cs_limits_cfg cfg;
	cs_routes *routes; /* its Redis connection is borrowed */
	/* Connection generations (cs_routes_generation) the script was loaded on / sent on. */
	uint64_t script_gen, loading_gen;
	char sha[41];
	struct event *flush_ev, *tidy_ev;
	lentry *entries;
	size_t nentries;
	lentry *batch; /* entries with a pending cost */
	size_t nbatch;
	struct {
		sp_metric *limited[CS_LIM__N][CS_SCOPE__N], *local, *redis_errors, *batches,
			*untracked, *latency;
	} m;
};

static const char *const kind_names[CS_LIM__N] = {
	[CS_LIM_SEND] = "send",
	[CS_LIM_RECEIPT] = "receipt",
	[CS_LIM_MEDIA_BYTES] = "media_bytes",
	[CS_LIM_MEDIA_BLOB] = "media_blob",
	[CS_LIM_GROUP] = "group",
	[CS_LIM_BUNDLE] = "bundle",
	[CS_LIM_BUNDLE_TARGET] = "bundle_target",
	[CS_LIM_LOOKUP] = "lookup",
	[CS_LIM_PUSH_REGISTER] = "push_register",
	[CS_LIM_PRESENCE] = "presence",
};
static const char *const scope_names[CS_SCOPE__N] = {"user", "source", "target"};

const char *
cs_limit_kind_name(cs_limit_kind k)
{
	return (unsigned)k < CS_LIM__N ? kind_names[k] : "?";
}

/* ---- settings ---- */

static int
parse_count(const char *p, char **end, double *out)
{
	if (!isdigit((unsigned char)*p))
		return SP_ECONFIG;
	double v = strtod(p, end);
	switch (**end) {
	case 'K': v *= 1024.0; (*end)++; break;
	case 'M': v *= 1024.0 * 1024.0; (*end)++; break;
	case 'G': v *= 1024.0 * 1024.0 * 1024.0; (*end)++; break;
	default: break;
	}
	*out = v;
	return v >= 0 && isfinite(v) ? SP_OK : SP_ECONFIG;
}

int
cs_limit_parse(const char *spec, cs_limit_rate *out)
{
	*out = (cs_limit_rate){0, 0};
	if (!spec || !strcmp(spec, "off") || !strcmp(spec, "0"))
		return SP_OK;
	char *p;
	double n, burst;
	if (parse_count(spec, &p, &n) || *p != '/' || n <= 0)
		return SP_ECONFIG;
	p++;
	double period_ms;
	size_t ulen = strcspn(p, ",");
	if (ulen == 1 && *p == 's')
		period_ms = 1000.0;
	else if (ulen == 3 && !strncmp(p, "min", 3))
		period_ms = 60000.0;
	else if (ulen == 1 && *p == 'h')
		period_ms = 3600000.0;
	else if (ulen == 3 && !strncmp(p, "day", 3))
		period_ms = 86400000.0;
	else
		return SP_ECONFIG;
	p += ulen;
	burst = n;
	if (*p == ',') {
		if (parse_count(p + 1, &p, &burst) || burst < 1)
			return SP_ECONFIG;
	}
	if (*p)
		return SP_ECONFIG;
	*out = (cs_limit_rate){n / period_ms, burst};
	return SP_OK;
}

/* ---- the frames and their buckets ---- */

size_t
cs_limits_asks(const sp_frame *f, uint64_t user, const cs_admit_key *src, cs_limit_ask out[4])
{
	size_t n = 0;
#define ASK(k, sc, i, c) (out[n++] = (cs_limit_ask){(k), (sc), (i), src, false, (c)})
	switch (f->type) {
	case SP_T_SEND:
	case SP_T_SEND_GROUP:
	case SP_T_SEND_SK:
		ASK(CS_LIM_SEND, CS_SCOPE_USER, user, 1);
		ASK(CS_LIM_SEND, CS_SCOPE_SOURCE, 0, 1);
		break;
	case SP_T_READ:
	case SP_T_READ_UPTO:
		ASK(CS_LIM_RECEIPT, CS_SCOPE_USER, user, 1);
		break;
	case SP_T_MEDIA_PUT:
		ASK(CS_LIM_MEDIA_BYTES, CS_SCOPE_USER, user, (double)sp_frame_bin(f, SP_F_BYTES).len);
		break;
	case SP_T_MEDIA_DONE:
		ASK(CS_LIM_MEDIA_BLOB, CS_SCOPE_USER, user, 1);
		break;
	case SP_T_GROUP_CREATE:
	case SP_T_GROUP_ADD: {
		const sp_val *v = sp_frame_get(f, SP_F_USERS);
		double c = (double)(v ? v->us.n : 0) + (f->type == SP_T_GROUP_CREATE);
		if (c > 0) {
			ASK(CS_LIM_GROUP, CS_SCOPE_USER, user, c);
			ASK(CS_LIM_GROUP, CS_SCOPE_SOURCE, 0, c);
		}
		break;
	}
	case SP_T_BUNDLE_GET: {
		ASK(CS_LIM_BUNDLE, CS_SCOPE_USER, user, 1);
		ASK(CS_LIM_BUNDLE, CS_SCOPE_SOURCE, 0, 1);
		bool dev = sp_frame_has(f, SP_F_DEVICE);
		ASK(CS_LIM_BUNDLE_TARGET, CS_SCOPE_TARGET,
		    dev ? sp_frame_u64(f, SP_F_DEVICE) : sp_frame_u64(f, SP_F_USER), 1);
		out[n - 1].target_user = !dev;
		break;
	}
	case SP_T_USER_LOOKUP:
		ASK(CS_LIM_LOOKUP, CS_SCOPE_USER, user, 1);
		ASK(CS_LIM_LOOKUP, CS_SCOPE_SOURCE, 0, 1);
		break;
	case SP_T_PUSH_REGISTER:
		ASK(CS_LIM_PUSH_REGISTER, CS_SCOPE_USER, user, 1);
		ASK(CS_LIM_PUSH_REGISTER, CS_SCOPE_SOURCE, 0, 1);
		break;
	case SP_T_PRESENCE_SUB:
	case SP_T_PRESENCE_GET:
		ASK(CS_LIM_PRESENCE, CS_SCOPE_USER, user, 1);
		ASK(CS_LIM_PRESENCE, CS_SCOPE_SOURCE, 0, 1);
		break;
	default:
		break;
	}
#undef ASK
	return n;
}

/* ---- Redis: routes' connection (routes.h), with the script loaded on its server ---- */

static void
on_script_loaded(redisAsyncContext *ac, void *reply, void *arg)
{
	(void)ac;
	redisReply *rep = reply;
	if (!rep)
		return; /* the connection went (l may be freed): the next one loads it again */
	cs_limits *l = arg;
	if (rep->type != REDIS_REPLY_STRING || strcmp(rep->str, l->sha) != 0) {
		sp_warn_rl("redis: limits script not loaded: %s",
			   rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
		return;
	}
	l->script_gen = l->loading_gen;
	sp_info("redis: limits script loaded");
}

/* Routes' connection when the script is known to be on its server, else NULL (and the
 * script is sent once per connection, as soon as it is ready: on_routes_ready; a
 * restarted Redis answers NOSCRIPT, on_flushed). */
static redisAsyncContext *
redis_ready(cs_limits *l)
{
	redisAsyncContext *ac = cs_routes_redis(l->routes);
	uint64_t gen = cs_routes_generation(l->routes);
	if (!ac)
		return NULL;
	if (l->script_gen == gen)
		return ac;
	if (l->loading_gen != gen &&
	    redisAsyncCommand(ac, on_script_loaded, l, "SCRIPT LOAD %s", take_script) == REDIS_OK)
		l->loading_gen = gen;
	return NULL;
}

/* A new connection: the script goes first, so that the first frames after it are
 * decided by Redis's buckets, not a fresh local one. */
static void
on_routes_ready(void *arg)
{
	redis_ready(arg);
}

/* ---- local records ---- */

static void
key_of(const cs_limit_ask *a, char key[KEY_MAX])
{
	int off = snprintf(key, KEY_MAX, "r:l:%s:", kind_names[a->kind]);
	if (a->scope == CS_SCOPE_SOURCE) {
		key[off++] = 's';
		sodium_bin2hex(key + off, (size_t)(KEY_MAX - off), a->src->b, sizeof(a->src->b));
	} else {
		snprintf(key + off, (size_t)(KEY_MAX - off), "%c%llu",
			 a->scope == CS_SCOPE_USER ? 'u' : a->target_user ? 't' : 'd',
			 (unsigned long long)a->id);
	}
}

/* Drops records unused for IDLE_MS that are neither blocked nor waiting to be sent. */
static void
tidy(cs_limits *l, uint64_t now)
{
	lentry *e, *tmp;
	HASH_ITER(hh, l->entries, e, tmp) {
		if (!e->in_batch && e->blocked_until <= now && now - e->used_ms > IDLE_MS) {
			HASH_DEL(l->entries, e);
			free(e);
			l->nentries--;
		}
	}
}

static void
on_tidy(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	tidy(arg, sp_mono_ms());
}

static lentry *
entry_get(cs_limits *l, const cs_limit_ask *a, uint64_t now)
{
	char key[KEY_MAX] = {0};
	key_of(a, key);
	lentry *e;
	HASH_FIND_STR(l->entries, key, e);
	if (e)
		return e;
	if (l->nentries >= l->cfg.max_entries) {
		tidy(l, now);
		if (l->nentries >= l->cfg.max_entries)
			return NULL;
	}
	if (!(e = calloc(1, sizeof(*e))))
		return NULL;
	memcpy(e->key, key, KEY_MAX);
	e->kind = a->kind;
	e->scope = a->scope;
	e->tokens = l->cfg.rate[a->kind][a->scope].burst;
	e->tokens_ms = now;
	HASH_ADD_STR(l->entries, key, e);
	l->nentries++;
	return e;
}

/* ---- taking ---- */

typedef struct flush_op {
	cs_limits *l;
	size_t n;
	uint64_t t0;
	char keys[][KEY_MAX];
} flush_op;

static void
on_flushed(redisAsyncContext *ac, void *reply, void *arg)
{
	(void)ac;
	flush_op *op = arg;
	cs_limits *l = op->l;
	redisReply *rep = reply;
	if (!rep) { /* disconnected or freed: the costs are lost, the limits stay */
		free(op);
		return;
	}
	sp_metric_observe(l->m.latency, (double)(sp_mono_ns() - op->t0) / 1e9);
	if (rep->type != REDIS_REPLY_ARRAY || rep->elements != op->n) {
		sp_metric_inc(l->m.redis_errors);
		if (rep->type == REDIS_REPLY_ERROR && !strncmp(rep->str, "NOSCRIPT", 8)) {
			/* Redis restarted or was flushed: load it again; until then, local. */
			l->script_gen = l->loading_gen = 0;
			redis_ready(l);
		} else {
			sp_warn_rl("redis: limits script failed: %s",
				   rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
		}
		free(op);
		return;
	}
	uint64_t now = sp_mono_ms();
	for (size_t i = 0; i < op->n; i++) {
		redisReply *el = rep->element[i];
		lentry *e;
		HASH_FIND_STR(l->entries, op->keys[i], e);
		if (!e || el->type != REDIS_REPLY_INTEGER || el->integer <= 0)
			continue;
		/* Bounded: a bucket is never more than one burst in debt. */
		uint64_t wait = (uint64_t)el->integer;
		if (now + wait > e->blocked_until)
			e->blocked_until = now + wait;
	}
	free(op);
}

static void
send_batch(cs_limits *l, redisAsyncContext *ac, lentry **ents, size_t n)
{
	const char *argv[3 + 4 * BATCH_MAX];
	size_t lens[3 + 4 * BATCH_MAX];
	char nums[BATCH_MAX][3][32], nkeys[16];
	flush_op *op = malloc(sizeof(*op) + n * KEY_MAX);
	if (!op) {
		sp_metric_inc(l->m.redis_errors);
		return;
	}
	op->l = l;
	op->n = n;
	op->t0 = sp_mono_ns();
	snprintf(nkeys, sizeof(nkeys), "%zu", n);
	argv[0] = "EVALSHA";
	argv[1] = l->sha;
	argv[2] = nkeys;
	for (size_t i = 0; i < n; i++) {
		const cs_limit_rate *r = &l->cfg.rate[ents[i]->kind][ents[i]->scope];
		memcpy(op->keys[i], ents[i]->key, KEY_MAX);
		argv[3 + i] = op->keys[i];
		snprintf(nums[i][0], 32, "%.9g", r->per_ms);
		snprintf(nums[i][1], 32, "%.9g", r->burst);
		snprintf(nums[i][2], 32, "%.9g", ents[i]->pend);
		for (int k = 0; k < 3; k++)
			argv[3 + n + 3 * i + (size_t)k] = nums[i][k];
	}
	for (size_t i = 0; i < 3 + 4 * n; i++)
		lens[i] = strlen(argv[i]);
	if (redisAsyncCommandArgv(ac, on_flushed, op, (int)(3 + 4 * n), argv, lens) != REDIS_OK) {
		sp_metric_inc(l->m.redis_errors);
		free(op);
		return;
	}
	sp_metric_inc(l->m.batches);
}

/* End of a loop pass: the costs taken in it go to Redis, BATCH_MAX buckets per call. */
static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_limits *l = arg;
	lentry *ents[BATCH_MAX];
	size_t n = 0;
	redisAsyncContext *ac = redis_ready(l);
	while (l->batch) {
		lentry *e = l->batch;
		l->batch = e->bnext;
		e->bnext = NULL;
		e->in_batch = false;
		ents[n++] = e;
		if (n == BATCH_MAX || !l->batch) {
			if (ac)
				send_batch(l, ac, ents, n);
			for (size_t i = 0; i < n; i++)
				ents[i]->pend = 0;
			n = 0;
		}
	}
	l->nbatch = 0;
}

/* The local bucket of `e`: refilled, and whether it is in debt (the ms to wait). */
static uint64_t
local_wait(const cs_limit_rate *r, lentry *e, uint64_t now)
{
	e->tokens += (double)(now - e->tokens_ms) * r->per_ms;
	if (e->tokens > r->burst)
		e->tokens = r->burst;
	e->tokens_ms = now;
	return e->tokens < 0 ? (uint64_t)ceil(-e->tokens / r->per_ms) + 1 : 0;
}

uint64_t
cs_limits_take(cs_limits *l, const cs_limit_ask *asks, size_t n, size_t *which)
{
	uint64_t now = sp_mono_ms();
	lentry *ents[4] = {NULL, NULL, NULL, NULL};
	bool redis = redis_ready(l) != NULL;
	SP_ASSERT(n <= 4);
	for (size_t i = 0; i < n; i++) {
		const cs_limit_rate *r = &l->cfg.rate[asks[i].kind][asks[i].scope];
		if (r->per_ms <= 0)
			continue;
		if (!(ents[i] = entry_get(l, &asks[i], now))) {
			sp_metric_inc(l->m.untracked); /* table full or out of memory: admitted */
			continue;
		}
		lentry *e = ents[i];
		e->used_ms = now;
		uint64_t wait = redis ? (e->blocked_until > now ? e->blocked_until - now : 0)
				      : local_wait(r, e, now);
		if (wait) {
			*which = i;
			sp_metric_inc(l->m.limited[asks[i].kind][asks[i].scope]);
			sp_warn_rl("limit %s per %s: %s refused for %llu ms", kind_names[asks[i].kind],
				   scope_names[asks[i].scope], e->key, (unsigned long long)wait);
			return wait;
		}
	}
	if (!redis)
		sp_metric_inc(l->m.local);
	for (size_t i = 0; i < n; i++) {
		lentry *e = ents[i];
		if (!e)
			continue;
		double burst = l->cfg.rate[asks[i].kind][asks[i].scope].burst;
		/* Both views take the cost: the local one is what is used if Redis goes away. */
		e->tokens = e->tokens - asks[i].cost < -burst ? -burst : e->tokens - asks[i].cost;
		if (!redis)
			continue;
		e->pend += asks[i].cost;
		if (!e->in_batch) {
			e->in_batch = true;
			e->bnext = l->batch;
			l->batch = e;
			if (l->nbatch++ == 0)
				event_active(l->flush_ev, 0, 0);
		}
	}
	return 0;
}

bool
cs_limits_connected(const cs_limits *l)
{
	return l->script_gen && l->script_gen == cs_routes_generation(l->routes) &&
	       cs_routes_redis(l->routes);
}

/* ---- life cycle ---- */

int
cs_limits_new(struct event_base *base, cs_routes *routes, const cs_limits_cfg *cfg, cs_limits **out)
{
	cs_limits *l = calloc(1, sizeof(*l));
	if (!l)
		return SP_ENOMEM;
	l->routes = routes;
	l->cfg = *cfg;
	if (!l->cfg.max_entries)
		l->cfg.max_entries = 1;
	unsigned char digest[SHA_DIGEST_LENGTH];
	SHA1((const unsigned char *)take_script, strlen(take_script), digest);
	sodium_bin2hex(l->sha, sizeof(l->sha), digest, sizeof(digest));
	for (int k = 0; k < CS_LIM__N; k++)
		for (int s = 0; s < CS_SCOPE__N; s++) {
			char name[128];
			snprintf(name, sizeof(name),
				 "sp_connsrv_limited_total{kind=\"%s\",scope=\"%s\"}", kind_names[k],
				 scope_names[s]);
			l->m.limited[k][s] = sp_metric_counter(
				name, "costly frames refused by an abuse limit (ERROR with retry_after)");
		}
	l->m.local = sp_metric_counter("sp_connsrv_limit_local_total",
				       "limited frames decided by this worker's buckets alone (Redis away)");
	l->m.redis_errors = sp_metric_counter("sp_connsrv_limit_redis_errors_total",
					      "limit batches that failed in Redis (their costs are lost)");
	l->m.batches = sp_metric_counter("sp_connsrv_limit_batches_total",
					 "EVALSHA calls of the limits script");
	l->m.untracked = sp_metric_counter("sp_connsrv_limit_untracked_total",
					   "limited frames admitted without a bucket (local table full)");
	l->m.latency = sp_metric_histogram("sp_connsrv_limit_redis_seconds",
					   "limits script calls, request to reply");
	struct timeval tidy_tv = {10, 0};
	if (!(l->flush_ev = event_new(base, -1, 0, on_flush, l)) ||
	    !(l->tidy_ev = event_new(base, -1, EV_PERSIST, on_tidy, l)) ||
	    event_add(l->tidy_ev, &tidy_tv) != 0) {
		cs_limits_free(l);
		return SP_ENOMEM;
	}
	cs_routes_on_ready(routes, on_routes_ready, l);
	redis_ready(l); /* routes may be connected already */
	*out = l;
	return SP_OK;
}

void
cs_limits_free(cs_limits *l)
{
	if (!l)
		return;
	if (l->flush_ev)
		event_free(l->flush_ev);
	if (l->tidy_ev)
		event_free(l->tidy_ev);
	lentry *e, *tmp;
	HASH_ITER(hh, l->entries, e, tmp) {
		HASH_DEL(l->entries, e);
		free(e);
	}
	free(l);
}
