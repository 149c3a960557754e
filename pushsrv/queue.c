/* Wake-up queue and periods in Redis (see queue.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <sodium.h>

#include "pushsrv/queue.h"
#include "sp_error.h"
#include "sp_log.h"

#define DUE_KEY "r:push:due" /* CS_PUSH_DUE_KEY in connsrv/push.h */
/* Failed-attempt counters outlive any backoff: a stale one is gone within the hour. */
#define TRY_TTL_MS 3600000

/* KEYS[1] the due set, ARGV[1] now, ARGV[2] how many: what is due, removed. */
static const char pop_script[] =
	"local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2]) "
	"if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end "
	"return due";

struct ps_queue {
	redisContext *c;
	char host[256];
	int port;
	int timeout_ms;
	char user[128], password[256];
};

int
ps_queue_new(const char *addr, const char *user, const char *password, int timeout_ms,
	     ps_queue **out)
{
	const char *colon = strrchr(addr, ':');
	if (!colon || colon == addr || (size_t)(colon - addr) >= 256 || atoi(colon + 1) <= 0 ||
	    atoi(colon + 1) > 65535)
		return SP_ECONFIG;
	ps_queue *q = calloc(1, sizeof(*q));
	if (!q)
		return SP_ENOMEM;
	memcpy(q->host, addr, (size_t)(colon - addr));
	q->port = atoi(colon + 1);
	q->timeout_ms = timeout_ms;
	if ((size_t)snprintf(q->user, sizeof(q->user), "%s", user ? user : "") >= sizeof(q->user) ||
	    (size_t)snprintf(q->password, sizeof(q->password), "%s", password ? password : "") >=
		sizeof(q->password) ||
	    (q->user[0] && !q->password[0])) {
		ps_queue_free(q);
		return SP_ECONFIG;
	}
	*out = q;
	return SP_OK;
}

void
ps_queue_free(ps_queue *q)
{
	if (!q)
		return;
	if (q->c)
		redisFree(q->c);
	sodium_memzero(q->password, sizeof(q->password));
	free(q);
}

static void
drop_conn(ps_queue *q)
{
	if (q->c)
		redisFree(q->c);
	q->c = NULL;
}

static int
ensure_conn(ps_queue *q)
{
	if (q->c)
		return SP_OK;
	struct timeval tv = {q->timeout_ms / 1000, (q->timeout_ms % 1000) * 1000};
	q->c = redisConnectWithTimeout(q->host, q->port, tv);
	if (!q->c || q->c->err) {
		sp_warn_rl("redis %s:%d: %s", q->host, q->port, q->c ? q->c->errstr : "out of memory");
		drop_conn(q);
		return SP_EREDIS;
	}
	redisSetTimeout(q->c, tv);
	if (q->password[0]) {
		redisReply *r = q->user[0] ? redisCommand(q->c, "AUTH %s %s", q->user, q->password)
					   : redisCommand(q->c, "AUTH %s", q->password);
		bool ok = r && r->type != REDIS_REPLY_ERROR;
		/* The error names no secret ("WRONGPASS invalid username-password pair"). */
		if (!ok)
			sp_warn_rl("redis %s:%d: AUTH as %s refused: %s", q->host, q->port,
				   q->user[0] ? q->user : "default", r ? r->str : q->c->errstr);
		freeReplyObject(r);
		if (!ok) {
			drop_conn(q);
			return SP_EREDIS;
		}
	}
	sp_info("redis %s:%d connected", q->host, q->port);
	return SP_OK;
}

/* Runs one command (argv form); on SP_OK the caller frees *rep. */
static int
command(ps_queue *q, int argc, const char **argv, redisReply **rep)
{
	size_t lens[8];
	int rc = ensure_conn(q);
	if (rc)
		return rc;
	for (int i = 0; i < argc; i++)
		lens[i] = strlen(argv[i]);
	redisReply *r = redisCommandArgv(q->c, argc, argv, lens);
	if (!r) {
		sp_warn_rl("redis %s:%d: %s", q->host, q->port, q->c->errstr);
		drop_conn(q);
		return SP_EREDIS;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		sp_warn_rl("redis %s: %s", argv[0], r->str);
		freeReplyObject(r);
		return SP_EREDIS;
	}
	*rep = r;
	return SP_OK;
}

static int
command_only(ps_queue *q, int argc, const char **argv)
{
	redisReply *r;
	int rc = command(q, argc, argv, &r);
	if (rc == SP_OK)
		freeReplyObject(r);
	return rc;
}

static bool
parse_device(const char *s, size_t len, uint64_t *out)
{
	uint64_t v = 0;
	if (len == 0 || len > 20)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		uint64_t d = (uint64_t)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return v != 0;
}

int
ps_queue_pop(ps_queue *q, uint64_t now_ms, uint64_t *devices, size_t max, size_t *n, size_t *bad)
{
	char now[24], count[24];
	redisReply *r;
	*n = *bad = 0;
	snprintf(now, sizeof(now), "%llu", (unsigned long long)now_ms);
	snprintf(count, sizeof(count), "%zu", max);
	const char *argv[] = {"EVAL", pop_script, "1", DUE_KEY, now, count};
	int rc = command(q, 6, argv, &r);
	if (rc)
		return rc;
	if (r->type == REDIS_REPLY_ARRAY) {
		for (size_t i = 0; i < r->elements && *n < max; i++) {
			redisReply *e = r->element[i];
			if (e->type == REDIS_REPLY_STRING && parse_device(e->str, e->len, &devices[*n]))
				(*n)++;
			else
				(*bad)++;
		}
	}
	freeReplyObject(r);
	return SP_OK;
}

int
ps_queue_online(ps_queue *q, uint64_t device, bool *online)
{
	char key[32];
	redisReply *r;
	snprintf(key, sizeof(key), "r:%llu", (unsigned long long)device);
	const char *argv[] = {"EXISTS", key};
	int rc = command(q, 2, argv, &r);
	if (rc)
		return rc;
	*online = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
	freeReplyObject(r);
	return SP_OK;
}

int
ps_queue_claim(ps_queue *q, uint64_t device, int period_ms, bool *claimed, int64_t *left_ms)
{
	char key[48], px[24];
	redisReply *r;
	snprintf(key, sizeof(key), "r:push:sent:%llu", (unsigned long long)device);
	snprintf(px, sizeof(px), "%d", period_ms);
	const char *argv[] = {"SET", key, "1", "NX", "PX", px};
	int rc = command(q, 6, argv, &r);
	if (rc)
		return rc;
	*claimed = r->type == REDIS_REPLY_STATUS;
	freeReplyObject(r);
	*left_ms = 0;
	if (*claimed)
		return SP_OK;
	const char *pttl[] = {"PTTL", key};
	if ((rc = command(q, 2, pttl, &r)))
		return rc;
	/* -2: ended meanwhile, -1: no expiry (not ours to keep): due again at once. */
	*left_ms = r->type == REDIS_REPLY_INTEGER && r->integer > 0 ? r->integer : 0;
	freeReplyObject(r);
	return SP_OK;
}

int
ps_queue_unclaim(ps_queue *q, uint64_t device)
{
	char key[48];
	snprintf(key, sizeof(key), "r:push:sent:%llu", (unsigned long long)device);
	const char *argv[] = {"DEL", key};
	return command_only(q, 2, argv);
}

int
ps_queue_schedule(ps_queue *q, uint64_t device, uint64_t due_ms)
{
	char score[24], member[24];
	snprintf(score, sizeof(score), "%llu", (unsigned long long)due_ms);
	snprintf(member, sizeof(member), "%llu", (unsigned long long)device);
	const char *argv[] = {"ZADD", DUE_KEY, "LT", score, member};
	return command_only(q, 5, argv);
}

int
ps_queue_failed_attempt(ps_queue *q, uint64_t device, int *attempt)
{
	char key[48], ttl[24];
	redisReply *r;
	snprintf(key, sizeof(key), "r:push:try:%llu", (unsigned long long)device);
	snprintf(ttl, sizeof(ttl), "%d", TRY_TTL_MS);
	const char *argv[] = {"INCR", key};
	int rc = command(q, 2, argv, &r);
	if (rc)
		return rc;
	*attempt = r->type == REDIS_REPLY_INTEGER && r->integer > 0 && r->integer < 1000000
			   ? (int)r->integer
			   : 1;
	freeReplyObject(r);
	const char *exp[] = {"PEXPIRE", key, ttl};
	return command_only(q, 3, exp);
}

int
ps_queue_forget(ps_queue *q, uint64_t device)
{
	char key[48];
	snprintf(key, sizeof(key), "r:push:try:%llu", (unsigned long long)device);
	const char *argv[] = {"DEL", key};
	return command_only(q, 2, argv);
}
