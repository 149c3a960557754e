/* keysrv one-time codes and registration lock: the per-phone daily budgets (codes sent,
 * wrong codes, wrong PINs) across re-registrations, restarts and the 24-hour window; the
 * registration lock (SET_PIN, VERIFY with and without the PIN, clearing it); the PIN
 * hash kept in the store. */
#include <check.h>

#include "keysrv/accounts.h"
#include "keysrv_harness.h"
#include "check_run.h"

static kt_env env;
static keys_ctx_cfg cfg;

/* Budgets small enough to exhaust; the in-memory token buckets stay generous so that
 * only the durable budgets are under test. */
static void
setup(void)
{
	ck_assert_int_eq(kt_env_init(&env), SP_OK);
	cfg = kt_default_cfg(&env);
	cfg.keys.phone_sends = 4;
	cfg.keys.phone_verify_fails = 3;
	cfg.keys.phone_pin_fails = 2;
	ck_assert_int_eq(kt_env_open_cfg(&env, &cfg), SP_OK);
}

static void
teardown(void)
{
	kt_env_close(&env, true);
}

static void
restart(void)
{
	kt_env_close(&env, false);
	ck_assert_int_eq(kt_env_open_cfg(&env, &cfg), SP_OK);
}

static int
do_register(const char *phone)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_REGISTER, 7, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	return kt_call(&env, &f);
}

static int
do_verify(const char *phone, const char *code, const char *pin, const kt_device *d)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_VERIFY, 8, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	sp_frame_set_str(&f, SP_F_OTP, code);
	if (pin)
		sp_frame_set_str(&f, SP_F_PIN, pin);
	kt_set_newdev(&f, d, 1);
	return kt_call(&env, &f);
}

static int
do_set_pin(const kt_device *d, const char *pin)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_SET_PIN, 9, true);
	if (pin)
		sp_frame_set_str(&f, SP_F_PIN, pin);
	if (d)
		kt_set_auth(&f, d);
	return kt_call(&env, &f);
}

/* REGISTER, and the code the dev sender wrote. */
static void
new_code(const char *phone, char code[7])
{
	ck_assert_int_eq(do_register(phone), SP_OK);
	ck_assert_int_eq(kt_read_otp(env.otp_dir, phone, code), 0);
}

static void
wrong_code(const char *code, char out[7])
{
	memcpy(out, code, 7);
	out[0] = out[0] == '9' ? '0' : (char)(out[0] + 1);
}

/* The last reply is ERROR{SP_ERATELIMIT} renewing within (0, 24 h]. */
static void
assert_budget_refusal(void)
{
	ck_assert_int_eq(env.r.out.type, SP_T_ERROR);
	ck_assert_int_eq(sp_frame_i64(&env.r.out, SP_F_CODE), SP_ERATELIMIT);
	uint64_t ra = sp_frame_u64(&env.r.out, SP_F_RETRY_AFTER);
	ck_assert_uint_gt(ra, 0);
	ck_assert_uint_le(ra, KEYS_BUDGET_WINDOW_MS);
}

START_TEST(wrong_codes_counted_across_reregistration)
{
	const char *ph = "+14155551001";
	kt_device d;
	char code[7], bad[7];
	kt_device_new(&d);
	new_code(ph, code);
	wrong_code(code, bad);
	ck_assert_int_eq(do_verify(ph, bad, NULL, &d), SP_EAUTH);
	ck_assert_int_eq(do_verify(ph, bad, NULL, &d), SP_EAUTH);
	/* A new code gives the code new attempts, not the phone. */
	new_code(ph, code);
	wrong_code(code, bad);
	ck_assert_int_eq(do_verify(ph, bad, NULL, &d), SP_EAUTH);
	/* Spent: even the right code is refused, and the refusal says when to come back. */
	kt_now += 1000;
	ck_assert_int_eq(do_verify(ph, code, NULL, &d), SP_ERATELIMIT);
	assert_budget_refusal();
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_RETRY_AFTER), KEYS_BUDGET_WINDOW_MS - 1000);
	/* Another phone is not affected. */
	kt_device e;
	kt_device_new(&e);
	ck_assert_int_eq(kt_register(&env, "+14155551002", &e), SP_OK);
	/* The window ends 24 hours after its first counted event. */
	kt_now += KEYS_BUDGET_WINDOW_MS - 1000;
	new_code(ph, code);
	ck_assert_int_eq(do_verify(ph, code, NULL, &d), SP_OK);
}
END_TEST

START_TEST(budgets_survive_restart)
{
	const char *ph = "+14155551003";
	kt_device d;
	char code[7], bad[7];
	kt_device_new(&d);
	new_code(ph, code);
	wrong_code(code, bad);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(do_verify(ph, bad, NULL, &d), SP_EAUTH);
	restart();
	new_code(ph, code);
	ck_assert_int_eq(do_verify(ph, code, NULL, &d), SP_ERATELIMIT);
	assert_budget_refusal();

	/* Codes sent: 2 so far, 2 more, then refused, before and after a restart. */
	ck_assert_int_eq(do_register(ph), SP_OK);
	ck_assert_int_eq(do_register(ph), SP_OK);
	ck_assert_int_eq(do_register(ph), SP_ERATELIMIT);
	assert_budget_refusal();
	restart();
	ck_assert_int_eq(do_register(ph), SP_ERATELIMIT);
	kt_now += KEYS_BUDGET_WINDOW_MS;
	new_code(ph, code);
	ck_assert_int_eq(do_verify(ph, code, NULL, &d), SP_OK);
}
END_TEST

START_TEST(budget_records_swept)
{
	const char *ph = "+14155551004";
	char code[7];
	unsigned n = 0;
	new_code(ph, code);
	MDB_txn *txn;
	keys_budget b;
	size_t len;
	uint8_t buf[64];
	ck_assert_int_eq(keys_store_begin(env.ctx->store, false, &txn), SP_OK);
	ck_assert_int_eq(keys_budget_get(env.ctx->store, txn, ph, kt_now, &b), SP_OK);
	keys_store_abort(txn);
	ck_assert_uint_eq(b.sends, 1);
	ck_assert_uint_eq(b.expires_ms, kt_now + KEYS_BUDGET_WINDOW_MS);
	ck_assert_int_eq(keys_store_sweep(env.ctx->store, kt_now + KEYS_BUDGET_WINDOW_MS - 1, 100, &n),
	    SP_OK);
	ck_assert_int_eq(keys_store_begin(env.ctx->store, false, &txn), SP_OK);
	ck_assert_int_eq(keys_store_get(env.ctx->store, txn, KDB_BUDGETS, ph, strlen(ph), buf,
			     sizeof(buf), &len),
	    SP_OK);
	keys_store_abort(txn);
	ck_assert_int_eq(keys_store_sweep(env.ctx->store, kt_now + KEYS_BUDGET_WINDOW_MS, 100, &n), SP_OK);
	ck_assert_int_eq(keys_store_begin(env.ctx->store, false, &txn), SP_OK);
	ck_assert_int_eq(keys_store_get(env.ctx->store, txn, KDB_BUDGETS, ph, strlen(ph), buf,
			     sizeof(buf), &len),
	    SP_ENOTFOUND);
	keys_store_abort(txn);
}
END_TEST

START_TEST(registration_lock)
{
	const char *ph = "+14155551005";
	kt_device a, b, c;
	char code[7];
	kt_device_new(&a);
	kt_device_new(&b);
	kt_device_new(&c);
	ck_assert_int_eq(kt_register(&env, ph, &a), SP_OK);
	ck_assert_int_eq(do_set_pin(&a, "2468-pin"), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_PIN_SET);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_LOCKED), 1);

	/* Only a slow hash is stored, never the PIN. */
	MDB_txn *txn;
	keys_pin p;
	ck_assert_int_eq(keys_store_begin(env.ctx->store, false, &txn), SP_OK);
	ck_assert_int_eq(keys_pin_get(env.ctx->store, txn, a.user, &p), SP_OK);
	keys_store_abort(txn);
	ck_assert_int_eq(strncmp(p.hash, "$argon2id$", 10), 0);
	ck_assert_ptr_null(strstr(p.hash, "2468-pin"));

	/* The right code is not enough; a wrong PIN is refused; the right one re-registers. */
	new_code(ph, code);
	ck_assert_int_eq(do_verify(ph, code, NULL, &b), SP_EPERM);
	ck_assert_int_eq(do_verify(ph, code, "1357-pin", &b), SP_EAUTH);
	ck_assert_int_eq(do_verify(ph, code, "2468-pin", &b), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_USER), a.user);
	b.user = a.user;
	b.device = sp_frame_u64(&env.r.out, SP_F_DEVICE);
	const sp_val *rev = sp_frame_get(&env.r.out, SP_F_DEVICES);
	ck_assert_ptr_nonnull(rev);
	ck_assert_uint_eq(rev->us.n, 1);
	ck_assert_uint_eq(rev->us.v[0], a.device);

	/* The lock outlives the re-registration and a restart. */
	restart();
	new_code(ph, code);
	ck_assert_int_eq(do_verify(ph, code, NULL, &c), SP_EPERM);
	/* The new primary clears it; then the code alone will do. */
	ck_assert_int_eq(do_set_pin(&b, NULL), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_LOCKED), 0);
	ck_assert_int_eq(do_set_pin(&b, NULL), SP_OK); /* clearing twice answers the same */
	ck_assert_int_eq(do_verify(ph, code, NULL, &c), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_USER), a.user);
}
END_TEST

START_TEST(pin_budget)
{
	const char *ph = "+14155551006";
	kt_device a, b;
	char code[7];
	kt_device_new(&a);
	kt_device_new(&b);
	ck_assert_int_eq(kt_register(&env, ph, &a), SP_OK);
	ck_assert_int_eq(do_set_pin(&a, "0000"), SP_OK);
	new_code(ph, code);
	ck_assert_int_eq(do_verify(ph, code, "1111", &b), SP_EAUTH);
	/* Wrong PINs do not consume the code, but a new code does not renew them. */
	new_code(ph, code);
	ck_assert_int_eq(do_verify(ph, code, "2222", &b), SP_EAUTH);
	ck_assert_int_eq(do_verify(ph, code, "0000", &b), SP_ERATELIMIT);
	assert_budget_refusal();
	restart();
	ck_assert_int_eq(do_verify(ph, code, "0000", &b), SP_ERATELIMIT);
	/* The old primary still works: nothing was re-registered. */
	sp_frame f;
	sp_frame_init(&f, SP_T_KEYS_STATUS, 1, true);
	kt_set_auth(&f, &a);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	kt_now += KEYS_BUDGET_WINDOW_MS;
	new_code(ph, code);
	ck_assert_int_eq(do_verify(ph, code, "0000", &b), SP_OK);
}
END_TEST

START_TEST(set_pin_checks)
{
	kt_device a, linked;
	kt_device_new(&a);
	kt_device_new(&linked);
	ck_assert_int_eq(kt_register(&env, "+14155551007", &a), SP_OK);
	ck_assert_int_eq(kt_link(&env, &a, &linked), SP_OK);
	ck_assert_int_eq(do_set_pin(NULL, "1234"), SP_EAUTH);
	ck_assert_int_eq(do_set_pin(&linked, "1234"), SP_EPERM);
	ck_assert_int_eq(do_set_pin(&a, "123"), SP_EINVAL);
	ck_assert_int_eq(do_set_pin(&a, "12\n34"), SP_EINVAL);
	char longpin[80];
	memset(longpin, '7', 65);
	longpin[65] = '\0';
	ck_assert_int_eq(do_set_pin(&a, longpin), SP_EINVAL);
	longpin[64] = '\0';
	ck_assert_int_eq(do_set_pin(&a, longpin), SP_OK);
	/* VERIFY with a malformed PIN is refused before anything is counted. */
	kt_device b;
	kt_device_new(&b);
	char code[7];
	new_code("+14155551007", code);
	ck_assert_int_eq(do_verify("+14155551007", code, "1\x01" "23", &b), SP_EINVAL);
	ck_assert_int_eq(do_verify("+14155551007", code, longpin, &b), SP_OK);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("keysrv_otp");
	TCase *tc = tcase_create("otp");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, wrong_codes_counted_across_reregistration);
	tcase_add_test(tc, budgets_survive_restart);
	tcase_add_test(tc, budget_records_swept);
	tcase_add_test(tc, registration_lock);
	tcase_add_test(tc, pin_budget);
	tcase_add_test(tc, set_pin_checks);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
