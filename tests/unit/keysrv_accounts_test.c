/* keysrv accounts: E.164 validation, REGISTER / VERIFY with wrong, expired, exhausted
 * and reused codes, rate limits, re-registration, and the caller check. */
#include <check.h>

#include "keysrv/accounts.h"
#include "keysrv_harness.h"
#include "check_run.h"

static kt_env env;

static void
setup(void)
{
	ck_assert_int_eq(kt_env_open(&env), SP_OK);
}

static void
teardown(void)
{
	kt_env_close(&env, true);
}

static int
do_register(const char *phone, const char *source)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_REGISTER, 7, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	if (source)
		sp_frame_set_str(&f, SP_F_SOURCE, source);
	return kt_call(&env, &f);
}

static int
do_verify(const char *phone, const char *code, const kt_device *d)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_VERIFY, 8, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	sp_frame_set_str(&f, SP_F_OTP, code);
	kt_set_newdev(&f, d, 1);
	return kt_call(&env, &f);
}

/* A six-digit code that differs from `code`. */
static void
wrong_code(const char *code, char out[7])
{
	memcpy(out, code, 7);
	out[0] = out[0] == '9' ? '0' : (char)(out[0] + 1);
}

START_TEST(phone_validation)
{
	ck_assert(keys_phone_valid("+14155552671"));
	ck_assert(keys_phone_valid("+12345678"));
	ck_assert(keys_phone_valid("+123456789012345"));
	ck_assert(!keys_phone_valid("14155552671"));
	ck_assert(!keys_phone_valid("+1234567"));
	ck_assert(!keys_phone_valid("+1234567890123456"));
	ck_assert(!keys_phone_valid("+04155552671"));
	ck_assert(!keys_phone_valid("+1415555267a"));
	ck_assert(!keys_phone_valid("+"));
	ck_assert(!keys_phone_valid(""));
	ck_assert_int_eq(do_register("4155552671", NULL), SP_EINVAL);
	ck_assert_int_eq(env.r.out.type, SP_T_ERROR);
	ck_assert_int_eq(sp_frame_i64(&env.r.out, SP_F_CODE), SP_EINVAL);
}
END_TEST

START_TEST(register_verify_ok)
{
	kt_device d;
	char code[7];
	kt_device_new(&d);
	ck_assert_int_eq(do_register("+14155550001", NULL), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_REGISTERED);
	ck_assert_uint_eq(env.r.out.id, 7);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_TTL), 600);
	ck_assert_int_eq(kt_read_otp(env.otp_dir, "+14155550001", code), 0);
	ck_assert_int_eq(strspn(code, "0123456789"), 6);
	ck_assert_int_eq(do_verify("+14155550001", code, &d), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_VERIFIED);
	uint64_t user = sp_frame_u64(&env.r.out, SP_F_USER), dev = sp_frame_u64(&env.r.out, SP_F_DEVICE);
	ck_assert_uint_ne(user, 0);
	ck_assert_uint_ne(dev, 0);
	ck_assert_uint_ne(user, dev);
	ck_assert(!sp_frame_has(&env.r.out, SP_F_DEVICES));

	/* The device is listed, primary, with its identity key. */
	sp_frame f;
	sp_frame_init(&f, SP_T_DEVICES_GET, 9, true);
	sp_frame_set_u64(&f, SP_F_USER, user);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	const sp_val *v = sp_frame_get(&env.r.out, SP_F_DEVICE_LIST);
	ck_assert_uint_eq(v->rs.n, 1);
	ck_assert_uint_eq(sp_frame_u64(&v->rs.v[0], SP_F_DEVICE), dev);
	ck_assert_uint_eq(sp_frame_u64(&v->rs.v[0], SP_F_PRIMARY), 1);
	ck_assert_uint_eq(sp_frame_u64(&v->rs.v[0], SP_F_REG_ID), d.reg_id);
	ck_assert_mem_eq(sp_frame_bin(&v->rs.v[0], SP_F_IDENTITY_KEY).p, d.ik.pub, 33);

	/* connsrv's login lookup returns the auth key. */
	sp_frame_init(&f, SP_T_AUTH_KEY_GET, 10, true);
	sp_frame_set_u64(&f, SP_F_USER, user);
	sp_frame_set_u64(&f, SP_F_DEVICE, dev);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_mem_eq(sp_frame_bin(&env.r.out, SP_F_AUTH_KEY).p, d.auth_pk, 32);
	sp_frame_set_u64(&f, SP_F_USER, user + 1);
	ck_assert_int_eq(kt_call(&env, &f), SP_ENOTFOUND);
}
END_TEST

START_TEST(wrong_code_counts_attempts)
{
	kt_device d;
	char code[7], bad[7];
	kt_device_new(&d);
	ck_assert_int_eq(do_register("+14155550002", NULL), SP_OK);
	ck_assert_int_eq(kt_read_otp(env.otp_dir, "+14155550002", code), 0);
	wrong_code(code, bad);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(do_verify("+14155550002", bad, &d), SP_EAUTH);
	ck_assert_int_eq(do_verify("+14155550002", "12x456", &d), SP_EINVAL);
	/* The fifth wrong guess uses the last attempt; the right code no longer works. */
	ck_assert_int_eq(do_verify("+14155550002", bad, &d), SP_EAUTH);
	ck_assert_int_eq(do_verify("+14155550002", code, &d), SP_ENOTFOUND);
	/* A new code works. */
	ck_assert_int_eq(do_register("+14155550002", NULL), SP_OK);
	ck_assert_int_eq(kt_read_otp(env.otp_dir, "+14155550002", code), 0);
	ck_assert_int_eq(do_verify("+14155550002", code, &d), SP_OK);
}
END_TEST

START_TEST(expired_code)
{
	kt_device d;
	char code[7];
	kt_device_new(&d);
	ck_assert_int_eq(do_register("+14155550003", NULL), SP_OK);
	ck_assert_int_eq(kt_read_otp(env.otp_dir, "+14155550003", code), 0);
	kt_now += 600000;
	ck_assert_int_eq(do_verify("+14155550003", code, &d), SP_EEXPIRED);
	ck_assert_int_eq(do_verify("+14155550003", code, &d), SP_ENOTFOUND);
}
END_TEST

START_TEST(reused_code)
{
	kt_device d, other;
	char code[7];
	kt_device_new(&d);
	kt_device_new(&other);
	ck_assert_int_eq(do_register("+14155550004", NULL), SP_OK);
	ck_assert_int_eq(kt_read_otp(env.otp_dir, "+14155550004", code), 0);
	ck_assert_int_eq(do_verify("+14155550004", code, &d), SP_OK);
	uint64_t user = sp_frame_u64(&env.r.out, SP_F_USER), dev = sp_frame_u64(&env.r.out, SP_F_DEVICE);
	/* The same request resent gets the same answer and creates nothing. */
	ck_assert_int_eq(do_verify("+14155550004", code, &d), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_USER), user);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_DEVICE), dev);
	/* The code with other keys is a reuse. */
	ck_assert_int_eq(do_verify("+14155550004", code, &other), SP_EREPLAY);
	sp_frame f;
	sp_frame_init(&f, SP_T_DEVICES_GET, 9, true);
	sp_frame_set_u64(&f, SP_F_USER, user);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_uint_eq(sp_frame_get(&env.r.out, SP_F_DEVICE_LIST)->rs.n, 1);
}
END_TEST

START_TEST(reregistration_revokes_devices)
{
	kt_device a, linked, again;
	kt_device_new(&a);
	kt_device_new(&linked);
	kt_device_new(&again);
	ck_assert_int_eq(kt_register(&env, "+14155550005", &a), SP_OK);
	ck_assert_int_eq(kt_link(&env, &a, &linked), SP_OK);
	ck_assert_int_eq(kt_upload(&env, &linked, 1, 5), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155550005", &again), SP_OK);
	ck_assert_uint_eq(again.user, a.user);
	ck_assert_uint_ne(again.device, a.device);
	const sp_val *rev = sp_frame_get(&env.r.out, SP_F_DEVICES);
	ck_assert_ptr_nonnull(rev);
	ck_assert_uint_eq(rev->us.n, 2);
	/* The old devices can no longer act. */
	sp_frame f;
	sp_frame_init(&f, SP_T_KEYS_STATUS, 1, true);
	kt_set_auth(&f, &linked);
	ck_assert_int_eq(kt_call(&env, &f), SP_EAUTH);
	kt_set_auth(&f, &a);
	ck_assert_int_eq(kt_call(&env, &f), SP_EAUTH);
	kt_set_auth(&f, &again);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
}
END_TEST

START_TEST(bad_keys_rejected)
{
	kt_device d;
	char code[7];
	kt_device_new(&d);
	ck_assert_int_eq(do_register("+14155550006", NULL), SP_OK);
	ck_assert_int_eq(kt_read_otp(env.otp_dir, "+14155550006", code), 0);
	/* A signed prekey signature by another key is refused before the code is used. */
	kt_device other;
	kt_device_new(&other);
	memcpy(d.spk_sig, other.spk_sig, 64);
	ck_assert_int_eq(do_verify("+14155550006", code, &d), SP_EBADSIG);
	kt_device_new(&d);
	d.ik.pub[0] = 0x06;
	ck_assert_int_eq(do_verify("+14155550006", code, &d), SP_EINVAL);
	kt_device_new(&d);
	memset(d.auth_pk, 0, 32);
	ck_assert_int_eq(do_verify("+14155550006", code, &d), SP_EINVAL);
	kt_device_new(&d);
	ck_assert_int_eq(do_verify("+14155550006", code, &d), SP_OK);
}
END_TEST

START_TEST(rate_limits)
{
	kt_env_close(&env, true);
	ck_assert_int_eq(kt_env_init(&env), SP_OK);
	keys_ctx_cfg cfg = kt_default_cfg(&env);
	cfg.rate_phone = (keys_rate_cfg){3, 1};
	cfg.rate_source = (keys_rate_cfg){5, 1};
	ck_assert_int_eq(kt_env_open_cfg(&env, &cfg), SP_OK);

	/* Per phone: 3, then refused with a retry hint, then one more after a minute. */
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(do_register("+14155550007", "10.0.0.1"), SP_OK);
	ck_assert_int_eq(do_register("+14155550007", "10.0.0.2"), SP_ERATELIMIT);
	ck_assert_uint_gt(sp_frame_u64(&env.r.out, SP_F_RETRY_AFTER), 0);
	kt_now += 60000;
	ck_assert_int_eq(do_register("+14155550007", "10.0.0.2"), SP_OK);
	ck_assert_int_eq(do_register("+14155550007", "10.0.0.2"), SP_ERATELIMIT);

	/* Per source: 5 across phones (10.0.0.1 used 3 above, a minute ago: one came back). */
	ck_assert_int_eq(do_register("+14155550008", "10.0.0.1"), SP_OK);
	ck_assert_int_eq(do_register("+14155550009", "10.0.0.1"), SP_OK);
	ck_assert_int_eq(do_register("+14155550010", "10.0.0.1"), SP_OK);
	ck_assert_int_eq(do_register("+14155550011", "10.0.0.1"), SP_ERATELIMIT);
	/* VERIFY counts against the source too. */
	kt_device d;
	kt_device_new(&d);
	sp_frame f;
	sp_frame_init(&f, SP_T_VERIFY, 8, true);
	sp_frame_set_str(&f, SP_F_PHONE, "+14155550008");
	sp_frame_set_str(&f, SP_F_OTP, "000000");
	sp_frame_set_str(&f, SP_F_SOURCE, "10.0.0.1");
	kt_set_newdev(&f, &d, 1);
	ck_assert_int_eq(kt_call(&env, &f), SP_ERATELIMIT);
	ck_assert_int_eq(do_register("+14155550011", "10.0.0.3"), SP_OK);
}
END_TEST

START_TEST(caller_checks)
{
	kt_device a, b;
	kt_device_new(&a);
	kt_device_new(&b);
	ck_assert_int_eq(kt_register(&env, "+14155550012", &a), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155550013", &b), SP_OK);
	sp_frame f;
	sp_frame_init(&f, SP_T_KEYS_STATUS, 1, true);
	ck_assert_int_eq(kt_call(&env, &f), SP_EAUTH); /* no caller */
	sp_frame_set_u64(&f, SP_F_AUTH_USER, a.user);
	sp_frame_set_u64(&f, SP_F_AUTH_DEVICE, b.device); /* someone else's device */
	ck_assert_int_eq(kt_call(&env, &f), SP_EAUTH);
	sp_frame_set_u64(&f, SP_F_AUTH_DEVICE, 12345);
	ck_assert_int_eq(kt_call(&env, &f), SP_EAUTH);
	kt_set_auth(&f, &a);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	/* A non-keysrv frame is refused. */
	sp_frame_init(&f, SP_T_PING, 1, true);
	ck_assert_int_eq(kt_call(&env, &f), SP_EBADTYPE);
}
END_TEST

START_TEST(restart_keeps_accounts)
{
	kt_device d;
	kt_device_new(&d);
	ck_assert_int_eq(kt_register(&env, "+14155550014", &d), SP_OK);
	kt_env_close(&env, false);
	keys_ctx_cfg cfg = kt_default_cfg(&env);
	ck_assert_int_eq(kt_env_open_cfg(&env, &cfg), SP_OK);
	sp_frame f;
	sp_frame_init(&f, SP_T_KEYS_STATUS, 1, true);
	kt_set_auth(&f, &d);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	/* A pending code survives a restart too (it is stored, hashed). */
	char code[7];
	kt_device d2;
	kt_device_new(&d2);
	ck_assert_int_eq(do_register("+14155550015", NULL), SP_OK);
	ck_assert_int_eq(kt_read_otp(env.otp_dir, "+14155550015", code), 0);
	kt_env_close(&env, false);
	ck_assert_int_eq(kt_env_open_cfg(&env, &cfg), SP_OK);
	ck_assert_int_eq(do_verify("+14155550015", code, &d2), SP_OK);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("keysrv_accounts");
	TCase *tc = tcase_create("accounts");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, phone_validation);
	tcase_add_test(tc, register_verify_ok);
	tcase_add_test(tc, wrong_code_counts_attempts);
	tcase_add_test(tc, expired_code);
	tcase_add_test(tc, reused_code);
	tcase_add_test(tc, reregistration_revokes_devices);
	tcase_add_test(tc, bad_keys_rejected);
	tcase_add_test(tc, rate_limits);
	tcase_add_test(tc, caller_checks);
	tcase_add_test(tc, restart_keeps_accounts);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
