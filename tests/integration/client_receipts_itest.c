/*
 * Read receipts are durable before READ_UPTO is answered: bob reads alice's message, and
 * the moment `sealpost read` has its OK both connsrvs are SIGKILLed (before anything could
 * be flushed later); once they are back, alice's status turns `read`, and bob's next
 * read goes out as before. (The refusals, a failed store and a user that does not exist,
 * are in connsrv_handlers_test.)
 *
 * "Read up to": a conversation of BULK messages turns read at alice with one READ_UPTO
 * frame (counted by both connsrvs' sp_connsrv_frames_in_by_type_total), and so do a
 * group's (the frame names the group). A forged receipt
 * -- mallory's own device, logged in raw with the key from its home, claiming seq 2^63 --
 * marks read only what alice sent mallory before it, not what she sent bob nor what she
 * sends mallory after; unpaired arrays are refused (SP_EINVAL).
 */
#include <sodium.h>
#include <sqlite3.h>

#include "client_util.h"
#include "sp_error.h"
#include "sp_time.h"

#define BULK 40

/* READ_UPTO frames taken by both connsrvs so far. */
static uint64_t
read_upto_frames(void)
{
	uint64_t total = 0;
	static char out[1 << 20];
	for (int i = 0; i < 2; i++) {
		CHECK(ct_http_get(80 + 10 * i, "/metrics", out, sizeof(out)) == 0);
		const char *p = strstr(out, "sp_connsrv_frames_in_by_type_total{type=\"READ_UPTO\"} ");
		if (p)
			total += strtoull(strchr(p, '}') + 2, NULL, 10);
	}
	return total;
}

/* The overall status of msg id as alice's `status` shows it (after a drain). */
static bool
status_is(const char *home, const char *id, const char *want)
{
	char out[16384], b[64];
	return ct_run(home, out, sizeof(out), "status %s", id) == 0 &&
	       strcmp(ct_str(out, 0, "status", b, sizeof(b)), want) == 0;
}

static bool
wait_status(const char *home, const char *id, const char *want)
{
	for (int i = 0; i < 60; i++) {
		if (status_is(home, id, want))
			return true;
		usleep(250000);
	}
	return false;
}

/* A CLI home's device as a raw test user (its auth key from the home's store). */
static void
raw_user(const char *home, itest_user *u)
{
	char path[512];
	sqlite3 *db;
	sqlite3_stmt *st;
	memset(u, 0, sizeof(*u));
	snprintf(path, sizeof(path), "%s/home-%s/sealpost.db", ct_cluster.dir, home);
	CHECK(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
	CHECK(sqlite3_prepare_v2(db, "SELECT k, v FROM meta WHERE k IN ('user', 'device', 'auth_sk')", -1, &st,
				 NULL) == SQLITE_OK);
	while (sqlite3_step(st) == SQLITE_ROW) {
		const char *k = (const char *)sqlite3_column_text(st, 0);
		if (strcmp(k, "user") == 0)
			u->user = (uint64_t)sqlite3_column_int64(st, 1);
		else if (strcmp(k, "device") == 0)
			u->device = (uint64_t)sqlite3_column_int64(st, 1);
		else if (sqlite3_column_bytes(st, 1) == (int)sizeof(u->auth_sk))
			memcpy(u->auth_sk, sqlite3_column_blob(st, 1), sizeof(u->auth_sk));
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	CHECK(u->user && u->device);
}

/* Sends a READ_UPTO on u's raw connection; the answer's type (OK or the ERROR code). */
static int
raw_read_upto(itest_user *u, uint64_t to_user, const uint64_t *devs, uint32_t nd, const uint64_t *seqs,
	      uint32_t ns)
{
	sp_frame q, r;
	sp_frame_init(&q, SP_T_READ_UPTO, 77, true);
	sp_frame_set_u64(&q, SP_F_TO_USER, to_user);
	sp_frame_set_u64s(&q, SP_F_RD_DEVICES, devs, nd);
	sp_frame_set_u64s(&q, SP_F_RD_SEQS, seqs, ns);
	CHECK(spc_conn_send(u->conn, &q) == SP_OK);
	for (;;) {
		CHECK(spc_conn_recv(u->conn, 15000, &r) == SP_OK);
		if ((r.type == SP_T_OK || r.type == SP_T_ERROR) && r.has_id && r.id == 77)
			break;
		sp_frame_fini(&r);
	}
	int rc = r.type == SP_T_OK ? SP_OK : (int)sp_frame_i64(&r, SP_F_CODE);
	sp_frame_fini(&r);
	return rc;
}

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	ct_start();
	char out[16384], alice[32], bob[32], id[64], b[64];
	ct_register("alice", "+15550801", alice, sizeof(alice));
	ct_register("bob", "+15550802", bob, sizeof(bob));
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15550802 %s", bob) == 0);
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550801 %s", alice) == 0);

	CHECK(ct_run("alice", out, sizeof(out), "send +15550802 'read me'") == 0);
	ct_str(out, 0, "msg_id", id, sizeof(id));
	CHECK(strlen(id) == 32);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(strstr(out, "read me") != NULL);
	CHECK(ct_run("bob", out, sizeof(out), "read +15550801") == 0);
	itest_signal(&ct_cluster, "connsrv-0", SIGKILL);
	itest_signal(&ct_cluster, "connsrv-1", SIGKILL);
	itest_restart(&ct_cluster, "connsrv-0");
	itest_restart(&ct_cluster, "connsrv-1");
	bool read = false;
	for (int i = 0; i < 60 && !read; i++) {
		if (ct_run("alice", out, sizeof(out), "status %s", id) == 0)
			read = strcmp(ct_str(out, 0, "status", b, sizeof(b)), "read") == 0;
		if (!read)
			usleep(250000);
	}
	CHECK(read);

	/* bob's next read goes out through the restarted connsrvs. */
	CHECK(ct_run("alice", out, sizeof(out), "send +15550802 'and me'") == 0);
	ct_str(out, 0, "msg_id", id, sizeof(id));
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "read +15550801") == 0);
	read = false;
	for (int i = 0; i < 60 && !read; i++) {
		if (ct_run("alice", out, sizeof(out), "status %s", id) == 0)
			read = strcmp(ct_str(out, 0, "status", b, sizeof(b)), "read") == 0;
		if (!read)
			usleep(250000);
	}
	CHECK(read);

	/* Read up to: BULK messages, one READ_UPTO frame, every one of them read at alice. */
	char first[64], last[64];
	for (int i = 0; i < BULK; i++) {
		CHECK(ct_run("alice", out, sizeof(out), "send +15550802 'bulk %d'", i) == 0);
		ct_str(out, 0, "msg_id", i == 0 ? first : last, 64);
	}
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count_text(out, "bulk ") == BULK);
	uint64_t frames = read_upto_frames();
	CHECK(ct_run("bob", out, sizeof(out), "read +15550801") == 0);
	CHECK(read_upto_frames() - frames == 1);
	CHECK(wait_status("alice", last, "read"));
	static char hist[1 << 20];
	CHECK(ct_run("alice", hist, sizeof(hist), "history +15550802 --limit %d", BULK) == 0);
	CHECK(ct_nlines(hist) == BULK && ct_count(hist, "status", "read") == BULK);
	CHECK(status_is("alice", first, "read"));
	/* Nothing left unread: no frame at all. */
	CHECK(ct_run("bob", out, sizeof(out), "read +15550801") == 0);
	CHECK(read_upto_frames() - frames == 1);

	/* A group: bob's read names the group; alice's two messages there turn read. */
	char g1[64], g2[64];
	CHECK(ct_run("alice", out, sizeof(out), "group create club +15550802") == 0);
	CHECK(ct_run("alice", out, sizeof(out), "send @club 'club one'") == 0);
	ct_str(out, 0, "msg_id", g1, sizeof(g1));
	CHECK(ct_run("alice", out, sizeof(out), "send @club 'club two'") == 0);
	ct_str(out, 0, "msg_id", g2, sizeof(g2));
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count_text(out, "club ") == 2);
	CHECK(ct_run("bob", out, sizeof(out), "read @club") == 0);
	CHECK(read_upto_frames() - frames == 2);
	CHECK(wait_status("alice", g2, "read"));
	CHECK(status_is("alice", g1, "read"));

	/* A forged "read up to 2^63" from mallory's device. */
	char mallory[32], to_m[64], to_b[64], later[64], a_dev[32];
	ct_register("mallory", "+15550803", mallory, sizeof(mallory));
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15550803 %s", mallory) == 0);
	CHECK(ct_run("alice", out, sizeof(out), "send +15550803 'for mallory'") == 0);
	ct_str(out, 0, "msg_id", to_m, sizeof(to_m));
	CHECK(ct_run("alice", out, sizeof(out), "send +15550802 'for bob only'") == 0);
	ct_str(out, 0, "msg_id", to_b, sizeof(to_b));
	CHECK(ct_run("mallory", out, sizeof(out), "recv") == 0);
	CHECK(ct_run("alice", out, sizeof(out), "whoami") == 0);
	ct_str(out, 0, "device", a_dev, sizeof(a_dev));
	uint64_t adev = strtoull(a_dev, NULL, 10), auser = strtoull(alice, NULL, 10);
	CHECK(adev != 0 && auser != 0);
	itest_user m;
	raw_user("mallory", &m);
	CHECK(itest_login(&ct_cluster, 0, &m) == SP_OK);
	uint64_t devs[2] = {adev, adev + 1}, huge[2] = {1ULL << 63, UINT64_MAX};
	CHECK(raw_read_upto(&m, auser, devs, 2, huge, 1) == SP_EINVAL);
	CHECK(raw_read_upto(&m, auser, devs, 2, huge, 2) == SP_OK);
	itest_logout(&m);
	CHECK(wait_status("alice", to_m, "read"));
	CHECK(ct_run("alice", out, sizeof(out), "send +15550803 'after the forgery'") == 0);
	ct_str(out, 0, "msg_id", later, sizeof(later));
	CHECK(ct_run("mallory", out, sizeof(out), "recv") == 0);
	CHECK(wait_status("alice", later, "delivered"));
	CHECK(ct_run("alice", out, sizeof(out), "status %s", later) == 0);
	CHECK(strstr(out, "\"read\"") == NULL);
	/* bob's message: bob's devices only, none read, nothing of mallory's. */
	CHECK(ct_run("alice", out, sizeof(out), "status %s", to_b) == 0);
	CHECK(strstr(out, "\"read\"") == NULL && strstr(out, mallory) == NULL);
	printf("client_receipts_itest: ok (%llu ms)\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
