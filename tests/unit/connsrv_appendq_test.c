/*
 * connsrv's per-shard append queues against fake shards (NNG REP sockets on threads that
 * answer APPEND_MULTI as scripted): one request per shard and loop pass, the item and byte
 * bounds, each item's own result, and a failed request failing every item it carried.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "connsrv/appendq.h"
#include "sp_error.h"
#include "sp_metrics.h"
#include "sp_nng.h"
#include "check_run.h"

/* A refused item (the fake answers it seq 0 + SP_EFULL, as a shard over a device's cap). */
#define ETYPE_REFUSE 99

typedef enum { FAKE_OK, FAKE_ERROR, FAKE_SHORT, FAKE_SILENT } fake_mode;

typedef struct fake_shard {
	char url[64];
	nng_socket sock;
	pthread_t th;
	fake_mode mode;
	pthread_mutex_t lock;
	int nreq;
	uint32_t counts[64]; /* items per request, in arrival order */
} fake_shard;

/* Answers each APPEND_MULTI: results[i].seq = items[i].server_ts (so a test can tell the
 * results were matched to the right items), or as the mode says. */
static void *
fake_run(void *arg)
{
	fake_shard *fs = arg;
	nng_msg *m;
	while (nng_recvmsg(fs->sock, &m, 0) == 0) {
		sp_frame f;
		ck_assert_int_eq(sp_nng_msg_decode(m, &f), SP_OK);
		ck_assert_int_eq(f.type, SP_T_APPEND_MULTI);
		const sp_val *items = sp_frame_get(&f, SP_F_APPEND_ITEMS);
		uint32_t n = items->rs.n;
		pthread_mutex_lock(&fs->lock);
		if (fs->nreq < 64)
			fs->counts[fs->nreq] = n;
		fs->nreq++;
		pthread_mutex_unlock(&fs->lock);
		if (fs->mode == FAKE_ERROR) {
			sp_nng_send_error(fs->sock, f.id, f.has_id, SP_ESTATE, "scripted");
		} else if (fs->mode != FAKE_SILENT) {
			sp_frame *res = calloc(n, sizeof(sp_frame)), r;
			ck_assert_ptr_nonnull(res);
			for (uint32_t i = 0; i < n; i++) {
				const sp_frame *it = &items->rs.v[i];
				sp_frame_init(&res[i], SP_T_APPEND_RESULT, 0, false);
				if (sp_frame_u64(it, SP_F_ETYPE) == ETYPE_REFUSE) {
					sp_frame_set_u64(&res[i], SP_F_SEQ, 0);
					sp_frame_set_i64(&res[i], SP_F_CODE, SP_EFULL);
				} else {
					sp_frame_set_u64(&res[i], SP_F_SEQ, sp_frame_u64(it, SP_F_SERVER_TS));
				}
			}
			sp_frame_init(&r, SP_T_APPENDED_MULTI, f.id, f.has_id);
			sp_frame_set_recs(&r, SP_F_RESULTS, res, fs->mode == FAKE_SHORT ? n - 1 : n);
			ck_assert_int_eq(sp_nng_send_frame(fs->sock, &r), SP_OK);
			free(res);
		}
		sp_frame_fini(&f);
		nng_msg_free(m);
	}
	return NULL;
}

static void
fake_start(fake_shard *fs, const char *name, fake_mode mode)
{
	memset(fs, 0, sizeof(*fs));
	snprintf(fs->url, sizeof(fs->url), "inproc://appendq-%s", name);
	fs->mode = mode;
	pthread_mutex_init(&fs->lock, NULL);
	ck_assert_int_eq(sp_nng_rep_listen(&fs->sock, fs->url), SP_OK);
	ck_assert_int_eq(pthread_create(&fs->th, NULL, fake_run, fs), 0);
}

static void
fake_stop(fake_shard *fs)
{
	nng_close(fs->sock);
	pthread_join(fs->th, NULL);
	pthread_mutex_destroy(&fs->lock);
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* ---- the connsrv side ---- */

typedef struct result {
	int calls, rc;
	uint64_t seq;
} result;

static struct event_base *base;
static cs_rpc *rpc;
static cs_shardcall *shards;
static cs_appendq *q;
static int ndone, nwant;
static bool timed_out;
static const uint8_t msg_id[16] = {7};
static uint8_t big_env[60000];

static void
on_done(void *arg, int rc, uint64_t seq)
{
	result *r = arg;
	r->calls++;
	r->rc = rc;
	r->seq = seq;
	if (++ndone == nwant)
		event_base_loopbreak(base);
}

static void
on_guard(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	timed_out = true;
	event_base_loopbreak(base);
}

static void
setup(int timeout_ms)
{
	evthread_use_pthreads();
	ck_assert_ptr_nonnull(base = event_base_new());
	ck_assert_int_eq(cs_rpc_new(base, timeout_ms, &rpc), SP_OK);
	/* No retries here (no cluster map to find a new primary in): connsrv_handlers_test
	 * covers them. A failover-like failure then gives up at once, as SP_EUNAVAIL. */
	ck_assert_int_eq(cs_shardcall_new(base, rpc, NULL, 0, &shards), SP_OK);
	ck_assert_int_eq(cs_appendq_new(base, shards, &q), SP_OK);
	ndone = nwant = 0;
	timed_out = false;
}

static void
teardown(void)
{
	cs_rpc_free(rpc);
	cs_shardcall_free(shards);
	cs_appendq_free(q);
	event_base_free(base);
}

/* Runs the loop until `want` appends in all have completed. */
static void
run_until(int want)
{
	nwant = want;
	struct timeval tv = {20, 0};
	struct event *guard = evtimer_new(base, on_guard, NULL);
	ck_assert_ptr_nonnull(guard);
	evtimer_add(guard, &tv);
	if (ndone < nwant)
		event_base_dispatch(base);
	event_free(guard);
	ck_assert_msg(!timed_out, "%d of %d appends completed", ndone, nwant);
}

static int
add(const char *url, uint64_t ts, uint64_t etype, const void *env, size_t len, result *r)
{
	sp_frame it;
	sp_frame_init(&it, SP_T_APPEND_ITEM, 0, false);
	sp_frame_set_u64(&it, SP_F_DEVICE, ts % 7);
	sp_frame_set_bin(&it, SP_F_MSG_ID, msg_id, 16);
	sp_frame_set_u64(&it, SP_F_FROM_USER, 1);
	sp_frame_set_u64(&it, SP_F_FROM_DEVICE, 2);
	sp_frame_set_u64(&it, SP_F_SERVER_TS, ts);
	sp_frame_set_u64(&it, SP_F_ETYPE, etype);
	sp_frame_set_bin(&it, SP_F_ENV, env, len);
	return cs_appendq_add(q, url, &it, on_done, r);
}

static int64_t
counter(const char *name)
{
	return sp_metric_value(sp_metric_counter(name, ""));
}

/* The appends of a callback are queued for the next pass, and complete too. */
static fake_shard *chain_shard;
static result chain_second;

static void
on_chain_first(void *arg, int rc, uint64_t seq)
{
	ck_assert_int_eq(add(chain_shard->url, 500, 1, "c", 1, &chain_second), SP_OK);
	on_done(arg, rc, seq);
}

START_TEST(test_one_request_per_shard_and_pass)
{
	fake_shard a, b;
	fake_start(&a, "a", FAKE_OK);
	fake_start(&b, "b", FAKE_OK);
	setup(5000);
	int64_t req0 = counter("sp_connsrv_append_requests_total");
	int64_t items0 = counter("sp_connsrv_append_items_total");
	result ra[5] = {{0}}, rb[3] = {{0}};
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(add(a.url, 100 + i, i == 2 ? ETYPE_REFUSE : 1, "env", 3, &ra[i]), SP_OK);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(add(b.url, 200 + i, 1, "env", 3, &rb[i]), SP_OK);
	ck_assert_uint_eq(cs_appendq_queued(q), 8);
	run_until(8);
	ck_assert_uint_eq(cs_appendq_queued(q), 0);
	/* One request per shard; each item its own result: a refusal stays with its item. */
	ck_assert_int_eq(a.nreq, 1);
	ck_assert_uint_eq(a.counts[0], 5);
	ck_assert_int_eq(b.nreq, 1);
	ck_assert_uint_eq(b.counts[0], 3);
	for (int i = 0; i < 5; i++) {
		ck_assert_int_eq(ra[i].calls, 1);
		ck_assert_int_eq(ra[i].rc, i == 2 ? SP_EFULL : SP_OK);
		ck_assert_uint_eq(ra[i].seq, i == 2 ? 0 : 100 + i);
	}
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(rb[i].calls, 1);
		ck_assert_int_eq(rb[i].rc, SP_OK);
		ck_assert_uint_eq(rb[i].seq, 200 + i);
	}
	ck_assert_int_eq(counter("sp_connsrv_append_requests_total") - req0, 2);
	ck_assert_int_eq(counter("sp_connsrv_append_items_total") - items0, 8);

	/* An append queued by a completion goes in a later request. */
	result first = {0};
	chain_shard = &a;
	sp_frame it;
	sp_frame_init(&it, SP_T_APPEND_ITEM, 0, false);
	sp_frame_set_u64(&it, SP_F_DEVICE, 1);
	sp_frame_set_bin(&it, SP_F_MSG_ID, msg_id, 16);
	sp_frame_set_u64(&it, SP_F_FROM_USER, 1);
	sp_frame_set_u64(&it, SP_F_FROM_DEVICE, 2);
	sp_frame_set_u64(&it, SP_F_SERVER_TS, 400);
	sp_frame_set_u64(&it, SP_F_ETYPE, 1);
	sp_frame_set_bin(&it, SP_F_ENV, "f", 1);
	ck_assert_int_eq(cs_appendq_add(q, a.url, &it, on_chain_first, &first), SP_OK);
	ndone = 0;
	run_until(2);
	ck_assert_int_eq(first.rc, SP_OK);
	ck_assert_uint_eq(first.seq, 400);
	ck_assert_int_eq(chain_second.calls, 1);
	ck_assert_uint_eq(chain_second.seq, 500);
	ck_assert_int_eq(a.nreq, 3);
	teardown();
	fake_stop(&a);
	fake_stop(&b);
}
END_TEST

START_TEST(test_item_and_byte_bounds)
{
	fake_shard a;
	fake_start(&a, "bounds", FAKE_OK);
	setup(5000);
	static result r[300];
	memset(r, 0, sizeof(r));
	for (int i = 0; i < 300; i++)
		ck_assert_int_eq(add(a.url, 1000 + i, 1, "x", 1, &r[i]), SP_OK);
	run_until(300);
	/* 256 at most per request; the requests may arrive in either order. */
	ck_assert_int_eq(a.nreq, 2);
	qsort(a.counts, 2, sizeof(uint32_t), cmp_u32);
	ck_assert_uint_eq(a.counts[0], 44);
	ck_assert_uint_eq(a.counts[1], 256);
	for (int i = 0; i < 300; i++) {
		ck_assert_int_eq(r[i].calls, 1);
		ck_assert_int_eq(r[i].rc, SP_OK);
		ck_assert_uint_eq(r[i].seq, 1000 + i);
	}

	/* 20 envs of 60,000 bytes: 8 fit in CS_APPENDQ_MAX_BYTES. */
	memset(r, 0, sizeof(r));
	ndone = 0;
	for (int i = 0; i < 20; i++)
		ck_assert_int_eq(add(a.url, 2000 + i, 1, big_env, sizeof(big_env), &r[i]), SP_OK);
	run_until(20);
	ck_assert_int_eq(a.nreq, 5);
	qsort(a.counts + 2, 3, sizeof(uint32_t), cmp_u32);
	ck_assert_uint_eq(a.counts[2], 4);
	ck_assert_uint_eq(a.counts[3], 8);
	ck_assert_uint_eq(a.counts[4], 8);
	for (int i = 0; i < 20; i++)
		ck_assert_uint_eq(r[i].seq, 2000 + i);
	teardown();
	fake_stop(&a);
}
END_TEST

/* Every item of a request that fails as a whole gets that failure. */
static void
request_fails(fake_mode mode, int timeout_ms, int want_rc)
{
	fake_shard a;
	fake_start(&a, "fail", mode);
	setup(timeout_ms);
	result r[4] = {{0}};
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(add(a.url, 10 + i, 1, "y", 1, &r[i]), SP_OK);
	run_until(4);
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(r[i].calls, 1);
		ck_assert_int_eq(r[i].rc, want_rc);
		ck_assert_uint_eq(r[i].seq, 0);
	}
	teardown();
	fake_stop(&a);
}

START_TEST(test_error_reply_fails_every_item)
{
	request_fails(FAKE_ERROR, 5000, SP_ESTATE);
}
END_TEST

START_TEST(test_short_reply_fails_every_item)
{
	request_fails(FAKE_SHORT, 5000, SP_EPROTO);
}
END_TEST

START_TEST(test_timeout_fails_every_item)
{
	request_fails(FAKE_SILENT, 300, SP_EUNAVAIL);
}
END_TEST

START_TEST(test_bad_items_and_close)
{
	setup(5000);
	static uint8_t huge[65537];
	result r[3] = {{0}};
	/* Refused alone, before they can spoil a request. */
	ck_assert_int_eq(add("inproc://appendq-none", 1, 1, "", 0, &r[0]), SP_EFIELDLEN);
	ck_assert_int_eq(add("inproc://appendq-none", 1, 1, huge, sizeof(huge), &r[0]), SP_EFIELDLEN);
	ck_assert_uint_eq(cs_appendq_queued(q), 0);
	/* Queued when the queues close: completed as closed, never sent. */
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(add("inproc://appendq-none", 1, 1, "z", 1, &r[i]), SP_OK);
	cs_rpc_free(rpc);
	cs_shardcall_free(shards);
	cs_appendq_free(q);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(r[i].calls, 1);
		ck_assert_int_eq(r[i].rc, SP_ECLOSED);
	}
	event_base_free(base);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("connsrv_appendq");
	TCase *tc = tcase_create("appendq");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_one_request_per_shard_and_pass);
	tcase_add_test(tc, test_item_and_byte_bounds);
	tcase_add_test(tc, test_error_reply_fails_every_item);
	tcase_add_test(tc, test_short_reply_fails_every_item);
	tcase_add_test(tc, test_timeout_fails_every_item);
	tcase_add_test(tc, test_bad_items_and_close);
	suite_add_tcase(s, tc);
	return check_run(s);
}
