/* Unit tests of the inbox store (inboxsrv/store.c, blob.c), driven directly with an
 * explicit clock: ordering, dedup, ACK, refcounted bodies, caps, purge, TTL, blobs, LSN. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "inboxsrv/internal.h"
#include "inboxsrv/store.h"
#include "sp_error.h"
#include "tests/unit/inbox_fixture.h"
#include "check_run.h"

#define TTL_MS 10000
#define MEDIA_TTL_MS 5000

static char dir[64];
static inbox_store *st;

static uint64_t dedup_max; /* for the next open_store */

static void
open_store(uint64_t max_entries, uint64_t max_bytes)
{
	inbox_store_config cfg = {
		.dedup_max = dedup_max,
		.dir = dir,
		.map_size = 64u << 20,
		.max_queue_entries = max_entries,
		.max_queue_bytes = max_bytes,
		.msg_ttl_ms = TTL_MS,
		.media_ttl_ms = MEDIA_TTL_MS,
		.max_blob_size = 1u << 20,
		.max_readers = 16,
	};
	ck_assert_int_eq(inbox_store_open(&st, &cfg), SP_OK);
}

static void
setup(void)
{
	fixture_tmpdir(dir, "inbox_store_test");
	dedup_max = 0;
	open_store(100, 1 << 20);
}

static void
teardown(void)
{
	fixture_store_drop(&st, dir);
}

static void
mid(uint8_t out[16], uint64_t n)
{
	memset(out, 0, 16);
	memcpy(out, &n, 8);
}

static int
append(uint64_t device, uint64_t from_device, uint64_t msg, const char *env, uint64_t now,
    uint64_t *seq, bool *dup)
{
	inbox_target t = { .device = device };
	inbox_op op = { .kind = INBOX_OP_APPEND };
	mid(op.append.msg_id, msg);
	op.append.from_user = 1000 + from_device;
	op.append.from_device = from_device;
	op.append.server_ts = now;
	op.append.etype = 1;
	op.append.body = (const uint8_t *)env;
	op.append.body_len = (uint32_t)strlen(env);
	op.append.targets = &t;
	op.append.ntargets = 1;
	int rc = fixture_apply1(st, &op, now);
	if (seq)
		*seq = t.seq;
	if (dup)
		*dup = t.dup;
	return rc;
}

static int
fetch(uint64_t device, uint64_t after, uint32_t max, size_t max_bytes, inbox_entry *out, bool *more,
    MDB_txn **txn)
{
	ck_assert_int_eq(inbox_store_read_begin(st, txn), SP_OK);
	return inbox_store_fetch(st, *txn, device, after, max, max_bytes, out, more);
}

static inbox_stat
stat_of(uint64_t device)
{
	MDB_txn *txn;
	inbox_stat s;
	ck_assert_int_eq(inbox_store_read_begin(st, &txn), SP_OK);
	ck_assert_int_eq(inbox_store_stat(st, txn, device, &s), SP_OK);
	inbox_store_read_end(txn);
	return s;
}

static inbox_shard_stat
shard_stat(void)
{
	MDB_txn *txn;
	inbox_shard_stat s;
	ck_assert_int_eq(inbox_store_read_begin(st, &txn), SP_OK);
	ck_assert_int_eq(inbox_store_shard_stat(st, txn, &s), SP_OK);
	inbox_store_read_end(txn);
	return s;
}

static uint32_t
ack_upto(uint64_t device, uint64_t upto, inbox_ref *refs_out, uint32_t cap)
{
	inbox_op op = { .kind = INBOX_OP_ACK };
	op.ack.device = device;
	op.ack.upto_seq = upto;
	ck_assert_int_eq(fixture_apply1(st, &op, 1), SP_OK);
	uint32_t n = op.ack.nrefs;
	if (refs_out)
		memcpy(refs_out, op.ack.refs, sizeof(inbox_ref) * (n < cap ? n : cap));
	inbox_op_fini(&op);
	return n;
}

START_TEST(append_fetch_in_order)
{
	uint64_t seq;
	inbox_entry e[16];
	bool more;
	MDB_txn *txn;
	char env[32];

	for (int i = 1; i <= 5; i++) {
		snprintf(env, sizeof(env), "a%d", i);
		ck_assert_int_eq(append(1, 7, (uint64_t)i, env, 100 + i, &seq, NULL), SP_OK);
		ck_assert_uint_eq(seq, (uint64_t)i);
	}
	for (int i = 1; i <= 3; i++) {
		ck_assert_int_eq(append(2, 7, 100 + (uint64_t)i, "b", 200, &seq, NULL), SP_OK);
		ck_assert_uint_eq(seq, (uint64_t)i);
	}
	int n = fetch(1, 0, 16, 1 << 20, e, &more, &txn);
	ck_assert_int_eq(n, 5);
	ck_assert(!more);
	for (int i = 0; i < 5; i++) {
		snprintf(env, sizeof(env), "a%d", i + 1);
		ck_assert_uint_eq(e[i].seq, (uint64_t)i + 1);
		ck_assert_uint_eq(e[i].env_len, strlen(env));
		ck_assert_mem_eq(e[i].env, env, e[i].env_len);
		ck_assert_uint_eq(e[i].from_device, 7);
		ck_assert_uint_eq(e[i].from_user, 1007);
		ck_assert_uint_eq(e[i].server_ts, 101 + (uint64_t)i);
		ck_assert(!e[i].has_group);
	}
	inbox_store_read_end(txn);
	n = fetch(1, 2, 2, 1 << 20, e, &more, &txn);
	ck_assert_int_eq(n, 2);
	ck_assert(more);
	ck_assert_uint_eq(e[0].seq, 3);
	ck_assert_uint_eq(e[1].seq, 4);
	inbox_store_read_end(txn);
	/* The byte budget stops the page but always returns the first entry. */
	n = fetch(1, 0, 16, 1, e, &more, &txn);
	ck_assert_int_eq(n, 1);
	ck_assert(more);
	inbox_store_read_end(txn);
	n = fetch(3, 0, 16, 1 << 20, e, &more, &txn);
	ck_assert_int_eq(n, 0);
	inbox_store_read_end(txn);
	inbox_stat s = stat_of(1);
	ck_assert_uint_eq(s.depth, 5);
	ck_assert_uint_eq(s.last_seq, 5);
	ck_assert_uint_eq(s.oldest_ts, 101);
	ck_assert_uint_eq(shard_stat().entries, 8);
}
END_TEST

START_TEST(dedup_by_device_sender_and_msg_id)
{
	uint64_t seq;
	bool dup;

	ck_assert_int_eq(append(1, 7, 42, "x", 100, &seq, &dup), SP_OK);
	ck_assert_uint_eq(seq, 1);
	ck_assert(!dup);
	ck_assert_int_eq(append(1, 7, 42, "x-retry", 150, &seq, &dup), SP_OK);
	ck_assert_uint_eq(seq, 1);
	ck_assert(dup);
	ck_assert_uint_eq(stat_of(1).depth, 1);
	/* Same msg_id to another device of the recipient, or from another sender device. */
	ck_assert_int_eq(append(2, 7, 42, "x", 100, &seq, &dup), SP_OK);
	ck_assert_uint_eq(seq, 1);
	ck_assert(!dup);
	ck_assert_int_eq(append(1, 8, 42, "y", 100, &seq, &dup), SP_OK);
	ck_assert_uint_eq(seq, 2);
	ck_assert(!dup);
	/* After the ACK the dedup record stays: a late retry is not delivered again. */
	ck_assert_uint_eq(ack_upto(1, 2, NULL, 0), 2);
	ck_assert_int_eq(append(1, 7, 42, "x", 200, &seq, &dup), SP_OK);
	ck_assert_uint_eq(seq, 1);
	ck_assert(dup);
	ck_assert_uint_eq(stat_of(1).depth, 0);
	/* Once the TTL passed and the sweep ran, the id is new again. */
	inbox_op sw = { .kind = INBOX_OP_SWEEP };
	sw.sweep.limit = 100;
	ck_assert_int_eq(fixture_apply1(st, &sw, 100 + TTL_MS + 1), SP_OK);
	ck_assert_uint_eq(sw.sweep.dedup_gone, 3);
	ck_assert_int_eq(append(1, 7, 42, "x", 100 + TTL_MS + 2, &seq, &dup), SP_OK);
	ck_assert_uint_eq(seq, 3);
	ck_assert(!dup);
}
END_TEST

/* Fills one 1-target append op (each test keeps its own target and op). */
static void
append_op(inbox_op *op, inbox_target *t, uint64_t device, uint64_t msg)
{
	*t = (inbox_target) { .device = device };
	*op = (inbox_op) { .kind = INBOX_OP_APPEND };
	mid(op->append.msg_id, msg);
	op->append.from_device = 7;
	op->append.body = (const uint8_t *)"e";
	op->append.body_len = 1;
	op->append.targets = t;
	op->append.ntargets = 1;
}

/* The dedup index is in memory: what an aborted transaction wrote must leave it too, or a
 * retry of an append that was never stored would be answered "dup" with a seq that does
 * not exist (a lost message). */
START_TEST(dedup_follows_its_transaction)
{
	inbox_op op;
	inbox_target t;
	MDB_txn *txn, *child;
	uint64_t seq;
	bool dup;

	ck_assert_int_eq(inbox_store_txn_begin(st, NULL, &txn), SP_OK);
	append_op(&op, &t, 1, 5);
	ck_assert_int_eq(inbox_store_apply(st, txn, &op, 100), SP_OK);
	/* Seen by a later op of the same transaction. */
	inbox_op again;
	inbox_target t2;
	append_op(&again, &t2, 1, 5);
	ck_assert_int_eq(inbox_store_apply(st, txn, &again, 100), SP_OK);
	ck_assert(t2.dup);
	ck_assert_uint_eq(t2.seq, t.seq);
	inbox_store_txn_abort(st, txn);
	ck_assert_int_eq(append(1, 7, 5, "e", 100, &seq, &dup), SP_OK);
	ck_assert(!dup);
	ck_assert_uint_eq(seq, 1);

	/* Nested: an aborted child is forgotten, a committed one kept with its parent. */
	ck_assert_int_eq(inbox_store_txn_begin(st, NULL, &txn), SP_OK);
	ck_assert_int_eq(inbox_store_txn_begin(st, txn, &child), SP_OK);
	append_op(&op, &t, 1, 6);
	ck_assert_int_eq(inbox_store_apply(st, child, &op, 100), SP_OK);
	inbox_store_txn_abort(st, child);
	ck_assert_int_eq(inbox_store_txn_begin(st, txn, &child), SP_OK);
	append_op(&op, &t, 1, 7);
	ck_assert_int_eq(inbox_store_apply(st, child, &op, 100), SP_OK);
	ck_assert_int_eq(inbox_store_txn_commit(st, child), SP_OK);
	ck_assert_int_eq(inbox_store_txn_commit(st, txn), SP_OK);
	ck_assert_int_eq(append(1, 7, 6, "e", 100, &seq, &dup), SP_OK);
	ck_assert(!dup);
	ck_assert_uint_eq(seq, 3);
	ck_assert_int_eq(append(1, 7, 7, "e", 100, &seq, &dup), SP_OK);
	ck_assert(dup);
	ck_assert_uint_eq(seq, 2);

	/* A sweep that is rolled back keeps its records indexed. */
	ck_assert_int_eq(inbox_store_txn_begin(st, NULL, &txn), SP_OK);
	inbox_op sw = { .kind = INBOX_OP_SWEEP };
	sw.sweep.limit = 100;
	ck_assert_int_eq(inbox_store_apply(st, txn, &sw, 100 + TTL_MS + 1), SP_OK);
	ck_assert_uint_eq(sw.sweep.dedup_gone, 3);
	inbox_store_txn_abort(st, txn);
	ck_assert_int_eq(append(1, 7, 5, "e", 200, &seq, &dup), SP_OK);
	ck_assert(dup);
	ck_assert_uint_eq(seq, 1);
}
END_TEST

/* A reader's snapshot decides what it sees: not an append whose transaction is still open,
 * and still an entry whose deletion has not committed. */
START_TEST(readers_see_their_snapshot)
{
	inbox_op op;
	inbox_target t;
	inbox_entry e[8];
	MDB_txn *w, *r;
	bool more;

	ck_assert_int_eq(append(1, 7, 1, "one", 100, NULL, NULL), SP_OK);
	ck_assert_int_eq(inbox_store_txn_begin(st, NULL, &w), SP_OK);
	append_op(&op, &t, 1, 2);
	ck_assert_int_eq(inbox_store_apply(st, w, &op, 100), SP_OK);
	ck_assert_int_eq(inbox_store_read_begin(st, &r), SP_OK);
	ck_assert_int_eq(inbox_store_fetch(st, r, 1, 0, 8, 1 << 20, e, &more), 1);
	ck_assert_uint_eq(e[0].seq, 1);
	inbox_stat sst;
	ck_assert_int_eq(inbox_store_stat(st, r, 1, &sst), SP_OK);
	ck_assert_uint_eq(sst.depth, 1);
	ck_assert_uint_eq(sst.oldest_ts, 100);
	inbox_store_read_end(r);
	/* The ACK of entry 1 in the same open transaction: a reader still has it. */
	inbox_op ack = { .kind = INBOX_OP_ACK };
	ack.ack.device = 1;
	ack.ack.upto_seq = 1;
	ck_assert_int_eq(inbox_store_apply(st, w, &ack, 100), SP_OK);
	ck_assert_uint_eq(ack.ack.nrefs, 1);
	inbox_op_fini(&ack);
	ck_assert_int_eq(inbox_store_read_begin(st, &r), SP_OK);
	ck_assert_int_eq(inbox_store_fetch(st, r, 1, 0, 8, 1 << 20, e, &more), 1);
	ck_assert_uint_eq(e[0].seq, 1);
	ck_assert_int_eq(inbox_store_txn_commit(st, w), SP_OK);
	/* Once the deletion committed, even an older snapshot stops offering entry 1 (it is
	 * acknowledged: skipping it is right), and entry 2, committed after that snapshot,
	 * stays invisible to it. A new snapshot sees the commit. */
	ck_assert_int_eq(inbox_store_fetch(st, r, 1, 0, 8, 1 << 20, e, &more), 0);
	inbox_store_read_end(r);
	ck_assert_int_eq(inbox_store_read_begin(st, &r), SP_OK);
	ck_assert_int_eq(inbox_store_fetch(st, r, 1, 0, 8, 1 << 20, e, &more), 1);
	ck_assert_uint_eq(e[0].seq, 2);
	ck_assert_str_eq((const char *)e[0].env, "e");
	inbox_store_read_end(r);
	ck_assert_uint_eq(stat_of(1).depth, 1);
}
END_TEST

/* An ACK takes entries off the queue at once and leaves their log records to the
 * collector: a restart before it ran must not bring them back. */
START_TEST(acked_entries_stay_acked_across_restart)
{
	MDB_txn *w;
	inbox_entry e[8];
	bool more;
	uint64_t deleted;

	for (uint64_t i = 1; i <= 5; i++)
		ck_assert_int_eq(append(2, 7, i, "x", 100, NULL, NULL), SP_OK);
	ck_assert_int_eq(inbox_store_txn_begin(st, NULL, &w), SP_OK);
	inbox_op ack = { .kind = INBOX_OP_ACK };
	ack.ack.device = 2;
	ack.ack.upto_seq = 3;
	ck_assert_int_eq(inbox_store_apply(st, w, &ack, 100), SP_OK);
	ck_assert_uint_eq(ack.ack.nrefs, 3);
	inbox_op_fini(&ack);
	ck_assert_int_eq(inbox_store_txn_commit(st, w), SP_OK);
	ck_assert_uint_eq(inbox_store_garbage(st), 3);
	inbox_store_close(st);
	open_store(100, 1 << 20);
	ck_assert_uint_eq(inbox_store_garbage(st), 3);
	MDB_txn *r;
	ck_assert_int_eq(fetch(2, 0, 8, 1 << 20, e, &more, &r), 2);
	ck_assert_uint_eq(e[0].seq, 4);
	inbox_store_read_end(r);
	ck_assert_uint_eq(stat_of(2).depth, 2);
	/* The collector deletes the three records; nothing queued changes. */
	ck_assert_int_eq(inbox_store_txn_begin(st, NULL, &w), SP_OK);
	ck_assert_int_eq(inbox_store_collect(st, w, 2, &deleted), SP_OK);
	ck_assert_uint_eq(deleted, 2);
	ck_assert_int_eq(inbox_store_collect(st, w, 100, &deleted), SP_OK);
	ck_assert_uint_eq(deleted, 1);
	ck_assert_int_eq(inbox_store_txn_commit(st, w), SP_OK);
	ck_assert_uint_eq(inbox_store_garbage(st), 0);
	ck_assert_uint_eq(stat_of(2).depth, 2);
	inbox_store_close(st);
	open_store(100, 1 << 20);
	ck_assert_uint_eq(inbox_store_garbage(st), 0);
	ck_assert_uint_eq(stat_of(2).depth, 2);
	ck_assert_uint_eq(stat_of(2).last_seq, 5);
}
END_TEST

/* A device whose every record expired keeps counting from where it was, across a reopen. */
START_TEST(seqs_never_restart)
{
	uint64_t seq;
	for (uint64_t i = 1; i <= 3; i++)
		ck_assert_int_eq(append(4, 7, i, "x", 100, NULL, NULL), SP_OK);
	ck_assert_uint_eq(ack_upto(4, 3, NULL, 0), 3);
	inbox_op sw = { .kind = INBOX_OP_SWEEP };
	sw.sweep.limit = 100;
	ck_assert_int_eq(fixture_apply1(st, &sw, 100 + TTL_MS + 1), SP_OK);
	ck_assert_uint_eq(sw.sweep.dedup_gone, 3);
	inbox_store_close(st);
	open_store(100, 1 << 20);
	ck_assert_int_eq(append(4, 7, 9, "x", 100 + TTL_MS + 2, &seq, NULL), SP_OK);
	ck_assert_uint_eq(seq, 4);
}
END_TEST

/* A data dir written with per-device queue tables (the first layout) is refused, never
 * opened as if it were empty. The data dir is a copy of a fixture written by that layout
 * (tests/fixtures/inbox_old_layout/data.mdb). */
/* An ACK beyond the highest seq the shard gave the device (a client remembering seqs
 * of another history of the shard) deletes nothing. */
START_TEST(ack_beyond_last_seq_deletes_nothing)
{
	uint64_t seq;
	for (int i = 1; i <= 3; i++)
		ck_assert_int_eq(append(4, 7, 300 + (uint64_t)i, "x", 100, &seq, NULL), SP_OK);
	inbox_op op = { .kind = INBOX_OP_ACK };
	op.ack.device = 4;
	op.ack.upto_seq = 500;
	ck_assert_int_eq(fixture_apply1(st, &op, 1), SP_ERANGE);
	inbox_op_fini(&op);
	ck_assert_uint_eq(inbox_store_last_seq(st, 4), 3);
	ck_assert_uint_eq(ack_upto(4, 2, NULL, 0), 2);
	ck_assert_uint_eq(ack_upto(4, 3, NULL, 0), 1);
}
END_TEST

START_TEST(old_layout_is_refused)
{
	char old[96], path[128];
	size_t len;
	inbox_store_close(st);
	st = NULL;
	snprintf(old, sizeof(old), "%s/old", dir);
	ck_assert_int_eq(mkdir(old, 0700), 0);
	uint8_t *data = fixture_read("inbox_old_layout/data.mdb", &len);
	snprintf(path, sizeof(path), "%s/data.mdb", old);
	FILE *f = fopen(path, "wb");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(data, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
	free(data);
	inbox_store_config cfg = { .dir = old, .map_size = 64u << 20, .max_queue_entries = 10,
		.max_queue_bytes = 1 << 20, .msg_ttl_ms = TTL_MS, .media_ttl_ms = MEDIA_TTL_MS,
		.max_blob_size = 1 << 20, .max_readers = 16 };
	inbox_store *o = NULL;
	ck_assert_int_eq(inbox_store_open(&o, &cfg), SP_ESTORE);
	ck_assert_ptr_null(o);
	open_store(100, 1 << 20);
}
END_TEST

/* Appends msgs [from, to) from sender 7, each to device msg / 50, in one transaction (TTL
 * key order, the order of forgetting, is then msg order). */
static void
append_range(uint64_t from, uint64_t to, uint64_t now)
{
	size_t n = (size_t)(to - from);
	inbox_op *ops = calloc(n, sizeof(inbox_op)), **pops = calloc(n, sizeof(inbox_op *));
	inbox_target *ts = calloc(n, sizeof(inbox_target));
	ck_assert(ops && pops && ts);
	for (size_t i = 0; i < n; i++) {
		append_op(&ops[i], &ts[i], (from + i) / 50, from + i);
		pops[i] = &ops[i];
	}
	ck_assert_int_eq(inbox_store_write(st, pops, n, now), SP_OK);
	for (size_t i = 0; i < n; i++)
		ck_assert_int_eq(ops[i].rc, SP_OK);
	free(ops);
	free(pops);
	free(ts);
}

static bool
is_dup(uint64_t msg, uint64_t now)
{
	bool dup;
	ck_assert_int_eq(append(msg / 50, 7, msg, "e", now, NULL, &dup), SP_OK);
	return dup;
}

START_TEST(dedup_max_forgets_the_oldest_first)
{
	uint64_t records, bytes;
	inbox_store_close(st);
	dedup_max = 2000;
	open_store(1000, 1 << 20);
	append_range(1, 2001, 100);
	inbox_store_dedup_stat(st, &records, &bytes);
	ck_assert_uint_eq(records, 2000);
	/* One more: the 1024 oldest records are forgotten, the newer ones still answer. */
	append_range(2001, 2002, 200);
	inbox_store_dedup_stat(st, &records, &bytes);
	ck_assert_uint_eq(records, 2001 - 1024);
	ck_assert(is_dup(2001, 300));
	ck_assert(is_dup(1025, 300));
	ck_assert(!is_dup(1024, 300)); /* stored again: it was forgotten */
	ck_assert(!is_dup(1, 300));

	/* Reopened with 2003 records on disk (1024 and 1 were stored again), the index keeps
	 * the newest 1500. */
	inbox_store_close(st);
	dedup_max = 1500;
	open_store(1000, 1 << 20);
	inbox_store_dedup_stat(st, &records, &bytes);
	ck_assert_uint_eq(records, 1500);
	ck_assert(is_dup(1, 400));
	ck_assert(is_dup(2001, 400));
	ck_assert(!is_dup(2, 400));
	/* With no cap, a reopen indexes every record again (each test append above added one). */
	inbox_store_close(st);
	dedup_max = 0;
	open_store(1000, 1 << 20);
	inbox_store_dedup_stat(st, &records, &bytes);
	ck_assert_uint_eq(records, 2001 + 2 + 1);
	ck_assert(is_dup(2, 500));
	ck_assert(is_dup(1500, 500));
}
END_TEST

START_TEST(ack_upto_and_list_are_idempotent)
{
	inbox_ref refs[8];
	inbox_entry e[8];
	bool more;
	MDB_txn *txn;

	for (uint64_t i = 1; i <= 6; i++)
		ck_assert_int_eq(append(1, 7, i, "m", 100, NULL, NULL), SP_OK);
	ck_assert_uint_eq(ack_upto(1, 2, refs, 8), 2);
	ck_assert_uint_eq(refs[0].from_device, 7);
	ck_assert_uint_eq(refs[0].from_user, 1007);
	uint8_t m1[16];
	mid(m1, 1);
	ck_assert_mem_eq(refs[0].msg_id, m1, 16);
	ck_assert_uint_eq(ack_upto(1, 2, NULL, 0), 0); /* again: nothing newly delivered */

	uint64_t seqs[] = { 4, 99, 4, 6 };
	inbox_op op = { .kind = INBOX_OP_ACK };
	op.ack.device = 1;
	op.ack.seqs = seqs;
	op.ack.nseqs = 4;
	ck_assert_int_eq(fixture_apply1(st, &op, 1), SP_OK);
	ck_assert_uint_eq(op.ack.nrefs, 2);
	inbox_op_fini(&op);
	int n = fetch(1, 0, 8, 1 << 20, e, &more, &txn);
	ck_assert_int_eq(n, 2);
	ck_assert_uint_eq(e[0].seq, 3);
	ck_assert_uint_eq(e[1].seq, 5);
	inbox_store_read_end(txn);
	ck_assert_uint_eq(stat_of(1).depth, 2);
	ck_assert_uint_eq(stat_of(1).bytes, 2);
	ck_assert_uint_eq(ack_upto(77, 1000, NULL, 0), 0); /* unknown device */
	/* Seqs keep increasing after deletions. */
	uint64_t seq;
	ck_assert_int_eq(append(1, 7, 50, "m", 100, &seq, NULL), SP_OK);
	ck_assert_uint_eq(seq, 7);
}
END_TEST

START_TEST(batch_body_is_refcounted)
{
	inbox_target t[3] = { { .device = 1 },
		{ .device = 2, .ct = (const uint8_t *)"kd", .ct_len = 2 }, { .device = 3 } };
	inbox_op op = { .kind = INBOX_OP_APPEND };
	inbox_entry e[4];
	bool more;
	MDB_txn *txn;

	mid(op.append.msg_id, 9);
	op.append.from_device = 5;
	op.append.body = (const uint8_t *)"group-body";
	op.append.body_len = 10;
	op.append.shared = true;
	op.append.has_group = true;
	op.append.group = 77;
	op.append.targets = t;
	op.append.ntargets = 3;
	ck_assert_int_eq(fixture_apply1(st, &op, 100), SP_OK);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(t[i].rc, SP_OK);
		ck_assert_uint_eq(t[i].seq, 1);
	}
	inbox_shard_stat ss = shard_stat();
	ck_assert_uint_eq(ss.bodies, 1);
	ck_assert_uint_eq(ss.entries, 3);
	ck_assert_int_eq(fetch(2, 0, 4, 1 << 20, e, &more, &txn), 1);
	ck_assert_mem_eq(e[0].env, "group-body", 10);
	ck_assert_uint_eq(e[0].ct_len, 2);
	ck_assert_mem_eq(e[0].ct, "kd", 2);
	ck_assert(e[0].has_group);
	ck_assert_uint_eq(e[0].group, 77);
	inbox_store_read_end(txn);
	ck_assert_uint_eq(stat_of(2).bytes, 12);

	/* A retry stores nothing new. */
	inbox_target t2[3] = { { .device = 1 }, { .device = 2 }, { .device = 3 } };
	op.append.targets = t2;
	op.append.body_id = 0;
	op.lsn = 0;
	op.ts = 0;
	ck_assert_int_eq(fixture_apply1(st, &op, 100), SP_OK);
	ck_assert(t2[0].dup && t2[1].dup && t2[2].dup);
	ck_assert_uint_eq(shard_stat().bodies, 1);

	ck_assert_uint_eq(ack_upto(1, 1, NULL, 0), 1);
	ck_assert_uint_eq(ack_upto(2, 1, NULL, 0), 1);
	ck_assert_uint_eq(shard_stat().bodies, 1);
	inbox_op p = { .kind = INBOX_OP_PURGE };
	p.purge.device = 3;
	ck_assert_int_eq(fixture_apply1(st, &p, 100), SP_OK);
	ck_assert_uint_eq(p.purge.removed, 1);
	ss = shard_stat();
	ck_assert_uint_eq(ss.bodies, 0);
	ck_assert_uint_eq(ss.entries, 0);
}
END_TEST

START_TEST(caps_refuse_without_dropping)
{
	uint64_t seq;
	inbox_store_close(st);
	open_store(3, 1 << 20);
	for (uint64_t i = 1; i <= 3; i++)
		ck_assert_int_eq(append(1, 7, i, "m", 100, NULL, NULL), SP_OK);
	uint64_t lsn = shard_stat().lsn;
	ck_assert_int_eq(append(1, 7, 4, "m", 100, &seq, NULL), SP_EFULL);
	ck_assert_uint_eq(seq, 0);
	ck_assert_uint_eq(shard_stat().lsn, lsn); /* a refused op is not in the log */
	inbox_stat s = stat_of(1);
	ck_assert_uint_eq(s.depth, 3);
	ck_assert_uint_eq(s.last_seq, 3);
	/* The refused message was not remembered: after an ACK makes room, it goes in. */
	ck_assert_uint_eq(ack_upto(1, 1, NULL, 0), 1);
	ck_assert_int_eq(append(1, 7, 4, "m", 100, &seq, NULL), SP_OK);
	ck_assert_uint_eq(seq, 4);

	/* Byte cap, and a batch where one device is full. */
	inbox_store_close(st);
	open_store(100, 10);
	ck_assert_int_eq(append(2, 7, 1, "12345678", 100, NULL, NULL), SP_OK);
	ck_assert_int_eq(append(2, 7, 2, "123", 100, NULL, NULL), SP_EFULL);
	inbox_target t[2] = { { .device = 2 }, { .device = 3 } };
	inbox_op op = { .kind = INBOX_OP_APPEND };
	mid(op.append.msg_id, 3);
	op.append.body = (const uint8_t *)"abc";
	op.append.body_len = 3;
	op.append.shared = true;
	op.append.targets = t;
	op.append.ntargets = 2;
	ck_assert_int_eq(fixture_apply1(st, &op, 100), SP_OK);
	ck_assert_int_eq(t[0].rc, SP_EFULL);
	ck_assert_uint_eq(t[0].seq, 0);
	ck_assert_int_eq(t[1].rc, SP_OK);
	ck_assert_uint_eq(t[1].seq, 1);
	ck_assert_uint_eq(stat_of(2).depth, 1);
}
END_TEST

START_TEST(purge_keeps_seqs_monotonic)
{
	uint64_t seq;
	for (uint64_t i = 1; i <= 4; i++)
		ck_assert_int_eq(append(1, 7, i, "m", 100, NULL, NULL), SP_OK);
	ck_assert_int_eq(append(2, 7, 1, "other", 100, NULL, NULL), SP_OK);
	inbox_op p = { .kind = INBOX_OP_PURGE };
	p.purge.device = 1;
	ck_assert_int_eq(fixture_apply1(st, &p, 100), SP_OK);
	ck_assert_uint_eq(p.purge.removed, 4);
	p.purge.removed = 99;
	p.lsn = 0;
	ck_assert_int_eq(fixture_apply1(st, &p, 100), SP_OK); /* again: harmless */
	ck_assert_uint_eq(p.purge.removed, 0);
	ck_assert_uint_eq(stat_of(1).depth, 0);
	ck_assert_uint_eq(stat_of(2).depth, 1);
	ck_assert_int_eq(append(1, 7, 10, "m", 100, &seq, NULL), SP_OK);
	ck_assert_uint_eq(seq, 5);
}
END_TEST

START_TEST(ttl_sweep_in_bounded_batches)
{
	for (uint64_t i = 1; i <= 10; i++)
		ck_assert_int_eq(append(1, 7, i, "old", 1000 + i, NULL, NULL), SP_OK);
	ck_assert_int_eq(append(1, 7, 11, "new", 5000, NULL, NULL), SP_OK);
	ck_assert_uint_eq(ack_upto(1, 2, NULL, 0), 2);

	inbox_op sw = { .kind = INBOX_OP_SWEEP };
	sw.sweep.limit = 4;
	ck_assert_int_eq(fixture_apply1(st, &sw, 1000 + TTL_MS), SP_OK); /* nothing is older than the TTL */
	ck_assert_uint_eq(sw.sweep.expired + sw.sweep.dedup_gone, 0);
	ck_assert(!sw.sweep.more);

	uint64_t now = 1010 + TTL_MS + 1;
	memset(&sw, 0, sizeof(sw));
	sw.kind = INBOX_OP_SWEEP;
	sw.sweep.limit = 4;
	ck_assert_int_eq(fixture_apply1(st, &sw, now), SP_OK);
	ck_assert(sw.sweep.more);
	ck_assert_uint_eq(sw.sweep.dedup_gone, 4);
	ck_assert_uint_eq(sw.sweep.expired, 2); /* seqs 1-2 were acked already */
	uint64_t expired = sw.sweep.expired;
	do {
		memset(&sw, 0, sizeof(sw));
		sw.kind = INBOX_OP_SWEEP;
		sw.sweep.limit = 4;
		ck_assert_int_eq(fixture_apply1(st, &sw, now), SP_OK);
		expired += sw.sweep.expired;
	} while (sw.sweep.more);
	ck_assert_uint_eq(expired, 8);
	inbox_stat s = stat_of(1);
	ck_assert_uint_eq(s.depth, 1);
	ck_assert_uint_eq(s.bytes, 3);
	ck_assert_uint_eq(s.oldest_ts, 5000);
	ck_assert_uint_eq(shard_stat().dedup, 1);
}
END_TEST

static int
blob_put(
    const uint8_t *id, uint64_t off, const uint8_t *b, uint32_t len, uint64_t now, uint64_t *have)
{
	inbox_op op = { .kind = INBOX_OP_BLOB_PUT };
	memcpy(op.blob_put.blob_id, id, 16);
	op.blob_put.offset = off;
	op.blob_put.bytes = b;
	op.blob_put.len = len;
	int rc = fixture_apply1(st, &op, now);
	if (have)
		*have = op.blob_put.have;
	return rc;
}

static int
blob_done(const uint8_t *id, uint64_t size, const uint8_t *sha, const uint64_t *devs, uint32_t n)
{
	inbox_op op = { .kind = INBOX_OP_BLOB_DONE };
	memcpy(op.blob_done.blob_id, id, 16);
	op.blob_done.size = size;
	memcpy(op.blob_done.sha256, sha, 32);
	op.blob_done.devices = devs;
	op.blob_done.ndevices = n;
	return fixture_apply1(st, &op, 1);
}

static int
blob_fetched(const uint8_t *id, uint64_t device, bool *deleted)
{
	inbox_op op = { .kind = INBOX_OP_BLOB_FETCHED };
	memcpy(op.blob_fetched.blob_id, id, 16);
	op.blob_fetched.device = device;
	int rc = fixture_apply1(st, &op, 1);
	*deleted = op.blob_fetched.deleted;
	return rc;
}

START_TEST(blob_resume_verify_read_delete)
{
	uint8_t id[16] = { 1, 2, 3 }, data[3000], sha[32], got[32], buf[3000];
	uint64_t have, devs[] = { 11, 12 };
	MDB_txn *txn;
	bool deleted;

	for (int i = 0; i < 3000; i++)
		data[i] = (uint8_t)(i * 7);
	crypto_hash_sha256(sha, data, sizeof(data));
	ck_assert_int_eq(blob_put(id, 100, data + 100, 10, 1, NULL), SP_EGAP); /* unknown blob */
	ck_assert_int_eq(blob_put(id, 0, data, 1000, 1, &have), SP_OK);
	ck_assert_uint_eq(have, 1000);
	ck_assert_int_eq(blob_put(id, 0, data, 1000, 1, &have), SP_OK); /* retry */
	ck_assert_uint_eq(have, 1000);
	ck_assert_int_eq(blob_put(id, 500, data + 500, 1000, 1, &have), SP_OK); /* overlap */
	ck_assert_uint_eq(have, 1500);
	ck_assert_int_eq(blob_put(id, 2000, data + 2000, 100, 1, NULL), SP_EGAP);
	ck_assert_int_eq(blob_done(id, 3000, sha, devs, 2), SP_EGAP); /* incomplete */
	ck_assert_int_eq(blob_put(id, 1500, data + 1500, 1500, 1, &have), SP_OK);
	ck_assert_uint_eq(have, 3000);
	ck_assert_int_eq(blob_put(id, 3000, data, 1u << 20, 1, NULL), SP_ETOOBIG);

	ck_assert_int_eq(inbox_store_read_begin(st, &txn), SP_OK);
	ck_assert_int_eq(inbox_store_blob_sha256(st, txn, id, 3000, got), SP_OK);
	ck_assert_mem_eq(got, sha, 32);
	ck_assert_int_eq(inbox_store_blob_sha256(st, txn, id, 3001, got), SP_ERANGE);
	inbox_store_read_end(txn);
	ck_assert_int_eq(blob_done(id, 3000, sha, devs, 2), SP_OK);
	ck_assert_int_eq(blob_done(id, 3000, sha, devs, 2), SP_OK); /* retry */
	uint8_t other[32] = { 0 };
	ck_assert_int_eq(blob_done(id, 3000, other, devs, 2), SP_ESTATE);
	ck_assert_int_eq(blob_put(id, 2900, data + 2900, 100, 1, NULL), SP_OK); /* late retry */
	ck_assert_int_eq(blob_put(id, 2900, data + 2900, 200, 1, NULL), SP_ESTATE);

	ck_assert_int_eq(inbox_store_read_begin(st, &txn), SP_OK);
	/* Reads across the three chunks (0-1000, 1000-1500, 1500-3000). */
	ck_assert_int_eq(inbox_store_blob_read(st, txn, id, 900, buf, 1000), 1000);
	ck_assert_mem_eq(buf, data + 900, 1000);
	ck_assert_int_eq(inbox_store_blob_read(st, txn, id, 0, buf, 5000), 3000);
	ck_assert_mem_eq(buf, data, 3000);
	ck_assert_int_eq(inbox_store_blob_read(st, txn, id, 3000, buf, 10), 0);
	ck_assert_int_eq(inbox_store_blob_read(st, txn, id, 3001, buf, 10), SP_ERANGE);
	inbox_store_read_end(txn);

	ck_assert_int_eq(blob_fetched(id, 99, &deleted), SP_OK); /* not listed */
	ck_assert(!deleted);
	ck_assert_int_eq(blob_fetched(id, 11, &deleted), SP_OK);
	ck_assert(!deleted);
	ck_assert_int_eq(blob_fetched(id, 11, &deleted), SP_OK);
	ck_assert(!deleted);
	ck_assert_uint_eq(shard_stat().blobs, 1);
	ck_assert_int_eq(blob_fetched(id, 12, &deleted), SP_OK);
	ck_assert(deleted);
	ck_assert_uint_eq(shard_stat().blobs, 0);
	ck_assert_int_eq(inbox_store_read_begin(st, &txn), SP_OK);
	ck_assert_int_eq(inbox_store_blob_read(st, txn, id, 0, buf, 10), SP_ENOTFOUND);
	inbox_store_read_end(txn);
	ck_assert_int_eq(blob_fetched(id, 12, &deleted), SP_ENOTFOUND);
}
END_TEST

/* BLOB_DONE's digest comes from the state kept with each chunk, never from reading the
 * blob again: a stored chunk changed behind the store's back does not change it. */
START_TEST(blob_hash_incremental)
{
	uint8_t id[16] = { 9, 9 }, data[5000], sha[32], got[32];
	MDB_txn *txn;
	for (int i = 0; i < 5000; i++)
		data[i] = (uint8_t)(i * 13 + 1);
	crypto_hash_sha256(sha, data, sizeof(data));
	for (int off = 0; off < 5000; off += 1000) {
		ck_assert_int_eq(blob_put(id, (uint64_t)off, data + off, 1000, 1, NULL), SP_OK);
		ck_assert_int_eq(blob_put(id, (uint64_t)off, data + off, 1000, 1, NULL), SP_OK);
	}
	ck_assert_int_eq(mdb_txn_begin(st->env, NULL, 0, &txn), 0);
	uint8_t k[24] = { 0 }, junk[1000] = { 0 };
	memcpy(k, id, 16);
	k[16 + 6] = 0x07;
	k[16 + 7] = 0xd0; /* the chunk at offset 2000 */
	MDB_val key = { 24, k }, val = { sizeof(junk), junk };
	ck_assert_int_eq(mdb_put(txn, st->bchunk, &key, &val, 0), 0);
	ck_assert_int_eq(mdb_txn_commit(txn), 0);
	ck_assert_int_eq(inbox_store_read_begin(st, &txn), SP_OK);
	ck_assert_int_eq(inbox_store_blob_sha256(st, txn, id, 5000, got), SP_OK);
	inbox_store_read_end(txn);
	ck_assert_mem_eq(got, sha, 32);
}
END_TEST

START_TEST(blob_ttl)
{
	uint8_t a[16] = { 0xa }, b[16] = { 0xb };
	ck_assert_int_eq(blob_put(a, 0, (const uint8_t *)"xx", 2, 1000, NULL), SP_OK);
	ck_assert_int_eq(blob_put(b, 0, (const uint8_t *)"yy", 2, 3000, NULL), SP_OK);
	inbox_op sw = { .kind = INBOX_OP_SWEEP };
	sw.sweep.limit = 10;
	ck_assert_int_eq(fixture_apply1(st, &sw, 1000 + MEDIA_TTL_MS), SP_OK);
	ck_assert_uint_eq(sw.sweep.blobs, 0);
	memset(&sw, 0, sizeof(sw));
	sw.kind = INBOX_OP_SWEEP;
	sw.sweep.limit = 10;
	ck_assert_int_eq(fixture_apply1(st, &sw, 1001 + MEDIA_TTL_MS), SP_OK);
	ck_assert_uint_eq(sw.sweep.blobs, 1);
	ck_assert_uint_eq(shard_stat().blobs, 1);
}
END_TEST

START_TEST(lsn_counts_applied_ops_and_checks_replays)
{
	ck_assert_int_eq(append(1, 7, 1, "a", 100, NULL, NULL), SP_OK);
	ck_assert_int_eq(append(1, 7, 1, "a", 100, NULL, NULL), SP_OK); /* dup still an op */
	ck_assert_uint_eq(shard_stat().lsn, 2);

	/* A replica replaying a primary op with the values the primary assigned. */
	inbox_target t = { .device = 1, .seq = 2 };
	inbox_op op = { .kind = INBOX_OP_APPEND, .lsn = 3, .ts = 555 };
	mid(op.append.msg_id, 2);
	op.append.body = (const uint8_t *)"b";
	op.append.body_len = 1;
	op.append.targets = &t;
	op.append.ntargets = 1;
	ck_assert_int_eq(fixture_apply1(st, &op, 999), SP_OK);
	ck_assert_uint_eq(t.seq, 2);
	inbox_stat s = stat_of(1);
	ck_assert_uint_eq(s.last_seq, 2);
	/* A replayed op whose LSN or seq does not match is refused. */
	inbox_target t2 = { .device = 1, .seq = 9 };
	inbox_op bad = op;
	bad.lsn = 4;
	bad.append.targets = &t2;
	mid(bad.append.msg_id, 3);
	ck_assert_int_eq(fixture_apply1(st, &bad, 999), SP_EMISMATCH);
	bad.lsn = 7;
	ck_assert_int_eq(fixture_apply1(st, &bad, 999), SP_EMISMATCH);
	ck_assert_uint_eq(shard_stat().lsn, 3);
}
END_TEST

START_TEST(reopen_keeps_everything)
{
	uint64_t seq;
	for (uint64_t i = 1; i <= 3; i++)
		ck_assert_int_eq(append(1, 7, i, "persist", 100, NULL, NULL), SP_OK);
	inbox_store_close(st);
	open_store(100, 1 << 20);
	ck_assert_uint_eq(stat_of(1).depth, 3);
	ck_assert_int_eq(append(1, 7, 2, "persist", 100, &seq, NULL), SP_OK);
	ck_assert_uint_eq(seq, 2);
	ck_assert_int_eq(append(1, 7, 4, "persist", 100, &seq, NULL), SP_OK);
	ck_assert_uint_eq(seq, 4);
	ck_assert_uint_eq(shard_stat().lsn, 5);
}
END_TEST

START_TEST(one_process_per_environment)
{
	inbox_store *second = NULL;
	inbox_store_config cfg = *inbox_store_cfg(st);
	ck_assert_int_eq(inbox_store_open(&second, &cfg), SP_EEXIST);
	ck_assert_ptr_null(second);
}
END_TEST

START_TEST(map_full_is_an_error_not_a_loss)
{
	/* A tiny map: appends eventually fail with SP_EFULL; everything acknowledged stays. */
	char big[60000];
	uint64_t ok = 0, seq;
	inbox_store_close(st);
	inbox_store_config cfg = { .dir = dir,
		.map_size = 1u << 20,
		.max_queue_entries = 1000,
		.max_queue_bytes = 1u << 30,
		.msg_ttl_ms = TTL_MS,
		.media_ttl_ms = MEDIA_TTL_MS,
		.max_blob_size = 1 << 20,
		.max_readers = 16 };
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s/*", dir);
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_int_eq(inbox_store_open(&st, &cfg), SP_OK);
	memset(big, 'z', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	int rc = SP_OK;
	for (uint64_t i = 1; i <= 100 && rc == SP_OK; i++) {
		inbox_target t = { .device = 1 };
		inbox_op op = { .kind = INBOX_OP_APPEND };
		inbox_op *ops[1] = { &op };
		mid(op.append.msg_id, i);
		op.append.body = (const uint8_t *)big;
		op.append.body_len = sizeof(big) - 1;
		op.append.targets = &t;
		op.append.ntargets = 1;
		int crc = inbox_store_write(st, ops, 1, 100);
		rc = crc ? crc : op.rc;
		if (rc == SP_OK)
			ok++;
	}
	ck_assert_int_eq(rc, SP_EFULL);
	ck_assert_uint_gt(ok, 0);
	ck_assert_uint_eq(stat_of(1).depth, ok);
	/* Deleting makes room again. */
	ck_assert_uint_eq(ack_upto(1, ok, NULL, 0), ok);
	ck_assert_int_eq(append(1, 7, 1000, "small", 100, &seq, NULL), SP_OK);
	ck_assert_uint_eq(seq, ok + 1);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("inbox_store");
	TCase *tc = tcase_create("store");
	tcase_add_checked_fixture(tc, setup, teardown);
	/* Check's default 4 s: dedup_max_forgets_the_oldest_first takes longer under
	 * ASan+UBSan (`make asan`), and timed out there before this change too. */
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, append_fetch_in_order);
	tcase_add_test(tc, dedup_by_device_sender_and_msg_id);
	tcase_add_test(tc, dedup_follows_its_transaction);
	tcase_add_test(tc, readers_see_their_snapshot);
	tcase_add_test(tc, seqs_never_restart);
	tcase_add_test(tc, acked_entries_stay_acked_across_restart);
	tcase_add_test(tc, old_layout_is_refused);
	tcase_add_test(tc, ack_beyond_last_seq_deletes_nothing);
	tcase_add_test(tc, dedup_max_forgets_the_oldest_first);
	tcase_add_test(tc, ack_upto_and_list_are_idempotent);
	tcase_add_test(tc, batch_body_is_refcounted);
	tcase_add_test(tc, caps_refuse_without_dropping);
	tcase_add_test(tc, purge_keeps_seqs_monotonic);
	tcase_add_test(tc, ttl_sweep_in_bounded_batches);
	tcase_add_test(tc, blob_resume_verify_read_delete);
	tcase_add_test(tc, blob_hash_incremental);
	tcase_add_test(tc, blob_ttl);
	tcase_add_test(tc, lsn_counts_applied_ops_and_checks_replays);
	tcase_add_test(tc, reopen_keeps_everything);
	tcase_add_test(tc, one_process_per_environment);
	tcase_add_test(tc, map_full_is_an_error_not_a_loss);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
