#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "qindex.h"
#include "sp_error.h"

/* uthash reports a failed allocation here instead of exiting; adds happen under q->lock. */
static bool hash_oom;
#define HASH_NONFATAL_OOM 1
/* Keys are 64-bit device ids handed out by keysrv, not chosen by senders: a multiplicative
 * hash is enough and much cheaper than uthash's default. */
#define HASH_FUNCTION(keyptr, keylen, hashv)                                                  \
	do {                                                                                   \
		uint64_t k_;                                                                   \
		memcpy(&k_, (keyptr), sizeof(k_));                                             \
		(hashv) = (unsigned)((k_ * 0x9E3779B97F4A7C15ull) >> 32);                      \
	} while (0)
#define uthash_nonfatal_oom(obj) (hash_oom = true)
#include <uthash.h>

/* Item states. The writer sees LIVE and ADDED; readers see all but DEAD. */
enum {
	S_LIVE, /* committed */
	S_ADDED, /* written by the open transaction */
	S_REMOVED, /* committed, deleted by the open transaction */
	S_DEAD /* gone for everyone; kept only to be compacted away */
};

typedef struct qitem {
	uint64_t seq, key;
	uint8_t state;
} qitem;

/* One sender's entries in one device's queue (writer's view; count 0: freed at publish). */
typedef struct qsender {
	uint64_t sender;
	uint64_t count, bytes;
	struct qsender *gone; /* publish: on the list of records to free */
	bool leaving;
	UT_hash_handle hh;
} qsender;

typedef struct qdev {
	uint64_t device;
	qsender *senders; /* by sender user id */
	uint64_t acked; /* while loading: entries up to this seq were acknowledged */
	inbox_qmeta w, c; /* writer's and committed counters */
	qitem *items; /* [start, n): seq order */
	uint32_t start, n, cap, dead;
	UT_hash_handle hh;
} qdev;

typedef struct undo {
	qdev *d; /* NULL: a change of the garbage count */
	uint32_t idx; /* the item changed */
	uint8_t old_state; /* S_DEAD: the item was added */
	inbox_qmeta old;
	uint64_t old_garbage;
	qsender *snd; /* the sender's counts the change moved (by one entry and `bytes`) */
	uint64_t bytes;
} undo;

struct inbox_qindex {
	pthread_mutex_t lock;
	qdev *devs;
	undo *log;
	size_t nlog, caplog;
	uint64_t entries; /* committed queued entries */
	uint64_t garbage; /* writer's view: entries off their queue, still in the log */
	uint64_t item_bytes;
	uint64_t nsenders; /* qsender records held */
};

inbox_qindex *
inbox_qindex_new(void)
{
	inbox_qindex *q = calloc(1, sizeof(*q));
	if (q)
		pthread_mutex_init(&q->lock, NULL);
	return q;
}

void
inbox_qindex_free(inbox_qindex *q)
{
	qdev *d, *tmp;
	if (!q)
		return;
	HASH_ITER(hh, q->devs, d, tmp) {
		qsender *sn, *stmp;
		HASH_ITER(hh, d->senders, sn, stmp) {
			HASH_DEL(d->senders, sn);
			free(sn);
		}
		HASH_DEL(q->devs, d);
		free(d->items);
		free(d);
	}
	pthread_mutex_destroy(&q->lock);
	free(q->log);
	free(q);
}

static qdev *
dev_find(inbox_qindex *q, uint64_t device)
{
	qdev *d;
	HASH_FIND(hh, q->devs, &device, sizeof(device), d);
	return d;
}

static qdev *
dev_get(inbox_qindex *q, uint64_t device)
{
	qdev *d = dev_find(q, device);
	if (d)
		return d;
	if (!(d = calloc(1, sizeof(*d))))
		return NULL;
	d->device = device;
	hash_oom = false;
	HASH_ADD(hh, q->devs, device, sizeof(d->device), d);
	if (hash_oom) {
		free(d);
		return NULL;
	}
	return d;
}

static qsender *
sender_find(qdev *d, uint64_t sender)
{
	qsender *sn;
	HASH_FIND(hh, d->senders, &sender, sizeof(sender), sn);
	return sn;
}

static qsender *
sender_get(inbox_qindex *q, qdev *d, uint64_t sender)
{
	qsender *sn = sender_find(d, sender);
	if (sn)
		return sn;
	if (!(sn = calloc(1, sizeof(*sn))))
		return NULL;
	sn->sender = sender;
	hash_oom = false;
	HASH_ADD(hh, d->senders, sender, sizeof(sn->sender), sn);
	if (hash_oom) {
		free(sn);
		return NULL;
	}
	q->nsenders++;
	return sn;
}

/* Drops DEAD items from the front, and compacts when they are most of the array. */
static void
tidy(inbox_qindex *q, qdev *d)
{
	while (d->start < d->n && d->items[d->start].state == S_DEAD) {
		d->start++;
		d->dead--;
	}
	if (d->start == d->n) {
		d->start = d->n = d->dead = 0;
		if (d->cap > 64) {
			free(d->items);
			q->item_bytes -= (uint64_t)d->cap * sizeof(qitem);
			d->items = NULL;
			d->cap = 0;
		}
		return;
	}
	if (d->start + d->dead > (d->n - d->start) && d->start + d->dead > 32) {
		uint32_t k = 0;
		for (uint32_t i = d->start; i < d->n; i++)
			if (d->items[i].state != S_DEAD)
				d->items[k++] = d->items[i];
		d->start = 0;
		d->n = k;
		d->dead = 0;
	}
}

static int
push_item(inbox_qindex *q, qdev *d, uint64_t seq, uint64_t key, uint8_t state)
{
	/* Grow only: items never move inside a transaction (the undo log holds indexes);
	 * tidy() compacts after publish. */
	if (d->n == d->cap) {
		uint32_t cap = d->cap ? d->cap * 2 : 4;
		qitem *n = realloc(d->items, cap * sizeof(qitem));
		if (!n)
			return SP_ENOMEM;
		q->item_bytes += (uint64_t)(cap - d->cap) * sizeof(qitem);
		d->items = n;
		d->cap = cap;
	}
	d->items[d->n++] = (qitem) { seq, key, state };
	return SP_OK;
}

/* Index of the first item with seq > after (n if none). */
static uint32_t
first_after(const qdev *d, uint64_t after)
{
	uint32_t lo = d->start, hi = d->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (d->items[mid].seq <= after)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static bool
writer_sees(uint8_t state)
{
	return state == S_LIVE || state == S_ADDED;
}

/* ---- loading ---- */

int
inbox_qindex_load_entry(inbox_qindex *q, uint64_t device, uint64_t sender, uint64_t seq,
    uint64_t key, uint64_t bytes)
{
	qdev *d = dev_get(q, device);
	if (!d)
		return SP_ENOMEM;
	if (seq > d->w.last_seq)
		d->w.last_seq = d->c.last_seq = seq;
	if (seq <= d->acked) {
		q->garbage++;
		return SP_OK;
	}
	if (d->n > d->start && d->items[d->n - 1].seq >= seq)
		return SP_ESTORE;
	qsender *sn = sender_get(q, d, sender);
	if (!sn || push_item(q, d, seq, key, S_LIVE))
		return SP_ENOMEM;
	sn->count++;
	sn->bytes += bytes;
	d->w.count++;
	d->w.bytes += bytes;
	d->c = d->w;
	q->entries++;
	return SP_OK;
}

int
inbox_qindex_load_seq(inbox_qindex *q, uint64_t device, uint64_t seq, uint64_t acked)
{
	qdev *d = dev_get(q, device);
	if (!d)
		return SP_ENOMEM;
	if (seq > d->w.last_seq)
		d->w.last_seq = d->c.last_seq = seq;
	if (acked > d->acked)
		d->acked = acked;
	return SP_OK;
}

/* ---- writer ---- */

/* The writer's (or the committed) counters of `device`; zeros for one never seen. */
static void
meta_of(inbox_qindex *q, uint64_t device, bool committed, inbox_qmeta *m)
{
	pthread_mutex_lock(&q->lock);
	qdev *d = dev_find(q, device);
	*m = !d ? (inbox_qmeta) { 0, 0, 0 } : committed ? d->c : d->w;
	pthread_mutex_unlock(&q->lock);
}

void
inbox_qindex_meta(inbox_qindex *q, uint64_t device, inbox_qmeta *m)
{
	meta_of(q, device, false, m);
}

static int
log_push(inbox_qindex *q, qdev *d, uint32_t idx, uint8_t old_state, const inbox_qmeta *old,
    qsender *snd, uint64_t bytes)
{
	if (q->nlog == q->caplog) {
		size_t cap = q->caplog ? q->caplog * 2 : 1024;
		undo *n = realloc(q->log, cap * sizeof(undo));
		if (!n)
			return SP_ENOMEM;
		q->log = n;
		q->caplog = cap;
	}
	q->log[q->nlog++] = (undo) { d, idx, old_state, *old, q->garbage, snd, bytes };
	return SP_OK;
}

int
inbox_qindex_add(inbox_qindex *q, uint64_t device, uint64_t sender, uint64_t seq, uint64_t key,
    uint64_t bytes)
{
	int rc = SP_ENOMEM;
	pthread_mutex_lock(&q->lock);
	qdev *d = dev_get(q, device);
	qsender *sn = d ? sender_get(q, d, sender) : NULL;
	if (!sn)
		goto out;
	if (seq <= d->w.last_seq) {
		rc = SP_EINVAL;
		goto out;
	}
	inbox_qmeta old = d->w;
	if (push_item(q, d, seq, key, S_ADDED))
		goto out;
	if (log_push(q, d, d->n - 1, S_DEAD, &old, sn, bytes)) {
		d->n--;
		goto out;
	}
	sn->count++;
	sn->bytes += bytes;
	d->w.last_seq = seq;
	d->w.count++;
	d->w.bytes += bytes;
	rc = SP_OK;
out:
	pthread_mutex_unlock(&q->lock);
	return rc;
}

/* The writer-visible item `seq` of d, or -1. */
static int64_t
item_of(const qdev *d, uint64_t seq)
{
	uint32_t i = first_after(d, seq - 1);
	if (i < d->n && d->items[i].seq == seq && writer_sees(d->items[i].state))
		return i;
	return -1;
}

int
inbox_qindex_next(inbox_qindex *q, uint64_t device, uint64_t after, uint64_t *seq, uint64_t *key)
{
	int rc = SP_ENOTFOUND;
	pthread_mutex_lock(&q->lock);
	qdev *d = dev_find(q, device);
	if (d) {
		for (uint32_t i = first_after(d, after); i < d->n; i++) {
			if (writer_sees(d->items[i].state)) {
				*seq = d->items[i].seq;
				*key = d->items[i].key;
				rc = SP_OK;
				break;
			}
		}
	}
	pthread_mutex_unlock(&q->lock);
	return rc;
}

int
inbox_qindex_find(inbox_qindex *q, uint64_t device, uint64_t seq, uint64_t *key)
{
	int rc = SP_ENOTFOUND;
	pthread_mutex_lock(&q->lock);
	qdev *d = dev_find(q, device);
	int64_t i = d && seq ? item_of(d, seq) : -1;
	if (i >= 0) {
		*key = d->items[i].key;
		rc = SP_OK;
	}
	pthread_mutex_unlock(&q->lock);
	return rc;
}

int
inbox_qindex_remove(inbox_qindex *q, uint64_t device, uint64_t sender, uint64_t seq,
    uint64_t bytes, bool garbage)
{
	int rc = SP_ENOTFOUND;
	pthread_mutex_lock(&q->lock);
	qdev *d = dev_find(q, device);
	int64_t i = d && seq ? item_of(d, seq) : -1;
	if (i < 0)
		goto out;
	/* The entry's sender was counted when it was queued (the caller read it from the
	 * entry): a missing record means the index and the log disagree. */
	qsender *sn = sender_find(d, sender);
	if (!sn || sn->count == 0) {
		rc = SP_ESTORE;
		goto out;
	}
	qitem *it = &d->items[i];
	uint64_t sb = sn->bytes >= bytes ? bytes : sn->bytes;
	if ((rc = log_push(q, d, (uint32_t)i, it->state, &d->w, sn, sb)))
		goto out;
	sn->count--;
	sn->bytes -= sb;
	/* Added and removed by the same transaction: no reader could ever see it. */
	it->state = it->state == S_ADDED ? S_DEAD : S_REMOVED;
	if (it->state == S_DEAD)
		d->dead++;
	d->w.count--;
	d->w.bytes = d->w.bytes >= bytes ? d->w.bytes - bytes : 0;
	q->garbage += garbage;
out:
	pthread_mutex_unlock(&q->lock);
	return rc;
}

size_t
inbox_qindex_mark(inbox_qindex *q)
{
	return q->nlog;
}

void
inbox_qindex_rollback(inbox_qindex *q, size_t mark)
{
	pthread_mutex_lock(&q->lock);
	while (q->nlog > mark) {
		undo *u = &q->log[--q->nlog];
		q->garbage = u->old_garbage;
		if (!u->d)
			continue;
		qitem *it = &u->d->items[u->idx];
		if (it->state == S_DEAD)
			u->d->dead--;
		if (u->old_state == S_DEAD) {
			/* Undoing an add: it is the last item (adds only append). */
			u->d->n--;
		} else {
			it->state = u->old_state;
		}
		u->d->w = u->old;
		if (u->old_state == S_DEAD) {
			u->snd->count--;
			u->snd->bytes -= u->bytes;
		} else {
			u->snd->count++;
			u->snd->bytes += u->bytes;
		}
	}
	pthread_mutex_unlock(&q->lock);
}

void
inbox_qindex_publish(inbox_qindex *q)
{
	pthread_mutex_lock(&q->lock);
	/* First pass: settle each changed item and publish the counters. */
	for (size_t k = 0; k < q->nlog; k++) {
		undo *u = &q->log[k];
		if (!u->d)
			continue;
		qitem *it = &u->d->items[u->idx];
		if (it->state == S_ADDED) {
			it->state = S_LIVE;
			q->entries++;
		} else if (it->state == S_REMOVED) {
			it->state = S_DEAD;
			u->d->dead++;
			q->entries--;
		}
		u->d->c = u->d->w;
	}
	/* Then tidy each device once (compaction moves items: no undo index may follow). */
	qsender *gone = NULL;
	for (size_t k = 0; k < q->nlog; k++) {
		undo *u = &q->log[k];
		if (!u->d)
			continue;
		tidy(q, u->d);
		/* A sender with nothing left in this queue: its record goes (once, after the
		 * loop: later undo records may name it too). */
		if (u->snd->count == 0 && !u->snd->leaving) {
			u->snd->leaving = true;
			HASH_DEL(u->d->senders, u->snd);
			u->snd->gone = gone;
			gone = u->snd;
		}
	}
	while (gone) {
		qsender *next = gone->gone;
		free(gone);
		q->nsenders--;
		gone = next;
	}
	q->nlog = 0;
	if (q->caplog > 65536) {
		free(q->log);
		q->log = NULL;
		q->caplog = 0;
	}
	pthread_mutex_unlock(&q->lock);
}

uint64_t
inbox_qindex_garbage(inbox_qindex *q)
{
	return q->garbage;
}

int
inbox_qindex_collected(inbox_qindex *q, uint64_t n)
{
	int rc;
	pthread_mutex_lock(&q->lock);
	if ((rc = log_push(q, NULL, 0, S_LIVE, &(inbox_qmeta) { 0, 0, 0 }, NULL, 0)) == SP_OK)
		q->garbage = q->garbage >= n ? q->garbage - n : 0;
	pthread_mutex_unlock(&q->lock);
	return rc;
}

/* ---- readers ---- */

size_t
inbox_qindex_candidates(
    inbox_qindex *q, uint64_t device, uint64_t after, inbox_qcand *out, size_t max, bool *more)
{
	size_t n = 0;
	*more = false;
	pthread_mutex_lock(&q->lock);
	qdev *d = dev_find(q, device);
	if (d) {
		for (uint32_t i = first_after(d, after); i < d->n; i++) {
			if (d->items[i].state == S_DEAD)
				continue;
			if (n == max) {
				*more = true;
				break;
			}
			out[n++] = (inbox_qcand) { d->items[i].seq, d->items[i].key };
		}
	}
	pthread_mutex_unlock(&q->lock);
	return n;
}

void
inbox_qindex_sender(inbox_qindex *q, uint64_t device, uint64_t sender, uint64_t *count,
    uint64_t *bytes)
{
	pthread_mutex_lock(&q->lock);
	qdev *d = dev_find(q, device);
	qsender *sn = d ? sender_find(d, sender) : NULL;
	*count = sn ? sn->count : 0;
	*bytes = sn ? sn->bytes : 0;
	pthread_mutex_unlock(&q->lock);
}

void
inbox_qindex_committed(inbox_qindex *q, uint64_t device, inbox_qmeta *m)
{
	meta_of(q, device, true, m);
}

void
inbox_qindex_stats(inbox_qindex *q, uint64_t *devices, uint64_t *entries, uint64_t *mem)
{
	pthread_mutex_lock(&q->lock);
	*devices = HASH_COUNT(q->devs);
	*entries = q->entries;
	*mem = q->item_bytes + *devices * (sizeof(qdev) + 16) + q->nsenders * (sizeof(qsender) + 16)
	    + q->caplog * sizeof(undo);
	pthread_mutex_unlock(&q->lock);
}
