/* keysrv prekeys: signed prekey signatures (WIRE.md vector and bad ones), upload limits,
 * bundles that hand out each one-time prekey once (also under concurrency), the refill
 * flag and metric, and revocation deleting prekeys. */
#include <check.h>
#include <pthread.h>
#include <string.h>

#include "keysrv/prekeys.h"
#include "keysrv_harness.h"
#include "sp_bytes.h"
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

static void
unhex(const char *h, uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		sscanf(h + 2 * i, "%2hhx", &out[i]);
}

/* WIRE.md vector1 (bob). */
static const char bob_ik_priv[] = "2f5c90d6316c9c744538f3fbc053dae0e1f586af199ff6d01566a76efe284807";
static const char bob_ik_pub[] = "058908df1da9e22e9ce1bf81b26ae931572d3eaf4b4ecd6d5190a9305d60954e27";
static const char bob_spk_pub[] = "0513d21772a7df971babda137c622d1d9f3f8c357508442ccf59d7730b4ef85627";
static const char bob_spk_sig[] = "05dec20047a0385b527b1895c4fce92c6908410f41f7d0ca42fbd8aa301507ca"
				  "342ec88f29a22ae66b66b6eb11455409b269236513791ab30d2281276ed74989";

static int
upload_spk(const kt_device *d, uint32_t id, const uint8_t spk[33], const uint8_t sig[64])
{
	sp_frame f;
	sp_frame_init(&f, SP_T_KEYS_UPLOAD, 1, true);
	sp_frame_set_u64(&f, SP_F_SPK_ID, id);
	sp_frame_set_bin(&f, SP_F_SPK, spk, 33);
	sp_frame_set_bin(&f, SP_F_SPK_SIG, sig, 64);
	kt_set_auth(&f, d);
	return kt_call(&env, &f);
}

static int
bundle(const kt_device *caller, uint64_t user, uint64_t device)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_BUNDLE_GET, 1, true);
	sp_frame_set_u64(&f, SP_F_USER, user);
	if (device)
		sp_frame_set_u64(&f, SP_F_DEVICE, device);
	kt_set_auth(&f, caller);
	return kt_call(&env, &f);
}

START_TEST(vector_signature)
{
	uint8_t ik[33], spk[33], sig[64];
	unhex(bob_ik_pub, ik, 33);
	unhex(bob_spk_pub, spk, 33);
	unhex(bob_spk_sig, sig, 64);
	ck_assert_int_eq(keys_prekeys_verify_spk(ik, spk, sig), SP_OK);
	for (int bit = 0; bit < 64 * 8; bit += 7) {
		sig[bit / 8] ^= (uint8_t)(1 << (bit % 8));
		ck_assert_int_eq(keys_prekeys_verify_spk(ik, spk, sig), SP_EBADSIG);
		sig[bit / 8] ^= (uint8_t)(1 << (bit % 8));
	}
	spk[5] ^= 1;
	ck_assert_int_eq(keys_prekeys_verify_spk(ik, spk, sig), SP_EBADSIG);
	spk[5] ^= 1;
	spk[0] = 0x04;
	ck_assert_int_eq(keys_prekeys_verify_spk(ik, spk, sig), SP_EINVAL);
}
END_TEST

START_TEST(signed_prekey_upload)
{
	kt_device bob, other;
	uint8_t priv[32], spk[33], sig[64];
	kt_device_new(&bob);
	kt_device_new(&other);
	/* Bob registers with the vector's identity key and its own fresh signed prekey. */
	unhex(bob_ik_priv, priv, 32);
	ck_assert_int_eq(sig_keypair_from_private(&bob.ik, priv), SP_OK);
	sig_curve_sign(bob.spk_sig, bob.ik.priv, bob.spk.pub, 33);
	ck_assert_int_eq(kt_register(&env, "+14155551001", &bob), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155551002", &other), SP_OK);

	unhex(bob_spk_pub, spk, 33);
	unhex(bob_spk_sig, sig, 64);
	sig[10] ^= 0x40;
	ck_assert_int_eq(upload_spk(&bob, 7, spk, sig), SP_EBADSIG);
	sig[10] ^= 0x40;
	/* Valid for bob's identity, not for another device's. */
	ck_assert_int_eq(upload_spk(&other, 7, spk, sig), SP_EBADSIG);
	ck_assert_int_eq(upload_spk(&bob, 7, spk, sig), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_SPK_ID), 7);

	/* The bundle carries exactly what was uploaded. */
	ck_assert_int_eq(bundle(&other, bob.user, bob.device), SP_OK);
	const sp_val *b = sp_frame_get(&env.r.out, SP_F_BUNDLES);
	ck_assert_uint_eq(b->rs.n, 1);
	ck_assert_uint_eq(sp_frame_u64(&b->rs.v[0], SP_F_SPK_ID), 7);
	ck_assert_mem_eq(sp_frame_bin(&b->rs.v[0], SP_F_SPK).p, spk, 33);
	ck_assert_mem_eq(sp_frame_bin(&b->rs.v[0], SP_F_SPK_SIG).p, sig, 64);
	ck_assert_mem_eq(sp_frame_bin(&b->rs.v[0], SP_F_IDENTITY_KEY).p, bob.ik.pub, 33);
	ck_assert_uint_eq(sp_frame_u64(&b->rs.v[0], SP_F_REG_ID), bob.reg_id);
	ck_assert(!sp_frame_has(&b->rs.v[0], SP_F_OPK));

	/* A bad signature in an upload rejects the whole upload, prekeys included. */
	sp_frame f, recs[3];
	uint8_t keys[3][33];
	kt_prekeys(recs, keys, 100, 3);
	sig[0] ^= 1;
	sp_frame_init(&f, SP_T_KEYS_UPLOAD, 1, true);
	sp_frame_set_u64(&f, SP_F_SPK_ID, 8);
	sp_frame_set_bin(&f, SP_F_SPK, spk, 33);
	sp_frame_set_bin(&f, SP_F_SPK_SIG, sig, 64);
	sp_frame_set_recs(&f, SP_F_PREKEYS, recs, 3);
	kt_set_auth(&f, &bob);
	ck_assert_int_eq(kt_call(&env, &f), SP_EBADSIG);
	sp_frame_init(&f, SP_T_KEYS_STATUS, 1, true);
	kt_set_auth(&f, &bob);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 0);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_SPK_ID), 7);
}
END_TEST

START_TEST(upload_limits)
{
	kt_device d;
	kt_device_new(&d);
	ck_assert_int_eq(kt_register(&env, "+14155551003", &d), SP_OK);
	ck_assert_int_eq(kt_upload(&env, &d, 1, 201), SP_ELIMIT);
	for (uint32_t i = 0; i < 5; i++) {
		ck_assert_int_eq(kt_upload(&env, &d, 1 + 200 * i, 200), SP_OK);
		ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 200 * (i + 1));
	}
	ck_assert_int_eq(kt_upload(&env, &d, 5000, 1), SP_ELIMIT);
	/* Re-uploading existing ids (a resent request) does not count twice. */
	ck_assert_int_eq(kt_upload(&env, &d, 1, 200), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 1000);
	ck_assert(!sp_frame_u64(&env.r.out, SP_F_REFILL));

	/* Malformed keys and ids. */
	sp_frame f, rec;
	uint8_t bad[33] = {0x07};
	sp_frame_init(&rec, SP_T_PREKEY, 0, false);
	sp_frame_set_u64(&rec, SP_F_OPK_ID, 1);
	sp_frame_set_bin(&rec, SP_F_OPK, bad, 33);
	sp_frame_init(&f, SP_T_KEYS_UPLOAD, 1, true);
	sp_frame_set_recs(&f, SP_F_PREKEYS, &rec, 1);
	kt_set_auth(&f, &d);
	ck_assert_int_eq(kt_call(&env, &f), SP_EINVAL);
	bad[0] = 0x05;
	sp_frame_set_u64(&rec, SP_F_OPK_ID, 1ULL << 40);
	ck_assert_int_eq(kt_call(&env, &f), SP_ERANGE);
	/* spk fields are all or nothing. */
	sp_frame_init(&f, SP_T_KEYS_UPLOAD, 1, true);
	sp_frame_set_u64(&f, SP_F_SPK_ID, 3);
	kt_set_auth(&f, &d);
	ck_assert_int_eq(kt_call(&env, &f), SP_EINVAL);
}
END_TEST

START_TEST(bundle_hands_out_each_key_once)
{
	kt_device bob, alice;
	kt_device_new(&bob);
	kt_device_new(&alice);
	ck_assert_int_eq(kt_register(&env, "+14155551004", &bob), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155551005", &alice), SP_OK);
	ck_assert_int_eq(kt_upload(&env, &bob, 1, 50), SP_OK);
	ck_assert(sp_frame_u64(&env.r.out, SP_F_REFILL) == 0);
	bool seen[51] = {false};
	sp_metric *low = sp_metric_counter("keysrv_prekey_low_total", "");
	int64_t low0 = sp_metric_value(low);
	for (int i = 0; i < 50; i++) {
		ck_assert_int_eq(bundle(&alice, bob.user, 0), SP_OK);
		const sp_val *b = sp_frame_get(&env.r.out, SP_F_BUNDLES);
		ck_assert_uint_eq(b->rs.n, 1);
		ck_assert(sp_frame_has(&b->rs.v[0], SP_F_OPK));
		uint64_t id = sp_frame_u64(&b->rs.v[0], SP_F_OPK_ID);
		ck_assert_uint_eq(id, (uint64_t)i + 1); /* lowest id first */
		ck_assert(!seen[id]);
		seen[id] = true;
		/* Alice's own count is 0: she is told to refill. */
		ck_assert(sp_frame_u64(&env.r.out, SP_F_REFILL));
	}
	/* Crossing the low-water mark (20) counted once. */
	ck_assert_int_eq(sp_metric_value(low) - low0, 1);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(bundle(&alice, bob.user, bob.device), SP_OK);
		const sp_val *b = sp_frame_get(&env.r.out, SP_F_BUNDLES);
		ck_assert_uint_eq(b->rs.n, 1);
		ck_assert(!sp_frame_has(&b->rs.v[0], SP_F_OPK));
		ck_assert(sp_frame_has(&b->rs.v[0], SP_F_SPK));
	}
	/* Bob learns he must refill from his own requests. */
	sp_frame f;
	sp_frame_init(&f, SP_T_KEYS_STATUS, 1, true);
	kt_set_auth(&f, &bob);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 0);
	ck_assert(sp_frame_u64(&env.r.out, SP_F_REFILL));
	/* Unknown user or device. */
	ck_assert_int_eq(bundle(&alice, bob.user + 1, 0), SP_ENOTFOUND);
	ck_assert_int_eq(bundle(&alice, bob.user, alice.device), SP_ENOTFOUND);
}
END_TEST

static int
bundle_req(const kt_device *caller, uint64_t user, const uint8_t req_id[16])
{
	sp_frame f;
	sp_frame_init(&f, SP_T_BUNDLE_GET, 7, true);
	sp_frame_set_u64(&f, SP_F_USER, user);
	sp_frame_set_bin(&f, SP_F_REQ_ID, req_id, 16);
	kt_set_auth(&f, caller);
	return kt_call(&env, &f);
}

static uint64_t
first_opk_id(void)
{
	const sp_val *b = sp_frame_get(&env.r.out, SP_F_BUNDLES);
	ck_assert_uint_eq(b->rs.n, 1);
	ck_assert(sp_frame_has(&b->rs.v[0], SP_F_OPK));
	return sp_frame_u64(&b->rs.v[0], SP_F_OPK_ID);
}

/* A retried hand-out (same caller device, same request id: connsrv after a failover) gets
 * the first answer; the key goes out once. */
START_TEST(bundle_retry_same_keys)
{
	kt_device bob, alice, carol;
	kt_device_new(&bob);
	kt_device_new(&alice);
	kt_device_new(&carol);
	ck_assert_int_eq(kt_register(&env, "+14155551024", &bob), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155551025", &alice), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155551026", &carol), SP_OK);
	ck_assert_int_eq(kt_upload(&env, &bob, 1, 5), SP_OK);
	uint8_t id1[16], id2[16];
	memset(id1, 0x11, sizeof(id1));
	memset(id2, 0x22, sizeof(id2));
	sp_metric *replayed = sp_metric_counter("keysrv_replies_replayed_total", "");
	int64_t r0 = sp_metric_value(replayed);

	ck_assert_int_eq(bundle_req(&alice, bob.user, id1), SP_OK);
	uint64_t first = first_opk_id();
	ck_assert_uint_eq(env.r.out.id, 7);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(bundle_req(&alice, bob.user, id1), SP_OK);
		ck_assert_uint_eq(first_opk_id(), first);
		ck_assert_uint_eq(env.r.out.id, 7);
		ck_assert(env.r.out.has_id);
	}
	ck_assert_int_eq(sp_metric_value(replayed) - r0, 3);
	/* A new request id, or another device using the same id, gets the next key. */
	ck_assert_int_eq(bundle_req(&alice, bob.user, id2), SP_OK);
	uint64_t second = first_opk_id();
	ck_assert_uint_ne(second, first);
	ck_assert_int_eq(bundle_req(&carol, bob.user, id1), SP_OK);
	uint64_t third = first_opk_id();
	ck_assert_uint_ne(third, first);
	ck_assert_uint_ne(third, second);
	/* Three keys handed out, two left. */
	sp_frame f;
	sp_frame_init(&f, SP_T_KEYS_STATUS, 1, true);
	kt_set_auth(&f, &bob);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_COUNT), 2);
}
END_TEST

typedef struct race {
	const kt_device *caller;
	uint64_t user;
	int rc;
	bool has_opk;
	uint64_t opk_id;
	uint8_t opk[33];
} race;

static void *
race_thread(void *arg)
{
	race *x = arg;
	sp_frame f;
	keys_req r;
	sp_frame_init(&f, SP_T_BUNDLE_GET, 1, true);
	sp_frame_set_u64(&f, SP_F_USER, x->user);
	kt_set_auth(&f, x->caller);
	x->rc = keys_call(env.ctx, &f, &r);
	if (x->rc == SP_OK) {
		const sp_val *b = sp_frame_get(&r.out, SP_F_BUNDLES);
		if (b->rs.n == 1 && sp_frame_has(&b->rs.v[0], SP_F_OPK)) {
			x->has_opk = true;
			x->opk_id = sp_frame_u64(&b->rs.v[0], SP_F_OPK_ID);
			memcpy(x->opk, sp_frame_bin(&b->rs.v[0], SP_F_OPK).p, 33);
		}
	}
	keys_req_fini(&r);
	return NULL;
}

START_TEST(concurrent_bundles)
{
	kt_device bob, alice;
	kt_device_new(&bob);
	kt_device_new(&alice);
	ck_assert_int_eq(kt_register(&env, "+14155551006", &bob), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155551007", &alice), SP_OK);
	ck_assert_int_eq(kt_upload(&env, &bob, 1, 50), SP_OK);
	enum { N = 100 };
	static race x[N];
	pthread_t t[N];
	for (int i = 0; i < N; i++) {
		x[i] = (race){.caller = &alice, .user = bob.user};
		ck_assert_int_eq(pthread_create(&t[i], NULL, race_thread, &x[i]), 0);
	}
	for (int i = 0; i < N; i++)
		pthread_join(t[i], NULL);
	int with = 0;
	bool seen[51] = {false};
	for (int i = 0; i < N; i++) {
		ck_assert_int_eq(x[i].rc, SP_OK);
		if (!x[i].has_opk)
			continue;
		with++;
		ck_assert_uint_ge(x[i].opk_id, 1);
		ck_assert_uint_le(x[i].opk_id, 50);
		ck_assert(!seen[x[i].opk_id]);
		seen[x[i].opk_id] = true;
		for (int j = 0; j < i; j++)
			ck_assert(!x[j].has_opk || memcmp(x[j].opk, x[i].opk, 33) != 0);
	}
	ck_assert_int_eq(with, 50);
}
END_TEST

/* Counts one-time prekey rows of `device` straight from the store. */
static int
stored_opks(uint64_t device)
{
	MDB_txn *txn;
	MDB_cursor *c;
	uint8_t key[12] = {0};
	MDB_val k = {sizeof(key), key}, v;
	int n = 0, rc;
	sp_be64_put(key, device);
	ck_assert_int_eq(keys_store_begin(env.ctx->store, false, &txn), SP_OK);
	ck_assert_int_eq(mdb_cursor_open(txn, keys_store_dbi(env.ctx->store, KDB_OPKS), &c), 0);
	for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0 && memcmp(k.mv_data, key, 8) == 0;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
		n++;
	mdb_cursor_close(c);
	keys_store_abort(txn);
	return n;
}

START_TEST(removed_device_loses_prekeys)
{
	kt_device p, l, other;
	kt_device_new(&p);
	kt_device_new(&l);
	kt_device_new(&other);
	ck_assert_int_eq(kt_register(&env, "+14155551008", &p), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155551009", &other), SP_OK);
	ck_assert_int_eq(kt_link(&env, &p, &l), SP_OK);
	ck_assert_int_eq(kt_upload(&env, &l, 1, 30), SP_OK);
	ck_assert_int_eq(kt_upload(&env, &p, 1, 30), SP_OK);
	ck_assert_int_eq(stored_opks(l.device), 30);
	/* A user-wide bundle covers both devices; the caller's own device is skipped. */
	ck_assert_int_eq(bundle(&other, p.user, 0), SP_OK);
	ck_assert_uint_eq(sp_frame_get(&env.r.out, SP_F_BUNDLES)->rs.n, 2);
	ck_assert_int_eq(bundle(&p, p.user, 0), SP_OK);
	ck_assert_uint_eq(sp_frame_get(&env.r.out, SP_F_BUNDLES)->rs.n, 1);
	ck_assert_uint_eq(sp_frame_u64(&sp_frame_get(&env.r.out, SP_F_BUNDLES)->rs.v[0], SP_F_DEVICE),
	    l.device);

	sp_frame f;
	sp_frame_init(&f, SP_T_REMOVE_DEVICE, 1, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, l.device);
	kt_set_auth(&f, &p);
	ck_assert_int_eq(kt_call(&env, &f), SP_OK);
	ck_assert_int_eq(env.r.out.type, SP_T_DEVICE_REMOVED);
	ck_assert_uint_eq(sp_frame_u64(&env.r.out, SP_F_DEVICE), l.device);
	ck_assert_int_eq(stored_opks(l.device), 0);
	ck_assert_int_eq(stored_opks(p.device), 29);
	ck_assert_int_eq(bundle(&other, p.user, 0), SP_OK);
	ck_assert_uint_eq(sp_frame_get(&env.r.out, SP_F_BUNDLES)->rs.n, 1);
	ck_assert_int_eq(bundle(&other, p.user, l.device), SP_ENOTFOUND);
	/* The removed device can no longer upload. */
	ck_assert_int_eq(kt_upload(&env, &l, 100, 1), SP_EAUTH);
}
END_TEST

START_TEST(low_water_gauge)
{
	sp_metric *g = sp_metric_gauge("keysrv_prekey_low_devices", "");
	int64_t g0 = sp_metric_value(g);
	kt_device d, a;
	kt_device_new(&d);
	kt_device_new(&a);
	ck_assert_int_eq(kt_register(&env, "+14155551010", &d), SP_OK);
	ck_assert_int_eq(kt_register(&env, "+14155551011", &a), SP_OK);
	ck_assert_int_eq(sp_metric_value(g) - g0, 2); /* both start with none */
	ck_assert_int_eq(kt_upload(&env, &d, 1, 20), SP_OK);
	ck_assert_int_eq(sp_metric_value(g) - g0, 1);
	ck_assert_int_eq(bundle(&a, d.user, 0), SP_OK);
	ck_assert_int_eq(sp_metric_value(g) - g0, 2);
	/* A restart recomputes the gauge from the store. */
	kt_env_close(&env, false);
	sp_metric_set(g, 0);
	keys_ctx_cfg cfg = kt_default_cfg(&env);
	ck_assert_int_eq(kt_env_open_cfg(&env, &cfg), SP_OK);
	ck_assert_int_eq(sp_metric_value(g), 2);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("keysrv_prekeys");
	TCase *tc = tcase_create("prekeys");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, vector_signature);
	tcase_add_test(tc, signed_prekey_upload);
	tcase_add_test(tc, upload_limits);
	tcase_add_test(tc, bundle_hands_out_each_key_once);
	tcase_add_test(tc, bundle_retry_same_keys);
	tcase_add_test(tc, concurrent_bundles);
	tcase_add_test(tc, removed_device_loses_prekeys);
	tcase_add_test(tc, low_water_gauge);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
