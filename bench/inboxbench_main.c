/*
 * inboxbench: drives one inbox shard with many concurrent appenders (NNG REQ contexts
 * over a few sockets) and reports durable appends/s, append latency percentiles,
 * commits/s (the shard's COMMITS counter from STAT) and the fetch+ack drain rate.
 *
 * Closed loop (rate 0): every context sends its next APPEND as soon as the previous one
 * is acknowledged. Open loop (rate R): requests are scheduled at a fixed total rate and
 * latency is measured from the scheduled time, so a stalled shard shows as latency rather
 * than as a lower request rate.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>

#include "sp_config.h"
#include "sp_error.h"
#include "sp_frame.h"
#include "sp_log.h"
#include "sp_nng.h"
#include "sp_time.h"

#define LAT_BUCKET_NS 10000ULL /* 10 us */
#define LAT_BUCKETS 200000 /* up to 2 s */

static char *url;
static long long contexts, sockets, seconds, size, devices, rate, count, drain_threads;
static bool drain, quiet, ping;

static const sp_config_opt opts[] = {
	{ "url", SP_CT_STR, &url, "tcp://127.0.0.1:7401", "shard NNG URL", 0, 0 },
	{ "contexts", SP_CT_INT, &contexts, "256", "concurrent appends in flight", 1, 65536 },
	{ "sockets", SP_CT_INT, &sockets, "4", "REQ sockets (connections) the contexts share", 1,
	    256 },
	{ "seconds", SP_CT_INT, &seconds, "5", "append phase length (unless count is set)", 1,
	    3600 },
	{ "count", SP_CT_INT, &count, "0",
	    "stop after this many acknowledged appends (0: use seconds)", 0, 1LL << 40 },
	{ "size", SP_CT_INT, &size, "200", "envelope bytes", 1, 65536 },
	{ "devices", SP_CT_INT, &devices, "1000", "distinct recipient devices", 1, 1 << 30 },
	{ "rate", SP_CT_INT, &rate, "0", "open loop: total appends/s (0: closed loop)", 0,
	    10000000 },
	{ "drain", SP_CT_BOOL, &drain, "true", "then fetch+ack every queue and time it", 0, 0 },
	{ "drain-threads", SP_CT_INT, &drain_threads, "4", "threads draining queues", 1, 64 },
	{ "ping", SP_CT_BOOL, &ping, "false", "send PING instead of APPEND (transport baseline)", 0,
	    0 },
	{ "quiet", SP_CT_BOOL, &quiet, "false", "print only the key=value result line", 0, 0 },
	{ NULL, 0, NULL, NULL, NULL, 0, 0 },
};

typedef enum { B_SEND, B_RECV } bstate;

typedef struct bctx {
	nng_ctx ctx;
	nng_aio *aio;
	bstate state;
	uint64_t sched_ns, sent_ns;
} bctx;

static nng_socket *socks;
static bctx *ctxs;
static uint8_t *payload;
static uint64_t run_id, t_start, t_end;
static _Atomic uint64_t acked, errors, issued, inflight;
static _Atomic uint32_t lat[LAT_BUCKETS + 1], svc[LAT_BUCKETS + 1];
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;

static void
record_latency(_Atomic uint32_t *h, uint64_t ns)
{
	uint64_t b = ns / LAT_BUCKET_NS;
	atomic_fetch_add_explicit(&h[b < LAT_BUCKETS ? b : LAT_BUCKETS], 1, memory_order_relaxed);
}

static double
percentile_ms(_Atomic uint32_t *h, double p)
{
	uint64_t total = 0, seen = 0;
	for (int i = 0; i <= LAT_BUCKETS; i++)
		total += h[i];
	if (!total)
		return 0;
	uint64_t want = (uint64_t)(p * (double)total);
	for (int i = 0; i <= LAT_BUCKETS; i++) {
		seen += h[i];
		if (seen > want)
			return (double)(i + 1) * LAT_BUCKET_NS / 1e6;
	}
	return (double)LAT_BUCKETS * LAT_BUCKET_NS / 1e6;
}

static void
finish_ctx(void)
{
	if (atomic_fetch_sub(&inflight, 1) == 1) {
		pthread_mutex_lock(&done_lock);
		pthread_cond_broadcast(&done_cond);
		pthread_mutex_unlock(&done_lock);
	}
}

static void
send_append(bctx *c)
{
	uint8_t msg_id[16];
	uint64_t n = atomic_fetch_add(&issued, 1);
	sp_frame f;
	nng_msg *m;

	memcpy(msg_id, &run_id, 8);
	memcpy(msg_id + 8, &n, 8);
	sp_frame_init(&f, ping ? SP_T_PING : SP_T_APPEND, n, true);
	if (ping)
		goto build;
	sp_frame_set_u64(&f, SP_F_DEVICE, 1 + (n * 2654435761u) % (uint64_t)devices);
	sp_frame_set_bin(&f, SP_F_MSG_ID, msg_id, 16);
	sp_frame_set_u64(&f, SP_F_FROM_USER, 7);
	sp_frame_set_u64(&f, SP_F_FROM_DEVICE, 70);
	sp_frame_set_u64(&f, SP_F_SERVER_TS, sp_time_ms());
	sp_frame_set_u64(&f, SP_F_ETYPE, 1);
	sp_frame_set_bin(&f, SP_F_ENV, payload, (size_t)size);
build:
	if (sp_nng_msg_from_frame(&f, &m)) {
		fprintf(stderr, "inboxbench: cannot build APPEND\n");
		exit(1);
	}
	c->sent_ns = sp_mono_ns();
	c->state = B_SEND;
	nng_aio_set_msg(c->aio, m);
	nng_ctx_send(c->ctx, c->aio);
}

/* Free contexts of the open loop, taken by the pacer. */
static bctx **free_ctx;
static int nfree;
static pthread_mutex_t free_lock = PTHREAD_MUTEX_INITIALIZER;

/* Closed loop: the next request of this context, or the end of its run. Open loop: the
 * context goes back to the pacer. */
static void
next(bctx *c)
{
	if (rate) {
		pthread_mutex_lock(&free_lock);
		free_ctx[nfree++] = c;
		pthread_mutex_unlock(&free_lock);
		finish_ctx();
		return;
	}
	uint64_t now = sp_mono_ns();
	if (now >= t_end || (count && atomic_load(&issued) >= (uint64_t)count)) {
		finish_ctx();
		return;
	}
	c->sched_ns = now;
	send_append(c);
}

/* Open loop: releases request k at t_start + k/rate on a free context. A request that
 * finds no free context waits for one; its latency still counts from its scheduled time. */
static void
pace(void)
{
	for (uint64_t k = 0;; k++) {
		uint64_t sched = t_start + (uint64_t)((double)k * 1e9 / (double)rate);
		if (sched >= t_end || (count && k >= (uint64_t)count))
			break;
		uint64_t now = sp_mono_ns();
		if (sched > now) {
			struct timespec ts = { (time_t)((sched - now) / 1000000000ULL),
				(long)((sched - now) % 1000000000ULL) };
			nanosleep(&ts, NULL);
		}
		bctx *c = NULL;
		while (!c) {
			pthread_mutex_lock(&free_lock);
			if (nfree)
				c = free_ctx[--nfree];
			pthread_mutex_unlock(&free_lock);
			if (!c)
				usleep(50);
		}
		atomic_fetch_add(&inflight, 1);
		c->sched_ns = sched;
		send_append(c);
	}
}

static void
bctx_cb(void *arg)
{
	bctx *c = arg;
	int rv = nng_aio_result(c->aio);
	switch (c->state) {
	case B_SEND:
		if (rv) {
			nng_msg_free(nng_aio_get_msg(c->aio));
			atomic_fetch_add(&errors, 1);
			finish_ctx();
			return;
		}
		c->state = B_RECV;
		nng_ctx_recv(c->ctx, c->aio);
		return;
	case B_RECV:
		if (rv) {
			atomic_fetch_add(&errors, 1);
			finish_ctx();
			return;
		}
		nng_msg *m = nng_aio_get_msg(c->aio);
		sp_frame f;
		if (sp_nng_msg_decode(m, &f) == SP_OK
		    && (f.type == SP_T_APPENDED || f.type == SP_T_PONG)) {
			uint64_t now = sp_mono_ns();
			record_latency(lat, now - c->sched_ns);
			record_latency(svc, now - c->sent_ns);
			atomic_fetch_add(&acked, 1);
		} else {
			atomic_fetch_add(&errors, 1);
		}
		sp_frame_fini(&f);
		nng_msg_free(m);
		next(c);
		return;
	}
}

static int
shard_commits(nng_socket s, uint64_t *commits)
{
	sp_frame req, rep;
	nng_msg *m = NULL;
	sp_frame_init(&req, SP_T_STAT, 1, true);
	int rc = sp_nng_call(s, &req, &m, &rep);
	if (rc == SP_OK)
		*commits = sp_frame_u64(&rep, SP_F_COMMITS);
	if (m) {
		sp_frame_fini(&rep);
		nng_msg_free(m);
	}
	return rc;
}

typedef struct drainer {
	nng_socket s;
	uint64_t first, step, entries;
	int rc;
} drainer;

static void *
drain_main(void *arg)
{
	drainer *dr = arg;
	for (uint64_t dev = dr->first; dev <= (uint64_t)devices; dev += dr->step) {
		for (;;) {
			sp_frame req, rep;
			nng_msg *m = NULL;
			sp_frame_init(&req, SP_T_FETCH, dev, true);
			sp_frame_set_u64(&req, SP_F_DEVICE, dev);
			sp_frame_set_u64(&req, SP_F_AFTER_SEQ, 0);
			sp_frame_set_u64(&req, SP_F_MAX_COUNT, 1000);
			if ((dr->rc = sp_nng_call(dr->s, &req, &m, &rep)))
				return NULL;
			uint32_t n = sp_frame_get(&rep, SP_F_ENTRIES)->rs.n;
			uint64_t last = sp_frame_u64(&rep, SP_F_LAST_SEQ);
			sp_frame_fini(&rep);
			nng_msg_free(m);
			if (n == 0)
				break;
			dr->entries += n;
			sp_frame_init(&req, SP_T_INBOX_ACK, dev, true);
			sp_frame_set_u64(&req, SP_F_DEVICE, dev);
			sp_frame_set_u64(&req, SP_F_UPTO_SEQ, last);
			m = NULL;
			if ((dr->rc = sp_nng_call(dr->s, &req, &m, &rep)))
				return NULL;
			sp_frame_fini(&rep);
			nng_msg_free(m);
		}
	}
	return NULL;
}

static double
run_drain(uint64_t *entries)
{
	drainer *dr = calloc((size_t)drain_threads, sizeof(*dr));
	pthread_t *th = calloc((size_t)drain_threads, sizeof(*th));
	uint64_t t0 = sp_mono_ns();
	if (!dr || !th) {
		fprintf(stderr, "inboxbench: out of memory\n");
		exit(1);
	}
	for (int i = 0; i < drain_threads; i++) {
		dr[i].s = socks[i % sockets];
		dr[i].first = 1 + (uint64_t)i;
		dr[i].step = (uint64_t)drain_threads;
		pthread_create(&th[i], NULL, drain_main, &dr[i]);
	}
	*entries = 0;
	for (int i = 0; i < drain_threads; i++) {
		pthread_join(th[i], NULL);
		*entries += dr[i].entries;
		if (dr[i].rc)
			fprintf(stderr, "inboxbench: drain: %s\n", sp_strerror(dr[i].rc));
	}
	free(dr);
	free(th);
	return (double)(sp_mono_ns() - t0) / 1e9;
}

int
main(int argc, char **argv)
{
	char err[256];
	uint64_t c0 = 0, c1 = 0;
	int rc;

	sp_log_init("inboxbench", SP_LOG_WARN, false);
	rc = sp_config_load("inboxbench", "inbox shard load generator", opts, argc, argv, NULL, 0,
	    NULL, err, sizeof(err));
	if (rc == SP_CONFIG_HELP)
		return 0;
	if (rc) {
		fprintf(stderr, "inboxbench: %s\n", err);
		return 2;
	}
	socks = calloc((size_t)sockets, sizeof(*socks));
	ctxs = calloc((size_t)contexts, sizeof(*ctxs));
	payload = malloc((size_t)size);
	if (!socks || !ctxs || !payload)
		return 1;
	memset(payload, 0xab, (size_t)size);
	run_id = sp_time_ms() ^ ((uint64_t)getpid() << 40);
	for (int i = 0; i < sockets; i++) {
		if ((rc = sp_nng_req_open(&socks[i], url, 10000, 5000))) {
			fprintf(stderr, "inboxbench: %s: %s\n", url, sp_strerror(rc));
			return 1;
		}
	}
	if ((rc = shard_commits(socks[0], &c0))) {
		fprintf(stderr, "inboxbench: STAT: %s\n", sp_strerror(rc));
		return 1;
	}
	for (int i = 0; i < contexts; i++) {
		bctx *c = &ctxs[i];
		if (nng_aio_alloc(&c->aio, bctx_cb, c)
		    || nng_ctx_open(&c->ctx, socks[i % sockets])) {
			fprintf(stderr, "inboxbench: cannot open context %d\n", i);
			return 1;
		}
	}
	t_start = sp_mono_ns();
	t_end = count ? UINT64_MAX : t_start + (uint64_t)seconds * 1000000000ULL;
	if (rate) {
		if (!(free_ctx = calloc((size_t)contexts, sizeof(*free_ctx))))
			return 1;
		for (int i = 0; i < contexts; i++)
			free_ctx[nfree++] = &ctxs[i];
		atomic_store(&inflight, 1); /* the pacer's own hold */
		pace();
		finish_ctx();
	} else {
		atomic_store(&inflight, (uint64_t)contexts);
		for (int i = 0; i < contexts; i++)
			next(&ctxs[i]);
	}
	pthread_mutex_lock(&done_lock);
	while (atomic_load(&inflight) > 0)
		pthread_cond_wait(&done_cond, &done_lock);
	pthread_mutex_unlock(&done_lock);
	double secs = (double)(sp_mono_ns() - t_start) / 1e9;
	shard_commits(socks[0], &c1);

	uint64_t n = atomic_load(&acked);
	double aps = (double)n / secs, cps = (double)(c1 - c0) / secs;
	double drain_s = 0, drain_rate = 0;
	uint64_t drained = 0;
	if (drain) {
		drain_s = run_drain(&drained);
		drain_rate = (double)drained / drain_s;
	}
	if (!quiet) {
		printf(
		    "mode=%s contexts=%lld sockets=%lld size=%lld devices=%lld target_rate=%lld\n",
		    rate ? "open" : "closed", contexts, sockets, size, devices, rate);
		printf("appends acked %llu in %.2fs, errors %llu\n", (unsigned long long)n, secs,
		    (unsigned long long)atomic_load(&errors));
		if (drain)
			printf("drained %llu entries in %.2fs\n", (unsigned long long)drained,
			    drain_s);
	}
	printf("appends_per_s=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f svc_p50_ms=%.3f "
	       "svc_p99_ms=%.3f commits_per_s=%.0f appends_per_commit=%.1f drain_per_s=%.0f "
	       "errors=%llu\n",
	    aps, percentile_ms(lat, 0.50), percentile_ms(lat, 0.99), percentile_ms(lat, 0.999),
	    percentile_ms(svc, 0.50), percentile_ms(svc, 0.99), cps,
	    c1 > c0 ? (double)n / (double)(c1 - c0) : 0.0, drain_rate,
	    (unsigned long long)atomic_load(&errors));
	for (int i = 0; i < contexts; i++) {
		nng_aio_stop(ctxs[i].aio);
		nng_aio_free(ctxs[i].aio);
	}
	for (int i = 0; i < sockets; i++)
		nng_close(socks[i]);
	free(socks);
	free(ctxs);
	free(free_ctx);
	free(payload);
	sp_config_free(opts);
	return atomic_load(&errors) && !n ? 1 : 0;
}
