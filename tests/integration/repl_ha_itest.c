/*
 * Failover and fencing of the HA loop, black box: three child processes each run the loop
 * for one group against one real etcd (default settings: TTL 5 s, keepalive every 1.67 s,
 * margin 1 s). Each checks repl_ha_may_serve every 10 ms, as a data path would before each
 * reply, and writes its serving intervals ("start E T" and "end E T", CLOCK_BOOTTIME ms)
 * to a file of its own; while primary it keeps the sync set equal to the live copies.
 * The parent SIGKILLs the primary, then SIGSTOPs the new primary for longer than the TTL
 * and SIGCONTs it; last it SIGSTOPs etcd itself for longer than the fencing deadline.
 * Checks: a new primary under 10 s after the kill; no two processes
 * ever serving at overlapping times (the stopped one included); a primary that cannot
 * reach etcd stops serving on its own; every epoch larger than
 * the one before. Every process here is stopped by its PID; every wait is bounded.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "etcd_proc.h"
#include "repl/ha.h"
#include "sp_error.h"

#define COPIES 3
#define STOP_MS 8000      /* SIGSTOP longer than the 5 s TTL */
#define FAILOVER_MAX 10000
#define ESTALL_MS 6000     /* etcd SIGSTOPped: longer than TTL - margin */
#define CHILD_MAX_MS 90000 /* a child left behind ends itself */
#define MAX_IVALS 64

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__,   \
				#cond);                                                    \
			fprintf(stderr, __VA_ARGS__);                                      \
			fprintf(stderr, "\n");                                             \
			cleanup();                                                         \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

static etcd_proc etcd;
static pid_t pids[COPIES];
static int stopped = -1; /* the SIGSTOPped copy: its open interval is closed later */
static char dir[64];

static void
cleanup(void)
{
	for (int i = 0; i < COPIES; i++) {
		if (pids[i] > 0) {
			kill(pids[i], SIGCONT);
			kill(pids[i], SIGKILL);
			waitpid(pids[i], NULL, 0);
			pids[i] = 0;
		}
	}
	etcd_proc_stop(&etcd);
	if (dir[0]) {
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
	}
}

static void
sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* ---- the child: one copy ---- */

static volatile sig_atomic_t terminated;
static _Atomic int64_t followed_epoch;

static void
on_term(int sig)
{
	(void)sig;
	terminated = 1;
}

static void
cb_status(void *arg, repl_ha_status *out)
{
	repl_ha *ha = arg;
	int64_t e = repl_ha_epoch(ha);
	if (atomic_load(&followed_epoch) > e)
		e = atomic_load(&followed_epoch);
	*out = (repl_ha_status){.epoch = e, .last = {e, 0}};
}

static void
cb_primary(void *arg, int64_t epoch, const repl_ha_view *v)
{
	(void)arg;
	(void)v;
	atomic_store(&followed_epoch, epoch);
}

static void
cb_following(void *arg, const repl_ha_leader *l)
{
	(void)arg;
	atomic_store(&followed_epoch, l->epoch);
}

static void
cb_fenced(void *arg, int64_t epoch)
{
	(void)arg;
	(void)epoch;
}

static void
note(int fd, const char *what, int64_t epoch, int64_t t)
{
	char line[64];
	int n = snprintf(line, sizeof(line), "%s %" PRId64 " %" PRId64 "\n", what, epoch, t);
	if (write(fd, line, (size_t)n) != n)
		_exit(3);
}

static bool
same_set(const repl_ha_sync *s, const repl_ha_id *m, size_t n)
{
	if (!s->present || s->n != n)
		return false;
	for (size_t i = 0; i < n; i++) {
		bool found = false;
		for (size_t j = 0; j < s->n && !found; j++)
			found = strcmp(s->members[j].name, m[i].name) == 0 &&
				s->members[j].inc_len == m[i].inc_len &&
				memcmp(s->members[j].inc, m[i].inc, m[i].inc_len) == 0;
		if (!found)
			return false;
	}
	return true;
}

/* The primary keeps the sync set equal to itself and every live copy. */
static void
tend_sync_set(repl_ha *ha)
{
	repl_ha_view v;
	if (repl_ha_loop_view(ha, &v) != SP_OK)
		return;
	repl_ha_id m[REPL_HA_MAX_COPIES];
	size_t n = 0;
	m[n++] = *repl_ha_self(ha);
	for (size_t i = 0; i < v.ncopies && n < REPL_HA_MAX_COPIES; i++)
		if (strcmp(v.copies[i].id.name, repl_ha_self(ha)->name) != 0)
			m[n++] = v.copies[i].id;
	if (!same_set(&v.sync, m, n))
		repl_ha_sync_set(ha, &v, m, n);
}

static int
child(int idx, const char *path)
{
	signal(SIGTERM, on_term);
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
	if (fd < 0)
		return 2;
	char name[16], inc[32];
	snprintf(name, sizeof(name), "copy%d", idx);
	snprintf(inc, sizeof(inc), "inc-%d-%d", idx, (int)getpid());
	repl_ha_cfg cfg = {
	    .etcd = {.endpoints = etcd.endpoint},
	    .cluster = "itest",
	    .group = "inbox-0",
	    .name = name,
	    .inc = (const uint8_t *)inc,
	    .inc_len = strlen(inc),
	    .url = "tls+tcp://127.0.0.1:9",
	};
	repl_ha *ha;
	if (repl_ha_new(&cfg, &ha) != SP_OK)
		return 2;
	repl_ha_callbacks cbs = {cb_status, cb_primary, cb_following, cb_fenced, ha};
	if (repl_ha_loop_start(ha, &cbs) != SP_OK)
		return 2;
	bool serving = false;
	int64_t epoch = 0, last_true = 0, last_tend = 0, t0 = repl_ha_now_ms();
	while (!terminated && repl_ha_now_ms() - t0 < CHILD_MAX_MS) {
		int64_t now = repl_ha_now_ms();
		bool s = repl_ha_may_serve(ha, now);
		int64_t e = s ? repl_ha_epoch(ha) : 0;
		if (serving && (!s || e != epoch)) {
			note(fd, "end", epoch, last_true);
			serving = false;
		}
		if (s && !serving) {
			note(fd, "start", e, now);
			serving = true;
			epoch = e;
		}
		if (s) {
			last_true = now;
			if (now - last_tend >= 250) {
				tend_sync_set(ha);
				last_tend = now;
			}
		}
		sleep_ms(10);
	}
	if (serving)
		note(fd, "end", epoch, last_true);
	repl_ha_loop_stop(ha);
	repl_ha_resign(ha);
	repl_ha_free(ha);
	close(fd);
	return 0;
}

/* ---- the parent ---- */

typedef struct ival {
	int who;
	int64_t epoch, from, to; /* to: -1 while open */
} ival;

static size_t
read_ivals(ival *out, size_t cap)
{
	size_t n = 0;
	for (int i = 0; i < COPIES; i++) {
		char path[96], what[8];
		snprintf(path, sizeof(path), "%s/copy%d", dir, i);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		long long e, t;
		while (fscanf(f, "%7s %lld %lld", what, &e, &t) == 3) {
			if (strcmp(what, "start") == 0 && n < cap) {
				out[n++] = (ival){i, e, t, -1};
			} else if (strcmp(what, "end") == 0 && n > 0 && out[n - 1].who == i &&
				   out[n - 1].to < 0) {
				CHECK(out[n - 1].epoch == e, "end of epoch %lld in an interval of %lld", e,
				      (long long)out[n - 1].epoch);
				out[n - 1].to = t;
			}
		}
		fclose(f);
	}
	return n;
}

/* The process serving now (an open interval), or -1; more than one is a failure. */
static int
serving_now(ival *iv, size_t *n)
{
	*n = read_ivals(iv, MAX_IVALS);
	int who = -1;
	for (size_t i = 0; i < *n; i++) {
		if (iv[i].to < 0 && pids[iv[i].who] > 0 && iv[i].who != stopped) {
			CHECK(who == -1 || who == iv[i].who, "copy%d and copy%d both serving", who,
			      iv[i].who);
			who = iv[i].who;
		}
	}
	return who;
}

/* Waits (bounded) for a primary other than `not`, started after `after`. */
static int
wait_primary(int not, int64_t after, int64_t max_ms, int64_t *started)
{
	ival iv[MAX_IVALS];
	size_t n;
	int64_t t0 = repl_ha_now_ms();
	while (repl_ha_now_ms() - t0 < max_ms) {
		int who = serving_now(iv, &n);
		for (size_t i = 0; who >= 0 && who != not && i < n; i++)
			if (iv[i].who == who && iv[i].to < 0 && iv[i].from > after) {
				*started = iv[i].from;
				return who;
			}
		sleep_ms(20);
	}
	return -1;
}

static size_t
sync_size(repl_ha *obs)
{
	repl_ha_view v;
	return repl_ha_read(obs, &v) == SP_OK ? v.sync.n : 0;
}

static void
wait_sync_size(repl_ha *obs, size_t want)
{
	int64_t t0 = repl_ha_now_ms();
	while (sync_size(obs) != want && repl_ha_now_ms() - t0 < 10000)
		sleep_ms(50);
	CHECK(sync_size(obs) == want, "sync set of %zu copies, want %zu", sync_size(obs), want);
}

static void
stop_child(int i)
{
	if (pids[i] <= 0)
		return;
	kill(pids[i], SIGCONT);
	kill(pids[i], SIGTERM);
	int64_t t0 = repl_ha_now_ms();
	while (waitpid(pids[i], NULL, WNOHANG) != pids[i]) {
		if (repl_ha_now_ms() - t0 > 8000) {
			kill(pids[i], SIGKILL);
			waitpid(pids[i], NULL, 0);
			break;
		}
		sleep_ms(20);
	}
	pids[i] = 0;
}

int
main(void)
{
	int64_t t_begin = repl_ha_now_ms();
	snprintf(dir, sizeof(dir), "/tmp/sp-ha-itest-XXXXXX");
	if (!mkdtemp(dir)) {
		dir[0] = '\0';
		return 1;
	}
	if (etcd_proc_start(&etcd) != 0) {
		cleanup();
		return 1;
	}
	for (int i = 0; i < COPIES; i++) {
		char path[96];
		snprintf(path, sizeof(path), "%s/copy%d", dir, i);
		pids[i] = fork();
		CHECK(pids[i] >= 0, "fork: %s", strerror(errno));
		if (pids[i] == 0)
			_exit(child(i, path));
	}
	repl_ha_cfg ocfg = {
	    .etcd = {.endpoints = etcd.endpoint},
	    .cluster = "itest",
	    .group = "inbox-0",
	    .name = "observer",
	    .inc = (const uint8_t *)"o",
	    .inc_len = 1,
	    .url = "-",
	};
	repl_ha *obs;
	CHECK(repl_ha_new(&ocfg, &obs) == SP_OK, "observer");

	/* 1. One primary; the sync set grows to all three copies. */
	int64_t started;
	int p1 = wait_primary(-1, 0, 15000, &started);
	CHECK(p1 >= 0, "no first primary");
	fprintf(stderr, "first primary copy%d after %lld ms\n", p1, (long long)(started - t_begin));
	wait_sync_size(obs, COPIES);
	sleep_ms(2500); /* serving, renewing its lease */

	/* 2. SIGKILL the primary: a new one within the target. */
	int64_t t_kill = repl_ha_now_ms();
	kill(pids[p1], SIGKILL);
	waitpid(pids[p1], NULL, 0);
	int64_t t_dead = repl_ha_now_ms();
	pids[p1] = 0;
	int p2 = wait_primary(p1, t_kill, FAILOVER_MAX + 2000, &started);
	CHECK(p2 >= 0, "no primary after the kill");
	int64_t failover = started - t_kill;
	fprintf(stderr, "SIGKILL copy%d: copy%d serving %lld ms after the kill\n", p1, p2,
		(long long)failover);
	CHECK(failover < FAILOVER_MAX, "failover took %lld ms", (long long)failover);
	wait_sync_size(obs, COPIES - 1);
	sleep_ms(2500);

	/* 3. SIGSTOP the new primary for longer than the TTL, then SIGCONT it. */
	int64_t t_stop = repl_ha_now_ms();
	kill(pids[p2], SIGSTOP);
	stopped = p2;
	int p3 = wait_primary(p2, t_stop, STOP_MS, &started);
	int64_t t_p3 = started;
	int64_t left = STOP_MS - (repl_ha_now_ms() - t_stop);
	if (left > 0)
		sleep_ms(left);
	int64_t t_cont = repl_ha_now_ms();
	kill(pids[p2], SIGCONT);
	stopped = -1;
	CHECK(p3 >= 0, "no primary while copy%d was stopped", p2);
	sleep_ms(3000); /* the woken copy notices, ends its interval and follows */

	/* 4. etcd itself stalls: the primary cannot renew and must stop serving by its
	 * deadline (last keepalive + TTL - margin) although nobody can replace it. */
	ival iv[MAX_IVALS];
	size_t n;
	int p4 = serving_now(iv, &n);
	CHECK(p4 >= 0, "no primary before the etcd stall");
	int64_t t_estop = repl_ha_now_ms();
	etcd_proc_signal(&etcd, SIGSTOP);
	int64_t p4_end = 0;
	while (repl_ha_now_ms() - t_estop < ESTALL_MS && !p4_end) {
		serving_now(iv, &n);
		for (size_t i = 0; i < n; i++)
			if (iv[i].who == p4 && iv[i].to >= t_estop)
				p4_end = iv[i].to;
		sleep_ms(20);
	}
	left = ESTALL_MS - (repl_ha_now_ms() - t_estop);
	if (left > 0)
		sleep_ms(left);
	etcd_proc_signal(&etcd, SIGCONT);
	CHECK(p4_end > 0, "copy%d served on through a %d ms etcd stall", p4, ESTALL_MS);
	fprintf(stderr, "etcd stalled: copy%d stopped serving %lld ms into the stall\n", p4,
		(long long)(p4_end - t_estop));
	int p5 = wait_primary(-1, t_estop, FAILOVER_MAX, &started);
	CHECK(p5 >= 0, "no primary after the etcd stall");
	fprintf(stderr, "etcd resumed: copy%d serving %lld ms after it\n", p5,
		(long long)(started - t_estop - ESTALL_MS));

	/* Stopping: a copy that resigns hands over to the next, legitimately. */
	int64_t t_teardown = repl_ha_now_ms();
	for (int i = 0; i < COPIES; i++)
		stop_child(i);
	repl_ha_free(obs);

	/* 5. The intervals. */
	n = read_ivals(iv, MAX_IVALS);
	for (size_t i = 0; i < n; i++) {
		if (iv[i].to < 0) {
			CHECK(iv[i].who == p1, "copy%d left an interval open", iv[i].who);
			iv[i].to = t_dead; /* killed while serving: it served no later */
		}
		fprintf(stderr, "copy%d served epoch %lld from %lld to %lld\n", iv[i].who,
			(long long)iv[i].epoch, (long long)(iv[i].from - t_begin),
			(long long)(iv[i].to - t_begin));
	}
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++) {
			if (iv[i].who == iv[j].who)
				continue;
			CHECK(iv[i].epoch != iv[j].epoch, "epoch %lld served by two copies",
			      (long long)iv[i].epoch);
			CHECK(iv[i].to < iv[j].from || iv[j].to < iv[i].from,
			      "copy%d (epoch %lld) and copy%d (epoch %lld) served at once",
			      iv[i].who, (long long)iv[i].epoch, iv[j].who, (long long)iv[j].epoch);
		}
	/* In order of time, epochs grow (the same copy may resume its own epoch after a
	 * late keepalive answer, never go back). */
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < n; j++)
			if (iv[i].from < iv[j].from)
				CHECK(iv[i].epoch < iv[j].epoch ||
					  (iv[i].who == iv[j].who && iv[i].epoch == iv[j].epoch),
				      "epoch %lld after %lld", (long long)iv[j].epoch,
				      (long long)iv[i].epoch);
	/* The stopped primary served nothing after it was stopped, nor after it woke (until
	 * the teardown). */
	int64_t p2_last = 0;
	for (size_t i = 0; i < n; i++)
		if (iv[i].who == p2 && iv[i].from < t_teardown) {
			CHECK(iv[i].from < t_stop, "copy%d served again after SIGCONT", p2);
			if (iv[i].to > p2_last)
				p2_last = iv[i].to;
		}
	CHECK(p2_last <= t_stop, "copy%d served while stopped", p2);
	fprintf(stderr,
		"SIGSTOP copy%d: last served %lld ms before the stop; copy%d serving %lld ms "
		"after the stop (%lld ms after copy%d's last); SIGCONT after %lld ms\n",
		p2, (long long)(t_stop - p2_last), p3, (long long)(t_p3 - t_stop),
		(long long)(t_p3 - p2_last), p2, (long long)(t_cont - t_stop));
	fprintf(stderr, "ok: %zu serving intervals, failover %lld ms, total %lld ms\n", n,
		(long long)failover, (long long)(repl_ha_now_ms() - t_begin));
	cleanup();
	return 0;
}
