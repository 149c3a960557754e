/*
 * bin/sealpost against a private cluster, 1:1: register/verify, send and recv in order,
 * delivered and read receipts in `status`, offline queueing, exactly-once delivery while
 * the recipient is SIGKILLed over and over, tampered and garbage ciphertexts refused
 * without a crash, and the documented exit codes.
 */
#include <sqlite3.h>

#include "client/signal/sig_proto.h"
#include "client/signal/sig_state.h"
#include "client_util.h"
#include "sp_error.h"
#include "sp_time.h"

static char alice[32], bob[32];

static void
test_send_recv_in_order(void)
{
	char out[65536], b[64];
	/* alice finds bob by phone number (USER_LOOKUP on keysrv); bob is told by hand. */
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550101 %s", alice) == 0);
	for (int i = 1; i <= 5; i++) {
		CHECK(ct_run("alice", out, sizeof(out), "send +15550102 'hello %d'", i) == 0);
		CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "sent") == 0);
		CHECK(strlen(ct_str(out, 0, "msg_id", b, sizeof(b))) == 32);
	}
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_nlines(out) == 5);
	for (int i = 0; i < 5; i++) {
		char want[32];
		json_t *j = ct_line(out, i);
		snprintf(want, sizeof(want), "hello %d", i + 1);
		CHECK(j && strcmp(json_string_value(json_object_get(j, "type")), "message") == 0);
		CHECK(strcmp(json_string_value(json_object_get(j, "text")), want) == 0);
		CHECK(strcmp(json_string_value(json_object_get(j, "from")), "+15550101") == 0);
		CHECK(json_integer_value(json_object_get(j, "conv_seq")) == i + 1);
		json_decref(j);
	}
	/* Nothing is delivered twice. */
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_nlines(out) == 0);
	/* And the other way. */
	CHECK(ct_run("bob", out, sizeof(out), "send +15550101 'hi alice'") == 0);
	CHECK(ct_run("alice", out, sizeof(out), "recv") == 0);
	int found = 0;
	for (int i = 0; i < ct_nlines(out); i++)
		found += strcmp(ct_str(out, i, "text", b, sizeof(b)), "hi alice") == 0;
	CHECK(found == 1);
}

static void
test_receipts(void)
{
	char out[65536], id[64], b[64];
	CHECK(ct_run("alice", out, sizeof(out), "send +15550102 'receipt me'") == 0);
	ct_str(out, 0, "msg_id", id, sizeof(id));
	CHECK(ct_run("alice", out, sizeof(out), "status %s", id) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "sent") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(strstr(out, "receipt me") != NULL);
	/* The delivered receipt is made by the server when bob ACKs. */
	CHECK(ct_run("alice", out, sizeof(out), "status %s", id) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "delivered") == 0);
	json_t *j = ct_line(out, 0);
	json_t *devs = json_object_get(j, "devices");
	CHECK(json_array_size(devs) == 1);
	CHECK(strcmp(json_string_value(json_object_get(json_array_get(devs, 0), "status")), "delivered") == 0);
	CHECK(strcmp(json_string_value(json_object_get(json_array_get(devs, 0), "user")), bob) == 0);
	json_decref(j);
	CHECK(ct_run("bob", out, sizeof(out), "read +15550101") == 0);
	/* recv shows the read receipt with every message read so far. */
	CHECK(ct_run("alice", out, sizeof(out), "recv") == 0);
	int read_receipts = 0;
	for (int i = 0; i < ct_nlines(out); i++) {
		j = ct_line(out, i);
		if (strcmp(json_string_value(json_object_get(j, "type")), "receipt") == 0 &&
		    strcmp(json_string_value(json_object_get(j, "kind")), "read") == 0) {
			read_receipts++;
			CHECK(json_array_size(json_object_get(j, "msg_ids")) == 6);
		}
		json_decref(j);
	}
	CHECK(read_receipts == 1);
	CHECK(ct_run("alice", out, sizeof(out), "status %s --offline", id) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "read") == 0);
}

static void
test_offline_queue(void)
{
	char out[65536], id[64], b[64];
	/* A server that is not there: queued, exit 0. */
	CHECK(ct_run("alice", out, sizeof(out), "--server 127.0.0.1:1 send +15550102 'while offline'") == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "queued") == 0);
	ct_str(out, 0, "msg_id", id, sizeof(id));
	CHECK(ct_run("alice", out, sizeof(out), "status %s --offline", id) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "queued") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(strstr(out, "while offline") == NULL);
	/* The next command that connects sends it, with the same msg_id. */
	CHECK(ct_run("alice", out, sizeof(out), "send +15550102 'after offline'") == 0);
	CHECK(ct_run("alice", out, sizeof(out), "status %s --offline", id) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "sent") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_nlines(out) == 2);
	CHECK(strcmp(ct_str(out, 0, "text", b, sizeof(b)), "while offline") == 0);
	CHECK(strcmp(ct_str(out, 0, "msg_id", b, sizeof(b)), id) == 0);
	CHECK(strcmp(ct_str(out, 1, "text", b, sizeof(b)), "after offline") == 0);
}

/* Starts `sealpost listen` for bob in a process of its own. */
static pid_t
bob_listen(void)
{
	char cmd[1024];
	const char *bin = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	snprintf(cmd, sizeof(cmd), ". %s/env; exec %s/sealpost --home %s/home-bob listen >/dev/null 2>&1",
		 ct_cluster.dir, bin, ct_cluster.dir);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static void
test_exactly_once_under_kills(void)
{
	char out[262144], cmd[1024];
	const char *bin = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	snprintf(cmd, sizeof(cmd),
		 ". %s/env; for i in $(seq 1 40); do %s/sealpost --home %s/home-alice send +15550102 \"k$i\" >/dev/null"
		 " || exit 1; done",
		 ct_cluster.dir, bin, ct_cluster.dir);
	pid_t sender = fork();
	CHECK(sender >= 0);
	if (sender == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	int st = 0, kills = 0;
	for (;;) {
		pid_t l = bob_listen();
		usleep(50000 + randombytes_uniform(150000));
		kill(l, SIGKILL);
		waitpid(l, NULL, 0);
		kills++;
		if (waitpid(sender, &st, WNOHANG) == sender)
			break;
	}
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	printf("bob killed %d times\n", kills);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "history +15550101 --limit 1000") == 0);
	int count[41] = {0};
	for (int i = 0; i < ct_nlines(out); i++) {
		char t[32];
		ct_str(out, i, "text", t, sizeof(t));
		if (t[0] == 'k')
			count[atoi(t + 1)]++;
	}
	for (int i = 1; i <= 40; i++)
		CHECK(count[i] == 1);
}

/* Reads a home's account from its store (to act as a raw protocol client next to it). */
static uint64_t
home_meta(const char *home, const char *key)
{
	char path[512];
	sqlite3 *db;
	sqlite3_stmt *st;
	uint64_t v = 0;
	snprintf(path, sizeof(path), "%s/home-%s/sealpost.db", ct_cluster.dir, home);
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_prepare_v2(db, "SELECT v FROM meta WHERE k = ?", -1, &st, NULL) == SQLITE_OK);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = (uint64_t)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

static void
raw_send(itest_user *m, uint64_t to, uint64_t dev, int etype, const uint8_t *ct, size_t len)
{
	sp_frame q, item, r;
	uint8_t id[16];
	itest_msg_id(id);
	sp_frame_init(&q, SP_T_SEND, 77, true);
	sp_frame_set_bin(&q, SP_F_MSG_ID, id, 16);
	sp_frame_set_u64(&q, SP_F_TO_USER, to);
	sp_frame_init(&item, SP_T_SEND_ITEM, 0, false);
	sp_frame_set_u64(&item, SP_F_DEVICE, dev);
	sp_frame_set_u64(&item, SP_F_ETYPE, (uint64_t)etype);
	sp_frame_set_bin(&item, SP_F_CT, ct, len);
	sp_frame_set_recs(&q, SP_F_ITEMS, &item, 1);
	CHECK(spc_conn_send(m->conn, &q) == SP_OK);
	CHECK(itest_wait(m, SP_T_SENT, 10000, &r) == SP_OK);
	sp_frame_fini(&r);
}

static void
test_tampered_refused(void)
{
	char out[65536], b[64];
	uint64_t bob_user = home_meta("bob", "user"), bob_dev = home_meta("bob", "device");
	CHECK(bob_user != 0 && bob_dev != 0);
	itest_user m;
	itest_register(&ct_cluster, 0, &m, "+15550199");
	CHECK(itest_login(&ct_cluster, 0, &m) == SP_OK);
	/* A real Signal session to bob from his published bundle. */
	sp_frame q, r;
	sp_frame_init(&q, SP_T_BUNDLE_GET, 5, true);
	sp_frame_set_u64(&q, SP_F_USER, bob_user);
	sp_frame_set_u64(&q, SP_F_DEVICE, bob_dev);
	CHECK(spc_conn_send(m.conn, &q) == SP_OK);
	CHECK(itest_wait(&m, SP_T_BUNDLE_R, 10000, &r) == SP_OK);
	const sp_val *v = sp_frame_get(&r, SP_F_BUNDLES);
	CHECK(v && v->rs.n == 1);
	const sp_frame *d = &v->rs.v[0];
	sig_bundle bb = {0};
	bb.registration_id = (uint32_t)sp_frame_u64(d, SP_F_REG_ID);
	memcpy(bb.identity_key, sp_frame_bin(d, SP_F_IDENTITY_KEY).p, 33);
	bb.signed_prekey_id = (uint32_t)sp_frame_u64(d, SP_F_SPK_ID);
	memcpy(bb.signed_prekey, sp_frame_bin(d, SP_F_SPK).p, 33);
	memcpy(bb.signed_prekey_sig, sp_frame_bin(d, SP_F_SPK_SIG).p, 64);
	if (sp_frame_has(d, SP_F_OPK)) {
		bb.has_prekey = 1;
		bb.prekey_id = (uint32_t)sp_frame_u64(d, SP_F_OPK_ID);
		memcpy(bb.prekey, sp_frame_bin(d, SP_F_OPK).p, 33);
	}
	sp_frame_fini(&r);
	sig_store *ms;
	CHECK(sig_store_generate(&ms, 99, 1, 1) == SP_OK);
	/* A valid envelope, then one bit flipped in the inner message's MAC. */
	static const uint8_t env_evil[] = {0x84, 0xa1, 'v', 0x01, 0xa1, 'k', 0x01, 0xa1, 's', 0x01, 0xa1, 't', 0xa4, 'e', 'v', 'i', 'l'};
	static const uint8_t env_ok[] = {0x84, 0xa1, 'v', 0x01, 0xa1, 'k', 0x01, 0xa1, 's', 0x02, 0xa1, 't', 0xa5, 'l', 'e', 'g', 'i', 't'};
	uint8_t *ct;
	size_t len;
	int type;
	CHECK(sig_store_encrypt(ms, "bob", &bb, env_evil, sizeof(env_evil), &ct, &len, &type) == SP_OK);
	CHECK(type == SIG_MSG_PREKEY);
	sig_prekey_msg pm;
	CHECK(sig_proto_prekey_decode(ct, len, &pm) == SP_OK);
	((uint8_t *)pm.message)[pm.message_len - 1] ^= 0x01;
	raw_send(&m, bob_user, bob_dev, 3, ct, len);
	free(ct);
	uint8_t garbage[120];
	randombytes_buf(garbage, sizeof(garbage));
	raw_send(&m, bob_user, bob_dev, 1, garbage, sizeof(garbage));
	CHECK(sig_store_encrypt(ms, "bob", NULL, env_ok, sizeof(env_ok), &ct, &len, &type) == SP_OK);
	raw_send(&m, bob_user, bob_dev, 3, ct, len);
	free(ct);
	sig_store_free(ms);
	itest_logout(&m);

	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_nlines(out) == 3);
	CHECK(strcmp(ct_str(out, 0, "type", b, sizeof(b)), "error") == 0);
	CHECK(strcmp(ct_str(out, 1, "type", b, sizeof(b)), "error") == 0);
	CHECK(strcmp(ct_str(out, 2, "type", b, sizeof(b)), "message") == 0);
	CHECK(strcmp(ct_str(out, 2, "text", b, sizeof(b)), "legit") == 0);
	/* Refused entries were ACKed: they do not come back. */
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_nlines(out) == 0);
	/* Bob still talks to alice. */
	CHECK(ct_run("alice", out, sizeof(out), "send +15550102 'still fine'") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(strstr(out, "still fine") != NULL);
}

static void
test_exit_codes(void)
{
	char out[65536];
	CHECK(ct_run("alice", out, sizeof(out), "%s", "") == 2);
	CHECK(ct_run("alice", out, sizeof(out), "frobnicate") == 2);
	CHECK(ct_run("alice", out, sizeof(out), "send +15550102") == 2);
	CHECK(ct_run("alice", out, sizeof(out), "send +15559876 'no such contact'") == 4);
	CHECK(ct_run("alice", out, sizeof(out), "status nothex") == 2);
	CHECK(ct_run("nobody", out, sizeof(out), "recv") == 2);
	CHECK(ct_run("bob", out, sizeof(out), "--server 127.0.0.1:1 recv") == 3);
	CHECK(ct_run("carol", out, sizeof(out), "register +15550103") == 0);
	CHECK(ct_run("carol", out, sizeof(out), "verify +15550103 000000") == 4);
	CHECK(ct_run("alice", out, sizeof(out), "link-confirm ZZZZZZZZ") == 4);
	/* A damaged Signal state in the store is an identity problem, not a crash. */
	char cmd[1024], path[512];
	snprintf(cmd, sizeof(cmd), "cp -r %s/home-bob %s/home-broken", ct_cluster.dir, ct_cluster.dir);
	CHECK(system(cmd) == 0);
	snprintf(path, sizeof(path), "%s/home-broken/sealpost.db", ct_cluster.dir);
	sqlite3 *db;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_exec(db, "UPDATE signal_state SET blob = x'0102030405'", NULL, NULL, NULL) == SQLITE_OK);
	sqlite3_close(db);
	CHECK(ct_run("broken", out, sizeof(out), "whoami") == 5);
}

/* Takes one bundle of `user` as `probe`; returns whether it carried a one-time prekey. */
static bool
bundle_has_opk(itest_user *probe, uint64_t user)
{
	sp_frame q, r;
	sp_frame_init(&q, SP_T_BUNDLE_GET, 7, true);
	sp_frame_set_u64(&q, SP_F_USER, user);
	CHECK(spc_conn_send(probe->conn, &q) == SP_OK);
	CHECK(itest_wait(probe, SP_T_BUNDLE_R, 10000, &r) == SP_OK);
	const sp_val *v = sp_frame_get(&r, SP_F_BUNDLES);
	bool has = v && v->rs.n == 1 && sp_frame_has(&v->rs.v[0], SP_F_OPK);
	sp_frame_fini(&r);
	return has;
}

static void
test_prekey_refill(void)
{
	char out[65536];
	itest_user probe;
	itest_register(&ct_cluster, 0, &probe, "+15550199");
	CHECK(itest_login(&ct_cluster, 0, &probe) == SP_OK);
	uint64_t b = strtoull(bob, NULL, 10);
	/* Use up bob's one-time prekeys (100 uploaded at verify, a few used since). */
	int taken = 0;
	while (taken < 150 && bundle_has_opk(&probe, b))
		taken++;
	CHECK(taken > 20 && taken < 150);
	/* bob's next connection is told it is under the low-water mark and uploads more. */
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	for (int i = 0; i < 30; i++)
		CHECK(bundle_has_opk(&probe, b));
	itest_logout(&probe);
}

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	/* test_prekey_refill drains a device's one-time prekeys on purpose, past the
	 * per-target bundle limit that exists to prevent just that (abuse_itest covers it). */
	setenv("SEALPOST_CONNSRV_LIMIT_BUNDLE_TARGET", "off", 1);
	ct_start();
	ct_register("alice", "+15550101", alice, sizeof(alice));
	ct_register("bob", "+15550102", bob, sizeof(bob));
	test_send_recv_in_order();
	test_receipts();
	test_offline_queue();
	test_tampered_refused();
	test_exactly_once_under_kills();
	test_exit_codes();
	test_prekey_refill();
	ct_down();
	printf("client_cli_itest: all passed in %llu ms\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
