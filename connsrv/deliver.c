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
#include <stdlib.h>

#include "connsrv/deliver.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

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
	SP_ASSERT(!s->closing);
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
	/* A stale route (the device reconnected since) must not reach the newer session; the
	 * device's current session fetches the entry itself. */
	if (!s || s->st != CS_ST_READY || s->closing ||
	    s->conn_epoch != sp_frame_u64(f, SP_F_CONN_EPOCH)) {
		sp_metric_inc(srv->m.pushes_stale);
		return;
	}
	uint64_t seq = sp_frame_u64(f, SP_F_SEQ);
	if (seq <= s->sent_seq)
		return; /* already written (fetched first, or a resend) */
	if (!s->fetching && seq == s->sent_seq + 1 && !window_full(s) && !cs_session_output_full(s)) {
		write_deliver(s, f);
		sp_metric_inc(srv->m.delivered_rt);
	} else {
		fetch(s);
	}
}

/* ---- fetching from the shard ---- */

typedef struct fetch_op {
	cs_session *s;
} fetch_op;

/* A fetch that could not be made or failed: the periodic check or the next push retries. */
static void
fetch_dropped(cs_session *s, int rc)
{
	sp_metric_inc(s->srv->m.fetches_dropped);
	sp_warn_rl("fetch for device %llu failed: %s", (unsigned long long)s->device, sp_strerror(rc));
}

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
		fetch_dropped(s, rc);
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
	fetch_op *op = NULL;
	int rc = cs_members_shard_url(srv, s->device, url, sizeof(url));
	if (rc || !(op = malloc(sizeof(*op)))) {
		fetch_dropped(s, rc ? rc : SP_ENOMEM);
		return;
	}
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
	if ((rc = cs_shardcall_devices(srv->shards, url, &s->device, 1, &q, on_fetched, op)) != SP_OK) {
		s->fetching = false;
		free(op);
		fetch_dropped(s, rc);
		cs_session_call_end(s);
	}
}

void
cs_deliver_login(cs_session *s, uint64_t last_seq)
{
	/* last_seq is the client's word, and an ACK deletes (and makes DELIVERED receipts for)
	 * entries up to what was delivered. So delivery starts at the oldest stored entry: what
	 * the client already has comes again (it dedups and ACKs it), and nothing it was never
	 * sent can be ACKed. last_seq is kept only to recognise the client's re-ACK of it. */
	s->sent_seq = s->acked_seq = 0;
	s->claimed_seq = last_seq;
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

/* A cumulative ACK (upto only: what clients send) is sent to the shard at most once at a
 * time per session. ACKs the client sends meanwhile only raise s->ack_next, which leaves
 * when the one in flight is answered: under load one INBOX_ACK (one NNG request, one
 * replicated op) covers many client ACKs, and with no load none waits. An ACK naming
 * single seqs is sent at once, as itself. */
typedef struct ack_op {
	cs_session *s;
	uint64_t upto;
	bool cumulative; /* the session's one cumulative ACK in flight (s->ack_sending) */
} ack_op;

/* Not deleted: the entries come again on the next login; the client dedups. */
static void
ack_dropped(cs_session *s, int rc)
{
	sp_metric_inc(s->srv->m.acks_dropped);
	sp_warn_rl("ack for device %llu failed: %s", (unsigned long long)s->device, sp_strerror(rc));
}

static void on_acked(void *arg, int rc, const sp_frame *reply);

/* Sends INBOX_ACK {upto, seqs} for the session's device; the call holds the session.
 * *unsent (may be NULL) tells a failure before the call (no shard known, no memory) from
 * the call's own. */
static int
send_ack(cs_session *s, uint64_t upto, const uint64_t *seqs, uint32_t nseqs, bool cumulative,
	 bool *unsent)
{
	cs_server *srv = s->srv;
	char url[256];
	ack_op *op = malloc(sizeof(*op));
	int rc = op ? cs_members_shard_url(srv, s->device, url, sizeof(url)) : SP_ENOMEM;
	if (unsent)
		*unsent = rc != SP_OK;
	if (rc != SP_OK) {
		free(op);
		return rc;
	}
	op->s = s;
	op->upto = upto;
	op->cumulative = cumulative;
	sp_frame q;
	sp_frame_init(&q, SP_T_INBOX_ACK, 0, false);
	sp_frame_set_u64(&q, SP_F_DEVICE, s->device);
	if (upto)
		sp_frame_set_u64(&q, SP_F_UPTO_SEQ, upto);
	if (nseqs)
		sp_frame_set_u64s(&q, SP_F_SEQS, seqs, nseqs);
	cs_session_call_begin(s);
	if ((rc = cs_shardcall_devices(srv->shards, url, &s->device, 1, &q, on_acked, op)) != SP_OK) {
		free(op);
		cs_session_call_end(s);
		return rc;
	}
	if (cumulative)
		s->ack_sending = true;
	return SP_OK;
}

static void
on_acked(void *arg, int rc, const sp_frame *reply)
{
	ack_op *op = arg;
	cs_session *s = op->s;
	cs_server *srv = s->srv;
	/* The shard deletes in bounded steps: with MORE, the rest is asked for again (not once
	 * the session is closing: it comes again on the next login). */
	bool more = false;
	if (rc == SP_OK) {
		srv->ops->acked(s, reply);
		more = sp_frame_u64(reply, SP_F_MORE) && op->upto && !s->closing;
	} else {
		ack_dropped(s, rc);
	}
	uint64_t again = more ? op->upto : 0;
	if (op->cumulative) {
		s->ack_sending = false;
		/* What the client acknowledged meanwhile leaves now, even from a closing session:
		 * the client has those entries. */
		if (s->ack_next > again)
			again = s->ack_next;
		s->ack_next = 0;
	}
	if (again) {
		int arc = send_ack(s, again, NULL, 0, op->cumulative, NULL);
		if (arc != SP_OK)
			ack_dropped(s, arc);
	}
	free(op);
	cs_session_call_end(s);
}

/* Refuses an ACK that names an entry beyond what this session delivered and beyond
 * AUTH's last_seq: nothing of it is deleted. */
static void
ack_refuse(cs_session *s, const sp_frame *f, uint64_t seq)
{
	sp_metric_inc(s->srv->m.acks_refused);
	sp_warn_rl("device %llu ACKed seq %llu, beyond what was delivered (%llu): refused",
		   (unsigned long long)s->device, (unsigned long long)seq,
		   (unsigned long long)s->sent_seq);
	cs_session_error(s, f->id, f->has_id, SP_ERANGE, "ACK beyond what was delivered", NULL);
}

void
cs_deliver_ack(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	cs_server *srv = s->srv;
	const sp_val *seqs = sp_frame_get(f, SP_F_SEQS);
	uint64_t upto = sp_frame_u64(f, SP_F_UPTO_SEQ);
	uint32_t nseqs = seqs ? seqs->us.n : 0;
	if (!upto && nseqs == 0) {
		cs_session_error(s, f->id, f->has_id, SP_EMISSING, "ACK needs upto_seq or seqs", NULL);
		return;
	}
	/* Only what was delivered on this session can be acknowledged: every stored entry at
	 * or below sent_seq was written here. A seq up to AUTH's last_seq but not delivered
	 * yet is the client re-ACKing what it had (its first ACK may have been lost): it is
	 * left out quietly, and the entry is acknowledged when it comes again. Anything beyond
	 * both is refused whole. */
	uint64_t bound = s->sent_seq > s->claimed_seq ? s->sent_seq : s->claimed_seq;
	if (upto > bound) {
		ack_refuse(s, f, upto);
		return;
	}
	for (uint32_t i = 0; i < nseqs; i++) {
		if (seqs->us.v[i] > bound) {
			ack_refuse(s, f, seqs->us.v[i]);
			return;
		}
	}
	bool clamped = upto > s->sent_seq;
	if (clamped)
		upto = s->sent_seq;
	uint64_t *keep = nseqs ? malloc(nseqs * sizeof(uint64_t)) : NULL;
	uint32_t nkeep = 0;
	if (nseqs && !keep) {
		cs_session_error(s, f->id, f->has_id, SP_ENOMEM, NULL, NULL);
		return;
	}
	uint64_t top = upto;
	for (uint32_t i = 0; i < nseqs; i++) {
		uint64_t q = seqs->us.v[i];
		if (q > s->sent_seq) {
			clamped = true;
			continue;
		}
		if (q == 0 || q <= upto)
			continue; /* covered by upto (or names no entry) */
		keep[nkeep++] = q;
		if (q > top)
			top = q;
	}
	sp_metric_inc(srv->m.acks);
	if (clamped)
		sp_metric_inc(srv->m.acks_clamped);
	if (!upto && nkeep == 0) {
		free(keep);
		return; /* nothing delivered here was named */
	}
	bool cumulative = nkeep == 0;
	if (cumulative && s->ack_sending) {
		/* Leaves when the one in flight is answered (on_acked). */
		if (upto > s->ack_next)
			s->ack_next = upto;
		sp_metric_inc(srv->m.acks_merged);
		free(keep);
	} else {
		bool unsent;
		int rc = send_ack(s, upto, keep, nkeep, cumulative, &unsent);
		free(keep);
		if (unsent) {
			cs_session_error(s, f->id, f->has_id, SP_EUNAVAIL, NULL, NULL);
			return;
		}
		if (rc != SP_OK)
			ack_dropped(s, rc);
	}
	if (top > s->acked_seq)
		s->acked_seq = top;
	/* A fetch postponed for any reason (window, socket, a gap seen meanwhile) resumes. */
	if (s->refetch && !s->fetching && !window_full(s))
		fetch(s);
}

/* ---- periodic work: the lost-push check ---- */

/* One LAST_SEQS call: up to CHECK_BATCH sessions whose devices live on one shard. */
#define CHECK_BATCH 1024
#define CHECK_SHARDS 64

typedef struct check_batch {
	const sp_cluster_member *shard; /* of the tick's map snapshot: read while it is held */
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
	if (!v && b->n) {
		/* The next tick checks these devices again; until then a lost push waits. */
		sp_metric_inc(b->s[0]->srv->m.checks_failed);
		sp_warn_rl("lost-push check of %u devices failed: %s", b->n,
			   sp_strerror(rc ? rc : SP_EPROTO));
	}
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
	if (cs_shardcall_devices(srv->shards, b->shard->addr, b->devices, b->n, &q, on_last_seqs, b) !=
	    SP_OK)
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
	/* One map snapshot for the tick: sessions are grouped by shard member, and an address
	 * is read only when a batch is sent (before the snapshot is put). */
	sp_cluster_map *map = sp_cluster_map_get(srv->cluster);
	if (!map)
		return;
	cs_session *s = srv->check_cursor ? srv->check_cursor : srv->sessions;
	for (; s && budget > 0; s = s->next) {
		/* A session with a fetch in flight sees the shard anyway. */
		if (s->st != CS_ST_READY || s->fetching || s->checking || s->closing || window_full(s))
			continue;
		const sp_cluster_member *shard = sp_cluster_map_shard_for(map, s->device);
		if (!shard)
			continue;
		int k = 0;
		while (k < nb && batches[k]->shard != shard)
			k++;
		if (k == nb) {
			if (nb == CHECK_SHARDS || !(batches[nb] = calloc(1, sizeof(check_batch))))
				break;
			batches[nb]->shard = shard;
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
	sp_cluster_map_put(map);
}

int
cs_deliver_start(cs_server *srv)
{
	struct timeval ci = {srv->cfg.check_interval_ms / 1000,
			     (srv->cfg.check_interval_ms % 1000) * 1000};
	srv->check_ev = event_new(srv->base, -1, EV_PERSIST, on_check_tick, srv);
	if (!srv->check_ev)
		return SP_ENOMEM;
	event_add(srv->check_ev, &ci);
	return SP_OK;
}

void
cs_deliver_stop(cs_server *srv)
{
	if (srv->check_ev)
		event_free(srv->check_ev);
	srv->check_ev = NULL;
}
