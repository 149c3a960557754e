/*
 * Abuse limits against real processes (a private cluster from scripts/devcluster.sh): each
 * flood of issue 14 is run by an attacker, who is refused with a clear ERROR, while a third
 * user is still served. The cluster runs with small limits (set in up()): sends per user
 * 1/min with a burst of 8 (slow enough that a reconnect does not refill it), a media quota of 64 KiB a day, 4 bundle fetches an hour per
 * target device, 4 group members added an hour per user; inbox queues of 16 entries, of
 * which one sender may hold 25% (4). The per-connection send bucket is lifted so that
 * only the limits under test refuse.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "client/signal/sig_curve.h"
#include "itest.h"
#include "sp_error.h"
#include "sp_time.h"

#define SEND_BURST 8
#define SHARE 4 /* 25% of a 16-entry queue */
#define QUOTA (64 * 1024)
#define CHUNK (16 * 1024)
#define BUNDLES 4
#define GROUP_ADDS 4

static itest_cluster cl;
static int phone_seq;
static uint64_t req_id = 100;

static void
new_user(itest_user *u, int which)
{
	char phone[32];
	snprintf(phone, sizeof(phone), "+1557%03d%04d", getpid() % 1000, ++phone_seq);
	itest_register(&cl, which, u, phone);
}

/* One request on a fresh connection to connsrv-0; SP_OK when the reply is of type `want`. */
static int
prelogin_call(sp_frame *q, unsigned want, sp_frame *r)
{
	spc_conn *conn = itest_connect(&cl, 0);
	int rc = spc_conn_send(conn, q);
	if (rc == SP_OK && (rc = spc_conn_recv(conn, 10000, r)) == SP_OK && r->type != want) {
		rc = r->type == SP_T_ERROR ? (int)sp_frame_i64(r, SP_F_CODE) : SP_EPROTO;
		sp_frame_fini(r);
	}
	spc_conn_close(conn);
	return rc;
}

/* A new account whose device has a signed prekey, so that its bundle can be fetched
 * (itest_register keeps no identity secret to sign one with). */
static void
new_target(itest_user *u)
{
	char path[400], code[32] = "";
	sig_keypair ik, spk;
	uint8_t spk_sig[64];
	sp_frame q, r;
	memset(u, 0, sizeof(*u));
	snprintf(u->phone, sizeof(u->phone), "+1557%03d%04d", getpid() % 1000, ++phone_seq);
	crypto_sign_keypair(u->auth_pk, u->auth_sk);
	sig_keypair_generate(&ik);
	sig_keypair_generate(&spk);
	sig_curve_sign(spk_sig, ik.priv, spk.pub, 33);
	memcpy(u->ik, ik.pub, 33);
	sp_frame_init(&q, SP_T_REGISTER, 1, true);
	sp_frame_set_str(&q, SP_F_PHONE, u->phone);
	ck_assert_int_eq(prelogin_call(&q, SP_T_REGISTERED, &r), SP_OK);
	sp_frame_fini(&r);
	snprintf(path, sizeof(path), "%s/%s", cl.otp_dir, u->phone);
	FILE *f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(fgets(code, sizeof(code), f));
	fclose(f);
	code[strcspn(code, "\r\n ")] = '\0';
	sp_frame_init(&q, SP_T_VERIFY, 2, true);
	sp_frame_set_str(&q, SP_F_PHONE, u->phone);
	sp_frame_set_str(&q, SP_F_OTP, code);
	sp_frame_set_bin(&q, SP_F_IDENTITY_KEY, ik.pub, 33);
	sp_frame_set_bin(&q, SP_F_AUTH_KEY, u->auth_pk, 32);
	sp_frame_set_u64(&q, SP_F_REG_ID, 1 + (randombytes_random() & 0x3ffe));
	sp_frame_set_u64(&q, SP_F_SPK_ID, 1);
	sp_frame_set_bin(&q, SP_F_SPK, spk.pub, 33);
	sp_frame_set_bin(&q, SP_F_SPK_SIG, spk_sig, 64);
	ck_assert_int_eq(prelogin_call(&q, SP_T_VERIFIED, &r), SP_OK);
	u->user = sp_frame_u64(&r, SP_F_USER);
	u->device = sp_frame_u64(&r, SP_F_DEVICE);
	sp_frame_fini(&r);
}

/* Sends `q` and waits for the reply with its id: SP_OK when it is of type `want`, else the
 * ERROR's code (its retry_after and reason copied out when asked for). */
static int
call(itest_user *u, sp_frame *q, unsigned want, uint64_t *retry_after, char *reason, size_t cap)
{
	sp_frame r;
	int rc = spc_conn_send(u->conn, q);
	while (rc == SP_OK) {
		if ((rc = spc_conn_recv(u->conn, 15000, &r)))
			break;
		if (!r.has_id || r.id != q->id) {
			sp_frame_fini(&r);
			continue;
		}
		if (r.type == SP_T_ERROR) {
			rc = (int)sp_frame_i64(&r, SP_F_CODE);
			if (retry_after)
				*retry_after = sp_frame_u64(&r, SP_F_RETRY_AFTER);
			if (reason) {
				sp_bin b = sp_frame_bin(&r, SP_F_REASON);
				snprintf(reason, cap, "%.*s", (int)b.len, (const char *)b.p);
			}
		} else {
			rc = r.type == want ? SP_OK : SP_EPROTO;
		}
		sp_frame_fini(&r);
		break;
	}
	return rc;
}

/* A 1:1 SEND of a small envelope to `to`'s one device; SP_OK once SENT. */
static int
send1(itest_user *u, const itest_user *to, uint64_t *retry_after, char *reason, size_t cap)
{
	sp_frame q, item;
	uint8_t id[16];
	itest_msg_id(id);
	sp_frame_init(&q, SP_T_SEND, ++req_id, true);
	sp_frame_set_bin(&q, SP_F_MSG_ID, id, 16);
	sp_frame_set_u64(&q, SP_F_TO_USER, to->user);
	sp_frame_init(&item, SP_T_SEND_ITEM, 0, false);
	sp_frame_set_u64(&item, SP_F_DEVICE, to->device);
	sp_frame_set_u64(&item, SP_F_ETYPE, 1);
	sp_frame_set_bin(&item, SP_F_CT, "ciphertext", 10);
	sp_frame_set_recs(&q, SP_F_ITEMS, &item, 1);
	return call(u, &q, SP_T_SENT, retry_after, reason, cap);
}

/* The value of a connsrv metric (0 when absent). */
static long long
metric(int which, const char *name)
{
	char path[300], buf[64] = "";
	snprintf(path, sizeof(path), "%s/abuse-metric", cl.dir);
	ck_assert_int_eq(itest_sh(&cl,
				  "curl -sf http://127.0.0.1:%d/metrics | awk -v n='%s' '$1==n{print $2}' > %s",
				  cl.base + 80 + 10 * which, name, path),
			 0);
	FILE *f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	return atoll(buf);
}

/* Whether Redis holds `key` (the dev cluster's ACL user, as connsrv). */
static bool
redis_has(const char *key)
{
	return itest_sh(&cl,
			"test \"$(redis-cli -p %d --user sealpost --pass \"$(cat $SEALPOST_REDIS_PASSWORD_FILE)\" "
			"--no-auth-warning EXISTS %s)\" = 1",
			cl.base, key) == 0;
}

START_TEST(test_send_flood_refused_across_reconnects)
{
	itest_user a, c, v[4];
	new_user(&a, 0);
	new_user(&c, 0);
	for (int i = 0; i < 4; i++)
		new_user(&v[i], 0);
	ck_assert_int_eq(itest_login(&cl, 0, &a), SP_OK);
	ck_assert_int_eq(itest_login(&cl, 0, &c), SP_OK);
	/* The flood goes round four victims: no victim's queue share is reached first. */
	uint64_t retry = 0;
	char reason[64] = "";
	int sent = 0, rc = SP_OK;
	for (int i = 0; i < 4 * SEND_BURST && (rc = send1(&a, &v[i % 4], &retry, reason,
							   sizeof(reason))) == SP_OK;
	     i++)
		sent++;
	ck_assert_int_eq(rc, SP_ERATELIMIT);
	ck_assert_int_ge(sent, SEND_BURST - 1);
	ck_assert_int_le(sent, SEND_BURST + 3);
	ck_assert_str_eq(reason, "limit: send");
	ck_assert_uint_gt(retry, 0);
	ck_assert_uint_le(retry, 2 * 60000); /* one token a minute, at most one burst of debt */
	char key[64];
	snprintf(key, sizeof(key), "r:l:send:u%llu", (unsigned long long)a.user);
	ck_assert(redis_has(key));
	ck_assert_int_ge(metric(0, "sp_connsrv_limited_total{kind=\"send\",scope=\"user\"}"), 1);

	/* A new connection, to the other connsrv: the bucket is in Redis, so the attacker is
	 * refused again (that worker admits at most what arrives before Redis first answers). */
	itest_logout(&a);
	ck_assert_int_eq(itest_login(&cl, 1, &a), SP_OK);
	int admitted = 0;
	rc = SP_OK;
	for (int i = 0; i < 4 && (rc = send1(&a, &v[i], NULL, NULL, 0)) == SP_OK; i++)
		admitted++;
	ck_assert_int_eq(rc, SP_ERATELIMIT);
	ck_assert_int_le(admitted, 1);
	/* And the third user is served meanwhile. */
	ck_assert_int_eq(send1(&c, &v[0], NULL, NULL, 0), SP_OK);
	itest_logout(&a);
	itest_logout(&c);
}
END_TEST

START_TEST(test_queue_share_per_sender)
{
	itest_user s, c, v;
	new_user(&s, 0);
	new_user(&c, 1);
	new_user(&v, 0);
	ck_assert_int_eq(itest_login(&cl, 0, &s), SP_OK);
	ck_assert_int_eq(itest_login(&cl, 1, &c), SP_OK);
	for (int i = 0; i < SHARE; i++)
		ck_assert_int_eq(send1(&s, &v, NULL, NULL, 0), SP_OK);
	char reason[64] = "";
	ck_assert_int_eq(send1(&s, &v, NULL, reason, sizeof(reason)), SP_ELIMIT);
	ck_assert_str_eq(reason, "your share of the recipient's queue is full");
	/* Another sender still gets through to the same device. */
	ck_assert_int_eq(send1(&c, &v, NULL, NULL, 0), SP_OK);
	/* The victim reads and ACKs: the sender has room again. */
	ck_assert_int_eq(itest_login(&cl, 1, &v), SP_OK);
	uint64_t last = 0;
	for (int i = 0; i < SHARE + 1; i++) {
		sp_frame d;
		ck_assert_int_eq(itest_wait(&v, SP_T_DELIVER, 10000, &d), SP_OK);
		last = sp_frame_u64(&d, SP_F_SEQ);
		sp_frame_fini(&d);
	}
	ck_assert_int_eq(itest_ack(&v, last), SP_OK);
	/* The ACK is applied by the shard in the background; each try takes one of the 3
	 * send tokens the sender has left, so they are spaced. */
	int rc = SP_ELIMIT;
	for (int i = 0; i < 3 && rc == SP_ELIMIT; i++) {
		sleep(1);
		rc = send1(&s, &v, NULL, NULL, 0);
	}
	ck_assert_int_eq(rc, SP_OK);
	itest_logout(&s);
	itest_logout(&c);
	itest_logout(&v);
}
END_TEST

/* MEDIA_PUT of one CHUNK at `off` of blob `id`. */
static int
media_put(itest_user *u, const uint8_t id[16], uint64_t off, char *reason, size_t cap)
{
	static uint8_t chunk[CHUNK];
	sp_frame q;
	sp_frame_init(&q, SP_T_MEDIA_PUT, ++req_id, true);
	sp_frame_set_bin(&q, SP_F_BLOB_ID, id, 16);
	sp_frame_set_u64(&q, SP_F_OFFSET, off);
	sp_frame_set_bin(&q, SP_F_BYTES, chunk, CHUNK);
	return call(u, &q, SP_T_BLOB_STORED, NULL, reason, cap);
}

START_TEST(test_media_quota_per_user)
{
	itest_user m, c;
	new_user(&m, 0);
	new_user(&c, 0);
	ck_assert_int_eq(itest_login(&cl, 0, &m), SP_OK);
	ck_assert_int_eq(itest_login(&cl, 1, &c), SP_OK);
	uint8_t id[16], id2[16], id3[16];
	randombytes_buf(id, 16);
	randombytes_buf(id2, 16);
	randombytes_buf(id3, 16);
	char reason[64] = "";
	int stored = 0, rc = SP_OK;
	for (int i = 0; i < 2 * QUOTA / CHUNK &&
			(rc = media_put(&m, id, (uint64_t)i * CHUNK, reason, sizeof(reason))) == SP_OK;
	     i++)
		stored++;
	ck_assert_int_eq(rc, SP_ERATELIMIT);
	ck_assert_str_eq(reason, "limit: media_bytes");
	ck_assert_int_ge(stored, QUOTA / CHUNK);
	ck_assert_int_le(stored, QUOTA / CHUNK + 2);
	/* A new connection does not reset the quota. */
	itest_logout(&m);
	ck_assert_int_eq(itest_login(&cl, 1, &m), SP_OK);
	rc = SP_OK;
	for (int i = 0; i < 3 && rc == SP_OK; i++)
		rc = media_put(&m, id2, (uint64_t)i * CHUNK, NULL, 0);
	ck_assert_int_eq(rc, SP_ERATELIMIT);
	ck_assert_int_eq(media_put(&c, id3, 0, NULL, 0), SP_OK);
	itest_logout(&m);
	itest_logout(&c);
}
END_TEST

static int
bundle_get(itest_user *u, const itest_user *target, char *reason, size_t cap)
{
	sp_frame q;
	sp_frame_init(&q, SP_T_BUNDLE_GET, ++req_id, true);
	sp_frame_set_u64(&q, SP_F_USER, target->user);
	sp_frame_set_u64(&q, SP_F_DEVICE, target->device);
	return call(u, &q, SP_T_BUNDLE_R, NULL, reason, cap);
}

START_TEST(test_bundle_drain_per_target_device)
{
	itest_user a1, a2, c, t, t2;
	new_user(&a1, 0);
	new_user(&a2, 1);
	new_user(&c, 0);
	new_target(&t);
	new_target(&t2);
	ck_assert_int_eq(itest_login(&cl, 0, &a1), SP_OK);
	ck_assert_int_eq(itest_login(&cl, 1, &a2), SP_OK);
	ck_assert_int_eq(itest_login(&cl, 0, &c), SP_OK);
	char reason[64] = "";
	int got = 0, rc = SP_OK;
	for (int i = 0; i < 2 * BUNDLES && (rc = bundle_get(&a1, &t, reason, sizeof(reason))) == SP_OK;
	     i++)
		got++;
	ck_assert_int_eq(rc, SP_ERATELIMIT);
	ck_assert_str_eq(reason, "limit: bundle_target");
	ck_assert_int_ge(got, BUNDLES);
	ck_assert_int_le(got, BUNDLES + 1);
	/* Per target, not per requester: a second account of the attacker is refused too. */
	rc = SP_OK;
	for (int i = 0; i < 2 && rc == SP_OK; i++)
		rc = bundle_get(&a2, &t, NULL, 0);
	ck_assert_int_eq(rc, SP_ERATELIMIT);
	/* Another target is served. */
	ck_assert_int_eq(bundle_get(&c, &t2, NULL, 0), SP_OK);
	itest_logout(&a1);
	itest_logout(&a2);
	itest_logout(&c);
}
END_TEST

static int
group_call(itest_user *u, unsigned type, uint64_t group, const uint64_t *users, uint32_t n,
	   uint64_t *group_out, char *reason, size_t cap)
{
	sp_frame q, r;
	sp_frame_init(&q, type, ++req_id, true);
	if (type == SP_T_GROUP_CREATE)
		sp_frame_set_str(&q, SP_F_GROUP_NAME, "abuse");
	else
		sp_frame_set_u64(&q, SP_F_GROUP, group);
	sp_frame_set_u64s(&q, SP_F_USERS, users, n);
	int rc = spc_conn_send(u->conn, &q);
	while (rc == SP_OK) {
		if ((rc = spc_conn_recv(u->conn, 15000, &r)))
			break;
		if (!r.has_id || r.id != q.id) {
			sp_frame_fini(&r);
			continue;
		}
		if (r.type == SP_T_GROUP_R) {
			if (group_out)
				*group_out = sp_frame_u64(&r, SP_F_GROUP);
		} else if (r.type == SP_T_ERROR) {
			rc = (int)sp_frame_i64(&r, SP_F_CODE);
			if (reason) {
				sp_bin b = sp_frame_bin(&r, SP_F_REASON);
				snprintf(reason, cap, "%.*s", (int)b.len, (const char *)b.p);
			}
		} else {
			rc = SP_EPROTO;
		}
		sp_frame_fini(&r);
		break;
	}
	return rc;
}

START_TEST(test_group_adds_per_user)
{
	itest_user g, c, m[6];
	new_user(&g, 0);
	new_user(&c, 1);
	for (int i = 0; i < 6; i++)
		new_user(&m[i], 0);
	ck_assert_int_eq(itest_login(&cl, 0, &g), SP_OK);
	ck_assert_int_eq(itest_login(&cl, 1, &c), SP_OK);
	uint64_t users[6], group = 0;
	for (int i = 0; i < 6; i++)
		users[i] = m[i].user;
	/* Creating with 3 members costs 4: the bucket is empty, not in debt. */
	ck_assert_int_eq(group_call(&g, SP_T_GROUP_CREATE, 0, users, GROUP_ADDS - 1, &group, NULL, 0),
			 SP_OK);
	ck_assert_uint_ne(group, 0);
	/* The next add is taken into debt; from then on adds are refused. */
	ck_assert_int_eq(group_call(&g, SP_T_GROUP_ADD, group, &users[3], 1, NULL, NULL, 0), SP_OK);
	char reason[64] = "";
	ck_assert_int_eq(group_call(&g, SP_T_GROUP_ADD, group, &users[4], 1, NULL, reason,
				    sizeof(reason)),
			 SP_ERATELIMIT);
	ck_assert_str_eq(reason, "limit: group");
	ck_assert_int_eq(group_call(&g, SP_T_GROUP_CREATE, 0, &users[5], 1, NULL, NULL, 0),
			 SP_ERATELIMIT);
	/* Another user still creates a group with the same people. */
	ck_assert_int_eq(group_call(&c, SP_T_GROUP_CREATE, 0, &users[4], 2, NULL, NULL, 0), SP_OK);
	itest_logout(&g);
	itest_logout(&c);
}
END_TEST

static void
up(void)
{
	setenv("SEALPOST_CONNSRV_SEND_RATE", "100000", 1);
	setenv("SEALPOST_CONNSRV_SEND_BURST", "100000", 1);
	setenv("SEALPOST_CONNSRV_LIMIT_SEND", "1/min,8", 1);
	setenv("SEALPOST_CONNSRV_MEDIA_QUOTA", "64K/day", 1);
	setenv("SEALPOST_CONNSRV_LIMIT_BUNDLE_TARGET", "4/h,4", 1);
	setenv("SEALPOST_CONNSRV_LIMIT_GROUP", "4/h,4", 1);
	setenv("SEALPOST_INBOXSRV_MAX_QUEUE_ENTRIES", "16", 1);
	setenv("SEALPOST_INBOXSRV_QUEUE_SHARE", "25", 1);
	itest_cluster_up(&cl);
}

static void
down(void)
{
	itest_cluster_down(&cl);
}

int
main(void)
{
	Suite *s = suite_create("abuse");
	TCase *tc = tcase_create("abuse");
	tcase_add_unchecked_fixture(tc, up, down);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_send_flood_refused_across_reconnects);
	tcase_add_test(tc, test_queue_share_per_sender);
	tcase_add_test(tc, test_media_quota_per_user);
	tcase_add_test(tc, test_bundle_drain_per_target_device);
	tcase_add_test(tc, test_group_adds_per_user);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
