/*
 * Delivery to connected devices. The inbox shard is the source of truth; a DELIVER pushed
 * by a peer connsrv is only a hint that lets the common case skip a fetch. Per session we
 * know the highest seq written to the client (sent_seq) and its cumulative ACK
 * (acked_seq). A pushed DELIVER that is exactly the next seq, with room in the window and
 * in the socket, is written at once; anything else (a gap, a drain in progress, a full
 * window, a slow socket) falls back to FETCH from the shard after sent_seq, so order holds
 * and nothing is duplicated. A periodic check compares each device's last stored seq with
 * sent_seq, so a lost push reaches an online device within a few check intervals.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "connsrv/internal.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"
#include "sp_time.h"

typedef struct pulled {
	nng_msg *m;
	struct pulled *next;
} pulled;

static void fetch(cs_session *s);

/* ---- writing to the client ---- */

static bool
window_full(const cs_session *s)
{
	return s->sent_seq - s->acked_seq >= (uint64_t)s->srv->cfg.window;
}

/* Writes one inbox entry (an ENTRY record or a pushed DELIVER) as DELIVER. */
static void
write_deliver(cs_session *s, const sp_frame *e)
{
	sp_frame d;
	sp_frame_init(&d, SP_T_DELIVER, 0, false);
	static const sp_field copy[] = {SP_F_SEQ,       SP_F_MSG_ID, SP_F_FROM_USER, SP_F_FROM_DEVICE,
					SP_F_SERVER_TS, SP_F_ETYPE,  SP_F_ENV,       SP_F_GROUP,
					SP_F_CT};
	for (size_t i = 0; i < sizeof(copy) / sizeof(copy[0]); i++) {
		const sp_val *v = sp_frame_get(e, copy[i]);
		if (!v)
			continue;
		const sp_field_def *fd = sp_field_def_get(copy[i]);
		if (fd->type == SP_FT_BIN)
			sp_frame_set_bin(&d, copy[i], v->b.p, v->b.len);
		else
			sp_frame_set_u64(&d, copy[i], v->u);
	}
	if (cs_session_send(s, &d) == SP_OK) {
		s->sent_seq = sp_frame_u64(e, SP_F_SEQ);
		sp_metric_inc(s->srv->m.deliveries);
	}
}

void
cs_deliver_push(cs_server *srv, const sp_frame *f)
{
	uint64_t device = sp_frame_u64(f, SP_F_DEVICE);
	cs_session *s;
	HASH_FIND(hh, srv->by_device, &device, sizeof(device), s);
	/* A stale route (the device reconnected since) must not reach the newer session. */
	if (!s || s->st != CS_ST_READY || s->closing ||
	    s->conn_epoch != sp_frame_u64(f, SP_F_CONN_EPOCH))
		return;
	uint64_t seq = sp_frame_u64(f, SP_F_SEQ);
	if (seq <= s->sent_seq)
		return; /* already written (fetched first, or a resend) */
	cs_session_ref(s); /* writing may close it */
	if (!s->fetching && seq == s->sent_seq + 1 && !window_full(s) && !cs_session_output_full(s)) {
		write_deliver(s, f);
		sp_metric_inc(srv->m.delivered_rt);
	} else {
		fetch(s);
	}
	cs_session_unref(s);
}

/* ---- fetching from the shard ---- */

typedef struct fetch_op {
	cs_session *s;
} fetch_op;

static void
on_fetched(void *arg, int rc, const sp_frame *reply)
{
	fetch_op *op = arg;
	cs_session *s = op->s;
	free(op);
	s->fetching = false;
	if (s->closing || s->st != CS_ST_READY) {
		cs_session_call_end(s);
		return;
	}
	bool more = false;
	if (rc == SP_OK) {
		const sp_val *v = sp_frame_get(reply, SP_F_ENTRIES);
		for (uint32_t i = 0; v && i < v->rs.n && !s->closing; i++) {
			if (sp_frame_u64(&v->rs.v[i], SP_F_SEQ) > s->sent_seq)
				write_deliver(s, &v->rs.v[i]);
		}
		more = sp_frame_u64(reply, SP_F_MORE) != 0;
	} else {
		/* The next check or push retries; the client is not told (nothing was lost). */
		sp_warn("fetch for device %llu failed: %s", (unsigned long long)s->device,
			sp_strerror(rc));
	}
	if (rc == SP_OK && (more || s->refetch)) {
		s->refetch = false;
		fetch(s);
	} else if (rc == SP_OK && !s->queue_empty_sent && !s->closing) {
		sp_frame q;
		sp_frame_init(&q, SP_T_QUEUE_EMPTY, 0, false);
		sp_frame_set_u64(&q, SP_F_SEQ, s->sent_seq);
		cs_session_send(s, &q);
		s->queue_empty_sent = true;
		sp_metric_inc(s->srv->m.drains);
	}
	cs_session_call_end(s);
}

static void
fetch(cs_session *s)
{
	cs_server *srv = s->srv;
	if (s->fetching) {
		s->refetch = true;
		return;
	}
	/* Paused: resumed by the client's ACK (window) or by the socket draining. */
	if (window_full(s) || cs_session_output_full(s)) {
		s->refetch = true;
		return;
	}
	char url[256];
	fetch_op *op;
	if (cs_shard_url(srv, s->device, url, sizeof(url)) || !(op = malloc(sizeof(*op))))
		return;
	op->s = s;
	sp_frame q;
	sp_frame_init(&q, SP_T_FETCH, 0, false);
	sp_frame_set_u64(&q, SP_F_DEVICE, s->device);
	sp_frame_set_u64(&q, SP_F_AFTER_SEQ, s->sent_seq);
	sp_frame_set_u64(&q, SP_F_MAX_COUNT, (uint64_t)srv->cfg.window - (s->sent_seq - s->acked_seq));
	sp_frame_set_u64(&q, SP_F_MAX_BYTES, (uint64_t)srv->cfg.out_pause_bytes);
	s->fetching = true;
	s->refetch = false;
	cs_session_call_begin(s);
	sp_metric_inc(srv->m.gap_fetches);
	if (cs_rpc_call(srv->rpc, url, &q, on_fetched, op) != SP_OK) {
		s->fetching = false;
		free(op);
		cs_session_call_end(s);
	}
}

void
cs_deliver_login(cs_session *s, uint64_t last_seq)
{
	s->sent_seq = s->acked_seq = last_seq;
	s->queue_empty_sent = false;
	fetch(s);
}

void
cs_deliver_writable(cs_session *s)
{
	if (s->st == CS_ST_READY && s->refetch && !s->fetching && !s->closing)
		fetch(s);
}

/* ---- ACK ---- */

typedef struct ack_op {
	cs_session *s;
	uint64_t upto;
} ack_op;

static void
on_acked(void *arg, int rc, const sp_frame *reply)
{
	ack_op *op = arg;
	cs_session *s = op->s;
	cs_server *srv = s->srv;
	if (rc == SP_OK) {
		const sp_val *v = sp_frame_get(reply, SP_F_DELIVERED);
		/* Receipts to each sender, one envelope per sender user. Receipts the server
		 * made (from_device 0) are not acknowledged in turn. */
		uint32_t n = v ? v->rs.n : 0;
		bool *done = n ? calloc(n, sizeof(bool)) : NULL;
		sp_bin *ids = n ? calloc(n, sizeof(sp_bin)) : NULL;
		for (uint32_t i = 0; done && ids && i < n; i++) {
			const sp_frame *r = &v->rs.v[i];
			uint64_t from_user = sp_frame_u64(r, SP_F_FROM_USER);
			if (done[i] || sp_frame_u64(r, SP_F_FROM_DEVICE) == 0)
				continue;
			uint32_t k = 0;
			for (uint32_t j = i; j < n && k < 1024; j++) {
				const sp_frame *q = &v->rs.v[j];
				if (!done[j] && sp_frame_u64(q, SP_F_FROM_USER) == from_user &&
				    sp_frame_u64(q, SP_F_FROM_DEVICE) != 0) {
					ids[k++] = sp_frame_bin(q, SP_F_MSG_ID);
					done[j] = true;
				}
			}
			cs_send_receipt(srv, s->user, s->device, from_user, SP_ETYPE_RECEIPT_DELIVERED, ids, k);
		}
		free(done);
		free(ids);
		if (sp_frame_u64(reply, SP_F_MORE) && op->upto && !s->closing) {
			/* The shard deletes in bounded steps: ask again for the rest. */
			ack_op *again = malloc(sizeof(*again));
			char url[256];
			if (again && cs_shard_url(srv, s->device, url, sizeof(url)) == SP_OK) {
				*again = *op;
				sp_frame q;
				sp_frame_init(&q, SP_T_INBOX_ACK, 0, false);
				sp_frame_set_u64(&q, SP_F_DEVICE, s->device);
				sp_frame_set_u64(&q, SP_F_UPTO_SEQ, op->upto);
				cs_session_call_begin(s);
				if (cs_rpc_call(srv->rpc, url, &q, on_acked, again) != SP_OK) {
					free(again);
					cs_session_call_end(s);
				}
			} else {
				free(again);
			}
		}
	} else {
		/* Not deleted: the entries come again on the next login; the client dedups. */
		sp_warn("ack for device %llu failed: %s", (unsigned long long)s->device, sp_strerror(rc));
	}
	free(op);
	cs_session_call_end(s);
}

void
cs_deliver_ack(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	cs_server *srv = s->srv;
	const sp_val *seqs = sp_frame_get(f, SP_F_SEQS);
	uint64_t upto = sp_frame_u64(f, SP_F_UPTO_SEQ);
	if (!upto && (!seqs || seqs->us.n == 0)) {
		cs_session_error(s, f->id, f->has_id, SP_EMISSING, "ACK needs upto_seq or seqs", NULL);
		return;
	}
	/* Only what was delivered on this connection (or before it) can be acknowledged. */
	if (upto > s->sent_seq)
		upto = s->sent_seq;
	uint64_t top = upto;
	for (uint32_t i = 0; seqs && i < seqs->us.n; i++)
		if (seqs->us.v[i] <= s->sent_seq && seqs->us.v[i] > top)
			top = seqs->us.v[i];
	sp_metric_inc(srv->m.acks);
	char url[256];
	ack_op *op = malloc(sizeof(*op));
	if (!op || cs_shard_url(srv, s->device, url, sizeof(url))) {
		free(op);
		cs_session_error(s, f->id, f->has_id, SP_EUNAVAIL, NULL, NULL);
		return;
	}
	op->s = s;
	op->upto = upto;
	sp_frame q;
	sp_frame_init(&q, SP_T_INBOX_ACK, 0, false);
	sp_frame_set_u64(&q, SP_F_DEVICE, s->device);
	if (upto)
		sp_frame_set_u64(&q, SP_F_UPTO_SEQ, upto);
	if (seqs && seqs->us.n)
		sp_frame_set_u64s(&q, SP_F_SEQS, seqs->us.v, seqs->us.n);
	cs_session_call_begin(s);
	if (cs_rpc_call(srv->rpc, url, &q, on_acked, op) != SP_OK) {
		free(op);
		cs_session_call_end(s);
	}
	if (top > s->acked_seq)
		s->acked_seq = top;
	/* A fetch postponed for any reason (window, socket, a gap seen meanwhile) resumes. */
	if (s->refetch && !s->fetching && !window_full(s))
		fetch(s);
}

/* ---- notifying the connsrvs of recipients ---- */

typedef struct notify_op {
	cs_server *srv;
	msgpack_sbuffer tmpl; /* packed DELIVER template (owned copy of the entry) */
	size_t n;
	uint64_t *devices, *seqs;
} notify_op;

static void
notify_free(notify_op *op)
{
	msgpack_sbuffer_destroy(&op->tmpl);
	free(op->devices);
	free(op);
}

static void
on_routes(void *arg, int rc, const char *const *values, size_t n)
{
	notify_op *op = arg;
	cs_server *srv = op->srv;
	sp_frame d;
	if (rc || sp_frame_decode((const uint8_t *)op->tmpl.data, op->tmpl.size, &d) != SP_OK) {
		notify_free(op);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		const char *bar = values[i] ? strrchr(values[i], '|') : NULL;
		if (!bar)
			continue; /* offline: the device drains its inbox when it connects */
		char url[256];
		size_t len = (size_t)(bar - values[i]);
		if (len >= sizeof(url))
			continue;
		memcpy(url, values[i], len);
		url[len] = '\0';
		sp_frame_set_u64(&d, SP_F_SEQ, op->seqs[i]);
		sp_frame_set_u64(&d, SP_F_DEVICE, op->devices[i]);
		sp_frame_set_u64(&d, SP_F_CONN_EPOCH, strtoull(bar + 1, NULL, 10));
		if (strcmp(url, srv->pull_url) == 0)
			cs_deliver_push(srv, &d);
		else
			cs_rpc_push(srv->rpc, url, &d);
	}
	sp_frame_fini(&d);
	notify_free(op);
}

void
cs_deliver_notify(cs_server *srv, const sp_frame *entry, const uint64_t *devices,
		  const uint64_t *seqs, size_t n)
{
	if (n == 0)
		return;
	notify_op *op = calloc(1, sizeof(*op));
	if (!op)
		return;
	op->srv = srv;
	op->n = n;
	msgpack_sbuffer_init(&op->tmpl);
	op->devices = malloc(2 * n * sizeof(uint64_t));
	if (!op->devices || sp_frame_pack(entry, &op->tmpl) != SP_OK) {
		notify_free(op);
		return;
	}
	op->seqs = op->devices + n;
	memcpy(op->devices, devices, n * sizeof(uint64_t));
	memcpy(op->seqs, seqs, n * sizeof(uint64_t));
	if (cs_routes_lookup(srv->routes, devices, n, on_routes, op) != SP_OK)
		notify_free(op);
}

/* ---- the pull socket: DELIVER and KICK from peers ---- */

typedef struct pull_q {
	pthread_mutex_t lock;
	pulled *head, *tail;
} pull_q;

static void
on_pull_aio(void *arg)
{
	cs_server *srv = arg;
	if (nng_aio_result(srv->pull_aio) != 0)
		return; /* closed (shutdown) */
	pulled *p = malloc(sizeof(*p));
	nng_msg *m = nng_aio_get_msg(srv->pull_aio);
	if (p) {
		pull_q *q = srv->pull_lock;
		p->m = m;
		p->next = NULL;
		pthread_mutex_lock(&q->lock);
		if (q->tail)
			q->tail->next = p;
		else
			q->head = p;
		q->tail = p;
		pthread_mutex_unlock(&q->lock);
		event_active(srv->pull_ev, EV_READ, 0);
	} else {
		nng_msg_free(m);
	}
	nng_recv_aio(srv->pull, srv->pull_aio);
}

static void
on_pull_ready(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_server *srv = arg;
	pull_q *q = srv->pull_lock;
	pthread_mutex_lock(&q->lock);
	pulled *p = q->head;
	q->head = q->tail = NULL;
	pthread_mutex_unlock(&q->lock);
	while (p) {
		pulled *next = p->next;
		sp_frame f;
		if (sp_nng_msg_decode(p->m, &f) == SP_OK) {
			if (f.type == SP_T_DELIVER && sp_frame_has(&f, SP_F_DEVICE))
				cs_deliver_push(srv, &f);
			else if (f.type == SP_T_KICK)
				cs_auth_kick(srv, sp_frame_u64(&f, SP_F_DEVICE), sp_frame_u64(&f, SP_F_CONN_EPOCH));
			sp_frame_fini(&f);
		}
		nng_msg_free(p->m);
		free(p);
		p = next;
	}
}

/* ---- periodic work: lost-push check, route refresh ---- */

/* One LAST_SEQS call: up to CHECK_BATCH sessions whose devices live on one shard. */
#define CHECK_BATCH 1024
#define CHECK_SHARDS 64

typedef struct check_batch {
	char url[256];
	uint32_t n;
	cs_session *s[CHECK_BATCH];
	uint64_t devices[CHECK_BATCH];
} check_batch;

static void
on_last_seqs(void *arg, int rc, const sp_frame *reply)
{
	check_batch *b = arg;
	const sp_val *v = rc == SP_OK ? sp_frame_get(reply, SP_F_SEQ_LIST) : NULL;
	if (v && v->us.n != b->n)
		v = NULL;
	for (uint32_t i = 0; i < b->n; i++) {
		cs_session *s = b->s[i];
		s->checking = false;
		if (v && !s->closing && s->st == CS_ST_READY && s->device == b->devices[i] &&
		    v->us.v[i] > s->sent_seq) {
			sp_metric_inc(s->srv->m.checks);
			fetch(s);
		}
		cs_session_call_end(s);
	}
	free(b);
}

static void
check_send(cs_server *srv, check_batch *b)
{
	sp_frame q;
	sp_frame_init(&q, SP_T_LAST_SEQS, 0, false);
	sp_frame_set_u64s(&q, SP_F_DEVICES, b->devices, b->n);
	if (cs_rpc_call(srv->rpc, b->url, &q, on_last_seqs, b) != SP_OK)
		on_last_seqs(b, SP_EUNAVAIL, NULL);
}

/* Asks each shard, in one call per 1024 devices, for the last stored seq of the connected
 * devices it owns; any device behind is fetched. This is what bounds the delay of a
 * message whose push was lost. */
static void
on_check_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_server *srv = arg;
	check_batch *batches[CHECK_SHARDS];
	int nb = 0;
	long long budget = srv->cfg.check_per_tick;
	cs_session *s = srv->check_cursor ? srv->check_cursor : srv->sessions;
	for (; s && budget > 0; s = s->next) {
		/* A session with a fetch in flight sees the shard anyway. */
		if (s->st != CS_ST_READY || s->fetching || s->checking || s->closing || window_full(s))
			continue;
		char url[256];
		if (cs_shard_url(srv, s->device, url, sizeof(url)) != SP_OK)
			continue;
		int k = 0;
		while (k < nb && strcmp(batches[k]->url, url) != 0)
			k++;
		if (k == nb) {
			if (nb == CHECK_SHARDS || !(batches[nb] = calloc(1, sizeof(check_batch))))
				break;
			memcpy(batches[nb]->url, url, sizeof(url));
			nb++;
		}
		check_batch *b = batches[k];
		s->checking = true;
		cs_session_call_begin(s);
		b->s[b->n] = s;
		b->devices[b->n++] = s->device;
		budget--;
		if (b->n == CHECK_BATCH) {
			check_send(srv, b);
			batches[k] = batches[--nb];
		}
	}
	srv->check_cursor = s;
	for (int k = 0; k < nb; k++)
		check_send(srv, batches[k]);
}

static void
on_refresh_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_server *srv = arg;
	char value[300];
	for (cs_session *s = srv->sessions; s; s = s->next) {
		if (s->st != CS_ST_READY)
			continue;
		cs_auth_route_value(s, value, sizeof(value));
		cs_routes_refresh(srv->routes, s->device, value);
	}
}

int
cs_deliver_start(cs_server *srv)
{
	pull_q *q = calloc(1, sizeof(*q));
	if (!q)
		return SP_ENOMEM;
	pthread_mutex_init(&q->lock, NULL);
	srv->pull_lock = q;
	int rc = sp_nng_pull_listen(&srv->pull, srv->pull_listen);
	if (rc) {
		sp_error("cannot listen on %s: %s", srv->pull_listen, sp_strerror(rc));
		return rc;
	}
	srv->pull_ev = event_new(srv->base, -1, 0, on_pull_ready, srv);
	if (!srv->pull_ev || nng_aio_alloc(&srv->pull_aio, on_pull_aio, srv))
		return SP_ENOMEM;
	nng_recv_aio(srv->pull, srv->pull_aio);

	struct timeval ci = {srv->cfg.check_interval_ms / 1000, (srv->cfg.check_interval_ms % 1000) * 1000};
	struct timeval ri = {srv->cfg.route_ttl_s / 3 > 0 ? srv->cfg.route_ttl_s / 3 : 1, 0};
	srv->check_ev = event_new(srv->base, -1, EV_PERSIST, on_check_tick, srv);
	srv->refresh_ev = event_new(srv->base, -1, EV_PERSIST, on_refresh_tick, srv);
	if (!srv->check_ev || !srv->refresh_ev)
		return SP_ENOMEM;
	event_add(srv->check_ev, &ci);
	event_add(srv->refresh_ev, &ri);
	return SP_OK;
}

void
cs_deliver_stop(cs_server *srv)
{
	if (srv->pull_aio) {
		nng_aio_stop(srv->pull_aio);
		nng_aio_free(srv->pull_aio);
		srv->pull_aio = NULL;
	}
	nng_close(srv->pull);
	if (srv->pull_ev) {
		on_pull_ready(-1, 0, srv); /* frees what was queued */
		event_free(srv->pull_ev);
		srv->pull_ev = NULL;
	}
	if (srv->check_ev)
		event_free(srv->check_ev);
	if (srv->refresh_ev)
		event_free(srv->refresh_ev);
	srv->check_ev = srv->refresh_ev = NULL;
	pull_q *q = srv->pull_lock;
	if (q) {
		pthread_mutex_destroy(&q->lock);
		free(q);
		srv->pull_lock = NULL;
	}
}
