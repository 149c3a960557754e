/* Per-source admission (see admit.h). */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <uthash.h>

#include "connsrv/admit.h"
#include "sp_error.h"
#include "sp_log.h"

typedef struct source {
	cs_admit_key key;
	long long unauth;
	double tokens;
	uint64_t tokens_ms;
	UT_hash_handle hh;
	struct source *prev, *next; /* idle list (unauth == 0), oldest first */
} source;

struct cs_admit {
	cs_admit_cfg cfg;
	source *by_key;
	size_t n;
	source *idle_head, *idle_tail;
};

static void
idle_add(cs_admit *a, source *s)
{
	s->next = NULL;
	s->prev = a->idle_tail;
	if (a->idle_tail)
		a->idle_tail->next = s;
	else
		a->idle_head = s;
	a->idle_tail = s;
}

static void
idle_del(cs_admit *a, source *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		a->idle_head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	else
		a->idle_tail = s->prev;
	s->prev = s->next = NULL;
}

int
cs_admit_new(const cs_admit_cfg *cfg, cs_admit **out)
{
	*out = NULL;
	if (cfg->max_unauth < 1 || cfg->hs_rate <= 0 || cfg->hs_burst < 1 || cfg->max_sources < 1)
		return SP_EINVAL;
	cs_admit *a = calloc(1, sizeof(*a));
	if (!a)
		return SP_ENOMEM;
	a->cfg = *cfg;
	*out = a;
	return SP_OK;
}

void
cs_admit_free(cs_admit *a)
{
	if (!a)
		return;
	source *s, *tmp;
	HASH_ITER(hh, a->by_key, s, tmp)
	{
		HASH_DEL(a->by_key, s);
		free(s);
	}
	free(a);
}

void
cs_admit_key_of(const struct sockaddr *sa, cs_admit_key *k)
{
	memset(k, 0, sizeof(*k));
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		k->b[0] = 4;
		memcpy(k->b + 1, &in->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in = (const struct sockaddr_in6 *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&in->sin6_addr)) {
			k->b[0] = 4;
			memcpy(k->b + 1, in->sin6_addr.s6_addr + 12, 4);
		} else {
			/* One host usually holds a whole /64: per address would be no limit. */
			k->b[0] = 6;
			memcpy(k->b + 1, in->sin6_addr.s6_addr, 8);
		}
	}
}

static source *
find(const cs_admit *a, const cs_admit_key *k)
{
	source *s;
	HASH_FIND(hh, a->by_key, k->b, sizeof(k->b), s);
	return s;
}

cs_admit_verdict
cs_admit_take(cs_admit *a, const cs_admit_key *k, uint64_t now_ms)
{
	source *s = find(a, k);
	if (!s) {
		if (a->n >= a->cfg.max_sources) {
			source *old = a->idle_head;
			if (!old)
				return CS_ADMIT_TABLE;
			idle_del(a, old);
			HASH_DEL(a->by_key, old);
			free(old);
			a->n--;
		}
		if (!(s = calloc(1, sizeof(*s))))
			return CS_ADMIT_TABLE;
		s->key = *k;
		s->tokens = (double)a->cfg.hs_burst;
		s->tokens_ms = now_ms;
		HASH_ADD(hh, a->by_key, key.b, sizeof(s->key.b), s);
		a->n++;
		idle_add(a, s);
	}
	if (now_ms > s->tokens_ms) {
		s->tokens += (double)(now_ms - s->tokens_ms) * a->cfg.hs_rate / 1000.0;
		if (s->tokens > (double)a->cfg.hs_burst)
			s->tokens = (double)a->cfg.hs_burst;
		s->tokens_ms = now_ms;
	}
	if (s->unauth == 0) { /* most recently used: the last to be evicted */
		idle_del(a, s);
		idle_add(a, s);
	}
	if (s->unauth >= a->cfg.max_unauth)
		return CS_ADMIT_UNAUTH;
	if (s->tokens < 1.0)
		return CS_ADMIT_RATE;
	s->tokens -= 1.0;
	if (s->unauth++ == 0)
		idle_del(a, s);
	return CS_ADMIT_OK;
}

void
cs_admit_release(cs_admit *a, const cs_admit_key *k)
{
	source *s = find(a, k);
	/* A source holding a slot is pinned: never evicted while counted. */
	SP_ASSERT(s && s->unauth > 0);
	if (--s->unauth == 0)
		idle_add(a, s);
}

size_t
cs_admit_sources(const cs_admit *a)
{
	return a->n;
}

long long
cs_admit_unauth(const cs_admit *a, const cs_admit_key *k)
{
	const source *s = find(a, k);
	return s ? s->unauth : 0;
}

const char *
cs_admit_verdict_name(cs_admit_verdict v)
{
	static const char *names[] = {
		[CS_ADMIT_OK] = "ok",
		[CS_ADMIT_UNAUTH] = "unauth_per_source",
		[CS_ADMIT_RATE] = "handshake_rate",
		[CS_ADMIT_TABLE] = "source_table_full",
	};
	return (unsigned)v < sizeof(names) / sizeof(names[0]) ? names[v] : "?";
}
