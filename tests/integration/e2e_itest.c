/*
 * The whole 1:1 message path through real processes: Redis, router, keysrv, three inbox
 * shards and two connsrvs started by scripts/devcluster.sh, driven over TLS by the client
 * connection code. Fault cases kill real processes with SIGKILL.
 */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "itest.h"
#include "sp_error.h"

static itest_cluster cl;
static int phone_seq;

static void
new_user(itest_user *u, int which)
{
	char phone[32];
	snprintf(phone, sizeof(phone), "+1555%03d%04d", getpid() % 1000, ++phone_seq);
	itest_register(&cl, which, u, phone);
}

/* Logs in and waits for the end of the initial drain. */
static void
online(itest_user *u, int which)
{
	ck_assert_int_eq(itest_login(&cl, which, u), SP_OK);
	sp_frame f;
	ck_assert_int_eq(itest_wait(u, SP_T_QUEUE_EMPTY, 10000, &f), SP_OK);
	sp_frame_fini(&f);
}

/* Receives `n` DELIVERs of ciphertext messages, checking body i is "<prefix><first+i>",
 * in order, acknowledging as it goes. Receipts are skipped. */
static void
expect_messages(itest_user *u, const char *prefix, int first, int n)
{
	for (int i = 0; i < n; i++) {
		sp_frame f;
		int rc;
		do {
			ck_assert_msg((rc = itest_wait(u, SP_T_DELIVER, 15000, &f)) == SP_OK,
				      "message %d of %d: %s", i, n, sp_strerror(rc));
			if (sp_frame_u64(&f, SP_F_ETYPE) >= 10) {
				itest_ack(u, sp_frame_u64(&f, SP_F_SEQ));
				sp_frame_fini(&f);
				continue;
			}
			break;
		} while (1);
		char want[64];
		snprintf(want, sizeof(want), "%s%d", prefix, first + i);
		sp_bin env = sp_frame_bin(&f, SP_F_ENV);
		ck_assert_msg(env.len == strlen(want) && memcmp(env.p, want, env.len) == 0,
			      "expected %s, got %.*s", want, (int)env.len, env.p);
		itest_ack(u, sp_frame_u64(&f, SP_F_SEQ));
		sp_frame_fini(&f);
	}
}

/* Two new users, a on connsrv-0 and b on connsrv-1, both logged in and drained. */
static void
pair_online(itest_user *a, itest_user *b)
{
	new_user(a, 0);
	new_user(b, 1);
	online(a, 0);
	online(b, 1);
}

static int
send_text(itest_user *from, const itest_user *to, const char *text, uint8_t id[16])
{
	uint8_t local[16];
	if (!id)
		id = local;
	itest_msg_id(id);
	return itest_send(from, to->user, &to->device, 1, id, text, strlen(text));
}

START_TEST(test_online_delivery_and_receipts)
{
	itest_user a, b;
	pair_online(&a, &b);
	uint8_t id[16];
	ck_assert_int_eq(send_text(&a, &b, "m0", id), SP_OK);
	sp_frame f;
	ck_assert_int_eq(itest_wait(&b, SP_T_DELIVER, 5000, &f), SP_OK);
	/* The sender is who logged in, not anything the client said. */
	ck_assert(sp_frame_u64(&f, SP_F_FROM_USER) == a.user);
	ck_assert(sp_frame_u64(&f, SP_F_FROM_DEVICE) == a.device);
	ck_assert(memcmp(sp_frame_bin(&f, SP_F_MSG_ID).p, id, 16) == 0);
	uint64_t seq = sp_frame_u64(&f, SP_F_SEQ);
	sp_frame_fini(&f);
	ck_assert_int_eq(itest_ack(&b, seq), SP_OK);

	/* DELIVERED receipt back to the sender, naming the message. */
	ck_assert_int_eq(itest_wait(&a, SP_T_DELIVER, 5000, &f), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&f, SP_F_ETYPE), 10);
	sp_frame r;
	sp_bin env = sp_frame_bin(&f, SP_F_ENV);
	ck_assert_int_eq(sp_frame_decode(env.p, env.len, &r), SP_OK);
	ck_assert_int_eq(r.type, SP_T_RECEIPT);
	ck_assert(sp_frame_u64(&r, SP_F_FROM_DEVICE) == b.device);
	const sp_val *ids = sp_frame_get(&r, SP_F_MSG_IDS);
	ck_assert_uint_eq(ids->bs.n, 1);
	ck_assert(memcmp(ids->bs.v[0].p, id, 16) == 0);
	sp_frame_fini(&r);
	itest_ack(&a, sp_frame_u64(&f, SP_F_SEQ));
	sp_frame_fini(&f);

	/* READ from the recipient becomes a read receipt. */
	sp_frame q;
	sp_bin one = {id, 16};
	sp_frame_init(&q, SP_T_READ, 77, true);
	sp_frame_set_u64(&q, SP_F_TO_USER, a.user);
	sp_frame_set_bins(&q, SP_F_MSG_IDS, &one, 1);
	ck_assert_int_eq(spc_conn_send(b.conn, &q), SP_OK);
	ck_assert_int_eq(itest_wait(&a, SP_T_DELIVER, 5000, &f), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&f, SP_F_ETYPE), 11);
	sp_frame_fini(&f);
	itest_logout(&a);
	itest_logout(&b);
}
END_TEST

START_TEST(test_offline_drain_in_order_with_window)
{
	itest_user a, b;
	new_user(&a, 0);
	new_user(&b, 1);
	online(&a, 0);
	/* 300 > the 256-entry window: the drain must pause and resume on ACKs. */
	for (int i = 0; i < 300; i++) {
		char text[32];
		snprintf(text, sizeof(text), "offline-%d", i);
		ck_assert_int_eq(send_text(&a, &b, text, NULL), SP_OK);
	}
	ck_assert_int_eq(itest_login(&cl, 1, &b), SP_OK);
	expect_messages(&b, "offline-", 0, 300);
	sp_frame f;
	ck_assert_int_eq(itest_wait(&b, SP_T_QUEUE_EMPTY, 10000, &f), SP_OK);
	sp_frame_fini(&f);
	itest_logout(&a);
	itest_logout(&b);
}
END_TEST

START_TEST(test_unacked_is_redelivered)
{
	itest_user a, b;
	pair_online(&a, &b);
	uint8_t ids[5][16];
	for (int i = 0; i < 5; i++) {
		char text[16];
		snprintf(text, sizeof(text), "r%d", i);
		ck_assert_int_eq(send_text(&a, &b, text, ids[i]), SP_OK);
	}
	for (int i = 0; i < 5; i++) {
		sp_frame f;
		ck_assert_int_eq(itest_wait(&b, SP_T_DELIVER, 5000, &f), SP_OK);
		sp_frame_fini(&f);
	}
	/* Connection cut before any ACK: everything comes again, same ids, same order. */
	itest_logout(&b);
	ck_assert_int_eq(itest_login(&cl, 0, &b), SP_OK);
	for (int i = 0; i < 5; i++) {
		sp_frame f;
		ck_assert_int_eq(itest_wait(&b, SP_T_DELIVER, 5000, &f), SP_OK);
		ck_assert(memcmp(sp_frame_bin(&f, SP_F_MSG_ID).p, ids[i], 16) == 0);
		sp_frame_fini(&f);
	}
	itest_logout(&a);
	itest_logout(&b);
}
END_TEST

START_TEST(test_spoofing_and_foreign_inbox)
{
	itest_user a, b, c;
	new_user(&a, 0);
	new_user(&b, 0);
	new_user(&c, 1);
	online(&a, 0);
	/* c is offline with a message waiting. */
	ck_assert_int_eq(send_text(&a, &c, "for-c", NULL), SP_OK);

	/* b tries to ACK far ahead: refused (beyond what it was delivered), nothing touched. */
	online(&b, 0);
	ck_assert_int_eq(itest_ack(&b, 1000000), SP_OK);
	sp_frame q, f;
	ck_assert_int_eq(itest_wait(&b, SP_T_ERROR, 5000, &f), SP_OK);
	ck_assert_int_eq(sp_frame_i64(&f, SP_F_CODE), SP_ERANGE);
	sp_frame_fini(&f);
	/* A client cannot fetch from a shard directly. */
	sp_frame_init(&q, SP_T_FETCH, 5, true);
	sp_frame_set_u64(&q, SP_F_DEVICE, c.device);
	sp_frame_set_u64(&q, SP_F_AFTER_SEQ, 0);
	ck_assert_int_eq(spc_conn_send(b.conn, &q), SP_OK);
	ck_assert_int_eq(itest_wait(&b, SP_T_ERROR, 5000, &f), SP_OK);
	ck_assert_int_eq(sp_frame_i64(&f, SP_F_CODE), SP_EPROTO);
	sp_frame_fini(&f);

	ck_assert_int_eq(itest_login(&cl, 1, &c), SP_OK);
	expect_messages(&c, "for-", 0, 0);
	ck_assert_int_eq(itest_wait(&c, SP_T_DELIVER, 5000, &f), SP_OK);
	ck_assert(sp_frame_u64(&f, SP_F_FROM_USER) == a.user);
	sp_frame_fini(&f);

	/* A SEND claiming a sender is not a valid frame at all: ERROR and close. */
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	uint8_t id[16] = {1};
	msgpack_pack_map(&pk, 5);
	msgpack_pack_str_with_body(&pk, "t", 1);
	msgpack_pack_uint8(&pk, SP_T_SEND);
	msgpack_pack_str_with_body(&pk, "msg_id", 6);
	msgpack_pack_bin_with_body(&pk, id, 16);
	msgpack_pack_str_with_body(&pk, "to_user", 7);
	msgpack_pack_uint64(&pk, c.user);
	msgpack_pack_str_with_body(&pk, "from_user", 9);
	msgpack_pack_uint64(&pk, a.user);
	msgpack_pack_str_with_body(&pk, "items", 5);
	msgpack_pack_array(&pk, 0);
	ck_assert_int_eq(sp_frame_decode((uint8_t *)sb.data, sb.size, &f), SP_EUNKNOWNFIELD);
	msgpack_sbuffer_destroy(&sb);
	itest_logout(&a);
	itest_logout(&b);
	itest_logout(&c);
}
END_TEST

START_TEST(test_mismatched_devices_and_kick)
{
	itest_user a, b;
	new_user(&a, 0);
	new_user(&b, 1);
	online(&a, 0);
	uint8_t id[16];
	itest_msg_id(id);
	uint64_t wrong = b.device ^ 1;
	ck_assert_int_eq(itest_send(&a, b.user, &wrong, 1, id, "x", 1), SP_EMISMATCH);

	/* Logging in again elsewhere kicks the older connection. */
	online(&b, 1);
	spc_conn *old = b.conn;
	b.conn = NULL;
	online(&b, 0);
	sp_frame f;
	int rc;
	do {
		rc = spc_conn_recv(old, 5000, &f);
		if (rc == SP_OK && f.type == SP_T_KICKED) {
			sp_frame_fini(&f);
			break;
		}
		if (rc == SP_OK)
			sp_frame_fini(&f);
	} while (rc == SP_OK);
	ck_assert_int_eq(rc, SP_OK);
	spc_conn_close(old);
	itest_logout(&a);
	itest_logout(&b);
}
END_TEST

START_TEST(test_lost_push_is_repaired)
{
	itest_user a, b;
	pair_online(&a, &b);
	/* Without its route, nobody pushes to b: only the periodic check can find the message. */
	ck_assert_int_eq(itest_sh(&cl, "redis-cli -p %d --user $SEALPOST_REDIS_USER --pass \"$(cat "
				     "$SEALPOST_REDIS_PASSWORD_FILE)\" --no-auth-warning DEL r:%llu "
				     "| grep -qx 1", cl.base,
				  (unsigned long long)b.device), 0);
	ck_assert_int_eq(send_text(&a, &b, "lost-0", NULL), SP_OK);
	expect_messages(&b, "lost-", 0, 1);
	itest_logout(&a);
	itest_logout(&b);
}
END_TEST

START_TEST(test_malformed_and_slow_clients_hurt_nobody)
{
	itest_user a, b, slow;
	new_user(&a, 0);
	new_user(&b, 0);
	new_user(&slow, 0);
	online(&a, 0);
	online(&b, 0);
	online(&slow, 0);
	/* slow stops reading while a floods it with 2,000 x 4 KiB; under the sanitizers
	 * (make asan) 600, still more than twice the 256-entry delivery window. */
	const int flood = itest_sanitized() ? 600 : 2000;
	static char big[4096];
	memset(big, 'z', sizeof(big));
	for (int i = 0; i < flood; i++) {
		uint8_t id[16];
		itest_msg_id(id);
		int rc = itest_send(&a, slow.user, &slow.device, 1, id, big, sizeof(big));
		if (rc == SP_ERATELIMIT) {
			usleep(20000);
			i--;
			continue;
		}
		ck_assert_int_eq(rc, SP_OK);
	}
	/* Garbage on other connections: an impossible length, then bad msgpack. */
	spc_conn *g1 = itest_connect(&cl, 0), *g2 = itest_connect(&cl, 0);
	sp_frame f;
	sp_frame_init(&f, SP_T_PING, 1, true);
	ck_assert_int_eq(spc_conn_send(g1, &f), SP_OK);
	ck_assert_int_eq(spc_conn_recv(g1, 5000, &f), SP_OK);
	ck_assert_int_eq(f.type, SP_T_PONG);
	sp_frame_fini(&f);
	spc_conn_close(g1);
	ck_assert_int_eq(itest_sh(&cl, "printf '\\377\\377\\377\\377garbage' | timeout 5 openssl s_client -quiet "
					"-CAfile $SEALPOST_CA -connect 127.0.0.1:%d >/dev/null 2>&1; true",
				  cl.conn_port[0]),
			 0);
	spc_conn_close(g2);
	/* Meanwhile the others are served as usual. */
	ck_assert_int_eq(send_text(&a, &b, "fine-0", NULL), SP_OK);
	expect_messages(&b, "fine-", 0, 1);
	/* And the slow reader, when it reads, gets everything in order. */
	int got = 0;
	uint64_t last = 0;
	while (got < flood) {
		ck_assert_int_eq(itest_wait(&slow, SP_T_DELIVER, 15000, &f), SP_OK);
		uint64_t seq = sp_frame_u64(&f, SP_F_SEQ);
		ck_assert(seq > last);
		last = seq;
		got++;
		itest_ack(&slow, seq);
		sp_frame_fini(&f);
	}
	itest_logout(&a);
	itest_logout(&b);
	itest_logout(&slow);
}
END_TEST

/* ---- a burst from several senders at once: appends coalesce, nothing is lost ---- */

#define BURST_SENDERS 8
#define BURST_MSGS 40

typedef struct burst_sender {
	itest_user u;
	uint64_t to_user, to_device;
	int idx;
	pthread_barrier_t *go;
	int sent; /* messages 0..sent-1 were answered SENT, in that order */
	int rc;   /* the error that stopped it, or SP_OK */
} burst_sender;

/* SEND "s<idx>:<k>" and wait for its SENT, retrying a rate limit with the same msg_id. */
static int
burst_send_one(burst_sender *b, int k)
{
	char text[32];
	uint8_t id[16];
	snprintf(text, sizeof(text), "s%d:%d", b->idx, k);
	itest_msg_id(id);
	for (;;) {
		sp_frame q, item, r;
		sp_frame_init(&q, SP_T_SEND, (uint64_t)k + 1, true);
		sp_frame_set_bin(&q, SP_F_MSG_ID, id, 16);
		sp_frame_set_u64(&q, SP_F_TO_USER, b->to_user);
		sp_frame_init(&item, SP_T_SEND_ITEM, 0, false);
		sp_frame_set_u64(&item, SP_F_DEVICE, b->to_device);
		sp_frame_set_u64(&item, SP_F_ETYPE, 1);
		sp_frame_set_bin(&item, SP_F_CT, text, strlen(text));
		sp_frame_set_recs(&q, SP_F_ITEMS, &item, 1);
		int rc = spc_conn_send(b->u.conn, &q);
		while (rc == SP_OK && (rc = spc_conn_recv(b->u.conn, 15000, &r)) == SP_OK) {
			bool mine = sp_frame_has(&r, SP_F_MSG_ID) &&
				    memcmp(sp_frame_bin(&r, SP_F_MSG_ID).p, id, 16) == 0;
			unsigned type = r.type;
			int code = (int)sp_frame_i64(&r, SP_F_CODE);
			sp_frame_fini(&r);
			if (mine && type == SP_T_SENT)
				return SP_OK;
			if (mine && type == SP_T_ERROR)
				rc = code;
		}
		if (rc != SP_ERATELIMIT)
			return rc;
		usleep(20000);
	}
}

static void *
burst_run(void *arg)
{
	burst_sender *b = arg;
	pthread_barrier_wait(b->go);
	for (int k = 0; k < BURST_MSGS; k++) {
		if ((b->rc = burst_send_one(b, k)))
			return NULL;
		b->sent = k + 1;
	}
	return NULL;
}

/* connsrv-N's counters of APPEND_MULTI requests and of the appends they carried. */
static void
append_counters(int which, uint64_t *requests, uint64_t *items)
{
	char path[200];
	snprintf(path, sizeof(path), "%s/append-metrics", cl.dir);
	ck_assert_int_eq(itest_sh(&cl, "curl -sf http://127.0.0.1:%d/metrics | awk "
				       "'$1==\"sp_connsrv_append_requests_total\"{r=$2} "
				       "$1==\"sp_connsrv_append_items_total\"{i=$2} "
				       "END{if (r==\"\" || i==\"\") exit 1; print r, i}' > %s",
				  cl.base + 80 + 10 * which, path),
			 0);
	FILE *f = fopen(path, "r");
	unsigned long long r = 0, i = 0;
	ck_assert_msg(f && fscanf(f, "%llu %llu", &r, &i) == 2, "cannot read %s", path);
	fclose(f);
	*requests = r;
	*items = i;
}

START_TEST(test_burst_coalesces_appends_and_loses_nothing)
{
	static burst_sender snd[BURST_SENDERS];
	itest_user b;
	new_user(&b, 1);
	online(&b, 1);
	pthread_barrier_t go;
	ck_assert_int_eq(pthread_barrier_init(&go, NULL, BURST_SENDERS + 1), 0);
	for (int i = 0; i < BURST_SENDERS; i++) {
		memset(&snd[i], 0, sizeof(snd[i]));
		new_user(&snd[i].u, 0);
		online(&snd[i].u, 0);
		snd[i].to_user = b.user;
		snd[i].to_device = b.device;
		snd[i].idx = i;
		snd[i].go = &go;
	}
	uint64_t req0, items0, req1, items1;
	append_counters(0, &req0, &items0);
	pthread_t th[BURST_SENDERS];
	for (int i = 0; i < BURST_SENDERS; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, burst_run, &snd[i]), 0);
	pthread_barrier_wait(&go);
	for (int i = 0; i < BURST_SENDERS; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&go);
	append_counters(0, &req1, &items1);
	int total = 0;
	for (int i = 0; i < BURST_SENDERS; i++) {
		ck_assert_msg(snd[i].rc == SP_OK && snd[i].sent == BURST_MSGS, "sender %d: %d sent, then %s",
			      i, snd[i].sent, sp_strerror(snd[i].rc));
		total += snd[i].sent;
	}
	/* Every append of the burst went out in some request, and requests carried several. */
	uint64_t requests = req1 - req0, items = items1 - items0;
	printf("burst: %d messages, %llu appends in %llu requests (%.2f per request)\n", total,
	       (unsigned long long)items, (unsigned long long)requests,
	       requests ? (double)items / (double)requests : 0.0);
	ck_assert_msg(items >= (uint64_t)total, "%llu appends for %d messages", (unsigned long long)items,
		      total);
	ck_assert_msg(requests < items, "no coalescing: %llu requests for %llu appends",
		      (unsigned long long)requests, (unsigned long long)items);

	/* A last message after the burst: every entry stored before it comes before it. */
	ck_assert_int_eq(send_text(&snd[0].u, &b, "end", NULL), SP_OK);
	int next[BURST_SENDERS] = {0};
	uint64_t last_seq = 0;
	for (;;) {
		sp_frame f;
		int rc = itest_wait(&b, SP_T_DELIVER, 15000, &f);
		ck_assert_msg(rc == SP_OK, "waiting for the burst: %s", sp_strerror(rc));
		uint64_t seq = sp_frame_u64(&f, SP_F_SEQ);
		ck_assert_msg(seq > last_seq, "seq %llu after %llu: written twice", (unsigned long long)seq,
			      (unsigned long long)last_seq);
		last_seq = seq;
		sp_bin env = sp_frame_bin(&f, SP_F_ENV);
		char text[32] = "";
		memcpy(text, env.p, env.len < sizeof(text) - 1 ? env.len : sizeof(text) - 1);
		uint64_t from = sp_frame_u64(&f, SP_F_FROM_USER);
		itest_ack(&b, seq);
		sp_frame_fini(&f);
		if (strcmp(text, "end") == 0)
			break;
		int who, k;
		ck_assert_msg(sscanf(text, "s%d:%d", &who, &k) == 2 && who >= 0 && who < BURST_SENDERS,
			      "unexpected message %s", text);
		ck_assert(from == snd[who].u.user);
		/* Exactly once and in the sender's order: the next of that sender, never a repeat. */
		ck_assert_msg(k == next[who], "sender %d: got %d, expected %d", who, k, next[who]);
		next[who]++;
	}
	for (int i = 0; i < BURST_SENDERS; i++) {
		ck_assert_msg(next[i] == snd[i].sent, "sender %d: %d of %d SENT messages delivered", i,
			      next[i], snd[i].sent);
		itest_logout(&snd[i].u);
	}
	itest_logout(&b);
}
END_TEST

/* Sends n messages "<prefix>i" from a to b, reconnecting a to the other connsrv when its
 * connection dies; every message is retried with its msg_id until SENT. */
static void
send_through_faults(itest_user *a, int *which, const itest_user *b, const char *prefix, int n,
		    void (*fault)(int i))
{
	for (int i = 0; i < n; i++) {
		char text[32];
		uint8_t id[16];
		snprintf(text, sizeof(text), "%s%d", prefix, i);
		itest_msg_id(id);
		if (fault)
			fault(i);
		for (int tries = 0;; tries++) {
			ck_assert_int_lt(tries, 50);
			int rc = itest_send(a, b->user, &b->device, 1, id, text, strlen(text));
			if (rc == SP_OK)
				break;
			if (rc == SP_ECLOSED || rc == SP_ETIMEDOUT) {
				*which = 1 - *which;
				while (itest_login(&cl, *which, a) != SP_OK)
					usleep(100000);
			} else {
				usleep(100000);
			}
		}
	}
}

/* Receives messages "<prefix>0..n-1" (in any interleaving with duplicates allowed, since
 * delivery is at-least-once) and checks each arrived. */
static void
expect_all(itest_user *b, const char *prefix, int n)
{
	char *seen = calloc((size_t)n, 1);
	int distinct = 0;
	while (distinct < n) {
		sp_frame f;
		int rc = itest_wait(b, SP_T_DELIVER, 20000, &f);
		ck_assert_msg(rc == SP_OK, "%d of %d arrived: %s", distinct, n, sp_strerror(rc));
		sp_bin env = sp_frame_bin(&f, SP_F_ENV);
		size_t pl = strlen(prefix);
		if (sp_frame_u64(&f, SP_F_ETYPE) < 10 && env.len > pl && memcmp(env.p, prefix, pl) == 0) {
			char num[16] = "";
			size_t nl = env.len - pl < sizeof(num) - 1 ? env.len - pl : sizeof(num) - 1;
			memcpy(num, env.p + pl, nl);
			int k = atoi(num);
			ck_assert(k >= 0 && k < n);
			if (!seen[k]) {
				seen[k] = 1;
				distinct++;
			}
		}
		itest_ack(b, sp_frame_u64(&f, SP_F_SEQ));
		sp_frame_fini(&f);
	}
	free(seen);
}

static void
kill_connsrv0_at_50(int i)
{
	if (i == 50)
		itest_signal(&cl, "connsrv-0", SIGKILL);
}

START_TEST(test_connsrv_sigkill_loses_nothing)
{
	itest_user a, b;
	new_user(&a, 0);
	new_user(&b, 1);
	int which = 0;
	online(&a, 0);
	online(&b, 1);
	send_through_faults(&a, &which, &b, "k", 150, kill_connsrv0_at_50);
	expect_all(&b, "k", 150);
	itest_restart(&cl, "connsrv-0");
	itest_logout(&a);
	itest_logout(&b);
}
END_TEST

static void
kill_redis_at_30(int i)
{
	if (i == 30)
		itest_signal(&cl, "redis", SIGKILL);
	if (i == 90)
		itest_restart(&cl, "redis");
}

START_TEST(test_redis_restart_loses_nothing)
{
	itest_user a, b;
	new_user(&a, 0);
	new_user(&b, 1);
	int which = 0;
	online(&a, 0);
	online(&b, 1);
	send_through_faults(&a, &which, &b, "q", 150, kill_redis_at_30);
	expect_all(&b, "q", 150);
	itest_logout(&a);
	itest_logout(&b);
}
END_TEST

START_TEST(test_sighup_rotates_certificate_without_dropping)
{
	itest_user a;
	new_user(&a, 0);
	online(&a, 0);
	/* A new pair from the same CA, with a subject we can recognise. */
	ck_assert_int_eq(
		itest_sh(&cl,
			 "c=$SEALPOST_DEVCLUSTER/certs && cd $c && "
			 "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=rotated "
			 "-keyout new.key -out new.csr 2>/dev/null && printf 'subjectAltName=IP:127.0.0.1\\n' > e.ext && "
			 "openssl x509 -req -in new.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
			 "-extfile e.ext -out new.pem 2>/dev/null && mv new.key server.key && mv new.pem server.pem"),
		0);
	itest_signal(&cl, "connsrv-0", SIGHUP);
	usleep(300000);
	ck_assert_int_eq(itest_sh(&cl, "timeout 5 openssl s_client -connect 127.0.0.1:%d -CAfile $SEALPOST_CA "
				       "</dev/null 2>/dev/null | grep -q 'subject=CN = rotated'",
				  cl.conn_port[0]),
			 0);
	/* The connection made before the reload still works. */
	sp_frame f;
	sp_frame_init(&f, SP_T_PING, 9, true);
	ck_assert_int_eq(spc_conn_send(a.conn, &f), SP_OK);
	ck_assert_int_eq(itest_wait(&a, SP_T_PONG, 5000, &f), SP_OK);
	sp_frame_fini(&f);
	itest_logout(&a);
}
END_TEST

START_TEST(test_sigterm_drains)
{
	itest_user a, b;
	new_user(&a, 1);
	new_user(&b, 0);
	online(&a, 1);
	online(&b, 0);
	itest_signal(&cl, "connsrv-1", SIGTERM);
	sp_frame f;
	ck_assert_int_eq(itest_wait(&a, SP_T_DRAIN, 5000, &f), SP_OK);
	sp_frame_fini(&f);
	/* Told to go elsewhere, the client does, and its messages flow. */
	ck_assert_int_eq(itest_login(&cl, 0, &a), SP_OK);
	ck_assert_int_eq(send_text(&a, &b, "after-drain-0", NULL), SP_OK);
	expect_messages(&b, "after-drain-", 0, 1);
	itest_restart(&cl, "connsrv-1");
	itest_logout(&a);
	itest_logout(&b);
}
END_TEST

/* Every shard's primary SIGKILLed at once (issue 12): sends are SENT again once the
 * in-sync copies take over (connsrv retries on the new primary), nothing acknowledged is
 * lost, an offline recipient's queue drains from the new primaries, and the dead copies
 * come back as replicas. */
START_TEST(test_inbox_primaries_sigkill_loses_nothing)
{
	itest_user a, b, c;
	pair_online(&a, &b);
	new_user(&c, 0);
	for (int i = 0; i < 5; i++) {
		char text[32];
		snprintf(text, sizeof(text), "before-%d", i);
		ck_assert_int_eq(send_text(&a, &b, text, NULL), SP_OK);
		snprintf(text, sizeof(text), "off-%d", i);
		ck_assert_int_eq(send_text(&a, &c, text, NULL), SP_OK);
	}
	expect_messages(&b, "before-", 0, 5);
	ck_assert_int_eq(itest_sh(&cl,
		"rm -f $SEALPOST_DEVCLUSTER/killed; for s in 0 1 2; do "
		"n=$(ETCDCTL_API=3 etcdctl --endpoints $SEALPOST_ETCD get --print-value-only "
		"/sealpost/$SEALPOST_ETCD_CLUSTER/inbox-$s/leader | jq -r .name) && [ -n \"$n\" ] && "
		"echo $n >>$SEALPOST_DEVCLUSTER/killed && kill -9 $(cat $SEALPOST_DEVCLUSTER/pids/$n.pid) "
		"|| exit 1; done"), 0);
	for (int i = 0; i < 20; i++) {
		char text[32];
		snprintf(text, sizeof(text), "after-%d", i);
		int rc = send_text(&a, &b, text, NULL);
		ck_assert_msg(rc == SP_OK, "send %d after the primaries died: %s", i, sp_strerror(rc));
	}
	expect_messages(&b, "after-", 0, 20);
	ck_assert_int_eq(itest_login(&cl, 1, &c), SP_OK);
	expect_messages(&c, "off-", 0, 5);
	char path[300], name[64];
	snprintf(path, sizeof(path), "%s/killed", cl.dir);
	FILE *f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	while (fscanf(f, "%63s", name) == 1)
		itest_restart(&cl, name);
	fclose(f);
	itest_logout(&a);
	itest_logout(&b);
	itest_logout(&c);
}
END_TEST

static void
up(void)
{
	itest_cluster_up(&cl);
}

static void
down(void)
{
	itest_cluster_down(&cl);
}

int
main(void)
{
	Suite *s = suite_create("e2e");
	TCase *tc = tcase_create("path");
	tcase_add_unchecked_fixture(tc, up, down);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_online_delivery_and_receipts);
	tcase_add_test(tc, test_offline_drain_in_order_with_window);
	tcase_add_test(tc, test_unacked_is_redelivered);
	tcase_add_test(tc, test_spoofing_and_foreign_inbox);
	tcase_add_test(tc, test_mismatched_devices_and_kick);
	tcase_add_test(tc, test_lost_push_is_repaired);
	tcase_add_test(tc, test_malformed_and_slow_clients_hurt_nobody);
	tcase_add_test(tc, test_burst_coalesces_appends_and_loses_nothing);
	tcase_add_test(tc, test_connsrv_sigkill_loses_nothing);
	tcase_add_test(tc, test_redis_restart_loses_nothing);
	tcase_add_test(tc, test_sighup_rotates_certificate_without_dropping);
	tcase_add_test(tc, test_sigterm_drains);
	tcase_add_test(tc, test_inbox_primaries_sigkill_loses_nothing);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
