/*
 * connsrv's peer pushes (cs_rpc_push) against a real NNG PULL socket: the frames of one loop
 * pass leave as one message (a lone frame as itself, more as a PEER_BATCH), in order,
 * within the count and byte bounds, and a push nobody can take is counted as dropped.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "connsrv/rpc.h"
#include "sp_error.h"
#include "sp_metrics.h"
#include "sp_nng.h"
#include "check_run.h"

static struct event_base *base;
static cs_rpc *rpc;
static nng_socket pull;
static char url[64];
static uint8_t big_env[60000];

static void
setup_named(const char *name)
{
	evthread_use_pthreads();
	ck_assert_ptr_nonnull(base = event_base_new());
	ck_assert_int_eq(cs_rpc_new(base, 2000, &rpc), SP_OK);
	snprintf(url, sizeof(url), "inproc://push-%s", name);
	ck_assert_int_eq(sp_nng_pull_listen(&pull, url), SP_OK);
	nng_socket_set_ms(pull, NNG_OPT_RECVTIMEO, 5000);
}

static void
teardown(void)
{
	cs_rpc_free(rpc);
	nng_close(pull);
	event_base_free(base);
}

static int
push_deliver(const char *to, uint64_t device, const void *env, size_t len)
{
	sp_frame d;
	sp_frame_init(&d, SP_T_DELIVER, 0, false);
	sp_frame_set_u64(&d, SP_F_SEQ, device + 1000);
	sp_frame_set_u64(&d, SP_F_DEVICE, device);
	sp_frame_set_u64(&d, SP_F_CONN_EPOCH, 1);
	sp_frame_set_u64(&d, SP_F_FROM_USER, 1);
	sp_frame_set_u64(&d, SP_F_FROM_DEVICE, 2);
	sp_frame_set_u64(&d, SP_F_SERVER_TS, 3);
	sp_frame_set_u64(&d, SP_F_ETYPE, 1);
	static const uint8_t id[16] = {9};
	sp_frame_set_bin(&d, SP_F_MSG_ID, id, 16);
	sp_frame_set_bin(&d, SP_F_ENV, env, len);
	return cs_rpc_push(rpc, to, &d);
}

/* Ends the loop pass: the flush event runs (1: nothing left pending after it). */
static void
end_pass(void)
{
	ck_assert_int_ge(event_base_loop(base, EVLOOP_NONBLOCK), 0);
}

/* One message from the PULL socket: the DEVICE of each frame it carries, in order, and
 * whether it was a batch. Returns the number of frames. */
static uint32_t
recv_devices(uint64_t *devices, uint32_t cap, bool *batch, size_t *bytes)
{
	nng_msg *m;
	ck_assert_int_eq(nng_recvmsg(pull, &m, 0), 0);
	if (bytes)
		*bytes = nng_msg_len(m);
	sp_frame f;
	ck_assert_int_eq(sp_nng_msg_decode(m, &f), SP_OK);
	uint32_t n = 0;
	*batch = f.type == SP_T_PEER_BATCH;
	if (*batch) {
		const sp_val *v = sp_frame_get(&f, SP_F_PEER_FRAMES);
		ck_assert_ptr_nonnull(v);
		for (uint32_t i = 0; i < v->bs.n; i++) {
			sp_frame e;
			ck_assert_int_eq(sp_frame_decode(v->bs.v[i].p, v->bs.v[i].len, &e), SP_OK);
			ck_assert_uint_eq(e.type, SP_T_DELIVER);
			ck_assert_uint_lt(n, cap);
			devices[n++] = sp_frame_u64(&e, SP_F_DEVICE);
			sp_frame_fini(&e);
		}
	} else {
		ck_assert_uint_eq(f.type, SP_T_DELIVER);
		devices[n++] = sp_frame_u64(&f, SP_F_DEVICE);
	}
	sp_frame_fini(&f);
	nng_msg_free(m);
	return n;
}

/* The PUSH socket dials on first use: push until one arrives, so the tests below start on
 * a connected pipe. */
static void
connect_pipe(void)
{
	uint64_t dev[1];
	bool batch;
	nng_socket_set_ms(pull, NNG_OPT_RECVTIMEO, 100);
	for (int i = 0; i < 50; i++) { /* bounded: ~5 s */
		ck_assert_int_eq(push_deliver(url, 0, "x", 1), SP_OK);
		end_pass();
		nng_msg *m;
		if (nng_recvmsg(pull, &m, 0) == 0) {
			nng_msg_free(m);
			nng_socket_set_ms(pull, NNG_OPT_RECVTIMEO, 5000);
			(void)dev;
			(void)batch;
			return;
		}
	}
	ck_abort_msg("the push socket never connected");
}

START_TEST(test_lone_push_is_plain_frame)
{
	setup_named("lone");
	connect_pipe();
	ck_assert_int_eq(push_deliver(url, 42, "e", 1), SP_OK);
	end_pass();
	uint64_t dev[4];
	bool batch;
	ck_assert_uint_eq(recv_devices(dev, 4, &batch, NULL), 1);
	ck_assert(!batch);
	ck_assert_uint_eq(dev[0], 42);
	teardown();
}
END_TEST

START_TEST(test_one_pass_one_message_in_order)
{
	setup_named("pass");
	connect_pipe();
	int64_t msgs = sp_metric_value(sp_metric_counter("sp_connsrv_peer_messages_sent_total", ""));
	int64_t frames = sp_metric_value(sp_metric_counter("sp_connsrv_peer_frames_sent_total", ""));
	/* 300 in one pass: 256 (the count bound) in one message, then 44 in another. */
	for (uint64_t i = 1; i <= 300; i++)
		ck_assert_int_eq(push_deliver(url, i, "e", 1), SP_OK);
	end_pass();
	uint64_t dev[300];
	bool batch;
	ck_assert_uint_eq(recv_devices(dev, 300, &batch, NULL), 256);
	ck_assert(batch);
	ck_assert_uint_eq(recv_devices(dev + 256, 44, &batch, NULL), 44);
	ck_assert(batch);
	for (uint64_t i = 0; i < 300; i++)
		ck_assert_uint_eq(dev[i], i + 1);
	ck_assert_int_eq(sp_metric_value(sp_metric_counter("sp_connsrv_peer_messages_sent_total", "")), msgs + 2);
	ck_assert_int_eq(sp_metric_value(sp_metric_counter("sp_connsrv_peer_frames_sent_total", "")), frames + 300);
	/* The next pass starts afresh. */
	ck_assert_int_eq(push_deliver(url, 7, "e", 1), SP_OK);
	ck_assert_int_eq(push_deliver(url, 8, "e", 1), SP_OK);
	end_pass();
	ck_assert_uint_eq(recv_devices(dev, 300, &batch, NULL), 2);
	ck_assert(batch);
	ck_assert_uint_eq(dev[0], 7);
	ck_assert_uint_eq(dev[1], 8);
	teardown();
}
END_TEST

START_TEST(test_byte_bound)
{
	setup_named("bytes");
	connect_pipe();
	memset(big_env, 'b', sizeof(big_env));
	/* 10 x ~60 KiB: no message over ~256 KiB + one frame, all in order. */
	for (uint64_t i = 1; i <= 10; i++)
		ck_assert_int_eq(push_deliver(url, i, big_env, sizeof(big_env)), SP_OK);
	end_pass();
	uint64_t dev[10];
	uint32_t got = 0;
	while (got < 10) {
		bool batch;
		size_t bytes;
		uint32_t n = recv_devices(dev + got, 10 - got, &batch, &bytes);
		ck_assert_uint_le(bytes, 256 * 1024 + 70000);
		ck_assert_uint_le(n, 5);
		got += n;
	}
	for (uint64_t i = 0; i < 10; i++)
		ck_assert_uint_eq(dev[i], i + 1);
	teardown();
}
END_TEST

START_TEST(test_unreachable_counted)
{
	setup_named("unreach");
	int64_t dropped = sp_metric_value(sp_metric_counter("sp_connsrv_pushes_dropped_total", ""));
	/* Nobody listens there: once the socket's send queue is full (one message per pass),
	 * each further pass's message is dropped with every frame it carries. */
	for (int i = 0; i < SP_NNG_QUEUE; i++) {
		ck_assert_int_eq(push_deliver("inproc://push-nobody", 1, "e", 1), SP_OK);
		end_pass();
	}
	ck_assert_int_eq(sp_metric_value(sp_metric_counter("sp_connsrv_pushes_dropped_total", "")), dropped);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(push_deliver("inproc://push-nobody", 1, "e", 1), SP_OK);
		ck_assert_int_eq(push_deliver("inproc://push-nobody", 2, "e", 1), SP_OK);
		end_pass();
	}
	ck_assert_int_eq(sp_metric_value(sp_metric_counter("sp_connsrv_pushes_dropped_total", "")), dropped + 6);
	teardown();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("connsrv_push");
	TCase *tc = tcase_create("push");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_lone_push_is_plain_frame);
	tcase_add_test(tc, test_one_pass_one_message_in_order);
	tcase_add_test(tc, test_byte_bound);
	tcase_add_test(tc, test_unreachable_counted);
	suite_add_tcase(s, tc);
	return check_run(s);
}
