/* keysrv deduplicated writes (keysrv/replies.h): a GROUP_CREATE retried with its request id
 * gets the first group back (after a failover connsrv sends the same id to the new
 * primary); another id, or another caller with the same id, creates a new group; a request
 * without an id is never deduplicated. The reply survives a restart of the store. */
#include <check.h>
#include <string.h>

#include "keysrv_harness.h"
#include "check_run.h"

static kt_env env;
static kt_device alice, bob;

static void
setup(void)
{
	ck_assert_int_eq(kt_env_open(&env), SP_OK);
	kt_device_new(&alice);
	kt_device_new(&bob);
	ck_assert_int_eq(kt_register(&env, "+14155554001", &alice), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155554002", &bob), SP_OK);
}

static void
teardown(void)
{
	kt_env_close(&env, true);
}

static int
create(const kt_device *by, const uint8_t *req_id, uint64_t *group, uint64_t *epoch)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_CREATE, 9, true);
	sp_frame_set_str(&f, SP_F_GROUP_NAME, "retried");
	sp_frame_set_u64s(&f, SP_F_USERS, &bob.user, 1);
	if (req_id)
		sp_frame_set_bin(&f, SP_F_REQ_ID, req_id, 16);
	kt_set_auth(&f, by);
	int rc = kt_call(&env, &f);
	if (rc == SP_OK) {
		ck_assert_uint_eq(env.r.out.type, SP_T_GROUP_R);
		ck_assert_uint_eq(env.r.out.id, 9);
		ck_assert(env.r.out.has_id);
		*group = sp_frame_u64(&env.r.out, SP_F_GROUP);
		*epoch = sp_frame_u64(&env.r.out, SP_F_EPOCH);
	}
	return rc;
}

static uint32_t
members(const kt_device *by, uint64_t group)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_INFO, 3, true);
	sp_frame_set_u64(&f, SP_F_GROUP, group);
	kt_set_auth(&f, by);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	const sp_val *v = sp_frame_get(&env.r.out, SP_F_GROUP_MEMBERS);
	return v ? v->rs.n : 0;
}

START_TEST(group_create_retry_same_group)
{
	uint8_t id1[16], id2[16];
	memset(id1, 0x31, sizeof(id1));
	memset(id2, 0x32, sizeof(id2));
	sp_metric *replayed = sp_metric_counter("keysrv_replies_replayed_total", "");
	int64_t r0 = sp_metric_value(replayed);
	uint64_t g1, e1, g, e;

	ck_assert_int_eq(create(&alice, id1, &g1, &e1), SP_OK);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(create(&alice, id1, &g, &e), SP_OK);
		ck_assert_uint_eq(g, g1);
		ck_assert_uint_eq(e, e1);
	}
	ck_assert_int_eq(sp_metric_value(replayed) - r0, 3);
	ck_assert_uint_eq(members(&alice, g1), 2);

	/* A new id, another caller with the same id, or no id at all: a new group each. */
	uint64_t g2, g3, g4, g5;
	ck_assert_int_eq(create(&alice, id2, &g2, &e), SP_OK);
	ck_assert_int_eq(create(&bob, id1, &g3, &e), SP_OK);
	ck_assert_int_eq(create(&alice, NULL, &g4, &e), SP_OK);
	ck_assert_int_eq(create(&alice, NULL, &g5, &e), SP_OK);
	ck_assert_uint_ne(g2, g1);
	ck_assert_uint_ne(g3, g1);
	ck_assert_uint_ne(g3, g2);
	ck_assert_uint_ne(g4, g5);
	ck_assert_int_eq(sp_metric_value(replayed) - r0, 3);

	/* The stored reply is in the store, not in memory. */
	kt_env_close(&env, false);
	keys_ctx_cfg cfg = kt_default_cfg(&env);
	ck_assert_int_eq(kt_env_open_cfg(&env, &cfg), SP_OK);
	ck_assert_int_eq(create(&alice, id1, &g, &e), SP_OK);
	ck_assert_uint_eq(g, g1);
	ck_assert_int_eq(sp_metric_value(replayed) - r0, 4);
}
END_TEST

/* A failed creation stores nothing: its retry runs again (and may succeed). */
START_TEST(failed_create_not_stored)
{
	uint8_t id[16];
	memset(id, 0x41, sizeof(id));
	uint64_t unknown = bob.user + 1000, g, e;
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_CREATE, 9, true);
	sp_frame_set_str(&f, SP_F_GROUP_NAME, "bad");
	sp_frame_set_u64s(&f, SP_F_USERS, &unknown, 1);
	sp_frame_set_bin(&f, SP_F_REQ_ID, id, 16);
	kt_set_auth(&f, &alice);
	ck_assert_int_ne(kt_call(&env, &f), SP_OK);
	ck_assert_int_eq(create(&alice, id, &g, &e), SP_OK);
	ck_assert_uint_eq(members(&alice, g), 2);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("keysrv_replies");
	TCase *tc = tcase_create("replies");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, group_create_retry_same_group);
	tcase_add_test(tc, failed_create_not_stored);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
