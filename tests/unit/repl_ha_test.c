/* The HA arbiter against a real etcd: campaign, eligibility, stale views, epochs that only
 * grow, guarded sync-set changes, lease expiry, the self-fencing deadline against etcd's
 * own expiry, a restarted process taking over at once, watch with compaction, and the
 * candidate preference rules. Each test uses a group of its own. */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check_run.h"
#include "etcd_proc.h"
#include "repl/ha.h"
#include "sp_error.h"
#include "sp_etcd.h"

static etcd_proc etcd;

#define TTL_S 2
#define MARGIN_MS 500

static repl_ha *
mk_ttl(const char *group, const char *name, const char *inc, int64_t ttl_s)
{
	repl_ha_cfg cfg = {
	    .etcd = {.endpoints = etcd.endpoint, .timeout_ms = 500},
	    .cluster = "test",
	    .group = group,
	    .name = name,
	    .inc = (const uint8_t *)inc,
	    .inc_len = strlen(inc),
	    .url = "tls+tcp://127.0.0.1:1",
	    .lease_ttl_s = ttl_s,
	    .keepalive_ms = 400,
	    .margin_ms = MARGIN_MS,
	};
	repl_ha *ha;
	ck_assert_int_eq(repl_ha_new(&cfg, &ha), SP_OK);
	return ha;
}

static repl_ha *
mk(const char *group, const char *name, const char *inc)
{
	return mk_ttl(group, name, inc, TTL_S);
}

static sp_etcd *
ctl(void)
{
	sp_etcd *e;
	sp_etcd_cfg cfg = {.endpoints = etcd.endpoint, .timeout_ms = 2000};
	ck_assert_int_eq(sp_etcd_new(&cfg, &e), SP_OK);
	return e;
}

static repl_ha_status
st(repl_ha_role role, int64_t epoch, int64_t last_epoch, uint64_t lsn)
{
	return (repl_ha_status){.role = role, .epoch = epoch, .last = {last_epoch, lsn},
				.flushed_lsn = lsn};
}

static void
publish(repl_ha *ha, int64_t last_epoch, uint64_t lsn)
{
	repl_ha_status s = st(REPL_HA_REPLICA, last_epoch, last_epoch, lsn);
	ck_assert_int_eq(repl_ha_publish(ha, &s), SP_OK);
}

static repl_ha_view
rd(repl_ha *ha)
{
	repl_ha_view v;
	ck_assert_int_eq(repl_ha_read(ha, &v), SP_OK);
	return v;
}

static int64_t
win(repl_ha *ha)
{
	repl_ha_view v = rd(ha);
	int64_t epoch = 0;
	ck_assert_int_eq(repl_ha_campaign(ha, &v, (repl_ha_pos){0, 0}, &epoch), SP_OK);
	ck_assert_int_ge(epoch, 1);
	ck_assert(repl_ha_may_serve(ha, repl_ha_now_ms()));
	return epoch;
}

static repl_ha_id
id(const char *name, const char *inc)
{
	repl_ha_id i = {0};
	snprintf(i.name, sizeof(i.name), "%s", name);
	memcpy(i.inc, inc, strlen(inc));
	i.inc_len = strlen(inc);
	return i;
}

static bool
leader_present(sp_etcd *e, const char *group)
{
	char key[128];
	snprintf(key, sizeof(key), "/sealpost/test/%s/leader", group);
	sp_etcd_kvs kvs;
	ck_assert_int_eq(sp_etcd_get(e, key, strlen(key), false, &kvs), SP_OK);
	bool present = kvs.n == 1;
	sp_etcd_kvs_free(&kvs);
	return present;
}

static void
sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

START_TEST(test_campaign_empty_group)
{
	repl_ha *a = mk("g-empty", "a", "inc-a"), *b = mk("g-empty", "b", "inc-b");
	publish(a, 0, 0);
	publish(b, 0, 0);
	repl_ha_view before_b = rd(b);
	ck_assert(!before_b.leader.present);
	ck_assert(!before_b.sync.present);
	ck_assert_uint_eq(before_b.ncopies, 2);

	int64_t epoch = win(a);
	ck_assert_int_eq(repl_ha_epoch(a), epoch);
	repl_ha_view v = rd(b);
	ck_assert(v.leader.present && v.leader.parsed);
	ck_assert_str_eq(v.leader.id.name, "a");
	ck_assert_str_eq(v.leader.url, "tls+tcp://127.0.0.1:1");
	ck_assert_int_eq(v.leader.epoch, epoch);
	ck_assert_int_ge(v.leader.epoch, v.leader.create_rev);
	ck_assert_int_ne(v.leader.lease, 0);
	/* The group's first campaign wrote the sync set: the winner alone. */
	ck_assert(v.sync.present);
	ck_assert_uint_eq(v.sync.n, 1);
	ck_assert(repl_ha_in_sync(&v, repl_ha_self(a)));
	ck_assert_int_eq(v.sync.epoch, 0);
	ck_assert_int_ge(v.counter, 1);
	ck_assert_int_gt(v.rev, 0);

	/* A second candidate loses, with a fresh view and with the one read before. */
	int64_t e2 = 0;
	ck_assert_int_eq(repl_ha_campaign(b, &v, (repl_ha_pos){0, 0}, &e2), SP_EEXIST);
	ck_assert_int_eq(repl_ha_campaign(b, &before_b, (repl_ha_pos){0, 0}, &e2), SP_EEXIST);
	ck_assert(!repl_ha_may_serve(b, repl_ha_now_ms()));
	ck_assert_int_eq(repl_ha_choose(&v, repl_ha_self(b), (repl_ha_pos){0, 0}, 0, 1000),
			 REPL_HA_LEADER);

	ck_assert_int_eq(repl_ha_resign(a), SP_OK);
	ck_assert(!repl_ha_may_serve(a, repl_ha_now_ms()));
	repl_ha_free(a);
	repl_ha_free(b);
}
END_TEST

START_TEST(test_not_in_sync_refused)
{
	repl_ha *a = mk("g-elig", "a", "inc-a"), *b = mk("g-elig", "b", "inc-b");
	publish(b, 5, 100); /* more advanced, but not in the sync set */
	win(a);
	ck_assert_int_eq(repl_ha_resign(a), SP_OK);
	repl_ha_view v = rd(b);
	ck_assert(!v.leader.present);
	ck_assert_int_eq(repl_ha_choose(&v, repl_ha_self(b), (repl_ha_pos){5, 100}, 0, 1000),
			 REPL_HA_INELIGIBLE);
	ck_assert_int_eq(repl_ha_campaign(b, &v, (repl_ha_pos){5, 100}, NULL), SP_EPERM);
	/* The same name with a new data dir (another incarnation) is a different copy. */
	repl_ha *a2 = mk("g-elig", "a", "inc-a-new");
	ck_assert_int_eq(repl_ha_campaign(a2, &v, (repl_ha_pos){0, 0}, NULL), SP_EPERM);
	/* The group lost its sync key: nobody is eligible (no silent re-bootstrap). */
	sp_etcd *e = ctl();
	ck_assert_int_eq(sp_etcd_delete(e, "/sealpost/test/g-elig/sync", 26, false, NULL), SP_OK);
	v = rd(a);
	ck_assert(!v.sync.present);
	ck_assert_int_eq(repl_ha_campaign(a, &v, (repl_ha_pos){0, 0}, NULL), SP_EPERM);
	ck_assert_int_eq(repl_ha_choose(&v, repl_ha_self(a), (repl_ha_pos){0, 0}, 0, 1000),
			 REPL_HA_INELIGIBLE);
	sp_etcd_free(e);
	repl_ha_free(a);
	repl_ha_free(a2);
	repl_ha_free(b);
}
END_TEST

/* b reads while the sync set is {a,b,c}; c wins and drops b; b's campaign on its old read
 * must fail even though the leader key is gone again. */
START_TEST(test_stale_view_fails)
{
	repl_ha *a = mk("g-stale", "a", "A"), *b = mk("g-stale", "b", "B"), *c = mk("g-stale", "c", "C");
	win(a);
	repl_ha_view v = rd(a);
	repl_ha_id abc[] = {id("a", "A"), id("b", "B"), id("c", "C")};
	ck_assert_int_eq(repl_ha_sync_set(a, &v, abc, 3), SP_OK);
	ck_assert_int_eq(repl_ha_resign(a), SP_OK);

	repl_ha_view old = rd(b);
	ck_assert(!old.leader.present);
	ck_assert(repl_ha_in_sync(&old, repl_ha_self(b)));

	win(c);
	repl_ha_view vc = rd(c);
	repl_ha_id ca[] = {id("c", "C"), id("a", "A")};
	ck_assert_int_eq(repl_ha_sync_set(c, &vc, ca, 2), SP_OK);
	ck_assert_int_eq(repl_ha_resign(c), SP_OK);

	ck_assert_int_eq(repl_ha_campaign(b, &old, (repl_ha_pos){0, 0}, NULL), SP_ESTATE);
	repl_ha_view now = rd(b);
	ck_assert_int_eq(repl_ha_campaign(b, &now, (repl_ha_pos){0, 0}, NULL), SP_EPERM);
	repl_ha_free(a);
	repl_ha_free(b);
	repl_ha_free(c);
}
END_TEST

START_TEST(test_epochs_only_grow)
{
	repl_ha *a = mk("g-epoch", "a", "A"), *b = mk("g-epoch", "b", "B");
	int64_t last = win(a);
	repl_ha_view v = rd(a);
	repl_ha_id ab[] = {id("a", "A"), id("b", "B")};
	ck_assert_int_eq(repl_ha_sync_set(a, &v, ab, 2), SP_OK);
	for (int i = 0; i < 4; i++) {
		repl_ha *h = i % 2 ? a : b;
		ck_assert_int_eq(repl_ha_resign(i % 2 ? b : a), SP_OK);
		int64_t e = win(h);
		ck_assert_int_gt(e, last);
		last = e;
	}
	ck_assert_int_eq(repl_ha_resign(a), SP_OK);
	ck_assert_int_eq(repl_ha_resign(b), SP_OK);

	/* The counter ahead of etcd's revisions (as after a restore): the epoch follows it. */
	sp_etcd *e = ctl();
	ck_assert_int_eq(sp_etcd_put(e, "/sealpost/test/g-epoch/epoch", 28, "1000000", 7, 0, NULL),
			 SP_OK);
	int64_t e1 = win(a);
	ck_assert_int_eq(e1, 1000001);
	v = rd(b);
	ck_assert_int_lt(v.leader.create_rev, e1);
	ck_assert_int_eq(v.leader.epoch, e1);
	ck_assert_int_eq(repl_ha_resign(a), SP_OK);
	ck_assert_int_eq(win(b), 1000002);
	ck_assert_int_eq(repl_ha_resign(b), SP_OK);

	/* A candidate that has seen a higher epoch than the counter (its own log) goes past
	 * it too. */
	v = rd(a);
	int64_t e3;
	ck_assert_int_eq(repl_ha_campaign(a, &v, (repl_ha_pos){2000000, 7}, &e3), SP_OK);
	ck_assert_int_eq(e3, 2000001);
	sp_etcd_free(e);
	repl_ha_free(a);
	repl_ha_free(b);
}
END_TEST

START_TEST(test_sync_set_guarded)
{
	repl_ha *a = mk("g-sync", "a", "A"), *b = mk("g-sync", "b", "B");
	sp_etcd *e = ctl();
	publish(b, 0, 0);
	int64_t epoch = win(a);
	repl_ha_view v = rd(a), stale = v;
	repl_ha_id ab[] = {id("a", "A"), id("b", "B")}, only_b[] = {id("b", "B")};
	ck_assert_int_eq(repl_ha_sync_set(a, &v, only_b, 1), SP_EINVAL); /* the primary must stay */
	ck_assert_int_eq(repl_ha_sync_set(b, &v, ab, 2), SP_EPERM);      /* b is not primary */
	ck_assert_int_eq(repl_ha_sync_set(a, &v, ab, 2), SP_OK);
	ck_assert_uint_eq(v.sync.n, 2);
	repl_ha_view fresh = rd(b);
	ck_assert_int_eq(fresh.sync.mod_rev, v.sync.mod_rev);
	ck_assert_int_eq(fresh.sync.epoch, epoch);
	ck_assert(repl_ha_in_sync(&fresh, repl_ha_self(b)));
	/* Guarded by the sync key's revision last seen. */
	ck_assert_int_eq(repl_ha_sync_set(a, &stale, ab, 1), SP_ESTATE);

	/* etcd stalled: the outcome is unknown, said distinctly (etcd may still apply it
	 * when it resumes: the same set is written, so the rest of the test holds). */
	etcd_proc_signal(&etcd, SIGSTOP);
	int rc = repl_ha_sync_set(a, &v, ab, 2);
	etcd_proc_signal(&etcd, SIGCONT);
	ck_assert_int_eq(rc, SP_ETIMEDOUT);

	/* a stops renewing; once etcd expired its lease, a's guarded change is refused even
	 * though a has not noticed (it never renewed), and after b took over as well. */
	for (int i = 0; i < 60 && leader_present(e, "g-sync"); i++)
		sleep_ms(100);
	ck_assert(!leader_present(e, "g-sync"));
	ck_assert(!repl_ha_may_serve(a, repl_ha_now_ms()));
	v = rd(a);
	ck_assert_int_eq(repl_ha_sync_set(a, &v, ab, 2), SP_EPERM);
	repl_ha_resign(b);
	int64_t eb = win(b);
	ck_assert_int_gt(eb, epoch);
	v = rd(a);
	ck_assert_int_eq(repl_ha_sync_set(a, &v, ab, 2), SP_EPERM);
	sp_etcd_free(e);
	repl_ha_free(a);
	repl_ha_free(b);
}
END_TEST

START_TEST(test_lease_expiry_removes_keys)
{
	repl_ha *a = mk("g-expire", "a", "A");
	publish(a, 3, 9);
	win(a);
	repl_ha_view v = rd(a);
	ck_assert(v.leader.present);
	ck_assert_uint_eq(v.ncopies, 1);
	ck_assert_int_eq(v.copies[0].status.last.lsn, 9);
	ck_assert_int_eq(v.copies[0].lease, v.leader.lease);
	int64_t t0 = repl_ha_now_ms();
	for (int i = 0; i < 60 && (v.leader.present || v.ncopies); i++) {
		sleep_ms(100);
		v = rd(a);
	}
	ck_assert(!v.leader.present);
	ck_assert_uint_eq(v.ncopies, 0);
	ck_assert_int_lt(repl_ha_now_ms() - t0, TTL_S * 1000 + 1500);
	/* Renewing now finds the lease gone; publishing takes a new one. */
	ck_assert_int_eq(repl_ha_renew(a), SP_ENOTFOUND);
	publish(a, 3, 9);
	v = rd(a);
	ck_assert_uint_eq(v.ncopies, 1);
	repl_ha_free(a);
}
END_TEST

/* Keepalives stop: may_serve turns false while etcd still holds the leader key. */
START_TEST(test_fencing_precedes_expiry)
{
	repl_ha *a = mk("g-fence", "a", "A");
	sp_etcd *e = ctl();
	win(a);
	int64_t renewed = repl_ha_now_ms();
	ck_assert_int_eq(repl_ha_renew(a), SP_OK);
	int64_t fenced = 0, last_present = 0;
	for (int i = 0; i < 400; i++) {
		int64_t now = repl_ha_now_ms();
		if (!fenced && !repl_ha_may_serve(a, now))
			fenced = now;
		if (!leader_present(e, "g-fence"))
			break;
		last_present = now; /* the key was there after this instant */
		sleep_ms(10);
	}
	ck_assert_int_gt(fenced, 0);
	ck_assert(!leader_present(e, "g-fence"));
	fprintf(stderr, "fencing: fenced %lld ms after the keepalive, key deleted after %lld ms\n",
		(long long)(fenced - renewed), (long long)(last_present - renewed));
	ck_assert_int_lt(fenced, last_present);
	ck_assert_int_ge(fenced - renewed, TTL_S * 1000 - MARGIN_MS - 50);
	ck_assert_int_le(fenced - renewed, TTL_S * 1000 - MARGIN_MS + 100);
	sp_etcd_free(e);
	repl_ha_free(a);
}
END_TEST

/* A primary killed without resigning: a new process of the same name and data dir takes
 * over at once, without waiting for the old lease's TTL. */
START_TEST(test_restart_revokes_old_lease)
{
	repl_ha *a = mk_ttl("g-restart", "a", "A", 30);
	publish(a, 0, 0);
	int64_t e1 = win(a);
	repl_ha_free(a); /* no resign: as after SIGKILL */

	int64_t t0 = repl_ha_now_ms();
	repl_ha *a2 = mk_ttl("g-restart", "a", "A", 30);
	publish(a2, e1, 0);
	repl_ha_view v = rd(a2);
	ck_assert(!v.leader.present);
	ck_assert_uint_eq(v.ncopies, 1);
	int64_t e2;
	ck_assert_int_eq(repl_ha_campaign(a2, &v, (repl_ha_pos){e1, 0}, &e2), SP_OK);
	ck_assert_int_gt(e2, e1);
	ck_assert_int_lt(repl_ha_now_ms() - t0, 1000);
	repl_ha_resign(a2);
	repl_ha_free(a2);
}
END_TEST

typedef struct later_put {
	long after_ms;
	const char *key, *value;
} later_put;

static void *
put_later(void *arg)
{
	later_put *p = arg;
	sleep_ms(p->after_ms);
	sp_etcd *e;
	sp_etcd_cfg cfg = {.endpoints = etcd.endpoint};
	if (sp_etcd_new(&cfg, &e) == SP_OK) {
		sp_etcd_put(e, p->key, strlen(p->key), p->value, strlen(p->value), 0, NULL);
		sp_etcd_free(e);
	}
	return NULL;
}

START_TEST(test_wait_and_compaction)
{
	repl_ha *a = mk("g-watch", "a", "A");
	repl_ha_view v = rd(a);
	/* Nothing changes: the wait ends at its bound with the view kept. */
	int64_t t0 = repl_ha_now_ms();
	ck_assert_int_eq(repl_ha_wait(a, &v, 300), SP_ETIMEDOUT);
	ck_assert_int_ge(repl_ha_now_ms() - t0, 250);
	/* A change wakes it at once with a fresh view. */
	later_put p = {300, "/sealpost/test/g-watch/copies/b",
		       "{\"inc\":\"42\",\"url\":\"u\",\"role\":\"replica\",\"epoch\":1,"
		       "\"last_epoch\":1,\"last_lsn\":5,\"flushed_lsn\":5}"};
	pthread_t th;
	ck_assert_int_eq(pthread_create(&th, NULL, put_later, &p), 0);
	t0 = repl_ha_now_ms();
	ck_assert_int_eq(repl_ha_wait(a, &v, 5000), SP_OK);
	pthread_join(th, NULL);
	ck_assert_int_lt(repl_ha_now_ms() - t0, 2000);
	ck_assert_uint_eq(v.ncopies, 1);
	ck_assert_str_eq(v.copies[0].id.name, "b");
	ck_assert_int_eq(v.copies[0].status.last.lsn, 5);

	/* The view's revision compacted away: the watch cannot resume, the state is read. */
	repl_ha_view old = v;
	publish(a, 1, 1);
	int64_t rev;
	sp_etcd *e = ctl();
	ck_assert_int_eq(sp_etcd_put(e, "/elsewhere", 10, "x", 1, 0, &rev), SP_OK);
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "ETCDCTL_API=3 etcdctl --endpoints=%s compact %lld >/dev/null",
		 etcd.endpoint, (long long)rev);
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_int_eq(repl_ha_wait(a, &old, 2000), SP_OK);
	ck_assert_int_ge(old.rev, rev);
	ck_assert_uint_eq(old.ncopies, 2);
	sp_etcd_free(e);
	repl_ha_free(a);
}
END_TEST

/* A reader (no name, no lease) sees what the copies see and can do nothing else. */
START_TEST(test_reader)
{
	repl_ha *a = mk("g-reader", "a", "inc-a"), *r;
	sp_etcd_cfg ecfg = {.endpoints = etcd.endpoint, .timeout_ms = 500};
	ck_assert_int_eq(repl_ha_new_reader(&ecfg, "test", "bad/name", &r), SP_EINVAL);
	ck_assert_int_eq(repl_ha_new_reader(&ecfg, "", "g-reader", &r), SP_EINVAL);
	ck_assert_int_eq(repl_ha_new_reader(&ecfg, "test", "g-reader", &r), SP_OK);
	repl_ha_view v = rd(r);
	ck_assert(!v.leader.present && v.ncopies == 0);

	publish(a, 0, 7);
	int64_t epoch = win(a);
	/* The change wakes the reader's wait with the copy's view of the group. */
	ck_assert_int_eq(repl_ha_wait(r, &v, 5000), SP_OK);
	repl_ha_view va = rd(a);
	v = rd(r);
	ck_assert(v.leader.present && v.leader.parsed);
	ck_assert_str_eq(v.leader.id.name, "a");
	ck_assert_int_eq(v.leader.epoch, epoch);
	ck_assert_int_eq(v.leader.epoch, va.leader.epoch);
	ck_assert(v.sync.present && v.sync.n == 1);
	ck_assert_uint_eq(v.ncopies, 1);
	ck_assert_uint_eq(v.copies[0].status.flushed_lsn, 7);

	/* Nothing that acts as a copy. */
	repl_ha_status s = st(REPL_HA_REPLICA, 1, 1, 1);
	int64_t e = 0;
	repl_ha_id me = id("r", "x");
	repl_ha_callbacks cbs = {0};
	ck_assert_int_eq(repl_ha_publish(r, &s), SP_EPERM);
	ck_assert_int_eq(repl_ha_campaign(r, &v, (repl_ha_pos){0, 0}, &e), SP_EPERM);
	ck_assert_int_eq(repl_ha_renew(r), SP_EPERM);
	ck_assert_int_eq(repl_ha_sync_set(r, &v, &me, 1), SP_EPERM);
	ck_assert_int_eq(repl_ha_resign(r), SP_EPERM);
	ck_assert_int_eq(repl_ha_loop_start(r, &cbs), SP_EPERM);
	ck_assert(!repl_ha_may_serve(r, repl_ha_now_ms()));
	ck_assert_int_eq(repl_ha_epoch(r), 0);
	/* And the group is as the copy left it. */
	sp_etcd *c = ctl();
	ck_assert(leader_present(c, "g-reader"));
	sp_etcd_free(c);
	ck_assert(repl_ha_may_serve(a, repl_ha_now_ms()));
	repl_ha_free(r);
	repl_ha_resign(a);
	repl_ha_free(a);
}
END_TEST

static repl_ha_copy
copy(const char *name, const char *inc, int64_t epoch, uint64_t lsn)
{
	repl_ha_copy c = {0};
	c.id = id(name, inc);
	c.status.last = (repl_ha_pos){epoch, lsn};
	c.status.epoch = epoch;
	return c;
}

START_TEST(test_candidate_preference)
{
	repl_ha_view v = {0};
	repl_ha_id a = id("a", "A"), b = id("b", "B"), c = id("c", "C");
	v.rev = 10;
	v.counter = 7;
	v.counter_mod_rev = 9;
	v.sync.present = true;
	v.sync.n = 2;
	v.sync.members[0] = a;
	v.sync.members[1] = b;
	v.ncopies = 3;
	v.copies[0] = copy("a", "A", 7, 100);
	v.copies[1] = copy("b", "B", 7, 120);
	v.copies[2] = copy("c", "C", 8, 999); /* most advanced, but not in the sync set */
	repl_ha_pos pa = {7, 100}, pb = {7, 120};

	ck_assert_int_eq(repl_ha_choose(&v, &c, (repl_ha_pos){8, 999}, 0, 1000), REPL_HA_INELIGIBLE);
	/* a defers to b (live, in sync, ahead), but only for defer_max. */
	ck_assert_int_eq(repl_ha_choose(&v, &a, pa, 0, 1000), REPL_HA_DEFER);
	ck_assert_int_eq(repl_ha_choose(&v, &a, pa, 999, 1000), REPL_HA_DEFER);
	ck_assert_int_eq(repl_ha_choose(&v, &a, pa, 1000, 1000), REPL_HA_GO);
	/* b, the most advanced sync member, goes at once; c being ahead does not count. */
	ck_assert_int_eq(repl_ha_choose(&v, &b, pb, 0, 1000), REPL_HA_GO);
	/* Equal positions: both go (the transaction picks one). */
	ck_assert_int_eq(repl_ha_choose(&v, &a, pb, 0, 1000), REPL_HA_GO);
	/* The epoch orders first. */
	ck_assert_int_eq(repl_ha_choose(&v, &a, (repl_ha_pos){8, 1}, 0, 1000), REPL_HA_GO);
	/* b dead (no copies/ key): a goes. */
	repl_ha_view dead = v;
	dead.copies[1] = dead.copies[2];
	dead.ncopies = 2;
	ck_assert_int_eq(repl_ha_choose(&dead, &a, pa, 0, 1000), REPL_HA_GO);
	/* b alive under a new incarnation is not the b of the sync set. */
	repl_ha_view reborn = v;
	reborn.copies[1].id = id("b", "B2");
	ck_assert_int_eq(repl_ha_choose(&reborn, &a, pa, 0, 1000), REPL_HA_GO);
	ck_assert_int_eq(repl_ha_choose(&reborn, &reborn.copies[1].id, pb, 0, 1000),
			 REPL_HA_INELIGIBLE);
	/* a of another incarnation is not eligible either. */
	repl_ha_id a2 = id("a", "A2");
	ck_assert_int_eq(repl_ha_choose(&v, &a2, pa, 5000, 1000), REPL_HA_INELIGIBLE);
	/* A leader present: nobody campaigns. */
	repl_ha_view led = v;
	led.leader.present = true;
	ck_assert_int_eq(repl_ha_choose(&led, &b, pb, 0, 1000), REPL_HA_LEADER);
	/* A new group (no sync key, no counter): every copy may go, the most advanced first. */
	repl_ha_view fresh = {0};
	fresh.ncopies = 2;
	fresh.copies[0] = copy("a", "A", 0, 0);
	fresh.copies[1] = copy("c", "C", 0, 0);
	ck_assert_int_eq(repl_ha_choose(&fresh, &c, (repl_ha_pos){0, 0}, 0, 1000), REPL_HA_GO);
	fresh.copies[0].status.last.lsn = 1;
	ck_assert_int_eq(repl_ha_choose(&fresh, &c, (repl_ha_pos){0, 0}, 0, 1000), REPL_HA_DEFER);
	/* A group that had a leader but lost its sync key: nobody. */
	repl_ha_view lost = v;
	lost.sync.present = false;
	lost.sync.n = 0;
	ck_assert_int_eq(repl_ha_choose(&lost, &b, pb, 5000, 1000), REPL_HA_INELIGIBLE);

	ck_assert_int_eq(repl_ha_pos_cmp((repl_ha_pos){1, 5}, (repl_ha_pos){2, 0}), -1);
	ck_assert_int_eq(repl_ha_pos_cmp((repl_ha_pos){2, 5}, (repl_ha_pos){2, 5}), 0);
	ck_assert_int_eq(repl_ha_pos_cmp((repl_ha_pos){2, 6}, (repl_ha_pos){2, 5}), 1);
}
END_TEST

START_TEST(test_config_checked)
{
	repl_ha_cfg cfg = {
	    .etcd = {.endpoints = etcd.endpoint},
	    .cluster = "test",
	    .group = "g",
	    .name = "a",
	    .inc = (const uint8_t *)"A",
	    .inc_len = 1,
	    .url = "u",
	};
	repl_ha *ha;
	ck_assert_int_eq(repl_ha_new(&cfg, &ha), SP_OK); /* the defaults fence in time */
	repl_ha_free(ha);
	cfg.name = "a/b";
	ck_assert_int_eq(repl_ha_new(&cfg, &ha), SP_EINVAL);
	cfg.name = "a";
	cfg.inc_len = 0;
	ck_assert_int_eq(repl_ha_new(&cfg, &ha), SP_EINVAL);
	cfg.inc_len = 1;
	cfg.lease_ttl_s = 2;
	cfg.margin_ms = 1500; /* the keepalive could not arrive before the deadline */
	ck_assert_int_eq(repl_ha_new(&cfg, &ha), SP_ECONFIG);
}
END_TEST

/* Two loops in one group: one becomes primary, the other follows it; when the primary
 * resigns (its loop stopped), the follower takes over. */
typedef struct events {
	pthread_mutex_t mu;
	int primaries, follows, fences;
	int64_t epoch;
} events;

static void
ev_status(void *arg, repl_ha_status *out)
{
	(void)arg;
	*out = (repl_ha_status){0};
}

static void
ev_primary(void *arg, int64_t epoch, const repl_ha_view *v)
{
	events *e = arg;
	(void)v;
	pthread_mutex_lock(&e->mu);
	e->primaries++;
	e->epoch = epoch;
	pthread_mutex_unlock(&e->mu);
}

static void
ev_following(void *arg, const repl_ha_leader *l)
{
	events *e = arg;
	(void)l;
	pthread_mutex_lock(&e->mu);
	e->follows++;
	pthread_mutex_unlock(&e->mu);
}

static void
ev_fenced(void *arg, int64_t epoch)
{
	events *e = arg;
	(void)epoch;
	pthread_mutex_lock(&e->mu);
	e->fences++;
	pthread_mutex_unlock(&e->mu);
}

static int
count(events *e, int which)
{
	pthread_mutex_lock(&e->mu);
	int n = which == 0 ? e->primaries : which == 1 ? e->follows : e->fences;
	pthread_mutex_unlock(&e->mu);
	return n;
}

/* Starts ha's loop with the event-counting callbacks (the loop copies them). */
static void
loop_start(repl_ha *ha, events *e)
{
	repl_ha_callbacks c = {ev_status, ev_primary, ev_following, ev_fenced, e};
	ck_assert_int_eq(repl_ha_loop_start(ha, &c), SP_OK);
}

/* Polls every step_ms, at most `steps` times, until count(e, which) reaches n. */
static void
wait_count(events *e, int which, int n, int steps, int step_ms)
{
	for (int i = 0; i < steps && count(e, which) < n; i++)
		sleep_ms(step_ms);
}

START_TEST(test_loop_roles)
{
	repl_ha *a = mk("g-loop", "a", "A"), *b = mk("g-loop", "b", "B");
	events ea = {.mu = PTHREAD_MUTEX_INITIALIZER}, eb = {.mu = PTHREAD_MUTEX_INITIALIZER};
	loop_start(a, &ea);
	wait_count(&ea, 0, 1, 50, 100);
	ck_assert_int_eq(count(&ea, 0), 1);
	ck_assert(repl_ha_may_serve(a, repl_ha_now_ms()));
	/* The primary adds b to the sync set from another thread than its loop's. */
	loop_start(b, &eb);
	wait_count(&eb, 1, 1, 50, 100);
	ck_assert_int_eq(count(&eb, 1), 1);
	repl_ha_view v;
	ck_assert_int_eq(repl_ha_loop_view(a, &v), SP_OK);
	repl_ha_id ab[] = {id("a", "A"), id("b", "B")};
	ck_assert_int_eq(repl_ha_sync_set(a, &v, ab, 2), SP_OK);
	/* Kept alive by the loop past several TTLs. */
	sleep_ms(TTL_S * 1000 + 1000);
	ck_assert(repl_ha_may_serve(a, repl_ha_now_ms()));
	ck_assert_int_eq(count(&eb, 0), 0);
	/* The primary goes away cleanly: b takes over at once. */
	repl_ha_loop_stop(a);
	int64_t t0 = repl_ha_now_ms();
	ck_assert_int_eq(repl_ha_resign(a), SP_OK);
	wait_count(&eb, 0, 1, 50, 50);
	ck_assert_int_eq(count(&eb, 0), 1);
	ck_assert_int_lt(repl_ha_now_ms() - t0, 1500);
	ck_assert_int_gt(eb.epoch, ea.epoch);
	ck_assert(repl_ha_may_serve(b, repl_ha_now_ms()));
	repl_ha_free(b);
	repl_ha_free(a);
}
END_TEST

/* The loop finds the leader key gone under it (deleted by hand): it fences at once and,
 * alone in the group, campaigns again with a higher epoch. It also finds a key holding its
 * name that it did not win through the loop (a campaign whose answer was lost): it revokes
 * it instead of following itself. */
START_TEST(test_loop_fences_and_recovers)
{
	repl_ha *a = mk("g-loop2", "a", "A");
	sp_etcd *e = ctl();
	int64_t lost = win(a); /* as if the loop had not heard the answer */
	events ea = {.mu = PTHREAD_MUTEX_INITIALIZER};
	loop_start(a, &ea);
	wait_count(&ea, 0, 1, 50, 100);
	ck_assert_int_eq(count(&ea, 0), 1);
	ck_assert_int_eq(count(&ea, 1), 0); /* never followed itself */
	ck_assert_int_gt(ea.epoch, lost);
	int64_t first = ea.epoch;

	int64_t t0 = repl_ha_now_ms();
	ck_assert_int_eq(sp_etcd_delete(e, "/sealpost/test/g-loop2/leader", 29, false, NULL), SP_OK);
	wait_count(&ea, 2, 1, 100, 10);
	ck_assert_int_eq(count(&ea, 2), 1);
	ck_assert_int_lt(repl_ha_now_ms() - t0, 500);
	wait_count(&ea, 0, 2, 50, 100);
	ck_assert_int_eq(count(&ea, 0), 2);
	ck_assert_int_gt(ea.epoch, first);
	ck_assert(repl_ha_may_serve(a, repl_ha_now_ms()));
	repl_ha_loop_stop(a);
	repl_ha_resign(a);
	sp_etcd_free(e);
	repl_ha_free(a);
}
END_TEST

/* repl_ha_step_down (a batch left unacknowledged at the fencing deadline): may_serve turns
 * false at once and a renewal that still succeeds does not bring it back; the loop fences
 * at its next turn and, alone in the group, wins a new term. */
START_TEST(test_step_down)
{
	repl_ha *a = mk("g-step", "a", "A");
	win(a);
	ck_assert(repl_ha_may_serve(a, repl_ha_now_ms()));
	repl_ha_step_down(a);
	ck_assert(!repl_ha_may_serve(a, repl_ha_now_ms()));
	ck_assert_int_eq(repl_ha_renew(a), SP_OK); /* the lease itself is fine */
	ck_assert(!repl_ha_may_serve(a, repl_ha_now_ms()));
	repl_ha_resign(a);
	repl_ha_free(a);

	repl_ha *b = mk("g-step2", "b", "B");
	events eb = {.mu = PTHREAD_MUTEX_INITIALIZER};
	loop_start(b, &eb);
	wait_count(&eb, 0, 1, 50, 100);
	ck_assert_int_eq(count(&eb, 0), 1);
	int64_t first = eb.epoch;
	repl_ha_step_down(b);
	ck_assert(!repl_ha_may_serve(b, repl_ha_now_ms()));
	wait_count(&eb, 2, 1, 50, 100);
	ck_assert_int_eq(count(&eb, 2), 1);
	wait_count(&eb, 0, 2, 50, 100);
	ck_assert_int_eq(count(&eb, 0), 2);
	ck_assert_int_gt(eb.epoch, first);
	ck_assert(repl_ha_may_serve(b, repl_ha_now_ms())); /* the new term serves */
	repl_ha_loop_stop(b);
	repl_ha_resign(b);
	repl_ha_free(b);
}
END_TEST

/* The loop defers to a more advanced live sync member that does not campaign, for
 * defer_max (TTL/2 here: 1 s), then campaigns anyway. */
START_TEST(test_loop_defers_bounded)
{
	repl_ha *a = mk("g-defer", "a", "A"), *b = mk_ttl("g-defer", "b", "B", 30);
	win(a);
	repl_ha_view v = rd(a);
	repl_ha_id ab[] = {id("a", "A"), id("b", "B")};
	ck_assert_int_eq(repl_ha_sync_set(a, &v, ab, 2), SP_OK);
	ck_assert_int_eq(repl_ha_resign(a), SP_OK);
	publish(b, 1, 100); /* ahead of a (0, 0), alive, but never campaigns */

	events ea = {.mu = PTHREAD_MUTEX_INITIALIZER};
	int64_t t0 = repl_ha_now_ms();
	loop_start(a, &ea);
	wait_count(&ea, 0, 1, 100, 50);
	int64_t took = repl_ha_now_ms() - t0;
	ck_assert_int_eq(count(&ea, 0), 1);
	ck_assert_int_ge(took, TTL_S * 1000 / 2);
	ck_assert_int_lt(took, TTL_S * 1000 / 2 + 1500);
	repl_ha_loop_stop(a);
	repl_ha_resign(a);
	repl_ha_resign(b);
	repl_ha_free(a);
	repl_ha_free(b);
}
END_TEST

int
main(void)
{
	if (etcd_proc_start(&etcd) != 0)
		return 1;
	Suite *s = suite_create("repl_ha");
	TCase *tc = tcase_create("repl_ha");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_campaign_empty_group);
	tcase_add_test(tc, test_not_in_sync_refused);
	tcase_add_test(tc, test_stale_view_fails);
	tcase_add_test(tc, test_epochs_only_grow);
	tcase_add_test(tc, test_sync_set_guarded);
	tcase_add_test(tc, test_lease_expiry_removes_keys);
	tcase_add_test(tc, test_fencing_precedes_expiry);
	tcase_add_test(tc, test_restart_revokes_old_lease);
	tcase_add_test(tc, test_wait_and_compaction);
	tcase_add_test(tc, test_reader);
	tcase_add_test(tc, test_candidate_preference);
	tcase_add_test(tc, test_config_checked);
	tcase_add_test(tc, test_loop_roles);
	tcase_add_test(tc, test_loop_fences_and_recovers);
	tcase_add_test(tc, test_loop_defers_bounded);
	tcase_add_test(tc, test_step_down);
	suite_add_tcase(s, tc);
	int rc = check_run(s);
	etcd_proc_stop(&etcd);
	return rc;
}
