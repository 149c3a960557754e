#include <stdlib.h>
#include <string.h>

#include <uthash.h>

#include "connsrv/appendq.h"
#include "sp_error.h"
#include "sp_metrics.h"

/* Items per APPEND_MULTI (the bound of its items field). */
#define MAX_ITEMS 256
/* An upper bound of an APPEND_ITEM's packed size besides its env: a fixmap header, eight
 * keys (62 bytes), six uint64 values (9 bytes each), msg_id (18) and env's bin header (5). */
#define ITEM_OVERHEAD 160

typedef struct slot {
	cs_appendq_cb cb;
	void *arg;
} slot;

/* The appends of one request: queued (items set) until the flush, then in flight (items
 * freed, slots kept until the reply). */
typedef struct batch {
	char url[256];
	sp_frame *items;
	slot *slots;
	uint32_t n, cap;
	size_t bytes;
	UT_hash_handle hh;  /* q->open, by url */
	struct batch *next; /* q->full */
} batch;

struct cs_appendq {
	cs_shardcall *shards;
	struct event *flush_ev;
	bool armed;   /* flush_ev is active for this pass */
	bool closing; /* cs_appendq_free began */
	batch *open;  /* the batch still filling, per url */
	batch *full, *full_tail; /* batches that reached a bound during this pass */
	unsigned queued;
	sp_metric *requests, *items;
};

static void
batch_free(batch *b)
{
	free(b->items);
	free(b->slots);
	free(b);
}

/* Completes every append of `b` with `rc` and frees it. */
static void
batch_fail(batch *b, int rc)
{
	for (uint32_t i = 0; i < b->n; i++)
		b->slots[i].cb(b->slots[i].arg, rc, 0);
	batch_free(b);
}

static void
on_reply(void *arg, int rc, const sp_frame *reply)
{
	batch *b = arg;
	const sp_val *v = NULL;
	if (rc == SP_OK && (reply->type != SP_T_APPENDED_MULTI ||
			    !(v = sp_frame_get(reply, SP_F_RESULTS)) || v->rs.n != b->n))
		rc = SP_EPROTO;
	if (rc) {
		batch_fail(b, rc);
		return;
	}
	for (uint32_t i = 0; i < b->n; i++) {
		const sp_frame *r = &v->rs.v[i];
		int64_t code = sp_frame_i64(r, SP_F_CODE);
		uint64_t seq = sp_frame_u64(r, SP_F_SEQ);
		/* A refused item carries its code; anything else without a seq is a bad reply. */
		int irc = code < 0 ? (int)code : seq == 0 || code > 0 ? SP_EPROTO : SP_OK;
		b->slots[i].cb(b->slots[i].arg, irc, irc ? 0 : seq);
	}
	batch_free(b);
}

static void
send_batch(cs_appendq *q, batch *b)
{
	sp_frame req;
	sp_frame_init(&req, SP_T_APPEND_MULTI, 0, false);
	sp_frame_set_recs(&req, SP_F_APPEND_ITEMS, b->items, b->n);
	q->queued -= b->n;
	/* The items' devices route a retry to their shard's new primary. */
	uint64_t devices[MAX_ITEMS];
	for (uint32_t i = 0; i < b->n; i++)
		devices[i] = sp_frame_u64(&b->items[i], SP_F_DEVICE);
	int rc = cs_shardcall_devices(q->shards, b->url, devices, b->n, &req, on_reply, b);
	/* Packed: the items (and what they borrow) are no longer needed here. */
	free(b->items);
	b->items = NULL;
	if (rc) {
		batch_fail(b, rc);
		return;
	}
	sp_metric_inc(q->requests);
	sp_metric_add(q->items, b->n);
}

/* End of the loop pass in which appends were queued: one request per batch. */
static void
on_flush(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_appendq *q = arg;
	/* Detached first: a failure's callbacks may queue appends, which start a new pass. */
	batch *full = q->full, *open = q->open, *b, *tmp;
	q->full = q->full_tail = NULL;
	q->open = NULL;
	q->armed = false;
	while ((b = full)) {
		full = b->next;
		send_batch(q, b);
	}
	HASH_ITER(hh, open, b, tmp) {
		HASH_DEL(open, b);
		send_batch(q, b);
	}
}

int
cs_appendq_new(struct event_base *base, cs_shardcall *shards, cs_appendq **out)
{
	cs_appendq *q = calloc(1, sizeof(*q));
	if (!q)
		return SP_ENOMEM;
	q->shards = shards;
	q->requests = sp_metric_counter("sp_connsrv_append_requests_total",
					"APPEND_MULTI requests sent to inbox shards");
	q->items = sp_metric_counter("sp_connsrv_append_items_total",
				     "appends carried by APPEND_MULTI requests");
	if (!(q->flush_ev = event_new(base, -1, 0, on_flush, q))) {
		free(q);
		return SP_ENOMEM;
	}
	*out = q;
	return SP_OK;
}

void
cs_appendq_free(cs_appendq *q)
{
	if (!q)
		return;
	q->closing = true;
	batch *b, *tmp;
	while ((b = q->full)) {
		q->full = b->next;
		batch_fail(b, SP_ECLOSED);
	}
	HASH_ITER(hh, q->open, b, tmp) {
		HASH_DEL(q->open, b);
		batch_fail(b, SP_ECLOSED);
	}
	event_free(q->flush_ev);
	free(q);
}

/* Makes room for one more item in `b`. */
static int
batch_grow(batch *b)
{
	if (b->n < b->cap)
		return SP_OK;
	uint32_t cap = b->cap ? 2 * b->cap : 8;
	sp_frame *items = realloc(b->items, cap * sizeof(*items));
	if (!items)
		return SP_ENOMEM;
	b->items = items;
	slot *slots = realloc(b->slots, cap * sizeof(*slots));
	if (!slots)
		return SP_ENOMEM;
	b->slots = slots;
	b->cap = cap;
	return SP_OK;
}

int
cs_appendq_add(cs_appendq *q, const char *url, const sp_frame *item, cs_appendq_cb cb, void *arg)
{
	if (q->closing)
		return SP_ECLOSED;
	/* Bounded here, so that one bad item can never fail a request carrying others. */
	const sp_field_def *env_def = sp_field_def_get(SP_F_ENV);
	sp_bin env = sp_frame_bin(item, SP_F_ENV);
	if (env.len < env_def->min || env.len > env_def->max)
		return SP_EFIELDLEN;
	size_t bytes = ITEM_OVERHEAD + env.len;
	batch *b;
	HASH_FIND_STR(q->open, url, b);
	if (b && (b->n == MAX_ITEMS || b->bytes + bytes > CS_APPENDQ_MAX_BYTES)) {
		/* This one is done: it leaves at the flush, and a new batch starts. */
		HASH_DEL(q->open, b);
		b->next = NULL;
		if (q->full_tail)
			q->full_tail->next = b;
		else
			q->full = b;
		q->full_tail = b;
		b = NULL;
	}
	if (!b) {
		if (strlen(url) >= sizeof(b->url))
			return SP_EINVAL;
		if (!(b = calloc(1, sizeof(*b))))
			return SP_ENOMEM;
		strcpy(b->url, url);
		HASH_ADD_STR(q->open, url, b);
	}
	int rc = batch_grow(b);
	if (rc) {
		if (b->n == 0) {
			HASH_DEL(q->open, b);
			batch_free(b);
		}
		return rc;
	}
	b->items[b->n] = *item;
	b->slots[b->n].cb = cb;
	b->slots[b->n].arg = arg;
	b->n++;
	b->bytes += bytes;
	q->queued++;
	if (!q->armed) {
		/* Runs after the events already active in this pass, i.e. once the pass's reads
		 * and completions have queued what they will. */
		q->armed = true;
		event_active(q->flush_ev, EV_READ, 0);
	}
	return SP_OK;
}

unsigned
cs_appendq_queued(const cs_appendq *q)
{
	return q->queued;
}
