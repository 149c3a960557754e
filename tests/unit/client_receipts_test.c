/*
 * Receipts at the sender's client: a RECEIPT_UPTO marks read only messages this device
 * holds as sent to the reader in that conversation (a forged seq of 2^63 or 2^64-1 marks
 * nothing queued, nothing newer, nothing in another conversation, nothing for a user who
 * was never a recipient); unpaired arrays and the wrong kind change nothing; the codec
 * bounds READ_UPTO; and the `expired` status (sent, no device got it, past exp_after on
 * the server's clock) per device and overall.
 */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/cl_internal.h"
#include "client/signal/sig_curve.h"
#include "client/signal/sig_state.h"
#include "sp_error.h"
#include "sp_proto.h"
#include "sp_time.h"
#include "check_run.h"

enum { ME = 1, MYDEV = 11, MYOTHER = 12, BOB = 2, BOB1 = 21, BOB2 = 22, CAROL = 3, EVE = 4 };

static char home[64];

/* A home with an account (user ME, device MYDEV) but no connection. */
static sealpost *
open_account(void)
{
	strcpy(home, "/tmp/sp-receipts-test-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(home));
	sealpost_config cfg = {.home = home};
	sealpost *sp;
	char err[256];
	ck_assert_int_eq(sealpost_open(&cfg, &sp, err, sizeof(err)), SP_OK);
	sig_keypair kp;
	ck_assert_int_eq(sig_keypair_generate(&kp), SP_OK);
	ck_assert_int_eq(sig_store_new(&sp->sig, &kp, 1, MYDEV), SP_OK);
	sig_keypair_wipe(&kp);
	sp->user = ME;
	sp->device = MYDEV;
	return sp;
}

static void
close_home(sealpost *sp)
{
	char cmd[128];
	sealpost_close(sp);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", home);
	ck_assert_int_eq(system(cmd), 0);
}

static void
sql(sealpost *sp, const char *fmt, ...)
{
	char q[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	ck_assert_int_eq(cl_exec(sp, q), SP_OK);
}

static int64_t
sql_int(sealpost *sp, const char *q)
{
	sqlite3_stmt *st;
	ck_assert_int_eq(cl_prep(sp, &st, q), SP_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	int64_t v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* Message id n: 15 zero bytes then n (hex: 30 zeros then two digits). */
#define MID(n) "X'000000000000000000000000000000" #n "'"

/* One of our own messages to `conv` with seq; state 1 (sent, server_ts ts, recipients
 * listed as "(user, device)" rows) or 0 (queued). */
static void
own(sealpost *sp, const char *mid, const char *conv, int seq, int state, uint64_t ts, const char *rcpts)
{
	sql(sp, "INSERT INTO outbox(msg_id, conv, env, state, server_ts) VALUES(%s, '%s', X'00', %d, %llu)", mid, conv,
	    state, (unsigned long long)ts);
	sql(sp, "INSERT INTO messages(msg_id, conv, outgoing, from_user, from_device, conv_seq, server_ts, kind, text)"
		" VALUES(%s, '%s', 1, %d, %d, %d, %llu, 1, 'm')",
	    mid, conv, ME, MYDEV, seq, (unsigned long long)ts);
	if (rcpts)
		sql(sp, "INSERT INTO recipients(msg_id, user, device, status) SELECT %s, column1, column2, 1 FROM"
			" (VALUES %s)",
		    mid, rcpts);
}

/* A copy of what our other device sent (it came through our inbox). */
static void
copy(sealpost *sp, const char *mid, const char *conv, int seq)
{
	sql(sp, "INSERT INTO messages(msg_id, conv, outgoing, from_user, from_device, conv_seq, server_ts, kind, text)"
		" VALUES(%s, '%s', 1, %d, %d, %d, 1000, 1, 'c')",
	    mid, conv, ME, MYOTHER, seq);
}

/* Delivers a RECEIPT_UPTO from (fu, fd) for n (device, seq) pairs through cl_recv_process.
 * kind: the receipt's kind; devs/seqs may differ in count (nd, ns). */
static void
deliver_upto(sealpost *sp, uint64_t inbox_seq, unsigned kind, uint64_t fu, uint64_t fd, uint64_t group,
	     const uint64_t *devs, uint32_t nd, const uint64_t *seqs, uint32_t ns)
{
	sp_frame r;
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	sp_frame_init(&r, SP_T_RECEIPT_UPTO, 0, false);
	sp_frame_set_u64(&r, SP_F_KIND, kind);
	sp_frame_set_u64(&r, SP_F_FROM_USER, fu);
	sp_frame_set_u64(&r, SP_F_FROM_DEVICE, fd);
	if (group)
		sp_frame_set_u64(&r, SP_F_GROUP, group);
	sp_frame_set_u64s(&r, SP_F_RD_DEVICES, devs, nd);
	sp_frame_set_u64s(&r, SP_F_RD_SEQS, seqs, ns);
	ck_assert_int_eq(sp_frame_pack(&r, &sb), SP_OK);
	cl_deliver d = {.seq = inbox_seq, .from_user = fu, .from_device = 0, .server_ts = sp_time_ms(),
			.etype = SP_ETYPE_RECEIPT_READ, .env = (uint8_t *)sb.data, .env_len = sb.size};
	memset(d.msg_id, (int)inbox_seq, 16);
	/* Stored and committed first; the ACK after it has no connection here. */
	ck_assert_int_eq(cl_recv_process(sp, &d, NULL, NULL), SP_ECLOSED);
	msgpack_sbuffer_destroy(&sb);
}

static int64_t
reads(sealpost *sp)
{
	return sql_int(sp, "SELECT COUNT(*) FROM recipients WHERE status = 3");
}

static int64_t
read_by(sealpost *sp, const char *mid, int user, int device)
{
	char q[256];
	snprintf(q, sizeof(q), "SELECT COUNT(*) FROM recipients WHERE msg_id = %s AND user = %d AND device = %d"
			       " AND status = 3", mid, user, device);
	return sql_int(sp, q);
}

START_TEST(test_upto_marks_only_what_was_sent_to_the_reader)
{
	sealpost *sp = open_account();
	const char *bob_rc = "(2, 21), (2, 22)";
	own(sp, MID(01), "u:2", 1, 1, 1000, bob_rc);
	own(sp, MID(02), "u:2", 2, 1, 1001, bob_rc);
	own(sp, MID(03), "u:2", 3, 1, 1002, bob_rc);
	own(sp, MID(04), "u:2", 4, 0, 0, NULL); /* queued: never sent */
	copy(sp, MID(05), "u:2", 1);
	copy(sp, MID(06), "u:2", 2);
	own(sp, MID(07), "u:3", 1, 1, 1003, "(3, 31)"); /* another conversation */
	own(sp, MID(08), "g:9", 1, 1, 1004, "(3, 31)"); /* a group bob was never sent to */
	copy(sp, MID(09), "g:9", 1);

	/* Bob read up to 2 of ours: 1 and 2 only, for his device 21. */
	uint64_t devs[] = {MYDEV, MYOTHER}, two[] = {2, 0};
	deliver_upto(sp, 1, SP_ETYPE_RECEIPT_READ, BOB, BOB1, 0, devs, 1, two, 1);
	ck_assert_int_eq(reads(sp), 2);
	ck_assert_int_eq(read_by(sp, MID(01), BOB, BOB1), 1);
	ck_assert_int_eq(read_by(sp, MID(02), BOB, BOB1), 1);
	ck_assert_int_eq(read_by(sp, MID(02), BOB, BOB2), 0);

	/* A forged huge seq: every sent message of that device to bob, the copies up to
	 * their seq -- and nothing queued, in another conversation or group. */
	uint64_t huge[] = {UINT64_MAX, 1};
	deliver_upto(sp, 2, SP_ETYPE_RECEIPT_READ, BOB, BOB1, 0, devs, 2, huge, 2);
	ck_assert_int_eq(read_by(sp, MID(03), BOB, BOB1), 1);
	ck_assert_int_eq(read_by(sp, MID(05), BOB, BOB1), 1);
	ck_assert_int_eq(read_by(sp, MID(04), BOB, BOB1), 0);
	ck_assert_int_eq(read_by(sp, MID(06), BOB, BOB1), 0);
	ck_assert_int_eq(reads(sp), 4);
	uint64_t big[] = {1ULL << 63, 1ULL << 63};
	deliver_upto(sp, 3, SP_ETYPE_RECEIPT_READ, BOB, BOB1, 9, devs, 2, big, 2);
	ck_assert_int_eq(reads(sp), 4); /* g:9: not a member, not a recipient */

	/* Someone we never sent to (their 1:1 conversation with us is empty). */
	deliver_upto(sp, 4, SP_ETYPE_RECEIPT_READ, EVE, 41, 0, devs, 2, big, 2);
	ck_assert_int_eq(reads(sp), 4);
	/* Unpaired arrays, and a DELIVERED kind: nothing. */
	deliver_upto(sp, 5, SP_ETYPE_RECEIPT_READ, BOB, BOB2, 0, devs, 2, big, 1);
	deliver_upto(sp, 6, SP_ETYPE_RECEIPT_DELIVERED, BOB, BOB2, 0, devs, 2, big, 2);
	ck_assert_int_eq(reads(sp), 4);
	/* Each receipt was recorded (a redelivery is dropped) whatever it held. */
	ck_assert_int_eq(sql_int(sp, "SELECT COUNT(*) FROM dedup WHERE from_device = 0"), 6);
	ck_assert_uint_eq(cl_meta_u64(sp, "last_seq"), 6);

	/* Group: a copy counts once carol is a member; our own needs her among its recipients. */
	sql(sp, "INSERT INTO group_members(gid, user) VALUES(9, 3)");
	deliver_upto(sp, 7, SP_ETYPE_RECEIPT_READ, CAROL, 31, 9, devs, 2, big, 2);
	ck_assert_int_eq(read_by(sp, MID(08), CAROL, 31), 1);
	ck_assert_int_eq(read_by(sp, MID(09), CAROL, 31), 1);
	ck_assert_int_eq(read_by(sp, MID(07), CAROL, 31), 0);
	ck_assert_int_eq(reads(sp), 6);
	close_home(sp);
}
END_TEST

/* However many messages: one receipt marks 2000 (the id-list READ held 1024). */
START_TEST(test_upto_one_receipt_many_messages)
{
	sealpost *sp = open_account();
	ck_assert_int_eq(cl_begin(sp), SP_OK);
	for (int i = 1; i <= 2000; i++) {
		char mid[40];
		snprintf(mid, sizeof(mid), "X'%032x'", 0x1000 + i);
		own(sp, mid, "u:2", i, 1, 1000 + (uint64_t)i, "(2, 21)");
	}
	ck_assert_int_eq(cl_commit(sp), SP_OK);
	uint64_t devs[] = {MYDEV}, upto[] = {1999};
	deliver_upto(sp, 1, SP_ETYPE_RECEIPT_READ, BOB, BOB1, 0, devs, 1, upto, 1);
	ck_assert_int_eq(reads(sp), 1999);
	ck_assert_int_eq(sql_int(sp, "SELECT COUNT(*) FROM recipients r JOIN messages m ON m.msg_id = r.msg_id"
				     " WHERE r.status = 1 AND m.conv_seq = 2000"), 1);
	close_home(sp);
}
END_TEST

/* READ_UPTO's arrays are bounded by the codec (64 pairs); the pairing is connsrv's. */
START_TEST(test_read_upto_codec_bounds)
{
	uint64_t v[65] = {0};
	sp_frame q, out;
	msgpack_sbuffer sb;
	for (int n = 64; n <= 65; n++) {
		msgpack_sbuffer_init(&sb);
		sp_frame_init(&q, SP_T_READ_UPTO, 1, true);
		sp_frame_set_u64(&q, SP_F_TO_USER, 5);
		sp_frame_set_u64s(&q, SP_F_RD_DEVICES, v, (uint32_t)n);
		sp_frame_set_u64s(&q, SP_F_RD_SEQS, v, 1);
		int rc = sp_frame_pack(&q, &sb);
		if (rc == SP_OK) {
			rc = sp_frame_decode((const uint8_t *)sb.data, sb.size, &out);
			if (rc == SP_OK)
				sp_frame_fini(&out);
		}
		if (n == 64)
			ck_assert_int_eq(rc, SP_OK);
		else
			ck_assert_int_ne(rc, SP_OK);
		msgpack_sbuffer_destroy(&sb);
	}
	/* A READ_UPTO without its seqs is refused by the decoder. */
	msgpack_sbuffer_init(&sb);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 3);
	msgpack_pack_str_with_body(&pk, "t", 1);
	msgpack_pack_uint64(&pk, SP_T_READ_UPTO);
	msgpack_pack_str_with_body(&pk, "to_user", 7);
	msgpack_pack_uint64(&pk, 5);
	msgpack_pack_str_with_body(&pk, "rd_devices", 10);
	msgpack_pack_array(&pk, 1);
	msgpack_pack_uint64(&pk, 11);
	ck_assert_int_eq(sp_frame_decode((const uint8_t *)sb.data, sb.size, &out), SP_EMISSING);
	msgpack_sbuffer_destroy(&sb);
}
END_TEST

static const char *
status(sealpost *sp, const char *hex, sealpost_status **st)
{
	ck_assert_int_eq(sealpost_status_get(sp, hex, 1, st), SP_OK);
	return (*st)->status;
}

START_TEST(test_expired_status)
{
	sealpost *sp = open_account();
	uint64_t now = sp_time_ms(), old = now - 60000;
	own(sp, MID(01), "u:2", 1, 1, old, "(2, 21), (2, 22), (1, 12)");
	own(sp, MID(02), "u:2", 2, 1, old, "(2, 21), (2, 22)");
	sql(sp, "UPDATE recipients SET status = 2 WHERE msg_id = " MID(02) " AND device = 22");
	own(sp, MID(03), "g:9", 1, 1, old, "(2, 21), (3, 31)");
	sql(sp, "UPDATE recipients SET status = 2 WHERE msg_id = " MID(03) " AND device = 31");
	own(sp, MID(04), "u:2", 3, 1, now, "(2, 21)");
	const char *m1 = "00000000000000000000000000000001", *m2 = "00000000000000000000000000000002";
	const char *m3 = "00000000000000000000000000000003", *m4 = "00000000000000000000000000000004";
	sealpost_status *st;

	/* No exp_after from the server yet: nothing expires. */
	ck_assert_str_eq(status(sp, m1, &st), "sent");
	sealpost_status_free(st);

	/* The server said 30 s, and its clock runs 10 s behind ours. */
	cl_expiry_learn(sp, now - 10000, 30000);
	ck_assert_str_eq(status(sp, m1, &st), "expired");
	ck_assert_uint_eq(st->n_devices, 3);
	for (size_t i = 0; i < st->n_devices; i++)
		ck_assert_str_eq(st->devices[i].status, "expired");
	sealpost_status_free(st);
	/* One of bob's devices got it: delivered; the other device shows expired. */
	ck_assert_str_eq(status(sp, m2, &st), "delivered");
	ck_assert_str_eq(st->devices[0].status, "expired");
	ck_assert_str_eq(st->devices[1].status, "delivered");
	sealpost_status_free(st);
	/* A group message one member got: sent overall, expired for the one who did not. */
	ck_assert_str_eq(status(sp, m3, &st), "sent");
	ck_assert_str_eq(st->devices[0].status, "expired");
	sealpost_status_free(st);
	/* Just sent: not yet. */
	ck_assert_str_eq(status(sp, m4, &st), "sent");
	sealpost_status_free(st);
	/* A server clock 40 s behind ours: m1 (60 s old here, 20 s there) is not expired yet. */
	cl_expiry_learn(sp, sp_time_ms() - 40000, 30000);
	ck_assert_str_eq(status(sp, m1, &st), "sent");
	sealpost_status_free(st);
	close_home(sp);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("client_receipts");
	TCase *tc = tcase_create("receipts");
	tcase_add_test(tc, test_upto_marks_only_what_was_sent_to_the_reader);
	tcase_add_test(tc, test_upto_one_receipt_many_messages);
	tcase_add_test(tc, test_read_upto_codec_bounds);
	tcase_add_test(tc, test_expired_status);
	suite_add_tcase(s, tc);
	return check_run(s);
}
