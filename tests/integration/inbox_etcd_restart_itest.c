/*
 * etcd failures under a replicated inbox shard: a real etcd and three real inboxsrv copies
 * of shard 0 with the default lease (5 s; fencing margin 1 s, so a primary stops serving
 * at most 4 s after its last renewal), writers appending to whichever copy acknowledges,
 * every acknowledgement recorded with its copy and the test's monotonic send/answer times.
 *   1. etcd is SIGKILLed and started again at once on the same data dir and ports (it
 *      serves again after ~0.5-1 s; tests/lib/etcd_proc.c gives the one member a 250 ms
 *      election timeout). The data path does not need etcd while the primary's lease
 *      holds, and etcd keeps the lease across its restart, so the shard keeps its leader:
 *      every append sent from 2 s before the kill to one lease after etcd is back is
 *      acknowledged by the same copy, its epoch does not change, it is never fenced, and
 *      appends go on while etcd is down (the number and the longest pause without an
 *      acknowledgement are printed). That holds for an outage shorter than TTL - margin -
 *      keepalive interval - a retry (2.5 s); should etcd take longer to come back, the
 *      run says so and checks only what holds for any outage (below).
 *   2. etcd SIGSTOPped for 4.5 s: past the fencing deadline, within the lease;
 *   3. etcd SIGSTOPped for 8 s, longer than the lease (it must expire: a new election);
 *   4. etcd SIGKILLed, down for 4.5 s, then restarted on its data.
 *      In 2-4 the primary acknowledges no request sent after its fencing deadline (the
 *      outage's start + TTL - margin), and once etcd is back a primary serves again.
 * After each phase every acknowledged append must be on the current primary exactly once
 * with its seq and content, and over the whole run no two copies' acknowledging windows
 * overlap. Takes ~45 s.
 */
#include <sodium.h>
#include <sys/stat.h>

#include "etcd_proc.h"
#include "tests/integration/inbox_load_util.h"

#define LEASE_TTL_MS 5000 /* inboxsrv's default --lease-ttl */
#define FENCE_MARGIN_MS 1000 /* repl_ha's default fencing margin */
#define KEEPALIVE_MS 1000 /* repl_ha's default keepalive interval, TTL/5 */
/* The longest etcd outage a primary is sure to ride out whatever its keepalive's phase:
 * less one retry (200 ms) and the renewal's own round trip. */
#define RIDE_THROUGH_MS (LEASE_TTL_MS - FENCE_MARGIN_MS - KEEPALIVE_MS - 500)
#define STALL_MS 8000
#define RESUME_MAX_MS 15000

static etcd_proc E;
static char root[64];
static char repl_url[COPIES][64];

static void
cleanup_all(void)
{
	load_stop_all(&E);
	load_remove_dir(root);
}

static void
copy_start(int i)
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
		repl_url[i], "--repl-lag-ms", "1000", "--min-copies", "2", "--log-level", "debug",
		"--metrics-port", mport, NULL };
	proc_start(&C[i], NULL, argv);
}

static double
ms_since(uint64_t t0_us, uint64_t t_us)
{
	return ((double)t_us - (double)t0_us) / 1000.0;
}

/* Waits until an acknowledgement by any copy of a request sent at or after `from`
 * arrives; returns the copy. */
static int
wait_ack_after(uint64_t from, int max_ms, const char *phase)
{
	for (;;) {
		pthread_mutex_lock(&acks_lock);
		int who = -1;
		for (size_t k = nacks; k-- > 0 && who < 0;)
			if (acks[k].t_send >= from)
				who = acks[k].copy;
		pthread_mutex_unlock(&acks_lock);
		if (who >= 0)
			return who;
		if (now_us() - from >= (uint64_t)max_ms * 1000)
			dump_copies(phase);
		CHECK(now_us() - from < (uint64_t)max_ms * 1000,
		    "%s: nothing acknowledged %d ms after %.0f", phase, max_ms, (double)from);
		usleep(5000);
	}
}

/* etcd SIGKILLed and restarted at once: the primary keeps its lease. Returns it. */
static int
etcd_restart(int p)
{
	const char *phase = "etcd restart";
	long long epoch0 = metric(p, "sp_inbox_repl_epoch");
	long long fenced0 = metric(p, "sp_inbox_repl_fenced_total");
	long mark = log_mark(p);
	CHECK(epoch0 > 0 && metric(p, "sp_inbox_repl_role") == 3, "%s: %s is not primary", phase,
	    names[p]);
	uint64_t t0 = now_us();
	long down_ms = 0;
	CHECK(etcd_proc_restart(&E, &down_ms) == 0, "%s: etcd did not come back", phase);
	uint64_t t_back = now_us();
	printf("%s: etcd SIGKILLed and serving again after %ld ms\n", phase, down_ms);
	/* One whole lease after etcd is back: a primary that had lost its lease would have
	 * fenced itself (TTL - margin after its last renewal) by then. */
	usleep(LEASE_TTL_MS * 1000 + 500000);
	uint64_t t_end = now_us();
	uint64_t during = 0;
	pthread_mutex_lock(&acks_lock);
	for (size_t k = 0; k < nacks; k++)
		during += acks[k].t_send >= t0 && acks[k].t_recv <= t_back;
	pthread_mutex_unlock(&acks_lock);
	long long epoch1 = metric(p, "sp_inbox_repl_epoch");
	long long fenced1 = metric(p, "sp_inbox_repl_fenced_total");
	printf("%s: %llu appends acknowledged while etcd was down; the longest pause from the "
	       "kill to %.1f s after it %.1f ms; %s's epoch %lld -> %lld\n",
	    phase, (unsigned long long)during, ms_since(t0, t_end) / 1000,
	    (double)longest_ack_gap_us(t0, t_end) / 1000, names[p], epoch0, epoch1);
	if (down_ms <= RIDE_THROUGH_MS) {
		size_t others = acks_by_others(p, t0 > 2000000 ? t0 - 2000000 : 0);
		CHECK(others == 0, "%s: %zu appends were acknowledged by another copy than %s",
		    phase, others, names[p]);
		CHECK(last_ack_us(p, t_end - 500000) > 0,
		    "%s: %s acknowledged nothing in the last 0.5 s", phase, names[p]);
		CHECK(epoch1 == epoch0, "%s: the epoch changed (%lld -> %lld): a new election",
		    phase, epoch0, epoch1);
		CHECK(fenced1 == fenced0 && !log_since(p, mark, "no longer primary"),
		    "%s: %s was fenced", phase, names[p]);
		for (int i = 0; i < COPIES; i++)
			CHECK(i == p || metric(i, "sp_inbox_repl_role") == 1,
			    "%s: %s is not a replica", phase, names[i]);
	} else {
		/* Past the ride-through a fence and a new election are right; what must hold
		 * is what holds for any outage: appends resume, no two acknowledging windows
		 * overlap, every acknowledged append is on the primary once. */
		printf("%s: NOTE etcd took %ld ms to come back, longer than the %d ms a primary "
		       "is sure to ride out: that the shard kept its leader was not checked "
		       "(fenced_total %lld -> %lld)\n",
		    phase, down_ms, RIDE_THROUGH_MS, fenced0, fenced1);
		p = wait_ack_after(t_end, RESUME_MAX_MS, phase);
	}
	workers_stop();
	check_tenures(phase);
	verify(p, phase);
	workers_start();
	return p;
}

/* etcd unavailable for `ms` (SIGSTOP then SIGCONT, or SIGKILL then a restart on its data),
 * longer than the primary's fencing deadline: it acknowledges no request sent after the
 * deadline; once etcd is back a primary serves again (a new election when `expire`: the
 * lease must have expired). Returns the primary after it. */
static int
etcd_outage(int p, bool kill_it, int ms, bool expire, const char *phase)
{
	long long epoch0 = metric(p, "sp_inbox_repl_epoch");
	long long fenced0 = metric(p, "sp_inbox_repl_fenced_total");
	usleep(1000000);
	CHECK(last_ack_us(p, now_us() - 500000) > 0,
	    "%s: %s acknowledged nothing in the last 0.5 s", phase, names[p]);
	uint64_t t_stop = now_us();
	etcd_proc_signal(&E, kill_it ? SIGKILL : SIGSTOP);
	usleep((useconds_t)ms * 1000);
	uint64_t last = last_ack_us(-1, 0),
	         deadline = t_stop + (LEASE_TTL_MS - FENCE_MARGIN_MS) * 1000ULL;
	uint64_t last_send = 0;
	pthread_mutex_lock(&acks_lock);
	for (size_t k = 0; k < nacks; k++)
		if (acks[k].t_send > last_send)
			last_send = acks[k].t_send;
	pthread_mutex_unlock(&acks_lock);
	long down_ms = 0;
	if (kill_it)
		CHECK(etcd_proc_restart(&E, &down_ms) == 0, "%s: etcd did not come back", phase);
	else
		etcd_proc_signal(&E, SIGCONT);
	uint64_t t_back = now_us();
	printf("%s: etcd %s for %.0f ms; the last acknowledgement arrived %.1f ms into it (its "
	       "request sent at %.1f ms; fencing deadline at the latest %d ms)\n",
	    phase, kill_it ? "SIGKILLed and restarted" : "stopped", ms_since(t_stop, t_back),
	    ms_since(t_stop, last), ms_since(t_stop, last_send), LEASE_TTL_MS - FENCE_MARGIN_MS);
	/* 20 ms for the difference between CLOCK_BOOTTIME (repl_ha) and CLOCK_MONOTONIC. */
	CHECK(last_send <= deadline + 20000,
	    "%s: a request sent %.1f ms into the outage was acknowledged, past the fencing "
	    "deadline",
	    phase, ms_since(t_stop, last_send));
	CHECK(last > t_stop,
	    "%s: nothing was acknowledged after etcd went away (expected until "
	    "the fencing deadline)",
	    phase);
	int np = wait_ack_after(t_back, RESUME_MAX_MS, phase);
	uint64_t t_first = first_other_ack_us(-1, t_back, NULL);
	printf("%s: appends acknowledged again by %s, %.1f ms after etcd was back\n", phase,
	    names[np], ms_since(t_back, t_first));
	usleep(1500000);
	long long fenced = metric(p, "sp_inbox_repl_fenced_total");
	long long epoch1 = metric(np, "sp_inbox_repl_epoch");
	printf("%s: %s's fenced_total %lld -> %lld; %s primary of epoch %lld (was %lld)\n", phase,
	    names[p], fenced0, fenced, names[np], epoch1, epoch0);
	if (expire) {
		CHECK(fenced > fenced0, "%s: %s's fenced_total did not grow", phase, names[p]);
		CHECK(epoch1 > epoch0, "%s: no new election after the lease expired", phase);
	}
	workers_stop();
	check_tenures(phase);
	verify(np, phase);
	workers_start();
	return np;
}

int
main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* progress lines in order with CHECK failures */
	CHECK(sodium_init() >= 0, "sodium");
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(root, sizeof(root), "%s/inbox_etcdr.XXXXXX", tmp);
	CHECK(mkdtemp(root), "mkdtemp");
	atexit(cleanup_all);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	signal(SIGPIPE, SIG_IGN);
	CHECK(etcd_proc_start(&E) == 0, "etcd");
	for (int i = 0; i < COPIES; i++) {
		snprintf(names[i], sizeof(names[i]), "inbox-0%c", 'a' + i);
		CHECK((size_t)snprintf(C[i].dir, sizeof(C[i].dir), "%.60s/%.15s", root, names[i])
		        < sizeof(C[i].dir),
		    "path");
		CHECK(mkdir(C[i].dir, 0700) == 0, "mkdir");
		CHECK((size_t)snprintf(C[i].log, sizeof(C[i].log), "%.60s/%.15s/inboxsrv.log", root, names[i])
		        < sizeof(C[i].log),
		    "path");
		snprintf(C[i].url, sizeof(C[i].url), "tcp://127.0.0.1:%d", free_port());
		snprintf(repl_url[i], sizeof(repl_url[i]), "tcp://127.0.0.1:%d", free_port());
		copy_start(i);
	}
	int p = find_primary(20000);
	CHECK(p >= 0, "no copy became a writable primary in 20 s");
	printf("primary: %s\n", names[p]);
	uint64_t t0 = now_us();
	while (metric(p, "sp_inbox_repl_sync_set_size") != COPIES) {
		CHECK(now_us() - t0 < 15000000ULL, "the sync set did not reach %d copies", COPIES);
		usleep(50000);
	}

	workers_start();
	usleep(2000000);
	p = etcd_restart(p);
	/* Past the fencing deadline (4 s), within the lease (5 s) as etcd counts it. */
	p = etcd_outage(p, false, 4500, false, "etcd stall within the lease");
	/* Longer than the lease: it expires. */
	p = etcd_outage(p, false, STALL_MS, true, "etcd stall past the lease");
	/* Down past the fencing deadline: etcd extends leases when it restarts. */
	p = etcd_outage(p, true, 4500, false, "etcd down past the fencing deadline");
	workers_stop();
	check_tenures("whole run");
	verify(p, "end");
	/* Every socket is closed: let NNG finish its reaping so LSan sees no leak. */
	nng_fini();
	printf("ok\n");
	return 0;
}
