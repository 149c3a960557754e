/* Unit tests of the in-memory dedup index (inboxsrv/dedup.c): fingerprint candidates are
 * confirmed by the caller, deletion keeps probe runs intact (also across the table's end),
 * growth, and undo marks that roll it back to any earlier state. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "inboxsrv/dedup.h"
#include "sp_error.h"
#include "check_run.h"

/* Match callback: accepts only the record whose seq is *arg. */
static bool
match_seq(void *arg, uint64_t ts, uint64_t seq)
{
	(void)ts;
	return seq == *(uint64_t *)arg;
}

static bool
has(inbox_dedup *d, uint64_t fp, uint64_t seq)
{
	uint64_t ts, got;
	return inbox_dedup_find(d, fp, match_seq, &seq, &ts, &got) && got == seq;
}

START_TEST(fingerprint_hits_are_only_candidates)
{
	inbox_dedup *d = inbox_dedup_new(0);
	ck_assert_ptr_nonnull(d);
	/* Two records share a fingerprint (a collision): each is found only by its own key. */
	ck_assert_int_eq(inbox_dedup_insert(d, 77, 10, 1), SP_OK);
	ck_assert_int_eq(inbox_dedup_insert(d, 77, 11, 2), SP_OK);
	ck_assert(has(d, 77, 1));
	ck_assert(has(d, 77, 2));
	ck_assert(!has(d, 77, 3));
	ck_assert(!has(d, 78, 1));
	uint64_t ts, seq, want = 2;
	ck_assert(inbox_dedup_find(d, 77, match_seq, &want, &ts, &seq));
	ck_assert_uint_eq(ts, 11);
	ck_assert_int_eq(inbox_dedup_remove(d, 77, 10, 1, true), SP_OK);
	ck_assert(!has(d, 77, 1));
	ck_assert(has(d, 77, 2));
	ck_assert_uint_eq(inbox_dedup_count(d), 1);
	/* The fingerprint depends on every part of the key. */
	uint8_t id[16] = { 1 }, id2[16] = { 2 };
	uint64_t f = inbox_dedup_fp(d, 1, 2, id);
	ck_assert_uint_eq(f, inbox_dedup_fp(d, 1, 2, id));
	ck_assert_uint_ne(f, inbox_dedup_fp(d, 2, 2, id));
	ck_assert_uint_ne(f, inbox_dedup_fp(d, 1, 3, id));
	ck_assert_uint_ne(f, inbox_dedup_fp(d, 1, 2, id2));
	inbox_dedup_free(d);
}
END_TEST

START_TEST(deletion_keeps_runs_across_the_end)
{
	inbox_dedup *d = inbox_dedup_new(0);
	ck_assert_ptr_nonnull(d);
	/* The table has 65536 slots; fingerprints aimed at its last slots wrap to the start. */
	const uint64_t last = 65535;
	uint64_t fps[] = { last - 1, last, last - 1, last, 0x10000 | last, 1 << 20, 2 };
	size_t n = sizeof(fps) / sizeof(fps[0]);
	for (size_t i = 0; i < n; i++)
		ck_assert_int_eq(inbox_dedup_insert(d, fps[i], 0, i + 1), SP_OK);
	inbox_dedup_settle(d);
	/* Remove each one in turn (from a fresh copy of the state via rollback), and check
	 * every other one is still found. */
	for (size_t k = 0; k < n; k++) {
		size_t mark = inbox_dedup_mark(d);
		ck_assert_int_eq(inbox_dedup_remove(d, fps[k], 0, k + 1, true), SP_OK);
		for (size_t i = 0; i < n; i++)
			ck_assert(has(d, fps[i], i + 1) == (i != k));
		inbox_dedup_rollback(d, mark);
		for (size_t i = 0; i < n; i++)
			ck_assert(has(d, fps[i], i + 1));
	}
	inbox_dedup_free(d);
}
END_TEST

/* Spread over the table, with some keys sharing a fingerprint. */
static uint64_t
key_fp(uint64_t k)
{
	return ((k / 2) * 2654435761u & 0xffffffu) + 1;
}

/* A random walk of inserts, removes, marks and rollbacks against a plain array model. */
START_TEST(matches_a_model_through_growth_and_rollbacks)
{
	enum { N = 200000, KEYS = 150000 };
	inbox_dedup *d = inbox_dedup_new(0);
	uint8_t *in = calloc(KEYS, 1), *saved = malloc(KEYS);
	ck_assert_ptr_nonnull(d);
	ck_assert_ptr_nonnull(in);
	ck_assert_ptr_nonnull(saved);
	size_t count = 0, saved_count = 0, mark = 0;
	bool open = false;
	srandom(7);
	for (int step = 0; step < N; step++) {
		uint64_t k = (uint64_t)random() % KEYS;
		uint64_t fp = key_fp(k);
		int r = (int)(random() % 100);
		if (r < 60 && !in[k]) {
			ck_assert_int_eq(inbox_dedup_insert(d, fp, k * 3, k), SP_OK);
			in[k] = 1;
			count++;
		} else if (r < 90 && in[k]) {
			ck_assert_int_eq(inbox_dedup_remove(d, fp, k * 3, k, true), SP_OK);
			in[k] = 0;
			count--;
		} else if (r < 95 && !open) {
			mark = inbox_dedup_mark(d);
			memcpy(saved, in, KEYS);
			saved_count = count;
			open = true;
		} else if (open) {
			if (r % 2) {
				inbox_dedup_rollback(d, mark);
				memcpy(in, saved, KEYS);
				count = saved_count;
			} else {
				inbox_dedup_settle(d);
			}
			open = false;
		}
		ck_assert_uint_eq(inbox_dedup_count(d), count);
	}
	for (uint64_t k = 0; k < KEYS; k++)
		ck_assert(has(d, key_fp(k), k) == (bool)in[k]);
	ck_assert_uint_gt(inbox_dedup_bytes(d), 65536 * 24);
	free(in);
	free(saved);
	inbox_dedup_free(d);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("inbox_dedup");
	TCase *tc = tcase_create("core");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, fingerprint_hits_are_only_candidates);
	tcase_add_test(tc, deletion_keeps_runs_across_the_end);
	tcase_add_test(tc, matches_a_model_through_growth_and_rollbacks);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
