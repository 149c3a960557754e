/*
 * Crash safety of inboxsrv, black box: several threads append concurrently over NNG
 * (single appends and group batches, many to the same devices), the shard is SIGKILLed
 * mid-load, restarted on the same data, and every append that got a seq must be there
 * exactly once, with that seq, in order, with its content; nothing that was never sent
 * may appear; retries of acknowledged appends are deduplicated. Three kill cycles.
 */
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>

#include "tests/integration/inbox_util.h"

#define THREADS 4
#define DEVICES 16
#define CYCLES 3
#define BATCH_TARGETS 3

typedef struct rec {
	uint64_t device, msg, seq;
} rec;

typedef struct worker {
	int idx;
	nng_socket sock;
	rec *acked;
	size_t nacked, cap;
	uint64_t cycle, counter; /* messages of this cycle sent: counter values < counter */
	uint64_t sent[CYCLES]; /* per cycle, how many messages were sent */
	pthread_t th;
} worker;

static shard S;
static worker W[THREADS];
static atomic_bool stop;

static uint64_t
msg_number(uint64_t cycle, int thread, uint64_t counter)
{
	return cycle << 48 | (uint64_t)thread << 40 | counter;
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
	if (w->nacked == w->cap) {
		w->cap = w->cap ? w->cap * 2 : 4096;
		w->acked = realloc(w->acked, w->cap * sizeof(rec));
		CHECK(w->acked, "oom");
	}
	w->acked[w->nacked] = (rec) { device, msg, seq };
	__atomic_store_n(&w->nacked, w->nacked + 1, __ATOMIC_RELEASE); /* main thread watches it */
}

static void *
worker_main(void *arg)
{
	worker *w = arg;
	uint8_t env[256], id[16];
	sp_frame f, rep;
	nng_msg *m;

	while (!atomic_load(&stop)) {
		uint64_t msg = msg_number(w->cycle, w->idx, w->counter++);
		size_t n = env_for(msg, env);
		uint64_t devs[BATCH_TARGETS];
		uint32_t ndev = 1;
		msg_id_of(id, msg, ~msg);
		w->sent[w->cycle] = w->counter;
		devs[0] = 1 + randombytes_uniform(DEVICES);
		if (w->idx == THREADS - 1) {
			/* The last thread sends group fan-outs to distinct devices. */
			sp_frame t[BATCH_TARGETS];
			ndev = BATCH_TARGETS;
			for (uint32_t i = 1; i < ndev; i++)
				devs[i] = 1 + (devs[0] - 1 + i * 5) % DEVICES;
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
			int rc = call(w->sock, &f, &rep, &m);
			if (rc != SP_OK) {
				call_done(&rep, m);
				break; /* the shard died */
			}
			const sp_val *v = sp_frame_get(&rep, SP_F_SEQ_LIST);
			CHECK(rep.type == SP_T_APPENDED_BATCH && v->us.n == ndev, "batch reply");
			for (uint32_t i = 0; i < ndev; i++) {
				CHECK(v->us.v[i] != 0, "batch target refused");
				record(w, devs[i], msg, v->us.v[i]);
			}
			call_done(&rep, m);
			continue;
		}
		append_frame(&f, devs[0], id, 100 + (uint64_t)w->idx, env, n);
		int rc = call(w->sock, &f, &rep, &m);
		if (rc != SP_OK) {
			call_done(&rep, m);
			break;
		}
		CHECK(rep.type == SP_T_APPENDED, "append reply type %d", rep.type);
		record(w, devs[0], msg, sp_frame_u64(&rep, SP_F_SEQ));
		call_done(&rep, m);
	}
	return NULL;
}

/* Everything on the shard, per device: msg -> seq, checked for order and content. */
typedef struct found {
	uint64_t msg, seq;
} found;

static int
cmp_found(const void *a, const void *b)
{
	const found *x = a, *y = b;
	return x->msg < y->msg ? -1 : x->msg > y->msg;
}

static found *
find(found *v, size_t n, uint64_t msg)
{
	found key = { msg, 0 };
	return bsearch(&key, v, n, sizeof(found), cmp_found);
}

static void
verify(nng_socket sock, int cycles_done)
{
	static found dev[DEVICES + 1][1 << 16];
	size_t ndev[DEVICES + 1] = { 0 };
	uint8_t env[256];
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
			CHECK(rc == SP_OK && rep.type == SP_T_ENTRIES_R, "fetch: %s",
			    sp_strerror(rc));
			const sp_val *v = sp_frame_get(&rep, SP_F_ENTRIES);
			for (uint32_t i = 0; i < v->rs.n; i++) {
				const sp_frame *e = &v->rs.v[i];
				uint64_t seq = sp_frame_u64(e, SP_F_SEQ), msg;
				sp_bin id = sp_frame_bin(e, SP_F_MSG_ID),
				       body = sp_frame_bin(e, SP_F_ENV);
				memcpy(&msg, id.p, 8);
				CHECK(seq > last, "device %llu: seq %llu after %llu",
				    (unsigned long long)d, (unsigned long long)seq,
				    (unsigned long long)last);
				last = seq;
				size_t n = env_for(msg, env);
				CHECK(body.len == n && memcmp(body.p, env, n) == 0,
				    "device %llu seq %llu: content differs", (unsigned long long)d,
				    (unsigned long long)seq);
				uint64_t cycle = msg >> 48, th = (msg >> 40) & 0xff,
				         ctr = msg & 0xffffffffffULL;
				CHECK(cycle < CYCLES && th < THREADS && ctr < W[th].sent[cycle],
				    "device %llu holds a message never sent (%llx)",
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
		for (size_t i = 1; i < ndev[d]; i++)
			CHECK(dev[d][i].msg != dev[d][i - 1].msg,
			    "device %llu: message %llx stored twice", (unsigned long long)d,
			    (unsigned long long)dev[d][i].msg);
		total += ndev[d];
	}
	for (int t = 0; t < THREADS; t++) {
		uint64_t last_seq[DEVICES + 1] = { 0 };
		for (size_t i = 0; i < W[t].nacked; i++) {
			const rec *r = &W[t].acked[i];
			found *hit = find(dev[r->device], ndev[r->device], r->msg);
			CHECK(hit,
			    "LOST: acknowledged message %llx (device %llu seq %llu) is missing",
			    (unsigned long long)r->msg, (unsigned long long)r->device,
			    (unsigned long long)r->seq);
			CHECK(hit->seq == r->seq,
			    "message %llx: acknowledged seq %llu, stored %llu",
			    (unsigned long long)r->msg, (unsigned long long)r->seq,
			    (unsigned long long)hit->seq);
			/* One thread's appends to a device were sequential: seqs must grow. */
			CHECK(r->seq > last_seq[r->device], "thread %d: seq order on device %llu",
			    t, (unsigned long long)r->device);
			last_seq[r->device] = r->seq;
			acked++;
		}
	}
	printf("cycle %d: %zu entries stored, %zu acknowledged appends all present\n", cycles_done,
	    total, acked);
}

/* Retries of acknowledged appends return the first seq and store nothing. */
static void
check_dedup(nng_socket sock)
{
	uint8_t env[256], id[16];
	for (int t = 0; t < THREADS - 1; t++) {
		for (int k = 0; k < 20 && W[t].nacked; k++) {
			const rec *r = &W[t].acked[randombytes_uniform((uint32_t)W[t].nacked)];
			sp_frame f, rep;
			nng_msg *m;
			msg_id_of(id, r->msg, ~r->msg);
			append_frame(
			    &f, r->device, id, 100 + (uint64_t)t, env, env_for(r->msg, env));
			int rc = call(sock, &f, &rep, &m);
			CHECK(rc == SP_OK && sp_frame_u64(&rep, SP_F_SEQ) == r->seq
			        && sp_frame_u64(&rep, SP_F_DUP),
			    "retry of %llx not deduplicated", (unsigned long long)r->msg);
			call_done(&rep, m);
		}
	}
}

int
main(void)
{
	CHECK(sodium_init() >= 0, "sodium");
	shard_init(&S, "inbox_crash");
	for (int c = 0; c < CYCLES; c++) {
		shard_start(&S, "--contexts", "64", NULL);
		if (c > 0) {
			/* Everything acknowledged before the last kill is still there. */
			nng_socket s = shard_connect(&S, 5000);
			verify(s, c);
			check_dedup(s);
			nng_close(s);
		}
		atomic_store(&stop, false);
		for (int t = 0; t < THREADS; t++) {
			W[t].idx = t;
			W[t].cycle = (uint64_t)c;
			W[t].counter = 0;
			W[t].sock = shard_connect(&S, 2000);
			pthread_create(&W[t].th, NULL, worker_main, &W[t]);
		}
		/* Kill once there is real load to lose (a loaded machine gets there later), at a
		 * random moment after; bounded at 30 s. */
		for (int i = 0; i < 600; i++) {
			size_t n = 0;
			for (int t = 0; t < THREADS; t++)
				n += __atomic_load_n(&W[t].nacked, __ATOMIC_RELAXED);
			if (n > (size_t)(c + 1) * 100 + 50)
				break;
			usleep(50000);
		}
		usleep(randombytes_uniform(400000));
		shard_reap(&S, SIGKILL);
		atomic_store(&stop, true);
		size_t before = 0;
		for (int t = 0; t < THREADS; t++) {
			pthread_join(W[t].th, NULL);
			nng_close(W[t].sock);
			before += W[t].nacked;
		}
		printf("cycle %d: killed with %zu appends acknowledged so far\n", c, before);
		CHECK(before > (size_t)(c + 1) * 100, "too little load to test anything");
	}
	shard_start(&S, NULL);
	nng_socket s = shard_connect(&S, 5000);
	verify(s, CYCLES);
	check_dedup(s);
	nng_close(s);
	CHECK(shard_stop(&S) == 0, "clean exit");
	for (int t = 0; t < THREADS; t++)
		free(W[t].acked);
	printf("1 passed, 0 failed\n");
	return 0;
}
