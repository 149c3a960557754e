/* Presence and privacy: the reciprocal rule (keysrv/settings.c), what a viewer is shown
 * under a rule (connsrv/presence.c), and keysrv's settings, contact sets, PRESENCE_RULES
 * and the group_add check through the real handlers on a real store (also across a
 * restart). */
#include <check.h>

#include "check_run.h"
#include "connsrv/presence.h"
#include "keysrv/settings.h"
#include "keysrv_harness.h"

static kt_env env;
static kt_device alice, bob, carol;

static void
setup(void)
{
	ck_assert_int_eq(kt_env_open(&env), SP_OK);
	kt_device_new(&alice);
	kt_device_new(&bob);
	kt_device_new(&carol);
	ck_assert_int_eq(kt_register(&env, "+14155554001", &alice), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155554002", &bob), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155554003", &carol), SP_OK);
}

static void
teardown(void)
{
	kt_env_close(&env, true);
}

static unsigned
rule(uint8_t t_ls, uint8_t t_on, bool v_in_t, uint8_t v_ls, uint8_t v_on, bool t_in_v)
{
	keys_privacy t = {.last_seen = t_ls, .online = t_on}, v = {.last_seen = v_ls, .online = v_on};
	return keys_settings_rule(&t, v_in_t, &v, t_in_v);
}

#define EXACT (KEYS_LS_EXACT << KEYS_RULE_LS_SHIFT)
#define COARSE (KEYS_LS_COARSE << KEYS_RULE_LS_SHIFT)
enum { E = KEYS_PRIV_EVERYONE, C = KEYS_PRIV_CONTACTS, N = KEYS_PRIV_NOBODY };

START_TEST(reciprocal_rule)
{
	ck_assert_uint_eq(rule(E, E, false, E, E, false), KEYS_RULE_ONLINE | EXACT);
	/* The target's setting: contacts only. */
	ck_assert_uint_eq(rule(C, C, false, E, E, false), 0);
	ck_assert_uint_eq(rule(C, C, true, E, E, false), KEYS_RULE_ONLINE | EXACT);
	ck_assert_uint_eq(rule(N, N, true, E, E, true), 0);
	/* Reciprocal: the viewer who hides its last seen gets only the coarse answer, and
	 * one who hides its online state sees no one's. */
	ck_assert_uint_eq(rule(E, E, false, N, E, false), KEYS_RULE_ONLINE | COARSE);
	ck_assert_uint_eq(rule(E, E, false, E, N, false), EXACT);
	ck_assert_uint_eq(rule(E, E, false, C, C, false), COARSE);
	ck_assert_uint_eq(rule(E, E, false, C, C, true), KEYS_RULE_ONLINE | EXACT);
	/* Hidden by the target: nothing, whatever the viewer shares. */
	ck_assert_uint_eq(rule(N, N, false, N, N, false), 0);
	/* connsrv reads the same bits. */
	ck_assert_uint_eq(CS_PRES_ONLINE, KEYS_RULE_ONLINE);
	ck_assert_uint_eq(CS_PRES_LS(EXACT), KEYS_LS_EXACT);
	ck_assert_uint_eq(CS_PRES_LS(COARSE | KEYS_RULE_ONLINE), KEYS_LS_COARSE);
}
END_TEST

START_TEST(view)
{
	cs_presence_shown v;
	uint64_t now = 1700000000000ULL, hour = 3600000ULL;
	ck_assert(cs_presence_view(KEYS_RULE_ONLINE | EXACT, false, now - hour, now, &v));
	ck_assert(v.has_online && !v.online && v.has_last_seen && v.last_seen == now - hour && !v.recent);
	ck_assert(cs_presence_view(KEYS_RULE_ONLINE, true, now - hour, now, &v));
	ck_assert(v.has_online && v.online && !v.has_last_seen && !v.recent);
	/* Coarse: "recently" within 3 days (or while online), nothing after. */
	ck_assert(cs_presence_view(COARSE, false, now - 71 * hour, now, &v));
	ck_assert(v.recent && !v.has_last_seen && !v.has_online);
	ck_assert(!cs_presence_view(COARSE, false, now - 73 * hour, now, &v));
	ck_assert(cs_presence_view(COARSE, true, 0, now, &v) && v.recent);
	/* Unknown last seen, or nothing allowed: nothing shown. */
	ck_assert(!cs_presence_view(EXACT, false, 0, now, &v));
	ck_assert(!cs_presence_view(0, true, now, now, &v));
	/* A last seen from the future (clock skew between workers) is not "recent" by
	 * wrap-around. */
	ck_assert(!cs_presence_view(COARSE, false, now + hour, now, &v));
}
END_TEST

static int
privacy(const kt_device *d, int ls, int on, int ga)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_PRIVACY_SET, 1, true);
	if (ls >= 0)
		sp_frame_set_u64(&f, SP_F_PRIV_LAST_SEEN, (uint64_t)ls);
	if (on >= 0)
		sp_frame_set_u64(&f, SP_F_PRIV_ONLINE, (uint64_t)on);
	if (ga >= 0)
		sp_frame_set_u64(&f, SP_F_PRIV_GROUP_ADD, (uint64_t)ga);
	kt_set_auth(&f, d);
	return kt_call(&env, &f);
}

static int
contacts(const kt_device *d, const uint64_t *add, uint32_t nadd, const uint64_t *del, uint32_t ndel)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_CONTACTS_EDIT, 1, true);
	if (nadd)
		sp_frame_set_u64s(&f, SP_F_CONTACTS_ADD, add, nadd);
	if (ndel)
		sp_frame_set_u64s(&f, SP_F_CONTACTS_DEL, del, ndel);
	kt_set_auth(&f, d);
	return kt_call(&env, &f);
}

static uint64_t
rules_of(const kt_device *viewer, uint64_t target)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_PRESENCE_RULES, 1, true);
	sp_frame_set_u64s(&f, SP_F_PRES_USERS, &target, 1);
	sp_frame_set_u64(&f, SP_F_AUTH_USER, viewer->user);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	const sp_val *v = sp_frame_get(&env.r.out, SP_F_PRES_RULES);
	ck_assert(v && v->us.n == 1);
	return v->us.v[0];
}

static int
group_create(const kt_device *by, uint64_t user)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_CREATE, 1, true);
	sp_frame_set_str(&f, SP_F_GROUP_NAME, "g");
	sp_frame_set_u64s(&f, SP_F_USERS, &user, 1);
	kt_set_auth(&f, by);
	return kt_call(&env, &f);
}

START_TEST(settings_contacts_and_rules)
{
	/* Defaults: everyone, no contacts. */
	ck_assert_int_eq(privacy(&alice, -1, -1, -1), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_PRIV_LAST_SEEN), E);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 0);
	ck_assert_uint_eq(rules_of(&bob, alice.user), KEYS_RULE_ONLINE | EXACT);
	/* Out of range refused, nothing changed. */
	ck_assert_int_eq(privacy(&alice, 3, -1, -1), SP_EINVAL);
	ck_assert_int_eq(privacy(&alice, -1, -1, N), SP_EINVAL);

	ck_assert_int_eq(privacy(&alice, C, C, -1), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_PRIV_ONLINE), C);
	ck_assert_uint_eq(rules_of(&bob, alice.user), 0);
	uint64_t add[3] = {bob.user, bob.user, alice.user}; /* a duplicate and itself: ignored */
	ck_assert_int_eq(contacts(&alice, add, 3, NULL, 0), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 1);
	ck_assert_uint_eq(rules_of(&bob, alice.user), KEYS_RULE_ONLINE | EXACT);
	ck_assert_uint_eq(rules_of(&carol, alice.user), 0);
	/* Reciprocal: bob hides his last seen from everyone. */
	ck_assert_int_eq(privacy(&bob, N, -1, -1), SP_OK);
	ck_assert_uint_eq(rules_of(&bob, alice.user), KEYS_RULE_ONLINE | COARSE);
	/* One's own presence is always shown. */
	ck_assert_uint_eq(rules_of(&bob, bob.user), KEYS_RULE_ONLINE | EXACT);
	/* Removing a contact takes the permission away. */
	ck_assert_int_eq(contacts(&alice, NULL, 0, &bob.user, 1), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 0);
	ck_assert_uint_eq(rules_of(&bob, alice.user), 0);
	/* PRESENCE_RULES is connsrv's own call: it needs the authenticated user. */
	sp_frame f;
	sp_frame_init(&f, SP_T_PRESENCE_RULES, 1, true);
	sp_frame_set_u64s(&f, SP_F_PRES_USERS, &alice.user, 1);
	ck_assert_int_ne(kt_call(&env, &f), SP_OK);
}
END_TEST

START_TEST(contact_bound)
{
	uint64_t ids[1000];
	for (uint64_t b = 0; b < 5; b++) {
		for (uint64_t i = 0; i < 1000; i++)
			ids[i] = 1000000 + b * 1000 + i;
		ck_assert_int_eq(contacts(&alice, ids, 1000, NULL, 0), SP_OK);
	}
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), KEYS_CONTACTS_MAX);
	ck_assert_int_eq(contacts(&alice, &bob.user, 1, NULL, 0), SP_ELIMIT);
	/* The refused request changed nothing; removing one makes room. */
	ck_assert_int_eq(contacts(&alice, NULL, 0, ids, 1), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), KEYS_CONTACTS_MAX - 1);
	ck_assert_int_eq(contacts(&alice, &bob.user, 1, NULL, 0), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), KEYS_CONTACTS_MAX);
}
END_TEST

START_TEST(group_add_consent)
{
	ck_assert_int_eq(privacy(&bob, -1, -1, C), SP_OK);
	/* alice is not bob's contact: refused, and no group made. */
	ck_assert_int_eq(group_create(&alice, bob.user), SP_EPERM);
	/* Adding to an existing group is refused too. */
	ck_assert_int_eq(group_create(&alice, carol.user), SP_OK);
	uint64_t g = sp_frame_u64(&env.r.out, SP_F_GROUP);
	sp_frame f;
	sp_frame_init(&f, SP_T_GROUP_ADD, 1, true);
	sp_frame_set_u64(&f, SP_F_GROUP, g);
	sp_frame_set_u64s(&f, SP_F_USERS, &bob.user, 1);
	kt_set_auth(&f, &alice);
	ck_assert_int_eq(kt_call(&env, &f), SP_EPERM);
	/* Once bob has alice as a contact, both work; the setting survives a restart. */
	ck_assert_int_eq(contacts(&bob, &alice.user, 1, NULL, 0), SP_OK);
	kt_env_close(&env, false);
	keys_ctx_cfg cfg = kt_default_cfg(&env);
	ck_assert_int_eq(kt_env_open_cfg(&env, &cfg), SP_OK);
	ck_assert_int_eq(privacy(&bob, -1, -1, -1), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_PRIV_GROUP_ADD), C);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_int_eq(group_create(&alice, bob.user), SP_OK);
	/* carol (not a contact) still may not. */
	ck_assert_int_eq(group_create(&carol, bob.user), SP_EPERM);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("presence_rules");
	TCase *pure = tcase_create("pure");
	tcase_add_test(pure, reciprocal_rule);
	tcase_add_test(pure, view);
	suite_add_tcase(s, pure);
	TCase *tc = tcase_create("keysrv");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, settings_contacts_and_rules);
	tcase_add_test(tc, contact_bound);
	tcase_add_test(tc, group_add_consent);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
