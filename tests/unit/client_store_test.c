/* The client store: per-conversation ordering (in order, held gap, surfaced after the
 * hold), reporting once, outbox queueing offline, and streaming media encryption. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/cl_internal.h"
#include "sp_error.h"
#include "sp_time.h"
#include "check_run.h"

static char home[64];

static sealpost *
open_home(int hold_ms)
{
	strcpy(home, "/tmp/sp-client-test-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(home));
	sealpost_config cfg = {.home = home, .gap_hold_ms = hold_ms};
	sealpost *sp;
	char err[256];
	ck_assert_int_eq(sealpost_open(&cfg, &sp, err, sizeof(err)), SP_OK);
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

/* Stores an incoming text with conv_seq seq and admits it. */
static void
arrive(sealpost *sp, uint64_t seq)
{
	char sql[256];
	ck_assert_int_eq(cl_begin(sp), SP_OK);
	snprintf(sql, sizeof(sql),
		 "INSERT INTO messages(msg_id, conv, outgoing, from_user, from_device, conv_seq, kind, text, surfaced)"
		 " VALUES(randomblob(16), 'u:7', 0, 7, 1, %llu, 1, 'm%llu', 0)",
		 (unsigned long long)seq, (unsigned long long)seq);
	ck_assert_int_eq(cl_exec(sp, sql), SP_OK);
	ck_assert_int_eq(cl_order_admit(sp, "u:7", 7, 1, seq, sqlite3_last_insert_rowid(sp->db)), SP_OK);
	ck_assert_int_eq(cl_commit(sp), SP_OK);
}

typedef struct seen {
	char text[32][8];
	int n;
} seen;

static void
collect(const sealpost_event *ev, void *arg)
{
	seen *s = arg;
	ck_assert_int_eq(ev->type, SEALPOST_EV_MESSAGE);
	ck_assert_int_lt(s->n, 32);
	snprintf(s->text[s->n++], 8, "%s", ev->text);
}

START_TEST(test_in_order_and_gap_fill)
{
	sealpost *sp = open_home(60000);
	seen s = {0};
	arrive(sp, 1);
	arrive(sp, 3); /* gap: 2 missing */
	arrive(sp, 4);
	ck_assert_int_eq(cl_report_pending(sp, collect, &s), SP_OK);
	ck_assert_int_eq(s.n, 1);
	ck_assert_str_eq(s.text[0], "m1");
	arrive(sp, 2); /* fills the gap: 2, 3, 4 follow in order */
	ck_assert_int_eq(cl_report_pending(sp, collect, &s), SP_OK);
	ck_assert_int_eq(s.n, 4);
	ck_assert_str_eq(s.text[1], "m2");
	ck_assert_str_eq(s.text[2], "m3");
	ck_assert_str_eq(s.text[3], "m4");
	/* Reported once only. */
	ck_assert_int_eq(cl_report_pending(sp, collect, &s), SP_OK);
	ck_assert_int_eq(s.n, 4);
	close_home(sp);
}
END_TEST

START_TEST(test_gap_surfaced_after_hold)
{
	sealpost *sp = open_home(100);
	seen s = {0};
	uint64_t next = 0;
	arrive(sp, 2);
	arrive(sp, 4);
	ck_assert_int_eq(cl_begin(sp), SP_OK);
	ck_assert_int_eq(cl_order_expire(sp, sp_time_ms(), &next), SP_OK);
	ck_assert_int_eq(cl_commit(sp), SP_OK);
	ck_assert_uint_gt(next, 0); /* held, with a deadline */
	ck_assert_int_eq(cl_report_pending(sp, collect, &s), SP_OK);
	ck_assert_int_eq(s.n, 0);
	ck_assert_int_eq(cl_begin(sp), SP_OK);
	ck_assert_int_eq(cl_order_expire(sp, next, &next), SP_OK);
	ck_assert_int_eq(cl_commit(sp), SP_OK);
	ck_assert_uint_eq(next, 0);
	ck_assert_int_eq(cl_report_pending(sp, collect, &s), SP_OK);
	ck_assert_int_eq(s.n, 2);
	ck_assert_str_eq(s.text[0], "m2");
	ck_assert_str_eq(s.text[1], "m4");
	/* The sequence continues after what was surfaced; a late one still shows. */
	arrive(sp, 5);
	arrive(sp, 3);
	ck_assert_int_eq(cl_report_pending(sp, collect, &s), SP_OK);
	ck_assert_int_eq(s.n, 4);
	ck_assert_str_eq(s.text[2], "m5");
	ck_assert_str_eq(s.text[3], "m3");
	close_home(sp);
}
END_TEST

START_TEST(test_outbox_keeps_message_offline)
{
	sealpost *sp = open_home(0);
	/* A fake account is enough: nothing is sent without a server. */
	ck_assert_int_eq(cl_meta_set_u64(sp, "user", 11), SP_OK);
	sp->user = 11;
	sp->device = 1;
	ck_assert_int_eq(sig_store_generate(&sp->sig, 5, 1, 1), SP_OK);
	ck_assert_int_eq(sealpost_contact_add(sp, "+15551234", 22), SP_OK);
	uint8_t id1[16], id2[16];
	ck_assert_int_eq(cl_outbox_add_text(sp, "+15551234", "a", id1), SP_OK);
	ck_assert_int_eq(cl_outbox_add_text(sp, "+15551234", "b", id2), SP_OK);
	/* An unknown phone needs a lookup on the server: with no server configured it fails. */
	ck_assert_int_ne(cl_outbox_add_text(sp, "+15550000", "c", id2), SP_OK);
	sqlite3_stmt *st;
	ck_assert_int_eq(cl_prep(sp, &st, "SELECT COUNT(*), MIN(state), MAX(state) FROM outbox"), SP_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int(st, 0), 2);
	ck_assert_int_eq(sqlite3_column_int(st, 2), 0);
	sqlite3_finalize(st);
	/* Sequence numbers per conversation, in queue order. */
	ck_assert_int_eq(cl_prep(sp, &st, "SELECT conv_seq, text FROM messages WHERE outgoing = 1 ORDER BY id"), SP_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int(st, 0), 1);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int(st, 0), 2);
	sqlite3_finalize(st);
	/* Without a server the flush fails as a network/usage problem and keeps both. */
	ck_assert_int_ne(cl_outbox_flush(sp, NULL, NULL), SP_OK);
	ck_assert_int_eq(cl_prep(sp, &st, "SELECT COUNT(*) FROM outbox WHERE state = 0"), SP_OK);
	ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
	ck_assert_int_eq(sqlite3_column_int(st, 0), 2);
	sqlite3_finalize(st);
	close_home(sp);
}
END_TEST

static void
write_file(const char *path, size_t n)
{
	FILE *f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	for (size_t i = 0; i < n; i++)
		fputc((int)((i * 131) ^ (i >> 9)) & 0xff, f);
	fclose(f);
}

static int
same_files(const char *a, const char *b)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "cmp -s %s %s", a, b);
	return system(cmd) == 0;
}

START_TEST(test_media_stream_round_trip_and_tamper)
{
	sealpost *sp = open_home(0);
	char in[128], enc[128], out[128];
	snprintf(in, sizeof(in), "%s/in", home);
	snprintf(enc, sizeof(enc), "%s/enc", home);
	snprintf(out, sizeof(out), "%s/out", home);
	size_t sizes[] = {0, 1, 65535, 65536, 65537, 3 * 65536 + 17};
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		cl_media m;
		memset(&m, 0, sizeof(m));
		write_file(in, sizes[k]);
		ck_assert_int_eq(cl_media_encrypt_file(in, enc, &m), SP_OK);
		ck_assert_uint_eq(m.plain_size, sizes[k]);
		ck_assert_uint_gt(m.size, sizes[k]);
		ck_assert_int_eq(cl_media_decrypt_file(enc, out, &m), SP_OK);
		ck_assert(same_files(in, out));
		/* A wrong key with the right digest is refused by the AEAD. */
		cl_media bad = m;
		bad.key[0] ^= 1;
		ck_assert_int_eq(cl_media_decrypt_file(enc, out, &bad), SP_ECRYPTO);
		ck_assert_int_ne(access(out, F_OK), 0);
	}
	/* A flipped ciphertext byte fails the digest check before any decryption. */
	cl_media m;
	write_file(in, 100000);
	ck_assert_int_eq(cl_media_encrypt_file(in, enc, &m), SP_OK);
	FILE *f = fopen(enc, "r+b");
	fseek(f, 5000, SEEK_SET);
	int c = fgetc(f);
	fseek(f, 5000, SEEK_SET);
	fputc(c ^ 0x40, f);
	fclose(f);
	ck_assert_int_eq(cl_media_decrypt_file(enc, out, &m), SP_EDIGEST);
	/* Truncated to a piece boundary: digest and length refuse it too. */
	ck_assert_int_eq(cl_media_encrypt_file(in, enc, &m), SP_OK);
	ck_assert_int_eq(truncate(enc, 24 + 65536 + 17), 0);
	ck_assert_int_eq(cl_media_decrypt_file(enc, out, &m), SP_EDIGEST);
	ck_assert_int_eq(cl_media_encrypt_file("/nonexistent/x", enc, &m), SP_EIO);
	close_home(sp);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("client_store");
	TCase *tc = tcase_create("store");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_in_order_and_gap_fill);
	tcase_add_test(tc, test_gap_surfaced_after_hold);
	tcase_add_test(tc, test_outbox_keeps_message_offline);
	tcase_add_test(tc, test_media_stream_round_trip_and_tamper);
	suite_add_tcase(s, tc);
	return check_run(s);
}
