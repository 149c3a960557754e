/* The map in etcd (docs/ROUTER.md, "Several routers"): with --etcd, every router publishes
 * the map etcd holds, so any number of routers publish the same map at the same epoch.
 *
 * Keys under /sealpost/<cluster>/router/:
 *   leader          the router that writes the map; attached to that router's lease
 *   epoch-base      wall-clock ms when the keys were first created (written once)
 *   map             the MAP frame with epoch 0 (router_map_pack_content)
 *   draining/<name> a connsrv marked draining (POST /drain on any router)
 * The published epoch is epoch-base + the map key's mod revision: equal on every router,
 * growing with each write, and past the wall-clock epochs a router without etcd (or a
 * fresh etcd) hands out.
 *
 * One router at a time holds the leader key (a lease of LEASE_TTL_S, renewed every
 * RENEW_MS) and writes its own view of the map (health from heartbeats, which members
 * send to every router; draining and the shard mirror from etcd) whenever that view
 * differs from what etcd holds, guarded by its lease. When it dies, its lease expires and
 * another router takes over with the view it built from the same heartbeats.
 *
 * A thread makes the etcd calls (they block); it shares with the loop a mailbox (the
 * content to write; the map, revision and draining names read) under a mutex, and a pipe
 * that wakes the loop. */
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
#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_etcd.h"
#include "sp_log.h"
#include "sp_time.h"

#define LEASE_TTL_S 2
#define RENEW_MS 500
#define POLL_MS 100          /* how often the thread reads the router keys */
#define ETCD_TIMEOUT_MS 1000 /* per call */
#define MAX_DRAINING ROUTER_MAX_MEMBERS
/* A router does not campaign in its first two heartbeat periods: until every member has
 * heartbeated it once (a member whose other router is down reaches it up to 250 ms late),
 * its view would show them all unhealthy. */
#define GRACE_MS (SP_CLUSTER_HEARTBEAT_MS * 2)

struct router_store {
	router *r;
	char prefix[128]; /* "/sealpost/<cluster>/router/" */
	size_t prefix_len;
	char self[160]; /* the leader key's value: this router's listen URL and pid */
	sp_etcd *cli;   /* the thread's */
	sp_etcd *admin; /* the loop's: draining writes */
	pthread_t thread;
	bool running;
	atomic_bool stop;
	atomic_bool leader;
	sp_metric *m_leader, *m_writes, *m_errors;

	pthread_mutex_t mu;
	pthread_cond_t cond; /* the loop offered new content */
	bool mu_init;
	/* under mu: */
	uint8_t *want;  /* content the loop wants in etcd; NULL: none yet */
	size_t want_len;
	uint64_t want_floor; /* the loop's epoch: a fresh epoch-base is at least this */
	uint8_t *got;   /* map content last read from etcd, and its epoch and revision */
	size_t got_len;
	uint64_t got_epoch;
	int64_t got_rev;
	bool got_new;
	char (*drain)[ROUTER_NAME_MAX + 1]; /* [MAX_DRAINING] names read from etcd */
	size_t ndrain;
	bool drain_new;
	int wake[2];
	struct event *ev;

	/* The loop's: the published map. */
	uint8_t *pub_buf;
	sp_frame pub;
	bool have_pub;
	uint64_t pub_epoch;
	int64_t pub_rev;
};

/* ---- thread side ---- */

static void
key(const router_store *s, char *out, size_t cap, const char *tail)
{
	snprintf(out, cap, "%s%s", s->prefix, tail);
}

static void
wake_loop(router_store *s)
{
	/* A full pipe already holds a wake-up: nothing is lost by EAGAIN. */
	ssize_t w = write(s->wake[1], "s", 1);
	(void)w;
}

/* Takes the leader key if nobody holds it; *mine tells whether this router holds it. */
static int
campaign(router_store *s, int64_t lease, bool *mine)
{
	char k[192];
	key(s, k, sizeof(k), "leader");
	sp_etcd_cmp cmp = {.key = k, .klen = strlen(k), .result = SP_ETCD_EQUAL,
			   .target = SP_ETCD_CREATE, .num = 0};
	sp_etcd_op put = {.kind = SP_ETCD_OP_PUT, .key = k, .klen = strlen(k), .value = s->self,
			  .vlen = strlen(s->self), .lease = lease};
	sp_etcd_op get = {.kind = SP_ETCD_OP_GET, .key = k, .klen = strlen(k)};
	sp_etcd_txn_result res;
	int rc = sp_etcd_txn(s->cli, &cmp, 1, &put, 1, &get, 1, &res);
	if (rc)
		return rc;
	*mine = res.succeeded ||
		(res.ngets == 1 && res.gets[0].n == 1 && res.gets[0].v[0].lease == lease);
	sp_etcd_txn_result_free(&res);
	return SP_OK;
}

/* Writes `content` as the map, if this router still holds the leader key. */
static int
write_map(router_store *s, int64_t lease, const uint8_t *content, size_t len)
{
	char kl[192], km[192];
	key(s, kl, sizeof(kl), "leader");
	key(s, km, sizeof(km), "map");
	sp_etcd_cmp cmp = {.key = kl, .klen = strlen(kl), .result = SP_ETCD_EQUAL,
			   .target = SP_ETCD_LEASE, .num = lease};
	sp_etcd_op put = {.kind = SP_ETCD_OP_PUT, .key = km, .klen = strlen(km), .value = content,
			  .vlen = len};
	sp_etcd_txn_result res;
	int rc = sp_etcd_txn(s->cli, &cmp, 1, &put, 1, NULL, 0, &res);
	if (rc)
		return rc;
	bool ok = res.succeeded;
	sp_etcd_txn_result_free(&res);
	return ok ? SP_OK : SP_EAGAIN;
}

/* Creates epoch-base if it is not there. */
static int
create_base(router_store *s, uint64_t floor)
{
	char k[192], v[32];
	key(s, k, sizeof(k), "epoch-base");
	uint64_t now = sp_time_ms();
	snprintf(v, sizeof(v), "%" PRIu64, now > floor ? now : floor + 1);
	sp_etcd_cmp cmp = {.key = k, .klen = strlen(k), .result = SP_ETCD_EQUAL,
			   .target = SP_ETCD_CREATE, .num = 0};
	sp_etcd_op put = {.kind = SP_ETCD_OP_PUT, .key = k, .klen = strlen(k), .value = v,
			  .vlen = strlen(v)};
	sp_etcd_txn_result res;
	int rc = sp_etcd_txn(s->cli, &cmp, 1, &put, 1, NULL, 0, &res);
	if (rc == SP_OK)
		sp_etcd_txn_result_free(&res);
	return rc;
}

static bool
tail_is(const router_store *s, const sp_etcd_kv *kv, const char *tail)
{
	size_t n = strlen(tail);
	return kv->key_len == s->prefix_len + n &&
	       memcmp(kv->key + s->prefix_len, tail, n) == 0;
}

/* One read of every router key: hands the map and the draining names to the loop when
 * they changed; tells whether this router holds the leader key, whether the base exists,
 * and whether the loop's content differs from etcd's. */
static int
read_keys(router_store *s, int64_t lease, bool *mine, bool *have_leader, bool *have_base,
	  bool *differs)
{
	sp_etcd_kvs kvs;
	int rc = sp_etcd_get(s->cli, s->prefix, s->prefix_len, true, &kvs);
	if (rc)
		return rc;
	const sp_etcd_kv *map = NULL;
	uint64_t base = 0;
	char(*names)[ROUTER_NAME_MAX + 1] = calloc(MAX_DRAINING, sizeof(*names));
	size_t nn = 0;
	if (!names) {
		sp_etcd_kvs_free(&kvs);
		return SP_ENOMEM;
	}
	*mine = *have_leader = false;
	for (size_t i = 0; i < kvs.n; i++) {
		const sp_etcd_kv *kv = &kvs.v[i];
		if (tail_is(s, kv, "leader")) {
			*have_leader = true;
			*mine = lease && kv->lease == lease;
		} else if (tail_is(s, kv, "epoch-base")) {
			char *end;
			base = strtoull((const char *)kv->value, &end, 10);
			if (*end || kv->value_len == 0)
				base = 0;
		} else if (tail_is(s, kv, "map")) {
			map = kv;
		} else if (kv->key_len > s->prefix_len + 9 &&
			   memcmp(kv->key + s->prefix_len, "draining/", 9) == 0) {
			size_t len = kv->key_len - s->prefix_len - 9;
			if (len <= ROUTER_NAME_MAX && nn < MAX_DRAINING) {
				memcpy(names[nn], kv->key + s->prefix_len + 9, len);
				names[nn++][len] = '\0';
			}
		}
	}
	*have_base = base != 0;
	pthread_mutex_lock(&s->mu);
	bool woke = false;
	if (map && base && map->value_len <= sp_frame_limit_small() &&
	    (map->mod_rev != s->got_rev || base + (uint64_t)map->mod_rev != s->got_epoch)) {
		uint8_t *copy = malloc(map->value_len ? map->value_len : 1);
		if (copy) {
			memcpy(copy, map->value, map->value_len);
			free(s->got);
			s->got = copy;
			s->got_len = map->value_len;
			s->got_rev = map->mod_rev;
			s->got_epoch = base + (uint64_t)map->mod_rev;
			s->got_new = woke = true;
		}
	}
	if (nn != s->ndrain || memcmp(names, s->drain, nn * sizeof(*names)) != 0) {
		memcpy(s->drain, names, nn * sizeof(*names));
		s->ndrain = nn;
		s->drain_new = woke = true;
	}
	*differs = s->want && (!map || map->value_len != s->want_len ||
			       memcmp(map->value, s->want, s->want_len) != 0);
	pthread_mutex_unlock(&s->mu);
	free(names);
	sp_etcd_kvs_free(&kvs);
	if (woke)
		wake_loop(s);
	return SP_OK;
}

static void
set_leader(router_store *s, bool mine)
{
	if (atomic_exchange(&s->leader, mine) != mine) {
		sp_info("router: %s the map writer", mine ? "now" : "no longer");
		sp_metric_set(s->m_leader, mine);
	}
}

static void *
store_main(void *arg)
{
	router_store *s = arg;
	uint64_t start = sp_mono_ms(), renew_at = 0;
	int64_t lease = 0;
	while (!atomic_load(&s->stop)) {
		int rc = SP_OK;
		uint64_t now = sp_mono_ms();
		bool mine = false, have_leader = false, have_base = false, differs = false;
		bool may_lead = now >= start + GRACE_MS;
		if (may_lead) {
			if (lease && now >= renew_at) {
				rc = sp_etcd_lease_keepalive(s->cli, lease, NULL);
				if (rc == SP_ENOTFOUND) {
					sp_warn("router: the leader lease expired; campaigning again");
					lease = 0;
				}
				renew_at = now + RENEW_MS;
			}
			if (!lease && (rc = sp_etcd_lease_grant(s->cli, LEASE_TTL_S, &lease, NULL)) == SP_OK)
				renew_at = now + RENEW_MS;
		}
		if (rc == SP_OK)
			rc = read_keys(s, lease, &mine, &have_leader, &have_base, &differs);
		/* A campaign is an etcd write (a raft proposal and a WAL fsync, even when its
		 * compare fails): only when the read found no leader, not on every poll. */
		if (rc == SP_OK && may_lead && lease && !have_leader) {
			if ((rc = campaign(s, lease, &mine)) == SP_OK && mine) {
				set_leader(s, true);
				continue; /* read the keys back as the writer */
			}
		}
		set_leader(s, rc == SP_OK && mine);
		if (rc == SP_OK && mine && !have_base) {
			pthread_mutex_lock(&s->mu);
			uint64_t floor = s->want_floor;
			pthread_mutex_unlock(&s->mu);
			if ((rc = create_base(s, floor)) == SP_OK)
				continue; /* read it back at once */
		}
		if (rc == SP_OK && mine && have_base && differs) {
			pthread_mutex_lock(&s->mu);
			size_t len = s->want_len;
			uint8_t *content = malloc(len);
			if (content)
				memcpy(content, s->want, len);
			pthread_mutex_unlock(&s->mu);
			if (content) {
				rc = write_map(s, lease, content, len);
				free(content);
				if (rc == SP_OK) {
					sp_metric_inc(s->m_writes);
					continue; /* read it back and publish it at once */
				}
				if (rc == SP_EAGAIN)
					rc = SP_OK; /* lost the leader key meanwhile */
			}
		}
		if (rc) {
			sp_metric_inc(s->m_errors);
			sp_warn_rl("router: etcd %s: %s; publishing the last map read", s->prefix,
				   sp_strerror(rc));
		}
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += POLL_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&s->mu);
		if (!atomic_load(&s->stop))
			pthread_cond_timedwait(&s->cond, &s->mu, &ts);
		pthread_mutex_unlock(&s->mu);
	}
	if (lease)
		sp_etcd_lease_revoke(s->cli, lease); /* a clean stop hands over at once */
	return NULL;
}

/* ---- loop side ---- */

static void
install(router_store *s, uint8_t *buf, size_t len, uint64_t epoch, int64_t rev)
{
	sp_frame f;
	int rc = sp_frame_decode(buf, len, &f);
	if (rc || f.type != SP_T_MAP) {
		if (rc == SP_OK)
			sp_frame_fini(&f);
		sp_warn_rl("router: the map in etcd (revision %" PRId64 ") is not a MAP frame: %s",
			   rev, rc ? sp_strerror(rc) : "wrong type");
		free(buf);
		return;
	}
	sp_frame_set_u64(&f, SP_F_EPOCH, epoch);
	if (s->have_pub)
		sp_frame_fini(&s->pub);
	free(s->pub_buf);
	s->pub = f;
	s->pub_buf = buf;
	s->have_pub = true;
	s->pub_epoch = epoch;
	s->pub_rev = rev;
	router_published(s->r);
}

static void
on_wake(evutil_socket_t fd, short what, void *arg)
{
	router_store *s = arg;
	char buf[64];
	(void)what;
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	uint8_t *got = NULL;
	size_t got_len = 0, nd = 0;
	uint64_t epoch = 0;
	int64_t rev = 0;
	bool drain_new = false;
	char(*names)[ROUTER_NAME_MAX + 1] = calloc(MAX_DRAINING, sizeof(*names));
	pthread_mutex_lock(&s->mu);
	if (s->got_new) {
		got = s->got;
		got_len = s->got_len;
		epoch = s->got_epoch;
		rev = s->got_rev;
		s->got = NULL; /* the loop's now; got_rev/got_epoch stay to detect the next */
		s->got_new = false;
	}
	if (s->drain_new && names) {
		memcpy(names, s->drain, s->ndrain * sizeof(*names));
		nd = s->ndrain;
		drain_new = true;
		s->drain_new = false;
	}
	pthread_mutex_unlock(&s->mu);
	if (drain_new) {
		bool changed = false;
		for (size_t i = 0; i < router_map_count(s->r->map); i++) {
			const router_member *mb = router_map_member(s->r->map, i);
			if (mb->role != SP_ROLE_CONNSRV)
				continue;
			bool want = false;
			for (size_t k = 0; k < nd && !want; k++)
				want = strcmp(names[k], mb->name) == 0;
			bool c = false;
			if (want != mb->draining && router_map_set_draining(s->r->map, mb->name, want, &c) == SP_OK && c) {
				sp_info("%s %s (from etcd)", mb->name, want ? "draining" : "no longer draining");
				changed = true;
			}
		}
		if (changed)
			router_changed(s->r);
	}
	free(names);
	if (got)
		install(s, got, got_len, epoch, rev);
}

void
router_store_offer(router_store *s, const router_map *m)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	int rc = router_map_pack_content(m, &sb);
	if (rc == SP_OK) {
		pthread_mutex_lock(&s->mu);
		free(s->want);
		s->want = (uint8_t *)sb.data; /* the sbuffer's memory: ours now */
		s->want_len = sb.size;
		s->want_floor = router_map_epoch(m);
		pthread_cond_signal(&s->cond);
		pthread_mutex_unlock(&s->mu);
		return;
	}
	sp_warn("router: cannot encode the map: %s", sp_strerror(rc));
	msgpack_sbuffer_destroy(&sb);
}

int
router_store_set_draining(router_store *s, const char *name, bool draining)
{
	char k[192 + ROUTER_NAME_MAX];
	snprintf(k, sizeof(k), "%sdraining/%s", s->prefix, name);
	int rc = draining ? sp_etcd_put(s->admin, k, strlen(k), "1", 1, 0, NULL)
			  : sp_etcd_delete(s->admin, k, strlen(k), false, NULL);
	if (rc)
		sp_warn("router: cannot %s %s in etcd: %s", draining ? "set" : "clear", k,
			sp_strerror(rc));
	return rc;
}

const sp_frame *
router_store_map(router_store *s, uint64_t *epoch, int64_t *rev)
{
	if (!s->have_pub)
		return NULL;
	if (epoch)
		*epoch = s->pub_epoch;
	if (rev)
		*rev = s->pub_rev;
	return &s->pub;
}

bool
router_store_leader(router_store *s)
{
	return atomic_load(&s->leader);
}

int
router_store_start(router *r, const sp_etcd_cfg *etcd, const char *cluster, const char *self,
		   router_store **out, char *err, size_t errlen)
{
	int rc = SP_ENOMEM;
	router_store *s = calloc(1, sizeof(*s));
	if (!s)
		return SP_ENOMEM;
	s->r = r;
	s->wake[0] = s->wake[1] = -1;
	snprintf(s->prefix, sizeof(s->prefix), "/sealpost/%s/router/", cluster);
	s->prefix_len = strlen(s->prefix);
	snprintf(s->self, sizeof(s->self), "%s pid %ld", self, (long)getpid());
	s->m_leader = sp_metric_gauge("sp_router_map_writer",
				      "1 while this router holds the leader key and writes the map");
	s->m_writes = sp_metric_counter("sp_router_map_writes_total", "Maps written to etcd");
	s->m_errors = sp_metric_counter("sp_router_map_store_errors_total",
					"Failed etcd calls of the map store");
	if (!(s->drain = calloc(MAX_DRAINING, sizeof(*s->drain))))
		goto fail;
	const char *endpoints = etcd->endpoints;
	sp_etcd_cfg ecfg = *etcd;
	ecfg.timeout_ms = ETCD_TIMEOUT_MS;
	if ((rc = sp_etcd_new(&ecfg, &s->cli)) || (rc = sp_etcd_new(&ecfg, &s->admin))) {
		snprintf(err, errlen, "etcd: %s",
			 rc == SP_EINVAL ? "bad endpoints (expected http://host:port,...)"
					 : sp_strerror(rc));
		rc = rc == SP_EINVAL ? SP_ECONFIG : rc;
		goto fail;
	}
	rc = SP_ENOMEM;
	if (pthread_mutex_init(&s->mu, NULL))
		goto fail;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	int crc = pthread_cond_init(&s->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (crc) {
		pthread_mutex_destroy(&s->mu);
		goto fail;
	}
	s->mu_init = true;
	if (pipe2(s->wake, O_NONBLOCK | O_CLOEXEC)) {
		s->wake[0] = s->wake[1] = -1;
		goto fail;
	}
	s->ev = event_new(r->base, s->wake[0], EV_READ | EV_PERSIST, on_wake, s);
	if (!s->ev || event_add(s->ev, NULL))
		goto fail;
	if (pthread_create(&s->thread, NULL, store_main, s))
		goto fail;
	s->running = true;
	sp_info("publishing the map kept in etcd %s under %s", endpoints, s->prefix);
	*out = s;
	return SP_OK;
fail:
	if (rc == SP_ENOMEM && errlen && !err[0])
		snprintf(err, errlen, "out of memory");
	router_store_free(s);
	return rc;
}

void
router_store_free(router_store *s)
{
	if (!s)
		return;
	if (s->running) {
		pthread_mutex_lock(&s->mu);
		atomic_store(&s->stop, true);
		pthread_cond_signal(&s->cond);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->thread, NULL);
	}
	if (s->ev)
		event_free(s->ev);
	for (int k = 0; k < 2; k++)
		if (s->wake[k] >= 0)
			close(s->wake[k]);
	sp_etcd_free(s->cli);
	sp_etcd_free(s->admin);
	if (s->mu_init) {
		pthread_cond_destroy(&s->cond);
		pthread_mutex_destroy(&s->mu);
	}
	if (s->have_pub)
		sp_frame_fini(&s->pub);
	free(s->pub_buf);
	free(s->want);
	free(s->got);
	free(s->drain);
	free(s);
}
