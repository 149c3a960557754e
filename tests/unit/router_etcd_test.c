/* The router's etcd mirror, end to end: a real etcd (etcd_proc), the real bin/router with
 * --etcd and a cluster file of two shards with three copies each, an observer sp_cluster
 * in this process, and copies played by repl_ha objects. A leader key written through
 * repl/ha is published as that copy being primary (and shard_for returns it); a change of
 * leader is republished; LSN-only updates are republished at most about once a second; a
 * second router shows the same primaries; an etcd stall or death leaves the last map in
 * place. Every wait is bounded; only the processes started here are stopped. */
#include <arpa/inet.h>
#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check_run.h"
#include "etcd_proc.h"
#include "repl/ha.h"
#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_etcd.h"
#include "test_net.h"

static etcd_proc etcd;
static char cluster_path[128], dir[64];

typedef struct rproc {
	pid_t pid;
	int http;
	char rep[64], pub[64];
	const char *log; /* NULL: the router logs to this test's stderr */
} rproc;

static void
sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* One HTTP/1.0 GET on loopback: the status (or -1), the body in `body`. */
static int
http_get(int port, const char *path, char *body, size_t cap)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct timeval tv = {3, 0};
	char buf[65536];
	size_t n = 0;
	body[0] = '\0';
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		close(fd);
		return -1;
	}
	int len = snprintf(buf, sizeof(buf), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
	if (write(fd, buf, (size_t)len) != len) {
		close(fd);
		return -1;
	}
	ssize_t r;
	while (n < sizeof(buf) - 1 && (r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
		n += (size_t)r;
	close(fd);
	buf[n] = '\0';
	int status;
	if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
		return -1;
	const char *b = strstr(buf, "\r\n\r\n");
	snprintf(body, cap, "%s", b ? b + 4 : "");
	return status;
}

/* Starts bin/router mirroring etcd cluster `ecluster`; returns once /health answers. The
 * router dies with this (forked test) process, whatever way it ends. */
static void
router_start(rproc *p, const char *ecluster)
{
	const char *binroot = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	char bin[256], a_rep[96], a_pub[96], a_http[16], a_state[160], a_etcd[96], a_cl[96];
	snprintf(bin, sizeof(bin), "%s/router", binroot);
	p->http = test_free_port();
	snprintf(p->rep, sizeof(p->rep), "tcp://127.0.0.1:%d", test_free_port());
	snprintf(p->pub, sizeof(p->pub), "tcp://127.0.0.1:%d", test_free_port());
	snprintf(a_rep, sizeof(a_rep), "--listen=%s", p->rep);
	snprintf(a_pub, sizeof(a_pub), "--publish=%s", p->pub);
	snprintf(a_http, sizeof(a_http), "%d", p->http);
	snprintf(a_state, sizeof(a_state), "--state-file=%s/state-%d", dir, p->http);
	snprintf(a_etcd, sizeof(a_etcd), "--etcd=%s", etcd.endpoint);
	snprintf(a_cl, sizeof(a_cl), "--etcd-cluster=%s", ecluster);
	pid_t parent = getpid();
	p->pid = fork();
	ck_assert_int_ge(p->pid, 0);
	if (p->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		int fd = p->log ? open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
		if (fd >= 0)
			dup2(fd, 2);
		execl(bin, bin, "--cluster-file", cluster_path, a_rep, a_pub, "--http-port", a_http,
		      a_state, a_etcd, a_cl, "--log-level", "info", "--insecure-internal", (char *)NULL);
		_exit(127);
	}
	char body[256];
	for (int i = 0; i < 200; i++) {
		int st;
		ck_assert_msg(waitpid(p->pid, &st, WNOHANG) != p->pid, "router exited at start");
		if (http_get(p->http, "/health", body, sizeof(body)) == 200)
			return;
		sleep_ms(50);
	}
	ck_abort_msg("router did not answer /health");
}

static void
router_stop(rproc *p)
{
	if (p->pid <= 0)
		return;
	kill(p->pid, SIGTERM);
	int st = 0;
	for (int i = 0; i < 100 && waitpid(p->pid, &st, WNOHANG) != p->pid; i++)
		sleep_ms(50);
	if (kill(p->pid, 0) == 0) {
		kill(p->pid, SIGKILL);
		waitpid(p->pid, &st, 0);
		ck_abort_msg("router did not stop on SIGTERM");
	}
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "router exit status %#x", st);
	p->pid = 0;
}

/* A copy of group inbox-<shard> in etcd cluster `ecluster`, with a lease long enough to
 * outlive the test (nothing renews it). */
static repl_ha *
copy_new(const char *ecluster, const char *group, const char *name)
{
	repl_ha_cfg cfg = {
	    .etcd = {.endpoints = etcd.endpoint, .timeout_ms = 2000},
	    .cluster = ecluster,
	    .group = group,
	    .name = name,
	    .inc = (const uint8_t *)name,
	    .inc_len = strlen(name),
	    .url = "tcp://127.0.0.1:1",
	    .lease_ttl_s = 60,
	};
	repl_ha *ha;
	ck_assert_int_eq(repl_ha_new(&cfg, &ha), SP_OK);
	return ha;
}

static void
copy_publish(repl_ha *ha, repl_ha_role role, uint64_t lsn)
{
	repl_ha_status s = {.role = role, .epoch = 1, .last = {1, lsn}, .flushed_lsn = lsn};
	ck_assert_int_eq(repl_ha_publish(ha, &s), SP_OK);
}

static int64_t
copy_campaign(repl_ha *ha)
{
	repl_ha_view v;
	int64_t epoch = 0;
	ck_assert_int_eq(repl_ha_read(ha, &v), SP_OK);
	ck_assert_int_eq(repl_ha_campaign(ha, &v, (repl_ha_pos){1, 0}, &epoch), SP_OK);
	return epoch;
}

/* What the observer must see of one copy. */
typedef struct want {
	const char *name;
	bool primary, in_sync;
	uint64_t lsn, epoch; /* UINT64_MAX: any */
} want;

static bool
map_has(sp_cluster *c, const want *w, size_t n, uint64_t *map_epoch)
{
	sp_cluster_map *m = sp_cluster_map_get(c);
	bool ok = m != NULL;
	for (size_t i = 0; ok && i < n; i++) {
		const sp_cluster_member *mb = sp_cluster_map_find(m, w[i].name);
		ok = mb && mb->primary == w[i].primary && mb->in_sync == w[i].in_sync &&
		     (w[i].lsn == UINT64_MAX || mb->lsn == w[i].lsn) &&
		     (w[i].epoch == UINT64_MAX || mb->epoch == w[i].epoch);
	}
	if (ok && map_epoch)
		*map_epoch = sp_cluster_map_epoch(m);
	sp_cluster_map_put(m);
	return ok;
}

/* Waits up to 10 s for the observer's map to show `w`. */
static bool
wait_map(sp_cluster *c, const want *w, size_t n)
{
	for (int i = 0; i < 200; i++) {
		if (map_has(c, w, n, NULL))
			return true;
		sleep_ms(50);
	}
	return false;
}

/* A device that shard `shard` owns in the observer's map. */
static uint64_t
device_of(sp_cluster *c, uint32_t shard)
{
	sp_cluster_map *m = sp_cluster_map_get(c);
	ck_assert_ptr_nonnull(m);
	for (uint64_t d = 1; d < 100000; d++) {
		uint32_t s;
		ck_assert_int_eq(sp_cluster_map_shard_of(m, d, &s), SP_OK);
		if (s == shard) {
			sp_cluster_map_put(m);
			return d;
		}
	}
	ck_abort_msg("no device on shard %u", shard);
	return 0;
}

static const char *
shard_for_name(sp_cluster *c, uint64_t device, char *buf, size_t cap)
{
	sp_cluster_map *m = sp_cluster_map_get(c);
	const sp_cluster_member *t = m ? sp_cluster_map_shard_for(m, device) : NULL;
	snprintf(buf, cap, "%s", t ? t->name : "(none)");
	sp_cluster_map_put(m);
	return buf;
}

static json_t *
map_json(const rproc *p)
{
	char body[65536];
	ck_assert_int_eq(http_get(p->http, "/map", body, sizeof(body)), 200);
	json_t *j = json_loads(body, 0, NULL);
	ck_assert_ptr_nonnull(j);
	return j;
}

static json_t *
json_member(json_t *map, const char *name)
{
	size_t i;
	json_t *mb;
	json_array_foreach(json_object_get(map, "members"), i, mb)
		if (strcmp(json_string_value(json_object_get(mb, "name")), name) == 0)
			return mb;
	return NULL;
}

/* The names of the copies /map shows as primary, comma-separated in file order. */
static void
http_primaries(const rproc *p, char *buf, size_t cap)
{
	json_t *j = map_json(p);
	size_t i, off = 0;
	json_t *mb;
	buf[0] = '\0';
	json_array_foreach(json_object_get(j, "members"), i, mb)
		if (json_is_true(json_object_get(mb, "primary")))
			off += (size_t)snprintf(buf + off, cap - off, "%s%s", off ? "," : "",
						json_string_value(json_object_get(mb, "name")));
	json_decref(j);
}

static uint64_t
publishes(const rproc *p)
{
	char body[65536];
	ck_assert_int_eq(http_get(p->http, "/metrics", body, sizeof(body)), 200);
	const char *s = strstr(body, "\nsp_router_map_publishes_total ");
	ck_assert_ptr_nonnull(s);
	return strtoull(s + strlen("\nsp_router_map_publishes_total "), NULL, 10);
}

static sp_cluster *
observer(const rproc *p)
{
	sp_cluster *c;
	ck_assert_int_eq(sp_cluster_start(p->rep, p->pub, NULL, 0, &c), SP_OK);
	ck_assert_int_eq(sp_cluster_wait_map(c, 10000), SP_OK);
	return c;
}

START_TEST(test_mirror)
{
	rproc r1 = {0}, r2 = {0};
	router_start(&r1, "rt1");
	sp_cluster *c = observer(&r1);

	/* The first read makes the fields known: nobody primary yet, nobody in sync. */
	want none[] = {{"inbox-0a", false, false, 0, 0}, {"inbox-1c", false, false, 0, 0}};
	ck_assert(wait_map(c, none, 2));

	/* inbox-0b publishes its status and takes the leader key. */
	repl_ha *b = copy_new("rt1", "inbox-0", "inbox-0b");
	copy_publish(b, REPL_HA_REPLICA, 5);
	uint64_t eb = (uint64_t)copy_campaign(b);
	want w1[] = {{"inbox-0b", true, true, 5, eb},
		     {"inbox-0a", false, false, 0, eb},
		     {"inbox-0c", false, false, 0, eb},
		     {"inbox-1a", false, false, 0, 0}};
	ck_assert_msg(wait_map(c, w1, 4), "inbox-0b never published as primary");
	uint64_t d0 = device_of(c, 0), d1 = device_of(c, 1);
	char nb[64];
	ck_assert_str_eq(shard_for_name(c, d0, nb, sizeof(nb)), "inbox-0b");
	/* Shard 1 has no primary and nobody heartbeats: its first copy by name. */
	ck_assert_str_eq(shard_for_name(c, d1, nb, sizeof(nb)), "inbox-1a");

	/* /map says the same. */
	json_t *j = map_json(&r1);
	json_t *mb = json_member(j, "inbox-0b");
	ck_assert(json_is_true(json_object_get(mb, "primary")));
	ck_assert(json_is_true(json_object_get(mb, "in_sync")));
	ck_assert_int_eq(json_integer_value(json_object_get(mb, "lsn")), 5);
	ck_assert_int_eq(json_integer_value(json_object_get(mb, "epoch")), (json_int_t)eb);
	ck_assert_int_eq(json_integer_value(json_object_get(mb, "shard")), 0);
	mb = json_member(j, "inbox-0a");
	ck_assert(json_is_false(json_object_get(mb, "primary")));
	ck_assert(json_is_false(json_object_get(mb, "in_sync")));
	json_decref(j);

	/* The leader changes: b adds c to the sync set, resigns; c takes over. */
	repl_ha *cc = copy_new("rt1", "inbox-0", "inbox-0c");
	copy_publish(cc, REPL_HA_REPLICA, 5);
	repl_ha_view v;
	ck_assert_int_eq(repl_ha_read(b, &v), SP_OK);
	repl_ha_id set[2] = {*repl_ha_self(b), *repl_ha_self(cc)};
	ck_assert_int_eq(repl_ha_sync_set(b, &v, set, 2), SP_OK);
	want w2[] = {{"inbox-0b", true, true, 5, eb}, {"inbox-0c", false, true, 5, eb}};
	ck_assert_msg(wait_map(c, w2, 2), "the sync set change was not published");
	ck_assert_int_eq(repl_ha_resign(b), SP_OK);
	uint64_t ec = (uint64_t)copy_campaign(cc);
	ck_assert_uint_gt(ec, eb);
	/* b's status key went with its lease: LSN 0; still in the sync set by name. */
	want w3[] = {{"inbox-0c", true, true, 5, ec}, {"inbox-0b", false, true, 0, ec}};
	ck_assert_msg(wait_map(c, w3, 2), "the new leader was not published");
	ck_assert_str_eq(shard_for_name(c, d0, nb, sizeof(nb)), "inbox-0c");

	/* LSN-only updates, twenty in two seconds: they reach the map, but the map is
	 * republished about once a second, not twenty times. */
	uint64_t before = publishes(&r1);
	for (int i = 1; i <= 20; i++) {
		copy_publish(cc, REPL_HA_PRIMARY, 5 + (uint64_t)i);
		sleep_ms(100);
	}
	want w4[] = {{"inbox-0c", true, true, 25, ec}};
	ck_assert_msg(wait_map(c, w4, 1), "the last LSN was not published");
	uint64_t n = publishes(&r1) - before;
	ck_assert_msg(n >= 1 && n <= 4, "%llu publications for 20 LSN updates in 2 s",
		      (unsigned long long)n);

	/* A second router on the same etcd shows the same primaries. */
	router_start(&r2, "rt1");
	char p1[256], p2[256];
	for (int i = 0; i < 200; i++) {
		http_primaries(&r2, p2, sizeof(p2));
		if (strcmp(p2, "inbox-0c") == 0)
			break;
		sleep_ms(50);
	}
	http_primaries(&r1, p1, sizeof(p1));
	ck_assert_str_eq(p1, "inbox-0c");
	ck_assert_str_eq(p2, p1);
	router_stop(&r2);

	/* etcd stalls (SIGSTOP) for 3 s: the router answers and keeps its map. */
	want w6[] = {{"inbox-0c", true, true, 25, ec}, {"inbox-0b", false, true, 0, ec}};
	uint64_t me0 = 0, me1 = 0;
	ck_assert(map_has(c, w6, 2, &me0));
	etcd_proc_signal(&etcd, SIGSTOP);
	for (int i = 0; i < 6; i++) {
		sleep_ms(500);
		http_primaries(&r1, p1, sizeof(p1));
		ck_assert_str_eq(p1, "inbox-0c");
		ck_assert(map_has(c, w6, 2, &me1));
		ck_assert(me1 == me0); /* nothing republished: nothing changed */
	}
	etcd_proc_signal(&etcd, SIGCONT);
	/* And follows etcd again once it is back: c resigns, nobody is primary. */
	ck_assert_int_eq(repl_ha_resign(cc), SP_OK);
	/* The shard's epoch stays the last leader's. */
	want w5[] = {{"inbox-0c", false, true, 0, ec}, {"inbox-0b", false, true, 0, ec}};
	ck_assert_msg(wait_map(c, w5, 2), "no change seen after etcd resumed");
	/* Shard 0 without a primary: its first copy by name (none heartbeats). */
	ck_assert_str_eq(shard_for_name(c, d0, nb, sizeof(nb)), "inbox-0a");

	sp_cluster_stop(c);
	router_stop(&r1);
	repl_ha_free(b);
	repl_ha_free(cc);
}
END_TEST

/* The router falls behind etcd's compaction (stopped while two shards change and the
 * history is compacted past the changes): its watch cannot resume, it reads every group
 * again and shows both changes. */
START_TEST(test_compacted)
{
	char log[128];
	snprintf(log, sizeof(log), "%s/compact.log", dir);
	rproc r = {.log = log};
	router_start(&r, "rt3");
	sp_cluster *c = observer(&r);
	want none[] = {{"inbox-0a", false, false, 0, 0}, {"inbox-1a", false, false, 0, 0}};
	ck_assert(wait_map(c, none, 2));
	sleep_ms(200); /* into its watch */

	kill(r.pid, SIGSTOP);
	repl_ha *a0 = copy_new("rt3", "inbox-0", "inbox-0a"), *a1 = copy_new("rt3", "inbox-1", "inbox-1a");
	copy_publish(a0, REPL_HA_REPLICA, 1);
	uint64_t e0 = (uint64_t)copy_campaign(a0);
	copy_publish(a1, REPL_HA_REPLICA, 2);
	uint64_t e1 = (uint64_t)copy_campaign(a1);
	/* Something outside the groups, then compact up to it. */
	sp_etcd *ctl;
	sp_etcd_cfg ecfg = {.endpoints = etcd.endpoint, .timeout_ms = 2000};
	ck_assert_int_eq(sp_etcd_new(&ecfg, &ctl), SP_OK);
	int64_t rev;
	ck_assert_int_eq(sp_etcd_put(ctl, "/sealpost/rt3/keysrv/x", 22, "y", 1, 0, &rev), SP_OK);
	ck_assert_int_eq(sp_etcd_put(ctl, "/elsewhere", 10, "y", 1, 0, &rev), SP_OK);
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "ETCDCTL_API=3 etcdctl --endpoints=%s compact %lld >/dev/null",
		 etcd.endpoint, (long long)rev);
	ck_assert_int_eq(system(cmd), 0);
	sleep_ms(1500); /* past its watch window */
	kill(r.pid, SIGCONT);

	want both[] = {{"inbox-0a", true, true, 1, e0}, {"inbox-1a", true, true, 2, e1}};
	bool shown = wait_map(c, both, 2);
	sp_cluster_stop(c);
	router_stop(&r);
	snprintf(cmd, sizeof(cmd), "grep -q 'etcd compacted revision' %s", log);
	bool compacted = system(cmd) == 0;
	if (!shown || !compacted) {
		snprintf(cmd, sizeof(cmd), "cat %s >&2", log);
		ck_assert_int_ge(system(cmd), 0);
	}
	ck_assert_msg(shown, "changes made before the compaction never showed");
	ck_assert_msg(compacted, "the router did not go through the compacted path");
	sp_etcd_free(ctl);
	repl_ha_free(a0);
	repl_ha_free(a1);
}
END_TEST

/* etcd dies: the router keeps the last map and goes on answering. Last test: it kills the
 * suite's etcd. */
START_TEST(test_etcd_gone)
{
	/* Shard 0's group holds a sync key nobody can parse: it stays unknown, and does not
	 * keep shard 1 from being mirrored. */
	sp_etcd *ctl;
	sp_etcd_cfg ecfg = {.endpoints = etcd.endpoint, .timeout_ms = 2000};
	ck_assert_int_eq(sp_etcd_new(&ecfg, &ctl), SP_OK);
	ck_assert_int_eq(sp_etcd_put(ctl, "/sealpost/rt2/inbox-0/sync", 26, "garbage", 7, 0, NULL),
			 SP_OK);
	sp_etcd_free(ctl);
	rproc r = {0};
	router_start(&r, "rt2");
	sp_cluster *c = observer(&r);
	repl_ha *a = copy_new("rt2", "inbox-1", "inbox-1a");
	copy_publish(a, REPL_HA_REPLICA, 3);
	uint64_t ea = (uint64_t)copy_campaign(a);
	want w[] = {{"inbox-1a", true, true, 3, ea}, {"inbox-1b", false, false, 0, ea}};
	ck_assert(wait_map(c, w, 2));
	uint64_t me = 0;
	ck_assert(map_has(c, w, 2, &me));
	json_t *j = map_json(&r);
	ck_assert_int_eq(json_integer_value(json_object_get(json_member(j, "inbox-0a"), "epoch")), 0);
	json_decref(j);
	sp_cluster_map *m = sp_cluster_map_get(c);
	ck_assert(!sp_cluster_map_find(m, "inbox-0a")->primary);
	sp_cluster_map_put(m);

	etcd_proc_signal(&etcd, SIGKILL);
	char p[256];
	for (int i = 0; i < 8; i++) {
		sleep_ms(500);
		http_primaries(&r, p, sizeof(p));
		ck_assert_str_eq(p, "inbox-1a");
		uint64_t now_epoch = 0;
		ck_assert(map_has(c, w, 2, &now_epoch));
		ck_assert(now_epoch == me); /* nothing republished: nothing changed */
	}
	char body[65536];
	ck_assert_int_eq(http_get(r.http, "/metrics", body, sizeof(body)), 200);
	ck_assert_msg(strstr(body, "\nsp_router_etcd_reachable 0\n") != NULL, "%s", body);
	/* Points for Check's "after this point" should a stop ever hang. */
	mark_point();
	sp_cluster_stop(c);
	mark_point();
	router_stop(&r);
	mark_point();
	repl_ha_free(a);
	mark_point();
}
END_TEST

int
main(void)
{
	snprintf(dir, sizeof(dir), "/tmp/sp-router-etcd-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(cluster_path, sizeof(cluster_path), "%s/cluster.ini", dir);
	FILE *f = fopen(cluster_path, "w");
	if (!f)
		return 1;
	for (int s = 0; s < 2; s++)
		for (int k = 0; k < 3; k++)
			fprintf(f, "[inbox-%d%c]\nrole = inbox\naddr = tcp://127.0.0.1:%d\nshard = %d\n", s,
				'a' + k, 1400 + 10 * s + k, s);
	fprintf(f, "[keysrv]\nrole = keysrv\naddr = tcp://127.0.0.1:1301\n"
		   "[connsrv-0]\nrole = connsrv\naddr = tcp://127.0.0.1:1501\nclient = 127.0.0.1:7443\n");
	fclose(f);
	if (etcd_proc_start(&etcd) != 0)
		return 1;
	Suite *s = suite_create("router_etcd");
	TCase *tc = tcase_create("router_etcd");
	tcase_set_timeout(tc, 90);
	tcase_add_test(tc, test_mirror);
	tcase_add_test(tc, test_compacted);
	tcase_add_test(tc, test_etcd_gone);
	suite_add_tcase(s, tc);
	int rc = check_run(s);
	etcd_proc_stop(&etcd);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		rc = 1;
	return rc;
}
