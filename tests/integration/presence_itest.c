/*
 * Presence, privacy and group-add consent (docs/CONNSRV.md "Presence", docs/KEYSRV.md
 * "Privacy and contacts") on a private dev cluster:
 *   - a watcher's `listen --watch` sees a contact come online and go offline (with last
 *     seen), and `presence` answers once;
 *   - each setting hides what it should: contacts (a non-contact sees nothing, a contact
 *     everything), nobody, and the reciprocal rules (who hides last seen gets only "last
 *     seen recently"; who hides online sees no one's online state);
 *   - group_add=contacts refuses a group create/add by a non-contact and allows a contact;
 *   - coalescing: 500 sessions (200 under the sanitizers; in 4 processes, spread over both
 *     connsrvs) follow one user who logs in and out 5 times; each gets at most a few
 *     PRESENCE_EV (one publish per user per 3 s) and the last says offline. The counts are
 *     printed.
 */
#include "client_util.h"
#include "sp_error.h"
#include "sp_time.h"

/* Sessions following one user: registering them is most of the test's time. */
#define SUBSCRIBERS (itest_sanitized() ? 200 : 500)
#define CHILDREN 4
#define TOGGLES 5

/* Waits up to ms for a line of `file` with type presence and the given "online" value
 * (1, 0) after line `from`; returns its index or -1. */
static int
wait_presence(const char *file, int from, int online, int ms)
{
	char out[65536];
	for (int t = 0; t < ms / 100; t++) {
		ct_read_out(file, out, sizeof(out));
		for (int i = from; i < ct_nlines(out); i++) {
			json_t *j = ct_line(out, i);
			const char *type = json_string_value(json_object_get(j, "type"));
			json_t *on = json_object_get(j, "online");
			bool hit = type && strcmp(type, "presence") == 0 && json_is_boolean(on) &&
				   json_is_true(on) == (online == 1);
			json_decref(j);
			if (hit)
				return i;
		}
		usleep(100000);
	}
	return -1;
}

/* `presence WHO` as `home`: the answer's JSON (caller json_decref). */
static json_t *
presence(const char *home, const char *who)
{
	char out[4096];
	CHECK(ct_run(home, out, sizeof(out), "presence '%s'", who) == 0);
	json_t *j = ct_line(out, 0);
	CHECK(j != NULL);
	return j;
}

static bool
has(json_t *j, const char *key)
{
	return json_object_get(j, key) != NULL;
}

static void
test_cli(void)
{
	char out[16384], alice[32], bob[32], carol[32], bob_id[40];
	ct_register("alice", "+15551501", alice, sizeof(alice));
	ct_register("bob", "+15551502", bob, sizeof(bob));
	ct_register("carol", "+15551503", carol, sizeof(carol));
	snprintf(bob_id, sizeof(bob_id), "#%s", bob);
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15551502 %s", bob) == 0);
	CHECK(strstr(out, "\"shared\":true"));
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15551501 %s", alice) == 0);
	CHECK(strstr(out, "\"shared\":true"));
	CHECK(ct_run("bob", out, sizeof(out), "privacy") == 0);
	CHECK(strstr(out, "\"last_seen\":\"everyone\"") && strstr(out, "\"contacts\":1"));

	/* Seen by a watcher: online, then offline with last seen. */
	pid_t watcher = ct_spawn("alice", "alice.listen", "", "listen --watch +15551502");
	char got[65536];
	for (int i = 0; i < 100 && ct_count(got, "type", "connected") < 1; i++) {
		usleep(100000);
		ct_read_out("alice.listen", got, sizeof(got));
	}
	CHECK(ct_count(got, "type", "connected") >= 1);
	pid_t bob_listen = ct_spawn("bob", "bob.listen", "", "listen");
	int on = wait_presence("alice.listen", 0, 1, 15000);
	CHECK(on >= 0);
	json_t *j = presence("carol", bob_id);
	CHECK(json_is_true(json_object_get(j, "online")));
	json_decref(j);
	uint64_t before = sp_time_ms();
	ct_stop(bob_listen);
	int off = wait_presence("alice.listen", on + 1, 0, 15000);
	CHECK(off >= 0);
	ct_read_out("alice.listen", got, sizeof(got));
	j = ct_line(got, off);
	uint64_t seen = (uint64_t)json_integer_value(json_object_get(j, "last_seen"));
	CHECK(seen + 2000 >= before && seen <= sp_time_ms());
	json_decref(j);
	ct_stop(watcher);

	/* Everyone (the default): a stranger sees both. */
	j = presence("carol", bob_id);
	CHECK(json_is_false(json_object_get(j, "online")) && has(j, "last_seen"));
	json_decref(j);
	/* Contacts: carol (not bob's contact) sees nothing; alice (a contact) all. */
	CHECK(ct_run("bob", out, sizeof(out), "privacy --last-seen contacts --online contacts") == 0);
	CHECK(strstr(out, "\"online\":\"contacts\""));
	j = presence("carol", bob_id);
	CHECK(!has(j, "online") && !has(j, "last_seen") && !has(j, "last_seen_recently"));
	json_decref(j);
	j = presence("alice", "+15551502");
	CHECK(has(j, "online") && has(j, "last_seen"));
	json_decref(j);
	/* Nobody: not even a contact. */
	CHECK(ct_run("bob", out, sizeof(out), "privacy --last-seen nobody --online nobody") == 0);
	j = presence("alice", "+15551502");
	CHECK(!has(j, "online") && !has(j, "last_seen") && !has(j, "last_seen_recently"));
	json_decref(j);
	/* Reciprocal: bob shares again; alice hides her last seen, so she gets only "last
	 * seen recently"; hiding her online state hides bob's from her. */
	CHECK(ct_run("bob", out, sizeof(out), "privacy --last-seen everyone --online everyone") == 0);
	CHECK(ct_run("alice", out, sizeof(out), "privacy --last-seen nobody") == 0);
	j = presence("alice", "+15551502");
	CHECK(has(j, "online") && !has(j, "last_seen") &&
	      json_is_true(json_object_get(j, "last_seen_recently")));
	json_decref(j);
	CHECK(ct_run("alice", out, sizeof(out), "privacy --online nobody") == 0);
	j = presence("alice", "+15551502");
	CHECK(!has(j, "online") && !has(j, "last_seen"));
	json_decref(j);
	/* bob still sees alice's? No: she hides both from everyone. */
	j = presence("bob", "+15551501");
	CHECK(!has(j, "online") && !has(j, "last_seen"));
	json_decref(j);
	CHECK(ct_run("alice", out, sizeof(out), "privacy --last-seen bogus") == 2);

	/* Group adds: bob accepts them from contacts only. */
	CHECK(ct_run("bob", out, sizeof(out), "privacy --group-add contacts") == 0);
	CHECK(strstr(out, "\"group_add\":\"contacts\""));
	CHECK(ct_run("carol", out, sizeof(out), "group create nope +15551502") == 4);
	CHECK(ct_run("carol", out, sizeof(out), "group create mine +15551501") == 0);
	CHECK(ct_run("carol", out, sizeof(out), "group add @mine +15551502") == 4);
	CHECK(ct_run("alice", out, sizeof(out), "group create friends +15551502") == 0);
	/* Once bob has carol as a contact, she may add him. */
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15551503 %s", carol) == 0);
	CHECK(ct_run("carol", out, sizeof(out), "group add @mine +15551502") == 0);
	/* And contact remove takes it back. */
	CHECK(ct_run("bob", out, sizeof(out), "contact remove +15551503") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "privacy") == 0);
	CHECK(strstr(out, "\"contacts\":1"));
}

/* ---- coalescing with many subscribers ---- */

typedef struct child_result {
	int total, min, max, last_offline;
} child_result;

/* A child: registers and logs in n users, each following `target`; tells the parent it is
 * ready, waits for its go, then counts the PRESENCE_EV of each. Never returns. */
static void
child(int idx, int n, uint64_t target, int ready_fd, int go_fd, int res_fd)
{
	itest_user *u = calloc((size_t)n, sizeof(*u));
	child_result res = {0, 1 << 30, 0, 0};
	char c = 'r';
	if (!u)
		_exit(1);
	for (int i = 0; i < n; i++) {
		char phone[32];
		int which = (idx + i) % 2;
		snprintf(phone, sizeof(phone), "+1555170%d%03d", idx, i);
		itest_register(&ct_cluster, which, &u[i], phone);
		if (itest_login(&ct_cluster, which, &u[i]) != SP_OK)
			_exit(2);
		sp_frame q, r;
		sp_frame_init(&q, SP_T_PRESENCE_SUB, 7, true);
		sp_frame_set_u64s(&q, SP_F_PRES_USERS, &target, 1);
		if (spc_conn_send(u[i].conn, &q) != SP_OK || itest_wait(&u[i], SP_T_OK, 20000, &r) != SP_OK)
			_exit(3);
		sp_frame_fini(&r);
	}
	if (write(ready_fd, &c, 1) != 1 || read(go_fd, &c, 1) != 1)
		_exit(4);
	for (int i = 0; i < n; i++) {
		int cnt = 0, last_online = -1;
		sp_frame f;
		while (itest_wait(&u[i], SP_T_PRESENCE_EV, 60, &f) == SP_OK) {
			if (sp_frame_u64(&f, SP_F_USER) == target) {
				cnt++;
				last_online = (int)sp_frame_u64(&f, SP_F_PRES_ONLINE);
			}
			sp_frame_fini(&f);
		}
		res.total += cnt;
		res.min = cnt < res.min ? cnt : res.min;
		res.max = cnt > res.max ? cnt : res.max;
		res.last_offline += last_online == 0;
		itest_logout(&u[i]);
	}
	free(u);
	_exit(write(res_fd, &res, sizeof(res)) == (ssize_t)sizeof(res) ? 0 : 5);
}

static void
test_coalescing(void)
{
	itest_user dave;
	itest_register(&ct_cluster, 0, &dave, "+15551599");
	int ready[2], go[2], res[2];
	CHECK(pipe(ready) == 0 && pipe(go) == 0 && pipe(res) == 0);
	pid_t pids[CHILDREN];
	uint64_t t0 = sp_time_ms();
	for (int k = 0; k < CHILDREN; k++) {
		pids[k] = fork();
		CHECK(pids[k] >= 0);
		if (pids[k] == 0)
			child(k, SUBSCRIBERS / CHILDREN, dave.user, ready[1], go[0], res[1]);
	}
	char c;
	for (int k = 0; k < CHILDREN; k++)
		CHECK(read(ready[0], &c, 1) == 1);
	printf("presence_itest: %d subscribers ready in %llu ms\n", SUBSCRIBERS,
	       (unsigned long long)(sp_time_ms() - t0));
	/* 2 * TOGGLES changes within about two seconds, all on connsrv-0. */
	uint64_t t1 = sp_time_ms();
	for (int k = 0; k < TOGGLES; k++) {
		CHECK(itest_login(&ct_cluster, 0, &dave) == SP_OK);
		usleep(150000);
		itest_logout(&dave);
		usleep(150000);
	}
	uint64_t took = sp_time_ms() - t1;
	sleep(8); /* the coalesced publish comes within 3 s of the last */
	for (int k = 0; k < CHILDREN; k++)
		CHECK(write(go[1], "g", 1) == 1);
	child_result sum = {0, 1 << 30, 0, 0};
	for (int k = 0; k < CHILDREN; k++) {
		child_result r;
		CHECK(read(res[0], &r, sizeof(r)) == (ssize_t)sizeof(r));
		sum.total += r.total;
		sum.min = r.min < sum.min ? r.min : sum.min;
		sum.max = r.max > sum.max ? r.max : sum.max;
		sum.last_offline += r.last_offline;
	}
	for (int k = 0; k < CHILDREN; k++) {
		int st;
		CHECK(waitpid(pids[k], &st, 0) == pids[k] && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	/* One publish per 3 s per user: over `took` ms at most took/3000 + 2 publishes, each
	 * one frame per subscriber (10 changes uncoalesced would be 10 each). */
	int bound = (int)(took / 3000) + 2;
	printf("presence_itest: %d changes in %llu ms -> %d PRESENCE_EV to %d subscribers "
	       "(per subscriber min %d, max %d, bound %d; uncoalesced %d)\n",
	       2 * TOGGLES, (unsigned long long)took, sum.total, SUBSCRIBERS, sum.min, sum.max, bound,
	       2 * TOGGLES * SUBSCRIBERS);
	CHECK(sum.min >= 1);
	CHECK(sum.max <= bound);
	CHECK(sum.last_offline == SUBSCRIBERS);
}

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	/* 500 subscribers log in from one address: above the default handshake limits. */
	setenv("SEALPOST_CONNSRV_HANDSHAKE_RATE", "5000", 1);
	setenv("SEALPOST_CONNSRV_HANDSHAKE_BURST", "5000", 1);
	setenv("SEALPOST_CONNSRV_PRELOGIN_PER_SOURCE", "1000", 1);
	ct_start();
	test_cli();
	test_coalescing();
	ct_down();
	printf("presence_itest: all passed in %llu ms\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
