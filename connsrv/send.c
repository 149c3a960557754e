/* SEND and SEND_GROUP (see send.h). */
#include <stdlib.h>
#include <string.h>

#include "connsrv/send.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

typedef struct send_op {
	cs_session *s;
	unsigned type;
	uint64_t id;
	bool has_id;
	uint8_t *raw; /* owned copy of the client's frame; `f` points into it */
	sp_frame f;
	uint8_t msg_id[16];
	uint64_t to_user, group, server_ts, t0;
	bool refreshed;
	int lists_pending;
	uint64_t *to_devs, *self_devs;
	size_t nto, nself;
	size_t n; /* targets */
	uint64_t *devices, *seqs;
	int pending, rc;
	size_t refused; /* targets over their queue cap or the sender's share (seq 0) */
	int refused_rc; /* SP_EFULL or SP_ELIMIT: why the last one was refused */
	/* SEND_GROUP, SEND_SK: goes on with the group's devices (ask_group_devices). */
	void (*on_devices)(struct send_op *op, const uint64_t *devs, size_t n);
} send_op;

static void
op_free(send_op *op)
{
	sp_frame_fini(&op->f);
	free(op->raw);
	free(op->to_devs);
	free(op->self_devs);
	free(op->devices);
	free(op);
}

static void
op_fail(send_op *op, int rc, const char *reason)
{
	cs_session_error(op->s, op->id, op->has_id, rc, reason, op->msg_id);
	cs_session_call_end(op->s);
	op_free(op);
}

static send_op *
op_new(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	send_op *op = calloc(1, sizeof(*op));
	if (!op)
		return NULL;
	if (!(op->raw = malloc(len ? len : 1)) ||
	    (memcpy(op->raw, raw, len), sp_frame_decode(op->raw, len, &op->f) != SP_OK)) {
		free(op->raw);
		free(op);
		return NULL;
	}
	op->s = s;
	op->type = f->type;
	op->id = f->id;
	op->has_id = f->has_id;
	memcpy(op->msg_id, sp_frame_bin(f, SP_F_MSG_ID).p, 16);
	op->server_ts = sp_time_ms();
	op->t0 = sp_mono_ns();
	cs_session_call_begin(s);
	return op;
}

static void
answer_sent(send_op *op)
{
	cs_session *s = op->s;
	sp_frame ok;
	sp_frame_init(&ok, SP_T_SENT, op->id, op->has_id);
	sp_frame_set_bin(&ok, SP_F_MSG_ID, op->msg_id, 16);
	sp_frame_set_u64(&ok, SP_F_SERVER_TS, op->server_ts);
	uint64_t *refused = NULL;
	if (op->refused) {
		/* The sender learns which devices did not get it (the client marks them failed). */
		if ((refused = malloc(op->refused * sizeof(uint64_t)))) {
			size_t k = 0;
			for (size_t i = 0; i < op->n && k < op->refused; i++)
				if (!op->seqs[i])
					refused[k++] = op->devices[i];
			sp_frame_set_u64s(&ok, SP_F_GRP_REFUSED, refused, (uint32_t)k);
		}
	}
	cs_session_send(s, &ok);
	free(refused);
	sp_metric_inc(s->srv->m.sends);
	sp_metric_observe(s->srv->m.sent_latency, (double)(sp_mono_ns() - op->t0) / 1e9);
}

/* A DELIVER template for target i (seq/device/epoch are filled per recipient). */
static void
entry_for(const send_op *op, size_t i, sp_frame *d)
{
	const cs_session *s = op->s;
	sp_frame_init(d, SP_T_DELIVER, 0, false);
	sp_frame_set_u64(d, SP_F_SEQ, 0);
	sp_frame_set_bin(d, SP_F_MSG_ID, op->msg_id, 16);
	sp_frame_set_u64(d, SP_F_FROM_USER, s->user);
	sp_frame_set_u64(d, SP_F_FROM_DEVICE, s->device);
	sp_frame_set_u64(d, SP_F_SERVER_TS, op->server_ts);
	if (op->type != SP_T_SEND_GROUP) {
		const sp_frame *it = &sp_frame_get(&op->f, SP_F_ITEMS)->rs.v[i];
		sp_bin ct = sp_frame_bin(it, SP_F_CT);
		sp_frame_set_u64(d, SP_F_ETYPE, sp_frame_u64(it, SP_F_ETYPE));
		sp_frame_set_bin(d, SP_F_ENV, ct.p, ct.len);
		if (op->group)
			sp_frame_set_u64(d, SP_F_GROUP, op->group);
		return;
	}
	sp_bin body = sp_frame_bin(&op->f, SP_F_BODY);
	sp_frame_set_u64(d, SP_F_ETYPE, sp_frame_u64(&op->f, SP_F_ETYPE));
	sp_frame_set_bin(d, SP_F_ENV, body.p, body.len);
	sp_frame_set_u64(d, SP_F_GROUP, op->group);
	const sp_val *items = sp_frame_get(&op->f, SP_F_ITEMS);
	for (uint32_t k = 0; items && k < items->rs.n; k++) {
		if (sp_frame_u64(&items->rs.v[k], SP_F_DEVICE) == op->devices[i]) {
			sp_bin ct = sp_frame_bin(&items->rs.v[k], SP_F_CT);
			sp_frame_set_bin(d, SP_F_CT, ct.p, ct.len);
		}
	}
}

/* The entries are stored: their holders hear of them. A 1:1 entry differs per device (its
 * ciphertext); a group entry is one for every device without a ciphertext of its own, so
 * those share one notify (one packed entry, one route lookup). */
static void
notify_appended(send_op *op)
{
	cs_server *srv = op->s->srv;
	size_t shared = 0;
	for (size_t i = 0; i < op->n; i++) {
		if (!op->seqs[i])
			continue;
		sp_frame d;
		entry_for(op, i, &d);
		if (op->type == SP_T_SEND_GROUP && !sp_frame_has(&d, SP_F_CT)) {
			/* Compacted in place: index `shared` <= i was already read. */
			op->devices[shared] = op->devices[i];
			op->seqs[shared++] = op->seqs[i];
			continue;
		}
		srv->ops->notify(srv, &d, &op->devices[i], &op->seqs[i], 1);
	}
	if (shared) {
		sp_frame d;
		entry_for(op, 0, &d);
		srv->ops->notify(srv, &d, op->devices, op->seqs, shared);
	}
}

/* Whether a 1:1 send reached none of the recipient's devices (only copies to the
 * sender's own other devices stored, or nothing): then the message did not go. */
static bool
recipient_refused(const send_op *op)
{
	if (op->refused == op->n)
		return true;
	if (op->to_user == op->s->user)
		return false;
	for (size_t i = 0; i < op->n; i++) {
		if (!op->seqs[i])
			continue;
		for (size_t k = 0; k < op->nto; k++)
			if (op->to_devs[k] == op->devices[i])
				return false;
	}
	return true;
}

static void
appends_done(send_op *op)
{
	cs_session *s = op->s;
	/* Some targets refused for a full queue, the others stored: SENT names the refused
	 * ones. A 1:1 send none of whose recipient devices took it: the error, as before (the
	 * client retries later; a copy stored on our other devices is deduplicated then). */
	if (!op->rc && op->type == SP_T_SEND && op->refused && recipient_refused(op))
		op->rc = op->refused_rc;
	if (op->rc) {
		op_fail(op, op->rc,
			op->rc == SP_EFULL    ? "recipient queue full"
			: op->rc == SP_ELIMIT ? "your share of the recipient's queue is full"
					      : "not stored, retry");
		return;
	}
	if (op->refused)
		sp_warn_rl("message from device %llu: %zu devices refused (queue full or the sender's "
			   "share of it), reported in SENT",
			(unsigned long long)s->device, op->refused);
	answer_sent(op);
	notify_appended(op);
	cs_session_call_end(s);
	op_free(op);
}

typedef struct append_ctx {
	send_op *op;
	size_t first, count; /* targets covered by this call */
} append_ctx;

static void
append_done(send_op *op, int rc)
{
	if (rc && !op->rc)
		op->rc = rc;
	if (--op->pending == 0)
		appends_done(op);
}

/* A group batch to one shard came back. */
static void
on_batch_appended(void *arg, int rc, const sp_frame *reply)
{
	append_ctx *a = arg;
	send_op *op = a->op;
	const sp_val *v = rc == SP_OK ? sp_frame_get(reply, SP_F_SEQ_LIST) : NULL;
	if (rc == SP_OK && (reply->type != SP_T_APPENDED_BATCH || !v || v->us.n != a->count))
		rc = SP_EPROTO;
	for (size_t k = 0; rc == SP_OK && k < a->count; k++) {
		op->seqs[a->first + k] = v->us.v[k];
		if (v->us.v[k] == 0) {
			op->refused++;
			op->refused_rc = SP_EFULL;
		}
	}
	free(a);
	append_done(op, rc);
}

static int
call_batch(send_op *op, const char *url, const sp_frame *q, size_t first, size_t count)
{
	append_ctx *a = malloc(sizeof(*a));
	if (!a)
		return SP_ENOMEM;
	a->op = op;
	a->first = first;
	a->count = count;
	op->pending++;
	int rc = cs_shardcall_devices(op->s->srv->shards, url, &op->devices[first], count, q,
				      on_batch_appended, a);
	if (rc) {
		op->pending--;
		free(a);
	}
	return rc;
}

/* The append of target a->first came back (its result within the shard's APPENDED_MULTI). */
static void
on_item_appended(void *arg, int rc, uint64_t seq)
{
	append_ctx *a = arg;
	send_op *op = a->op;
	if (rc == SP_OK)
		op->seqs[a->first] = seq;
	if (rc == SP_EFULL || rc == SP_ELIMIT) {
		/* One device over its cap: the others still get it (seq 0 marks it refused). */
		op->refused++;
		op->refused_rc = rc;
		rc = SP_OK;
	}
	free(a);
	append_done(op, rc);
}

/* 1:1: one append per device, queued to its shard's next APPEND_MULTI (sent when this
 * loop pass ends, together with the other appends of the pass to that shard). */
static void
start_appends_one(send_op *op)
{
	cs_session *s = op->s;
	const sp_val *items = sp_frame_get(&op->f, SP_F_ITEMS);
	op->n = items->rs.n;
	op->devices = calloc(2 * op->n, sizeof(uint64_t));
	if (!op->devices) {
		op_fail(op, SP_ENOMEM, NULL);
		return;
	}
	op->seqs = op->devices + op->n;
	op->pending = 1; /* held until every append is queued */
	/* One map snapshot for the whole send: a shard's address is read from it, not copied. */
	sp_cluster_map *map = sp_cluster_map_get(s->srv->cluster);
	for (size_t i = 0; i < op->n && !op->rc; i++) {
		const sp_frame *it = &items->rs.v[i];
		op->devices[i] = sp_frame_u64(it, SP_F_DEVICE);
		sp_bin ct = sp_frame_bin(it, SP_F_CT);
		sp_frame q;
		sp_frame_init(&q, SP_T_APPEND_ITEM, 0, false);
		sp_frame_set_u64(&q, SP_F_DEVICE, op->devices[i]);
		sp_frame_set_bin(&q, SP_F_MSG_ID, op->msg_id, 16);
		sp_frame_set_u64(&q, SP_F_FROM_USER, s->user);
		sp_frame_set_u64(&q, SP_F_FROM_DEVICE, s->device);
		sp_frame_set_u64(&q, SP_F_SERVER_TS, op->server_ts);
		sp_frame_set_u64(&q, SP_F_ETYPE, sp_frame_u64(it, SP_F_ETYPE));
		sp_frame_set_bin(&q, SP_F_ENV, ct.p, ct.len);
		if (op->group)
			sp_frame_set_u64(&q, SP_F_GROUP, op->group);
		const sp_cluster_member *shard = map ? sp_cluster_map_shard_for(map, op->devices[i]) : NULL;
		append_ctx *a = malloc(sizeof(*a));
		int rc = !a ? SP_ENOMEM : !shard ? SP_EUNAVAIL : SP_OK;
		if (rc == SP_OK) {
			a->op = op;
			a->first = i;
			a->count = 1;
			op->pending++;
			if ((rc = cs_appendq_add(s->srv->appendq, shard->addr, &q, on_item_appended, a)))
				op->pending--;
		}
		if (rc) {
			free(a);
			op->rc = rc;
		}
	}
	if (map)
		sp_cluster_map_put(map);
	if (--op->pending == 0)
		appends_done(op);
}

/* Sorted, duplicate-free copy check: SP_OK if `a` has no repeated device. */
static int
cmp_u64(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
	return a < b ? -1 : a > b;
}

static bool
contains(const uint64_t *v, size_t n, uint64_t x)
{
	for (size_t i = 0; i < n; i++)
		if (v[i] == x)
			return true;
	return false;
}

static void check_devices(send_op *op);

static void
on_device_list(void *arg, int rc, const uint64_t *devs, size_t n)
{
	/* arg is the op with the low bit telling which list this is. */
	uintptr_t p = (uintptr_t)arg;
	send_op *op = (send_op *)(p & ~(uintptr_t)1);
	bool self = p & 1;
	if (rc == SP_OK) {
		uint64_t *copy = malloc((n ? n : 1) * sizeof(uint64_t));
		if (!copy) {
			rc = SP_ENOMEM;
		} else {
			memcpy(copy, devs, n * sizeof(uint64_t));
			if (self) {
				free(op->self_devs);
				op->self_devs = copy;
				op->nself = n;
			} else {
				free(op->to_devs);
				op->to_devs = copy;
				op->nto = n;
			}
		}
	}
	if (rc && !op->rc)
		op->rc = rc;
	if (--op->lists_pending > 0)
		return;
	if (op->rc) {
		op_fail(op, op->rc == SP_ENOTFOUND ? SP_ENOTFOUND : op->rc,
			op->rc == SP_ENOTFOUND ? "no such user" : "device list unavailable, retry");
		return;
	}
	check_devices(op);
}

static void
get_lists(send_op *op, bool fresh)
{
	cs_session *s = op->s;
	op->lists_pending = op->to_user == s->user ? 1 : 2;
	op->rc = SP_OK;
	if (op->to_user != s->user)
		cs_devcache_get(s->srv, op->to_user, fresh, on_device_list, op);
	cs_devcache_get(s->srv, s->user, fresh, on_device_list, (void *)((uintptr_t)op | 1));
}

/* The items must name exactly the recipient's devices plus the sender's other devices. */
static void
check_devices(send_op *op)
{
	cs_session *s = op->s;
	const sp_val *items = sp_frame_get(&op->f, SP_F_ITEMS);
	size_t n = items->rs.n;
	uint64_t expect[2 * 8 + 2], missing[16], extra[SP_MAX_SEND_DEVICES];
	size_t ne = 0, nm = 0, nx = 0;
	for (size_t i = 0; i < op->nto && ne < 8; i++)
		expect[ne++] = op->to_devs[i];
	for (size_t i = 0; i < op->nself && ne < 16; i++)
		if (op->self_devs[i] != s->device && !contains(expect, ne, op->self_devs[i]))
			expect[ne++] = op->self_devs[i];
	uint64_t got[SP_MAX_SEND_DEVICES];
	for (size_t i = 0; i < n && i < SP_MAX_SEND_DEVICES; i++)
		got[i] = sp_frame_u64(&items->rs.v[i], SP_F_DEVICE);
	for (size_t i = 0; i < ne; i++)
		if (!contains(got, n, expect[i]))
			missing[nm++] = expect[i];
	for (size_t i = 0; i < n && nx < SP_MAX_SEND_DEVICES; i++)
		if (!contains(expect, ne, got[i]))
			extra[nx++] = got[i];
	if (nm == 0 && nx == 0) {
		start_appends_one(op);
		return;
	}
	if (!op->refreshed) {
		/* The cache may be stale (a device was just added or removed): ask keysrv. */
		op->refreshed = true;
		get_lists(op, true);
		return;
	}
	sp_frame m;
	sp_frame_init(&m, SP_T_MISMATCHED_DEVICES, op->id, op->has_id);
	sp_frame_set_bin(&m, SP_F_MSG_ID, op->msg_id, 16);
	sp_frame_set_u64s(&m, SP_F_MISSING, missing, (uint32_t)nm);
	sp_frame_set_u64s(&m, SP_F_EXTRA, extra, (uint32_t)nx);
	cs_session_send(s, &m);
	cs_session_call_end(s);
	op_free(op);
}

void
cs_send_one(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	const sp_val *items = sp_frame_get(f, SP_F_ITEMS);
	const uint8_t *msg_id = sp_frame_bin(f, SP_F_MSG_ID).p;
	if (items->rs.n == 0 || items->rs.n > SP_MAX_SEND_DEVICES) {
		cs_session_error(s, f->id, f->has_id, SP_EFIELDLEN, "items: 1 to 64 devices", msg_id);
		return;
	}
	uint64_t devs[SP_MAX_SEND_DEVICES];
	for (uint32_t i = 0; i < items->rs.n; i++)
		devs[i] = sp_frame_u64(&items->rs.v[i], SP_F_DEVICE);
	qsort(devs, items->rs.n, sizeof(uint64_t), cmp_u64);
	for (uint32_t i = 1; i < items->rs.n; i++) {
		if (devs[i] == devs[i - 1]) {
			cs_session_error(s, f->id, f->has_id, SP_EINVAL, "a device appears twice", msg_id);
			return;
		}
	}
	send_op *op = op_new(s, f, raw, len);
	if (!op) {
		cs_session_error(s, f->id, f->has_id, SP_ENOMEM, NULL, msg_id);
		return;
	}
	op->to_user = sp_frame_u64(f, SP_F_TO_USER);
	get_lists(op, false);
}

/* ---- groups ---- */

/* An item of a SEND_GROUP by device (its index in `items`), and a target by shard. */
typedef struct dev_ref {
	uint64_t device;
	uint32_t idx;
} dev_ref;

typedef struct shard_ref {
	const sp_cluster_member *shard;
	uint64_t device;
} shard_ref;

/* By device only: bsearch looks a device up with a bare uint64_t key. */
static int
cmp_dev_ref(const void *x, const void *y)
{
	return cmp_u64(x, y);
}

/* By shard, then device: a total order, so the batches do not depend on qsort. */
static int
cmp_shard_ref(const void *x, const void *y)
{
	const shard_ref *a = x, *b = y;
	if (a->shard != b->shard)
		return (uintptr_t)a->shard < (uintptr_t)b->shard ? -1 : 1;
	return cmp_u64(&a->device, &b->device);
}

static void
group_devices_fanout(send_op *op, const uint64_t *devs, size_t n)
{
	cs_session *s = op->s;
	op->devices = calloc(2 * (n ? n : 1), sizeof(uint64_t));
	if (!op->devices) {
		op_fail(op, SP_ENOMEM, NULL);
		return;
	}
	op->seqs = op->devices + (n ? n : 1);
	for (size_t i = 0; i < n; i++)
		if (devs[i] != s->device)
			op->devices[op->n++] = devs[i];
	/* Up to SP_MAX_FANOUT_DEVICES targets and items: everything below is sorted and
	 * searched in O(n log n), never compared pairwise, on the loop thread. */
	const sp_val *items = sp_frame_get(&op->f, SP_F_ITEMS);
	uint32_t nitems = items ? items->rs.n : 0;
	dev_ref *by_dev = calloc(nitems ? nitems : 1, sizeof(*by_dev));
	shard_ref *order = calloc(op->n ? op->n : 1, sizeof(*order));
	const sp_cluster_member **shards = calloc(op->n ? op->n : 1, sizeof(*shards));
	sp_frame *targets = calloc(op->n ? op->n : 1, sizeof(sp_frame));
	if (!by_dev || !order || !shards || !targets) {
		free(by_dev);
		free(order);
		free(shards);
		free(targets);
		op_fail(op, SP_ENOMEM, NULL);
		return;
	}
	qsort(op->devices, op->n, sizeof(uint64_t), cmp_u64);
	for (uint32_t k = 0; k < nitems; k++) {
		by_dev[k].device = sp_frame_u64(&items->rs.v[k], SP_F_DEVICE);
		by_dev[k].idx = k;
	}
	qsort(by_dev, nitems, sizeof(*by_dev), cmp_dev_ref);
	const char *bad = NULL;
	int bad_rc = SP_OK;
	for (uint32_t k = 0; k < nitems && !bad; k++) {
		if (k > 0 && by_dev[k].device == by_dev[k - 1].device) {
			bad = "a device appears twice in items";
			bad_rc = SP_EINVAL;
		} else if (!bsearch(&by_dev[k].device, op->devices, op->n, sizeof(uint64_t), cmp_u64)) {
			bad = "an item names a device outside the group";
			bad_rc = SP_EMISMATCH;
		}
	}
	if (bad) {
		free(by_dev);
		free(order);
		free(shards);
		free(targets);
		op_fail(op, bad_rc, bad);
		return;
	}
	/* Group targets by shard so each shard gets one batch (the body stored once there). The
	 * shards are members of one map snapshot, held until the batches are sent: a target
	 * carries its shard, and the address is read only for the call. */
	sp_cluster_map *map = sp_cluster_map_get(s->srv->cluster);
	for (size_t i = 0; i < op->n && !op->rc; i++) {
		order[i].device = op->devices[i];
		if (!map || !(order[i].shard = sp_cluster_map_shard_for(map, op->devices[i])))
			op->rc = SP_EUNAVAIL;
	}
	if (!op->rc) {
		qsort(order, op->n, sizeof(*order), cmp_shard_ref);
		for (size_t i = 0; i < op->n; i++) {
			shards[i] = order[i].shard;
			op->devices[i] = order[i].device;
		}
	}
	free(order);
	sp_bin body = sp_frame_bin(&op->f, SP_F_BODY);
	op->pending = 1;
	for (size_t i = 0; i < op->n && !op->rc;) {
		size_t j = i;
		while (j < op->n && shards[j] == shards[i] && j - i < SP_MAX_FANOUT_DEVICES)
			j++;
		for (size_t k = i; k < j; k++) {
			sp_frame_init(&targets[k], SP_T_APPEND_TARGET, 0, false);
			sp_frame_set_u64(&targets[k], SP_F_DEVICE, op->devices[k]);
			const dev_ref *it = bsearch(&op->devices[k], by_dev, nitems, sizeof(*by_dev),
						    cmp_dev_ref);
			if (it) {
				sp_bin ct = sp_frame_bin(&items->rs.v[it->idx], SP_F_CT);
				sp_frame_set_bin(&targets[k], SP_F_CT, ct.p, ct.len);
			}
		}
		sp_frame q;
		sp_frame_init(&q, SP_T_APPEND_BATCH, 0, false);
		sp_frame_set_bin(&q, SP_F_MSG_ID, op->msg_id, 16);
		sp_frame_set_u64(&q, SP_F_FROM_USER, s->user);
		sp_frame_set_u64(&q, SP_F_FROM_DEVICE, s->device);
		sp_frame_set_u64(&q, SP_F_SERVER_TS, op->server_ts);
		sp_frame_set_u64(&q, SP_F_ETYPE, sp_frame_u64(&op->f, SP_F_ETYPE));
		sp_frame_set_bin(&q, SP_F_BODY, body.p, body.len);
		sp_frame_set_u64(&q, SP_F_GROUP, op->group);
		sp_frame_set_recs(&q, SP_F_TARGETS, &targets[i], (uint32_t)(j - i));
		int rc = call_batch(op, shards[i]->addr, &q, i, j - i);
		if (rc)
			op->rc = rc;
		i = j;
	}
	if (map)
		sp_cluster_map_put(map);
	free(by_dev);
	free(shards);
	free(targets);
	if (--op->pending == 0)
		appends_done(op);
}

/* keysrv's GROUP_DEVICES answer: refused (not a member) or unavailable ends the op. */
static void
on_group_devices(void *arg, int rc, const sp_frame *reply)
{
	send_op *op = arg;
	if (rc) {
		op_fail(op, rc, rc == SP_EPERM ? "not a member of this group" : "group unavailable, retry");
		return;
	}
	const sp_val *v = sp_frame_get(reply, SP_F_DEVICES);
	op->on_devices(op, v ? v->us.v : NULL, v ? v->us.n : 0);
}

/* A group op (SEND_GROUP, SEND_SK): asks keysrv for the group's devices (the sender must
 * be a member), then `go` goes on with the op and them. */
static void
ask_group_devices(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len,
		  void (*go)(send_op *op, const uint64_t *devs, size_t n))
{
	const uint8_t *msg_id = sp_frame_bin(f, SP_F_MSG_ID).p;
	send_op *op = op_new(s, f, raw, len);
	if (!op) {
		cs_session_error(s, f->id, f->has_id, SP_ENOMEM, NULL, msg_id);
		return;
	}
	op->group = sp_frame_u64(f, SP_F_GROUP);
	op->on_devices = go;
	sp_frame q;
	sp_frame_init(&q, SP_T_GROUP_DEVICES, 0, false);
	sp_frame_set_u64(&q, SP_F_GROUP, op->group);
	sp_frame_set_u64(&q, SP_F_AUTH_USER, s->user);
	if (cs_shardcall_keysrv(s->srv->shards, false, &q, on_group_devices, op))
		op_fail(op, SP_EUNAVAIL, "group unavailable, retry");
}

void
cs_send_group(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	ask_group_devices(s, f, raw, len, group_devices_fanout);
}

/* ---- pairwise items to group devices (SEND_SK) ---- */

static void
sk_check_devices(send_op *op, const uint64_t *group_devs, size_t n)
{
	cs_session *s = op->s;
	uint64_t *devs = malloc((n ? n : 1) * sizeof(uint64_t));
	if (!devs) {
		op_fail(op, SP_ENOMEM, NULL);
		return;
	}
	if (n)
		memcpy(devs, group_devs, n * sizeof(uint64_t));
	qsort(devs, n, sizeof(uint64_t), cmp_u64);
	const sp_val *items = sp_frame_get(&op->f, SP_F_ITEMS);
	bool ok = true;
	for (uint32_t k = 0; k < items->rs.n && ok; k++) {
		uint64_t d = sp_frame_u64(&items->rs.v[k], SP_F_DEVICE);
		ok = d != s->device && bsearch(&d, devs, n, sizeof(uint64_t), cmp_u64);
	}
	free(devs);
	if (!ok) {
		op_fail(op, SP_EMISMATCH, "an item names a device outside the group");
		return;
	}
	start_appends_one(op);
}

void
cs_send_sk(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	const sp_val *items = sp_frame_get(f, SP_F_ITEMS);
	const uint8_t *msg_id = sp_frame_bin(f, SP_F_MSG_ID).p;
	if (items->rs.n == 0) {
		cs_session_error(s, f->id, f->has_id, SP_EFIELDLEN, "items: at least one device", msg_id);
		return;
	}
	/* Sorted copy: a device named twice would be stored twice. O(n log n) on the loop. */
	uint64_t *devs = malloc(items->rs.n * sizeof(uint64_t));
	if (!devs) {
		cs_session_error(s, f->id, f->has_id, SP_ENOMEM, NULL, msg_id);
		return;
	}
	for (uint32_t i = 0; i < items->rs.n; i++)
		devs[i] = sp_frame_u64(&items->rs.v[i], SP_F_DEVICE);
	qsort(devs, items->rs.n, sizeof(uint64_t), cmp_u64);
	bool dup = false;
	for (uint32_t i = 1; i < items->rs.n && !dup; i++)
		dup = devs[i] == devs[i - 1];
	free(devs);
	if (dup) {
		cs_session_error(s, f->id, f->has_id, SP_EINVAL, "a device appears twice", msg_id);
		return;
	}
	ask_group_devices(s, f, raw, len, sk_check_devices);
}
