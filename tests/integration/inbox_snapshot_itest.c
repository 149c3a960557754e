/*
 * Log retention and snapshots of a replicated inbox shard (issue 12, "Catch-up and
 * rebuild"): a real etcd (https only, client certificates required: the copies present
 * theirs) and three real inboxsrv copies of shard 0 whose replication endpoints are mutual
 * TLS (tls+tcp://, certificates from scripts/certs.sh; a member of another role is
 * refused), with 64 KiB log
 * segments, no retention floor (--repl-retain 0) and snapshots sent at 256 KiB/s, writers
 * appending to whichever copy acknowledges all along. In a row:
 *   1. the log is trimmed on every copy (its first LSN moves past 1) while writes go on;
 *   2. a replica stopped until the primary trimmed past it: after SIGCONT it finds its
 *      place gone, restarts itself (same pid) and comes back from a snapshot;
 *   3. a copy with its data dir deleted is SIGKILLed in the middle of its snapshot
 *      download and started again: it downloads afresh, installs, joins the sync set;
 *   4. the same with the primary SIGKILLed mid-transfer: the copy downloads from the new
 *      primary;
 *   5. the two copies that were not rebuilt in 4 are killed and one comes back empty:
 *      the rebuilt one takes over (the empty one copies from it) and holds every
 *      acknowledged append.
 * After each phase every acknowledged append is on the primary exactly once, with its
 * seq and content. Takes ~60 s.
 */
#include <sodium.h>
#include <sys/stat.h>

#include "etcd_proc.h"
/* The snapshots are sent at RATE: the load is paced (at most ~300 appends a second from
 * the three writers) so that the store, hence every download, stays the same size however
 * fast the copies commit. */
#define LOAD_PACE_US 10000
#include "tests/integration/inbox_load_util.h"

#define SEGMENT "64K"
#define RATE "256K"

static etcd_proc E;
static char root[64];
static char repl_url[COPIES][64];
static char certs[96], ca[128], cert[COPIES][128], key[COPIES][128];

static void
cleanup_all(void)
{
	load_stop_all(&E);
	load_remove_dir(root);
}

/* Starts copy i; waits until it serves unless !wait. Returns its log mark. */
static long
copy_spawn(int i, bool wait)
{
	char data[160], path[256];
	snprintf(data, sizeof(data), "%.127s/data", C[i].dir);
	snprintf(path, sizeof(path), "%s/inboxsrv", getenv("SP_BIN") ? getenv("SP_BIN") : "bin");
	char mport[16];
	snprintf(mport, sizeof(mport), "%d", free_port());
	snprintf(metrics_url[i], sizeof(metrics_url[i]), "http://127.0.0.1:%s/metrics", mport);
	char *argv[] = { path, "--data-dir", data, "--listen", C[i].url, "--insecure-internal",
		"--map-size", "256M",
		"--shard", "0", "--name", names[i], "--etcd", E.endpoint, "--repl-listen",
		repl_url[i], "--repl-lag-ms", "1000", "--min-copies", "2", "--lease-ttl", "3",
		"--repl-segment", SEGMENT, "--repl-retain", "0", "--snapshot-rate", RATE,
		"--etcd-ca", E.ca, "--etcd-cert", E.client_cert, "--etcd-key", E.client_key,
		"--internal-cert", cert[i], "--internal-key", key[i], "--internal-ca", ca,
		"--log-level", "debug", "--metrics-port", mport, NULL };
	long mark = proc_spawn(&C[i], NULL, argv);
	if (wait)
		proc_wait_up(&C[i], mark, names[i], 30000);
	return mark;
}

static void
wait_log(int i, long mark, const char *text, int max_ms)
{
	uint64_t t0 = now_us();
	while (!log_since(i, mark, text)) {
		if (now_us() - t0 >= (uint64_t)max_ms * 1000)
			dump_copies(text);
		CHECK(now_us() - t0 < (uint64_t)max_ms * 1000, "%s: no \"%s\" in its log in %d ms",
		    names[i], text, max_ms);
		usleep(20000);
	}
}

static void
wait_metric(int i, const char *name, long long at_least, int max_ms)
{
	uint64_t t0 = now_us();
	while (metric(i, name) < at_least) {
		if (now_us() - t0 >= (uint64_t)max_ms * 1000)
			dump_copies(name);
		CHECK(now_us() - t0 < (uint64_t)max_ms * 1000, "%s: %s below %lld after %d ms",
		    names[i], name, at_least, max_ms);
		usleep(50000);
	}
}

static void
rm_data(int i)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s/data'", C[i].dir);
	CHECK(system(cmd) == 0, "rm");
}

static bool
partial_exists(int i)
{
	char p[256];
	snprintf(p, sizeof(p), "%.200s/data/snapshot.partial", C[i].dir);
	return access(p, F_OK) == 0;
}

/* A snapshot request with an id never served, over the replication endpoint's TLS with
 * the certificate `name` of the CA in `dir`: the answer's code, or the transport error. */
static int
snap_probe(int p, const char *dir, const char *name)
{
	char c[160], k[160];
	snprintf(c, sizeof(c), "%s/%s.pem", dir, name);
	snprintf(k, sizeof(k), "%s/%s.key", dir, name);
	sp_nng_tls tls = { c, k, ca, NULL };
	CHECK(sp_nng_tls_init(&tls) == SP_OK, "tls init");
	nng_socket s;
	CHECK(sp_nng_req_open(&s, repl_url[p], 3000, 0) == SP_OK, "dial");
	sp_frame f, rep;
	nng_msg *m;
	uint8_t id[16] = { 5 };
	sp_frame_init(&f, SP_T_REPL_SNAP_GET, 1, true);
	sp_frame_set_str(&f, SP_F_NAME, name);
	sp_frame_set_bin(&f, SP_F_SNAP_ID, id, sizeof(id));
	sp_frame_set_u64(&f, SP_F_OFFSET, 0);
	int rc = call(s, &f, &rep, &m);
	call_done(&rep, m);
	nng_close(s);
	sp_nng_tls_fini();
	return rc;
}

/* Verifies on the current primary without stopping the load for long. */
static int
check_all(const char *phase)
{
	workers_stop();
	int p = find_primary(30000);
	CHECK(p >= 0, "%s: no primary", phase);
	verify(p, phase);
	workers_start();
	return p;
}

/* Copy `i` (data dir deleted, not running) downloads a snapshot; `victim` (itself or the
 * primary) is SIGKILLed in the middle of the transfer. */
static void
rebuild_cut(int i, int victim, const char *phase)
{
	rm_data(i);
	long mark = copy_spawn(i, false);
	wait_log(i, mark, "snapshot: downloading from", 20000);
	usleep(700000); /* ~180 KiB of a snapshot of several hundred KiB */
	CHECK(partial_exists(i) && !log_since(i, mark, "snapshot: installed"),
	    "%s: the transfer was not under way", phase);
	shard_reap(&C[victim], SIGKILL);
	printf("%s: SIGKILLed %s in the middle of %s's snapshot download\n", phase, names[victim],
	    names[i]);
	if (victim == i) {
		mark = copy_spawn(i, true);
	} else {
		proc_wait_up(&C[i], mark, names[i], 45000);
		CHECK(log_since(i, mark, "starting again"), "%s: %s did not start its download again",
		    phase, names[i]);
	}
	CHECK(log_since(i, mark, "snapshot: installed"), "%s: %s serves without a snapshot",
	    phase, names[i]);
	CHECK(!partial_exists(i), "%s: a partial download was left behind", phase);
	printf("%s: %s downloaded its snapshot again and installed it\n", phase, names[i]);
	if (victim != i)
		copy_spawn(victim, true); /* the old primary, back on its own data */
}

int
main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	CHECK(sodium_init() >= 0, "sodium");
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(root, sizeof(root), "%s/inbox_snap.XXXXXX", tmp);
	CHECK(mkdtemp(root), "mkdtemp");
	atexit(cleanup_all);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	signal(SIGPIPE, SIG_IGN);
	CHECK(etcd_proc_start_tls(&E) == 0, "etcd");
	/* etcd serves only clients with a certificate of its CA: the copies present one. */
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "curl -sf -m 2 --cacert %s %s/v3/kv/range -d '{\"key\":\"AA==\"}' "
		"> /dev/null 2>&1", E.ca, E.endpoint);
	CHECK(system(cmd) != 0, "etcd answered a client without a certificate");
	/* scripts/certs.sh: a cluster root, the inbox role CA for the copies (and the test's
	 * probe), the connsrv role CA for a member of another role. The copies trust the
	 * inbox role CA alone. */
	snprintf(certs, sizeof(certs), "%.60s/certs", root);
	const char *top = getenv("SP_ROOT") ? getenv("SP_ROOT") : ".";
	char cmd2[1024];
	snprintf(cmd2, sizeof(cmd2),
	    "set -e; t='%.300s/scripts/certs.sh'; d='%s'; $t $d root; $t $d role inbox; "
	    "$t $d role connsrv; for n in inbox-0a inbox-0b inbox-0c probe; do $t $d member inbox $n; "
	    "done; $t $d member connsrv stranger",
	    top, certs);
	CHECK(system(cmd2) == 0, "scripts/certs.sh");
	snprintf(ca, sizeof(ca), "%s/inbox-ca.pem", certs);
	for (int i = 0; i < COPIES; i++) {
		snprintf(names[i], sizeof(names[i]), "inbox-0%c", 'a' + i);
		CHECK((size_t)snprintf(C[i].dir, sizeof(C[i].dir), "%.60s/%.15s", root, names[i])
		        < sizeof(C[i].dir),
		    "path");
		CHECK(mkdir(C[i].dir, 0700) == 0, "mkdir");
		CHECK((size_t)snprintf(C[i].log, sizeof(C[i].log), "%.60s/%.15s/inboxsrv.log", root,
		          names[i])
		        < sizeof(C[i].log),
		    "path");
		snprintf(C[i].url, sizeof(C[i].url), "tcp://127.0.0.1:%d", free_port());
		snprintf(repl_url[i], sizeof(repl_url[i]), "tls+tcp://127.0.0.1:%d", free_port());
		snprintf(cert[i], sizeof(cert[i]), "%s/%s.pem", certs, names[i]);
		snprintf(key[i], sizeof(key[i]), "%s/%s.key", certs, names[i]);
		copy_spawn(i, true);
	}
	int p = find_primary(20000);
	CHECK(p >= 0, "no copy became a writable primary in 20 s");
	wait_metric(p, "sp_inbox_repl_sync_set_size", COPIES, 15000);
	printf("primary: %s\n", names[p]);
	/* The replication endpoint is mutual TLS for the inbox role: a certificate of the same
	 * cluster root but another role's CA gets no answer; one of the inbox role's is served. */
	int rc = snap_probe(p, certs, "stranger");
	CHECK(rc == SP_ETIMEDOUT || rc == SP_ECLOSED || rc == SP_ENNG,
	    "a stranger's certificate was answered: %s", sp_strerror(rc));
	rc = snap_probe(p, certs, "probe");
	CHECK(rc == SP_ESTATE, "the cluster's certificate: %s", sp_strerror(rc));
	printf("mutual TLS: a connsrv-role certificate refused, an inbox-role one served\n");

	/* 1. Retention on every copy while writes go on. */
	workers_start();
	for (int i = 0; i < COPIES; i++)
		wait_metric(i, "sp_inbox_repl_log_first_lsn", 2, 30000);
	printf("retention: every copy trimmed its log (first LSNs %lld, %lld, %lld)\n",
	    metric(0, "sp_inbox_repl_log_first_lsn"), metric(1, "sp_inbox_repl_log_first_lsn"),
	    metric(2, "sp_inbox_repl_log_first_lsn"));
	p = check_all("retention");

	/* 2. A replica left behind the primary's log restarts itself from a snapshot. */
	int r = (p + 1) % COPIES;
	long long applied = metric(r, "sp_inbox_repl_applied_lsn");
	CHECK(applied > 0, "no applied LSN from %s", names[r]);
	long mark = log_mark(r);
	pid_t pid = C[r].pid;
	kill(pid, SIGSTOP);
	wait_metric(p, "sp_inbox_repl_log_first_lsn", applied + 2, 30000);
	kill(pid, SIGCONT);
	wait_log(r, mark, "restarting to install a snapshot", 15000);
	wait_log(r, mark, "snapshot: installed", 30000);
	wait_log(r, mark, "listening on", 15000);
	CHECK(C[r].pid == pid && kill(pid, 0) == 0, "%s is not the same process", names[r]);
	wait_metric(p, "sp_inbox_repl_sync_set_size", COPIES, 20000);
	printf("behind the log: %s (pid %d, applied %lld; the primary's log now starts at %lld) "
	       "restarted itself from a snapshot and rejoined the sync set\n",
	    names[r], (int)pid, applied, metric(p, "sp_inbox_repl_log_first_lsn"));
	p = check_all("behind the log");

	/* 3. The downloading copy killed mid-transfer. */
	int y = (p + 2) % COPIES;
	shard_reap(&C[y], SIGKILL);
	rebuild_cut(y, y, "receiver killed");
	wait_metric(p, "sp_inbox_repl_sync_set_size", COPIES, 20000);
	p = check_all("receiver killed");

	/* 4. The primary killed mid-transfer. */
	int z = (p + 1) % COPIES;
	shard_reap(&C[z], SIGKILL);
	rebuild_cut(z, p, "primary killed");
	p = find_primary(30000);
	CHECK(p >= 0, "no primary after the primary was killed mid-transfer");
	wait_metric(p, "sp_inbox_repl_sync_set_size", COPIES, 30000);
	p = check_all("primary killed");
	usleep(1000000);
	workers_stop();

	/* 5. The copy rebuilt in 4 is the only one left with data (a third comes back empty,
	 * so that a write has its two copies): it takes over and holds everything. */
	wait_metric(p, "sp_inbox_repl_sync_set_size", COPIES, 20000);
	int other = -1;
	for (int i = 0; i < COPIES; i++)
		if (i != z) {
			shard_reap(&C[i], SIGKILL);
			other = i;
		}
	rm_data(other);
	copy_spawn(other, true);
	int np = find_primary(30000);
	CHECK(np == z, "the rebuilt copy %s did not take over (primary: %d)", names[z], np);
	verify(z, "rebuilt copy as the last one standing");
	nng_fini();
	printf("ok\n");
	return 0;
}
