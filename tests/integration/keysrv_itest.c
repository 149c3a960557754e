/*
 * keysrv against a running process over NNG: --help, registration (wrong, expired and
 * reused codes; rate limits), device linking with a bad and a good signature, a signed
 * prekey with a bad signature, 100 concurrent BUNDLE requests for a device with 50
 * one-time prekeys, group admin checks and limits, malformed requests, and restarts
 * (SIGTERM and SIGKILL) that keep everything.
 */
#include <pthread.h>

#include "keysrv_harness.h"

static char tmp[256], data_dir[300], otp_dir[300], log_path[300];

/* otp_ttl: seconds a code lives (short for the expiry check, long otherwise). */
static void
start(kt_proc *p, kt_conn *c, const char *otp_ttl)
{
	const char *args[] = {"--data-dir", data_dir, "--otp-dir", otp_dir, "--metrics-port", "-1",
		"--otp-ttl", otp_ttl, "--rate-bundle-burst", "1000", "--workers", "4", NULL};
	KT_CHECK_RC(kt_keysrv_start(p, log_path, args, NULL, 0), SP_OK);
	KT_CHECK_RC(kt_conn_open(c, p->url), SP_OK);
}

static int
rpc_register(kt_conn *c, const char *phone, const char *source)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_REGISTER, 1, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	if (source)
		sp_frame_set_str(&f, SP_F_SOURCE, source);
	return kt_rpc(c, &f);
}

static int
rpc_verify(kt_conn *c, const char *phone, const char *code, kt_device *d)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_VERIFY, 2, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	sp_frame_set_str(&f, SP_F_OTP, code);
	kt_set_newdev(&f, d, 1);
	int rc = kt_rpc(c, &f);
	if (rc == SP_OK) {
		d->user = sp_frame_u64(&c->rep, SP_F_USER);
		d->device = sp_frame_u64(&c->rep, SP_F_DEVICE);
	}
	return rc;
}

static void
new_account(kt_conn *c, const char *phone, kt_device *d)
{
	char code[7];
	kt_device_new(d);
	KT_CHECK_RC(rpc_register(c, phone, NULL), SP_OK);
	KT_CHECK(kt_read_otp(otp_dir, phone, code) == 0);
	KT_CHECK_RC(rpc_verify(c, phone, code, d), SP_OK);
}

static int
rpc_upload(kt_conn *c, const kt_device *d, uint32_t first, uint32_t n)
{
	sp_frame f, recs[200];
	uint8_t keys[200][33];
	kt_prekeys(recs, keys, first, n);
	sp_frame_init(&f, SP_T_KEYS_UPLOAD, 3, true);
	sp_frame_set_recs(&f, SP_F_PREKEYS, recs, n);
	kt_set_auth(&f, d);
	return kt_rpc(c, &f);
}

static uint32_t
rpc_device_count(kt_conn *c, uint64_t user)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_DEVICES_GET, 4, true);
	sp_frame_set_u64(&f, SP_F_USER, user);
	KT_CHECK_RC(kt_rpc(c, &f), SP_OK);
	return sp_frame_get(&c->rep, SP_F_DEVICE_LIST)->rs.n;
}

static void
test_registration(kt_conn *c)
{
	kt_device d, other;
	char code[7], bad[7];
	kt_device_new(&d);
	kt_device_new(&other);
	/* Wrong code, then the right one. */
	KT_CHECK_RC(rpc_register(c, "+14155554001", NULL), SP_OK);
	KT_CHECK(c->rep.type == SP_T_REGISTERED);
	KT_CHECK(kt_read_otp(otp_dir, "+14155554001", code) == 0);
	memcpy(bad, code, 7);
	bad[5] = bad[5] == '0' ? '1' : '0';
	KT_CHECK_RC(rpc_verify(c, "+14155554001", bad, &d), SP_EAUTH);
	KT_CHECK_RC(rpc_verify(c, "+14155554001", code, &d), SP_OK);
	KT_CHECK(d.user != 0 && d.device != 0);
	/* Reused by someone else. */
	KT_CHECK_RC(rpc_verify(c, "+14155554001", code, &other), SP_EREPLAY);
	/* Expired (otp-ttl is 2 s here). */
	KT_CHECK_RC(rpc_register(c, "+14155554002", NULL), SP_OK);
	KT_CHECK(kt_read_otp(otp_dir, "+14155554002", code) == 0);
	kt_sleep_ms(2100);
	KT_CHECK_RC(rpc_verify(c, "+14155554002", code, &other), SP_EEXPIRED);
	/* Malformed phone. */
	KT_CHECK_RC(rpc_register(c, "+1234", NULL), SP_EINVAL);
	/* Per-phone limit (3 per burst by default), with a retry hint. */
	KT_CHECK_RC(rpc_register(c, "+14155554003", "192.0.2.1"), SP_OK);
	KT_CHECK_RC(rpc_register(c, "+14155554003", "192.0.2.1"), SP_OK);
	KT_CHECK_RC(rpc_register(c, "+14155554003", "192.0.2.2"), SP_OK);
	KT_CHECK_RC(rpc_register(c, "+14155554003", "192.0.2.3"), SP_ERATELIMIT);
	KT_CHECK(sp_frame_u64(&c->rep, SP_F_RETRY_AFTER) > 0);
	/* Per-source limit (30 per burst by default) across phones. */
	char phone[20];
	int ok = 0, limited = 0;
	for (int i = 0; i < 40; i++) {
		snprintf(phone, sizeof(phone), "+1415556%04d", i);
		int rc = rpc_register(c, phone, "198.51.100.7");
		ok += rc == SP_OK;
		limited += rc == SP_ERATELIMIT;
	}
	KT_CHECK(ok == 30 && limited == 10);
	fprintf(stderr, "registration: ok\n");
}

static void
test_linking(kt_conn *c, kt_device *prim, kt_device *linked)
{
	kt_device stranger;
	char code[9];
	uint8_t sig[64];
	kt_device_new(linked);
	kt_device_new(&stranger);
	sp_frame f;
	sp_frame_init(&f, SP_T_LINK_REQUEST, 5, true);
	kt_set_newdev(&f, linked, 1);
	KT_CHECK_RC(kt_rpc(c, &f), SP_OK);
	KT_CHECK(sp_frame_str(&c->rep, SP_F_LINK_CODE, code, sizeof(code)) == SP_OK);

	/* A signature by a key that is not the primary's. */
	kt_link_sig(sig, &stranger, linked);
	sp_frame_init(&f, SP_T_LINK_CONFIRM, 6, true);
	sp_frame_set_str(&f, SP_F_LINK_CODE, code);
	sp_frame_set_bin(&f, SP_F_PRIMARY_SIG, sig, 64);
	kt_set_auth(&f, prim);
	KT_CHECK_RC(kt_rpc(c, &f), SP_EBADSIG);
	KT_CHECK(rpc_device_count(c, prim->user) == 1);

	kt_link_sig(sig, prim, linked);
	sp_frame_init(&f, SP_T_LINK_CONFIRM, 6, true);
	sp_frame_set_str(&f, SP_F_LINK_CODE, code);
	sp_frame_set_bin(&f, SP_F_PRIMARY_SIG, sig, 64);
	kt_set_auth(&f, prim);
	KT_CHECK_RC(kt_rpc(c, &f), SP_OK);
	KT_CHECK(c->rep.type == SP_T_VERIFIED);

	kt_status_sig(sig, linked, code);
	sp_frame_init(&f, SP_T_LINK_STATUS, 7, true);
	sp_frame_set_str(&f, SP_F_LINK_CODE, code);
	sp_frame_set_bin(&f, SP_F_SIG, sig, 64);
	KT_CHECK_RC(kt_rpc(c, &f), SP_OK);
	KT_CHECK(c->rep.type == SP_T_VERIFIED);
	linked->user = sp_frame_u64(&c->rep, SP_F_USER);
	linked->device = sp_frame_u64(&c->rep, SP_F_DEVICE);
	KT_CHECK(linked->user == prim->user);
	KT_CHECK(rpc_device_count(c, prim->user) == 2);
	fprintf(stderr, "linking: ok\n");
}

static void
test_signed_prekey(kt_conn *c, const kt_device *d)
{
	sig_keypair spk;
	uint8_t sig[64];
	sig_keypair_generate(&spk);
	sig_curve_sign(sig, d->ik.priv, spk.pub, 33);
	sig[20] ^= 0x08;
	sp_frame f;
	sp_frame_init(&f, SP_T_KEYS_UPLOAD, 8, true);
	sp_frame_set_u64(&f, SP_F_SPK_ID, 2);
	sp_frame_set_bin(&f, SP_F_SPK, spk.pub, 33);
	sp_frame_set_bin(&f, SP_F_SPK_SIG, sig, 64);
	kt_set_auth(&f, d);
	KT_CHECK_RC(kt_rpc(c, &f), SP_EBADSIG);
	sig[20] ^= 0x08;
	KT_CHECK_RC(kt_rpc(c, &f), SP_OK);
	KT_CHECK(sp_frame_u64(&c->rep, SP_F_SPK_ID) == 2);
	fprintf(stderr, "signed prekey: ok\n");
}

typedef struct race {
	kt_conn *c;
	const kt_device *caller;
	uint64_t user, device;
	int rc;
	bool has_opk;
	uint64_t opk_id;
	uint8_t opk[33];
} race;

static void *
race_thread(void *arg)
{
	race *x = arg;
	sp_frame f, rep;
	nng_msg *m = NULL;
	sp_frame_init(&f, SP_T_BUNDLE_GET, 9, true);
	sp_frame_set_u64(&f, SP_F_USER, x->user);
	sp_frame_set_u64(&f, SP_F_DEVICE, x->device);
	kt_set_auth(&f, x->caller);
	x->rc = sp_nng_call(x->c->s, &f, &m, &rep);
	if (x->rc == SP_OK) {
		const sp_val *b = sp_frame_get(&rep, SP_F_BUNDLES);
		if (b && b->rs.n == 1 && sp_frame_has(&b->rs.v[0], SP_F_OPK)) {
			x->has_opk = true;
			x->opk_id = sp_frame_u64(&b->rs.v[0], SP_F_OPK_ID);
			memcpy(x->opk, sp_frame_bin(&b->rs.v[0], SP_F_OPK).p, 33);
		}
	}
	if (m) {
		sp_frame_fini(&rep);
		nng_msg_free(m);
	}
	return NULL;
}

static void
test_concurrent_bundles(kt_conn *c, const kt_device *bob, const kt_device *alice)
{
	enum { N = 100 };
	static race x[N];
	pthread_t t[N];
	KT_CHECK_RC(rpc_upload(c, bob, 1, 50), SP_OK);
	KT_CHECK(sp_frame_u64(&c->rep, SP_F_COUNT) == 50);
	for (int i = 0; i < N; i++) {
		x[i] = (race){.c = c, .caller = alice, .user = bob->user, .device = bob->device};
		KT_CHECK(pthread_create(&t[i], NULL, race_thread, &x[i]) == 0);
	}
	for (int i = 0; i < N; i++)
		pthread_join(t[i], NULL);
	int with = 0;
	bool seen[51] = {false};
	for (int i = 0; i < N; i++) {
		KT_CHECK_RC(x[i].rc, SP_OK);
		if (!x[i].has_opk)
			continue;
		with++;
		KT_CHECK(x[i].opk_id >= 1 && x[i].opk_id <= 50 && !seen[x[i].opk_id]);
		seen[x[i].opk_id] = true;
		for (int j = 0; j < i; j++)
			KT_CHECK(!x[j].has_opk || memcmp(x[j].opk, x[i].opk, 33) != 0);
	}
	KT_CHECK(with == 50);
	/* And none after. */
	sp_frame f;
	sp_frame_init(&f, SP_T_KEYS_STATUS, 10, true);
	kt_set_auth(&f, bob);
	KT_CHECK_RC(kt_rpc(c, &f), SP_OK);
	KT_CHECK(sp_frame_u64(&c->rep, SP_F_COUNT) == 0);
	KT_CHECK(sp_frame_u64(&c->rep, SP_F_REFILL) == 1);
	fprintf(stderr, "concurrent bundles: 50 distinct keys, 50 without\n");
}

static uint64_t
test_groups(kt_conn *c, const kt_device *alice, const kt_device *bob, const kt_device *carol)
{
	sp_frame f;
	uint64_t users[2] = {bob->user, carol->user};
	sp_frame_init(&f, SP_T_GROUP_CREATE, 11, true);
	sp_frame_set_str(&f, SP_F_GROUP_NAME, "itest");
	sp_frame_set_u64s(&f, SP_F_USERS, users, 1);
	kt_set_auth(&f, alice);
	KT_CHECK_RC(kt_rpc(c, &f), SP_OK);
	uint64_t g = sp_frame_u64(&c->rep, SP_F_GROUP);
	KT_CHECK(sp_frame_u64(&c->rep, SP_F_EPOCH) == 1);
	/* Bob is no admin. */
	sp_frame_init(&f, SP_T_GROUP_ADD, 12, true);
	sp_frame_set_u64(&f, SP_F_GROUP, g);
	sp_frame_set_u64s(&f, SP_F_USERS, &users[1], 1);
	kt_set_auth(&f, bob);
	KT_CHECK_RC(kt_rpc(c, &f), SP_EPERM);
	kt_set_auth(&f, alice);
	KT_CHECK_RC(kt_rpc(c, &f), SP_OK);
	KT_CHECK(sp_frame_u64(&c->rep, SP_F_EPOCH) == 2);
	/* More users than a frame may carry is refused by the decoder. */
	static uint64_t many[1025];
	for (int i = 0; i < 1025; i++)
		many[i] = i + 1;
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	sp_frame_set_u64s(&f, SP_F_USERS, many, 1024);
	KT_CHECK(sp_frame_pack(&f, &sb) == SP_OK);
	/* Patch the array header (0xdc, count 1024) to claim 1025 elements and append one. */
	for (size_t i = 0; i + 2 < sb.size; i++) {
		if ((uint8_t)sb.data[i] == 0xdc && (uint8_t)sb.data[i + 1] == 0x04 &&
		    (uint8_t)sb.data[i + 2] == 0x00) {
			sb.data[i + 2] = 0x01;
			break;
		}
	}
	msgpack_sbuffer_write(&sb, "\x01", 1);
	nng_msg *m, *rm;
	KT_CHECK(nng_msg_alloc(&m, 0) == 0 && nng_msg_append(m, sb.data, sb.size) == 0);
	msgpack_sbuffer_destroy(&sb);
	nng_ctx ctx;
	KT_CHECK(nng_ctx_open(&ctx, c->s) == 0);
	nng_aio *aio;
	KT_CHECK(nng_aio_alloc(&aio, NULL, NULL) == 0);
	nng_aio_set_timeout(aio, 10000);
	nng_aio_set_msg(aio, m);
	nng_ctx_send(ctx, aio);
	nng_aio_wait(aio);
	KT_CHECK(nng_aio_result(aio) == 0);
	nng_ctx_recv(ctx, aio);
	nng_aio_wait(aio);
	KT_CHECK(nng_aio_result(aio) == 0);
	rm = nng_aio_get_msg(aio);
	sp_frame e;
	KT_CHECK(sp_nng_msg_decode(rm, &e) == SP_OK);
	KT_CHECK(e.type == SP_T_ERROR && sp_frame_i64(&e, SP_F_CODE) == SP_EFIELDLEN);
	sp_frame_fini(&e);
	nng_msg_free(rm);
	nng_aio_free(aio);
	nng_ctx_close(ctx);
	/* Fan-out list for a member; refused for a stranger. */
	sp_frame_init(&f, SP_T_GROUP_DEVICES, 13, true);
	sp_frame_set_u64(&f, SP_F_GROUP, g);
	sp_frame_set_u64(&f, SP_F_AUTH_USER, carol->user);
	KT_CHECK_RC(kt_rpc(c, &f), SP_OK);
	KT_CHECK(sp_frame_get(&c->rep, SP_F_DEVICES)->us.n == 4); /* alice, bob x2, carol */
	sp_frame_set_u64(&f, SP_F_AUTH_USER, 777);
	KT_CHECK_RC(kt_rpc(c, &f), SP_EPERM);
	fprintf(stderr, "groups: ok\n");
	return g;
}

/* Garbage and frames of other tiers get ERROR replies; the server keeps serving. */
static void
test_malformed(kt_conn *c)
{
	nng_ctx ctx;
	nng_aio *aio;
	nng_msg *m;
	sp_frame e;
	KT_CHECK(nng_ctx_open(&ctx, c->s) == 0);
	KT_CHECK(nng_aio_alloc(&aio, NULL, NULL) == 0);
	nng_aio_set_timeout(aio, 10000);
	KT_CHECK(nng_msg_alloc(&m, 0) == 0 && nng_msg_append(m, "\xc1\xff\x00garbage", 10) == 0);
	nng_aio_set_msg(aio, m);
	nng_ctx_send(ctx, aio);
	nng_aio_wait(aio);
	KT_CHECK(nng_aio_result(aio) == 0);
	nng_ctx_recv(ctx, aio);
	nng_aio_wait(aio);
	KT_CHECK(nng_aio_result(aio) == 0);
	m = nng_aio_get_msg(aio);
	KT_CHECK(sp_nng_msg_decode(m, &e) == SP_OK && e.type == SP_T_ERROR);
	KT_CHECK(sp_frame_i64(&e, SP_F_CODE) < 0);
	sp_frame_fini(&e);
	nng_msg_free(m);
	nng_aio_free(aio);
	nng_ctx_close(ctx);
	sp_frame f;
	sp_frame_init(&f, SP_T_FETCH, 1, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, 1);
	sp_frame_set_u64(&f, SP_F_AFTER_SEQ, 0);
	KT_CHECK_RC(kt_rpc(c, &f), SP_EBADTYPE);
	fprintf(stderr, "malformed: ok\n");
}

static void
test_help(void)
{
	char cmd[1024];
	const char *bindir = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	snprintf(cmd, sizeof(cmd), "%s/keysrv --help > %s/help.txt 2>&1", bindir, tmp);
	KT_CHECK(system(cmd) == 0);
	snprintf(cmd, sizeof(cmd), "%s/help.txt", tmp);
	KT_CHECK(kt_file_has(cmd, "--otp-sender", NULL, 0));
	snprintf(cmd, sizeof(cmd), "%s/keysrv --no-such-option >/dev/null 2>&1", bindir);
	KT_CHECK(system(cmd) != 0);
}

int
main(void)
{
	kt_proc p;
	kt_conn c;
	kt_device alice, bob, carol, bob2;
	signal(SIGPIPE, SIG_IGN);
	snprintf(tmp, sizeof(tmp), "/tmp/keysrv-itest-XXXXXX");
	KT_CHECK(mkdtemp(tmp) != NULL);
	snprintf(data_dir, sizeof(data_dir), "%s/data", tmp);
	snprintf(otp_dir, sizeof(otp_dir), "%s/otp", tmp);
	snprintf(log_path, sizeof(log_path), "%s/keysrv.log", tmp);

	test_help();
	start(&p, &c, "2");
	test_registration(&c);
	kt_conn_close(&c);
	KT_CHECK(kt_proc_stop(&p, SIGTERM) == 0);
	start(&p, &c, "600");
	new_account(&c, "+14155555001", &alice);
	new_account(&c, "+14155555002", &bob);
	new_account(&c, "+14155555003", &carol);
	test_linking(&c, &bob, &bob2);
	test_signed_prekey(&c, &bob);
	test_concurrent_bundles(&c, &bob, &alice);
	uint64_t g = test_groups(&c, &alice, &bob, &carol);
	test_malformed(&c);
	KT_CHECK_RC(rpc_upload(&c, &bob2, 1, 7), SP_OK);
	/* A code requested before the restart (verified after it). */
	KT_CHECK_RC(rpc_register(&c, "+14155555004", NULL), SP_OK);
	char code[7];
	KT_CHECK(kt_read_otp(otp_dir, "+14155555004", code) == 0);

	/* Clean stop, then restart: everything is still there. */
	kt_conn_close(&c);
	KT_CHECK(kt_proc_stop(&p, SIGTERM) == 0);
	KT_CHECK(kt_file_has(log_path, "shutting down", NULL, 0));
	start(&p, &c, "600");
	KT_CHECK(rpc_device_count(&c, bob.user) == 2);
	sp_frame f;
	sp_frame_init(&f, SP_T_KEYS_STATUS, 20, true);
	kt_set_auth(&f, &bob2);
	KT_CHECK_RC(kt_rpc(&c, &f), SP_OK);
	KT_CHECK(sp_frame_u64(&c.rep, SP_F_COUNT) == 7);
	kt_set_auth(&f, &bob);
	KT_CHECK_RC(kt_rpc(&c, &f), SP_OK);
	KT_CHECK(sp_frame_u64(&c.rep, SP_F_COUNT) == 0 && sp_frame_u64(&c.rep, SP_F_SPK_ID) == 2);
	sp_frame_init(&f, SP_T_GROUP_INFO, 21, true);
	sp_frame_set_u64(&f, SP_F_GROUP, g);
	kt_set_auth(&f, &carol);
	KT_CHECK_RC(kt_rpc(&c, &f), SP_OK);
	KT_CHECK(sp_frame_u64(&c.rep, SP_F_COUNT) == 3 && sp_frame_u64(&c.rep, SP_F_EPOCH) == 2);
	/* The one-time prekeys handed out before the restart stay gone. */
	sp_frame_init(&f, SP_T_BUNDLE_GET, 22, true);
	sp_frame_set_u64(&f, SP_F_USER, bob.user);
	kt_set_auth(&f, &alice);
	KT_CHECK_RC(kt_rpc(&c, &f), SP_OK);
	const sp_val *b = sp_frame_get(&c.rep, SP_F_BUNDLES);
	KT_CHECK(b->rs.n == 2);
	for (uint32_t i = 0; i < b->rs.n; i++) {
		uint64_t dev = sp_frame_u64(&b->rs.v[i], SP_F_DEVICE);
		KT_CHECK(sp_frame_has(&b->rs.v[i], SP_F_OPK) == (dev == bob2.device));
	}
	kt_device late;
	kt_device_new(&late);
	KT_CHECK_RC(rpc_verify(&c, "+14155555004", code, &late), SP_OK);

	/* A crash right after a reply loses nothing that was answered. */
	kt_device dave;
	new_account(&c, "+14155555005", &dave);
	kt_conn_close(&c);
	kt_proc_stop(&p, SIGKILL);
	start(&p, &c, "600");
	KT_CHECK(rpc_device_count(&c, dave.user) == 1);
	kt_conn_close(&c);
	KT_CHECK(kt_proc_stop(&p, SIGTERM) == 0);
	kt_rmtree(tmp);
	printf("keysrv_itest: all passed\n");
	return 0;
}
