/*
 * Load and bookkeeping shared by the replicated-shard fault tests (inbox_repl_itest,
 * inbox_partition_itest, inbox_etcd_restart_itest, inbox_snapshot_itest): writer threads
 * append (single appends and 3-target group batches) to whichever of the COPIES acknowledges,
 * moving on when a copy answers SP_ENOTPRIMARY / SP_EUNAVAIL or does not answer. Every
 * acknowledgement is recorded with the copy that gave it and when (the test's monotonic
 * clock: the request's send time and the answer's arrival), so a test can check that no
 * two copies acknowledged at overlapping times, and verify() checks that every
 * acknowledged append is on a copy exactly once, with its seq and content, and that
 * nothing never sent is there.
 *
 * The including test fills in C[i] (dir, url, log, pid) and names[i], and starts the
 * processes itself.
 */
#ifndef INBOX_LOAD_UTIL_H
#define INBOX_LOAD_UTIL_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/prctl.h>

#include "etcd_proc.h"
#include "tests/integration/inbox_util.h"

#define COPIES 3
#define THREADS 3 /* writer threads; the last sends 3-target batches */
#ifndef LOAD_PACE_US
#define LOAD_PACE_US 0 /* a writer's pause after each acknowledged message (0: none) */
#endif
#define SRC_PROBER THREADS /* message numbers of the prober thread */
#define SRC_PROBE (THREADS + 1) /* message numbers of find_primary's probes */
#define SOURCES (THREADS + 2)
#define DEVICES 12
#define BATCH_TARGETS 3
#define CALL_TIMEOUT_MS 1000

/* Marks the helpers not every including test calls, so that such a test need not list them
 * as unused. */
#define LOAD_OPTIONAL __attribute__((unused))

typedef struct ack {
	uint64_t device, msg, seq;
	uint64_t t_send, t_recv; /* microseconds, CLOCK_MONOTONIC */
	int copy;
} ack;

static shard C[COPIES];
static char names[COPIES][16];
static char metrics_url[COPIES][80];

static pthread_mutex_t acks_lock = PTHREAD_MUTEX_INITIALIZER;
static ack *acks;
static size_t nacks, acks_cap;
static _Atomic uint64_t sent[SOURCES]; /* message counters: every msg below was sent */

static atomic_bool stop_load;
static pthread_t worker_th[THREADS];
static int worker_idx[THREADS];

/* The prober: appends to one copy only, a new message each time, counting the answers. */
static pthread_t prober_th;
static atomic_bool prober_on, prober_stop;
static atomic_int prober_copy;
static _Atomic uint64_t prober_ok, prober_notprimary, prober_unavail, prober_noanswer;

static uint64_t LOAD_OPTIONAL
now_us(void)
{
	return sp_mono_ns() / 1000;
}

static uint64_t LOAD_OPTIONAL
msg_number(int source, uint64_t counter)
{
	return (uint64_t)(source + 1) << 40 | counter;
}

static size_t LOAD_OPTIONAL
env_for(uint64_t msg, uint8_t *out)
{
	size_t n = 20 + msg % 150;
	for (size_t i = 0; i < n; i++)
		out[i] = (uint8_t)(msg * 31 + i * 7);
	return n;
}

static void LOAD_OPTIONAL
ack_record(uint64_t device, uint64_t msg, uint64_t seq, int copy, uint64_t t_send, uint64_t t_recv)
{
	pthread_mutex_lock(&acks_lock);
	if (nacks == acks_cap) {
		acks_cap = acks_cap ? acks_cap * 2 : 16384;
		acks = realloc(acks, acks_cap * sizeof(ack));
		CHECK(acks, "oom");
	}
	acks[nacks++] = (ack) { device, msg, seq, t_send, t_recv, copy };
	pthread_mutex_unlock(&acks_lock);
}

static bool LOAD_OPTIONAL
retryable(int rc)
{
	return rc == SP_ENOTPRIMARY || rc == SP_EUNAVAIL || rc == SP_ETIMEDOUT || rc == SP_ECLOSED
	    || rc == SP_ENNG;
}

/* Sends message `msg` once to `copy` (a 3-target batch when `batch`); on SP_OK records an
 * acknowledgement per target. */
static int LOAD_OPTIONAL
send_once(nng_socket s, int copy, int source, uint64_t msg, bool batch)
{
	uint8_t env[256], id[16];
	size_t n = env_for(msg, env);
	uint64_t devs[BATCH_TARGETS];
	uint32_t ndev = batch ? BATCH_TARGETS : 1;
	sp_frame f, rep, t[BATCH_TARGETS];
	nng_msg *m;

	msg_id_of(id, msg, ~msg);
	devs[0] = 1 + msg % DEVICES;
	for (uint32_t i = 1; i < ndev; i++)
		devs[i] = 1 + (devs[0] - 1 + i * 5) % DEVICES;
	if (batch) {
		for (uint32_t i = 0; i < ndev; i++) {
			sp_frame_init(&t[i], SP_T_APPEND_TARGET, 0, false);
			sp_frame_set_u64(&t[i], SP_F_DEVICE, devs[i]);
		}
		sp_frame_init(&f, SP_T_APPEND_BATCH, 1, true);
		sp_frame_set_bin(&f, SP_F_MSG_ID, id, 16);
		sp_frame_set_u64(&f, SP_F_FROM_USER, 1);
		sp_frame_set_u64(&f, SP_F_FROM_DEVICE, 100 + (uint64_t)source);
		sp_frame_set_u64(&f, SP_F_SERVER_TS, 1);
		sp_frame_set_u64(&f, SP_F_ETYPE, 2);
		sp_frame_set_bin(&f, SP_F_BODY, env, n);
		sp_frame_set_recs(&f, SP_F_TARGETS, t, ndev);
	} else {
		append_frame(&f, devs[0], id, 100 + (uint64_t)source, env, n);
	}
	uint64_t t_send = now_us();
	int rc = call(s, &f, &rep, &m);
	uint64_t t_recv = now_us();
	if (rc == SP_OK) {
		if (batch) {
			const sp_val *v = sp_frame_get(&rep, SP_F_SEQ_LIST);
			CHECK(
			    rep.type == SP_T_APPENDED_BATCH && v && v->us.n == ndev, "batch reply");
			for (uint32_t i = 0; i < ndev; i++) {
				CHECK(v->us.v[i] != 0, "batch target refused");
				ack_record(devs[i], msg, v->us.v[i], copy, t_send, t_recv);
			}
		} else {
			CHECK(rep.type == SP_T_APPENDED, "append reply type %d", rep.type);
			ack_record(
			    devs[0], msg, sp_frame_u64(&rep, SP_F_SEQ), copy, t_send, t_recv);
		}
	}
	call_done(&rep, m);
	CHECK(
	    rc == SP_OK || retryable(rc), "append to %s answered %s", names[copy], sp_strerror(rc));
	return rc;
}

/* A writer: each message is sent (same msg_id, so a retry of a stored one is a duplicate
 * answered with the first seq) until some copy acknowledges it or the load stops. */
static void * LOAD_OPTIONAL
worker_main(void *arg)
{
	int idx = *(int *)arg, at = 0;
	nng_socket socks[COPIES];
	for (int i = 0; i < COPIES; i++)
		socks[i] = shard_connect(&C[i], CALL_TIMEOUT_MS);
	while (!atomic_load(&stop_load)) {
		uint64_t msg = msg_number(idx, atomic_fetch_add(&sent[idx], 1));
		for (;;) {
			int rc = send_once(socks[at], at, idx, msg, idx == THREADS - 1);
			if (rc == SP_OK && LOAD_PACE_US)
				usleep(LOAD_PACE_US);
			if (rc == SP_OK || atomic_load(&stop_load))
				break;
			at = (at + 1) % COPIES;
			usleep(rc == SP_ENOTPRIMARY ? 2000 : 20000);
		}
	}
	for (int i = 0; i < COPIES; i++)
		nng_close(socks[i]);
	return NULL;
}

static void LOAD_OPTIONAL
workers_start(void)
{
	atomic_store(&stop_load, false);
	for (int t = 0; t < THREADS; t++) {
		worker_idx[t] = t;
		CHECK(pthread_create(&worker_th[t], NULL, worker_main, &worker_idx[t]) == 0,
		    "thread");
	}
}

static void LOAD_OPTIONAL
workers_stop(void)
{
	atomic_store(&stop_load, true);
	for (int t = 0; t < THREADS; t++)
		pthread_join(worker_th[t], NULL);
}

static void * LOAD_OPTIONAL
prober_main(void *arg)
{
	(void)arg;
	int copy = atomic_load(&prober_copy);
	nng_socket s = shard_connect(&C[copy], CALL_TIMEOUT_MS);
	while (!atomic_load(&prober_stop)) {
		uint64_t msg = msg_number(SRC_PROBER, atomic_fetch_add(&sent[SRC_PROBER], 1));
		int rc = send_once(s, copy, SRC_PROBER, msg, false);
		if (rc == SP_OK)
			atomic_fetch_add(&prober_ok, 1);
		else if (rc == SP_ENOTPRIMARY)
			atomic_fetch_add(&prober_notprimary, 1);
		else if (rc == SP_EUNAVAIL)
			atomic_fetch_add(&prober_unavail, 1);
		else
			atomic_fetch_add(&prober_noanswer, 1);
		usleep(10000);
	}
	nng_close(s);
	return NULL;
}

/* Starts appending to copy `i` alone (one message every ~10 ms plus the answer's time). */
static void LOAD_OPTIONAL
prober_start(int i)
{
	atomic_store(&prober_copy, i);
	atomic_store(&prober_stop, false);
	atomic_store(&prober_ok, 0);
	atomic_store(&prober_notprimary, 0);
	atomic_store(&prober_unavail, 0);
	atomic_store(&prober_noanswer, 0);
	CHECK(pthread_create(&prober_th, NULL, prober_main, NULL) == 0, "thread");
	atomic_store(&prober_on, true);
}

static void LOAD_OPTIONAL
prober_stop_join(void)
{
	if (!atomic_load(&prober_on))
		return;
	atomic_store(&prober_stop, true);
	pthread_join(prober_th, NULL);
	atomic_store(&prober_on, false);
}

/* The copy that acknowledges an append now (a probe message, recorded like any other), or
 * -1 after timeout_ms. */
static int LOAD_OPTIONAL
find_primary(int timeout_ms)
{
	uint64_t deadline = sp_mono_ns() / 1000000 + (uint64_t)timeout_ms;
	while (sp_mono_ns() / 1000000 < deadline) {
		for (int i = 0; i < COPIES; i++) {
			if (C[i].pid <= 0)
				continue;
			nng_socket s = shard_connect(&C[i], CALL_TIMEOUT_MS);
			uint64_t msg = msg_number(SRC_PROBE, atomic_fetch_add(&sent[SRC_PROBE], 1));
			int rc = send_once(s, i, SRC_PROBE, msg, false);
			nng_close(s);
			if (rc == SP_OK)
				return i;
		}
		usleep(100000);
	}
	return -1;
}

/* One append of message `msg` (content env_for(msg)) to `device` on `s`, outside the load:
 * neither recorded nor counted as sent, so `device` must be past DEVICES (verify() does not
 * read it). For appends whose answer the test checks itself. Returns call()'s result. */
static int LOAD_OPTIONAL
append_unrecorded(nng_socket s, uint64_t device, uint64_t msg)
{
	uint8_t env[256], id[16];
	size_t n = env_for(msg, env);
	sp_frame f, rep;
	nng_msg *m;
	CHECK(device > DEVICES, "device %llu is read by verify()", (unsigned long long)device);
	msg_id_of(id, msg, ~msg);
	append_frame(&f, device, id, 1, env, n);
	int rc = call(s, &f, &rep, &m);
	call_done(&rep, m);
	return rc;
}

/* An append_unrecorded left outstanding while the test goes on (a primary that cannot
 * commit holds its answer), sent from a thread of its own: pending_start, then
 * pending_join for the answer. The struct must live until pending_join. */
typedef struct pending_append {
	const shard *copy;
	uint64_t device, msg;
	int timeout_ms, rc;
	pthread_t th;
} pending_append;

static void * LOAD_OPTIONAL
pending_main(void *arg)
{
	pending_append *p = arg;
	nng_socket s = shard_connect(p->copy, p->timeout_ms);
	p->rc = append_unrecorded(s, p->device, p->msg);
	nng_close(s);
	return NULL;
}

/* Sends the append to `copy`, waiting up to timeout_ms for its answer. */
static void LOAD_OPTIONAL
pending_start(pending_append *p, const shard *copy, uint64_t device, uint64_t msg, int timeout_ms)
{
	*p = (pending_append) {
		.copy = copy, .device = device, .msg = msg, .timeout_ms = timeout_ms
	};
	CHECK(pthread_create(&p->th, NULL, pending_main, p) == 0, "thread");
}

/* Waits for the answer; returns append_unrecorded's result. */
static int LOAD_OPTIONAL
pending_join(pending_append *p)
{
	pthread_join(p->th, NULL);
	return p->rc;
}

/* How many entries of `device` (one outside the load, holding a few) the copy on `s`
 * serves: one FETCH from the start. */
static uint32_t LOAD_OPTIONAL
device_entries(nng_socket s, uint64_t device)
{
	sp_frame f, rep;
	nng_msg *m;
	sp_frame_init(&f, SP_T_FETCH, 1, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, device);
	sp_frame_set_u64(&f, SP_F_AFTER_SEQ, 0);
	int rc = call(s, &f, &rep, &m);
	CHECK(rc == SP_OK && rep.type == SP_T_ENTRIES_R, "fetch of device %llu: %s",
	    (unsigned long long)device, sp_strerror(rc));
	uint32_t n = sp_frame_get(&rep, SP_F_ENTRIES)->rs.n;
	call_done(&rep, m);
	return n;
}

static size_t LOAD_OPTIONAL
acks_count(void)
{
	pthread_mutex_lock(&acks_lock);
	size_t n = nacks;
	pthread_mutex_unlock(&acks_lock);
	return n;
}

/* The latest answer arrival of an acknowledgement given by `copy` (any copy: -1) for a
 * request sent at or after `from` (us); 0 if none. */
static uint64_t LOAD_OPTIONAL
last_ack_us(int copy, uint64_t from)
{
	uint64_t t = 0;
	pthread_mutex_lock(&acks_lock);
	for (size_t k = 0; k < nacks; k++)
		if ((copy < 0 || acks[k].copy == copy) && acks[k].t_send >= from
		    && acks[k].t_recv > t)
			t = acks[k].t_recv;
	pthread_mutex_unlock(&acks_lock);
	return t;
}

/* The earliest acknowledgement by a copy other than `copy` (-1: any) at or after `from`
 * (us), by its request's send time or, when `by_answer`, by its answer's arrival: that time,
 * or UINT64_MAX if none. *who gets that copy. */
static uint64_t LOAD_OPTIONAL
first_other(int copy, uint64_t from, bool by_answer, int *who)
{
	uint64_t t = UINT64_MAX;
	pthread_mutex_lock(&acks_lock);
	for (size_t k = 0; k < nacks; k++) {
		uint64_t at = by_answer ? acks[k].t_recv : acks[k].t_send;
		if (acks[k].copy != copy && at >= from && at < t) {
			t = at;
			if (who)
				*who = acks[k].copy;
		}
	}
	pthread_mutex_unlock(&acks_lock);
	return t;
}

/* The earliest send time of a request acknowledged by a copy other than `copy`, sent at or
 * after `from`; UINT64_MAX if none. *who gets that copy. */
static uint64_t LOAD_OPTIONAL
first_other_ack_us(int copy, uint64_t from, int *who)
{
	return first_other(copy, from, false, who);
}

/* The earliest arrival, at or after `from`, of an acknowledgement by a copy other than
 * `copy`; UINT64_MAX if none. *who gets that copy. */
static uint64_t LOAD_OPTIONAL
first_other_answer_us(int copy, uint64_t from, int *who)
{
	return first_other(copy, from, true, who);
}

/* Acknowledgements by copies other than `copy` of requests sent at or after `from`. */
static size_t LOAD_OPTIONAL
acks_by_others(int copy, uint64_t from)
{
	size_t n = 0;
	pthread_mutex_lock(&acks_lock);
	for (size_t k = 0; k < nacks; k++)
		n += acks[k].copy != copy && acks[k].t_send >= from;
	pthread_mutex_unlock(&acks_lock);
	return n;
}

/* The longest time without an acknowledgement arriving, between `from` and `to` (us). */
static uint64_t LOAD_OPTIONAL
longest_ack_gap_us(uint64_t from, uint64_t to)
{
	pthread_mutex_lock(&acks_lock);
	uint64_t *t = malloc((nacks + 2) * sizeof(uint64_t));
	CHECK(t, "oom");
	size_t n = 0;
	t[n++] = from;
	for (size_t k = 0; k < nacks; k++)
		if (acks[k].t_recv > from && acks[k].t_recv < to)
			t[n++] = acks[k].t_recv;
	pthread_mutex_unlock(&acks_lock);
	t[n++] = to;
	/* appended in about arrival order; sort to be exact */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && t[j - 1] > t[j]; j--) {
			uint64_t x = t[j];
			t[j] = t[j - 1];
			t[j - 1] = x;
		}
	uint64_t gap = 0;
	for (size_t i = 1; i < n; i++)
		if (t[i] - t[i - 1] > gap)
			gap = t[i] - t[i - 1];
	free(t);
	return gap;
}

static int LOAD_OPTIONAL
cmp_ack_recv(const void *a, const void *b)
{
	const ack *x = a, *y = b;
	return x->t_recv < y->t_recv ? -1 : x->t_recv > y->t_recv;
}

/* No write acknowledged by two primaries: in answer-arrival order, the acknowledgements
 * fall into tenures (runs by one copy); each tenure's last answer arrived before the first
 * request of the next tenure was sent, so the two copies' acknowledging windows do not
 * overlap. Prints the tenures. */
static void LOAD_OPTIONAL
check_tenures(const char *phase)
{
	pthread_mutex_lock(&acks_lock);
	ack *a = malloc((nacks ? nacks : 1) * sizeof(ack));
	CHECK(a, "oom");
	memcpy(a, acks, nacks * sizeof(ack));
	size_t n = nacks;
	pthread_mutex_unlock(&acks_lock);
	qsort(a, n, sizeof(ack), cmp_ack_recv);
	uint64_t t0 = UINT64_MAX;
	for (size_t k = 0; k < n; k++)
		if (a[k].t_send < t0)
			t0 = a[k].t_send;
	size_t start = 0, tenures = 0;
	uint64_t prev_last = 0;
	int prev_copy = -1;
	for (size_t k = 0; k <= n; k++) {
		if (k < n && a[k].copy == a[start].copy)
			continue;
		uint64_t first_send = UINT64_MAX, last_recv = 0;
		for (size_t j = start; j < k; j++) {
			if (a[j].t_send < first_send)
				first_send = a[j].t_send;
			if (a[j].t_recv > last_recv)
				last_recv = a[j].t_recv;
		}
		printf("%s: tenure %zu: %s acknowledged %zu appends, %.3f .. %.3f s\n", phase,
		    ++tenures, names[a[start].copy], k - start, (double)(first_send - t0) / 1e6,
		    (double)(last_recv - t0) / 1e6);
		if (prev_copy >= 0)
			CHECK(prev_last < first_send,
			    "%s: two primaries: %s acknowledged until %.3f s but %s acknowledged a "
			    "request sent at %.3f s",
			    phase, names[prev_copy], (double)(prev_last - t0) / 1e6,
			    names[a[start].copy], (double)(first_send - t0) / 1e6);
		prev_last = last_recv;
		prev_copy = a[start].copy;
		start = k;
	}
	free(a);
}

typedef struct found {
	uint64_t msg, seq;
} found;

static int LOAD_OPTIONAL
cmp_found(const void *a, const void *b)
{
	const found *x = a, *y = b;
	return x->msg < y->msg ? -1 : x->msg > y->msg;
}

/* Every acknowledged append is on copy `i` (which must serve reads: the primary), once,
 * with its seq, in seq order, with its content; nothing never sent is there. */
static void LOAD_OPTIONAL
verify(int i, const char *phase)
{
	static found dev[DEVICES + 1][1 << 16];
	size_t ndev[DEVICES + 1] = { 0 };
	uint8_t env[256];
	nng_socket sock = shard_connect(&C[i], 5000);
	size_t total = 0, checked = 0;

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
			CHECK(rc == SP_OK && rep.type == SP_T_ENTRIES_R, "%s: fetch from %s: %s",
			    phase, names[i], sp_strerror(rc));
			const sp_val *v = sp_frame_get(&rep, SP_F_ENTRIES);
			for (uint32_t k = 0; k < v->rs.n; k++) {
				const sp_frame *e = &v->rs.v[k];
				uint64_t seq = sp_frame_u64(e, SP_F_SEQ), msg;
				sp_bin id = sp_frame_bin(e, SP_F_MSG_ID),
				       body = sp_frame_bin(e, SP_F_ENV);
				memcpy(&msg, id.p, 8);
				CHECK(seq > last, "%s: device %llu: seq %llu after %llu", phase,
				    (unsigned long long)d, (unsigned long long)seq,
				    (unsigned long long)last);
				last = seq;
				size_t n = env_for(msg, env);
				CHECK(body.len == n && memcmp(body.p, env, n) == 0,
				    "%s: device %llu seq %llu: content differs", phase,
				    (unsigned long long)d, (unsigned long long)seq);
				uint64_t src = (msg >> 40) - 1, ctr = msg & 0xffffffffffULL;
				CHECK(src < SOURCES && ctr < atomic_load(&sent[src]),
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
			CHECK(dev[d][k].msg != dev[d][k - 1].msg,
			    "%s: device %llu: message %llx twice", phase, (unsigned long long)d,
			    (unsigned long long)dev[d][k].msg);
		total += ndev[d];
	}
	pthread_mutex_lock(&acks_lock);
	for (size_t k = 0; k < nacks; k++) {
		const ack *a = &acks[k];
		found key = { a->msg, 0 };
		found *hit
		    = bsearch(&key, dev[a->device], ndev[a->device], sizeof(found), cmp_found);
		CHECK(hit, "%s: message %llx acknowledged by %s (device %llu seq %llu) lost on %s",
		    phase, (unsigned long long)a->msg, names[a->copy],
		    (unsigned long long)a->device, (unsigned long long)a->seq, names[i]);
		CHECK(hit->seq == a->seq,
		    "%s: message %llx acknowledged by %s as seq %llu, held as %llu on %s", phase,
		    (unsigned long long)a->msg, names[a->copy], (unsigned long long)a->seq,
		    (unsigned long long)hit->seq, names[i]);
		checked++;
	}
	pthread_mutex_unlock(&acks_lock);
	nng_close(sock);
	printf("%s: %s holds all %zu acknowledged appends (%zu entries)\n", phase, names[i],
	    checked, total);
}

/* A gauge or counter of copy `i`'s GET /metrics, or -1 when it cannot be read. */
static long long LOAD_OPTIONAL
metric(int i, const char *name)
{
	char cmd[256], line[512];
	long long v = -1;
	snprintf(cmd, sizeof(cmd), "curl -sf -m 2 '%s' 2>/dev/null", metrics_url[i]);
	FILE *p = popen(cmd, "r");
	if (!p)
		return -1;
	size_t len = strlen(name);
	while (fgets(line, sizeof(line), p))
		if (strncmp(line, name, len) == 0 && line[len] == ' ')
			v = atoll(line + len + 1);
	pclose(p);
	return v;
}

/* Prints each copy's replication metrics on stderr (when a wait times out). A copy whose
 * role is 1 (replica) but whose flushed LSN stays behind the primary's is not fetching. */
static void LOAD_OPTIONAL
dump_copies(const char *why)
{
	static const char *keys[]
	    = { "sp_inbox_repl_role", "sp_inbox_repl_epoch", "sp_inbox_repl_flushed_lsn",
		      "sp_inbox_repl_applied_lsn", "sp_inbox_repl_commit_lsn",
		      "sp_inbox_repl_sync_set_size", "sp_inbox_repl_records_fetched_total" };
	fprintf(stderr, "%s; the copies now (-1: no answer):\n", why);
	for (int i = 0; i < COPIES; i++) {
		fprintf(stderr, "  %s (pid %d):", names[i], (int)C[i].pid);
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
			fprintf(stderr, " %s %lld", keys[k] + strlen("sp_inbox_repl_"),
			    metric(i, keys[k]));
		fprintf(stderr, "\n");
	}
}

/* Bytes in copy `i`'s log now: log_since() looks only past such a mark. */
static long LOAD_OPTIONAL
log_mark(int i)
{
	FILE *f = fopen(C[i].log, "r");
	long n = 0;
	if (f) {
		fseek(f, 0, SEEK_END);
		n = ftell(f);
		fclose(f);
	}
	return n;
}

static bool LOAD_OPTIONAL
log_since(int i, long mark, const char *text)
{
	FILE *f = fopen(C[i].log, "r");
	char line[1024];
	bool found = false;
	if (!f)
		return false;
	fseek(f, mark, SEEK_SET);
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, text) != NULL;
	fclose(f);
	return found;
}

/* At exit: every copy the test started (SIGCONT first: a stopped one cannot die) and
 * etcd. */
static void LOAD_OPTIONAL
load_stop_all(etcd_proc *e)
{
	for (int i = 0; i < COPIES; i++)
		if (C[i].pid > 0) {
			kill(C[i].pid, SIGCONT);
			shard_reap(&C[i], SIGKILL);
		}
	if (e->pid > 0 || e->dir[0])
		etcd_proc_stop(e);
}

/* At exit: the test's directory, unless SP_KEEP_TMP asks to keep it. */
static void LOAD_OPTIONAL
load_remove_dir(const char *root)
{
	if (getenv("SP_KEEP_TMP")) {
		fprintf(stderr, "kept %s\n", root);
		return;
	}
	char cmd[200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (root[0] && system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", root);
}

/* Forks and execs argv (its output appended to s->log) inside the network namespace
 * mounted at `netns` (NULL: this one). The child gets SIGKILL if the test dies. Returns
 * the log's size before the start (for proc_wait_up). */
static long LOAD_OPTIONAL
proc_spawn(shard *s, const char *netns, char *const argv[])
{
	int nsfd = -1;
	if (netns)
		CHECK((nsfd = open(netns, O_RDONLY | O_CLOEXEC)) >= 0, "open %s: %s", netns,
		    strerror(errno));
	long mark = 0;
	FILE *lf = fopen(s->log, "r");
	if (lf) {
		fseek(lf, 0, SEEK_END);
		mark = ftell(lf);
		fclose(lf);
	}
	pid_t parent = getpid(), pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		if (nsfd >= 0 && setns(nsfd, CLONE_NEWNET) != 0)
			_exit(126);
		int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		/* Every append here is from one synthetic sender, far past a quarter of a
		 * queue: the per-sender share (covered by abuse_itest) is lifted. */
		setenv("SEALPOST_INBOXSRV_QUEUE_SHARE", "100", 0);
		execv(argv[0], argv);
		_exit(127);
	}
	if (nsfd >= 0)
		close(nsfd);
	s->pid = pid;
	return mark;
}

/* Waits for the "listening on" line a process started by proc_spawn writes once it
 * serves (after `mark` in its log), for at most max_ms. */
static void LOAD_OPTIONAL
proc_wait_up(shard *s, long mark, const char *what, int max_ms)
{
	pid_t pid = s->pid;
	uint64_t deadline = sp_mono_ns() + (uint64_t)max_ms * 1000000ULL;
	for (;;) {
		int status;
		CHECK(waitpid(pid, &status, WNOHANG) == 0, "%s exited at start-up; see %s", what,
		    s->log);
		FILE *f = fopen(s->log, "r");
		char line[1024];
		bool up = false;
		if (f) {
			fseek(f, mark, SEEK_SET);
			while (!up && fgets(line, sizeof(line), f))
				up = strstr(line, "listening on") != NULL;
			fclose(f);
		}
		if (up)
			break;
		CHECK(sp_mono_ns() < deadline, "%s not ready in %d ms; see %s", what, max_ms, s->log);
		usleep(20000);
	}
}

/* proc_spawn, then proc_wait_up for 15 s. */
static void LOAD_OPTIONAL
proc_start(shard *s, const char *netns, char *const argv[])
{
	proc_wait_up(s, proc_spawn(s, netns, argv), argv[0], 15000);
}

#endif
