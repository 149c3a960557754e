/*
 * Network partitions of a replicated inbox shard, with real processes in network
 * namespaces this test makes (named sppart<pid>-*, deleted at exit, on failure and on
 * SIGINT/SIGTERM/SIGHUP; nothing is added to the root namespace). A "hub" namespace holds
 * etcd and the test's writer threads, with three bridges: 10.79.0.0/24 for etcd,
 * 10.77.0.0/24 for replication, 10.78.0.0/24 for clients. Each of the three inboxsrv
 * copies (lease 3 s, lag bound 1 s) runs in a namespace of its own with one veth into
 * each bridge (its etcd traffic, its --repl-listen, its --listen and /metrics). Under load
 * (writers append to whichever copy acknowledges; every acknowledgement is recorded with
 * its copy and the test's monotonic send/answer times), the primary's hub-side ports are
 * set down, three times in a row:
 *   1. all of them: it reaches neither etcd nor the replicas nor the writers;
 *   2. etcd and replication only: the writers, and a prober thread appending to it alone,
 *      still reach it (it cannot commit: it must stop answering SP_OK for good);
 *   3. etcd only: the replicas and the writers still reach it, so it keeps committing
 *      until its fencing deadline (cut + TTL - margin at the latest) and must stop there.
 * Each time another copy takes over, and the test checks that no write was acknowledged
 * by two primaries: the old primary's last acknowledgement arrived before the request of
 * the new primary's first was sent, it acknowledged no request sent after its fencing
 * deadline, and over the whole run the copies' acknowledging windows never overlap. Then
 * the partition heals; the old primary must rejoin as a replica (its "no longer primary"
 * line and fenced_total, role 1 in its metrics, the new primary's sync set back to 3 copies,
 * its applied LSN equal to the primary's once the load stops), and every acknowledged
 * append, by whichever copy, must be on the new primary exactly once with its seq and
 * content. Phases 2 and 3 are the second and third failovers. Takes ~30 s; needs root
 * (ip netns, setns).
 */
#include <sodium.h>
#include <sys/stat.h>

#include "etcd_proc.h"
#include "tests/integration/inbox_load_util.h"

#define LEASE_TTL_S 3
#define FENCE_MARGIN_MS 1000 /* repl_ha's default fencing margin */
#define TAKEOVER_MAX_MS 15000
#define REJOIN_MAX_MS 20000
#define ETCD_IP "10.79.0.100"

/* Which of the primary's links a partition cuts. */
enum { CUT_ETCD = 1, CUT_REPL = 2, CUT_CLIENTS = 4 };

static etcd_proc E;
static char root[64];
static char ns_hub[32], ns_copy[COPIES][32];
static bool net_made;
static char repl_url[COPIES][64];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int
sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void
net_teardown(void)
{
	if (!net_made)
		return;
	net_made = false;
	for (int i = 0; i < COPIES; i++)
		sh("ip netns del %s 2>/dev/null", ns_copy[i]);
	sh("ip netns del %s 2>/dev/null", ns_hub);
}

static void
cleanup_all(void)
{
	load_stop_all(&E);
	net_teardown();
	load_remove_dir(root);
}

/* Namespaces of earlier runs of this test that died without cleaning up (SIGKILL): their
 * names carry the pid of a process that no longer exists (or ours, reused). */
static void
net_sweep_stale(void)
{
	FILE *p = popen("ip netns list 2>/dev/null", "r");
	char line[256];
	if (!p)
		return;
	while (fgets(line, sizeof(line), p)) {
		int pid;
		char rest[64];
		if (sscanf(line, "sppart%d-%63[a-z0-9]", &pid, rest) != 2 || pid <= 0)
			continue;
		if (pid == getpid() || (kill(pid, 0) != 0 && errno == ESRCH)) {
			line[strcspn(line, " \n")] = '\0';
			fprintf(stderr, "removing stale namespace %s\n", line);
			sh("ip netns del %s 2>/dev/null", line);
		}
	}
	pclose(p);
}

/* The hub (bridges br-e, br-r, br-c) and one namespace per copy (eth-e, eth-r, eth-c),
 * see above. */
static void
net_setup(void)
{
	static const char *link[3] = { "e", "r", "c" };
	static const int net[3] = { 79, 77, 78 };
	char script[8192];
	int n = 0;
	snprintf(ns_hub, sizeof(ns_hub), "sppart%d-hub", (int)getpid());
	for (int i = 0; i < COPIES; i++)
		snprintf(ns_copy[i], sizeof(ns_copy[i]), "sppart%d-c%d", (int)getpid(), i);
	net_sweep_stale();
	net_made = true;
	n += snprintf(script + n, sizeof(script) - n,
	    "set -e; H=%s; ip netns add $H; ip -n $H link set lo up;", ns_hub);
	for (int l = 0; l < 3; l++)
		n += snprintf(script + n, sizeof(script) - n,
		    " ip -n $H link add br-%s type bridge; ip -n $H addr add 10.%d.0.100/24 dev "
		    "br-%s;"
		    " ip -n $H link set br-%s up;",
		    link[l], net[l], link[l], link[l]);
	for (int i = 0; i < COPIES; i++) {
		n += snprintf(script + n, sizeof(script) - n,
		    " N=%s; ip netns add $N; ip -n $N link set lo up;", ns_copy[i]);
		for (int l = 0; l < 3; l++)
			n += snprintf(script + n, sizeof(script) - n,
			    " ip -n $H link add %s%d type veth peer name eth-%s netns $N;"
			    " ip -n $H link set %s%d master br-%s up;"
			    " ip -n $N addr add 10.%d.0.%d/24 dev eth-%s; ip -n $N link set eth-%s "
			    "up;",
			    link[l], i, link[l], link[l], i, link[l], net[l], i + 1, link[l],
			    link[l]);
	}
	CHECK((size_t)n < sizeof(script), "script");
	CHECK(sh("sh -c '%s'", script) == 0, "network namespace setup failed (root needed)");
}

/* Sets the hub-side ports of copy i named in `cut` (CUT_*) down or up. */
static void
net_link(int i, int cut, bool up)
{
	const char *st = up ? "up" : "down";
	if (cut & CUT_ETCD)
		CHECK(sh("ip -n %s link set e%d %s", ns_hub, i, st) == 0, "ip link");
	if (cut & CUT_REPL)
		CHECK(sh("ip -n %s link set r%d %s", ns_hub, i, st) == 0, "ip link");
	if (cut & CUT_CLIENTS)
		CHECK(sh("ip -n %s link set c%d %s", ns_hub, i, st) == 0, "ip link");
}

static void
copy_start(int i)
{
	char data[160], path[256], cns[64];
	snprintf(data, sizeof(data), "%.127s/data", C[i].dir);
	snprintf(path, sizeof(path), "%s/inboxsrv", getenv("SP_BIN") ? getenv("SP_BIN") : "bin");
	snprintf(cns, sizeof(cns), "10.78.0.%d", i + 1);
	char *argv[] = { path, "--data-dir", data, "--listen", C[i].url, "--insecure-internal",
		"--map-size", "256M",
		"--shard", "0", "--name", names[i], "--etcd", E.endpoint, "--repl-listen",
		repl_url[i], "--lease-ttl", "3", "--repl-lag-ms", "1000", "--min-copies", "2",
		"--log-level", "debug", "--metrics-addr", cns, "--metrics-port", "9100", NULL };
	char nspath[128];
	snprintf(nspath, sizeof(nspath), "/run/netns/%s", ns_copy[i]);
	proc_start(&C[i], nspath, argv);
}

static double
ms_since(uint64_t t0_us, uint64_t t_us)
{
	return ((double)t_us - (double)t0_us) / 1000.0;
}

/* Cuts primary p's links named in `cut` (CUT_*), waits for another copy to take over,
 * checks the handover, heals, waits for p to rejoin as a replica and verifies. Returns the
 * new primary. */
static int
partition(int p, int cut, const char *phase)
{
	long mark[COPIES];
	for (int i = 0; i < COPIES; i++)
		mark[i] = log_mark(i);
	long long fenced0 = metric(p, "sp_inbox_repl_fenced_total");
	CHECK(metric(p, "sp_inbox_repl_role") == 3, "%s: %s is not primary", phase, names[p]);
	uint64_t before = now_us() - 500000;
	CHECK(last_ack_us(p, before) > 0, "%s: %s acknowledged nothing in the last 0.5 s", phase,
	    names[p]);

	uint64_t t_cut = now_us();
	bool reachable = !(cut & CUT_CLIENTS);
	net_link(p, cut, false);
	if (reachable)
		prober_start(p);
	int np = -1;
	uint64_t t_new;
	while ((t_new = first_other_ack_us(p, t_cut, &np)) == UINT64_MAX) {
		if (now_us() - t_cut >= TAKEOVER_MAX_MS * 1000ULL)
			dump_copies(phase);
		CHECK(now_us() - t_cut < TAKEOVER_MAX_MS * 1000ULL,
		    "%s: no other copy acknowledged anything %d s after the cut", phase,
		    TAKEOVER_MAX_MS / 1000);
		usleep(5000);
	}
	/* Keep the partition (and the prober on the old primary) a while longer. */
	usleep(1500000);
	prober_stop_join();
	uint64_t old_last = last_ack_us(p, 0);
	uint64_t deadline = t_cut + (LEASE_TTL_S * 1000 - FENCE_MARGIN_MS) * 1000ULL;
	printf("%s: cut %s off at 0; its last acknowledgement arrived at %+.1f ms; %s's first "
	       "was sent at %+.1f ms (gap %.1f ms)\n",
	    phase, names[p], ms_since(t_cut, old_last), names[np], ms_since(t_cut, t_new),
	    ms_since(old_last, t_new));
	if (reachable)
		printf(
		    "%s: the prober's appends to %s: %llu acknowledged, %llu SP_ENOTPRIMARY, %llu "
		    "SP_EUNAVAIL, %llu unanswered\n",
		    phase, names[p], (unsigned long long)atomic_load(&prober_ok),
		    (unsigned long long)atomic_load(&prober_notprimary),
		    (unsigned long long)atomic_load(&prober_unavail),
		    (unsigned long long)atomic_load(&prober_noanswer));
	CHECK(old_last < t_new,
	    "%s: two primaries: %s's acknowledgement arrived at %+.1f ms, after %s's first "
	    "acknowledged request was sent (%+.1f ms)",
	    phase, names[p], ms_since(t_cut, old_last), names[np], ms_since(t_cut, t_new));
	/* Nothing sent to the old primary after its fencing deadline was acknowledged. */
	pthread_mutex_lock(&acks_lock);
	for (size_t k = 0; k < nacks; k++)
		CHECK(acks[k].copy != p || acks[k].t_send <= deadline + 20000,
		    "%s: %s acknowledged a request sent %.1f ms after the cut, past its fencing "
		    "deadline (%d ms)",
		    phase, names[p], ms_since(t_cut, acks[k].t_send),
		    LEASE_TTL_S * 1000 - FENCE_MARGIN_MS);
	pthread_mutex_unlock(&acks_lock);
	if (reachable)
		CHECK(atomic_load(&prober_notprimary) > 0,
		    "%s: the reachable old primary never answered SP_ENOTPRIMARY", phase);
	if (!(cut & CUT_REPL)) {
		/* Still reaching its replicas, it commits until its fencing deadline. */
		uint64_t last_send = 0;
		pthread_mutex_lock(&acks_lock);
		for (size_t k = 0; k < nacks; k++)
			if (acks[k].copy == p && acks[k].t_send > last_send)
				last_send = acks[k].t_send;
		pthread_mutex_unlock(&acks_lock);
		printf("%s: %s acknowledged requests sent up to %+.1f ms after the cut (fencing "
		       "deadline at the latest %+d ms)\n",
		    phase, names[p], ms_since(t_cut, last_send),
		    LEASE_TTL_S * 1000 - FENCE_MARGIN_MS);
		CHECK(last_send > t_cut,
		    "%s: %s stopped acknowledging at the cut, not at its "
		    "fencing deadline",
		    phase, names[p]);
	}

	if (reachable)
		printf("%s: before healing, %s's log ends at LSN %lld, its store at %lld\n", phase,
		    names[p], metric(p, "sp_inbox_repl_flushed_lsn"),
		    metric(p, "sp_inbox_repl_applied_lsn"));

	/* Heal: the old primary follows the new one (truncating what it logged alone, if
	 * anything: a batch it had already shipped is in the new primary's log, which wins). */
	uint64_t t_heal = now_us();
	net_link(p, cut, true);
	long long role = -1, sync_size = -1;
	while (!((role = metric(p, "sp_inbox_repl_role")) == 1
	    && (sync_size = metric(np, "sp_inbox_repl_sync_set_size")) == COPIES)) {
		if (now_us() - t_heal >= REJOIN_MAX_MS * 1000ULL)
			dump_copies(phase);
		CHECK(now_us() - t_heal < REJOIN_MAX_MS * 1000ULL,
		    "%s: %s did not rejoin in %d s (role %lld, %s's sync set %lld)", phase,
		    names[p], REJOIN_MAX_MS / 1000, role, names[np], sync_size);
		usleep(50000);
	}
	printf("%s: healed; %s is a replica again and %s's sync set holds %d copies after %.0f "
	       "ms\n",
	    phase, names[p], names[np], COPIES, ms_since(t_heal, now_us()));
	CHECK(log_since(p, mark[p], "no longer primary"), "%s: %s did not log its fencing", phase,
	    names[p]);
	CHECK(metric(p, "sp_inbox_repl_fenced_total") > fenced0, "%s: fenced_total did not grow",
	    phase);
	workers_stop();
	/* The rejoined copy replays everything the primary committed. */
	long long want = -1, got = -1;
	uint64_t t0 = now_us();
	while ((want = metric(np, "sp_inbox_repl_applied_lsn"))
	        != (got = metric(p, "sp_inbox_repl_applied_lsn"))
	    || want <= 0) {
		if (now_us() - t0 >= 10000000ULL)
			dump_copies(phase);
		CHECK(now_us() - t0 < 10000000ULL, "%s: %s applied %lld, primary %s at %lld", phase,
		    names[p], got, names[np], want);
		usleep(50000);
	}
	printf("%s: %s applied up to LSN %lld like %s%s\n", phase, names[p], got, names[np],
	    log_since(p, mark[p], "truncating after") ? ", after truncating the suffix it had "
	                                                "logged alone"
	                                              : "");
	check_tenures(phase);
	verify(np, phase);
	workers_start();
	return np;
}

int
main(void)
{
	CHECK(getuid() == 0, "needs root (network namespaces)");
	setvbuf(stdout, NULL, _IOLBF, 0); /* progress lines in order with CHECK failures */
	CHECK(sodium_init() >= 0, "sodium");
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(root, sizeof(root), "%s/inbox_part.XXXXXX", tmp);
	CHECK(mkdtemp(root), "mkdtemp");
	atexit(cleanup_all);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	signal(SIGPIPE, SIG_IGN);
	net_setup();

	/* This process (and every thread it makes, NNG's included) lives in the hub. */
	char nspath[128];
	snprintf(nspath, sizeof(nspath), "/run/netns/%s", ns_hub);
	int fd = open(nspath, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0 && setns(fd, CLONE_NEWNET) == 0, "setns %s: %s", nspath, strerror(errno));
	close(fd);

	CHECK(etcd_proc_start_on(&E, ETCD_IP) == 0, "etcd");
	for (int i = 0; i < COPIES; i++) {
		snprintf(names[i], sizeof(names[i]), "inbox-0%c", 'a' + i);
		CHECK((size_t)snprintf(C[i].dir, sizeof(C[i].dir), "%.60s/%.15s", root, names[i])
		        < sizeof(C[i].dir),
		    "path");
		CHECK(mkdir(C[i].dir, 0700) == 0, "mkdir");
		CHECK((size_t)snprintf(C[i].log, sizeof(C[i].log), "%.60s/%.15s/inboxsrv.log", root, names[i])
		        < sizeof(C[i].log),
		    "path");
		snprintf(C[i].url, sizeof(C[i].url), "tcp://10.78.0.%d:7401", i + 1);
		snprintf(repl_url[i], sizeof(repl_url[i]), "tcp://10.77.0.%d:7501", i + 1);
		snprintf(metrics_url[i], sizeof(metrics_url[i]), "http://10.78.0.%d:9100/metrics",
		    i + 1);
		copy_start(i);
	}
	int p = find_primary(20000);
	CHECK(p >= 0, "no copy became a writable primary in 20 s");
	printf("primary: %s\n", names[p]);
	/* Wait for the full sync set, so either replica may take over. */
	uint64_t t0 = now_us();
	while (metric(p, "sp_inbox_repl_sync_set_size") != COPIES) {
		CHECK(now_us() - t0 < 15000000ULL, "the sync set did not reach %d copies", COPIES);
		usleep(50000);
	}

	workers_start();
	usleep(1500000);
	p = partition(p, CUT_ETCD | CUT_REPL | CUT_CLIENTS, "partition 1 (primary isolated)");
	usleep(1000000);
	p = partition(p, CUT_ETCD | CUT_REPL, "partition 2 (primary cut from etcd and replicas)");
	usleep(1000000);
	p = partition(p, CUT_ETCD, "partition 3 (primary cut from etcd only)");
	usleep(500000);
	workers_stop();
	check_tenures("whole run");
	verify(p, "end");
	/* Every socket is closed: let NNG finish its reaping so LSan sees no leak. */
	nng_fini();
	printf("ok\n");
	return 0;
}
