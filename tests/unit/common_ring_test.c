/* Consistent-hash ring: balance, movement when a shard joins, determinism, replicas. */
#include <check.h>
#include <stdlib.h>

#include "sp_error.h"
#include "sp_ring.h"
#include "check_run.h"
#include "test_rng.h"

#define NIDS 1000000

/* Device ids are random 64-bit numbers: a fixed-seed xorshift stands in for them. */
static uint64_t
next_id(uint64_t *s)
{
	return test_rng_next(s);
}

START_TEST(test_balance_three_shards)
{
	const char *m[] = {"inbox-0", "inbox-1", "inbox-2"};
	sp_ring *r;
	ck_assert_int_eq(sp_ring_new(1, m, 3, SP_RING_DEFAULT_VNODES, &r), SP_OK);
	long count[3] = {0};
	uint64_t s = 0x9e3779b97f4a7c15ULL;
	for (int i = 0; i < NIDS; i++) {
		int o, rep;
		ck_assert_int_eq(sp_ring_lookup_u64(r, next_id(&s), &o, &rep), SP_OK);
		ck_assert(o >= 0 && o < 3 && rep >= 0 && rep < 3 && rep != o);
		count[o]++;
	}
	for (int i = 0; i < 3; i++) {
		double share = (double)count[i] / NIDS;
		ck_assert_msg(share > (1.0 / 3) * 0.9 && share < (1.0 / 3) * 1.1, "shard %d has %.4f", i, share);
	}
	sp_ring_free(r);
}
END_TEST

START_TEST(test_fourth_shard_moves_only_to_it)
{
	const char *m3[] = {"inbox-0", "inbox-1", "inbox-2"};
	const char *m4[] = {"inbox-0", "inbox-1", "inbox-2", "inbox-3"};
	sp_ring *a, *b;
	ck_assert_int_eq(sp_ring_new(1, m3, 3, SP_RING_DEFAULT_VNODES, &a), SP_OK);
	ck_assert_int_eq(sp_ring_new(2, m4, 4, SP_RING_DEFAULT_VNODES, &b), SP_OK);
	ck_assert(sp_ring_epoch(b) == 2);
	long moved = 0;
	uint64_t s = 12345;
	for (int i = 0; i < NIDS; i++) {
		uint64_t id = next_id(&s);
		int oa, ob, ra, rb;
		sp_ring_lookup_u64(a, id, &oa, &ra);
		sp_ring_lookup_u64(b, id, &ob, &rb);
		if (oa != ob) {
			ck_assert_msg(ob == 3, "id moved from %d to %d, not to the new shard", oa, ob);
			moved++;
		}
	}
	double frac = (double)moved / NIDS;
	ck_assert_msg(frac > 0.20 && frac < 0.275, "moved %.4f of ids", frac);
	sp_ring_free(a);
	sp_ring_free(b);
}
END_TEST

START_TEST(test_order_of_members_does_not_matter)
{
	const char *m1[] = {"a", "b", "c"};
	const char *m2[] = {"c", "a", "b"};
	sp_ring *x, *y;
	ck_assert_int_eq(sp_ring_new(7, m1, 3, 64, &x), SP_OK);
	ck_assert_int_eq(sp_ring_new(7, m2, 3, 64, &y), SP_OK);
	for (uint64_t id = 0; id < 20000; id++) {
		int ox, oy, rx, ry;
		sp_ring_lookup_u64(x, id, &ox, &rx);
		sp_ring_lookup_u64(y, id, &oy, &ry);
		ck_assert_str_eq(sp_ring_member(x, ox), sp_ring_member(y, oy));
		ck_assert_str_eq(sp_ring_member(x, rx), sp_ring_member(y, ry));
	}
	sp_ring_free(x);
	sp_ring_free(y);
}
END_TEST

START_TEST(test_edge_cases)
{
	const char *one[] = {"solo"};
	const char *dup[] = {"x", "x"};
	sp_ring *r;
	int o, rep;
	ck_assert_int_eq(sp_ring_new(1, dup, 2, 16, &r), SP_EINVAL);
	ck_assert_int_eq(sp_ring_new(1, one, 1, 0, &r), SP_EINVAL);
	ck_assert_int_eq(sp_ring_new(1, one, 1, 16, &r), SP_OK);
	ck_assert_int_eq(sp_ring_lookup(r, "blob", 4, &o, &rep), SP_OK);
	ck_assert_int_eq(o, 0);
	ck_assert_int_eq(rep, -1);
	sp_ring_free(r);
	ck_assert_int_eq(sp_ring_new(1, NULL, 0, 16, &r), SP_OK);
	ck_assert_int_eq(sp_ring_lookup(r, "blob", 4, &o, &rep), SP_EINVAL);
	sp_ring_free(r);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("ring");
	TCase *tc = tcase_create("ring");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_balance_three_shards);
	tcase_add_test(tc, test_fourth_shard_moves_only_to_it);
	tcase_add_test(tc, test_order_of_members_does_not_matter);
	tcase_add_test(tc, test_edge_cases);
	suite_add_tcase(s, tc);
	return check_run(s);
}
