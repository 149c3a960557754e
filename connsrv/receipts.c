/* Receipts (see receipts.h). */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "connsrv/receipts.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

typedef struct receipt_op {
	cs_server *srv;
	uint64_t from_user, to_user, server_ts;
	unsigned etype;
	uint8_t msg_id[16];
	msgpack_sbuffer env;
	int pending; /* appends in flight, plus one while they are being queued */
	int rc;      /* the first failure, SP_OK while none */
	cs_receipts_done_fn done;
	void *done_arg;
} receipt_op;

typedef struct receipt_append {
	receipt_op *op;
	uint64_t device;
} receipt_append;

/* Soft: the receipt is lost to this recipient (the message itself was delivered). */
static void
receipt_dropped(cs_server *srv, uint64_t user, uint64_t device, int rc)
{
	sp_metric_inc(srv->m.receipts_dropped);
	sp_warn_rl("receipt to user %llu device %llu not stored: %s", (unsigned long long)user,
		   (unsigned long long)device, sp_strerror(rc));
}

static void
receipt_free(receipt_op *op)
{
	msgpack_sbuffer_destroy(&op->env);
	free(op);
}

/* Tells the caller the outcome and frees the op. */
static void
receipt_finish(receipt_op *op, int rc)
{
	if (op->rc == SP_OK)
		op->rc = rc;
	if (op->done)
		op->done(op->done_arg, op->rc);
	receipt_free(op);
}

static void
receipt_release(receipt_op *op)
{
	if (--op->pending == 0)
		receipt_finish(op, SP_OK);
}

static void
on_receipt_appended(void *arg, int rc, uint64_t seq)
{
	receipt_append *a = arg;
	receipt_op *op = a->op;
	if (rc == SP_OK) {
		sp_frame d;
		sp_frame_init(&d, SP_T_DELIVER, 0, false);
		sp_frame_set_u64(&d, SP_F_SEQ, 0);
		sp_frame_set_bin(&d, SP_F_MSG_ID, op->msg_id, 16);
		sp_frame_set_u64(&d, SP_F_FROM_USER, op->from_user);
		sp_frame_set_u64(&d, SP_F_FROM_DEVICE, 0);
		sp_frame_set_u64(&d, SP_F_SERVER_TS, op->server_ts);
		sp_frame_set_u64(&d, SP_F_ETYPE, op->etype);
		sp_frame_set_bin(&d, SP_F_ENV, op->env.data, op->env.size);
		op->srv->ops->notify(op->srv, &d, &a->device, &seq, 1);
		sp_metric_inc(op->srv->m.receipts);
	} else {
		receipt_dropped(op->srv, op->to_user, a->device, rc);
		if (op->rc == SP_OK)
			op->rc = rc;
	}
	free(a);
	receipt_release(op);
}

static void
on_receipt_devices(void *arg, int rc, const uint64_t *devs, size_t n)
{
	receipt_op *op = arg;
	if (rc) {
		receipt_dropped(op->srv, op->to_user, 0, rc);
		receipt_finish(op, rc);
		return;
	}
	op->pending = 1;
	/* One map snapshot for all the appends: a shard's address is read from it, not copied. */
	sp_cluster_map *map = sp_cluster_map_get(op->srv->cluster);
	for (size_t i = 0; i < n; i++) {
		const sp_cluster_member *shard = map ? sp_cluster_map_shard_for(map, devs[i]) : NULL;
		receipt_append *a = shard ? malloc(sizeof(*a)) : NULL;
		if (!a) {
			rc = shard ? SP_ENOMEM : SP_EUNAVAIL;
			receipt_dropped(op->srv, op->to_user, devs[i], rc);
			if (op->rc == SP_OK)
				op->rc = rc;
			continue;
		}
		a->op = op;
		a->device = devs[i];
		sp_frame q;
		sp_frame_init(&q, SP_T_APPEND_ITEM, 0, false);
		sp_frame_set_u64(&q, SP_F_DEVICE, devs[i]);
		sp_frame_set_bin(&q, SP_F_MSG_ID, op->msg_id, 16);
		sp_frame_set_u64(&q, SP_F_FROM_USER, op->from_user);
		sp_frame_set_u64(&q, SP_F_FROM_DEVICE, 0);
		sp_frame_set_u64(&q, SP_F_SERVER_TS, op->server_ts);
		sp_frame_set_u64(&q, SP_F_ETYPE, op->etype);
		sp_frame_set_bin(&q, SP_F_ENV, op->env.data, op->env.size);
		op->pending++;
		if ((rc = cs_appendq_add(op->srv->appendq, shard->addr, &q, on_receipt_appended, a)) !=
		    SP_OK) {
			op->pending--;
			free(a);
			receipt_dropped(op->srv, op->to_user, devs[i], rc);
			if (op->rc == SP_OK)
				op->rc = rc;
		}
	}
	if (map)
		sp_cluster_map_put(map);
	receipt_release(op);
}

/* Queues the packed receipt r (a RECEIPT or RECEIPT_UPTO) to every device of to_user. */
static void
receipt_queue_frame(cs_server *srv, uint64_t from_user, uint64_t to_user, unsigned etype, const sp_frame *r,
		    cs_receipts_done_fn done, void *arg)
{
	receipt_op *op = calloc(1, sizeof(*op));
	if (!op) {
		receipt_dropped(srv, to_user, 0, SP_ENOMEM);
		if (done)
			done(arg, SP_ENOMEM);
		return;
	}
	op->srv = srv;
	op->done = done;
	op->done_arg = arg;
	op->from_user = from_user;
	op->to_user = to_user;
	op->etype = etype;
	op->server_ts = sp_time_ms();
	msgpack_sbuffer_init(&op->env);
	int rc = sp_frame_pack(r, &op->env);
	if (rc != SP_OK) {
		receipt_dropped(srv, to_user, 0, rc);
		receipt_finish(op, rc);
		return;
	}
	/* A deterministic id: the same receipt made twice (an ACK retried) is stored once. */
	crypto_generichash(op->msg_id, 16, (const uint8_t *)op->env.data, op->env.size, NULL, 0);
	cs_devcache_get(srv, to_user, false, on_receipt_devices, op);
}

void
cs_receipts_queue(cs_server *srv, uint64_t from_user, uint64_t from_device, uint64_t to_user,
		unsigned etype, const sp_bin *msg_ids, uint32_t n, cs_receipts_done_fn done, void *arg)
{
	if (n == 0) {
		if (done)
			done(arg, SP_OK);
		return;
	}
	sp_frame r;
	sp_frame_init(&r, SP_T_RECEIPT, 0, false);
	sp_frame_set_u64(&r, SP_F_KIND, etype);
	sp_frame_set_bins(&r, SP_F_MSG_IDS, msg_ids, n);
	sp_frame_set_u64(&r, SP_F_FROM_USER, from_user);
	sp_frame_set_u64(&r, SP_F_FROM_DEVICE, from_device);
	receipt_queue_frame(srv, from_user, to_user, etype, &r, done, arg);
}

/* A READ waiting for its receipt to be stored: the session is held (call_begin). */
typedef struct read_wait {
	cs_session *s;
	uint64_t id;
	bool has_id;
} read_wait;

static void
on_read_stored(void *arg, int rc)
{
	read_wait *w = arg;
	cs_session *s = w->s;
	if (!s->closing) {
		if (rc == SP_OK) {
			sp_frame ok;
			sp_frame_init(&ok, SP_T_OK, w->id, w->has_id);
			cs_session_send(s, &ok);
		} else {
			/* No such user (or a bad list) is final; anything else is retryable: a
			 * READ sent again is stored once. */
			bool final = rc == SP_ENOTFOUND || rc == SP_EINVAL;
			cs_session_error(s, w->id, w->has_id, final ? rc : SP_EUNAVAIL,
			    final ? "read receipt for no such user" : "read receipt not stored; send it again",
			    NULL);
		}
	}
	free(w);
	cs_session_call_end(s);
}

void
cs_receipts_read(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	const sp_val *ids = sp_frame_get(f, SP_F_MSG_IDS);
	read_wait *w = malloc(sizeof(*w));
	if (!w) {
		cs_session_error(s, f->id, f->has_id, SP_ENOMEM, "out of memory", NULL);
		return;
	}
	*w = (read_wait) { s, f->id, f->has_id };
	cs_session_call_begin(s);
	cs_receipts_queue(s->srv, s->user, s->device, sp_frame_u64(f, SP_F_TO_USER),
	    SP_ETYPE_RECEIPT_READ, ids->bs.v, ids->bs.n, on_read_stored, w);
}

void
cs_receipts_read_upto(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	const sp_val *devs = sp_frame_get(f, SP_F_RD_DEVICES), *seqs = sp_frame_get(f, SP_F_RD_SEQS);
	/* The codec bounds each array; the pairing is ours to check. */
	if (devs->us.n == 0 || devs->us.n != seqs->us.n) {
		cs_session_error(s, f->id, f->has_id, SP_EINVAL, "rd_devices and rd_seqs must pair up", NULL);
		return;
	}
	read_wait *w = malloc(sizeof(*w));
	if (!w) {
		cs_session_error(s, f->id, f->has_id, SP_ENOMEM, "out of memory", NULL);
		return;
	}
	*w = (read_wait) { s, f->id, f->has_id };
	cs_session_call_begin(s);
	sp_frame r;
	sp_frame_init(&r, SP_T_RECEIPT_UPTO, 0, false);
	sp_frame_set_u64(&r, SP_F_KIND, SP_ETYPE_RECEIPT_READ);
	sp_frame_set_u64(&r, SP_F_FROM_USER, s->user);
	sp_frame_set_u64(&r, SP_F_FROM_DEVICE, s->device);
	if (sp_frame_has(f, SP_F_GROUP))
		sp_frame_set_u64(&r, SP_F_GROUP, sp_frame_u64(f, SP_F_GROUP));
	sp_frame_set_u64s(&r, SP_F_RD_DEVICES, devs->us.v, devs->us.n);
	sp_frame_set_u64s(&r, SP_F_RD_SEQS, seqs->us.v, seqs->us.n);
	receipt_queue_frame(s->srv, s->user, sp_frame_u64(f, SP_F_TO_USER), SP_ETYPE_RECEIPT_READ, &r,
	    on_read_stored, w);
}

void
cs_receipts_acked(cs_session *s, const sp_frame *reply)
{
	const sp_val *v = sp_frame_get(reply, SP_F_DELIVERED);
	/* Receipts to each sender, one envelope per sender user. Receipts the server
	 * made (from_device 0) are not acknowledged in turn. */
	uint32_t n = v ? v->rs.n : 0;
	bool *done = n ? calloc(n, sizeof(bool)) : NULL;
	sp_bin *ids = n ? calloc(n, sizeof(sp_bin)) : NULL;
	if (n && (!done || !ids))
		receipt_dropped(s->srv, 0, 0, SP_ENOMEM);
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
		cs_receipts_queue(s->srv, s->user, s->device, from_user, SP_ETYPE_RECEIPT_DELIVERED, ids, k,
		    NULL, NULL);
	}
	free(done);
	free(ids);
}
