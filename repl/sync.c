/* The primary's commit tracker: sync-set members, their acks, the commit LSN. */
#include "sync.h"

#include <stdlib.h>
#include <string.h>

#include "sp_error.h"

typedef struct member {
	char name[REPL_SYNC_NAME_MAX + 1];
	uint8_t inc[REPL_SYNC_INCARNATION_LEN];
	repl_sync_state state;
	uint64_t flushed;
	uint64_t barrier;
	uint64_t last_ack_ms;
	uint64_t wait_ms; /* since when it is expected to advance */
} member;

struct repl_sync {
	unsigned min_copies;
	unsigned max_members;
	uint64_t flushed; /* the primary's */
	uint64_t commit;
	uint64_t ignored;
	member *m;
	size_t n;
};

static void recompute(repl_sync *s);

int
repl_sync_new(const repl_sync_config *cfg, repl_sync **out)
{
	if (!out)
		return SP_EINVAL;
	unsigned maxm = cfg && cfg->max_members ? cfg->max_members : REPL_SYNC_DEFAULT_MAX_MEMBERS;
	unsigned minc = cfg && cfg->min_copies ? cfg->min_copies : REPL_SYNC_DEFAULT_MIN_COPIES;
	uint64_t flushed = cfg ? cfg->flushed : 0, commit = cfg ? cfg->commit : 0;
	if (maxm > REPL_SYNC_MAX_MEMBERS || minc > maxm + 1 || commit > flushed)
		return SP_EINVAL;
	repl_sync *s = calloc(1, sizeof(*s));
	if (!s)
		return SP_ENOMEM;
	if (!(s->m = calloc(maxm, sizeof(*s->m)))) {
		free(s);
		return SP_ENOMEM;
	}
	s->min_copies = minc;
	s->max_members = maxm;
	s->flushed = flushed;
	s->commit = commit;
	recompute(s);
	*out = s;
	return SP_OK;
}

void
repl_sync_free(repl_sync *s)
{
	if (!s)
		return;
	free(s->m);
	free(s);
}

static bool
name_ok(const char *name)
{
	return name && *name && strnlen(name, REPL_SYNC_NAME_MAX + 1) <= REPL_SYNC_NAME_MAX;
}

static member *
find(const repl_sync *s, const char *name)
{
	for (size_t i = 0; i < s->n; i++)
		if (strcmp(s->m[i].name, name) == 0)
			return &s->m[i];
	return NULL;
}

bool
repl_sync_writable(const repl_sync *s)
{
	size_t copies = 1;
	for (size_t i = 0; i < s->n; i++)
		copies += s->m[i].state == REPL_SYNC_MEMBER;
	return copies >= s->min_copies;
}

/* Promotes members whose flushed LSN reached their targets and advances the commit LSN,
 * until nothing changes (a promotion can make the set writable; a commit can promote). */
static void
recompute(repl_sync *s)
{
	bool changed = true;
	while (changed) {
		changed = false;
		for (size_t i = 0; i < s->n; i++) {
			member *m = &s->m[i];
			if (m->state == REPL_SYNC_JOINING && m->flushed >= m->barrier) {
				m->state = REPL_SYNC_SYNCING;
				changed = true;
			}
			if (m->state == REPL_SYNC_SYNCING && m->flushed >= s->commit) {
				m->state = REPL_SYNC_MEMBER;
				changed = true;
			}
		}
		if (!repl_sync_writable(s))
			break;
		uint64_t c = s->flushed;
		for (size_t i = 0; i < s->n; i++)
			if (s->m[i].state != REPL_SYNC_JOINING && s->m[i].flushed < c)
				c = s->m[i].flushed;
		if (c > s->commit) {
			s->commit = c;
			changed = true;
		}
	}
}

int
repl_sync_set_flushed(repl_sync *s, uint64_t lsn, uint64_t now_ms)
{
	if (!s)
		return SP_EINVAL;
	if (lsn < s->flushed)
		return SP_ERANGE;
	/* A member that had everything is expected to advance from now on. */
	for (size_t i = 0; i < s->n; i++)
		if (s->m[i].flushed >= s->flushed && s->m[i].flushed < lsn)
			s->m[i].wait_ms = now_ms;
	s->flushed = lsn;
	recompute(s);
	return SP_OK;
}

int
repl_sync_add(repl_sync *s, const char *name, const uint8_t incarnation[REPL_SYNC_INCARNATION_LEN],
    uint64_t barrier_lsn, uint64_t now_ms)
{
	if (!s || !name_ok(name) || !incarnation)
		return SP_EINVAL;
	if (barrier_lsn > s->flushed)
		return SP_ERANGE;
	if (find(s, name))
		return SP_EEXIST;
	if (s->n == s->max_members)
		return SP_ELIMIT;
	member *m = &s->m[s->n++];
	memset(m, 0, sizeof(*m));
	strcpy(m->name, name);
	memcpy(m->inc, incarnation, REPL_SYNC_INCARNATION_LEN);
	m->state = REPL_SYNC_JOINING;
	m->barrier = barrier_lsn;
	m->last_ack_ms = m->wait_ms = now_ms;
	recompute(s);
	return SP_OK;
}

int
repl_sync_remove(repl_sync *s, const char *name)
{
	if (!s || !name_ok(name))
		return SP_EINVAL;
	member *m = find(s, name);
	if (!m)
		return SP_ENOTFOUND;
	*m = s->m[--s->n];
	recompute(s);
	return SP_OK;
}

int
repl_sync_ack(repl_sync *s, const char *name, const uint8_t incarnation[REPL_SYNC_INCARNATION_LEN],
    uint64_t flushed, uint64_t now_ms)
{
	if (!s || !name || !incarnation)
		return SP_EINVAL;
	member *m = name_ok(name) ? find(s, name) : NULL;
	if (!m || memcmp(m->inc, incarnation, REPL_SYNC_INCARNATION_LEN) != 0) {
		s->ignored++;
		return SP_ENOTFOUND;
	}
	if (flushed > m->flushed) {
		m->flushed = flushed;
		m->last_ack_ms = m->wait_ms = now_ms;
		recompute(s);
	}
	return SP_OK;
}

uint64_t
repl_sync_commit_lsn(const repl_sync *s)
{
	return s->commit;
}

uint64_t
repl_sync_ignored_acks(const repl_sync *s)
{
	return s->ignored;
}

static void
info_of(const member *m, repl_sync_info *out)
{
	memcpy(out->name, m->name, sizeof(out->name));
	memcpy(out->incarnation, m->inc, sizeof(out->incarnation));
	out->state = m->state;
	out->flushed = m->flushed;
	out->barrier = m->barrier;
	out->last_ack_ms = m->last_ack_ms;
}

int
repl_sync_lagging(const repl_sync *s, uint64_t now_ms, uint64_t bound_ms, repl_sync_info *out,
    size_t cap, size_t *n)
{
	if (!s || !n || (cap && !out))
		return SP_EINVAL;
	if (bound_ms == 0)
		bound_ms = REPL_SYNC_DEFAULT_LAG_MS;
	size_t cnt = 0;
	for (size_t i = 0; i < s->n; i++) {
		const member *m = &s->m[i];
		if (m->flushed >= s->flushed || now_ms <= m->wait_ms || now_ms - m->wait_ms <= bound_ms)
			continue;
		if (cnt < cap)
			info_of(m, &out[cnt]);
		cnt++;
	}
	*n = cnt;
	return SP_OK;
}

int
repl_sync_member(const repl_sync *s, const char *name, repl_sync_info *out)
{
	if (!s || !name_ok(name) || !out)
		return SP_EINVAL;
	const member *m = find(s, name);
	if (!m)
		return SP_ENOTFOUND;
	info_of(m, out);
	return SP_OK;
}

size_t
repl_sync_members(const repl_sync *s, repl_sync_info *out, size_t cap)
{
	for (size_t i = 0; i < s->n && i < cap; i++)
		info_of(&s->m[i], &out[i]);
	return s->n;
}
