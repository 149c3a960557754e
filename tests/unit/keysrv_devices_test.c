/* keysrv devices: linking by rendezvous code (good and bad signatures, who may confirm,
 * the 4-device limit, status polling, expiry), removal rules, the auth-key lookup. */
#include <check.h>

#include "keysrv_harness.h"
#include "check_run.h"

static kt_env env;
static kt_device prim;

static void
setup(void)
{
	ck_assert_int_eq(kt_env_open(&env), SP_OK);
	kt_device_new(&prim);
	ck_assert_int_eq(kt_register(&env, "+14155552000", &prim), SP_OK);
}

static void
teardown(void)
{
	kt_env_close(&env, true);
}

/* LINK_REQUEST for nd; the code goes to code[9]. */
static void
request(const kt_device *nd, char code[9])
{
	sp_frame f;
	sp_frame_init(&f, SP_T_LINK_REQUEST, 1, true);
	kt_set_newdev(&f, nd, 1);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_LINK_PENDING);
	ck_assert_int_eq(sp_frame_str(&env.r.out, SP_F_LINK_CODE, code, 9), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_TTL), 600);
	ck_assert_int_eq(strspn(code, "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"), 8);
}

static int
confirm(const kt_device *by, const char *code, const uint8_t sig[64])
{
	sp_frame f;
	sp_frame_init(&f, SP_T_LINK_CONFIRM, 2, true);
	sp_frame_set_str(&f, SP_F_LINK_CODE, code);
	sp_frame_set_bin(&f, SP_F_PRIMARY_SIG, sig, 64);
	kt_set_auth(&f, by);
	return kt_call(&env, &f);
}

static int
status(const kt_device *nd, const char *code)
{
	sp_frame f;
	uint8_t sig[64];
	kt_status_sig(sig, nd, code);
	sp_frame_init(&f, SP_T_LINK_STATUS, 3, true);
	sp_frame_set_str(&f, SP_F_LINK_CODE, code);
	sp_frame_set_bin(&f, SP_F_SIG, sig, 64);
	return kt_call(&env, &f);
}

static uint32_t
device_count(uint64_t user)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_DEVICES_GET, 9, true);
	sp_frame_set_u64(&f, SP_F_USER, user);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	return sp_frame_get(&env.r.out, SP_F_DEVICE_LIST)->rs.n;
}

START_TEST(link_flow)
{
	kt_device nd;
	char code[9], lower[9];
	uint8_t sig[64];
	kt_device_new(&nd);
	request(&nd, code);
	ck_assert_int_eq(status(&nd, code), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_LINK_PENDING);

	/* The primary looks the code up (typed in lower case) and sees the new keys. */
	for (int i = 0; i < 9; i++)
		lower[i] = (char)(code[i] >= 'A' && code[i] <= 'Z' ? code[i] - 'A' + 'a' : code[i]);
	sp_frame f;
	sp_frame_init(&f, SP_T_LINK_LOOKUP, 4, true);
	sp_frame_set_str(&f, SP_F_LINK_CODE, lower);
	kt_set_auth(&f, &prim);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_LINK_INFO);
	ck_assert_mem_eq(sp_frame_bin(&env.r.out, SP_F_IDENTITY_KEY).p, nd.ik.pub, 33);
	ck_assert_mem_eq(sp_frame_bin(&env.r.out, SP_F_AUTH_KEY).p, nd.auth_pk, 32);

	kt_link_sig(sig, &prim, &nd);
	ck_assert_int_eq(confirm(&prim, code, sig), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_VERIFIED);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_USER), prim.user);
	uint64_t dev = sp_frame_u64(&env.r.out, SP_F_DEVICE);
	ck_assert_uint_ne(dev, 0);
	/* Resent confirmation: same answer, no second device. */
	ck_assert_int_eq(confirm(&prim, code, sig), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_DEVICE), dev);
	ck_assert_uint_eq(device_count(prim.user), 2);

	/* The new device learns its ids; a signature by another key learns nothing. */
	ck_assert_int_eq(status(&nd, code), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_VERIFIED);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_USER), prim.user);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_DEVICE), dev);
	char phone[20];
	ck_assert_int_eq(sp_frame_str(&env.r.out, SP_F_PHONE, phone, sizeof(phone)), SP_OK);
	ck_assert_str_eq(phone, "+14155552000");
	ck_assert_int_eq(status(&prim, code), SP_EBADSIG);

	/* The linked device is a working device with its signed prekey from the request. */
	nd.user = prim.user;
	nd.device = dev;
	ck_assert_int_eq(kt_upload(&env, &nd, 1, 3), SP_OK);
	sp_frame_init(&f, SP_T_BUNDLE_GET, 5, true);
	sp_frame_set_u64(&f, SP_F_USER, prim.user);
	sp_frame_set_u64(&f, SP_F_DEVICE, dev);
	kt_set_auth(&f, &prim);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	const sp_val *b = sp_frame_get(&env.r.out, SP_F_BUNDLES);
	ck_assert_mem_eq(sp_frame_bin(&b->rs.v[0], SP_F_SPK).p, nd.spk.pub, 33);
}
END_TEST

START_TEST(link_bad_signature)
{
	kt_device nd, stranger;
	char code[9];
	uint8_t sig[64];
	kt_device_new(&nd);
	kt_device_new(&stranger);
	request(&nd, code);
	/* Signed by a key that is not the primary's auth key. */
	kt_link_sig(sig, &stranger, &nd);
	ck_assert_int_eq(confirm(&prim, code, sig), SP_EBADSIG);
	/* The primary's signature over other keys. */
	kt_link_sig(sig, &prim, &stranger);
	ck_assert_int_eq(confirm(&prim, code, sig), SP_EBADSIG);
	kt_link_sig(sig, &prim, &nd);
	sig[3] ^= 1;
	ck_assert_int_eq(confirm(&prim, code, sig), SP_EBADSIG);
	ck_assert_uint_eq(device_count(prim.user), 1);
	ck_assert_int_eq(status(&nd, code), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_LINK_PENDING);
}
END_TEST

START_TEST(only_primary_links)
{
	kt_device linked, nd, other;
	char code[9];
	uint8_t sig[64];
	kt_device_new(&linked);
	kt_device_new(&nd);
	kt_device_new(&other);
	ck_assert_int_eq(kt_link(&env, &prim, &linked), SP_OK);
	request(&nd, code);
	kt_link_sig(sig, &linked, &nd);
	ck_assert_int_eq(confirm(&linked, code, sig), SP_EPERM);
	/* Another account's primary can confirm only for itself; then the code is used. */
	ck_assert_int_eq(kt_register(&env, "+14155552001", &other), SP_OK);
	kt_link_sig(sig, &other, &nd);
	ck_assert_int_eq(confirm(&other, code, sig), SP_OK);
	kt_link_sig(sig, &prim, &nd);
	ck_assert_int_eq(confirm(&prim, code, sig), SP_ESTATE);
	ck_assert_int_eq(confirm(&prim, "ZZZZZZZZ", sig), SP_ENOTFOUND);
	ck_assert_int_eq(confirm(&prim, "0OIl0OIl", sig), SP_EINVAL);
}
END_TEST

START_TEST(four_linked_at_most)
{
	kt_device nd[5];
	for (int i = 0; i < 4; i++) {
		kt_device_new(&nd[i]);
		ck_assert_int_eq(kt_link(&env, &prim, &nd[i]), SP_OK);
	}
	kt_device_new(&nd[4]);
	ck_assert_int_eq(kt_link(&env, &prim, &nd[4]), SP_ELIMIT);
	ck_assert_uint_eq(device_count(prim.user), 5);
	/* Removing one frees a slot. */
	sp_frame f;
	sp_frame_init(&f, SP_T_REMOVE_DEVICE, 1, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, nd[2].device);
	kt_set_auth(&f, &prim);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_int_eq(kt_link(&env, &prim, &nd[4]), SP_OK);
	ck_assert_uint_eq(device_count(prim.user), 5);
}
END_TEST

START_TEST(link_code_expires)
{
	kt_device nd;
	char code[9];
	uint8_t sig[64];
	kt_device_new(&nd);
	request(&nd, code);
	kt_now += 600000;
	kt_link_sig(sig, &prim, &nd);
	ck_assert_int_eq(confirm(&prim, code, sig), SP_EEXPIRED);
	ck_assert_int_eq(status(&nd, code), SP_EEXPIRED);
	unsigned n = 0;
	ck_assert_int_eq(keys_store_sweep(env.ctx->store, kt_now, 100, &n), SP_OK);
	ck_assert_uint_ge(n, 1);
	ck_assert_int_eq(status(&nd, code), SP_ENOTFOUND);
}
END_TEST

START_TEST(link_request_rejects_bad_keys)
{
	kt_device nd;
	sp_frame f;
	kt_device_new(&nd);
	nd.spk_sig[1] ^= 1;
	sp_frame_init(&f, SP_T_LINK_REQUEST, 1, true);
	kt_set_newdev(&f, &nd, 1);
	ck_assert_int_eq(kt_call(&env, &f), SP_EBADSIG);
	kt_device_new(&nd);
	nd.reg_id = 0x4000;
	kt_set_newdev(&f, &nd, 1);
	ck_assert_int_eq(kt_call(&env, &f), SP_ERANGE);
}
END_TEST

START_TEST(remove_rules)
{
	kt_device a, b, other;
	kt_device_new(&a);
	kt_device_new(&b);
	kt_device_new(&other);
	ck_assert_int_eq(kt_link(&env, &prim, &a), SP_OK);
	ck_assert_int_eq(kt_link(&env, &prim, &b), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155552002", &other), SP_OK);
	sp_frame f;
	sp_frame_init(&f, SP_T_REMOVE_DEVICE, 1, true);
	/* A linked device cannot remove a sibling, nor the primary. */
	sp_frame_set_u64(&f, SP_F_DEVICE, b.device);
	kt_set_auth(&f, &a);
	ck_assert_int_eq(kt_call(&env, &f), SP_EPERM);
	sp_frame_set_u64(&f, SP_F_DEVICE, prim.device);
	ck_assert_int_eq(kt_call(&env, &f), SP_EPERM);
	/* Nobody removes the primary; another account sees no such device. */
	kt_set_auth(&f, &prim);
	ck_assert_int_eq(kt_call(&env, &f), SP_EPERM);
	sp_frame_set_u64(&f, SP_F_DEVICE, a.device);
	kt_set_auth(&f, &other);
	ck_assert_int_eq(kt_call(&env, &f), SP_ENOTFOUND);
	/* A device removes itself. */
	kt_set_auth(&f, &a);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_DEVICE), a.device);
	ck_assert_uint_eq(device_count(prim.user), 2);
	/* Repeating the removal (by the primary) answers the same. */
	kt_set_auth(&f, &prim);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_DEVICE), a.device);
	/* The removed device cannot authenticate at connsrv any more. */
	sp_frame_init(&f, SP_T_AUTH_KEY_GET, 1, true);
	sp_frame_set_u64(&f, SP_F_USER, prim.user);
	sp_frame_set_u64(&f, SP_F_DEVICE, a.device);
	ck_assert_int_eq(kt_call(&env, &f), SP_ENOTFOUND);
	sp_frame_set_u64(&f, SP_F_DEVICE, b.device);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
}
END_TEST

START_TEST(link_rate_limit)
{
	kt_env_close(&env, true);
	ck_assert_int_eq(kt_env_init(&env), SP_OK);
	keys_ctx_cfg cfg = kt_default_cfg(&env);
	cfg.rate_link = (keys_rate_cfg){3, 1};
	cfg.rate_source = (keys_rate_cfg){4, 1};
	ck_assert_int_eq(kt_env_open_cfg(&env, &cfg), SP_OK);
	kt_device_new(&prim);
	ck_assert_int_eq(kt_register(&env, "+14155552003", &prim), SP_OK);
	/* Guessing codes is throttled per user. */
	uint8_t sig[64] = {0};
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(confirm(&prim, "ABCDEFGH", sig), SP_ENOTFOUND);
	ck_assert_int_eq(confirm(&prim, "ABCDEFGH", sig), SP_ERATELIMIT);
	/* LINK_REQUEST per source (REGISTER+VERIFY above used 2 of 4). */
	kt_device nd;
	kt_device_new(&nd);
	sp_frame f;
	sp_frame_init(&f, SP_T_LINK_REQUEST, 1, true);
	kt_set_newdev(&f, &nd, 1);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_int_eq(kt_call(&env, &f), SP_ERATELIMIT);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("keysrv_devices");
	TCase *tc = tcase_create("devices");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, link_flow);
	tcase_add_test(tc, link_bad_signature);
	tcase_add_test(tc, only_primary_links);
	tcase_add_test(tc, four_linked_at_most);
	tcase_add_test(tc, link_code_expires);
	tcase_add_test(tc, link_request_rejects_bad_keys);
	tcase_add_test(tc, remove_rules);
	tcase_add_test(tc, link_rate_limit);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
