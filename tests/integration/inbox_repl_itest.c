/*
 * A replicated inbox shard, black box (issue 12): a real etcd and three real inboxsrv
 * copies of shard 0. Writers append (single appends and 3-target group batches) to
 * whichever copy is primary, moving on when a copy answers SP_ENOTPRIMARY / SP_EUNAVAIL
 * or does not answer. Faults, in a row:
 *   1. SIGKILL the primary under load: appends resume on another copy (time measured);
 *   2. restart it on its data, SIGKILL the next primary: a second failover;
 *   3. SIGSTOP the primary longer than its lease, then SIGCONT: a direct append to it
 *      must not be acknowledged (it was fenced; another copy took over);
 *   4. delete a replica's data dir and restart it: it rebuilds from the primary's log,
 *      joins the sync set, and after the other copies are stopped one by one it holds
 *      everything (read from it as the last primary).
 * After each phase every acknowledged append must be on the current primary exactly
 * once, with the seq it was acknowledged with, in order, with its content; nothing never
 * sent may appear.
 */
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <sys/stat.h>

#include "etcd_proc.h"
#include "tests/integration/inbox_util.h"

#define COPIES 3
#define THREADS 3
#define DEVICES 12
#define BATCH_TARGETS 3
/* SP_REPL_LEASE_TTL overrides (bench/repl.sh measures failover with the default 5 s). */
#define LEASE_TTL (getenv("SP_REPL_LEASE_TTL") ? getenv("SP_REPL_LEASE_TTL") : "3")

typedef struct rec {
	uint64_t device, msg, seq;
} rec;

typedef struct worker {
	int idx;
	rec *acked;
	size_t nacked, cap;
	_Atomic uint64_t counter; /* messages sent: counter values < counter */
	pthread_t th;
} worker;

static shard C[COPIES];
static char repl_url[COPIES][64], names[COPIES][16];
static etcd_proc E;
static char root[64];
static worker W[THREADS];
static atomic_bool stop;
static _Atomic uint64_t last_ok_ms;
static atomic_int last_ok_copy = -1;
static pthread_mutex_t acked_lock = PTHREAD_MUTEX_INITIALIZER;

/* inbox_util.h's single-shard helpers this test does not use. */
static void unused_helpers(void) __attribute__((unused));
static void
unused_helpers(void)
{
	(void)shard_stop;
	(void)shard_init;
}

static void
cleanup_all(void)
{
	for (int i = 0; i < COPIES; i++)
		if (C[i].pid > 0) {
			kill(C[i].pid, SIGCONT);
			shard_reap(&C[i], SIGKILL);
		}
	if (E.pid > 0)
		etcd_proc_stop(&E);
	if (getenv("SP_KEEP_TMP")) {
		fprintf(stderr, "kept %s\n", root);
		return;
	}
	char cmd[200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (root[0] && system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", root);
}

static void
copy_start(int i)
{
	shard_start(&C[i], "--shard", "0", "--name", names[i], "--etcd", E.endpoint,
	    "--repl-listen", repl_url[i], "--lease-ttl", LEASE_TTL, "--repl-lag-ms", "1000",
	    "--min-copies", "2", "--log-level", "debug", NULL);
}

static uint64_t
msg_number(int thread, uint64_t counter)
{
	return (uint64_t)(thread + 1) << 40 | counter;
}

static size_t
env_for(uint64_t msg, uint8_t *out)
{
	size_t n = 20 + msg % 150;
	for (size_t i = 0; i < n; i++)
		out[i] = (uint8_t)(msg * 31 + i * 7);
	return n;
}

static void
record(worker *w, uint64_t device, uint64_t msg, uint64_t seq)
{
	pthread_mutex_lock(&acked_lock);
	if (w->nacked == w->cap) {
		w->cap = w->cap ? w->cap * 2 : 4096;
		w->acked = realloc(w->acked, w->cap * sizeof(rec));
		CHECK(w->acked, "oom");
	}
	w->acked[w->nacked++] = (rec) { device, msg, seq };
	pthread_mutex_unlock(&acked_lock);
}

static bool
retryable(int rc)
{
	return rc == SP_ENOTPRIMARY || rc == SP_EUNAVAIL || rc == SP_ETIMEDOUT || rc == SP_ECLOSED
	    || rc == SP_ENNG;
}

/* Sends one append (or batch) of message `msg` until some copy acknowledges it; the same
 * msg_id each time, so a retry of one that was stored is a duplicate answered with the
 * first seq. Returns false when the test is stopping. */
static bool
append_until_ok(worker *w, nng_socket *socks, int *at, uint64_t msg)
{
	uint8_t env[256], id[16];
	size_t n = env_for(msg, env);
	uint64_t devs[BATCH_TARGETS];
	uint32_t ndev = w->idx == THREADS - 1 ? BATCH_TARGETS : 1;
	msg_id_of(id, msg, ~msg);
	devs[0] = 1 + msg % DEVICES;
	for (uint32_t i = 1; i < ndev; i++)
		devs[i] = 1 + (devs[0] - 1 + i * 5) % DEVICES;
	for (;;) {
		sp_frame f, rep;
		nng_msg *m;
		sp_frame t[BATCH_TARGETS];
		if (ndev > 1) {
			for (uint32_t i = 0; i < ndev; i++) {
				sp_frame_init(&t[i], SP_T_APPEND_TARGET, 0, false);
				sp_frame_set_u64(&t[i], SP_F_DEVICE, devs[i]);
			}
			sp_frame_init(&f, SP_T_APPEND_BATCH, 1, true);
			sp_frame_set_bin(&f, SP_F_MSG_ID, id, 16);
			sp_frame_set_u64(&f, SP_F_FROM_USER, 1);
			sp_frame_set_u64(&f, SP_F_FROM_DEVICE, 100 + (uint64_t)w->idx);
			sp_frame_set_u64(&f, SP_F_SERVER_TS, 1);
			sp_frame_set_u64(&f, SP_F_ETYPE, 2);
			sp_frame_set_bin(&f, SP_F_BODY, env, n);
			sp_frame_set_recs(&f, SP_F_TARGETS, t, ndev);
		} else {
			append_frame(&f, devs[0], id, 100 + (uint64_t)w->idx, env, n);
		}
		int rc = call(socks[*at], &f, &rep, &m);
		if (rc == SP_OK) {
			if (ndev > 1) {
				const sp_val *v = sp_frame_get(&rep, SP_F_SEQ_LIST);
				CHECK(rep.type == SP_T_APPENDED_BATCH && v->us.n == ndev, "batch reply");
				for (uint32_t i = 0; i < ndev; i++) {
					CHECK(v->us.v[i] != 0, "batch target refused");
					record(w, devs[i], msg, v->us.v[i]);
				}
			} else {
				CHECK(rep.type == SP_T_APPENDED, "append reply type %d", rep.type);
				record(w, devs[0], msg, sp_frame_u64(&rep, SP_F_SEQ));
			}
			call_done(&rep, m);
			atomic_store(&last_ok_copy, *at);
			atomic_store(&last_ok_ms, sp_mono_ns() / 1000000);
			return true;
		}
		call_done(&rep, m);
		CHECK(retryable(rc), "append answered %s", sp_strerror(rc));
		*at = (*at + 1) % COPIES;
		if (atomic_load(&stop))
			return false;
		usleep(rc == SP_ENOTPRIMARY ? 2000 : 20000);
	}
}

static void *
worker_main(void *arg)
{
	worker *w = arg;
	nng_socket socks[COPIES];
	int at = 0;
	for (int i = 0; i < COPIES; i++)
		socks[i] = shard_connect(&C[i], 1500);
	while (!atomic_load(&stop)) {
		uint64_t msg = msg_number(w->idx, atomic_fetch_add(&w->counter, 1));
		if (!append_until_ok(w, socks, &at, msg))
			break;
	}
	for (int i = 0; i < COPIES; i++)
		nng_close(socks[i]);
	return NULL;
}

/* The copy that acknowledges an append now (a probe message of its own), or -1. */
static int
find_primary(int timeout_ms)
{
	static uint64_t probe = 1;
	uint64_t deadline = sp_mono_ns() / 1000000 + (uint64_t)timeout_ms;
	while (sp_mono_ns() / 1000000 < deadline) {
		for (int i = 0; i < COPIES; i++) {
			if (C[i].pid <= 0)
				continue;
			nng_socket s = shard_connect(&C[i], 1000);
			uint8_t id[16], env[8] = { 1 };
			sp_frame f, rep;
			nng_msg *m;
			msg_id_of(id, 0xffULL << 56 | probe++, 0);
			append_frame(&f, 9999, id, 1, env, sizeof(env));
			int rc = call(s, &f, &rep, &m);
			call_done(&rep, m);
			nng_close(s);
			if (rc == SP_OK)
				return i;
		}
		usleep(100000);
	}
	return -1;
}

#define PENDING_DEVICE 9990
static const uint8_t pending_id[16] = { 0xaa, 0xbb, 1, 2, 3 };
static int pending_rc;

/* Sends one append to the copy given and waits long for its answer. */
static void *
pending_append(void *arg)
{
	shard *c = arg;
	nng_socket s = shard_connect(c, 20000);
	uint8_t env[8] = { 3 };
	sp_frame f, rep;
	nng_msg *m;
	append_frame(&f, PENDING_DEVICE, pending_id, 1, env, sizeof(env));
	pending_rc = call(s, &f, &rep, &m);
	call_done(&rep, m);
	nng_close(s);
	return NULL;
}

/* Entries of `device` the copy serves (FETCH from 0). */
static uint32_t
count_on(nng_socket s, uint64_t device)
{
	sp_frame f, rep;
	nng_msg *m;
	sp_frame_init(&f, SP_T_FETCH, 1, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, device);
	sp_frame_set_u64(&f, SP_F_AFTER_SEQ, 0);
	int rc = call(s, &f, &rep, &m);
	CHECK(rc == SP_OK && rep.type == SP_T_ENTRIES_R, "fetch: %s", sp_strerror(rc));
	uint32_t n = sp_frame_get(&rep, SP_F_ENTRIES)->rs.n;
	call_done(&rep, m);
	return n;
}

typedef struct found {
	uint64_t msg, seq;
} found;

static int
cmp_found(const void *a, const void *b)
{
	const found *x = a, *y = b;
	return x->msg < y->msg ? -1 : x->msg > y->msg;
}

/* Every acknowledged append is on copy `i`, once, with its seq; nothing unsent is. */
static void
verify(int i, const char *phase)
{
	static found dev[DEVICES + 1][1 << 16];
	size_t ndev[DEVICES + 1] = { 0 };
	uint8_t env[256];
	nng_socket sock = shard_connect(&C[i], 5000);
	size_t total = 0, acked = 0;

	for (uint64_t d = 1; d <= DEVICES; d++) {
		uint64_t after = 0, last = 0;
		for (;;) {
			sp_frame f, rep;
			nng_msg *m;
			sp_frame_init(&f, SP_T_FETCH, d, true);
			sp_frame_set_u64(&f, SP_F_DEVICE, d);
			sp_frame_set_u64(&f, SP_F_AFTER_SEQ, after);
			sp_frame_set_u64(&f, SP_F_MAX_COUNT, 1000);
			int rc = call(sock, &f, &rep, &m);
			CHECK(rc == SP_OK && rep.type == SP_T_ENTRIES_R, "%s: fetch from %s: %s", phase,
			    names[i], sp_strerror(rc));
			const sp_val *v = sp_frame_get(&rep, SP_F_ENTRIES);
			for (uint32_t k = 0; k < v->rs.n; k++) {
				const sp_frame *e = &v->rs.v[k];
				uint64_t seq = sp_frame_u64(e, SP_F_SEQ), msg;
				sp_bin id = sp_frame_bin(e, SP_F_MSG_ID), body = sp_frame_bin(e, SP_F_ENV);
				memcpy(&msg, id.p, 8);
				CHECK(seq > last, "%s: device %llu: seq %llu after %llu", phase,
				    (unsigned long long)d, (unsigned long long)seq,
				    (unsigned long long)last);
				last = seq;
				size_t n = env_for(msg, env);
				CHECK(body.len == n && memcmp(body.p, env, n) == 0,
				    "%s: device %llu seq %llu: content differs", phase,
				    (unsigned long long)d, (unsigned long long)seq);
				uint64_t th = (msg >> 40) - 1, ctr = msg & 0xffffffffffULL;
				CHECK(th < THREADS && ctr < atomic_load(&W[th].counter),
				    "%s: device %llu holds a message never sent (%llx)", phase,
				    (unsigned long long)d, (unsigned long long)msg);
				CHECK(ndev[d] < (1 << 16), "too many entries");
				dev[d][ndev[d]++] = (found) { msg, seq };
			}
			bool more = sp_frame_u64(&rep, SP_F_MORE);
			if (v->rs.n)
				after = sp_frame_u64(&rep, SP_F_LAST_SEQ);
			call_done(&rep, m);
			if (!more)
				break;
		}
		qsort(dev[d], ndev[d], sizeof(found), cmp_found);
		for (size_t k = 1; k < ndev[d]; k++)
			CHECK(dev[d][k].msg != dev[d][k - 1].msg, "%s: device %llu: message %llx twice",
			    phase, (unsigned long long)d, (unsigned long long)dev[d][k].msg);
		total += ndev[d];
	}
	pthread_mutex_lock(&acked_lock);
	for (int t = 0; t < THREADS; t++)
		for (size_t k = 0; k < W[t].nacked; k++) {
			const rec *a = &W[t].acked[k];
			found key = { a->msg, 0 };
			found *hit = bsearch(&key, dev[a->device], ndev[a->device], sizeof(found), cmp_found);
			CHECK(hit, "%s: acknowledged message %llx (device %llu seq %llu) lost on %s", phase,
			    (unsigned long long)a->msg, (unsigned long long)a->device,
			    (unsigned long long)a->seq, names[i]);
			CHECK(hit->seq == a->seq, "%s: message %llx acknowledged as seq %llu, held as %llu",
			    phase, (unsigned long long)a->msg, (unsigned long long)a->seq,
			    (unsigned long long)hit->seq);
			acked++;
		}
	pthread_mutex_unlock(&acked_lock);
	nng_close(sock);
	printf("%s: %s holds all %zu acknowledged appends (%zu entries)\n", phase, names[i], acked,
	    total);
}

static void
workers_start(void)
{
	atomic_store(&stop, false);
	for (int t = 0; t < THREADS; t++) {
		W[t].idx = t;
		CHECK(pthread_create(&W[t].th, NULL, worker_main, &W[t]) == 0, "thread");
	}
}

static void
workers_stop(void)
{
	atomic_store(&stop, true);
	for (int t = 0; t < THREADS; t++)
		pthread_join(W[t].th, NULL);
}

static size_t
acked_count(void)
{
	size_t n = 0;
	pthread_mutex_lock(&acked_lock);
	for (int t = 0; t < THREADS; t++)
		n += W[t].nacked;
	pthread_mutex_unlock(&acked_lock);
	return n;
}

/* Kills the primary under load and measures how long until appends succeed again. */
static int
kill_primary(int p, const char *phase)
{
	size_t before = acked_count();
	uint64_t t0 = sp_mono_ns() / 1000000;
	kill(C[p].pid, SIGKILL);
	waitpid(C[p].pid, NULL, 0);
	C[p].pid = 0;
	/* An answer the killed copy sent just before it died does not count. */
	while (atomic_load(&last_ok_ms) <= t0 || acked_count() <= before
	    || atomic_load(&last_ok_copy) == p) {
		CHECK(sp_mono_ns() / 1000000 - t0 < 30000, "%s: no append acknowledged 30 s after "
							   "the primary's death",
		    phase);
		usleep(5000);
	}
	uint64_t took = atomic_load(&last_ok_ms) - t0;
	printf("%s: appends resumed %llu ms after SIGKILL of %s\n", phase, (unsigned long long)took,
	    names[p]);
	int np = find_primary(15000);
	CHECK(np >= 0 && np != p, "%s: no new primary", phase);
	return np;
}

/* Hostile input on the primary's replication endpoint: each is answered with an error
 * (or a divergence answer), nothing is counted as a copy's acknowledgement, and the shard
 * keeps serving. */
static void
malformed_fetches(int p)
{
	nng_socket s;
	CHECK(sp_nng_req_open(&s, repl_url[p], 3000, 0) == SP_OK, "dial repl");
	struct {
		const char *what;
		uint64_t epoch, last_epoch, last_lsn;
		const char *name;
		int want;
	} cases[] = {
		{ "epoch past the bound", 1ULL << 63, 0, 0, "intruder", SP_ERANGE },
		{ "lsn past the bound", 1, 1, 1ULL << 62, "intruder", SP_ERANGE },
		{ "the primary's own name", 0, 0, 0, names[p], SP_EPERM },
		{ "a newer epoch than the primary's", 1ULL << 40, 0, 0, "intruder", SP_ENOTPRIMARY },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		sp_frame f, rep;
		nng_msg *m;
		uint8_t inc[16] = { 9 };
		sp_frame_init(&f, SP_T_REPL_FETCH, 1, true);
		sp_frame_set_u64(&f, SP_F_EPOCH, cases[i].epoch);
		sp_frame_set_str(&f, SP_F_NAME, cases[i].name);
		sp_frame_set_bin(&f, SP_F_REPL_INC, inc, sizeof(inc));
		sp_frame_set_u64(&f, SP_F_LAST_EPOCH, cases[i].last_epoch);
		sp_frame_set_u64(&f, SP_F_LAST_LSN, cases[i].last_lsn);
		sp_frame_set_u64(&f, SP_F_FLUSHED_LSN, cases[i].last_lsn);
		sp_frame_set_u64(&f, SP_F_COMMIT_LSN, 0);
		int rc = call(s, &f, &rep, &m);
		call_done(&rep, m);
		CHECK(rc == cases[i].want, "%s: answered %s", cases[i].what, sp_strerror(rc));
	}
	/* A record the copy does not hold, claimed as its last: a divergence answer, no ack. */
	{
		sp_frame f, rep;
		nng_msg *m;
		uint8_t inc[16] = { 9 };
		sp_frame_init(&f, SP_T_REPL_FETCH, 1, true);
		sp_frame_set_u64(&f, SP_F_EPOCH, 0);
		sp_frame_set_str(&f, SP_F_NAME, "intruder");
		sp_frame_set_bin(&f, SP_F_REPL_INC, inc, sizeof(inc));
		sp_frame_set_u64(&f, SP_F_LAST_EPOCH, 1);
		sp_frame_set_u64(&f, SP_F_LAST_LSN, 1000000000);
		sp_frame_set_u64(&f, SP_F_FLUSHED_LSN, 1000000000);
		sp_frame_set_u64(&f, SP_F_COMMIT_LSN, 0);
		int rc = call(s, &f, &rep, &m);
		CHECK(rc == SP_OK && rep.type == SP_T_REPL_DIVERGED, "a foreign last record: %s type %d",
		    sp_strerror(rc), rep.type);
		call_done(&rep, m);
	}
	/* Snapshot requests for a snapshot it does not serve, or past its end. */
	{
		sp_frame f, rep;
		nng_msg *m;
		uint8_t id[16] = { 7 };
		sp_frame_init(&f, SP_T_REPL_SNAP_GET, 1, true);
		sp_frame_set_str(&f, SP_F_NAME, "intruder");
		sp_frame_set_bin(&f, SP_F_SNAP_ID, id, sizeof(id));
		sp_frame_set_u64(&f, SP_F_OFFSET, 0);
		int rc = call(s, &f, &rep, &m);
		call_done(&rep, m);
		CHECK(rc == SP_ESTATE, "a snapshot id never served: %s", sp_strerror(rc));
		/* A new download: made on demand (SP_EUNAVAIL until it is), then served. */
		uint64_t t0 = sp_mono_ns() / 1000000;
		do {
			sp_frame_init(&f, SP_T_REPL_SNAP_GET, 1, true);
			sp_frame_set_str(&f, SP_F_NAME, "intruder");
			sp_frame_set_u64(&f, SP_F_OFFSET, 0);
			rc = call(s, &f, &rep, &m);
			if (rc == SP_OK) {
				CHECK(rep.type == SP_T_REPL_SNAP_CHUNK, "snapshot reply type %d", rep.type);
				sp_bin sid = sp_frame_bin(&rep, SP_F_SNAP_ID);
				CHECK(sid.len == sizeof(id), "snapshot id");
				memcpy(id, sid.p, sizeof(id));
				uint64_t size = sp_frame_u64(&rep, SP_F_SIZE);
				call_done(&rep, m);
				sp_frame_init(&f, SP_T_REPL_SNAP_GET, 1, true);
				sp_frame_set_str(&f, SP_F_NAME, "intruder");
				sp_frame_set_bin(&f, SP_F_SNAP_ID, id, sizeof(id));
				sp_frame_set_u64(&f, SP_F_OFFSET, size + 1);
				rc = call(s, &f, &rep, &m);
				call_done(&rep, m);
				CHECK(rc == SP_ERANGE, "an offset past the snapshot: %s", sp_strerror(rc));
				break;
			}
			call_done(&rep, m);
			CHECK(rc == SP_EUNAVAIL, "a new snapshot download: %s", sp_strerror(rc));
			CHECK(sp_mono_ns() / 1000000 - t0 < 10000, "no snapshot made in 10 s");
			usleep(100000);
		} while (rc != SP_OK);
	}
	/* A frame of another type, and bytes that are no frame. */
	{
		sp_frame f, rep;
		nng_msg *m;
		sp_frame_init(&f, SP_T_PING, 1, true);
		int rc = call(s, &f, &rep, &m);
		call_done(&rep, m);
		CHECK(rc == SP_EBADTYPE, "PING on the replication endpoint: %s", sp_strerror(rc));
		nng_msg *raw;
		CHECK(nng_msg_alloc(&raw, 0) == 0 && nng_msg_append(raw, "\xff\x00garbage", 9) == 0, "msg");
		CHECK(nng_sendmsg(s, raw, 0) == 0, "send");
		CHECK(nng_recvmsg(s, &raw, 0) == 0, "no answer to garbage");
		nng_msg_free(raw);
	}
	nng_close(s);
	CHECK(find_primary(5000) == p, "the primary stopped serving after hostile fetches");
	printf("hostile fetches on the replication endpoint refused; %s still primary\n", names[p]);
}

int
main(void)
{
	CHECK(sodium_init() >= 0, "sodium");
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(root, sizeof(root), "%s/inbox_repl.XXXXXX", tmp);
	CHECK(mkdtemp(root), "mkdtemp");
	atexit(cleanup_all);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);
	CHECK(etcd_proc_start(&E) == 0, "etcd");
	for (int i = 0; i < COPIES; i++) {
		snprintf(names[i], sizeof(names[i]), "inbox-0%c", 'a' + i);
		CHECK((size_t)snprintf(C[i].dir, sizeof(C[i].dir), "%.60s/%.15s", root, names[i])
			< sizeof(C[i].dir), "path");
		CHECK(mkdir(C[i].dir, 0700) == 0, "mkdir");
		CHECK((size_t)snprintf(C[i].log, sizeof(C[i].log), "%.60s/%.15s/inboxsrv.log", root,
			  names[i]) < sizeof(C[i].log), "path");
		snprintf(repl_url[i], sizeof(repl_url[i]), "tcp://127.0.0.1:%d", free_port());
		copy_start(i);
	}
	int p = find_primary(20000);
	CHECK(p >= 0, "no copy became a writable primary in 20 s");
	printf("primary: %s\n", names[p]);
	malformed_fetches(p);

	workers_start();
	usleep(1500000);
	p = kill_primary(p, "failover 1");
	usleep(1000000);
	int dead = -1;
	for (int i = 0; i < COPIES; i++)
		if (C[i].pid <= 0)
			dead = i;
	copy_start(dead);
	usleep(2000000);
	p = kill_primary(p, "failover 2");
	usleep(1000000);
	workers_stop();
	verify(p, "after two failovers");
	for (int i = 0; i < COPIES; i++)
		if (C[i].pid <= 0)
			copy_start(i);

	/* A paused primary: fenced by its lease; after SIGCONT it acknowledges nothing. */
	workers_start();
	usleep(1000000);
	int paused = p;
	kill(C[paused].pid, SIGSTOP);
	uint64_t t0 = sp_mono_ns() / 1000000;
	int np = -1;
	while (np < 0 || np == paused) {
		np = find_primary(1000);
		CHECK(sp_mono_ns() / 1000000 - t0 < 30000, "no promotion");
	}
	printf("paused %s; %s took over after %llu ms\n", names[paused], names[np],
	    (unsigned long long)(sp_mono_ns() / 1000000 - t0));
	kill(C[paused].pid, SIGCONT);
	{
		nng_socket s = shard_connect(&C[paused], 2000);
		uint8_t id[16], env[8] = { 2 };
		sp_frame f, rep;
		nng_msg *m;
		msg_id_of(id, 0xfeULL << 56, 1);
		append_frame(&f, 9998, id, 1, env, sizeof(env));
		int rc = call(s, &f, &rep, &m);
		call_done(&rep, m);
		nng_close(s);
		CHECK(rc != SP_OK, "the paused primary acknowledged an append after SIGCONT");
		printf("the resumed old primary answered %s\n", sp_strerror(rc));
	}
	usleep(1000000);
	workers_stop();
	p = find_primary(15000);
	CHECK(p >= 0, "no primary after the pause");
	verify(p, "after a paused primary");

	/* Rules 1 and 2. With both replicas stopped an append is logged on the primary but
	 * not committed: FETCH does not show it and a retry of its msg_id is not answered
	 * from the dedup record. The primary dies; a replica takes over; the old primary,
	 * restarted, truncates the suffix nobody acknowledged; the append sent again is
	 * stored once. */
	{
		int r1 = (p + 1) % COPIES, r2 = (p + 2) % COPIES;
		kill(C[r1].pid, SIGSTOP);
		kill(C[r2].pid, SIGSTOP);
		/* A fetch already waiting at the primary (a 200 ms long-poll) would carry the
		 * append into the stopped replica's socket buffer, to be read after SIGCONT:
		 * the append is sent only once every such fetch has been answered. */
		usleep(800000);
		pthread_t th;
		CHECK(pthread_create(&th, NULL, pending_append, &C[p]) == 0, "thread");
		usleep(400000);
		nng_socket s = shard_connect(&C[p], 3000);
		CHECK(count_on(s, PENDING_DEVICE) == 0, "an uncommitted append is visible to FETCH");
		uint8_t env[8] = { 3 };
		sp_frame f, rep;
		nng_msg *m;
		append_frame(&f, PENDING_DEVICE, pending_id, 1, env, sizeof(env));
		int rc = call(s, &f, &rep, &m);
		call_done(&rep, m);
		CHECK(rc != SP_OK, "a retry of an uncommitted append was answered from the dedup record");
		printf("rule 1: uncommitted append invisible; its retry answered %s\n", sp_strerror(rc));
		nng_close(s);
		shard_reap(&C[p], SIGKILL);
		kill(C[r1].pid, SIGCONT);
		kill(C[r2].pid, SIGCONT);
		pthread_join(th, NULL);
		CHECK(pending_rc != SP_OK, "the append to the killed primary was acknowledged");
		/* A replica takes over first: restarted at once, the old primary (the most
		 * advanced sync-set copy) could win again and keep its suffix, which is allowed
		 * but not the case this phase sets up. */
		np = find_primary(30000);
		CHECK(np >= 0 && np != p, "no failover after the primary with a pending suffix died");
		copy_start(p);
		uint64_t t1 = sp_mono_ns() / 1000000;
		while (!log_has(&C[p], "truncating after")) {
			CHECK(sp_mono_ns() / 1000000 - t1 < 15000,
			    "the old primary did not truncate its unacknowledged suffix");
			usleep(50000);
		}
		s = shard_connect(&C[np], 3000);
		append_frame(&f, PENDING_DEVICE, pending_id, 1, env, sizeof(env));
		CHECK((rc = call(s, &f, &rep, &m)) == SP_OK, "append again: %s", sp_strerror(rc));
		call_done(&rep, m);
		CHECK(count_on(s, PENDING_DEVICE) == 1, "the append is not stored exactly once");
		nng_close(s);
		printf("rule 2: the old primary truncated its suffix; the append is stored once on %s\n",
		    names[np]);
		p = np;
		verify(p, "after a lost uncommitted suffix");
	}

	/* Replicas die under load: with one gone writes go on; with both gone (fewer than
	 * min-copies) appends are refused retryably, and they resume when one returns. */
	{
		int r1 = (p + 1) % COPIES, r2 = (p + 2) % COPIES;
		workers_start();
		usleep(500000);
		shard_reap(&C[r1], SIGKILL);
		size_t before = acked_count();
		uint64_t t1 = sp_mono_ns() / 1000000;
		while (acked_count() < before + 200) {
			CHECK(sp_mono_ns() / 1000000 - t1 < 15000, "writes stopped with one replica dead");
			usleep(10000);
		}
		printf("one replica dead: %zu more appends acknowledged\n", acked_count() - before);
		workers_stop();
		shard_reap(&C[r2], SIGKILL);
		nng_socket s = shard_connect(&C[p], 3000);
		uint8_t env[8] = { 4 }, id[16];
		sp_frame f, rep;
		nng_msg *m;
		int rc = SP_OK;
		for (int k = 0; k < 100 && rc == SP_OK; k++) {
			msg_id_of(id, 0xfdULL << 56 | (uint64_t)k, 2);
			append_frame(&f, 9997, id, 1, env, sizeof(env));
			rc = call(s, &f, &rep, &m);
			call_done(&rep, m);
			usleep(50000);
		}
		CHECK(rc == SP_EUNAVAIL, "with both replicas dead an append was answered %s",
		    sp_strerror(rc));
		printf("both replicas dead: appends answered %s\n", sp_strerror(rc));
		nng_close(s);
		copy_start(r2);
		CHECK(find_primary(20000) == p, "writes did not resume when a replica returned");
		copy_start(r1);
		printf("a replica back: appends acknowledged again by %s\n", names[p]);
		verify(p, "after replicas died");
	}

	/* A copy whose data dir is lost rebuilds from the primary's log and joins the sync
	 * set; then the two others die and the third comes back empty: only the rebuilt copy
	 * may take over, and the empty one rebuilds from it. */
	int lost = (p + 1) % COPIES, other = 3 - p - lost;
	shard_reap(&C[lost], SIGKILL);
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s/data'", C[lost].dir);
	CHECK(system(cmd) == 0, "rm");
	copy_start(lost);
	workers_start();
	usleep(3000000);
	workers_stop();
	usleep(1500000); /* caught up and written into the sync set */
	shard_reap(&C[p], SIGKILL);
	shard_reap(&C[other], SIGKILL);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s/data'", C[other].dir);
	CHECK(system(cmd) == 0, "rm");
	copy_start(other);
	np = find_primary(30000);
	CHECK(np == lost, "the rebuilt copy %s did not take over (primary: %d)", names[lost], np);
	verify(lost, "rebuilt copy as the last one standing");
	/* Every socket is closed: let NNG finish its reaping so LSan sees no leak. */
	nng_fini();
	printf("ok\n");
	return 0;
}
