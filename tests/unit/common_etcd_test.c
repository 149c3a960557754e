/* The etcd client against a real etcd: KV, prefixes, transactions as a leader election
 * uses them, leases that expire, keep-alive, revoke, watch, compaction, endpoint failover
 * and an unreachable cluster. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check_run.h"
#include "etcd_proc.h"
#include "sp_error.h"
#include "sp_etcd.h"

static etcd_proc etcd;

static sp_etcd *
client(const char *endpoints)
{
	sp_etcd *e;
	sp_etcd_cfg cfg = {.endpoints = endpoints, .timeout_ms = 2000};
	ck_assert_int_eq(sp_etcd_new(&cfg, &e), SP_OK);
	return e;
}

START_TEST(test_put_get_delete)
{
	sp_etcd *e = client(etcd.endpoint);
	int64_t rev1, rev2, deleted;
	ck_assert_int_eq(sp_etcd_put(e, "/t/a", 4, "one", 3, 0, &rev1), SP_OK);
	ck_assert_int_eq(sp_etcd_put(e, "/t/b", 4, "", 0, 0, &rev2), SP_OK);
	ck_assert_int_gt(rev2, rev1);
	/* Binary keys and values survive base64. */
	static const uint8_t bin[] = {0, 0xff, 0x80, '\n', '"'};
	ck_assert_int_eq(sp_etcd_put(e, "/t/c", 4, bin, sizeof(bin), 0, NULL), SP_OK);

	sp_etcd_kvs kvs;
	ck_assert_int_eq(sp_etcd_get(e, "/t/a", 4, false, &kvs), SP_OK);
	ck_assert_uint_eq(kvs.n, 1);
	ck_assert_str_eq((char *)kvs.v[0].value, "one");
	ck_assert_int_eq(kvs.v[0].create_rev, rev1);
	ck_assert_int_eq(kvs.v[0].version, 1);
	ck_assert_int_ge(kvs.rev, rev2);
	sp_etcd_kvs_free(&kvs);

	ck_assert_int_eq(sp_etcd_get(e, "/t/", 3, true, &kvs), SP_OK);
	ck_assert_uint_eq(kvs.n, 3);
	ck_assert_str_eq((char *)kvs.v[0].key, "/t/a");
	ck_assert_uint_eq(kvs.v[1].value_len, 0);
	ck_assert_uint_eq(kvs.v[2].value_len, sizeof(bin));
	ck_assert(memcmp(kvs.v[2].value, bin, sizeof(bin)) == 0);
	sp_etcd_kvs_free(&kvs);

	ck_assert_int_eq(sp_etcd_get(e, "/none", 5, false, &kvs), SP_OK);
	ck_assert_uint_eq(kvs.n, 0);
	sp_etcd_kvs_free(&kvs);

	ck_assert_int_eq(sp_etcd_delete(e, "/t/", 3, true, &deleted), SP_OK);
	ck_assert_int_eq(deleted, 3);
	ck_assert_int_eq(sp_etcd_get(e, "/t/", 3, true, &kvs), SP_OK);
	ck_assert_uint_eq(kvs.n, 0);
	sp_etcd_kvs_free(&kvs);
	sp_etcd_free(e);
}
END_TEST

/* Two candidates race for a leader key with create-if-absent: one wins, the other learns
 * who holds it; a guarded write by the loser (compare the key's create revision) fails. */
START_TEST(test_txn_leader_election)
{
	sp_etcd *a = client(etcd.endpoint), *b = client(etcd.endpoint);
	int64_t la, lb;
	ck_assert_int_eq(sp_etcd_lease_grant(a, 10, &la, NULL), SP_OK);
	ck_assert_int_eq(sp_etcd_lease_grant(b, 10, &lb, NULL), SP_OK);
	sp_etcd_cmp absent = {.key = "/s/0/leader", .klen = 11, .result = SP_ETCD_EQUAL,
			      .target = SP_ETCD_CREATE, .num = 0};
	sp_etcd_op take_a = {.kind = SP_ETCD_OP_PUT, .key = "/s/0/leader", .klen = 11, .value = "a",
			     .vlen = 1, .lease = la};
	sp_etcd_op take_b = take_a;
	take_b.value = "b";
	take_b.lease = lb;
	sp_etcd_op read = {.kind = SP_ETCD_OP_GET, .key = "/s/0/leader", .klen = 11};
	sp_etcd_txn_result ra, rb;
	ck_assert_int_eq(sp_etcd_txn(a, &absent, 1, &take_a, 1, &read, 1, &ra), SP_OK);
	ck_assert(ra.succeeded);
	ck_assert_int_eq(sp_etcd_txn(b, &absent, 1, &take_b, 1, &read, 1, &rb), SP_OK);
	ck_assert(!rb.succeeded);
	ck_assert_uint_eq(rb.ngets, 1);
	ck_assert_uint_eq(rb.gets[0].n, 1);
	ck_assert_str_eq((char *)rb.gets[0].v[0].value, "a");
	ck_assert_int_eq(rb.gets[0].v[0].lease, la);
	int64_t epoch = rb.gets[0].v[0].create_rev;
	ck_assert_int_eq(epoch, ra.rev);
	sp_etcd_txn_result_free(&rb);

	/* Guarded by the leader key's revision and value: only the holder may change the
	 * sync set. */
	sp_etcd_cmp held[2] = {
	    {.key = "/s/0/leader", .klen = 11, .result = SP_ETCD_EQUAL, .target = SP_ETCD_CREATE,
	     .num = epoch},
	    {.key = "/s/0/leader", .klen = 11, .result = SP_ETCD_EQUAL, .target = SP_ETCD_VALUE,
	     .value = "b", .vlen = 1},
	};
	sp_etcd_op sync = {.kind = SP_ETCD_OP_PUT, .key = "/s/0/sync", .klen = 9, .value = "b",
			   .vlen = 1};
	ck_assert_int_eq(sp_etcd_txn(b, held, 2, &sync, 1, NULL, 0, &rb), SP_OK);
	ck_assert(!rb.succeeded);
	sp_etcd_txn_result_free(&rb);
	held[1].value = "a";
	sync.value = "a";
	ck_assert_int_eq(sp_etcd_txn(a, held, 2, &sync, 1, NULL, 0, &rb), SP_OK);
	ck_assert(rb.succeeded);
	ck_assert_uint_eq(rb.ngets, 1);
	ck_assert_uint_eq(rb.gets[0].n, 0); /* a PUT answers no key-values */
	sp_etcd_txn_result_free(&rb);
	sp_etcd_txn_result_free(&ra);

	/* Revoking the lease deletes the leader key; a second revoke finds nothing. */
	ck_assert_int_eq(sp_etcd_lease_revoke(a, la), SP_OK);
	ck_assert_int_eq(sp_etcd_lease_revoke(a, la), SP_ENOTFOUND);
	sp_etcd_kvs kvs;
	ck_assert_int_eq(sp_etcd_get(a, "/s/0/leader", 11, false, &kvs), SP_OK);
	ck_assert_uint_eq(kvs.n, 0);
	sp_etcd_kvs_free(&kvs);
	sp_etcd_lease_revoke(b, lb);
	sp_etcd_delete(a, "/s/", 3, true, NULL);
	sp_etcd_free(a);
	sp_etcd_free(b);
}
END_TEST

START_TEST(test_lease_expires_without_keepalive)
{
	sp_etcd *e = client(etcd.endpoint);
	int64_t id, ttl, left;
	ck_assert_int_eq(sp_etcd_lease_grant(e, 2, &id, &ttl), SP_OK);
	ck_assert_int_eq(ttl, 2);
	ck_assert_int_eq(sp_etcd_put(e, "/l/k", 4, "v", 1, id, NULL), SP_OK);
	/* Kept alive past its TTL, the key stays. */
	for (int i = 0; i < 4; i++) {
		usleep(800 * 1000);
		ck_assert_int_eq(sp_etcd_lease_keepalive(e, id, &left), SP_OK);
		ck_assert_int_eq(left, 2);
	}
	sp_etcd_kvs kvs;
	ck_assert_int_eq(sp_etcd_get(e, "/l/k", 4, false, &kvs), SP_OK);
	ck_assert_uint_eq(kvs.n, 1);
	sp_etcd_kvs_free(&kvs);
	/* Left alone, it expires and takes the key with it. */
	int found = 1;
	for (int i = 0; i < 60 && found; i++) {
		usleep(100 * 1000);
		ck_assert_int_eq(sp_etcd_get(e, "/l/k", 4, false, &kvs), SP_OK);
		found = (int)kvs.n;
		sp_etcd_kvs_free(&kvs);
	}
	ck_assert_int_eq(found, 0);
	ck_assert_int_eq(sp_etcd_lease_keepalive(e, id, &left), SP_ENOTFOUND);
	/* Attaching a key to an expired lease is refused. */
	ck_assert_int_eq(sp_etcd_put(e, "/l/k", 4, "v", 1, id, NULL), SP_ENOTFOUND);
	ck_assert_int_eq(sp_etcd_lease_grant(e, 0, &id, NULL), SP_EINVAL);
	sp_etcd_free(e);
}
END_TEST

typedef struct seen {
	int puts, deletes;
	int64_t last_rev;
	char last_value[16];
} seen;

static bool
on_events(void *arg, int64_t rev, const sp_etcd_event *ev, size_t n)
{
	seen *s = arg;
	for (size_t i = 0; i < n; i++) {
		if (ev[i].deleted)
			s->deletes++;
		else {
			s->puts++;
			snprintf(s->last_value, sizeof(s->last_value), "%s", (char *)ev[i].kv.value);
		}
	}
	s->last_rev = rev;
	return s->puts + s->deletes < 3;
}

START_TEST(test_watch_from_revision)
{
	sp_etcd *e = client(etcd.endpoint);
	int64_t r1;
	ck_assert_int_eq(sp_etcd_put(e, "/w/x", 4, "1", 1, 0, &r1), SP_OK);
	ck_assert_int_eq(sp_etcd_put(e, "/w/y", 4, "2", 1, 0, NULL), SP_OK);
	ck_assert_int_eq(sp_etcd_delete(e, "/w/x", 4, false, NULL), SP_OK);
	/* Replays history from r1, then stops itself after three events. */
	seen s = {0};
	ck_assert_int_eq(sp_etcd_watch(e, "/w/", 3, true, r1, 5000, on_events, &s), SP_OK);
	ck_assert_int_eq(s.puts, 2);
	ck_assert_int_eq(s.deletes, 1);
	ck_assert_str_eq(s.last_value, "2");
	/* Nothing new: the watch ends at its bound. */
	memset(&s, 0, sizeof(s));
	ck_assert_int_eq(sp_etcd_watch(e, "/w/", 3, true, 0, 500, on_events, &s), SP_ETIMEDOUT);
	ck_assert_int_eq(s.puts + s.deletes, 0);
	sp_etcd_delete(e, "/w/", 3, true, NULL);
	sp_etcd_free(e);
}
END_TEST

START_TEST(test_watch_compacted_revision)
{
	sp_etcd *e = client(etcd.endpoint);
	int64_t r;
	ck_assert_int_eq(sp_etcd_put(e, "/c/x", 4, "1", 1, 0, NULL), SP_OK);
	ck_assert_int_eq(sp_etcd_put(e, "/c/x", 4, "2", 1, 0, &r), SP_OK);
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "ETCDCTL_API=3 etcdctl --endpoints=%s compact %lld >/dev/null",
		 etcd.endpoint, (long long)r);
	ck_assert_int_eq(system(cmd), 0);
	seen s = {0};
	ck_assert_int_eq(sp_etcd_watch(e, "/c/x", 4, false, 1, 3000, on_events, &s), SP_ERANGE);
	sp_etcd_free(e);
}
END_TEST

/* A dead endpoint first in the list: calls go to the next one; none alive: SP_EUNAVAIL. */
START_TEST(test_endpoint_failover_and_unreachable)
{
	char eps[160];
	snprintf(eps, sizeof(eps), "http://127.0.0.1:1,%s", etcd.endpoint);
	sp_etcd *e = client(eps);
	ck_assert_int_eq(sp_etcd_put(e, "/f", 2, "x", 1, 0, NULL), SP_OK);
	sp_etcd_kvs kvs;
	ck_assert_int_eq(sp_etcd_get(e, "/f", 2, false, &kvs), SP_OK);
	ck_assert_uint_eq(kvs.n, 1);
	sp_etcd_kvs_free(&kvs);
	sp_etcd_free(e);

	e = client("http://127.0.0.1:1,http://127.0.0.1:2");
	ck_assert_int_eq(sp_etcd_put(e, "/f", 2, "x", 1, 0, NULL), SP_EUNAVAIL);
	sp_etcd_free(e);

	sp_etcd_cfg bad = {.endpoints = "ftp://127.0.0.1:1"};
	ck_assert_int_eq(sp_etcd_new(&bad, &e), SP_EINVAL);
	bad.endpoints = "";
	ck_assert_int_eq(sp_etcd_new(&bad, &e), SP_EINVAL);
}
END_TEST

/* A stalled etcd (SIGSTOP): the call ends at its timeout instead of hanging. */
START_TEST(test_stalled_etcd_times_out)
{
	sp_etcd *e;
	sp_etcd_cfg cfg = {.endpoints = etcd.endpoint, .timeout_ms = 300};
	ck_assert_int_eq(sp_etcd_new(&cfg, &e), SP_OK);
	etcd_proc_signal(&etcd, SIGSTOP);
	int rc = sp_etcd_put(e, "/stall", 6, "x", 1, 0, NULL);
	etcd_proc_signal(&etcd, SIGCONT);
	ck_assert_int_eq(rc, SP_ETIMEDOUT);
	sp_etcd_free(e);
}
END_TEST

int
main(void)
{
	if (etcd_proc_start(&etcd) != 0)
		return 1;
	Suite *s = suite_create("etcd");
	TCase *tc = tcase_create("etcd");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_put_get_delete);
	tcase_add_test(tc, test_txn_leader_election);
	tcase_add_test(tc, test_lease_expires_without_keepalive);
	tcase_add_test(tc, test_watch_from_revision);
	tcase_add_test(tc, test_watch_compacted_revision);
	tcase_add_test(tc, test_endpoint_failover_and_unreachable);
	tcase_add_test(tc, test_stalled_etcd_times_out);
	suite_add_tcase(s, tc);
	int rc = check_run(s);
	etcd_proc_stop(&etcd);
	return rc;
}
