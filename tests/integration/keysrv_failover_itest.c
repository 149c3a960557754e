/*
 * The key store without a single point of failure (docs/REPLICATION.md, "The key store on
 * the same mechanism"): a private dev cluster with keysrv-a/b/c.
 *   - while FIRST_CONTACTS new users send their first message to bob at once (each a
 *     fresh CLI process: login, BUNDLE_GET of bob's one-time prekeys, send) and a new
 *     user registers, the keysrv primary is SIGKILLed: every one of them succeeds within
 *     the failover bound, and bob decrypts every first message (a one-time prekey handed
 *     out twice would make one fail: bob deletes a prekey when it is first used);
 *   - the router's map names the new primary; the dead copy's data dir is deleted and it
 *     is restarted: it installs a snapshot and catches up;
 *   - then the new primary is SIGKILLed too: with the rebuilt copy in the sync set no
 *     account or device is lost (everyone logs in and sends again, the user registered
 *     during the first failover included).
 */
#include <sys/wait.h>

#include "client_util.h"
#include "sp_log.h"
#include "sp_time.h"

#define ROUTER_A_HTTP 1
#define KEYS_METRICS 67 /* base + 67 + copy (devcluster.sh) */
#define FIRST_CONTACTS 6
#define BOUND_MS 20000 /* the 10 s failover bound, plus a CLI process's start and login */

static char bob[32], alice[32];

/* On a failure (atexit, before the cluster goes down): the key store's story from the
 * copies' and connsrvs' logs, short enough to stay within the lines a CI run shows. */
static void
tell_story(void)
{
	if (!ct_failures || !ct_up)
		return;
	fprintf(stderr, "---- keysrv copies and connsrv, last events ----\n");
	fflush(stderr);
	if (itest_sh(&ct_cluster,
		"grep -h -E 'primary of|following|sync set|fenced|barrier|snapshot: installed|given up|"
		"refused|silent|campaign' %s/logs/keysrv-*.log %s/logs/connsrv-*.log | sort | "
		"tail -n 24 | cut -c12-180 >&2",
		ct_cluster.dir, ct_cluster.dir) != 0)
		fprintf(stderr, "(no log lines)\n");
}

/* The keysrv copy router-a's map names primary into name ("" when none). */
static void
map_keys_primary(char *name, size_t cap)
{
	char body[16384];
	name[0] = '\0';
	if (ct_http_get(ROUTER_A_HTTP, "/map", body, sizeof(body)))
		return;
	json_t *j = json_loads(body, 0, NULL), *mb;
	size_t i;
	json_array_foreach(json_object_get(j, "members"), i, mb) {
		if (strcmp(json_string_value(json_object_get(mb, "role")), "keysrv") == 0 &&
		    json_is_true(json_object_get(mb, "primary")))
			snprintf(name, cap, "%s", json_string_value(json_object_get(mb, "name")));
	}
	json_decref(j);
}

/* Waits until the map names a keysrv primary other than `not` (NULL: any). */
static void
wait_keys_primary(const char *not, char *name, size_t cap)
{
	for (int i = 0; i < 300; i++) {
		map_keys_primary(name, cap);
		if (name[0] && (!not || strcmp(name, not) != 0))
			return;
		usleep(100000);
	}
	CHECK(!"the map names no new keysrv primary within 30 s");
}

/* A keysrv copy's metric (-1 when it does not answer). */
static long long
keys_metric(const char *copy, const char *metric)
{
	char body[65536];
	if (ct_http_get(KEYS_METRICS + (copy[7] - 'a'), "/metrics", body, sizeof(body)))
		return -1;
	size_t len = strlen(metric);
	for (char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, metric, len) == 0 && p[len] == ' ')
			return atoll(p + len + 1);
	return -1;
}

/* Runs ct_run in a child process; returns its pid. The child exits 0 when the command
 * exited 0 and printed `want` as the first line's status, within BOUND_MS of `t0`. */
static pid_t
spawn(const char *home, const char *want, uint64_t t0, const char *fmt, const char *arg1,
      const char *arg2)
{
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid)
		return pid;
	char out[8192], st[32];
	int code = ct_run(home, out, sizeof(out), fmt, arg1, arg2);
	uint64_t took = sp_time_ms() - t0;
	bool ok = code == 0 && strcmp(ct_str(out, 0, "status", st, sizeof(st)), want) == 0 &&
		  took < BOUND_MS;
	if (!ok)
		fprintf(stderr, "FAIL %s: exit %d status '%s' after %llu ms\n", home, code, st,
			(unsigned long long)took);
	_exit(ok ? 0 : 1);
}

static void
reap(pid_t *pids, int n)
{
	for (int i = 0; i < n; i++) {
		int st;
		CHECK(waitpid(pids[i], &st, 0) == pids[i]);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
}

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	ct_start();
	atexit(tell_story); /* runs before ct_down */
	char out[65536], home[32], phone[32], user[32], msg[64], primary[32], next[32];

	ct_register("bob", "+15550401", bob, sizeof(bob));
	ct_register("alice", "+15550402", alice, sizeof(alice));
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15550401 %s", bob) == 0);
	CHECK(ct_run("alice", out, sizeof(out), "send +15550401 before") == 0);
	/* The first contacts exist (and know bob) before the failover; their first send,
	 * which fetches bob's prekeys, runs across it. */
	for (int i = 0; i < FIRST_CONTACTS; i++) {
		snprintf(home, sizeof(home), "u%d", i);
		snprintf(phone, sizeof(phone), "+155504%02d", 10 + i);
		ct_register(home, phone, user, sizeof(user));
		CHECK(ct_run(home, out, sizeof(out), "contact add +15550401 %s", bob) == 0);
	}
	CHECK(ct_run("newbie", out, sizeof(out), "register +15550499") == 0);
	wait_keys_primary(NULL, primary, sizeof(primary));
	printf("keysrv primary: %s\n", primary);

	/* The primary dies while they all log in, fetch bundles and send, and a new user
	 * verifies (a write: it waits for the new primary). */
	pid_t pids[FIRST_CONTACTS + 1];
	uint64_t t_kill = sp_time_ms();
	for (int i = 0; i < FIRST_CONTACTS; i++) {
		snprintf(home, sizeof(home), "u%d", i);
		snprintf(msg, sizeof(msg), "first-%d", i);
		pids[i] = spawn(home, "sent", t_kill, "send %s %s", "+15550401", msg);
	}
	usleep(150000);
	itest_signal(&ct_cluster, primary, SIGKILL);
	/* Logged, not printed: stamped like the servers' lines, to read beside them. */
	sp_info("keysrv_failover: SIGKILL to %s (first failover)", primary);
	char code[32] = "", path[400];
	snprintf(path, sizeof(path), "%s/+15550499", ct_cluster.otp_dir);
	FILE *f = fopen(path, "r");
	CHECK(f && fgets(code, sizeof(code), f));
	fclose(f);
	code[strcspn(code, "\r\n")] = '\0';
	pids[FIRST_CONTACTS] = spawn("newbie", "verified", t_kill, "verify %s %s", "+15550499", code);
	reap(pids, FIRST_CONTACTS + 1);
	printf("every first contact and the registration done %llu ms after the kill\n",
	       (unsigned long long)(sp_time_ms() - t_kill));
	wait_keys_primary(primary, next, sizeof(next));
	printf("new keysrv primary: %s\n", next);

	/* bob decrypts every first message: no prekey went out twice. */
	CHECK(ct_run("bob", out, sizeof(out), "recv --wait 5") == 0);
	CHECK(ct_count_text(out, "first-") == FIRST_CONTACTS);
	CHECK(ct_count_text(out, "before") == 1);
	CHECK(strstr(out, "undecryptable") == NULL);

	/* The dead copy comes back from an empty data dir: a snapshot, then the log. */
	CHECK(itest_sh(&ct_cluster, "rm -rf $SEALPOST_DATA/%s", primary) == 0);
	itest_restart(&ct_cluster, primary);
	long long lsn = -1, mine = -2;
	for (int i = 0; i < 200 && lsn != mine; i++) {
		usleep(100000);
		lsn = keys_metric(next, "keysrv_repl_applied_lsn");
		mine = keys_metric(primary, "keysrv_repl_applied_lsn");
	}
	CHECK(lsn > 0 && lsn == mine);
	CHECK(keys_metric(primary, "keysrv_repl_snapshots_installed_total") == 1);
	CHECK(keys_metric(primary, "keysrv_repl_role") == 1); /* replica */

	/* The second primary dies: everything is on the copies left, the rebuilt one
	 * included. Everyone logs in and sends again. */
	itest_signal(&ct_cluster, next, SIGKILL);
	sp_info("keysrv_failover: SIGKILL to %s (second failover)", next);
	uint64_t t_kill2 = sp_time_ms();
	for (int i = 0; i < FIRST_CONTACTS; i++) {
		snprintf(home, sizeof(home), "u%d", i);
		snprintf(msg, sizeof(msg), "again-%d", i);
		pids[i] = spawn(home, "sent", t_kill2, "send %s %s", "+15550401", msg);
	}
	reap(pids, FIRST_CONTACTS);
	printf("every second send done %llu ms after the second kill\n",
	       (unsigned long long)(sp_time_ms() - t_kill2));
	CHECK(ct_run("newbie", out, sizeof(out), "contact add +15550401 %s", bob) == 0);
	CHECK(ct_run("newbie", out, sizeof(out), "send +15550401 from-newbie") == 0);
	CHECK(ct_run("alice", out, sizeof(out), "send +15550401 after") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv --wait 5") == 0);
	CHECK(ct_count_text(out, "again-") == FIRST_CONTACTS);
	CHECK(ct_count_text(out, "from-newbie") == 1);
	CHECK(ct_count_text(out, "after") == 1);
	CHECK(strstr(out, "undecryptable") == NULL);
	wait_keys_primary(next, primary, sizeof(primary));

	ct_down();
	printf("keysrv_failover_itest: all passed in %llu ms\n",
	       (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
