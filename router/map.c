#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ini.h>

#include "map.h"
#include "repl/ha.h"
#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_frame.h"
#include "sp_log.h"
#include "sp_time.h"

#define DEFAULT_TIMEOUT_MS 3000

struct router_map {
	uint64_t epoch;
	uint64_t timeout_ms;
	uint64_t (*wall_ms)(void);
	size_t n;
	router_member members[ROUTER_MAX_MEMBERS];
};

/* Keys seen in the current section, to refuse repeats. */
enum { K_ROLE = 1, K_ADDR = 2, K_CLIENT = 4, K_SHARD = 8 };

typedef struct parse_ctx {
	router_map *m;
	const char *src;
	char *err;
	size_t errlen;
	bool failed;
	router_member *cur;
	unsigned seen;
	unsigned seen_all[ROUTER_MAX_MEMBERS];
} parse_ctx;

static void
bump(router_map *m)
{
	uint64_t wall = m->wall_ms();
	m->epoch = wall > m->epoch + 1 ? wall : m->epoch + 1;
}

static bool
valid_name(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > ROUTER_NAME_MAX)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
		      *s == '-' || *s == '_' || *s == '.'))
			return false;
	return true;
}

/* "host:port" or "[v6]:port" into the member. */
static int
parse_client(router_member *mb, const char *v)
{
	const char *colon = strrchr(v, ':');
	if (!colon || colon == v)
		return -1;
	const char *h = v;
	size_t hl = (size_t)(colon - v);
	if (h[0] == '[') {
		if (hl < 3 || h[hl - 1] != ']')
			return -1;
		h++;
		hl -= 2;
	}
	if (hl >= sizeof(mb->host))
		return -1;
	char *end;
	errno = 0;
	unsigned long p = strtoul(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || p == 0 || p > 65535)
		return -1;
	memcpy(mb->host, h, hl);
	mb->host[hl] = '\0';
	mb->port = (uint16_t)p;
	return 0;
}

static int fail(parse_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records the first error, prefixed with the file and the member section. Returns 1 so
 * that inih goes on (its result then counts only its own syntax errors). */
static int
fail(parse_ctx *c, const char *fmt, ...)
{
	char msg[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (c->cur)
		snprintf(c->err, c->errlen, "%s: [%s]: %s", c->src, c->cur->name, msg);
	else
		snprintf(c->err, c->errlen, "%s: %s", c->src, msg);
	c->failed = true;
	return 1;
}

/* Starts a member for a section seen for the first time. Returns 1 when started; 0 for
 * keys outside any section or an invalid section (then the error is set). */
static int
begin_section(parse_ctx *c, const char *section)
{
	router_map *m = c->m;
	c->cur = NULL;
	if (!section[0])
		return 0;
	if (strlen(section) > ROUTER_NAME_MAX)
		return !fail(c, "member name '%s...' is too long (at most %d characters)", section,
			     ROUTER_NAME_MAX);
	if (!valid_name(section))
		return !fail(c, "member name [%s] may only use letters, digits, '-', '_' and '.'",
			     section);
	for (size_t i = 0; i < m->n; i++)
		if (strcmp(m->members[i].name, section) == 0)
			return !fail(c, "section [%s] appears twice", section);
	if (m->n == ROUTER_MAX_MEMBERS)
		return !fail(c, "more than %d members", ROUTER_MAX_MEMBERS);
	c->cur = &m->members[m->n++];
	snprintf(c->cur->name, sizeof(c->cur->name), "%s", section);
	c->cur->role = -1;
	c->seen = 0;
	return 1;
}

static int
on_entry(void *user, const char *section, const char *key, const char *value)
{
	parse_ctx *c = user;
	if (c->failed)
		return 1;
	if (!c->cur || strcmp(c->cur->name, section) != 0) {
		if (c->cur)
			c->seen_all[c->cur - c->m->members] = c->seen;
		if (!begin_section(c, section))
			return c->failed ? 1
					 : fail(c, "key '%s' outside a member section (start one with [name])",
						key);
	}
	router_member *mb = c->cur;
	unsigned bit;
	if (strcmp(key, "role") == 0)
		bit = K_ROLE;
	else if (strcmp(key, "addr") == 0)
		bit = K_ADDR;
	else if (strcmp(key, "client") == 0)
		bit = K_CLIENT;
	else if (strcmp(key, "shard") == 0)
		bit = K_SHARD;
	else
		return fail(c, "unknown key '%s' (expected role, addr, client, shard)", key);
	if (c->seen & bit)
		return fail(c, "key '%s' given twice", key);
	c->seen |= bit;

	switch (bit) {
	case K_ROLE:
		if ((mb->role = sp_cluster_role_parse(value)) < 0)
			return fail(c, "unknown role '%s' (expected connsrv, inbox or keysrv)", value);
		break;
	case K_ADDR:
		if (!strstr(value, "://") || strlen(value) >= sizeof(mb->addr))
			return fail(c, "addr '%s' is not an NNG address like tcp://host:port", value);
		snprintf(mb->addr, sizeof(mb->addr), "%s", value);
		break;
	case K_CLIENT:
		if (parse_client(mb, value))
			return fail(c, "client '%s' is not host:port", value);
		break;
	case K_SHARD: {
		char *end;
		errno = 0;
		unsigned long long s = strtoull(value, &end, 10);
		if (errno || *end || end == value || value[0] == '-' || s > 65535)
			return fail(c, "shard '%s' is not a number in [0, 65535]", value);
		mb->shard = (uint32_t)s;
		break;
	}
	}
	return 1;
}

static int pack_map(const router_map *m, uint64_t epoch, uint64_t id, bool has_id, bool widest,
		    msgpack_sbuffer *sb);

/* Rules across keys and members, checked once the whole file is read. Returns true when
 * they hold; otherwise the error is set. */
static bool
validate(parse_ctx *c)
{
	router_map *m = c->m;
	if (c->cur)
		c->seen_all[c->cur - m->members] = c->seen;
	if (m->n == 0) {
		c->cur = NULL;
		return !fail(c, "no members (one [name] section per member)");
	}
	for (size_t i = 0; i < m->n; i++) {
		router_member *mb = &m->members[i];
		unsigned seen = c->seen_all[i];
		c->cur = mb;
		if (!(seen & K_ROLE))
			return !fail(c, "missing 'role' (connsrv, inbox or keysrv)");
		if (!(seen & K_ADDR))
			return !fail(c, "missing 'addr' (the NNG address others reach it on)");
		if (mb->role == SP_ROLE_CONNSRV && !(seen & K_CLIENT))
			return !fail(c, "a connsrv needs 'client' (host:port of its TLS listener)");
		if (mb->role != SP_ROLE_CONNSRV && (seen & K_CLIENT))
			return !fail(c, "'client' is only for a connsrv");
		if (mb->role == SP_ROLE_INBOX && !(seen & K_SHARD))
			return !fail(c, "an inbox needs 'shard' (its shard number)");
		if (mb->role != SP_ROLE_INBOX && (seen & K_SHARD))
			return !fail(c, "'shard' is only for an inbox");
		size_t copies = 1;
		for (size_t j = 0; j < i; j++) {
			router_member *o = &m->members[j];
			if (mb->role == SP_ROLE_INBOX && o->role == SP_ROLE_INBOX && o->shard == mb->shard &&
			    ++copies > REPL_HA_MAX_COPIES)
				return !fail(c, "shard %" PRIu32 " has more than %d copies", mb->shard,
					     REPL_HA_MAX_COPIES);
			if (strcmp(o->addr, mb->addr) == 0)
				return !fail(c, "addr %s is also [%s]'s", mb->addr, o->name);
			if (mb->role == SP_ROLE_CONNSRV && o->role == SP_ROLE_CONNSRV &&
			    o->port == mb->port && strcmp(o->host, mb->host) == 0)
				return !fail(c, "client address is also [%s]'s", o->name);
		}
	}
	c->cur = NULL;
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	/* As large as the map can grow: with every etcd field at its widest. */
	int rc = pack_map(m, UINT64_MAX, 0, false, true, &sb);
	msgpack_sbuffer_destroy(&sb);
	if (rc) {
		return !fail(c, "the map of %zu members does not fit in one frame: %s", m->n,
			     sp_strerror(rc));
	}
	return true;
}

static int
parse_common(const char *path, const char *text, const char *src, router_map **out, char *err,
	     size_t errlen)
{
	router_map *m = calloc(1, sizeof(*m));
	parse_ctx *c = calloc(1, sizeof(*c));
	int rc = SP_ECONFIG;
	if (!m || !c) {
		snprintf(err, errlen, "out of memory");
		rc = SP_ENOMEM;
		goto fail;
	}
	m->timeout_ms = DEFAULT_TIMEOUT_MS;
	m->wall_ms = sp_time_ms;
	*c = (parse_ctx){.m = m, .src = src, .err = err, .errlen = errlen};
	int r = path ? ini_parse(path, on_entry, c) : ini_parse_string(text, on_entry, c);
	if (r < 0) {
		snprintf(err, errlen, "%s: cannot read: %s", src, r == -1 ? strerror(errno) : "no memory");
		goto fail;
	}
	/* A syntax error is reported first: it usually explains what follows it. */
	if (r > 0) {
		snprintf(err, errlen, "%s:%d: syntax error (expected [name] or key = value)", src, r);
		goto fail;
	}
	if (c->failed)
		goto fail;
	if (!validate(c))
		goto fail;
	free(c);
	*out = m;
	return SP_OK;
fail:
	free(c);
	free(m);
	return rc;
}

int
router_map_load(const char *path, router_map **out, char *err, size_t errlen)
{
	return parse_common(path, NULL, path, out, err, errlen);
}

int
router_map_parse(const char *text, const char *src, router_map **out, char *err, size_t errlen)
{
	return parse_common(NULL, text, src, out, err, errlen);
}

void
router_map_free(router_map *m)
{
	free(m);
}

void
router_map_set_timeout(router_map *m, uint64_t ms)
{
	m->timeout_ms = ms;
}

void
router_map_set_wall_clock(router_map *m, uint64_t (*wall_ms)(void))
{
	m->wall_ms = wall_ms;
}

uint64_t
router_map_epoch(const router_map *m)
{
	return m->epoch;
}

size_t
router_map_count(const router_map *m)
{
	return m->n;
}

const router_member *
router_map_member(const router_map *m, size_t i)
{
	return i < m->n ? &m->members[i] : NULL;
}

static router_member *
find(router_map *m, const char *name)
{
	for (size_t i = 0; i < m->n; i++)
		if (strcmp(m->members[i].name, name) == 0)
			return &m->members[i];
	return NULL;
}

const router_member *
router_map_find(const router_map *m, const char *name)
{
	return find((router_map *)m, name);
}

int
router_map_state_load(router_map *m, const char *path, char *err, size_t errlen)
{
	uint64_t saved = 0;
	char line[128];
	int lineno = 0;
	FILE *f = fopen(path, "r");
	if (!f) {
		if (errno != ENOENT) {
			snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
			return SP_ECONFIG;
		}
		sp_info("no state file %s: first start", path);
		goto done;
	}
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		size_t len = strlen(line);
		if (len && line[len - 1] == '\n')
			line[--len] = '\0';
		else if (!feof(f))
			goto bad;
		if (len == 0 || line[0] == '#')
			continue;
		if (strncmp(line, "epoch ", 6) == 0) {
			char *end;
			errno = 0;
			saved = strtoull(line + 6, &end, 10);
			if (errno || *end || end == line + 6)
				goto bad;
		} else if (strncmp(line, "draining ", 9) == 0) {
			router_member *mb = find(m, line + 9);
			if (mb && mb->role == SP_ROLE_CONNSRV)
				mb->draining = true;
			else
				sp_warn("%s: '%s' is no connsrv in the cluster file: not draining it", path,
					line + 9);
		} else {
			goto bad;
		}
	}
	if (ferror(f)) {
		snprintf(err, errlen, "%s: read error", path);
		fclose(f);
		return SP_ECONFIG;
	}
	fclose(f);
done:
	m->epoch = saved;
	bump(m);
	return SP_OK;
bad:
	snprintf(err, errlen, "%s:%d: malformed state line (expected 'epoch N' or 'draining NAME')",
		 path, lineno);
	fclose(f);
	return SP_ECONFIG;
}

int
router_map_state_save(const router_map *m, const char *path)
{
	char tmp[4096], dir[4096];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return SP_EINVAL;
	FILE *f = fopen(tmp, "w");
	if (!f)
		return SP_EIO;
	fprintf(f, "# sealpost router state, rewritten on every epoch change\nepoch %" PRIu64 "\n",
		m->epoch);
	for (size_t i = 0; i < m->n; i++)
		if (m->members[i].draining)
			fprintf(f, "draining %s\n", m->members[i].name);
	if (fflush(f) || fsync(fileno(f))) {
		fclose(f);
		unlink(tmp);
		return SP_EIO;
	}
	if (fclose(f) || rename(tmp, path)) {
		unlink(tmp);
		return SP_EIO;
	}
	snprintf(dir, sizeof(dir), "%s", path);
	int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
	if (dfd < 0)
		return SP_EIO;
	int rc = fsync(dfd) ? SP_EIO : SP_OK;
	close(dfd);
	return rc;
}

int
router_map_heartbeat(router_map *m, const char *name, int role, uint64_t conns, uint64_t now_ms,
		     bool *changed)
{
	router_member *mb = find(m, name);
	*changed = false;
	if (!mb)
		return SP_ENOTFOUND;
	if (mb->role != role)
		return SP_EINVAL;
	mb->conns = conns;
	mb->placed = 0;
	/* 0 means "never": a clock that starts at 0 must still count as a heartbeat. */
	mb->last_hb = now_ms ? now_ms : 1;
	if (!mb->healthy) {
		mb->healthy = true;
		bump(m);
		*changed = true;
	}
	return SP_OK;
}

bool
router_map_tick(router_map *m, uint64_t now_ms)
{
	bool changed = false;
	for (size_t i = 0; i < m->n; i++) {
		router_member *mb = &m->members[i];
		if (mb->healthy && now_ms >= mb->last_hb + m->timeout_ms) {
			mb->healthy = false;
			changed = true;
		}
	}
	if (changed)
		bump(m);
	return changed;
}

int
router_map_set_draining(router_map *m, const char *name, bool draining, bool *changed)
{
	router_member *mb = find(m, name);
	*changed = false;
	if (!mb)
		return SP_ENOTFOUND;
	if (mb->role != SP_ROLE_CONNSRV)
		return SP_EINVAL;
	if (mb->draining != draining) {
		mb->draining = draining;
		bump(m);
		*changed = true;
	}
	return SP_OK;
}

const router_member *
router_map_where(router_map *m)
{
	router_member *best = NULL;
	for (size_t i = 0; i < m->n; i++) {
		router_member *mb = &m->members[i];
		if (mb->role != SP_ROLE_CONNSRV || !mb->healthy || mb->draining)
			continue;
		if (!best || mb->conns + mb->placed < best->conns + best->placed)
			best = mb;
	}
	if (best)
		best->placed++;
	return best;
}

size_t
router_map_shards(const router_map *m, uint32_t *out, size_t cap)
{
	size_t n = 0;
	uint32_t last = 0;
	/* Ascending by selection: at most 256 members, so quadratic is nothing. */
	for (;;) {
		bool found = false;
		uint32_t next = 0;
		for (size_t i = 0; i < m->n; i++) {
			const router_member *mb = &m->members[i];
			if (mb->role != SP_ROLE_INBOX || (n && mb->shard <= last))
				continue;
			if (!found || mb->shard < next)
				next = mb->shard;
			found = true;
		}
		if (!found)
			return n;
		if (n < cap)
			out[n] = next;
		n++;
		last = next;
	}
}

static bool
id_match(const repl_ha_id *a, const repl_ha_id *b)
{
	return a->inc_len == b->inc_len && memcmp(a->inc, b->inc, a->inc_len) == 0;
}

bool
router_map_has_keysrv(const router_map *m)
{
	for (size_t i = 0; i < m->n; i++)
		if (m->members[i].role == SP_ROLE_KEYSRV)
			return true;
	return false;
}

int
router_map_apply_group(router_map *m, int role, uint32_t shard, const repl_ha_view *v,
		       unsigned *what)
{
	*what = 0;
	bool any = false, changed = false, status = false;
	/* Without a leader: the last leader's epoch, max(its create revision, its counter).
	 * The campaign wrote the counter in the leader key's transaction, so the counter's mod
	 * revision is that create revision; the sync set's epoch is a floor. */
	int64_t e = v->leader.present ? v->leader.epoch : v->counter;
	if (!v->leader.present && v->counter_mod_rev > e)
		e = v->counter_mod_rev;
	if (!v->leader.present && v->sync.epoch > e)
		e = v->sync.epoch;
	uint64_t epoch = (uint64_t)e;
	for (size_t i = 0; i < m->n; i++) {
		router_member *mb = &m->members[i];
		if (mb->role != role || (role == SP_ROLE_INBOX && mb->shard != shard))
			continue;
		any = true;
		const repl_ha_copy *copy = NULL;
		for (size_t k = 0; k < v->ncopies && !copy; k++)
			if (strcmp(v->copies[k].id.name, mb->name) == 0)
				copy = &v->copies[k];
		bool primary = v->leader.present && v->leader.parsed &&
			       strcmp(v->leader.id.name, mb->name) == 0;
		bool in_sync = false;
		for (size_t k = 0; v->sync.present && k < v->sync.n && !in_sync; k++)
			/* A copy whose status shows another incarnation (a new data dir under the
			 * same name) is not the one the sync set names. */
			in_sync = strcmp(v->sync.members[k].name, mb->name) == 0 &&
				  (!copy || id_match(&v->sync.members[k], &copy->id));
		uint64_t lsn = copy ? copy->status.flushed_lsn : 0;
		if (!mb->repl_known || mb->primary != primary || mb->in_sync != in_sync ||
		    mb->shard_epoch != epoch)
			changed = true;
		else if (mb->lsn != lsn)
			status = true;
		mb->repl_known = true;
		mb->primary = primary;
		mb->in_sync = in_sync;
		mb->lsn = lsn;
		mb->shard_epoch = epoch;
	}
	if (!any)
		return SP_ENOTFOUND;
	if (changed) {
		bump(m);
		*what |= ROUTER_SHARD_CHANGED;
	}
	if (status)
		*what |= ROUTER_SHARD_STATUS;
	return SP_OK;
}

void
router_map_bump(router_map *m)
{
	bump(m);
}

int
router_map_pack(const router_map *m, uint64_t id, bool has_id, msgpack_sbuffer *sb)
{
	return pack_map(m, m->epoch, id, has_id, false, sb);
}

int
router_map_pack_content(const router_map *m, msgpack_sbuffer *sb)
{
	return pack_map(m, 0, 0, false, false, sb);
}

/* The MAP frame; `widest` packs every etcd field of every inbox and keysrv copy at its largest
 * value, to check at start that the map can always fit in one frame. */
static int
pack_map(const router_map *m, uint64_t epoch, uint64_t id, bool has_id, bool widest,
	 msgpack_sbuffer *sb)
{
	sp_frame f;
	sp_frame *recs = calloc(m->n ? m->n : 1, sizeof(*recs));
	if (!recs)
		return SP_ENOMEM;
	for (size_t i = 0; i < m->n; i++) {
		const router_member *mb = &m->members[i];
		sp_frame *r = &recs[i];
		sp_frame_init(r, SP_T_MEMBER, 0, false);
		sp_frame_set_str(r, SP_F_NAME, mb->name);
		sp_frame_set_u64(r, SP_F_ROLE, (uint64_t)mb->role);
		sp_frame_set_str(r, SP_F_ADDR, mb->addr);
		if (mb->role == SP_ROLE_CONNSRV) {
			sp_frame_set_str(r, SP_F_HOST, mb->host);
			sp_frame_set_u64(r, SP_F_PORT, mb->port);
			sp_frame_set_bool(r, SP_F_DRAINING, mb->draining);
		}
		if (mb->role == SP_ROLE_INBOX)
			sp_frame_set_u64(r, SP_F_SHARD, mb->shard);
		/* Absent until etcd was read: "unknown", and an old map stays byte-identical. */
		if ((mb->role == SP_ROLE_INBOX || mb->role == SP_ROLE_KEYSRV) &&
		    (mb->repl_known || widest)) {
			sp_frame_set_bool(r, SP_F_PRIMARY, mb->primary);
			sp_frame_set_bool(r, SP_F_IN_SYNC, mb->in_sync);
			sp_frame_set_u64(r, SP_F_LSN, widest ? UINT64_MAX : mb->lsn);
			sp_frame_set_u64(r, SP_F_EPOCH, widest ? UINT64_MAX : mb->shard_epoch);
		}
		sp_frame_set_bool(r, SP_F_HEALTHY, mb->healthy);
		sp_frame_set_u64(r, SP_F_CONNS, mb->conns);
	}
	sp_frame_init(&f, SP_T_MAP, id, has_id);
	sp_frame_set_u64(&f, SP_F_EPOCH, epoch);
	sp_frame_set_recs(&f, SP_F_MEMBERS, recs, (uint32_t)m->n);
	int rc = sp_frame_pack(&f, sb);
	free(recs);
	return rc;
}
