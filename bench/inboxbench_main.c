/*
 * inboxbench: drives one inbox shard with many concurrent appenders (NNG REQ contexts
 * over a few sockets) and reports durable appends/s, append latency percentiles,
 * commits/s (the shard's COMMITS counter from STAT) and the fetch+ack drain rate.
 *
 * Closed loop (rate 0): every context sends its next APPEND as soon as the previous one
 * is acknowledged. Open loop (rate R): requests are scheduled at a fixed total rate and
 * latency is measured from the scheduled time, so a stalled shard shows as latency rather
 * than as a lower request rate.
 *
 * With --batch N > 1 the `contexts` are logical appenders instead (same closed and open
 * loops, one append each), coalesced the way connsrv would coalesce one event-loop pass:
 * an append that is ready joins its socket's queue, and a request context of that socket
 * that is free takes up to N queued appends and sends them as one APPEND_MULTI. Each
 * append's latency counts from its own ready (or scheduled) time to the reply of the
 * request that carried it.
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
static long long contexts, sockets, seconds, size, devices, rate, count, drain_threads, batch,
    requests_per_socket;
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
	{ "batch", SP_CT_INT, &batch, "1",
	    "appends per request: over 1, ready appends are coalesced per socket into "
	    "APPEND_MULTI requests of up to this many",
	    1, 256 },
	{ "requests", SP_CT_INT, &requests_per_socket, "0",
	    "with batch > 1: APPEND_MULTI requests in flight per socket (0: enough for every "
	    "appender); fewer makes appends queue behind a request in flight and coalesce, like "
	    "a caller that sends once per event-loop pass",
	    0, 65536 },
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

/* The fields of append number n (an APPEND or an APPEND_ITEM); f borrows msg_id. */
static void
append_fields(sp_frame *f, uint64_t n, uint8_t msg_id[16])
{
	memcpy(msg_id, &run_id, 8);
	memcpy(msg_id + 8, &n, 8);
	sp_frame_set_u64(f, SP_F_DEVICE, 1 + (n * 2654435761u) % (uint64_t)devices);
	sp_frame_set_bin(f, SP_F_MSG_ID, msg_id, 16);
	sp_frame_set_u64(f, SP_F_FROM_USER, 7);
	sp_frame_set_u64(f, SP_F_FROM_DEVICE, 70);
	sp_frame_set_u64(f, SP_F_SERVER_TS, sp_time_ms());
	sp_frame_set_u64(f, SP_F_ETYPE, 1);
	sp_frame_set_bin(f, SP_F_ENV, payload, (size_t)size);
}

static void
send_append(bctx *c)
{
	uint8_t msg_id[16];
	uint64_t n = atomic_fetch_add(&issued, 1);
	sp_frame f;
	nng_msg *m;

	sp_frame_init(&f, ping ? SP_T_PING : SP_T_APPEND, n, true);
	if (!ping)
		append_fields(&f, n, msg_id);
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

/* Open loop: releases append k at t_start + k/rate through `release`, which returns false
 * while nothing is free to carry it; the append then waits, and its latency still counts
 * from its scheduled time. */
static void
pace(bool (*release)(uint64_t k, uint64_t sched))
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
		while (!release(k, sched))
			usleep(50);
	}
}

/* One APPEND per request: append k goes on a free context. */
static bool
release_ctx(uint64_t k, uint64_t sched)
{
	bctx *c = NULL;
	(void)k;
	pthread_mutex_lock(&free_lock);
	if (nfree)
		c = free_ctx[--nfree];
	pthread_mutex_unlock(&free_lock);
	if (!c)
		return false;
	atomic_fetch_add(&inflight, 1);
	c->sched_ns = sched;
	send_append(c);
	return true;
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

/* ---- --batch > 1: appenders coalesced into APPEND_MULTI requests ---- */

typedef struct bsock bsock;

typedef struct appender {
	struct appender *next; /* in a socket's ready queue */
	bsock *home;           /* closed loop: the socket it uses */
	uint64_t n;            /* append number: msg id and device */
	uint64_t sched_ns;     /* ready (closed) or scheduled (open) time */
} appender;

typedef struct breq {
	bsock *sock;
	nng_ctx ctx;
	nng_aio *aio;
	bstate state;
	uint64_t sent_ns;
	uint32_t n;        /* appends carried */
	appender **items;  /* [batch] */
	sp_frame *frames;  /* [batch], borrowed by the request while it is packed */
	uint8_t (*ids)[16]; /* [batch] */
} breq;

struct bsock {
	pthread_mutex_t lock;
	appender *head, *tail; /* ready appends, oldest first */
	breq **idle;
	int nidle;
};

static bsock *bsocks;
static appender *apps;
static breq *reqs;
static int nreqs;
static appender **free_app; /* open loop: appenders the pacer may schedule */
static int nfree_app;
static _Atomic uint64_t requests, items_sent;

static void
enqueue(bsock *s, appender *a)
{
	a->next = NULL;
	pthread_mutex_lock(&s->lock);
	if (s->tail)
		s->tail->next = a;
	else
		s->head = a;
	s->tail = a;
	pthread_mutex_unlock(&s->lock);
}

static void
send_multi(breq *r)
{
	sp_frame f;
	nng_msg *m;

	for (uint32_t i = 0; i < r->n; i++) {
		sp_frame_init(&r->frames[i], SP_T_APPEND_ITEM, 0, false);
		append_fields(&r->frames[i], r->items[i]->n, r->ids[i]);
	}
	sp_frame_init(&f, SP_T_APPEND_MULTI, r->items[0]->n, true);
	sp_frame_set_recs(&f, SP_F_APPEND_ITEMS, r->frames, r->n);
	if (sp_nng_msg_from_frame(&f, &m)) {
		fprintf(stderr, "inboxbench: cannot build APPEND_MULTI\n");
		exit(1);
	}
	atomic_fetch_add(&requests, 1);
	atomic_fetch_add(&items_sent, r->n);
	r->sent_ns = sp_mono_ns();
	r->state = B_SEND;
	nng_aio_set_msg(r->aio, m);
	nng_ctx_send(r->ctx, r->aio);
}

/* Sends what is queued on `s` while it has free request contexts, up to batch appends
 * each. */
static void
pump(bsock *s)
{
	for (;;) {
		breq *r = NULL;
		pthread_mutex_lock(&s->lock);
		if (s->head && s->nidle) {
			r = s->idle[--s->nidle];
			for (r->n = 0; s->head && r->n < batch; r->n++) {
				r->items[r->n] = s->head;
				s->head = s->head->next;
			}
			if (!s->head)
				s->tail = NULL;
		}
		pthread_mutex_unlock(&s->lock);
		if (!r)
			return;
		send_multi(r);
	}
}

/* Closed loop: queues the appender's next append (ready now), or ends its run. */
static void
app_next(appender *a)
{
	uint64_t now = sp_mono_ns();
	if (now < t_end) {
		uint64_t k = atomic_fetch_add(&issued, 1);
		if (!count || k < (uint64_t)count) {
			a->n = k;
			a->sched_ns = now;
			enqueue(a->home, a);
			return;
		}
	}
	finish_ctx();
}

/* The request's appends are answered (results[i] for items[i]; NULL: all failed, `lost`
 * when the transport failed). Closed loop: each appender goes on, except after a
 * transport failure (as a failed context stops in the single-append mode); open loop:
 * they go back to the pacer. Then the context takes what is queued. */
static void
breq_done(breq *r, const sp_val *results, bool lost)
{
	uint64_t now = sp_mono_ns();
	for (uint32_t i = 0; i < r->n; i++) {
		appender *a = r->items[i];
		if (results && !sp_frame_has(&results->rs.v[i], SP_F_CODE)) {
			record_latency(lat, now - a->sched_ns);
			record_latency(svc, now - r->sent_ns);
			atomic_fetch_add(&acked, 1);
		} else {
			atomic_fetch_add(&errors, 1);
		}
		if (rate) {
			pthread_mutex_lock(&free_lock);
			free_app[nfree_app++] = a;
			pthread_mutex_unlock(&free_lock);
			finish_ctx();
		} else if (lost) {
			finish_ctx();
		} else {
			app_next(a);
		}
	}
	pthread_mutex_lock(&r->sock->lock);
	r->sock->idle[r->sock->nidle++] = r;
	pthread_mutex_unlock(&r->sock->lock);
	pump(r->sock);
}

static void
breq_cb(void *arg)
{
	breq *r = arg;
	int rv = nng_aio_result(r->aio);
	if (r->state == B_SEND) {
		if (rv) {
			nng_msg_free(nng_aio_get_msg(r->aio));
			breq_done(r, NULL, true);
			return;
		}
		r->state = B_RECV;
		nng_ctx_recv(r->ctx, r->aio);
		return;
	}
	if (rv) {
		breq_done(r, NULL, true);
		return;
	}
	nng_msg *m = nng_aio_get_msg(r->aio);
	sp_frame f;
	if (sp_nng_msg_decode(m, &f) == SP_OK) {
		const sp_val *v = f.type == SP_T_APPENDED_MULTI ? sp_frame_get(&f, SP_F_RESULTS) : NULL;
		breq_done(r, v && v->rs.n == r->n ? v : NULL, false);
		sp_frame_fini(&f);
	} else {
		breq_done(r, NULL, false);
	}
	nng_msg_free(m);
}

/* Allocates the sockets' queues, the appenders and ceil(appenders of the socket / batch)
 * request contexts per socket (at least one): enough to have every appender in flight. */
static int
batch_setup(void)
{
	bsocks = calloc((size_t)sockets, sizeof(*bsocks));
	apps = calloc((size_t)contexts, sizeof(*apps));
	reqs = calloc((size_t)(contexts + sockets), sizeof(*reqs));
	free_app = calloc((size_t)contexts, sizeof(*free_app));
	if (!bsocks || !apps || !reqs || !free_app)
		return SP_ENOMEM;
	for (int s = 0; s < sockets; s++) {
		long long napps = (contexts - s + sockets - 1) / sockets;
		int nr = napps > batch ? (int)((napps + batch - 1) / batch) : 1;
		if (requests_per_socket)
			nr = (int)requests_per_socket;
		pthread_mutex_init(&bsocks[s].lock, NULL);
		if (!(bsocks[s].idle = calloc((size_t)nr, sizeof(breq *))))
			return SP_ENOMEM;
		for (int i = 0; i < nr; i++) {
			breq *r = &reqs[nreqs++];
			r->sock = &bsocks[s];
			r->items = calloc((size_t)batch, sizeof(*r->items));
			r->frames = calloc((size_t)batch, sizeof(*r->frames));
			r->ids = calloc((size_t)batch, sizeof(*r->ids));
			if (!r->items || !r->frames || !r->ids || nng_aio_alloc(&r->aio, breq_cb, r)
			    || nng_ctx_open(&r->ctx, socks[s]))
				return SP_ENOMEM;
			bsocks[s].idle[bsocks[s].nidle++] = r;
		}
	}
	for (int i = 0; i < contexts; i++) {
		apps[i].home = &bsocks[i % sockets];
		if (rate)
			free_app[nfree_app++] = &apps[i];
	}
	return SP_OK;
}

/* Batching: append k takes a free appender and is queued on socket k % sockets. */
static bool
release_app(uint64_t k, uint64_t sched)
{
	appender *a = NULL;
	pthread_mutex_lock(&free_lock);
	if (nfree_app)
		a = free_app[--nfree_app];
	pthread_mutex_unlock(&free_lock);
	if (!a)
		return false;
	atomic_fetch_add(&inflight, 1);
	a->n = atomic_fetch_add(&issued, 1);
	a->sched_ns = sched;
	enqueue(&bsocks[k % (uint64_t)sockets], a);
	pump(&bsocks[k % (uint64_t)sockets]);
	return true;
}

static void
batch_run(void)
{
	if (rate) {
		atomic_store(&inflight, 1); /* the pacer's own hold */
		pace(release_app);
		finish_ctx();
		return;
	}
	atomic_store(&inflight, (uint64_t)contexts);
	for (int i = 0; i < contexts; i++)
		app_next(&apps[i]);
	for (int s = 0; s < sockets; s++)
		pump(&bsocks[s]);
}

static void
batch_free(void)
{
	for (int i = 0; i < nreqs; i++) {
		nng_aio_stop(reqs[i].aio);
		nng_aio_free(reqs[i].aio);
		free(reqs[i].items);
		free(reqs[i].frames);
		free(reqs[i].ids);
	}
	for (int s = 0; bsocks && s < sockets; s++) {
		pthread_mutex_destroy(&bsocks[s].lock);
		free(bsocks[s].idle);
	}
	free(reqs);
	free(bsocks);
	free(apps);
	free(free_app);
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
	/* An APPEND_ITEM is the envelope plus at most ~110 bytes of keys and values. */
	if (batch > 1 && (ping || (size_t)batch * (size_t)(size + 128) + 64 > sp_frame_limit_large())) {
		fprintf(stderr, "inboxbench: --batch > 1 needs APPENDs (not --ping) and "
				"batch * (size + 128) under the %zu-byte frame limit\n",
		    sp_frame_limit_large());
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
	for (int i = 0; batch == 1 && i < contexts; i++) {
		bctx *c = &ctxs[i];
		if (nng_aio_alloc(&c->aio, bctx_cb, c)
		    || nng_ctx_open(&c->ctx, socks[i % sockets])) {
			fprintf(stderr, "inboxbench: cannot open context %d\n", i);
			return 1;
		}
	}
	if (batch > 1 && batch_setup()) {
		fprintf(stderr, "inboxbench: cannot set up the request contexts\n");
		return 1;
	}
	t_start = sp_mono_ns();
	t_end = count ? UINT64_MAX : t_start + (uint64_t)seconds * 1000000000ULL;
	if (batch > 1) {
		batch_run();
	} else if (rate) {
		if (!(free_ctx = calloc((size_t)contexts, sizeof(*free_ctx))))
			return 1;
		for (int i = 0; i < contexts; i++)
			free_ctx[nfree++] = &ctxs[i];
		atomic_store(&inflight, 1); /* the pacer's own hold */
		pace(release_ctx);
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
		printf("mode=%s contexts=%lld sockets=%lld size=%lld devices=%lld target_rate=%lld",
		    rate ? "open" : "closed", contexts, sockets, size, devices, rate);
		if (batch > 1)
			printf(" batch=%lld request_contexts=%d", batch, nreqs);
		printf("\n");
		printf("appends acked %llu in %.2fs, errors %llu\n", (unsigned long long)n, secs,
		    (unsigned long long)atomic_load(&errors));
		if (drain)
			printf("drained %llu entries in %.2fs\n", (unsigned long long)drained,
			    drain_s);
	}
	printf("appends_per_s=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f svc_p50_ms=%.3f "
	       "svc_p99_ms=%.3f commits_per_s=%.0f appends_per_commit=%.1f drain_per_s=%.0f "
	       "errors=%llu",
	    aps, percentile_ms(lat, 0.50), percentile_ms(lat, 0.99), percentile_ms(lat, 0.999),
	    percentile_ms(svc, 0.50), percentile_ms(svc, 0.99), cps,
	    c1 > c0 ? (double)n / (double)(c1 - c0) : 0.0, drain_rate,
	    (unsigned long long)atomic_load(&errors));
	if (batch > 1) {
		uint64_t nreq = atomic_load(&requests);
		printf(" batch=%lld items_per_request=%.1f", batch,
		    nreq ? (double)atomic_load(&items_sent) / (double)nreq : 0.0);
	}
	printf("\n");
	for (int i = 0; batch == 1 && i < contexts; i++) {
		nng_aio_stop(ctxs[i].aio);
		nng_aio_free(ctxs[i].aio);
	}
	batch_free();
	for (int i = 0; i < sockets; i++)
		nng_close(socks[i]);
	free(socks);
	free(ctxs);
	free(free_ctx);
	free(payload);
	sp_config_free(opts);
	return atomic_load(&errors) && !n ? 1 : 0;
}
