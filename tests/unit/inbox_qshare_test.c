/* Unit tests of the per-sender share of a device's queue (inboxsrv/qindex.c sender counts,
 * the check in store_append.c) through append, ACK, purge, TTL sweep, undo and rebuild; and
 * of the upload TTL of unfinished media blobs (blob.c). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "inboxsrv/internal.h"
#include "inboxsrv/qindex.h"
#include "inboxsrv/store.h"
#include "sp_error.h"
#include "tests/unit/inbox_fixture.h"
#include "check_run.h"

#define TTL_MS 10000
#define MEDIA_TTL_MS 100000
#define UPLOAD_TTL_MS 5000
#define CAP 8 /* entries: a 25% share is 2 */

static char dir[64];
static inbox_store *st;

static void
open_store(void)
{
	inbox_store_config cfg = {
		.dir = dir,
		.map_size = 64u << 20,
		.max_queue_entries = CAP,
		.max_queue_bytes = 1 << 20,
		.queue_share_pct = 25,
		.msg_ttl_ms = TTL_MS,
		.media_ttl_ms = MEDIA_TTL_MS,
		.upload_ttl_ms = UPLOAD_TTL_MS,
		.max_blob_size = 1u << 20,
		.max_readers = 16,
	};
	ck_assert_int_eq(inbox_store_open(&st, &cfg), SP_OK);
}

static void
setup(void)
{
	fixture_tmpdir(dir, "inbox_qshare_test");
	open_store();
}

static void
teardown(void)
{
	fixture_store_drop(&st, dir);
}

static uint64_t msg_counter;

/* A 1:1 append from user `from` to `device`; returns the op's result. */
static int
append(uint64_t device, uint64_t from, uint64_t now)
{
	inbox_target t = { .device = device };
	inbox_op op = { .kind = INBOX_OP_APPEND };
	uint64_t n = ++msg_counter;
	memcpy(op.append.msg_id, &n, 8);
	op.append.from_user = from;
	op.append.from_device = from * 10;
	op.append.server_ts = now;
	op.append.etype = 1;
	op.append.body = (const uint8_t *)"envelope";
	op.append.body_len = 8;
	op.append.targets = &t;
	op.append.ntargets = 1;
	return fixture_apply1(st, &op, now);
}

static void
ack_upto(uint64_t device, uint64_t upto)
{
	inbox_op op = { .kind = INBOX_OP_ACK };
	op.ack.device = device;
	op.ack.upto_seq = upto;
	ck_assert_int_eq(fixture_apply1(st, &op, 1), SP_OK);
	inbox_op_fini(&op);
}

START_TEST(qindex_counts_follow_add_remove_undo)
{
	inbox_qindex *q = inbox_qindex_new();
	uint64_t n, b;
	ck_assert_ptr_nonnull(q);
	ck_assert_int_eq(inbox_qindex_load_entry(q, 1, 7, 1, 100, 10), SP_OK);
	ck_assert_int_eq(inbox_qindex_load_entry(q, 1, 8, 2, 101, 5), SP_OK);
	inbox_qindex_sender(q, 1, 7, &n, &b);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(b, 10);

	size_t mark = inbox_qindex_mark(q);
	ck_assert_int_eq(inbox_qindex_add(q, 1, 7, 3, 102, 4), SP_OK);
	ck_assert_int_eq(inbox_qindex_add(q, 1, 9, 4, 103, 4), SP_OK);
	ck_assert_int_eq(inbox_qindex_remove(q, 1, 8, 2, 5, true), SP_OK);
	/* A sender with nothing counted in the queue: index and log disagree. */
	ck_assert_int_eq(inbox_qindex_remove(q, 1, 5, 1, 10, true), SP_ESTORE);
	inbox_qindex_sender(q, 1, 7, &n, &b);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(b, 14);
	inbox_qindex_sender(q, 1, 8, &n, &b);
	ck_assert_uint_eq(n, 0);
	inbox_qindex_rollback(q, mark);
	inbox_qindex_sender(q, 1, 7, &n, &b);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(b, 10);
	inbox_qindex_sender(q, 1, 8, &n, &b);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(b, 5);
	inbox_qindex_sender(q, 1, 9, &n, &b);
	ck_assert_uint_eq(n, 0);

	ck_assert_int_eq(inbox_qindex_remove(q, 1, 8, 2, 5, true), SP_OK);
	ck_assert_int_eq(inbox_qindex_add(q, 1, 8, 3, 104, 6), SP_OK);
	inbox_qindex_publish(q);
	inbox_qindex_sender(q, 1, 8, &n, &b);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(b, 6);
	ck_assert_int_eq(inbox_qindex_remove(q, 1, 8, 3, 6, true), SP_OK);
	inbox_qindex_publish(q); /* sender 8's record freed: nothing of it is left */
	inbox_qindex_sender(q, 1, 8, &n, &b);
	ck_assert_uint_eq(n, 0);
	ck_assert_uint_eq(b, 0);
	inbox_qindex_free(q);
}
END_TEST

START_TEST(share_refuses_one_sender_not_others)
{
	ck_assert_int_eq(append(1, 7, 100), SP_OK);
	ck_assert_int_eq(append(1, 7, 100), SP_OK);
	ck_assert_int_eq(append(1, 7, 100), SP_ELIMIT);
	ck_assert_int_eq(append(1, 8, 100), SP_OK);
	ck_assert_int_eq(append(2, 7, 100), SP_OK); /* another device: its own share */
	/* The ACK of the first entry (7's) gives 7 room for one more. */
	ack_upto(1, 1);
	ck_assert_int_eq(append(1, 7, 100), SP_OK);
	ck_assert_int_eq(append(1, 7, 100), SP_ELIMIT);
}
END_TEST

START_TEST(share_shared_append_refuses_per_target)
{
	ck_assert_int_eq(append(1, 7, 100), SP_OK);
	ck_assert_int_eq(append(1, 7, 100), SP_OK);
	inbox_target t[2] = { { .device = 1 }, { .device = 2 } };
	inbox_op op = { .kind = INBOX_OP_APPEND };
	memset(op.append.msg_id, 0xee, 16);
	op.append.from_user = 7;
	op.append.from_device = 70;
	op.append.etype = 1;
	op.append.body = (const uint8_t *)"body";
	op.append.body_len = 4;
	op.append.shared = true;
	op.append.targets = t;
	op.append.ntargets = 2;
	ck_assert_int_eq(fixture_apply1(st, &op, 100), SP_OK);
	ck_assert_int_eq(t[0].rc, SP_ELIMIT);
	ck_assert_uint_eq(t[0].seq, 0);
	ck_assert_int_eq(t[1].rc, SP_OK);
}
END_TEST

START_TEST(share_after_purge_sweep_and_rebuild)
{
	ck_assert_int_eq(append(1, 7, 100), SP_OK);
	ck_assert_int_eq(append(1, 7, 100), SP_OK);
	ck_assert_int_eq(append(3, 7, 100), SP_OK);
	ck_assert_int_eq(append(3, 7, 100), SP_OK);
	/* Rebuilt from the log at open: 7 still holds its share of both queues. */
	inbox_store_close(st);
	open_store();
	ck_assert_int_eq(append(1, 7, 200), SP_ELIMIT);
	ck_assert_int_eq(append(3, 7, 200), SP_ELIMIT);
	ck_assert_int_eq(append(1, 8, 200), SP_OK);

	inbox_op p = { .kind = INBOX_OP_PURGE };
	p.purge.device = 1;
	ck_assert_int_eq(fixture_apply1(st, &p, 300), SP_OK);
	ck_assert_int_eq(append(1, 7, 300), SP_OK);

	/* The TTL sweep takes 7's entries of device 3 (stored at 100) off the queue. */
	inbox_op sw = { .kind = INBOX_OP_SWEEP };
	sw.sweep.limit = 100;
	ck_assert_int_eq(fixture_apply1(st, &sw, 100 + TTL_MS + 1), SP_OK);
	ck_assert_uint_ge(sw.sweep.expired, 2);
	ck_assert_int_eq(append(3, 7, 100 + TTL_MS + 2), SP_OK);
	ck_assert_int_eq(append(3, 7, 100 + TTL_MS + 2), SP_OK);
	ck_assert_int_eq(append(3, 7, 100 + TTL_MS + 2), SP_ELIMIT);
}
END_TEST

/* A failed batch leaves no count behind: the writer undoes the failing op's changes. */
START_TEST(share_undone_with_its_txn)
{
	MDB_txn *txn;
	ck_assert_int_eq(inbox_store_txn_begin(st, NULL, &txn), SP_OK);
	inbox_target t = { .device = 1 };
	inbox_op op = { .kind = INBOX_OP_APPEND };
	memset(op.append.msg_id, 0x11, 16);
	op.append.from_user = 7;
	op.append.from_device = 70;
	op.append.etype = 1;
	op.append.body = (const uint8_t *)"x";
	op.append.body_len = 1;
	op.append.targets = &t;
	op.append.ntargets = 1;
	ck_assert_int_eq(inbox_store_apply(st, txn, &op, 100), SP_OK);
	t = (inbox_target) { .device = 1 };
	op.lsn = 0; /* the writer assigns it */
	memset(op.append.msg_id, 0x12, 16);
	ck_assert_int_eq(inbox_store_apply(st, txn, &op, 100), SP_OK);
	inbox_store_txn_abort(st, txn);
	ck_assert_int_eq(append(1, 7, 100), SP_OK);
	ck_assert_int_eq(append(1, 7, 100), SP_OK);
	ck_assert_int_eq(append(1, 7, 100), SP_ELIMIT);
}
END_TEST

static int
blob_put(const uint8_t *id, const uint8_t *b, uint32_t len, uint64_t now)
{
	inbox_op op = { .kind = INBOX_OP_BLOB_PUT };
	memcpy(op.blob_put.blob_id, id, 16);
	op.blob_put.offset = 0;
	op.blob_put.bytes = b;
	op.blob_put.len = len;
	return fixture_apply1(st, &op, now);
}

static uint64_t
sweep_blobs(uint64_t now)
{
	inbox_op sw = { .kind = INBOX_OP_SWEEP };
	sw.sweep.limit = 100;
	ck_assert_int_eq(fixture_apply1(st, &sw, now), SP_OK);
	return sw.sweep.blobs;
}

START_TEST(unfinished_upload_expires_at_upload_ttl)
{
	uint8_t a[16] = { 1 }, b[16] = { 2 }, data[100], sha[32];
	uint64_t dev = 5, t0 = 1000000000; /* ms: a clock far above the TTLs */
	MDB_txn *txn;
	inbox_blob_info info;
	memset(data, 7, sizeof(data));
	crypto_hash_sha256(sha, data, sizeof(data));
	ck_assert_int_eq(blob_put(a, data, 100, t0), SP_OK); /* left unfinished */
	ck_assert_int_eq(blob_put(b, data, 100, t0), SP_OK);
	inbox_op done = { .kind = INBOX_OP_BLOB_DONE };
	memcpy(done.blob_done.blob_id, b, 16);
	done.blob_done.size = 100;
	memcpy(done.blob_done.sha256, sha, 32);
	done.blob_done.devices = &dev;
	done.blob_done.ndevices = 1;
	ck_assert_int_eq(fixture_apply1(st, &done, t0 + 500), SP_OK);

	ck_assert_uint_eq(sweep_blobs(t0 + UPLOAD_TTL_MS - 1), 0);
	ck_assert_uint_eq(sweep_blobs(t0 + UPLOAD_TTL_MS + 1), 1);
	ck_assert_int_eq(inbox_store_read_begin(st, &txn), SP_OK);
	ck_assert_int_eq(inbox_store_blob_info(st, txn, a, &info), SP_ENOTFOUND);
	ck_assert_int_eq(inbox_store_blob_info(st, txn, b, &info), SP_OK);
	inbox_store_read_end(txn);
	/* The complete one lives for the media TTL. */
	ck_assert_uint_eq(sweep_blobs(t0 + MEDIA_TTL_MS - 1), 0);
	ck_assert_uint_eq(sweep_blobs(t0 + MEDIA_TTL_MS + 1), 1);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("inbox_qshare");
	TCase *tc = tcase_create("core");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, qindex_counts_follow_add_remove_undo);
	tcase_add_test(tc, share_refuses_one_sender_not_others);
	tcase_add_test(tc, share_shared_append_refuses_per_target);
	tcase_add_test(tc, share_after_purge_sweep_and_rebuild);
	tcase_add_test(tc, share_undone_with_its_txn);
	tcase_add_test(tc, unfinished_upload_expires_at_upload_ttl);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
