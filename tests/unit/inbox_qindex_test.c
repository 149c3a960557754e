/* Unit tests of the queue index (inboxsrv/qindex.c): the writer's view changes at once and
 * rolls back with its transaction; readers see a superset of every snapshot (an entry from
 * before its commit, until after its deletion committed); counters; compaction. */
#include <check.h>
#include <stdlib.h>

#include "inboxsrv/qindex.h"
#include "sp_error.h"
#include "check_run.h"

static size_t
cands(inbox_qindex *q, uint64_t device, uint64_t after, inbox_qcand *out, size_t max)
{
	bool more;
	return inbox_qindex_candidates(q, device, after, out, max, &more);
}

START_TEST(views_follow_commit_and_rollback)
{
	inbox_qindex *q = inbox_qindex_new();
	inbox_qcand c[8];
	inbox_qmeta m;
	uint64_t seq, key;
	ck_assert_ptr_nonnull(q);

	/* Loaded state: committed. */
	ck_assert_int_eq(inbox_qindex_load_entry(q, 1, 0, 1, 100, 10), SP_OK);
	ck_assert_int_eq(inbox_qindex_load_entry(q, 1, 0, 2, 101, 10), SP_OK);
	ck_assert_int_eq(inbox_qindex_load_entry(q, 1, 0, 2, 102, 10), SP_ESTORE); /* out of order */
	ck_assert_int_eq(inbox_qindex_load_seq(q, 2, 7, 0), SP_OK);
	inbox_qindex_committed(q, 1, &m);
	ck_assert_uint_eq(m.count, 2);
	ck_assert_uint_eq(m.bytes, 20);
	ck_assert_uint_eq(m.last_seq, 2);
	inbox_qindex_meta(q, 2, &m);
	ck_assert_uint_eq(m.last_seq, 7);
	ck_assert_uint_eq(m.count, 0);

	/* An add is seen by the writer and offered to readers (who check their snapshot);
	 * committed counters move only at publish. */
	size_t mark = inbox_qindex_mark(q);
	ck_assert_int_eq(inbox_qindex_add(q, 1, 0, 2, 999, 5), SP_EINVAL); /* not above last_seq */
	ck_assert_int_eq(inbox_qindex_add(q, 1, 0, 3, 103, 5), SP_OK);
	ck_assert_uint_eq(cands(q, 1, 0, c, 8), 3);
	inbox_qindex_committed(q, 1, &m);
	ck_assert_uint_eq(m.count, 2);
	inbox_qindex_meta(q, 1, &m);
	ck_assert_uint_eq(m.count, 3);
	ck_assert_uint_eq(m.last_seq, 3);
	/* A removal hides the entry from the writer at once, not from readers. */
	ck_assert_int_eq(inbox_qindex_remove(q, 1, 0, 1, 10, true), SP_OK);
	ck_assert_int_eq(inbox_qindex_remove(q, 1, 0, 1, 10, true), SP_ENOTFOUND);
	ck_assert_int_eq(inbox_qindex_find(q, 1, 1, &key), SP_ENOTFOUND);
	ck_assert_int_eq(inbox_qindex_next(q, 1, 0, &seq, &key), SP_OK);
	ck_assert_uint_eq(seq, 2);
	ck_assert_uint_eq(cands(q, 1, 0, c, 8), 3);
	ck_assert_uint_eq(inbox_qindex_garbage(q), 1);
	/* Rolled back: as loaded. */
	inbox_qindex_rollback(q, mark);
	ck_assert_uint_eq(inbox_qindex_garbage(q), 0);
	ck_assert_uint_eq(cands(q, 1, 0, c, 8), 2);
	ck_assert_int_eq(inbox_qindex_find(q, 1, 1, &key), SP_OK);
	ck_assert_uint_eq(key, 100);
	inbox_qindex_meta(q, 1, &m);
	ck_assert_uint_eq(m.count, 2);
	ck_assert_uint_eq(m.last_seq, 2);
	ck_assert_uint_eq(m.bytes, 20);

	/* Again, committed: readers lose the removed entry only now. */
	mark = inbox_qindex_mark(q);
	ck_assert_int_eq(inbox_qindex_add(q, 1, 0, 3, 103, 5), SP_OK);
	ck_assert_int_eq(inbox_qindex_remove(q, 1, 0, 1, 10, true), SP_OK);
	/* Added and removed in one transaction: never offered again. */
	ck_assert_int_eq(inbox_qindex_add(q, 1, 0, 4, 104, 5), SP_OK);
	ck_assert_int_eq(inbox_qindex_remove(q, 1, 0, 4, 5, true), SP_OK);
	ck_assert_uint_eq(cands(q, 1, 0, c, 8), 3);
	inbox_qindex_publish(q);
	ck_assert_uint_eq(cands(q, 1, 0, c, 8), 2);
	ck_assert_uint_eq(c[0].seq, 2);
	ck_assert_uint_eq(c[1].seq, 3);
	ck_assert_uint_eq(c[1].key, 103);
	inbox_qindex_committed(q, 1, &m);
	ck_assert_uint_eq(m.count, 2);
	ck_assert_uint_eq(m.bytes, 15);
	ck_assert_uint_eq(m.last_seq, 4);
	uint64_t devs, entries, mem;
	inbox_qindex_stats(q, &devs, &entries, &mem);
	ck_assert_uint_eq(devs, 2);
	ck_assert_uint_eq(entries, 2);
	/* The collector's count: two records left behind, one collected, one rolled back. */
	ck_assert_uint_eq(inbox_qindex_garbage(q), 2);
	mark = inbox_qindex_mark(q);
	ck_assert_int_eq(inbox_qindex_collected(q, 2), SP_OK);
	ck_assert_uint_eq(inbox_qindex_garbage(q), 0);
	inbox_qindex_rollback(q, mark);
	ck_assert_uint_eq(inbox_qindex_garbage(q), 2);
	ck_assert_int_eq(inbox_qindex_collected(q, 1), SP_OK);
	inbox_qindex_publish(q);
	ck_assert_uint_eq(inbox_qindex_garbage(q), 1);
	/* Loading: entries at or below the acknowledged seq are garbage, not queued. */
	ck_assert_int_eq(inbox_qindex_load_seq(q, 3, 0, 5), SP_OK);
	ck_assert_int_eq(inbox_qindex_load_entry(q, 3, 0, 5, 500, 1), SP_OK);
	ck_assert_int_eq(inbox_qindex_load_entry(q, 3, 0, 6, 600, 1), SP_OK);
	ck_assert_uint_eq(inbox_qindex_garbage(q), 2);
	ck_assert_uint_eq(cands(q, 3, 0, c, 8), 1);
	inbox_qindex_meta(q, 3, &m);
	ck_assert_uint_eq(m.last_seq, 6);
	ck_assert_uint_eq(m.count, 1);
	inbox_qindex_free(q);
}
END_TEST

/* Nested marks: an inner rollback keeps the outer transaction's changes. */
START_TEST(nested_rollback_keeps_the_outer_changes)
{
	inbox_qindex *q = inbox_qindex_new();
	inbox_qcand c[8];
	inbox_qmeta m;
	ck_assert_ptr_nonnull(q);
	ck_assert_int_eq(inbox_qindex_add(q, 5, 0, 1, 1, 1), SP_OK);
	size_t inner = inbox_qindex_mark(q);
	ck_assert_int_eq(inbox_qindex_add(q, 5, 0, 2, 2, 1), SP_OK);
	ck_assert_int_eq(inbox_qindex_remove(q, 5, 0, 1, 1, true), SP_OK);
	inbox_qindex_rollback(q, inner);
	inbox_qindex_meta(q, 5, &m);
	ck_assert_uint_eq(m.count, 1);
	ck_assert_uint_eq(m.last_seq, 1);
	ck_assert_uint_eq(cands(q, 5, 0, c, 8), 1);
	inbox_qindex_publish(q);
	inbox_qindex_committed(q, 5, &m);
	ck_assert_uint_eq(m.count, 1);
	ck_assert_uint_eq(m.last_seq, 1);
	inbox_qindex_free(q);
}
END_TEST

/* Many appends and removals from the front and the middle: order, paging and counters
 * hold through compaction. */
START_TEST(paging_survives_compaction)
{
	enum { N = 5000 };
	inbox_qindex *q = inbox_qindex_new();
	inbox_qcand c[64];
	inbox_qmeta m;
	ck_assert_ptr_nonnull(q);
	for (uint64_t s = 1; s <= N; s++)
		ck_assert_int_eq(inbox_qindex_add(q, 9, 0, s, s * 10, 1), SP_OK);
	inbox_qindex_publish(q);
	/* Remove the first 4000 and every third of the rest, in two transactions. */
	for (uint64_t s = 1; s <= 4000; s++)
		ck_assert_int_eq(inbox_qindex_remove(q, 9, 0, s, 1, true), SP_OK);
	inbox_qindex_publish(q);
	for (uint64_t s = 4001; s <= N; s++)
		if (s % 3 == 0)
			ck_assert_int_eq(inbox_qindex_remove(q, 9, 0, s, 1, true), SP_OK);
	inbox_qindex_publish(q);
	uint64_t after = 0, seen = 0, last = 0;
	bool more = true;
	while (more) {
		size_t n = inbox_qindex_candidates(q, 9, after, c, 64, &more);
		for (size_t i = 0; i < n; i++) {
			ck_assert_uint_gt(c[i].seq, last);
			ck_assert(c[i].seq > 4000 && c[i].seq % 3 != 0);
			ck_assert_uint_eq(c[i].key, c[i].seq * 10);
			last = c[i].seq;
			seen++;
		}
		after = last;
	}
	inbox_qindex_committed(q, 9, &m);
	ck_assert_uint_eq(seen, m.count);
	ck_assert_uint_eq(m.count, 1000 - 333);
	ck_assert_uint_eq(m.bytes, m.count);
	ck_assert_uint_eq(m.last_seq, N);
	inbox_qindex_free(q);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("inbox_qindex");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, views_follow_commit_and_rollback);
	tcase_add_test(tc, nested_rollback_keeps_the_outer_changes);
	tcase_add_test(tc, paging_survives_compaction);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
