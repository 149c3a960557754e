/* Cluster-map client: snapshots from MAP frames (validation, ring, refcounts) and the
 * member thread against a fake router in this process (heartbeats, published maps, stale
 * epochs ignored, the last map kept while the router is away). */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>

#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_nng.h"
#include "check_run.h"

typedef struct mdef {
	const char *name;
	int role;
	const char *addr;
	uint64_t port, shard;
} mdef;

static const mdef three[] = {
	{"inbox-0", SP_ROLE_INBOX, "tcp://h:1", 0, 0},
	{"connsrv-0", SP_ROLE_CONNSRV, "tcp://h:2", 7443, 0},
	{"inbox-1", SP_ROLE_INBOX, "tcp://h:3", 0, 1},
};

/* Fills a MAP frame (records in `recs`, at least n). */
static void
build_map(sp_frame *f, sp_frame *recs, const mdef *d, size_t n, uint64_t epoch)
{
	for (size_t i = 0; i < n; i++) {
		sp_frame_init(&recs[i], SP_T_MEMBER, 0, false);
		sp_frame_set_str(&recs[i], SP_F_NAME, d[i].name);
		sp_frame_set_u64(&recs[i], SP_F_ROLE, (uint64_t)d[i].role);
		sp_frame_set_str(&recs[i], SP_F_ADDR, d[i].addr);
		if (d[i].port) {
			sp_frame_set_str(&recs[i], SP_F_HOST, "127.0.0.1");
			sp_frame_set_u64(&recs[i], SP_F_PORT, d[i].port);
		}
		sp_frame_set_u64(&recs[i], SP_F_SHARD, d[i].shard);
		sp_frame_set_bool(&recs[i], SP_F_HEALTHY, i % 2 == 0);
	}
	sp_frame_init(f, SP_T_MAP, 0, false);
	sp_frame_set_u64(f, SP_F_EPOCH, epoch);
	sp_frame_set_recs(f, SP_F_MEMBERS, recs, (uint32_t)n);
}

START_TEST(test_snapshot)
{
	sp_frame f, recs[3];
	sp_cluster_map *m;
	build_map(&f, recs, three, 3, 42);
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &m), SP_OK);
	ck_assert(sp_cluster_map_epoch(m) == 42);
	ck_assert_uint_eq(sp_cluster_map_count(m), 3);
	const sp_cluster_member *c = sp_cluster_map_find(m, "connsrv-0");
	ck_assert_int_eq(c->role, SP_ROLE_CONNSRV);
	ck_assert_str_eq(c->host, "127.0.0.1");
	ck_assert_uint_eq(c->port, 7443);
	ck_assert(!c->healthy && !c->draining);
	ck_assert_ptr_eq(sp_cluster_map_member(m, 1), c);
	ck_assert_ptr_null(sp_cluster_map_member(m, 3));
	ck_assert_ptr_null(sp_cluster_map_find(m, "nope"));

	/* Shard ownership is the ring over inbox names, whatever their order or health. */
	const char *names[] = {"inbox-1", "inbox-0"};
	sp_ring *r;
	ck_assert_int_eq(sp_ring_new(42, names, 2, SP_RING_DEFAULT_VNODES, &r), SP_OK);
	ck_assert(sp_ring_epoch(sp_cluster_map_ring(m)) == 42);
	for (uint64_t d = 0; d < 5000; d++) {
		int o, rep;
		sp_ring_lookup_u64(r, d, &o, &rep);
		ck_assert_str_eq(sp_cluster_map_shard_for(m, d)->name, sp_ring_member(r, o));
		char key[16];
		int len = snprintf(key, sizeof(key), "blob%llu", (unsigned long long)d);
		sp_ring_lookup(r, key, (size_t)len, &o, &rep);
		ck_assert_str_eq(sp_cluster_map_shard_for_key(m, key, (size_t)len)->name,
				 sp_ring_member(r, o));
	}
	sp_ring_free(r);

	/* A held reference outlives the first put. */
	sp_cluster_map *h = sp_cluster_map_hold(m);
	sp_cluster_map_put(m);
	ck_assert_str_eq(sp_cluster_map_find(h, "inbox-0")->name, "inbox-0");
	sp_cluster_map_put(h);
	sp_cluster_map_put(NULL);

	/* Without inbox members there is no owner. */
	build_map(&f, recs, three + 1, 1, 1);
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &m), SP_OK);
	ck_assert_ptr_null(sp_cluster_map_shard_for(m, 7));
	ck_assert_ptr_null(sp_cluster_map_shard_for_key(m, "k", 1));
	sp_cluster_map_put(m);
}
END_TEST

START_TEST(test_snapshot_rejects)
{
	sp_frame f, recs[3];
	sp_cluster_map *m = NULL;
	mdef d[3];
	memcpy(d, three, sizeof(d));
	d[2].name = "inbox-0";
	build_map(&f, recs, d, 3, 5);
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &m), SP_EPROTO);
	memcpy(d, three, sizeof(d));
	d[1].port = 70000;
	build_map(&f, recs, d, 3, 5);
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &m), SP_EPROTO);
	build_map(&f, recs, three, 3, 5);
	static const char nul_name[] = {'a', 0, 'b'};
	sp_frame_set_bin(&recs[0], SP_F_NAME, nul_name, 3);
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &m), SP_EPROTO);
	sp_frame_init(&f, SP_T_PING, 0, false);
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &m), SP_EBADTYPE);
	ck_assert_ptr_null(m);
	ck_assert_int_eq(sp_cluster_role_parse("inbox"), SP_ROLE_INBOX);
	ck_assert_int_eq(sp_cluster_role_parse("router"), -1);
	ck_assert_str_eq(sp_cluster_role_name(SP_ROLE_KEYSRV), "keysrv");
	ck_assert_str_eq(sp_cluster_role_name(9), "?");
}
END_TEST

/* A MAP with inbox copies: `healthy`/`primary` per copy as given. */
typedef struct cdef {
	const char *name;
	uint32_t shard;
	bool healthy, primary;
} cdef;

static sp_cluster_map *
copies_map(const cdef *d, size_t n, uint64_t epoch)
{
	sp_frame f, recs[16];
	char addr[16][32];
	ck_assert(n <= 16);
	for (size_t i = 0; i < n; i++) {
		snprintf(addr[i], sizeof(addr[i]), "tcp://h:%zu", 100 + i);
		sp_frame_init(&recs[i], SP_T_MEMBER, 0, false);
		sp_frame_set_str(&recs[i], SP_F_NAME, d[i].name);
		sp_frame_set_u64(&recs[i], SP_F_ROLE, SP_ROLE_INBOX);
		sp_frame_set_str(&recs[i], SP_F_ADDR, addr[i]);
		sp_frame_set_u64(&recs[i], SP_F_SHARD, d[i].shard);
		sp_frame_set_bool(&recs[i], SP_F_HEALTHY, d[i].healthy);
		sp_frame_set_bool(&recs[i], SP_F_PRIMARY, d[i].primary);
		sp_frame_set_bool(&recs[i], SP_F_IN_SYNC, d[i].primary);
		sp_frame_set_u64(&recs[i], SP_F_LSN, 1000 + i);
		sp_frame_set_u64(&recs[i], SP_F_EPOCH, 40 + d[i].shard);
	}
	sp_frame_init(&f, SP_T_MAP, 0, false);
	sp_frame_set_u64(&f, SP_F_EPOCH, epoch);
	sp_frame_set_recs(&f, SP_F_MEMBERS, recs, (uint32_t)n);
	/* Through the codec, as a member receives it. */
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	ck_assert_int_eq(sp_frame_pack(&f, &sb), SP_OK);
	sp_frame g;
	ck_assert_int_eq(sp_frame_decode((const uint8_t *)sb.data, sb.size, &g), SP_OK);
	sp_cluster_map *m;
	ck_assert_int_eq(sp_cluster_map_from_frame(&g, &m), SP_OK);
	sp_frame_fini(&g);
	msgpack_sbuffer_destroy(&sb);
	return m;
}

START_TEST(test_shard_copies)
{
	/* Two shards of three copies, listed out of order. */
	static const cdef d[] = {
		{"inbox-1c", 1, true, false}, {"inbox-0b", 0, true, true},
		{"inbox-0a", 0, true, false}, {"inbox-1a", 1, false, false},
		{"inbox-0c", 0, false, false}, {"inbox-1b", 1, true, false},
	};
	sp_cluster_map *m = copies_map(d, 6, 9);
	ck_assert_uint_eq(sp_cluster_map_shard_count(m), 2);
	ck_assert_uint_eq(sp_cluster_map_shard_num(m, 0), 0);
	ck_assert_uint_eq(sp_cluster_map_shard_num(m, 1), 1);
	/* The ring has one point set per shard, not per copy. */
	ck_assert_uint_eq(sp_ring_size(sp_cluster_map_ring(m)), 2);
	ck_assert_str_eq(sp_ring_member(sp_cluster_map_ring(m), 0), "inbox-0");
	ck_assert_str_eq(sp_ring_member(sp_cluster_map_ring(m), 1), "inbox-1");

	const sp_cluster_member *c[4];
	ck_assert_uint_eq(sp_cluster_map_shard_copies(m, 0, c, 4), 3);
	ck_assert_str_eq(c[0]->name, "inbox-0a");
	ck_assert_str_eq(c[1]->name, "inbox-0b");
	ck_assert_str_eq(c[2]->name, "inbox-0c");
	ck_assert_uint_eq(sp_cluster_map_shard_copies(m, 1, c, 1), 3);
	ck_assert_str_eq(c[0]->name, "inbox-1a");
	ck_assert_uint_eq(sp_cluster_map_shard_copies(m, 7, c, 4), 0);

	/* The new fields came through. */
	const sp_cluster_member *b = sp_cluster_map_find(m, "inbox-0b");
	ck_assert(b->primary && b->in_sync);
	ck_assert_uint_eq(b->lsn, 1001);
	ck_assert_uint_eq(b->epoch, 40);
	ck_assert(!sp_cluster_map_find(m, "inbox-0a")->primary);

	/* Shard 0 names a primary (not the first by name); shard 1 none: its first healthy
	 * copy by name (inbox-1a is not healthy). */
	ck_assert_str_eq(sp_cluster_map_shard_target(m, 0)->name, "inbox-0b");
	ck_assert_str_eq(sp_cluster_map_shard_target(m, 1)->name, "inbox-1b");
	ck_assert_ptr_null(sp_cluster_map_shard_target(m, 2));
	for (uint64_t dev = 0; dev < 2000; dev++) {
		uint32_t sh;
		ck_assert_int_eq(sp_cluster_map_shard_of(m, dev, &sh), SP_OK);
		ck_assert_ptr_eq(sp_cluster_map_shard_for(m, dev), sp_cluster_map_shard_target(m, sh));
		char key[16];
		int len = snprintf(key, sizeof(key), "blob%llu", (unsigned long long)dev);
		ck_assert_int_eq(sp_cluster_map_shard_of_key(m, key, (size_t)len, &sh), SP_OK);
		ck_assert_ptr_eq(sp_cluster_map_shard_for_key(m, key, (size_t)len),
				 sp_cluster_map_shard_target(m, sh));
	}
	sp_cluster_map_put(m);

	/* No copy healthy and no primary: the first copy by name. */
	static const cdef down[] = {{"z", 5, false, false}, {"y", 5, false, false}};
	m = copies_map(down, 2, 9);
	ck_assert_str_eq(sp_cluster_map_shard_target(m, 5)->name, "y");
	sp_cluster_map_put(m);

	/* No inbox member: no shard. */
	sp_frame f, recs[1];
	build_map(&f, recs, three + 1, 1, 1);
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &m), SP_OK);
	uint32_t sh;
	ck_assert_int_eq(sp_cluster_map_shard_of(m, 1, &sh), SP_ENOTFOUND);
	ck_assert_int_eq(sp_cluster_map_shard_of_key(m, "k", 1, &sh), SP_ENOTFOUND);
	ck_assert_uint_eq(sp_cluster_map_shard_count(m), 0);
	sp_cluster_map_put(m);
}
END_TEST

typedef struct kdef {
	const char *name;
	bool healthy, primary, in_sync;
} kdef;

static sp_cluster_map *
keys_map(const kdef *d, size_t n)
{
	sp_frame f, recs[8];
	char addr[8][32];
	ck_assert(n <= 8);
	for (size_t i = 0; i < n; i++) {
		snprintf(addr[i], sizeof(addr[i]), "tcp://k:%zu", 200 + i);
		sp_frame_init(&recs[i], SP_T_MEMBER, 0, false);
		sp_frame_set_str(&recs[i], SP_F_NAME, d[i].name);
		sp_frame_set_u64(&recs[i], SP_F_ROLE, SP_ROLE_KEYSRV);
		sp_frame_set_str(&recs[i], SP_F_ADDR, addr[i]);
		sp_frame_set_bool(&recs[i], SP_F_HEALTHY, d[i].healthy);
		sp_frame_set_bool(&recs[i], SP_F_PRIMARY, d[i].primary);
		sp_frame_set_bool(&recs[i], SP_F_IN_SYNC, d[i].in_sync);
	}
	sp_frame_init(&f, SP_T_MAP, 0, false);
	sp_frame_set_u64(&f, SP_F_EPOCH, 3);
	sp_frame_set_recs(&f, SP_F_MEMBERS, recs, (uint32_t)n);
	sp_cluster_map *m;
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &m), SP_OK);
	return m;
}

/* Where keysrv requests go: writes to the primary the map names (else the first healthy,
 * else the first); a read retried goes round the other healthy copies, in-sync first. */
START_TEST(test_keysrv_target)
{
	static const kdef d[] = {
		{"keys-a", true, false, false}, {"keys-b", true, true, true},
		{"keys-c", true, false, true}, {"keys-d", false, false, true},
	};
	sp_cluster_map *m = keys_map(d, 4);
	ck_assert_str_eq(sp_cluster_map_keysrv_target(m)->name, "keys-b");
	ck_assert_str_eq(sp_cluster_map_keysrv_reader(m, 0)->name, "keys-b");
	ck_assert_str_eq(sp_cluster_map_keysrv_reader(m, 1)->name, "keys-c");
	ck_assert_str_eq(sp_cluster_map_keysrv_reader(m, 2)->name, "keys-a");
	ck_assert_str_eq(sp_cluster_map_keysrv_reader(m, 3)->name, "keys-b");
	ck_assert_str_eq(sp_cluster_map_keysrv_reader(m, 4)->name, "keys-c");
	sp_cluster_map_put(m);

	/* No primary named (a failover, or a one-copy key store): the first healthy. */
	static const kdef none[] = {{"keys-a", false, false, true}, {"keys-b", true, false, true}};
	m = keys_map(none, 2);
	ck_assert_str_eq(sp_cluster_map_keysrv_target(m)->name, "keys-b");
	ck_assert_str_eq(sp_cluster_map_keysrv_reader(m, 1)->name, "keys-b");
	sp_cluster_map_put(m);
	static const kdef dead[] = {{"keys-a", false, false, false}, {"keys-b", false, false, false}};
	m = keys_map(dead, 2);
	ck_assert_str_eq(sp_cluster_map_keysrv_target(m)->name, "keys-a");
	sp_cluster_map_put(m);

	/* No keysrv at all. */
	sp_frame f, recs[1];
	build_map(&f, recs, three, 1, 1);
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &m), SP_OK);
	ck_assert_ptr_null(sp_cluster_map_keysrv_target(m));
	ck_assert_ptr_null(sp_cluster_map_keysrv_reader(m, 2));
	sp_cluster_map_put(m);
}
END_TEST

/* A one-copy cluster named inbox-0 .. inbox-N (shards 0 .. N) keeps the owners it had when
 * the ring was built over member names; adding copies to each shard moves no device. */
START_TEST(test_ring_ownership_kept)
{
	enum { N = 5 };
	cdef one[N], many[3 * N];
	char names[N][32];
	const char *old_names[N];
	for (int i = 0; i < N; i++) {
		snprintf(names[i], sizeof(names[i]), "inbox-%d", i);
		one[i] = (cdef){names[i], (uint32_t)i, i % 2 == 0, false};
		old_names[i] = names[i];
	}
	char many_names[3 * N][32];
	for (int i = 0; i < 3 * N; i++) {
		snprintf(many_names[i], sizeof(many_names[i]), "inbox-%d%c", i / 3, 'a' + i % 3);
		many[i] = (cdef){many_names[i], (uint32_t)(i / 3), true, i % 3 == 1};
	}
	/* The ring as it was: over the member names, in file order. */
	sp_ring *old;
	ck_assert_int_eq(sp_ring_new(1, old_names, N, SP_RING_DEFAULT_VNODES, &old), SP_OK);
	sp_cluster_map *m1 = copies_map(one, N, 1), *m3 = copies_map(many, 3 * N, 2);
	for (uint64_t dev = 0; dev < 20000; dev++) {
		int o, rep;
		ck_assert_int_eq(sp_ring_lookup_u64(old, dev * 7919, &o, &rep), SP_OK);
		const sp_cluster_member *now = sp_cluster_map_shard_for(m1, dev * 7919);
		ck_assert_str_eq(now->name, sp_ring_member(old, o));
		uint32_t sh;
		ck_assert_int_eq(sp_cluster_map_shard_of(m3, dev * 7919, &sh), SP_OK);
		ck_assert_uint_eq(sh, now->shard);
		/* ... and the three-copy map sends it to that shard's primary (copy b). */
		const sp_cluster_member *t = sp_cluster_map_shard_for(m3, dev * 7919);
		ck_assert_uint_eq(t->shard, now->shard);
		ck_assert(t->primary);
	}
	sp_ring_free(old);
	sp_cluster_map_put(m1);
	sp_cluster_map_put(m3);
}
END_TEST

/* The fake router: answers HEARTBEAT (or MAP_GET) with a MAP of epoch `reply_epoch`, or
 * refuses heartbeats when `refuse` is set, and records what it saw. */
static struct {
	char rep_url[96], pub_url[96];
	nng_socket rep, pub;
	pthread_t thread;
	atomic_bool stop;
	_Atomic uint64_t reply_epoch, last_conns, heartbeats, map_gets;
	atomic_bool refuse;
} fr;

static void *
fake_router(void *arg)
{
	(void)arg;
	while (!atomic_load(&fr.stop)) {
		nng_msg *m;
		if (nng_recvmsg(fr.rep, &m, 0))
			continue;
		sp_frame q, f, recs[3];
		if (sp_nng_msg_decode(m, &q) == SP_OK) {
			if (q.type == SP_T_HEARTBEAT && atomic_load(&fr.refuse)) {
				sp_nng_send_error(fr.rep, q.id, q.has_id, SP_ENOTFOUND, "who?");
			} else {
				if (q.type == SP_T_HEARTBEAT) {
					atomic_store(&fr.last_conns, sp_frame_u64(&q, SP_F_CONNS));
					atomic_fetch_add(&fr.heartbeats, 1);
				} else {
					atomic_fetch_add(&fr.map_gets, 1);
				}
				build_map(&f, recs, three, 3, atomic_load(&fr.reply_epoch));
				f.id = q.id;
				f.has_id = q.has_id;
				sp_nng_send_frame(fr.rep, &f);
			}
			sp_frame_fini(&q);
		}
		nng_msg_free(m);
	}
	return NULL;
}

static void
fake_start(void)
{
	ck_assert_int_eq(sp_nng_rep_listen(&fr.rep, fr.rep_url), SP_OK);
	nng_socket_set_ms(fr.rep, NNG_OPT_RECVTIMEO, 50);
	/* A reply that cannot be queued (the member gave up on it) must not keep the thread
	 * from seeing fr.stop: fake_stop joins it. */
	nng_socket_set_ms(fr.rep, NNG_OPT_SENDTIMEO, 50);
	ck_assert_int_eq(nng_pub0_open(&fr.pub), 0);
	ck_assert_int_eq(nng_listen(fr.pub, fr.pub_url, NULL, 0), 0);
	atomic_store(&fr.stop, false);
	pthread_create(&fr.thread, NULL, fake_router, NULL);
}

static void
fake_stop(void)
{
	atomic_store(&fr.stop, true);
	pthread_join(fr.thread, NULL);
	nng_close(fr.rep);
	nng_close(fr.pub);
	unlink(fr.rep_url + strlen("ipc://"));
	unlink(fr.pub_url + strlen("ipc://"));
}

static void
fake_publish(uint64_t epoch)
{
	sp_frame f, recs[3];
	build_map(&f, recs, three, 3, epoch);
	ck_assert_int_eq(sp_nng_send_frame(fr.pub, &f), SP_OK);
}

/* Epochs seen by the on_change callback, in order. */
static struct {
	pthread_mutex_t lock;
	uint64_t epochs[64];
	int n;
} seen = {PTHREAD_MUTEX_INITIALIZER, {0}, 0};

static void
on_change(void *arg)
{
	sp_cluster_map *m = sp_cluster_map_get(arg);
	pthread_mutex_lock(&seen.lock);
	if (seen.n < 64)
		seen.epochs[seen.n++] = sp_cluster_map_epoch(m);
	pthread_mutex_unlock(&seen.lock);
	sp_cluster_map_put(m);
}

static uint64_t
current_epoch(sp_cluster *c)
{
	sp_cluster_map *m = sp_cluster_map_get(c);
	uint64_t e = m ? sp_cluster_map_epoch(m) : 0;
	sp_cluster_map_put(m);
	return e;
}

/* Publishes `epoch` until the client has it (a subscriber may still be connecting), for at
 * most ~10 s. */
static bool
publish_until_seen(sp_cluster *c, uint64_t epoch)
{
	for (int i = 0; i < 100; i++) {
		fake_publish(epoch);
		usleep(100 * 1000);
		if (current_epoch(c) == epoch)
			return true;
	}
	return false;
}

START_TEST(test_member_thread)
{
	snprintf(fr.rep_url, sizeof(fr.rep_url), "ipc:///tmp/sp-cluster-test-rep-%d", (int)getpid());
	snprintf(fr.pub_url, sizeof(fr.pub_url), "ipc:///tmp/sp-cluster-test-pub-%d", (int)getpid());
	sp_cluster *c;

	char longname[80];
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	ck_assert_int_eq(sp_cluster_start(fr.rep_url, fr.pub_url, longname, SP_ROLE_CONNSRV, &c),
			 SP_EINVAL);
	ck_assert_int_eq(sp_cluster_start(fr.rep_url, fr.pub_url, "", SP_ROLE_CONNSRV, &c), SP_EINVAL);

	/* No router yet: no map, and the wait says so. */
	ck_assert_int_eq(sp_cluster_start(fr.rep_url, fr.pub_url, "connsrv-0", SP_ROLE_CONNSRV, &c),
			 SP_OK);
	sp_cluster_on_change(c, on_change, c);
	sp_cluster_set_conns(c, 17);
	ck_assert_int_eq(sp_cluster_wait_map(c, 300), SP_ETIMEDOUT);
	ck_assert_ptr_null(sp_cluster_map_get(c));

	/* The router comes up: the heartbeat's answer installs the first map. */
	atomic_store(&fr.reply_epoch, 10);
	fake_start();
	ck_assert_int_eq(sp_cluster_wait_map(c, 10000), SP_OK);
	ck_assert(current_epoch(c) == 10);
	ck_assert(atomic_load(&fr.heartbeats) >= 1);
	/* The first heartbeat may have been queued before set_conns; a later one carries it. */
	for (int i = 0; i < 50 && atomic_load(&fr.last_conns) != 17; i++)
		usleep(100 * 1000);
	ck_assert(atomic_load(&fr.last_conns) == 17);

	/* Published maps are installed; an older epoch is ignored. */
	ck_assert(publish_until_seen(c, 20));
	fake_publish(15);
	ck_assert(publish_until_seen(c, 25));
	pthread_mutex_lock(&seen.lock);
	ck_assert_int_eq(seen.n, 3);
	ck_assert(seen.epochs[0] == 10 && seen.epochs[1] == 20 && seen.epochs[2] == 25);
	pthread_mutex_unlock(&seen.lock);

	/* The router goes away: the map stays through failed heartbeats. */
	fake_stop();
	sp_cluster_map *held = sp_cluster_map_get(c);
	sleep(3);
	ck_assert(current_epoch(c) == 25);
	ck_assert_int_eq(sp_cluster_map_shard_for(held, 1)->role, SP_ROLE_INBOX);
	sp_cluster_map_put(held);

	/* It comes back with a newer epoch: picked up by the next heartbeat. */
	uint64_t hb = atomic_load(&fr.heartbeats);
	atomic_store(&fr.reply_epoch, 30);
	fake_start();
	for (int i = 0; i < 100 && current_epoch(c) != 30; i++)
		usleep(100 * 1000);
	ck_assert(current_epoch(c) == 30);
	ck_assert(atomic_load(&fr.heartbeats) > hb);

	/* A router that does not know this member still serves it the map (MAP_GET). */
	atomic_store(&fr.refuse, true);
	atomic_store(&fr.reply_epoch, 31);
	for (int i = 0; i < 100 && current_epoch(c) != 31; i++)
		usleep(100 * 1000);
	ck_assert(current_epoch(c) == 31);
	ck_assert(atomic_load(&fr.map_gets) >= 1);
	sp_cluster_stop(c);
	fake_stop();
}
END_TEST

START_TEST(test_observer)
{
	snprintf(fr.rep_url, sizeof(fr.rep_url), "ipc:///tmp/sp-cluster-test-orep-%d", (int)getpid());
	snprintf(fr.pub_url, sizeof(fr.pub_url), "ipc:///tmp/sp-cluster-test-opub-%d", (int)getpid());
	atomic_store(&fr.refuse, false);
	atomic_store(&fr.reply_epoch, 7);
	atomic_store(&fr.heartbeats, 0);
	atomic_store(&fr.map_gets, 0);
	fake_start();
	sp_cluster *c;
	ck_assert_int_eq(sp_cluster_start(fr.rep_url, fr.pub_url, NULL, 0, &c), SP_OK);
	ck_assert_int_eq(sp_cluster_wait_map(c, 10000), SP_OK);
	ck_assert(current_epoch(c) == 7);
	ck_assert(atomic_load(&fr.heartbeats) == 0);
	ck_assert(atomic_load(&fr.map_gets) >= 1);
	sp_cluster_stop(c);
	fake_stop();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("cluster");
	TCase *tc = tcase_create("cluster");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_snapshot);
	tcase_add_test(tc, test_snapshot_rejects);
	tcase_add_test(tc, test_shard_copies);
	tcase_add_test(tc, test_keysrv_target);
	tcase_add_test(tc, test_ring_ownership_kept);
	tcase_add_test(tc, test_member_thread);
	tcase_add_test(tc, test_observer);
	suite_add_tcase(s, tc);
	return check_run(s);
}
