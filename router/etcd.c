/* The router's etcd mirror (docs/ROUTER.md): a thread of its own reads every inbox shard's
 * group (inbox-<shard>), and the key store's (keys-0) when the cluster file has keysrv
 * members, watches them, and hands each fresh view to the router loop, which applies it
 * to the map (router_map_apply_group) and publishes what changed.
 *
 * Why a thread: etcd calls block (a read, a watch of up to WATCH_MS), and the router loop
 * must keep answering heartbeats and HTTP meanwhile. The two share only a mailbox (the
 * latest view per group, under a mutex) and a pipe that wakes the loop; the map itself
 * stays the loop's alone.
 *
 * The router keeps nothing etcd does not hold: each view is a fresh read of the group, so
 * two routers that read the same etcd show the same primaries. When etcd cannot be
 * reached, the last views stay applied and the thread keeps trying (warnings rate-
 * limited); after an error, or a watch whose start revision was compacted, every group is
 * read again. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "internal.h"
#include "repl/ha.h"
#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_etcd.h"
#include "sp_log.h"

#define WATCH_MS 1000        /* longest watch: also how soon the thread sees its stop flag */
#define ETCD_TIMEOUT_MS 1000 /* per read */
#define BACKOFF_MIN_MS 200
#define BACKOFF_MAX_MS 2000

struct router_etcd {
	router *r;
	size_t n;           /* groups: the inbox shards, then the key store's if any */
	uint32_t *shards;   /* [n] shard numbers, ascending (0 for the key store) */
	int *roles;         /* [n] SP_ROLE_INBOX or SP_ROLE_KEYSRV */
	char (*groups)[24]; /* [n] "inbox-<shard>", "keys-0" */
	char prefix[REPL_HA_NAME_MAX + 16]; /* "/sealpost/<cluster>/" */
	size_t prefix_len;

	/* The thread's own. */
	repl_ha **readers; /* [n] */
	sp_etcd *watcher;
	bool *stale; /* [n] to be read (again) */
	pthread_t thread;
	bool running;
	atomic_bool stop;
	sp_metric *m_errors, *m_reachable; /* atomics: updated from the thread */

	/* The mailbox: the latest view of each group not yet applied, under mu. */
	pthread_mutex_t mu;
	bool mu_init;
	repl_ha_view *mail; /* [n] */
	bool *dirty;        /* [n] */
	int wake[2];        /* pipe: the thread writes a byte, the loop drains */
	struct event *ev;

	/* The loop's: the view being applied (too large for its stack). */
	repl_ha_view applying;
};

/* ---- thread side ---- */

static void
deliver(router_etcd *e, size_t i, const repl_ha_view *v)
{
	pthread_mutex_lock(&e->mu);
	e->mail[i] = *v;
	e->dirty[i] = true;
	pthread_mutex_unlock(&e->mu);
	/* A full pipe already holds a wake-up: nothing is lost by EAGAIN. */
	ssize_t w = write(e->wake[1], "v", 1);
	(void)w;
}

/* Sleeps up to ms, in steps, returning early once stop is set. */
static void
nap(router_etcd *e, long ms)
{
	while (ms > 0 && !atomic_load(&e->stop)) {
		long step = ms < 50 ? ms : 50;
		struct timespec ts = {0, step * 1000000L};
		nanosleep(&ts, NULL);
		ms -= step;
	}
}

typedef struct watch_ctx {
	router_etcd *e;
	int64_t max_rev; /* of every event seen */
	bool relevant;   /* an event in one of our groups */
} watch_ctx;

/* Marks the groups the events touch stale; stops the watch at the first batch that
 * touches one (the thread then reads them), and goes on past other groups' events (shards
 * not in the cluster file live under the same prefix). */
static bool
on_events(void *arg, int64_t rev, const sp_etcd_event *ev, size_t n)
{
	watch_ctx *w = arg;
	router_etcd *e = w->e;
	for (size_t k = 0; k < n; k++) {
		const sp_etcd_kv *kv = &ev[k].kv;
		int64_t r = kv->mod_rev ? kv->mod_rev : rev;
		if (r > w->max_rev)
			w->max_rev = r;
		if (kv->key_len <= e->prefix_len)
			continue;
		const char *g = (const char *)kv->key + e->prefix_len;
		size_t glen = kv->key_len - e->prefix_len;
		const char *slash = memchr(g, '/', glen);
		if (slash)
			glen = (size_t)(slash - g);
		for (size_t i = 0; i < e->n; i++)
			if (strlen(e->groups[i]) == glen && memcmp(e->groups[i], g, glen) == 0) {
				e->stale[i] = true;
				w->relevant = true;
			}
	}
	return !w->relevant;
}

static void
all_stale(router_etcd *e)
{
	for (size_t i = 0; i < e->n; i++)
		e->stale[i] = true;
}

static void *
etcd_main(void *arg)
{
	router_etcd *e = arg;
	int64_t watch_rev = 0; /* 0: read every group first, then watch from there */
	long backoff = BACKOFF_MIN_MS;
	bool down = false;
	all_stale(e);
	while (!atomic_load(&e->stop)) {
		int rc = SP_OK;
		int64_t min_rev = 0;
		bool garbage = false;
		for (size_t i = 0; i < e->n && !atomic_load(&e->stop); i++) {
			if (!e->stale[i])
				continue;
			repl_ha_view v;
			int r = repl_ha_read(e->readers[i], &v);
			if (r) {
				sp_metric_inc(e->m_errors);
				sp_warn_rl("router: cannot read %s%s/ from etcd: %s; keeping its last view",
					   e->prefix, e->groups[i], sp_strerror(r));
				/* A group etcd holds garbage for must not hold up the others: it is
				 * read again when the watch shows it changed (an operator fixed it).
				 * An unreachable etcd fails them all: stop trying for now. */
				if (r == SP_EPROTO) {
					e->stale[i] = false;
					garbage = true;
					continue;
				}
				rc = r;
				break;
			}
			e->stale[i] = false;
			if (!min_rev || v.rev < min_rev)
				min_rev = v.rev;
			deliver(e, i, &v);
		}
		if (!watch_rev && min_rev)
			watch_rev = min_rev + 1;
		if (!rc && !watch_rev && garbage) {
			/* Every group read was garbage: no revision to watch from; try again
			 * later. */
			all_stale(e);
			nap(e, BACKOFF_MAX_MS);
			continue;
		}
		if (rc) {
			down = true;
			sp_metric_set(e->m_reachable, 0);
			nap(e, backoff);
			backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
			if (watch_rev == 0)
				continue;
		} else {
			if (down)
				sp_info("router: etcd readable again");
			down = false;
			sp_metric_set(e->m_reachable, 1);
			backoff = BACKOFF_MIN_MS;
		}
		if (watch_rev == 0 || atomic_load(&e->stop))
			continue;
		watch_ctx w = {.e = e};
		rc = sp_etcd_watch(e->watcher, e->prefix, e->prefix_len, true, watch_rev, WATCH_MS,
				   on_events, &w);
		if (w.max_rev >= watch_rev)
			watch_rev = w.max_rev + 1;
		if (rc == SP_OK || rc == SP_ETIMEDOUT)
			continue; /* the stale groups are read at the top */
		if (rc == SP_ERANGE) {
			sp_info("router: etcd compacted revision %" PRId64 "; reading every group again",
				watch_rev);
		} else {
			sp_warn_rl("router: cannot watch %s in etcd: %s; keeping the last views",
				   e->prefix, sp_strerror(rc));
			sp_metric_inc(e->m_errors);
			sp_metric_set(e->m_reachable, 0);
			down = true;
			nap(e, backoff);
			backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
		}
		/* Start over from a full read: the watch cannot resume (compacted), or etcd
		 * may have changed in ways a resumed watch would not show (a restore). */
		all_stale(e);
		watch_rev = 0;
	}
	return NULL;
}

/* ---- loop side ---- */

static void
log_group(router *r, int role, uint32_t shard, const char *group)
{
	const char *primary = NULL;
	size_t copies = 0, in_sync = 0;
	uint64_t epoch = 0;
	for (size_t i = 0; i < router_map_count(r->map); i++) {
		const router_member *mb = router_map_member(r->map, i);
		if (mb->role != role || (role == SP_ROLE_INBOX && mb->shard != shard))
			continue;
		copies++;
		in_sync += mb->in_sync;
		epoch = mb->shard_epoch;
		if (mb->primary)
			primary = mb->name;
	}
	sp_info("%s: primary %s, epoch %" PRIu64 ", %zu of %zu copies in sync (map epoch %" PRIu64
		")",
		group, primary ? primary : "(none)", epoch, in_sync, copies, router_map_epoch(r->map));
}

static void
on_wake(evutil_socket_t fd, short what, void *arg)
{
	router_etcd *e = arg;
	char buf[64];
	(void)what;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	/* One publication (and one state-file write) for everything this wake-up brought:
	 * at start every shard arrives at once. */
	bool changed = false, status = false;
	for (size_t i = 0; i < e->n; i++) {
		pthread_mutex_lock(&e->mu);
		bool dirty = e->dirty[i];
		if (dirty)
			e->applying = e->mail[i];
		e->dirty[i] = false;
		pthread_mutex_unlock(&e->mu);
		if (!dirty)
			continue;
		unsigned changes;
		if (router_map_apply_group(e->r->map, e->roles[i], e->shards[i], &e->applying,
					   &changes))
			continue;
		if (changes & ROUTER_SHARD_CHANGED)
			log_group(e->r, e->roles[i], e->shards[i], e->groups[i]);
		changed = changed || (changes & ROUTER_SHARD_CHANGED);
		status = status || (changes & ROUTER_SHARD_STATUS);
	}
	if (changed)
		router_changed(e->r); /* carries the LSNs too */
	else if (status)
		router_status_changed(e->r);
}

int
router_etcd_start(router *r, const sp_etcd_cfg *etcd, const char *cluster, router_etcd **out,
		  char *err, size_t errlen)
{
	int rc = SP_ENOMEM;
	size_t clen = strlen(cluster);
	if (clen == 0 || clen > REPL_HA_NAME_MAX ||
	    strspn(cluster, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != clen) {
		snprintf(err, errlen, "etcd-cluster '%s': only letters, digits, '.', '_' and '-', at "
				      "most %d", cluster, REPL_HA_NAME_MAX);
		return SP_ECONFIG;
	}
	router_etcd *e = calloc(1, sizeof(*e));
	if (!e)
		return SP_ENOMEM;
	e->r = r;
	e->wake[0] = e->wake[1] = -1;
	e->m_errors = sp_metric_counter("sp_router_etcd_errors_total",
					"Failed etcd reads and watches of the shard mirror");
	e->m_reachable = sp_metric_gauge("sp_router_etcd_reachable",
					 "1 while the shard mirror's etcd calls succeed");
	size_t nshards = router_map_shards(r->map, NULL, 0);
	size_t n = nshards + router_map_has_keysrv(r->map);
	e->shards = calloc(n ? n : 1, sizeof(*e->shards));
	e->roles = calloc(n ? n : 1, sizeof(*e->roles));
	e->groups = calloc(n ? n : 1, sizeof(*e->groups));
	e->readers = calloc(n ? n : 1, sizeof(*e->readers));
	e->stale = calloc(n ? n : 1, sizeof(*e->stale));
	e->dirty = calloc(n ? n : 1, sizeof(*e->dirty));
	e->mail = calloc(n ? n : 1, sizeof(*e->mail));
	if (!e->shards || !e->roles || !e->groups || !e->readers || !e->stale || !e->dirty ||
	    !e->mail)
		goto fail;
	router_map_shards(r->map, e->shards, nshards);
	e->n = n;
	snprintf(e->prefix, sizeof(e->prefix), "/sealpost/%s/", cluster);
	e->prefix_len = strlen(e->prefix);
	const char *endpoints = etcd->endpoints;
	sp_etcd_cfg ecfg = *etcd;
	ecfg.timeout_ms = ETCD_TIMEOUT_MS;
	for (size_t i = 0; i < e->n; i++) {
		e->roles[i] = i < nshards ? SP_ROLE_INBOX : SP_ROLE_KEYSRV;
		if (i < nshards)
			snprintf(e->groups[i], sizeof(e->groups[i]), "inbox-%" PRIu32, e->shards[i]);
		else
			snprintf(e->groups[i], sizeof(e->groups[i]), "%s", REPL_HA_KEYS_GROUP);
		if ((rc = repl_ha_new_reader(&ecfg, cluster, e->groups[i], &e->readers[i]))) {
			snprintf(err, errlen, "etcd: %s",
				 rc == SP_EINVAL ? "bad endpoints (expected http://host:port,...)"
						 : sp_strerror(rc));
			rc = rc == SP_EINVAL ? SP_ECONFIG : rc;
			goto fail;
		}
	}
	if ((rc = sp_etcd_new(&ecfg, &e->watcher))) {
		snprintf(err, errlen, "etcd: %s",
			 rc == SP_EINVAL ? "bad endpoints (expected http://host:port,...)"
					 : sp_strerror(rc));
		rc = rc == SP_EINVAL ? SP_ECONFIG : rc;
		goto fail;
	}
	rc = SP_ENOMEM;
	if (pthread_mutex_init(&e->mu, NULL))
		goto fail;
	e->mu_init = true;
	if (pipe2(e->wake, O_NONBLOCK | O_CLOEXEC)) {
		e->wake[0] = e->wake[1] = -1;
		goto fail;
	}
	e->ev = event_new(r->base, e->wake[0], EV_READ | EV_PERSIST, on_wake, e);
	if (!e->ev || event_add(e->ev, NULL))
		goto fail;
	if (e->n == 0) {
		sp_warn("etcd given, but the cluster file has no inbox shard or keysrv: nothing to "
			"mirror");
	} else {
		if (pthread_create(&e->thread, NULL, etcd_main, e))
			goto fail;
		e->running = true;
		sp_info("mirroring %zu groups (%zu inbox shards%s) from etcd %s under %s", e->n,
			nshards, e->n > nshards ? ", the key store" : "", endpoints, e->prefix);
	}
	*out = e;
	return SP_OK;
fail:
	if (rc == SP_ENOMEM && errlen && !err[0])
		snprintf(err, errlen, "out of memory");
	router_etcd_free(e);
	return rc;
}

void
router_etcd_free(router_etcd *e)
{
	if (!e)
		return;
	if (e->running) {
		atomic_store(&e->stop, true);
		pthread_join(e->thread, NULL);
	}
	if (e->ev)
		event_free(e->ev);
	for (int k = 0; k < 2; k++)
		if (e->wake[k] >= 0)
			close(e->wake[k]);
	for (size_t i = 0; e->readers && i < e->n; i++)
		repl_ha_free(e->readers[i]);
	sp_etcd_free(e->watcher);
	if (e->mu_init)
		pthread_mutex_destroy(&e->mu);
	free(e->shards);
	free(e->roles);
	free(e->groups);
	free(e->readers);
	free(e->stale);
	free(e->dirty);
	free(e->mail);
	free(e);
}
