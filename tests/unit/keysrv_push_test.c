/* keysrv push tokens (docs/PUSH.md): PUSH_REGISTER sets and clears the caller's token,
 * refuses bad platforms and tokens; PUSH_TOKEN_GET splits platform and token; PUSH_DROP
 * clears only the token it names (a re-registered one survives). */
#include <check.h>

#include "keysrv_harness.h"
#include "check_run.h"

static kt_env env;
static kt_device dev;

static void
setup(void)
{
	ck_assert_int_eq(kt_env_open(&env), SP_OK);
	kt_device_new(&dev);
	ck_assert_int_eq(kt_register(&env, "+14155553000", &dev), SP_OK);
}

static void
teardown(void)
{
	kt_env_close(&env, true);
}

static int
reg(const kt_device *d, const char *platform, const char *token)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_PUSH_REGISTER, 5, true);
	if (platform)
		sp_frame_set_str(&f, SP_F_PUSH_PLATFORM, platform);
	if (token)
		sp_frame_set_str(&f, SP_F_PUSH_TOKEN, token);
	kt_set_auth(&f, d);
	return kt_call(&env, &f);
}

/* PUSH_TOKEN_GET: the reply's platform and token ("" when absent). */
static int
get(uint64_t device, char platform[16], char token[520])
{
	sp_frame f;
	platform[0] = token[0] = '\0';
	sp_frame_init(&f, SP_T_PUSH_TOKEN_GET, 6, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, device);
	int rc = kt_call(&env, &f);
	if (rc)
		return rc;
	ck_assert_int_eq(env.r.out.type, SP_T_PUSH_TOKEN_R);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_DEVICE), device);
	if (sp_frame_has(&env.r.out, SP_F_PUSH_PLATFORM)) {
		ck_assert_int_eq(sp_frame_str(&env.r.out, SP_F_PUSH_PLATFORM, platform, 16), SP_OK);
		ck_assert_int_eq(sp_frame_str(&env.r.out, SP_F_PUSH_TOKEN, token, 520), SP_OK);
	}
	return SP_OK;
}

static int
drop(uint64_t device, const char *platform, const char *token)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_PUSH_DROP, 7, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, device);
	sp_frame_set_str(&f, SP_F_PUSH_PLATFORM, platform);
	sp_frame_set_str(&f, SP_F_PUSH_TOKEN, token);
	return kt_call(&env, &f);
}

START_TEST(register_get_clear)
{
	char p[16], t[520];
	ck_assert_int_eq(get(dev.device, p, t), SP_OK);
	ck_assert_str_eq(p, "");
	ck_assert_int_eq(reg(&dev, "fcm", "abc:DEF-123_x"), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_OK);
	ck_assert_int_eq(get(dev.device, p, t), SP_OK);
	ck_assert_str_eq(p, "fcm");
	ck_assert_str_eq(t, "abc:DEF-123_x");
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_USER), dev.user);
	ck_assert_int_eq(reg(&dev, "apns", "0a1b2c"), SP_OK);
	ck_assert_int_eq(get(dev.device, p, t), SP_OK);
	ck_assert_str_eq(p, "apns");
	ck_assert_str_eq(t, "0a1b2c");
	/* Neither: cleared. */
	ck_assert_int_eq(reg(&dev, NULL, NULL), SP_OK);
	ck_assert_int_eq(get(dev.device, p, t), SP_OK);
	ck_assert_str_eq(p, "");
	ck_assert_int_eq(get(dev.device + 1, p, t), SP_ENOTFOUND);
}
END_TEST

START_TEST(register_refuses_bad_input)
{
	char longtok[600];
	memset(longtok, 'a', sizeof(longtok) - 1);
	longtok[sizeof(longtok) - 1] = '\0';
	ck_assert_int_eq(reg(&dev, "gcm", "tok"), SP_EINVAL);
	ck_assert_int_eq(reg(&dev, "fcm", NULL), SP_EINVAL);
	ck_assert_int_eq(reg(&dev, NULL, "tok"), SP_EINVAL);
	ck_assert_int_eq(reg(&dev, "fcm", "a b"), SP_EINVAL);
	ck_assert_int_eq(reg(&dev, "fcm", "a\"b"), SP_EINVAL);
	ck_assert_int_eq(reg(&dev, "apns", "../x"), SP_EINVAL);
	ck_assert_int_eq(reg(&dev, "fcm", "a\\b"), SP_EINVAL);
	ck_assert_int_ne(reg(&dev, "fcm", longtok), SP_OK);
	longtok[512 - 4] = '\0'; /* "fcm:" + 508 fits */
	ck_assert_int_eq(reg(&dev, "fcm", longtok), SP_OK);
	longtok[512 - 4] = 'a';
	longtok[512 - 3] = '\0';
	ck_assert_int_eq(reg(&dev, "fcm", longtok), SP_EFIELDLEN);
	/* Only a logged-in device registers its own token. */
	sp_frame f;
	sp_frame_init(&f, SP_T_PUSH_REGISTER, 5, true);
	sp_frame_set_str(&f, SP_F_PUSH_PLATFORM, "fcm");
	sp_frame_set_str(&f, SP_F_PUSH_TOKEN, "tok");
	ck_assert_int_eq(kt_call(&env, &f), SP_EAUTH);
}
END_TEST

START_TEST(drop_only_that_token)
{
	char p[16], t[520];
	ck_assert_int_eq(reg(&dev, "fcm", "old"), SP_OK);
	ck_assert_int_eq(reg(&dev, "fcm", "new"), SP_OK);
	/* The gateway called "old" dead after the device registered "new": "new" stays. */
	ck_assert_int_eq(drop(dev.device, "fcm", "old"), SP_OK);
	ck_assert_int_eq(get(dev.device, p, t), SP_OK);
	ck_assert_str_eq(t, "new");
	ck_assert_int_eq(drop(dev.device, "apns", "new"), SP_OK);
	ck_assert_int_eq(get(dev.device, p, t), SP_OK);
	ck_assert_str_eq(t, "new");
	ck_assert_int_eq(drop(dev.device, "fcm", "new"), SP_OK);
	ck_assert_int_eq(get(dev.device, p, t), SP_OK);
	ck_assert_str_eq(p, "");
	ck_assert_str_eq(t, "");
	ck_assert_int_eq(drop(dev.device + 1, "fcm", "new"), SP_ENOTFOUND);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("keysrv_push");
	TCase *tc = tcase_create("push");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, register_get_clear);
	tcase_add_test(tc, register_refuses_bad_input);
	tcase_add_test(tc, drop_only_that_token);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
