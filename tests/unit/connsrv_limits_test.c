/* Unit tests of connsrv/limits.c without Redis: the setting parser, which buckets each
 * costly frame takes from, and the local buckets used while Redis is unreachable (the
 * Redis path is exercised by tests/integration/abuse_itest.c). */
#include <check.h>
#include <string.h>

#include <event2/event.h>

#include "connsrv/limits.h"
#include "sp_error.h"
#include "check_run.h"

START_TEST(parse_settings)
{
	cs_limit_rate r;
	ck_assert_int_eq(cs_limit_parse("200/s,2000", &r), SP_OK);
	ck_assert(r.per_ms > 0.1999 && r.per_ms < 0.2001);
	ck_assert(r.burst == 2000);
	ck_assert_int_eq(cs_limit_parse("2G/day", &r), SP_OK);
	ck_assert(r.burst == 2.0 * 1024 * 1024 * 1024);
	ck_assert(r.per_ms > 24.85 && r.per_ms < 24.86); /* 2 GiB / 86,400,000 ms */
	ck_assert_int_eq(cs_limit_parse("120/h", &r), SP_OK);
	ck_assert(r.burst == 120);
	ck_assert_int_eq(cs_limit_parse("10/min,5", &r), SP_OK);
	ck_assert(r.burst == 5);
	ck_assert_int_eq(cs_limit_parse("off", &r), SP_OK);
	ck_assert(r.per_ms == 0);
	ck_assert_int_eq(cs_limit_parse("0", &r), SP_OK);
	ck_assert(r.per_ms == 0);
	const char *bad[] = {"", "10", "10/", "10/week", "-1/s", "10/s,", "10/s,0", "10/s,5x",
			     "x/s", "0/s", "10/ss"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(cs_limit_parse(bad[i], &r) == SP_ECONFIG, "accepted '%s'", bad[i]);
}
END_TEST

START_TEST(frames_and_their_buckets)
{
	cs_admit_key src = {{4, 10, 0, 0, 1}};
	cs_limit_ask a[4];
	sp_frame f;
	uint8_t bytes[1000] = {0};
	uint64_t users[3] = {5, 6, 7};

	sp_frame_init(&f, SP_T_SEND, 1, true);
	ck_assert_uint_eq(cs_limits_asks(&f, 42, &src, a), 2);
	ck_assert(a[0].kind == CS_LIM_SEND && a[0].scope == CS_SCOPE_USER && a[0].id == 42);
	ck_assert(a[1].kind == CS_LIM_SEND && a[1].scope == CS_SCOPE_SOURCE && a[1].src == &src);

	sp_frame_fini(&f);
	sp_frame_init(&f, SP_T_MEDIA_PUT, 1, true);
	sp_frame_set_bin(&f, SP_F_BYTES, bytes, sizeof(bytes));
	ck_assert_uint_eq(cs_limits_asks(&f, 42, &src, a), 1);
	ck_assert(a[0].kind == CS_LIM_MEDIA_BYTES && a[0].cost == 1000);

	sp_frame_fini(&f);
	sp_frame_init(&f, SP_T_GROUP_CREATE, 1, true);
	sp_frame_set_u64s(&f, SP_F_USERS, users, 3);
	ck_assert_uint_eq(cs_limits_asks(&f, 42, &src, a), 2);
	ck_assert(a[0].kind == CS_LIM_GROUP && a[0].cost == 4); /* the group and 3 members */
	sp_frame_fini(&f);
	sp_frame_init(&f, SP_T_GROUP_ADD, 1, true);
	sp_frame_set_u64s(&f, SP_F_USERS, users, 2);
	ck_assert_uint_eq(cs_limits_asks(&f, 42, &src, a), 2);
	ck_assert(a[0].cost == 2);

	sp_frame_fini(&f);
	sp_frame_init(&f, SP_T_BUNDLE_GET, 1, true);
	sp_frame_set_u64(&f, SP_F_USER, 9);
	sp_frame_set_u64(&f, SP_F_DEVICE, 99);
	ck_assert_uint_eq(cs_limits_asks(&f, 42, &src, a), 3);
	ck_assert(a[2].kind == CS_LIM_BUNDLE_TARGET && a[2].scope == CS_SCOPE_TARGET);
	ck_assert(a[2].id == 99 && !a[2].target_user);
	sp_frame_fini(&f);
	sp_frame_init(&f, SP_T_BUNDLE_GET, 1, true);
	sp_frame_set_u64(&f, SP_F_USER, 9);
	ck_assert_uint_eq(cs_limits_asks(&f, 42, &src, a), 3);
	ck_assert(a[2].id == 9 && a[2].target_user);

	/* A keysrv write, a keysrv rules lookup: per user and per source. */
	const unsigned kinds[][2] = {{SP_T_PUSH_REGISTER, CS_LIM_PUSH_REGISTER},
				     {SP_T_PRESENCE_SUB, CS_LIM_PRESENCE},
				     {SP_T_PRESENCE_GET, CS_LIM_PRESENCE}};
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		sp_frame_fini(&f);
		sp_frame_init(&f, kinds[i][0], 1, true);
		ck_assert_uint_eq(cs_limits_asks(&f, 42, &src, a), 2);
		ck_assert(a[0].kind == (cs_limit_kind)kinds[i][1] && a[0].scope == CS_SCOPE_USER &&
			  a[0].id == 42 && a[0].cost == 1);
		ck_assert(a[1].kind == (cs_limit_kind)kinds[i][1] && a[1].scope == CS_SCOPE_SOURCE);
	}
	ck_assert_str_eq(cs_limit_kind_name(CS_LIM_PUSH_REGISTER), "push_register");
	ck_assert_str_eq(cs_limit_kind_name(CS_LIM_PRESENCE), "presence");

	sp_frame_fini(&f);
	sp_frame_init(&f, SP_T_ACK, 1, true);
	ck_assert_uint_eq(cs_limits_asks(&f, 42, &src, a), 0);
	sp_frame_fini(&f);
	sp_frame_init(&f, SP_T_TYPING, 1, true);
	ck_assert_uint_eq(cs_limits_asks(&f, 42, &src, a), 0);
	sp_frame_fini(&f);
}
END_TEST

/* Redis unreachable: the worker's own buckets decide (fail open, but still limited). */
START_TEST(local_buckets_without_redis)
{
	struct event_base *base = event_base_new();
	cs_limits_cfg cfg = {.max_entries = 16};
	ck_assert_int_eq(cs_limit_parse("1/h,3", &cfg.rate[CS_LIM_SEND][CS_SCOPE_USER]), SP_OK);
	ck_assert_int_eq(cs_limit_parse("1/h,100", &cfg.rate[CS_LIM_SEND][CS_SCOPE_SOURCE]), SP_OK);
	cs_routes *routes;
	cs_limits *l;
	ck_assert_int_eq(cs_routes_new(base, "127.0.0.1:1", NULL, NULL, 90, &routes), SP_OK);
	ck_assert_int_eq(cs_limits_new(base, routes, &cfg, &l), SP_OK);
	ck_assert(!cs_limits_connected(l));
	cs_admit_key src = {{4, 10, 0, 0, 1}};
	cs_limit_ask a[4];
	sp_frame f;
	sp_frame_init(&f, SP_T_SEND, 1, true);
	size_t n = cs_limits_asks(&f, 42, &src, a), which = 9;
	/* A full bucket of 3: three admitted, the fourth goes into debt, the fifth waits. */
	for (int i = 0; i < 4; i++)
		ck_assert_uint_eq(cs_limits_take(l, a, n, &which), 0);
	uint64_t wait = cs_limits_take(l, a, n, &which);
	ck_assert_uint_gt(wait, 3000000); /* one token an hour: most of an hour */
	ck_assert_uint_eq(which, 0);
	/* Another user from the same source is not refused. */
	n = cs_limits_asks(&f, 43, &src, a);
	ck_assert_uint_eq(cs_limits_take(l, a, n, &which), 0);
	/* An unlimited kind is never refused. */
	sp_frame_fini(&f);
	sp_frame_init(&f, SP_T_READ, 1, true);
	n = cs_limits_asks(&f, 42, &src, a);
	for (int i = 0; i < 10; i++)
		ck_assert_uint_eq(cs_limits_take(l, a, n, &which), 0);
	sp_frame_fini(&f);
	cs_routes_free(routes);
	cs_limits_free(l);
	event_base_free(base);
}
END_TEST

/* The limits borrow routes' connection: its address and credentials are checked there. */
START_TEST(bad_address_or_credentials)
{
	struct event_base *base = event_base_new();
	cs_routes *r;
	ck_assert_int_eq(cs_routes_new(base, "no-port", NULL, NULL, 90, &r), SP_ECONFIG);
	ck_assert_int_eq(cs_routes_new(base, "127.0.0.1:1", "user", "", 90, &r), SP_ECONFIG);
	event_base_free(base);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("connsrv_limits");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, parse_settings);
	tcase_add_test(tc, frames_and_their_buckets);
	tcase_add_test(tc, local_buckets_without_redis);
	tcase_add_test(tc, bad_address_or_credentials);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
