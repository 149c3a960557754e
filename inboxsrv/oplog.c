#include <stdlib.h>
#include <string.h>

#include "oplog.h"
#include "sp_bytes.h"
#include "sp_error.h"
#include "sp_proto.h"
#include "store_internal.h"

_Static_assert(INBOX_OPLOG_MAX_TARGETS < 1u << TARGET_BITS, "a record the store cannot apply");
_Static_assert(INBOX_OPLOG_MAX_TARGETS >= SP_MAX_FANOUT_DEVICES, "a batch the oplog refuses");

#define FLAG_GROUP 1
#define FLAG_SHARED 2

enum { OUT_STORED = 0, OUT_DUP = 1, OUT_FULL = 2 };

typedef struct wbuf {
	uint8_t *p;
	size_t len, cap;
} wbuf;

static void
put_bytes(wbuf *w, const void *src, size_t n)
{
	if (w->len + n <= w->cap && n)
		memcpy(w->p + w->len, src, n);
	w->len += n;
}

static void
put_u8(wbuf *w, uint8_t v)
{
	put_bytes(w, &v, 1);
}

static void
put_u32(wbuf *w, uint32_t v)
{
	uint8_t b[4];
	sp_be32_put(b, v);
	put_bytes(w, b, 4);
}

static void
put_u64(wbuf *w, uint64_t v)
{
	uint8_t b[8];
	sp_be64_put(b, v);
	put_bytes(w, b, 8);
}

/* One writer for both size and encode: with cap 0 it only counts. */
static int
encode(const inbox_op *op, wbuf *w)
{
	put_u8(w, INBOX_OPLOG_VERSION);
	put_u8(w, (uint8_t)op->kind);
	put_u64(w, op->lsn);
	put_u64(w, op->ts);
	switch (op->kind) {
	case INBOX_OP_APPEND: {
		const __typeof__(op->append) *a = &op->append;
		if (a->ntargets == 0 || a->ntargets > INBOX_OPLOG_MAX_TARGETS)
			return SP_EINVAL;
		put_bytes(w, a->msg_id, INBOX_MSG_ID_LEN);
		put_u64(w, a->from_user);
		put_u64(w, a->from_device);
		put_u64(w, a->server_ts);
		put_u64(w, a->etype);
		put_u64(w, a->group);
		put_u8(w, (uint8_t)((a->has_group ? FLAG_GROUP : 0) | (a->shared ? FLAG_SHARED : 0)));
		put_u64(w, a->body_id);
		put_u32(w, a->body_len);
		put_bytes(w, a->body, a->body_len);
		put_u32(w, a->ntargets);
		for (uint32_t i = 0; i < a->ntargets; i++) {
			const inbox_target *t = &a->targets[i];
			put_u64(w, t->device);
			put_u64(w, t->seq);
			put_u8(w, t->rc != SP_OK ? OUT_FULL : t->dup ? OUT_DUP : OUT_STORED);
			put_u32(w, t->ct ? t->ct_len : 0);
			if (t->ct)
				put_bytes(w, t->ct, t->ct_len);
		}
		break;
	}
	case INBOX_OP_ACK:
		if (op->ack.nseqs > INBOX_OPLOG_MAX_LIST)
			return SP_EINVAL;
		put_u64(w, op->ack.device);
		put_u64(w, op->ack.upto_seq);
		put_u32(w, op->ack.nseqs);
		for (uint32_t i = 0; i < op->ack.nseqs; i++)
			put_u64(w, op->ack.seqs[i]);
		break;
	case INBOX_OP_PURGE:
		put_u64(w, op->purge.device);
		break;
	case INBOX_OP_SWEEP:
		put_u32(w, op->sweep.limit);
		break;
	case INBOX_OP_BLOB_PUT:
		put_bytes(w, op->blob_put.blob_id, INBOX_BLOB_ID_LEN);
		put_u64(w, op->blob_put.offset);
		put_u32(w, op->blob_put.len);
		put_bytes(w, op->blob_put.bytes, op->blob_put.len);
		break;
	case INBOX_OP_BLOB_DONE:
		if (op->blob_done.ndevices > INBOX_OPLOG_MAX_LIST)
			return SP_EINVAL;
		put_bytes(w, op->blob_done.blob_id, INBOX_BLOB_ID_LEN);
		put_u64(w, op->blob_done.size);
		put_bytes(w, op->blob_done.sha256, INBOX_SHA256_LEN);
		put_u32(w, op->blob_done.ndevices);
		for (uint32_t i = 0; i < op->blob_done.ndevices; i++)
			put_u64(w, op->blob_done.devices[i]);
		break;
	case INBOX_OP_BLOB_FETCHED:
		put_bytes(w, op->blob_fetched.blob_id, INBOX_BLOB_ID_LEN);
		put_u64(w, op->blob_fetched.device);
		break;
	default:
		return SP_EINVAL;
	}
	return SP_OK;
}

size_t
inbox_oplog_size(const inbox_op *op)
{
	wbuf w = { NULL, 0, 0 };
	return encode(op, &w) == SP_OK ? w.len : 0;
}

long
inbox_oplog_encode(const inbox_op *op, uint8_t *buf, size_t cap)
{
	wbuf w = { buf, 0, cap };
	if (op->lsn == 0)
		return SP_EINVAL;
	int rc = encode(op, &w);
	if (rc)
		return rc;
	if (w.len > cap)
		return SP_ETOOBIG;
	return (long)w.len;
}

/* ---- decoding: every read is bounded by what is left ---- */

typedef struct rbuf {
	const uint8_t *p;
	size_t left;
	int rc;
} rbuf;

static const uint8_t *
take(rbuf *r, size_t n)
{
	if (r->rc)
		return NULL;
	if (n > r->left) {
		r->rc = SP_ETRUNC;
		return NULL;
	}
	const uint8_t *at = r->p;
	r->p += n;
	r->left -= n;
	return at;
}

static uint8_t
get_u8(rbuf *r)
{
	const uint8_t *p = take(r, 1);
	return p ? p[0] : 0;
}

static uint32_t
get_u32(rbuf *r)
{
	const uint8_t *p = take(r, 4);
	return p ? sp_be32_get(p) : 0;
}

static uint64_t
get_u64(rbuf *r)
{
	const uint8_t *p = take(r, 8);
	return p ? sp_be64_get(p) : 0;
}

static void
get_id(rbuf *r, uint8_t *out, size_t n)
{
	const uint8_t *p = take(r, n);
	if (p)
		memcpy(out, p, n);
}

/* A count of `each`-byte items that must fit in what is left and under `max`. */
static uint32_t
get_count(rbuf *r, size_t each, uint32_t max)
{
	uint32_t n = get_u32(r);
	if (r->rc)
		return 0;
	if (n > max) {
		r->rc = SP_ETOOBIG;
		return 0;
	}
	if ((size_t)n * each > r->left) {
		r->rc = SP_ETRUNC;
		return 0;
	}
	return n;
}

static uint64_t *
get_list(rbuf *r, uint32_t n)
{
	uint64_t *v = malloc((n ? n : 1) * sizeof(*v));
	if (!v) {
		r->rc = SP_ENOMEM;
		return NULL;
	}
	for (uint32_t i = 0; i < n; i++)
		v[i] = get_u64(r);
	return v;
}

static void
decode_append(rbuf *r, inbox_oplog_rec *rec)
{
	__typeof__(rec->op.append) *a = &rec->op.append;
	get_id(r, a->msg_id, INBOX_MSG_ID_LEN);
	a->from_user = get_u64(r);
	a->from_device = get_u64(r);
	a->server_ts = get_u64(r);
	a->etype = get_u64(r);
	a->group = get_u64(r);
	uint8_t flags = get_u8(r);
	if (!r->rc && (flags & ~(FLAG_GROUP | FLAG_SHARED)))
		r->rc = SP_EMALFORMED;
	a->has_group = flags & FLAG_GROUP;
	a->shared = flags & FLAG_SHARED;
	a->body_id = get_u64(r);
	a->body_len = get_count(r, 1, UINT32_MAX);
	a->body = take(r, a->body_len);
	/* Each target is at least 21 bytes. */
	uint32_t n = get_count(r, 21, INBOX_OPLOG_MAX_TARGETS);
	if (r->rc)
		return;
	if (n == 0 || (!a->shared && n != 1)) {
		r->rc = SP_EMALFORMED;
		return;
	}
	rec->targets = calloc(n, sizeof(*rec->targets));
	rec->outcome = calloc(n, 1);
	rec->seqs = calloc(n, sizeof(*rec->seqs));
	if (!rec->targets || !rec->outcome || !rec->seqs) {
		r->rc = SP_ENOMEM;
		return;
	}
	a->targets = rec->targets;
	a->ntargets = n;
	for (uint32_t i = 0; i < n && !r->rc; i++) {
		inbox_target *t = &rec->targets[i];
		t->device = get_u64(r);
		t->seq = rec->seqs[i] = get_u64(r);
		rec->outcome[i] = get_u8(r);
		if (!r->rc && rec->outcome[i] > OUT_FULL)
			r->rc = SP_EMALFORMED;
		t->ct_len = get_count(r, 1, UINT32_MAX);
		t->ct = t->ct_len ? take(r, t->ct_len) : NULL;
		/* Only a stored target's seq is given to apply to check; a duplicate's is
		 * compared after (apply reports the first append's seq), a refused one has none. */
		if (rec->outcome[i] != OUT_STORED)
			t->seq = 0;
	}
}

int
inbox_oplog_decode(const uint8_t *p, size_t len, inbox_oplog_rec *out)
{
	rbuf r = { p, len, SP_OK };
	memset(out, 0, sizeof(*out));
	inbox_op *op = &out->op;
	if (get_u8(&r) != INBOX_OPLOG_VERSION && !r.rc)
		r.rc = SP_EMALFORMED;
	op->kind = (inbox_op_kind)get_u8(&r);
	op->lsn = get_u64(&r);
	op->ts = get_u64(&r);
	if (!r.rc && (op->lsn == 0 || op->ts == 0))
		r.rc = SP_EMALFORMED;
	if (r.rc)
		goto out;
	switch (op->kind) {
	case INBOX_OP_APPEND:
		decode_append(&r, out);
		break;
	case INBOX_OP_ACK:
		op->ack.device = get_u64(&r);
		op->ack.upto_seq = get_u64(&r);
		op->ack.nseqs = get_count(&r, 8, INBOX_OPLOG_MAX_LIST);
		if (!r.rc && op->ack.nseqs)
			op->ack.seqs = out->list = get_list(&r, op->ack.nseqs);
		break;
	case INBOX_OP_PURGE:
		op->purge.device = get_u64(&r);
		break;
	case INBOX_OP_SWEEP:
		op->sweep.limit = get_u32(&r);
		break;
	case INBOX_OP_BLOB_PUT:
		get_id(&r, op->blob_put.blob_id, INBOX_BLOB_ID_LEN);
		op->blob_put.offset = get_u64(&r);
		op->blob_put.len = get_count(&r, 1, UINT32_MAX);
		op->blob_put.bytes = take(&r, op->blob_put.len);
		break;
	case INBOX_OP_BLOB_DONE:
		get_id(&r, op->blob_done.blob_id, INBOX_BLOB_ID_LEN);
		op->blob_done.size = get_u64(&r);
		get_id(&r, op->blob_done.sha256, INBOX_SHA256_LEN);
		op->blob_done.ndevices = get_count(&r, 8, INBOX_OPLOG_MAX_LIST);
		if (!r.rc)
			op->blob_done.devices = out->list = get_list(&r, op->blob_done.ndevices);
		break;
	case INBOX_OP_BLOB_FETCHED:
		get_id(&r, op->blob_fetched.blob_id, INBOX_BLOB_ID_LEN);
		op->blob_fetched.device = get_u64(&r);
		break;
	default:
		r.rc = SP_EMALFORMED;
	}
	if (!r.rc && r.left)
		r.rc = SP_EMALFORMED;
out:
	if (r.rc)
		inbox_oplog_fini(out);
	return r.rc;
}

void
inbox_oplog_fini(inbox_oplog_rec *rec)
{
	if (!rec)
		return;
	inbox_op_fini(&rec->op);
	free(rec->targets);
	free(rec->outcome);
	free(rec->seqs);
	free(rec->list);
	memset(rec, 0, sizeof(*rec));
}

int
inbox_oplog_check(const inbox_oplog_rec *rec)
{
	const inbox_op *op = &rec->op;
	/* A refused APPEND (LSN, seq or body id mismatch) may leave its targets as decoded. */
	if (op->rc != SP_OK)
		return SP_EMISMATCH;
	if (op->kind != INBOX_OP_APPEND)
		return SP_OK;
	for (uint32_t i = 0; i < op->append.ntargets; i++) {
		const inbox_target *t = &op->append.targets[i];
		uint8_t got = t->rc != SP_OK ? OUT_FULL : t->dup ? OUT_DUP : OUT_STORED;
		if (got != rec->outcome[i] || (got != OUT_FULL && t->seq != rec->seqs[i]))
			return SP_EMISMATCH;
	}
	return SP_OK;
}
