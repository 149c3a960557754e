/* keysrv store and rate limiter: record round trips, damaged records, ids, sweeping,
 * token buckets (refill, eviction, fail closed), the dev OTP sender's file. */
#include <check.h>

#include "keysrv/ratelimit.h"
#include "keysrv_harness.h"
#include "sp_bytes.h"
#include "check_run.h"

static char dir[256];
static keys_store *st;

static void
setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/keysrv-store-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(keys_store_open(&st, dir, 16 << 20), SP_OK);
}

static void
teardown(void)
{
	keys_store_close(st);
	kt_rmtree(dir);
}

START_TEST(device_round_trip)
{
	keys_device d, e;
	MDB_txn *txn;
	memset(&d, 0, sizeof(d));
	d.id = 0x1122334455667788ULL;
	d.user = 99;
	d.flags = KEYS_DEV_PRIMARY | KEYS_DEV_HAS_SPK;
	d.reg_id = 0x3fff;
	d.created_ms = 123456789;
	memset(d.ik, 0xa5, sizeof(d.ik));
	memset(d.auth_key, 0x5a, sizeof(d.auth_key));
	d.spk_id = 0xfffffffe;
	memset(d.spk, 3, sizeof(d.spk));
	memset(d.spk_sig, 4, sizeof(d.spk_sig));
	d.opk_count = 1000;
	d.push_len = KEYS_PUSH_MAX;
	memset(d.push, 'p', KEYS_PUSH_MAX);
	ck_assert_int_eq(keys_store_begin(st, true, &txn), SP_OK);
	ck_assert_int_eq(keys_device_put(st, txn, &d), SP_OK);
	ck_assert_int_eq(keys_store_commit(txn), SP_OK);
	ck_assert_int_eq(keys_store_begin(st, false, &txn), SP_OK);
	ck_assert_int_eq(keys_device_get(st, txn, d.id, &e), SP_OK);
	ck_assert_int_eq(keys_device_get(st, txn, d.id + 1, &e), SP_ENOTFOUND);
	ck_assert_int_eq(keys_device_get(st, txn, d.id, &e), SP_OK);
	keys_store_abort(txn);
	ck_assert_uint_eq(e.user, 99);
	ck_assert_uint_eq(e.flags, d.flags);
	ck_assert_uint_eq(e.reg_id, 0x3fff);
	ck_assert_uint_eq(e.spk_id, 0xfffffffe);
	ck_assert_uint_eq(e.opk_count, 1000);
	ck_assert_mem_eq(e.ik, d.ik, 33);
	ck_assert_mem_eq(e.spk_sig, d.spk_sig, 64);
	ck_assert_uint_eq(e.push_len, KEYS_PUSH_MAX);
	ck_assert_mem_eq(e.push, d.push, KEYS_PUSH_MAX);
	/* A push token over the bound is refused on write. */
	d.push_len = KEYS_PUSH_MAX + 1;
	ck_assert_int_eq(keys_store_begin(st, true, &txn), SP_OK);
	ck_assert_int_eq(keys_device_put(st, txn, &d), SP_EINVAL);
	keys_store_abort(txn);
}
END_TEST

START_TEST(damaged_records)
{
	MDB_txn *txn;
	keys_device d;
	keys_user u;
	uint8_t key[8], junk[40];
	memset(junk, 1, sizeof(junk)); /* version byte 1, then far too short */
	sp_be64_put(key, 5);
	ck_assert_int_eq(keys_store_begin(st, true, &txn), SP_OK);
	ck_assert_int_eq(keys_store_put(st, txn, KDB_DEVICES, key, 8, junk, sizeof(junk), 0), SP_OK);
	ck_assert_int_eq(keys_store_put(st, txn, KDB_USERS, key, 8, junk, 3, 0), SP_OK);
	ck_assert_int_eq(keys_device_get(st, txn, 5, &d), SP_ESTORE);
	ck_assert_int_eq(keys_user_get(st, txn, 5, &u), SP_ESTORE);
	/* A user record claiming more devices than allowed. */
	uint8_t bad[1 + 8 + 8 + 2 + 1] = {1};
	bad[sizeof(bad) - 1] = KEYS_MAX_DEVICES + 1;
	ck_assert_int_eq(keys_store_put(st, txn, KDB_USERS, key, 8, bad, sizeof(bad), 0), SP_OK);
	ck_assert_int_eq(keys_user_get(st, txn, 5, &u), SP_ESTORE);
	junk[0] = 2; /* unknown version */
	ck_assert_int_eq(keys_store_put(st, txn, KDB_DEVICES, key, 8, junk, sizeof(junk), 0), SP_OK);
	ck_assert_int_eq(keys_device_get(st, txn, 5, &d), SP_ESTORE);
	keys_store_abort(txn);
}
END_TEST

START_TEST(ids_and_sweep)
{
	MDB_txn *txn;
	uint64_t a, b;
	ck_assert_int_eq(keys_store_begin(st, true, &txn), SP_OK);
	ck_assert_int_eq(keys_store_new_id(st, txn, KDB_USERS, &a), SP_OK);
	ck_assert_int_eq(keys_store_new_id(st, txn, KDB_USERS, &b), SP_OK);
	ck_assert_uint_ne(a, 0);
	ck_assert_uint_ne(a, b);
	keys_otp o = {.expires_ms = 1000, .attempts_left = 5};
	ck_assert_int_eq(keys_otp_put(st, txn, "+15550000001", &o), SP_OK);
	o.expires_ms = 3000;
	ck_assert_int_eq(keys_otp_put(st, txn, "+15550000002", &o), SP_OK);
	keys_link l = {.expires_ms = 1500};
	uint8_t lk[32] = {7};
	ck_assert_int_eq(keys_link_put(st, txn, lk, &l), SP_OK);
	ck_assert_int_eq(keys_store_commit(txn), SP_OK);
	unsigned n = 0;
	ck_assert_int_eq(keys_store_sweep(st, 2000, 100, &n), SP_OK);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(keys_store_begin(st, false, &txn), SP_OK);
	ck_assert_int_eq(keys_otp_get(st, txn, "+15550000001", &o), SP_ENOTFOUND);
	ck_assert_int_eq(keys_otp_get(st, txn, "+15550000002", &o), SP_OK);
	ck_assert_uint_eq(o.expires_ms, 3000);
	ck_assert_int_eq(keys_link_get(st, txn, lk, &l), SP_ENOTFOUND);
	keys_store_abort(txn);
}
END_TEST

START_TEST(secret_is_stable)
{
	uint8_t s1[32];
	memcpy(s1, keys_store_secret(st), 32);
	keys_store_close(st);
	ck_assert_int_eq(keys_store_open(&st, dir, 16 << 20), SP_OK);
	ck_assert_mem_eq(keys_store_secret(st), s1, 32);
	uint8_t zero[32] = {0};
	ck_assert(memcmp(s1, zero, 32) != 0);
}
END_TEST

START_TEST(bucket_refill)
{
	keys_rl *rl;
	uint64_t retry = 0;
	ck_assert_int_eq(keys_rl_new(&rl, 2, 1, 100), SP_OK);
	ck_assert_int_eq(keys_rl_take(rl, "k", 0, NULL), SP_OK);
	ck_assert_int_eq(keys_rl_take(rl, "k", 0, NULL), SP_OK);
	ck_assert_int_eq(keys_rl_take(rl, "k", 0, &retry), SP_ERATELIMIT);
	ck_assert_uint_eq(retry, 60000);
	ck_assert_int_eq(keys_rl_take(rl, "other", 0, NULL), SP_OK);
	/* Frequent refused calls do not lose the refill. */
	for (uint64_t t = 100; t < 60000; t += 100)
		ck_assert_int_eq(keys_rl_take(rl, "k", t, NULL), SP_ERATELIMIT);
	ck_assert_int_eq(keys_rl_take(rl, "k", 60000, NULL), SP_OK);
	ck_assert_int_eq(keys_rl_take(rl, "k", 60001, &retry), SP_ERATELIMIT);
	ck_assert_uint_ge(retry, 59000);
	/* Refill stops at the burst. */
	ck_assert_int_eq(keys_rl_take(rl, "k", 10000000, NULL), SP_OK);
	ck_assert_int_eq(keys_rl_take(rl, "k", 10000000, NULL), SP_OK);
	ck_assert_int_eq(keys_rl_take(rl, "k", 10000000, NULL), SP_ERATELIMIT);
	keys_rl_free(rl);
}
END_TEST

START_TEST(bucket_memory_bound)
{
	keys_rl *rl;
	char k[32];
	ck_assert_int_eq(keys_rl_new(&rl, 1, 60, 4), SP_OK);
	for (int i = 0; i < 4; i++) {
		snprintf(k, sizeof(k), "key%d", i);
		ck_assert_int_eq(keys_rl_take(rl, k, 0, NULL), SP_OK);
	}
	/* Full of busy keys: a new key is refused rather than forgetting a limit. */
	ck_assert_int_eq(keys_rl_take(rl, "new", 0, NULL), SP_ERATELIMIT);
	/* A second later every bucket has refilled: they are dropped, the new key fits. */
	ck_assert_int_eq(keys_rl_take(rl, "new", 1000, NULL), SP_OK);
	ck_assert_int_eq(keys_rl_take(rl, "new", 1000, NULL), SP_ERATELIMIT);
	keys_rl_free(rl);
}
END_TEST

START_TEST(dev_sender_file)
{
	keys_otp_sender *s;
	char otp_dir[300], code[7];
	snprintf(otp_dir, sizeof(otp_dir), "%s/codes", dir);
	keys_otp_sender_cfg cfg = {.mode = "dev", .dir = otp_dir, .timeout_ms = 1000, .queue_max = 4};
	ck_assert_int_eq(keys_otp_sender_new(&s, &cfg), SP_OK);
	ck_assert_int_eq(keys_otp_send(s, "+15551234567", "012345"), SP_OK);
	ck_assert_int_eq(kt_read_otp(otp_dir, "+15551234567", code), 0);
	ck_assert_str_eq(code, "012345");
	ck_assert_int_eq(keys_otp_send(s, "+15551234567", "999999"), SP_OK);
	ck_assert_int_eq(kt_read_otp(otp_dir, "+15551234567", code), 0);
	ck_assert_str_eq(code, "999999");
	keys_otp_sender_free(s);
	/* Bad configurations. */
	keys_otp_sender_cfg bad = {.mode = "sms", .dir = otp_dir, .timeout_ms = 1000, .queue_max = 4};
	ck_assert_int_eq(keys_otp_sender_new(&s, &bad), SP_ECONFIG);
	/* The webhook wants https://, or http:// only when told it is insecure. */
	keys_otp_sender_cfg wh = {.mode = "webhook", .timeout_ms = 1000, .queue_max = 4};
	ck_assert_int_eq(keys_otp_sender_new(&s, &wh), SP_ECONFIG);
	wh.url = "http://127.0.0.1:1/x";
	ck_assert_int_eq(keys_otp_sender_new(&s, &wh), SP_ECONFIG);
	wh.url = "ftp://127.0.0.1/x";
	wh.insecure_http = true;
	ck_assert_int_eq(keys_otp_sender_new(&s, &wh), SP_ECONFIG);
	wh.url = "http://127.0.0.1:1/x";
	ck_assert_int_eq(keys_otp_sender_new(&s, &wh), SP_OK);
	keys_otp_sender_free(s);
	wh.url = "https://127.0.0.1:1/x?token=t";
	wh.insecure_http = false;
	wh.ca_file = "/nonexistent/ca.pem";
	ck_assert_int_eq(keys_otp_sender_new(&s, &wh), SP_ECONFIG);
	wh.ca_file = NULL;
	ck_assert_int_eq(keys_otp_sender_new(&s, &wh), SP_OK);
	keys_otp_sender_free(s);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("keysrv_store");
	TCase *tc = tcase_create("store");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, device_round_trip);
	tcase_add_test(tc, damaged_records);
	tcase_add_test(tc, ids_and_sweep);
	tcase_add_test(tc, secret_is_stable);
	tcase_add_test(tc, bucket_refill);
	tcase_add_test(tc, bucket_memory_bound);
	tcase_add_test(tc, dev_sender_file);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
