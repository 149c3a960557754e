/* keysrv groups: admin checks, epochs, the 1024-member limit, leaving (admin handover,
 * deletion), member listing in pages, and the device list connsrv fans out to. */
#include <check.h>

#include "keysrv_harness.h"
#include "check_run.h"

static kt_env env;
static kt_device alice, bob, carol;

static void
setup(void)
{
	ck_assert_int_eq(kt_env_open(&env), SP_OK);
	kt_device_new(&alice);
	kt_device_new(&bob);
	kt_device_new(&carol);
	ck_assert_int_eq(kt_register(&env, "+14155553001", &alice), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155553002", &bob), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155553003", &carol), SP_OK);
}

static void
teardown(void)
{
	kt_env_close(&env, true);
}

static int
create(const kt_device *by, const uint64_t *users, uint32_t n, uint64_t *group)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_CREATE, 1, true);
	sp_frame_set_str(&f, SP_F_GROUP_NAME, "friends");
	if (n)
		sp_frame_set_u64s(&f, SP_F_USERS, users, n);
	kt_set_auth(&f, by);
	int rc = kt_call(&env, &f);
	if (rc == SP_OK)
		*group = sp_frame_u64(&env.r.out, SP_F_GROUP);
	return rc;
}

/* GROUP_ADD / GROUP_REMOVE / GROUP_ADMIN with a user list; returns the code, epoch in *ep. */
static int
change(unsigned type, const kt_device *by, uint64_t group, const uint64_t *users, uint32_t n,
    uint64_t *ep)
{
	sp_frame f;
	sp_frame_init(&f, type, 2, true);
	sp_frame_set_u64(&f, SP_F_GROUP, group);
	if (type != SP_T_GROUP_LEAVE)
		sp_frame_set_u64s(&f, SP_F_USERS, users, n);
	if (type == SP_T_GROUP_ADMIN)
		sp_frame_set_bool(&f, SP_F_ADMIN, true);
	kt_set_auth(&f, by);
	int rc = kt_call(&env, &f);
	if (rc == SP_OK && ep)
		*ep = sp_frame_u64(&env.r.out, SP_F_EPOCH);
	return rc;
}

static int
info(const kt_device *by, uint64_t group, const uint64_t *after)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_INFO, 3, true);
	sp_frame_set_u64(&f, SP_F_GROUP, group);
	if (after)
		sp_frame_set_u64(&f, SP_F_AFTER_USER, *after);
	kt_set_auth(&f, by);
	return kt_call(&env, &f);
}

static int
fanout(uint64_t user, uint64_t group)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_DEVICES, 4, true);
	sp_frame_set_u64(&f, SP_F_GROUP, group);
	sp_frame_set_u64(&f, SP_F_AUTH_USER, user);
	return kt_call(&env, &f);
}

static bool
member_admin(uint64_t user)
{
	const sp_val *m = sp_frame_get(&env.r.out, SP_F_GROUP_MEMBERS);
	for (uint32_t i = 0; i < m->rs.n; i++)
		if (sp_frame_u64(&m->rs.v[i], SP_F_USER) == user)
			return sp_frame_u64(&m->rs.v[i], SP_F_ADMIN) != 0;
	ck_abort_msg("not a member");
	return false;
}

START_TEST(admin_checks_and_epochs)
{
	uint64_t g, ep, ep2;
	uint64_t b[1] = {bob.user}, c[1] = {carol.user};
	ck_assert_int_eq(create(&alice, b, 1, &g), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_EPOCH), 1);
	/* Bob is a member but not an admin. */
	ck_assert_int_eq(change(SP_T_GROUP_ADD, &bob, g, c, 1, NULL), SP_EPERM);
	ck_assert_int_eq(change(SP_T_GROUP_REMOVE, &bob, g, &alice.user, 1, NULL), SP_EPERM);
	ck_assert_int_eq(change(SP_T_GROUP_ADMIN, &bob, g, b, 1, NULL), SP_EPERM);
	/* Carol is not a member at all. */
	ck_assert_int_eq(change(SP_T_GROUP_ADD, &carol, g, c, 1, NULL), SP_EPERM);
	ck_assert_int_eq(info(&carol, g, NULL), SP_EPERM);
	ck_assert_int_eq(fanout(carol.user, g), SP_EPERM);
	ck_assert_int_eq(change(SP_T_GROUP_ADD, &alice, g + 1, c, 1, NULL), SP_ENOTFOUND);

	ck_assert_int_eq(change(SP_T_GROUP_ADD, &alice, g, c, 1, &ep), SP_OK);
	ck_assert_uint_eq(ep, 2);
	/* Adding again changes nothing: same epoch. */
	ck_assert_int_eq(change(SP_T_GROUP_ADD, &alice, g, c, 1, &ep2), SP_OK);
	ck_assert_uint_eq(ep2, 2);
	uint64_t ghost = 42;
	ck_assert_int_eq(change(SP_T_GROUP_ADD, &alice, g, &ghost, 1, NULL), SP_ENOTFOUND);
	ck_assert_int_eq(change(SP_T_GROUP_ADMIN, &alice, g, b, 1, &ep), SP_OK);
	ck_assert_uint_eq(ep, 3);
	/* Now Bob may remove Carol. */
	ck_assert_int_eq(change(SP_T_GROUP_REMOVE, &bob, g, c, 1, &ep), SP_OK);
	ck_assert_uint_eq(ep, 4);
	ck_assert_int_eq(info(&carol, g, NULL), SP_EPERM);
	ck_assert_int_eq(info(&alice, g, NULL), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 2);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_EPOCH), 4);
	ck_assert(member_admin(alice.user));
	ck_assert(member_admin(bob.user));
	/* The device id of the caller is checked as for any request. */
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_INFO, 3, true);
	sp_frame_set_u64(&f, SP_F_GROUP, g);
	sp_frame_set_u64(&f, SP_F_AUTH_USER, alice.user);
	sp_frame_set_u64(&f, SP_F_AUTH_DEVICE, bob.device);
	ck_assert_int_eq(kt_call(&env, &f), SP_EAUTH);
}
END_TEST

START_TEST(leave_and_handover)
{
	uint64_t g, ep;
	uint64_t bc[2] = {bob.user, carol.user};
	ck_assert_int_eq(create(&alice, bc, 2, &g), SP_OK);
	ck_assert_int_eq(change(SP_T_GROUP_LEAVE, &alice, g, NULL, 0, &ep), SP_OK);
	ck_assert_uint_eq(ep, 2);
	ck_assert_int_eq(info(&bob, g, NULL), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 2);
	/* The member with the lowest id took over as admin. */
	uint64_t heir = bob.user < carol.user ? bob.user : carol.user;
	ck_assert(member_admin(heir));
	ck_assert(!member_admin(heir == bob.user ? carol.user : bob.user));
	ck_assert_int_eq(change(SP_T_GROUP_LEAVE, &alice, g, NULL, 0, NULL), SP_EPERM);
	ck_assert_int_eq(change(SP_T_GROUP_LEAVE, &bob, g, NULL, 0, NULL), SP_OK);
	ck_assert_int_eq(change(SP_T_GROUP_LEAVE, &carol, g, NULL, 0, NULL), SP_OK);
	/* Empty: gone. */
	ck_assert_int_eq(info(&carol, g, NULL), SP_ENOTFOUND);
}
END_TEST

START_TEST(last_admin_kept)
{
	uint64_t g;
	uint64_t b[1] = {bob.user};
	ck_assert_int_eq(create(&alice, b, 1, &g), SP_OK);
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_ADMIN, 2, true);
	sp_frame_set_u64(&f, SP_F_GROUP, g);
	sp_frame_set_u64s(&f, SP_F_USERS, &alice.user, 1);
	sp_frame_set_bool(&f, SP_F_ADMIN, false);
	kt_set_auth(&f, &alice);
	ck_assert_int_eq(kt_call(&env, &f), SP_ESTATE);
}
END_TEST

START_TEST(member_limit_and_fanout)
{
	/* Member user ids need accounts: make them cheaply through the store. */
	enum { EXTRA = 1100 };
	static uint64_t users[EXTRA];
	MDB_txn *txn;
	ck_assert_int_eq(keys_store_begin(env.ctx->store, true, &txn), SP_OK);
	for (int i = 0; i < EXTRA; i++) {
		keys_user u;
		memset(&u, 0, sizeof(u));
		ck_assert_int_eq(keys_store_new_id(env.ctx->store, txn, KDB_USERS, &u.id), SP_OK);
		snprintf(u.phone, sizeof(u.phone), "+1999%07d", i);
		u.ndevices = 1;
		u.devices[0] = u.id ^ 1;
		u.primary = u.devices[0];
		ck_assert_int_eq(keys_user_put(env.ctx->store, txn, &u), SP_OK);
		users[i] = u.id;
	}
	ck_assert_int_eq(keys_store_commit(txn), SP_OK);

	uint64_t g, ep;
	/* 1024 with the creator is fine, 1025 is not, and a failed add changes nothing. */
	ck_assert_int_eq(create(&alice, users, 1024, &g), SP_ELIMIT);
	ck_assert_int_eq(create(&alice, users, 1023, &g), SP_OK);
	ck_assert_int_eq(change(SP_T_GROUP_ADD, &alice, g, &bob.user, 1, NULL), SP_ELIMIT);
	ck_assert_int_eq(info(&alice, g, NULL), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 1024);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_EPOCH), 1);
	ck_assert_int_eq(change(SP_T_GROUP_REMOVE, &alice, g, &users[0], 1, &ep), SP_OK);
	ck_assert_int_eq(change(SP_T_GROUP_ADD, &alice, g, &bob.user, 1, &ep), SP_OK);
	ck_assert_uint_eq(ep, 3);

	/* Pages of 256 cover every member once. */
	uint64_t after = 0;
	uint32_t total = 0, pages = 0;
	bool more = true, have_after = false;
	while (more) {
		ck_assert_int_eq(info(&bob, g, have_after ? &after : NULL), SP_OK);
		const sp_val *m = sp_frame_get(&env.r.out, SP_F_GROUP_MEMBERS);
		for (uint32_t i = 0; i < m->rs.n; i++) {
			uint64_t u = sp_frame_u64(&m->rs.v[i], SP_F_USER);
			ck_assert(!have_after || u > after);
			after = u;
			have_after = true;
			ck_assert_uint_eq(sp_frame_get(&m->rs.v[i], SP_F_DEVICES)->us.n, 1);
		}
		total += m->rs.n;
		pages++;
		more = sp_frame_u64(&env.r.out, SP_F_MORE) != 0;
	}
	ck_assert_uint_eq(total, 1024);
	ck_assert_uint_eq(pages, 4);

	/* Fan-out: one device per member here. */
	ck_assert_int_eq(fanout(bob.user, g), SP_OK);
	ck_assert_uint_eq(sp_frame_get(&env.r.out, SP_F_DEVICES)->us.n, 1024);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_EPOCH), 3);
}
END_TEST

START_TEST(fanout_follows_devices)
{
	uint64_t g;
	uint64_t b[1] = {bob.user};
	kt_device bob2;
	kt_device_new(&bob2);
	ck_assert_int_eq(create(&alice, b, 1, &g), SP_OK);
	ck_assert_int_eq(kt_link(&env, &bob, &bob2), SP_OK);
	ck_assert_int_eq(fanout(alice.user, g), SP_OK);
	const sp_val *d = sp_frame_get(&env.r.out, SP_F_DEVICES);
	ck_assert_uint_eq(d->us.n, 3);
	bool seen = false;
	for (uint32_t i = 0; i < d->us.n; i++)
		seen |= d->us.v[i] == bob2.device;
	ck_assert(seen);
	/* GROUP_DEVICES needs a caller. */
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_DEVICES, 4, true);
	sp_frame_set_u64(&f, SP_F_GROUP, g);
	sp_frame_set_u64(&f, SP_F_AUTH_USER, 0);
	ck_assert_int_eq(kt_call(&env, &f), SP_EAUTH);
}
END_TEST

START_TEST(restart_keeps_groups)
{
	uint64_t g;
	uint64_t b[1] = {bob.user};
	ck_assert_int_eq(create(&alice, b, 1, &g), SP_OK);
	kt_env_close(&env, false);
	keys_ctx_cfg cfg = kt_default_cfg(&env);
	ck_assert_int_eq(kt_env_open_cfg(&env, &cfg), SP_OK);
	ck_assert_int_eq(info(&bob, g, NULL), SP_OK);
	char name[32];
	ck_assert_int_eq(sp_frame_str(&env.r.out, SP_F_GROUP_NAME, name, sizeof(name)), SP_OK);
	ck_assert_str_eq(name, "friends");
	ck_assert(member_admin(alice.user));
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("keysrv_groups");
	TCase *tc = tcase_create("groups");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, admin_checks_and_epochs);
	tcase_add_test(tc, leave_and_handover);
	tcase_add_test(tc, last_admin_kept);
	tcase_add_test(tc, member_limit_and_fanout);
	tcase_add_test(tc, fanout_follows_devices);
	tcase_add_test(tc, restart_keeps_groups);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
