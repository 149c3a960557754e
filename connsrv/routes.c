#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <sodium.h>

#include "connsrv/routes.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_metrics.h"
#include "sp_time.h"

/* Only the holder of the route may drop or extend it: a newer login elsewhere wins. */
static const char cad_script[] =
	"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
static const char cae_script[] =
	"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) "
	"end return 0";

struct cs_routes {
	struct event_base *base;
	redisAsyncContext *ac;
	bool connected;
	char host[256];
	int port;
	int ttl_s;
	char user[128];     /* ACL user ("" with a password: the default user) */
	char password[256]; /* "" : no AUTH */
	uint64_t generation; /* connections made ready */
	void (*on_ready)(void *arg);
	void *on_ready_arg;
	struct event *retry;
	sp_metric *latency;
};

static void connect_now(cs_routes *r);

static void
on_retry(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	connect_now(arg);
}

static void
schedule_retry(cs_routes *r)
{
	struct timeval tv = {0, 500 * 1000};
	evtimer_add(r->retry, &tv);
}

static void
on_auth(redisAsyncContext *ac, void *reply, void *arg)
{
	cs_routes *r = arg;
	redisReply *rep = reply;
	if (!rep)
		return; /* the connection went away: on_disconnect retries */
	if (rep->type == REDIS_REPLY_ERROR) {
		/* The reply names no secret: "WRONGPASS invalid username-password pair ...". */
		sp_warn_rl("redis %s:%d: AUTH as %s refused: %s", r->host, r->port,
			    r->user[0] ? r->user : "default", rep->str);
		redisAsyncDisconnect(ac);
		return;
	}
	r->connected = true;
	r->generation++;
	sp_info("redis %s:%d connected (as %s)", r->host, r->port, r->user[0] ? r->user : "default");
	if (r->on_ready)
		r->on_ready(r->on_ready_arg);
}

static void
on_connect(const redisAsyncContext *ac, int status)
{
	cs_routes *r = ac->data;
	if (status != REDIS_OK) {
		sp_warn("redis %s:%d: connect failed: %s", r->host, r->port, ac->errstr);
		r->ac = NULL; /* hiredis frees the context after this callback */
		schedule_retry(r);
		return;
	}
	if (r->password[0]) {
		/* First on the connection: whatever is sent after it runs authenticated. */
		int rc = r->user[0] ? redisAsyncCommand(r->ac, on_auth, r, "AUTH %s %s", r->user,
							r->password)
				    : redisAsyncCommand(r->ac, on_auth, r, "AUTH %s", r->password);
		if (rc != REDIS_OK) {
			sp_warn("redis %s:%d: AUTH not sent", r->host, r->port);
			redisAsyncDisconnect(r->ac);
		}
		return;
	}
	r->connected = true;
	r->generation++;
	sp_info("redis %s:%d connected", r->host, r->port);
	if (r->on_ready)
		r->on_ready(r->on_ready_arg);
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
	cs_routes *r = ac->data;
	r->connected = false;
	r->ac = NULL;
	if (status != REDIS_OK)
		sp_warn("redis %s:%d: disconnected: %s", r->host, r->port, ac->errstr);
	if (r->retry)
		schedule_retry(r);
}

static void
connect_now(cs_routes *r)
{
	redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
	if (!ac || ac->err) {
		sp_warn("redis %s:%d: %s", r->host, r->port, ac ? ac->errstr : "out of memory");
		if (ac)
			redisAsyncFree(ac);
		schedule_retry(r);
		return;
	}
	ac->data = r;
	redisLibeventAttach(ac, r->base);
	redisAsyncSetConnectCallback(ac, on_connect);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	r->ac = ac;
}

int
cs_routes_new(struct event_base *base, const char *addr, const char *user, const char *password,
	      int ttl_s, cs_routes **out)
{
	const char *colon = strrchr(addr, ':');
	if (!colon)
		return SP_ECONFIG;
	cs_routes *r = calloc(1, sizeof(*r));
	if (!r)
		return SP_ENOMEM;
	size_t n = (size_t)(colon - addr);
	if (n >= sizeof(r->host)) {
		free(r);
		return SP_ECONFIG;
	}
	memcpy(r->host, addr, n);
	r->port = atoi(colon + 1);
	if ((size_t)snprintf(r->user, sizeof(r->user), "%s", user ? user : "") >= sizeof(r->user) ||
	    (size_t)snprintf(r->password, sizeof(r->password), "%s", password ? password : "") >=
		    sizeof(r->password) ||
	    (r->user[0] && !r->password[0])) {
		free(r);
		return SP_ECONFIG;
	}
	r->base = base;
	r->ttl_s = ttl_s;
	r->latency = sp_metric_histogram("sp_connsrv_redis_seconds", "route claims in Redis, request to reply");
	r->retry = evtimer_new(base, on_retry, r);
	if (!r->retry) {
		free(r);
		return SP_ENOMEM;
	}
	connect_now(r);
	*out = r;
	return SP_OK;
}

void
cs_routes_free(cs_routes *r)
{
	if (!r)
		return;
	event_free(r->retry);
	r->retry = NULL;
	if (r->ac)
		redisAsyncFree(r->ac); /* pending callbacks run with a NULL reply */
	sodium_memzero(r->password, sizeof(r->password));
	free(r);
}

bool
cs_routes_connected(const cs_routes *r)
{
	return r->connected;
}

/* The Redis key of a device's route. */
static void
route_key(char key[32], uint64_t device)
{
	snprintf(key, 32, "r:%llu", (unsigned long long)device);
}

/* The stored value: "<pull url>|<conn_epoch>". */
static void
route_value(char *buf, size_t cap, const char *url, uint64_t epoch)
{
	snprintf(buf, cap, "%s|%llu", url, (unsigned long long)epoch);
}

#define ROUTE_VALUE_MAX 300
#define ROUTE_URL_MAX 256

/* Parses a stored value in place: the url is cut at the last '|' (the reply buffer is ours
 * until the callback returns). A value that is not a route reads as none. */
static cs_route
route_parse(char *value)
{
	cs_route rt = {NULL, 0};
	char *bar = value ? strrchr(value, '|') : NULL;
	if (!bar || (size_t)(bar - value) >= ROUTE_URL_MAX)
		return rt;
	*bar = '\0';
	rt.url = value;
	rt.epoch = strtoull(bar + 1, NULL, 10);
	return rt;
}

typedef struct claim_op {
	cs_route_claim_cb cb;
	void *arg;
	cs_routes *r;
	uint64_t t0;
} claim_op;

static void
on_claim(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)ac;
	claim_op *op = privdata;
	redisReply *rep = reply;
	sp_metric_observe(op->r->latency, (double)(sp_mono_ns() - op->t0) / 1e9);
	cs_route old = {NULL, 0};
	if (!rep || rep->type == REDIS_REPLY_ERROR) {
		op->cb(op->arg, SP_EREDIS, NULL);
	} else {
		if (rep->type == REDIS_REPLY_STRING)
			old = route_parse(rep->str);
		op->cb(op->arg, SP_OK, &old);
	}
	free(op);
}

int
cs_routes_claim(cs_routes *r, uint64_t device, const char *url, uint64_t epoch,
		cs_route_claim_cb cb, void *arg)
{
	if (!r->connected)
		return SP_EREDIS;
	claim_op *op = malloc(sizeof(*op));
	if (!op)
		return SP_ENOMEM;
	op->cb = cb;
	op->arg = arg;
	op->r = r;
	op->t0 = sp_mono_ns();
	char key[32], value[ROUTE_VALUE_MAX];
	route_key(key, device);
	route_value(value, sizeof(value), url, epoch);
	if (redisAsyncCommand(r->ac, on_claim, op, "SET %s %s EX %d GET", key, value, r->ttl_s) !=
	    REDIS_OK) {
		free(op);
		return SP_EREDIS;
	}
	return SP_OK;
}

void
cs_routes_release(cs_routes *r, uint64_t device, const char *url, uint64_t epoch)
{
	if (!r->connected)
		return;
	char key[32], value[ROUTE_VALUE_MAX];
	route_key(key, device);
	route_value(value, sizeof(value), url, epoch);
	redisAsyncCommand(r->ac, NULL, NULL, "EVAL %s 1 %s %s", cad_script, key, value);
}

void
cs_routes_refresh(cs_routes *r, uint64_t device, const char *url, uint64_t epoch)
{
	if (!r->connected)
		return;
	char key[32], value[ROUTE_VALUE_MAX];
	route_key(key, device);
	route_value(value, sizeof(value), url, epoch);
	redisAsyncCommand(r->ac, NULL, NULL, "EVAL %s 1 %s %s %d", cae_script, key, value, r->ttl_s);
}

typedef struct lookup_op {
	cs_route_lookup_cb cb;
	void *arg;
	size_t n;
} lookup_op;

static void
on_lookup(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)ac;
	lookup_op *op = privdata;
	redisReply *rep = reply;
	if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != op->n) {
		op->cb(op->arg, SP_EREDIS, NULL, 0);
		free(op);
		return;
	}
	cs_route *routes = calloc(op->n, sizeof(*routes));
	if (!routes) {
		op->cb(op->arg, SP_ENOMEM, NULL, 0);
		free(op);
		return;
	}
	for (size_t i = 0; i < op->n; i++)
		if (rep->element[i]->type == REDIS_REPLY_STRING)
			routes[i] = route_parse(rep->element[i]->str);
	op->cb(op->arg, SP_OK, routes, op->n);
	free(routes);
	free(op);
}
int
cs_routes_lookup(cs_routes *r, const uint64_t *devices, size_t n, cs_route_lookup_cb cb, void *arg)
{
	if (!r->connected)
		return SP_EREDIS;
	if (n == 0 || n > 10000)
		return SP_EINVAL;
	lookup_op *op = malloc(sizeof(*op));
	const char **argv = calloc(n + 1, sizeof(char *));
	size_t *lens = calloc(n + 1, sizeof(size_t));
	char *keys = malloc(n * 32);
	int rc = SP_ENOMEM;
	if (!op || !argv || !lens || !keys)
		goto out;
	argv[0] = "MGET";
	lens[0] = 4;
	for (size_t i = 0; i < n; i++) {
		char *k = keys + i * 32;
		route_key(k, devices[i]);
		lens[i + 1] = strlen(k);
		argv[i + 1] = k;
	}
	op->cb = cb;
	op->arg = arg;
	op->n = n;
	if (redisAsyncCommandArgv(r->ac, on_lookup, op, (int)n + 1, argv, lens) != REDIS_OK) {
		rc = SP_EREDIS;
		goto out;
	}
	op = NULL;
	rc = SP_OK;
out:
	free(op);
	free(argv);
	free(lens);
	free(keys);
	return rc;
}

typedef struct cmd_op {
	cs_routes_cmd_cb cb;
	void *arg;
} cmd_op;

static void
on_command(redisAsyncContext *ac, void *reply, void *privdata)
{
	(void)ac;
	cmd_op *op = privdata;
	redisReply *rep = reply;
	op->cb(op->arg, !rep || rep->type == REDIS_REPLY_ERROR ? SP_EREDIS : SP_OK);
	free(op);
}

int
cs_routes_command(cs_routes *r, int argc, const char **argv, const size_t *lens,
		  cs_routes_cmd_cb cb, void *arg)
{
	if (!r->connected)
		return SP_EREDIS;
	cmd_op *op = malloc(sizeof(*op));
	if (!op)
		return SP_ENOMEM;
	op->cb = cb;
	op->arg = arg;
	if (redisAsyncCommandArgv(r->ac, on_command, op, argc, argv, lens) != REDIS_OK) {
		free(op);
		return SP_EREDIS;
	}
	return SP_OK;
}

struct redisAsyncContext *
cs_routes_redis(cs_routes *r)
{
	return r->connected ? r->ac : NULL;
}

uint64_t
cs_routes_generation(const cs_routes *r)
{
	return r->generation;
}

void
cs_routes_on_ready(cs_routes *r, void (*cb)(void *arg), void *arg)
{
	r->on_ready = cb;
	r->on_ready_arg = arg;
}
