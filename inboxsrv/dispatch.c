#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "internal.h"
#include "sp_error.h"
#include "sp_frame.h"
#include "sp_log.h"
#include "sp_nng.h"

#define FETCH_MAX_COUNT 4096 /* = ENTRIES max_count */
#define REPLY_SLACK 4096 /* room for the reply's own keys */

struct inbox_dispatch {
	inbox_store *store;
	inbox_commit *commit;
	inbox_dispatch_config cfg;
};

typedef struct pending pending;

/* How the shard serves one request type: exactly one of
 * - read: answered at once on the calling thread (a read txn or the in-memory index);
 * - build and done: a write. build fills the op from the request (SP_OK, or the code of
 *   the ERROR reply: nothing is queued); done builds the reply once the op is committed
 *   with op.rc SP_OK (an op error is answered ERROR without it);
 * - take: takes the request message and frame and replies itself (APPEND_MULTI: one op
 *   per item). */
typedef struct serve_entry {
	nng_msg *(*read)(inbox_dispatch *d, const sp_frame *f);
	int (*build)(inbox_dispatch *d, pending *p);
	nng_msg *(*done)(const pending *p);
	void (*take)(inbox_dispatch *d, nng_msg *msg, sp_frame *f, inbox_reply_fn reply, void *arg);
} serve_entry;

/* A write in flight: the request (whose frame the op borrows from) and the reply route. */
struct pending {
	inbox_req req;
	nng_msg *msg;
	sp_frame f;
	const serve_entry *how;
	inbox_reply_fn reply;
	void *reply_arg;
	inbox_target one; /* the target of a single APPEND */
	inbox_target *targets;
};

/* An APPEND_MULTI in flight: one APPEND op per item, each with its own target, all
 * borrowing from the one request message; the reply is built when the last op completes
 * (ops of one request may complete on different threads, in different commits). */
typedef struct multi_item {
	inbox_req req; /* req.arg: the multi */
	inbox_target one;
} multi_item;

typedef struct multi {
	nng_msg *msg;
	sp_frame f;
	inbox_reply_fn reply;
	void *reply_arg;
	atomic_uint left; /* ops not yet completed */
	uint32_t n;
	multi_item items[];
} multi;

int
inbox_dispatch_new(
    inbox_dispatch **out, inbox_store *s, inbox_commit *c, const inbox_dispatch_config *cfg)
{
	inbox_dispatch *d = calloc(1, sizeof(*d));
	if (!d)
		return SP_ENOMEM;
	d->store = s;
	d->commit = c;
	d->cfg = *cfg;
	if (!d->cfg.fetch_default_count)
		d->cfg.fetch_default_count = 256;
	if (!d->cfg.fetch_default_bytes)
		d->cfg.fetch_default_bytes = 256 * 1024;
	*out = d;
	return SP_OK;
}

void
inbox_dispatch_free(inbox_dispatch *d)
{
	free(d);
}

/* ---- replies ---- */

static nng_msg *
error_msg(const sp_frame *req, int code)
{
	sp_frame f;
	nng_msg *m = NULL;
	sp_frame_init(&f, SP_T_ERROR, req ? req->id : 0, req && req->has_id);
	sp_frame_set_i64(&f, SP_F_CODE, code);
	sp_frame_set_str(&f, SP_F_REASON, sp_strerror(code));
	if (req && req->type == SP_T_APPEND)
		sp_frame_set_bin(
		    &f, SP_F_MSG_ID, sp_frame_bin(req, SP_F_MSG_ID).p, INBOX_MSG_ID_LEN);
	if (sp_nng_msg_from_frame(&f, &m) != SP_OK)
		return NULL;
	return m;
}

static nng_msg *
frame_msg(const sp_frame *req, sp_frame *rep)
{
	nng_msg *m;
	rep->id = req->id;
	rep->has_id = req->has_id;
	int rc = sp_nng_msg_from_frame(rep, &m);
	if (rc) {
		sp_warn("reply %s: %s", sp_frame_type_name(rep->type), sp_strerror(rc));
		return error_msg(req, rc);
	}
	return m;
}

static void
reply_error(const sp_frame *req, int code, inbox_reply_fn reply, void *arg)
{
	sp_metric_inc(inbox_m.bad_requests);
	reply(arg, error_msg(req, code));
}

/* ---- writes ---- */

static void
pending_free(pending *p)
{
	inbox_op_fini(&p->req.op);
	free(p->targets);
	sp_frame_fini(&p->f);
	nng_msg_free(p->msg);
	free(p);
}

static nng_msg *
reply_appended(const pending *p)
{
	const inbox_target *t = &p->req.op.append.targets[0];
	sp_frame rep;
	sp_frame_init(&rep, SP_T_APPENDED, 0, false);
	sp_frame_set_u64(&rep, SP_F_SEQ, t->seq);
	if (t->dup)
		sp_frame_set_bool(&rep, SP_F_DUP, true);
	return frame_msg(&p->f, &rep);
}

static nng_msg *
reply_appended_batch(const pending *p)
{
	const inbox_op *op = &p->req.op;
	uint32_t n = op->append.ntargets;
	uint64_t *seqs = malloc(sizeof(uint64_t) * n);
	sp_frame rep;
	nng_msg *m;
	if (!seqs)
		return error_msg(&p->f, SP_ENOMEM);
	for (uint32_t i = 0; i < n; i++)
		seqs[i] = op->append.targets[i].rc == SP_OK ? op->append.targets[i].seq : 0;
	sp_frame_init(&rep, SP_T_APPENDED_BATCH, 0, false);
	sp_frame_set_u64s(&rep, SP_F_SEQ_LIST, seqs, n);
	m = frame_msg(&p->f, &rep);
	free(seqs);
	return m;
}

static nng_msg *
reply_acked(const pending *p)
{
	const inbox_op *op = &p->req.op;
	uint32_t n = op->ack.nrefs;
	sp_frame *recs = calloc(n ? n : 1, sizeof(sp_frame)), rep;
	nng_msg *m;
	if (!recs)
		return error_msg(&p->f, SP_ENOMEM);
	for (uint32_t i = 0; i < n; i++) {
		const inbox_ref *r = &op->ack.refs[i];
		sp_frame_init(&recs[i], SP_T_DELIVERED_REF, 0, false);
		sp_frame_set_u64(&recs[i], SP_F_FROM_USER, r->from_user);
		sp_frame_set_u64(&recs[i], SP_F_FROM_DEVICE, r->from_device);
		sp_frame_set_bin(&recs[i], SP_F_MSG_ID, r->msg_id, INBOX_MSG_ID_LEN);
	}
	sp_frame_init(&rep, SP_T_ACKED, 0, false);
	sp_frame_set_recs(&rep, SP_F_DELIVERED, recs, n);
	if (op->ack.more)
		sp_frame_set_bool(&rep, SP_F_MORE, true);
	m = frame_msg(&p->f, &rep);
	free(recs);
	return m;
}

static nng_msg *
reply_purged(const pending *p)
{
	sp_frame rep;
	sp_frame_init(&rep, SP_T_PURGED, 0, false);
	sp_frame_set_u64(&rep, SP_F_COUNT, p->req.op.purge.removed);
	return frame_msg(&p->f, &rep);
}

static nng_msg *
reply_blob_stored(const pending *p)
{
	sp_frame rep;
	sp_frame_init(&rep, SP_T_BLOB_STORED, 0, false);
	sp_frame_set_bin(&rep, SP_F_BLOB_ID, p->req.op.blob_put.blob_id, INBOX_BLOB_ID_LEN);
	sp_frame_set_u64(&rep, SP_F_SIZE, p->req.op.blob_put.have);
	return frame_msg(&p->f, &rep);
}

static nng_msg *
reply_ok(const pending *p)
{
	sp_frame rep;
	sp_frame_init(&rep, SP_T_OK, 0, false);
	return frame_msg(&p->f, &rep);
}

static void
write_done(inbox_req *req)
{
	pending *p = (pending *)req;
	int rc = p->req.op.rc;
	p->reply(p->reply_arg, rc == SP_OK ? p->how->done(p) : error_msg(&p->f, rc));
	pending_free(p);
}

/* An op nobody waits for (BLOB_FETCHED): a failure has no reply to carry it. */
static void
silent_done(inbox_req *req)
{
	if (req->op.rc != SP_OK)
		inbox_drop(inbox_m.dropped_ops,
		    "blob fetched note: %s (the blob then lives until its TTL)",
		    sp_strerror(req->op.rc));
	free(req);
}

/* The fields an APPEND, an APPEND_MULTI item and an APPEND_BATCH share. */
static void
build_append_head(const sp_frame *f, inbox_op *op)
{
	op->kind = INBOX_OP_APPEND;
	memcpy(op->append.msg_id, sp_frame_bin(f, SP_F_MSG_ID).p, INBOX_MSG_ID_LEN);
	op->append.from_user = sp_frame_u64(f, SP_F_FROM_USER);
	op->append.from_device = sp_frame_u64(f, SP_F_FROM_DEVICE);
	op->append.server_ts = sp_frame_u64(f, SP_F_SERVER_TS);
	op->append.etype = sp_frame_u64(f, SP_F_ETYPE);
	op->append.has_group = sp_frame_has(f, SP_F_GROUP);
	op->append.group = sp_frame_u64(f, SP_F_GROUP);
}

/* One envelope to one device, from an APPEND frame or an APPEND_ITEM record `f`; the op
 * borrows from `f` and targets `one`. Nothing is allocated: this is the hot path. */
static void
build_append_one(const sp_frame *f, inbox_req *req, inbox_target *one)
{
	inbox_op *op = &req->op;
	sp_bin env = sp_frame_bin(f, SP_F_ENV);

	build_append_head(f, op);
	one->device = sp_frame_u64(f, SP_F_DEVICE);
	op->append.targets = one;
	op->append.ntargets = 1;
	op->append.body = env.p;
	op->append.body_len = env.len;
	req->cost = env.len + 256;
}

static int
build_append(inbox_dispatch *d, pending *p)
{
	(void)d;
	build_append_one(&p->f, &p->req, &p->one);
	return SP_OK;
}

static int
build_append_batch(inbox_dispatch *d, pending *p)
{
	const sp_frame *f = &p->f;
	inbox_op *op = &p->req.op;
	const sp_val *v = sp_frame_get(f, SP_F_TARGETS);
	sp_bin body = sp_frame_bin(f, SP_F_BODY);
	uint32_t n = v->rs.n;

	(void)d;
	build_append_head(f, op);
	if (n == 0)
		return SP_EMISSING;
	if (!(p->targets = calloc(n, sizeof(inbox_target))))
		return SP_ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		sp_bin ct = sp_frame_bin(&v->rs.v[i], SP_F_CT);
		p->targets[i].device = sp_frame_u64(&v->rs.v[i], SP_F_DEVICE);
		p->targets[i].ct = ct.len ? ct.p : NULL;
		p->targets[i].ct_len = ct.len;
		p->req.cost += ct.len + 64;
	}
	op->append.targets = p->targets;
	op->append.ntargets = n;
	op->append.shared = true;
	op->append.body = body.p;
	op->append.body_len = body.len;
	p->req.cost += body.len + 256;
	return SP_OK;
}

static int
build_ack(inbox_dispatch *d, pending *p)
{
	const sp_frame *f = &p->f;
	inbox_op *op = &p->req.op;
	bool upto = sp_frame_has(f, SP_F_UPTO_SEQ), list = sp_frame_has(f, SP_F_SEQS);

	(void)d;
	if (upto == list)
		return upto ? SP_EINVAL : SP_EMISSING;
	op->kind = INBOX_OP_ACK;
	op->ack.device = sp_frame_u64(f, SP_F_DEVICE);
	op->ack.upto_seq = sp_frame_u64(f, SP_F_UPTO_SEQ);
	if (list) {
		const sp_val *v = sp_frame_get(f, SP_F_SEQS);
		if (v->us.n == 0)
			return SP_EMISSING;
		op->ack.seqs = v->us.v;
		op->ack.nseqs = v->us.n;
	}
	p->req.cost = 64 + 64 * (size_t)op->ack.nseqs;
	return SP_OK;
}

static int
build_purge(inbox_dispatch *d, pending *p)
{
	(void)d;
	p->req.op.kind = INBOX_OP_PURGE;
	p->req.op.purge.device = sp_frame_u64(&p->f, SP_F_DEVICE);
	p->req.cost = 64;
	return SP_OK;
}

static int
build_blob_put(inbox_dispatch *d, pending *p)
{
	const sp_frame *f = &p->f;
	inbox_op *op = &p->req.op;
	sp_bin b = sp_frame_bin(f, SP_F_BYTES);

	(void)d;
	op->kind = INBOX_OP_BLOB_PUT;
	memcpy(op->blob_put.blob_id, sp_frame_bin(f, SP_F_BLOB_ID).p, INBOX_BLOB_ID_LEN);
	op->blob_put.offset = sp_frame_u64(f, SP_F_OFFSET);
	op->blob_put.bytes = b.p;
	op->blob_put.len = b.len;
	p->req.cost = b.len + 128;
	return SP_OK;
}

/* BLOB_DONE: the digest is checked here, in a read txn (stored chunks never change), so
 * the writer does not hash up to max-blob-size bytes while appends wait. */
static int
build_blob_done(inbox_dispatch *d, pending *p)
{
	const sp_frame *f = &p->f;
	inbox_op *op = &p->req.op;
	sp_bin sha = sp_frame_bin(f, SP_F_SHA256);
	const sp_val *devs = sp_frame_get(f, SP_F_DEVICES);
	uint64_t size = sp_frame_u64(f, SP_F_SIZE);
	inbox_blob_info info;
	uint8_t got[INBOX_SHA256_LEN];
	MDB_txn *txn;
	int rc;

	op->kind = INBOX_OP_BLOB_DONE;
	memcpy(op->blob_done.blob_id, sp_frame_bin(f, SP_F_BLOB_ID).p, INBOX_BLOB_ID_LEN);
	op->blob_done.size = size;
	memcpy(op->blob_done.sha256, sha.p, INBOX_SHA256_LEN);
	op->blob_done.devices = devs->us.v;
	op->blob_done.ndevices = devs->us.n;
	p->req.cost = 128 + 8 * (size_t)devs->us.n;
	if (size > inbox_store_cfg(d->store)->max_blob_size)
		return SP_ETOOBIG;
	if ((rc = inbox_store_read_begin(d->store, &txn)))
		return rc;
	if ((rc = inbox_store_blob_info(d->store, txn, op->blob_done.blob_id, &info)))
		goto out;
	if (info.done)
		goto out; /* a retry: apply compares it with what was recorded */
	if (info.have != size) {
		rc = info.have < size ? SP_EGAP : SP_ERANGE;
		goto out;
	}
	if ((rc = inbox_store_blob_sha256(d->store, txn, op->blob_done.blob_id, size, got)))
		goto out;
	if (memcmp(got, sha.p, INBOX_SHA256_LEN) != 0)
		rc = SP_EDIGEST;
out:
	inbox_store_read_end(txn);
	return rc;
}

/* A write: the op goes to the writer; the reply is sent after its commit. Takes msg and f. */
static void
serve_write(inbox_dispatch *d, const serve_entry *how, nng_msg *msg, sp_frame *f,
    inbox_reply_fn reply, void *arg)
{
	pending *p = calloc(1, sizeof(*p));
	int rc;
	if (!p) {
		reply(arg, error_msg(f, SP_ENOMEM));
		sp_frame_fini(f);
		nng_msg_free(msg);
		return;
	}
	p->msg = msg;
	p->f = *f;
	p->how = how;
	p->reply = reply;
	p->reply_arg = arg;
	p->req.done = write_done;
	if ((rc = how->build(d, p))) {
		reply_error(&p->f, rc, reply, arg);
		pending_free(p);
		return;
	}
	inbox_commit_submit(d->commit, &p->req);
}

static void
multi_free(multi *mu)
{
	for (uint32_t i = 0; i < mu->n; i++)
		inbox_op_fini(&mu->items[i].req.op);
	sp_frame_fini(&mu->f);
	nng_msg_free(mu->msg);
	free(mu);
}

static nng_msg *
multi_reply(multi *mu)
{
	sp_frame *recs = calloc(mu->n, sizeof(sp_frame)), rep;
	nng_msg *m;

	if (!recs)
		return error_msg(&mu->f, SP_ENOMEM);
	for (uint32_t i = 0; i < mu->n; i++) {
		const inbox_op *op = &mu->items[i].req.op;
		sp_frame_init(&recs[i], SP_T_APPEND_RESULT, 0, false);
		if (op->rc != SP_OK) {
			sp_frame_set_u64(&recs[i], SP_F_SEQ, 0);
			sp_frame_set_i64(&recs[i], SP_F_CODE, op->rc);
			continue;
		}
		sp_frame_set_u64(&recs[i], SP_F_SEQ, op->append.targets[0].seq);
		if (op->append.targets[0].dup)
			sp_frame_set_bool(&recs[i], SP_F_DUP, true);
	}
	sp_frame_init(&rep, SP_T_APPENDED_MULTI, 0, false);
	sp_frame_set_recs(&rep, SP_F_RESULTS, recs, mu->n);
	m = frame_msg(&mu->f, &rep);
	free(recs);
	return m;
}

static void
multi_item_done(inbox_req *req)
{
	multi *mu = req->arg;
	/* acq_rel: the last one sees every other item's result. */
	if (atomic_fetch_sub_explicit(&mu->left, 1, memory_order_acq_rel) != 1)
		return;
	mu->reply(mu->reply_arg, multi_reply(mu));
	multi_free(mu);
}

/* APPEND_MULTI: every item becomes the op a single APPEND would (dedup and cap per item),
 * all submitted at once so that they normally share a commit. */
static void
take_append_multi(inbox_dispatch *d, nng_msg *msg, sp_frame *f, inbox_reply_fn reply, void *arg)
{
	const sp_val *v = sp_frame_get(f, SP_F_APPEND_ITEMS);
	uint32_t n = v->rs.n;
	multi *mu;

	if (n == 0) {
		reply_error(f, SP_EMISSING, reply, arg);
		goto fail;
	}
	if (!(mu = calloc(1, sizeof(*mu) + n * sizeof(multi_item)))) {
		reply(arg, error_msg(f, SP_ENOMEM));
		goto fail;
	}
	mu->msg = msg;
	mu->f = *f;
	mu->reply = reply;
	mu->reply_arg = arg;
	mu->n = n;
	atomic_init(&mu->left, n);
	for (uint32_t i = 0; i < n; i++) {
		multi_item *it = &mu->items[i];
		build_append_one(&v->rs.v[i], &it->req, &it->one);
		it->req.done = multi_item_done;
		it->req.arg = mu;
		it->req.next = i + 1 < n ? &mu->items[i + 1].req : NULL;
	}
	/* One queue insertion, so the items share a commit; mu may be freed before it returns. */
	inbox_commit_submit_chain(d->commit, &mu->items[0].req);
	return;
fail:
	sp_frame_fini(f);
	nng_msg_free(msg);
}

/* ---- reads ---- */

static nng_msg *
read_fetch(inbox_dispatch *d, const sp_frame *f)
{
	uint64_t device = sp_frame_u64(f, SP_F_DEVICE), after = sp_frame_u64(f, SP_F_AFTER_SEQ);
	uint64_t want = sp_frame_u64(f, SP_F_MAX_COUNT), bytes = sp_frame_u64(f, SP_F_MAX_BYTES);
	size_t cap = sp_frame_limit_large() - REPLY_SLACK;
	inbox_entry *ents = NULL;
	sp_frame *recs = NULL, rep;
	nng_msg *m = NULL;
	MDB_txn *txn;
	bool more;
	int n, rc;

	if (want == 0)
		want = d->cfg.fetch_default_count;
	if (want > FETCH_MAX_COUNT)
		want = FETCH_MAX_COUNT;
	if (bytes == 0)
		bytes = d->cfg.fetch_default_bytes;
	if (bytes > cap)
		bytes = cap;
	ents = malloc(sizeof(*ents) * want);
	recs = calloc(want, sizeof(*recs));
	if (!ents || !recs) {
		m = error_msg(f, SP_ENOMEM);
		goto out;
	}
	if ((rc = inbox_store_read_begin(d->store, &txn))) {
		m = error_msg(f, rc);
		goto out;
	}
	n = inbox_store_fetch(
	    d->store, txn, device, after, (uint32_t)want, (size_t)bytes, ents, &more);
	if (n < 0) {
		m = error_msg(f, n);
		inbox_store_read_end(txn);
		goto out;
	}
	for (int i = 0; i < n; i++) {
		const inbox_entry *e = &ents[i];
		sp_frame_init(&recs[i], SP_T_ENTRY, 0, false);
		sp_frame_set_u64(&recs[i], SP_F_SEQ, e->seq);
		sp_frame_set_bin(&recs[i], SP_F_MSG_ID, e->msg_id, INBOX_MSG_ID_LEN);
		sp_frame_set_u64(&recs[i], SP_F_FROM_USER, e->from_user);
		sp_frame_set_u64(&recs[i], SP_F_FROM_DEVICE, e->from_device);
		sp_frame_set_u64(&recs[i], SP_F_SERVER_TS, e->server_ts);
		sp_frame_set_u64(&recs[i], SP_F_ETYPE, e->etype);
		sp_frame_set_bin(&recs[i], SP_F_ENV, e->env, e->env_len);
		if (e->has_group)
			sp_frame_set_u64(&recs[i], SP_F_GROUP, e->group);
		if (e->ct)
			sp_frame_set_bin(&recs[i], SP_F_CT, e->ct, e->ct_len);
	}
	sp_frame_init(&rep, SP_T_ENTRIES_R, 0, false);
	sp_frame_set_recs(&rep, SP_F_ENTRIES, recs, (uint32_t)n);
	sp_frame_set_bool(&rep, SP_F_MORE, more);
	if (n > 0)
		sp_frame_set_u64(&rep, SP_F_LAST_SEQ, ents[n - 1].seq);
	m = frame_msg(f, &rep); /* packs while the txn still maps the values */
	inbox_store_read_end(txn);
	sp_metric_inc(inbox_m.fetches);
	sp_metric_add(inbox_m.fetched, (uint64_t)n);
out:
	free(ents);
	free(recs);
	return m;
}

static nng_msg *
read_stat(inbox_dispatch *d, const sp_frame *f)
{
	inbox_shard_stat ss;
	inbox_stat st = { 0 };
	MDB_txn *txn;
	sp_frame rep;
	int rc;

	if ((rc = inbox_store_read_begin(d->store, &txn)))
		return error_msg(f, rc);
	rc = inbox_store_shard_stat(d->store, txn, &ss);
	if (rc == SP_OK && sp_frame_has(f, SP_F_DEVICE))
		rc = inbox_store_stat(d->store, txn, sp_frame_u64(f, SP_F_DEVICE), &st);
	inbox_store_read_end(txn);
	if (rc)
		return error_msg(f, rc);
	sp_frame_init(&rep, SP_T_STAT_R, 0, false);
	if (sp_frame_has(f, SP_F_DEVICE)) {
		sp_frame_set_u64(&rep, SP_F_DEPTH, st.depth);
		sp_frame_set_u64(&rep, SP_F_LAST_SEQ, st.last_seq);
		sp_frame_set_u64(&rep, SP_F_QUEUE_BYTES, st.bytes);
		if (st.oldest_ts)
			sp_frame_set_u64(&rep, SP_F_OLDEST_TS, st.oldest_ts);
	} else {
		sp_frame_set_u64(&rep, SP_F_DEPTH, ss.entries);
		sp_frame_set_u64(&rep, SP_F_LAST_SEQ, 0);
	}
	sp_frame_set_u64(&rep, SP_F_SHARD, d->cfg.shard);
	sp_frame_set_u64(&rep, SP_F_LSN, ss.lsn);
	sp_frame_set_u64(&rep, SP_F_COMMITS, d->commit ? inbox_commit_count(d->commit) : 0);
	sp_frame_set_u64(&rep, SP_F_SHARD_DEPTH, ss.entries);
	sp_metric_inc(inbox_m.stat_reqs);
	return frame_msg(f, &rep);
}

static nng_msg *
read_last_seqs(inbox_dispatch *d, const sp_frame *f)
{
	const sp_val *devs = sp_frame_get(f, SP_F_DEVICES);
	uint64_t *seqs = calloc(devs->us.n ? devs->us.n : 1, sizeof(uint64_t));
	sp_frame rep;

	if (!seqs)
		return error_msg(f, SP_ENOMEM);
	for (uint32_t i = 0; i < devs->us.n; i++)
		seqs[i] = inbox_store_last_seq(d->store, devs->us.v[i]);
	sp_frame_init(&rep, SP_T_LAST_SEQS_R, 0, false);
	sp_frame_set_u64s(&rep, SP_F_SEQ_LIST, seqs, devs->us.n);
	nng_msg *m = frame_msg(f, &rep);
	free(seqs);
	sp_metric_inc(inbox_m.stat_reqs);
	return m;
}

/* Queues the note that `device` read the blob to its end. */
static void
note_fetched(inbox_dispatch *d, const uint8_t *blob_id, uint64_t device)
{
	inbox_req *r = calloc(1, sizeof(*r));
	if (!r) {
		inbox_drop(inbox_m.dropped_ops,
		    "blob fetched note: %s (the blob then lives until its TTL)",
		    sp_strerror(SP_ENOMEM));
		return;
	}
	r->op.kind = INBOX_OP_BLOB_FETCHED;
	memcpy(r->op.blob_fetched.blob_id, blob_id, INBOX_BLOB_ID_LEN);
	r->op.blob_fetched.device = device;
	r->cost = 64;
	r->done = silent_done;
	inbox_commit_submit(d->commit, r);
}

static nng_msg *
read_blob_get(inbox_dispatch *d, const sp_frame *f)
{
	const uint8_t *id = sp_frame_bin(f, SP_F_BLOB_ID).p;
	uint64_t off = sp_frame_u64(f, SP_F_OFFSET), len = sp_frame_u64(f, SP_F_LEN);
	size_t cap = sp_frame_limit_large() - REPLY_SLACK;
	inbox_blob_info info;
	uint8_t *buf = NULL;
	bool listed = false;
	nng_msg *m = NULL;
	MDB_txn *txn;
	sp_frame rep;
	long n;
	int rc;

	if (len > cap)
		len = cap;
	if ((rc = inbox_store_read_begin(d->store, &txn)))
		return error_msg(f, rc);
	if ((rc = inbox_store_blob_info(d->store, txn, id, &info)))
		goto fail;
	if (!info.done) {
		rc = SP_ESTATE;
		goto fail;
	}
	if (off > info.size) {
		rc = SP_ERANGE;
		goto fail;
	}
	if (len > info.size - off)
		len = info.size - off;
	if (!(buf = malloc(len ? len : 1))) {
		rc = SP_ENOMEM;
		goto fail;
	}
	if ((n = inbox_store_blob_read(d->store, txn, id, off, buf, len)) < 0) {
		rc = (int)n;
		goto fail;
	}
	if (sp_frame_has(f, SP_F_DEVICE) && off + (uint64_t)n == info.size) {
		uint64_t dev = sp_frame_u64(f, SP_F_DEVICE);
		for (uint32_t i = 0; i < info.ndevices && !listed; i++)
			listed = inbox_le64_get(info.devices + 8 * i) == dev;
	}
	inbox_store_read_end(txn);
	sp_frame_init(&rep, SP_T_BLOB_DATA, 0, false);
	sp_frame_set_bin(&rep, SP_F_BLOB_ID, id, INBOX_BLOB_ID_LEN);
	sp_frame_set_u64(&rep, SP_F_OFFSET, off);
	sp_frame_set_bin(&rep, SP_F_BYTES, buf, (size_t)n);
	sp_frame_set_u64(&rep, SP_F_SIZE, info.size);
	m = frame_msg(f, &rep);
	free(buf);
	sp_metric_inc(inbox_m.blob_gets);
	if (listed)
		note_fetched(d, id, sp_frame_u64(f, SP_F_DEVICE));
	return m;
fail:
	inbox_store_read_end(txn);
	free(buf);
	return error_msg(f, rc);
}

static nng_msg *
read_ping(inbox_dispatch *d, const sp_frame *f)
{
	sp_frame rep;
	(void)d;
	sp_frame_init(&rep, SP_T_PONG, 0, false);
	return frame_msg(f, &rep);
}

/* ---- the table ---- */

/* Every request type the shard serves, and how. A type without an entry (a reply, a
 * record, another tier's request) is answered ERROR{SP_EBADTYPE}. */
static const serve_entry serve[SP_T__MAX] = {
	[SP_T_APPEND] = { .build = build_append, .done = reply_appended },
	[SP_T_APPEND_BATCH] = { .build = build_append_batch, .done = reply_appended_batch },
	[SP_T_APPEND_MULTI] = { .take = take_append_multi },
	[SP_T_INBOX_ACK] = { .build = build_ack, .done = reply_acked },
	[SP_T_PURGE] = { .build = build_purge, .done = reply_purged },
	[SP_T_BLOB_PUT] = { .build = build_blob_put, .done = reply_blob_stored },
	[SP_T_BLOB_DONE] = { .build = build_blob_done, .done = reply_ok },
	[SP_T_FETCH] = { .read = read_fetch },
	[SP_T_STAT] = { .read = read_stat },
	[SP_T_LAST_SEQS] = { .read = read_last_seqs },
	[SP_T_BLOB_GET] = { .read = read_blob_get },
	[SP_T_PING] = { .read = read_ping },
};

bool
inbox_dispatch_serves(unsigned type)
{
	if (type >= SP_T__MAX)
		return false;
	const serve_entry *how = &serve[type];
	return how->read || how->build || how->take;
}

void
inbox_dispatch_handle(inbox_dispatch *d, nng_msg *msg, inbox_reply_fn reply, void *arg)
{
	sp_frame f;
	int rc = sp_nng_msg_decode(msg, &f);

	if (rc) {
		reply_error(NULL, rc, reply, arg);
		nng_msg_free(msg);
		return;
	}
	const serve_entry *how = &serve[f.type]; /* f.type is a uint8_t */
	if (d->cfg.gate && f.type != SP_T_PING && (how->read || how->build || how->take)
	    && (rc = d->cfg.gate(d->cfg.gate_arg, !how->read))) {
		reply_error(&f, rc, reply, arg);
		sp_frame_fini(&f);
		nng_msg_free(msg);
		return;
	}
	if (how->take) {
		how->take(d, msg, &f, reply, arg);
		return;
	}
	if (how->build) {
		serve_write(d, how, msg, &f, reply, arg);
		return;
	}
	if (how->read) {
		reply(arg, how->read(d, &f));
	} else {
		sp_metric_inc(inbox_m.unserved);
		reply_error(&f, SP_EBADTYPE, reply, arg);
	}
	sp_frame_fini(&f);
	nng_msg_free(msg);
}
