#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <sodium.h>

#include "dedup.h"
#include "internal.h"
#include "sp_error.h"

/* Open addressing with linear probing and backward-shift deletion (no tombstones, so a
 * long-lived table with constant churn keeps short probe runs). fp 0 marks a free slot. */
typedef struct slot {
	uint64_t fp, ts, seq;
} slot;

typedef struct undo {
	slot s;
	bool inserted; /* undo = remove it; otherwise undo = put it back */
} undo;

struct inbox_dedup {
	unsigned char key[crypto_shorthash_KEYBYTES];
	slot *slots;
	size_t mask, count;
	undo *log;
	size_t nlog, caplog;
};

#define MIN_SLOTS (1u << 16)
#define HUGE_PAGE (2u << 20)

/* A zeroed table of `n` slots. Large ones are 2 MiB-aligned and asked to live in huge
 * pages: lookups hit random slots, and with 4 KiB pages each one also misses the TLB. */
static slot *
slots_alloc(size_t n)
{
	size_t bytes = n * sizeof(slot);
	void *p;
	if (bytes < HUGE_PAGE)
		return calloc(n, sizeof(slot));
	if (posix_memalign(&p, HUGE_PAGE, bytes))
		return NULL;
	madvise(p, bytes, MADV_HUGEPAGE);
	memset(p, 0, bytes);
	return p;
}

static size_t
slots_for(size_t n)
{
	size_t cap = MIN_SLOTS;
	while (cap / 4 * 3 < n)
		cap <<= 1;
	return cap;
}

inbox_dedup *
inbox_dedup_new(size_t expect)
{
	inbox_dedup *d = calloc(1, sizeof(*d));
	if (!d || sodium_init() < 0)
		goto fail;
	size_t cap = slots_for(expect);
	if (!(d->slots = slots_alloc(cap)))
		goto fail;
	d->mask = cap - 1;
	/* A key nobody outside knows: senders cannot aim msg ids at one probe run. */
	randombytes_buf(d->key, sizeof(d->key));
	return d;
fail:
	free(d);
	return NULL;
}

void
inbox_dedup_free(inbox_dedup *d)
{
	if (!d)
		return;
	free(d->slots);
	free(d->log);
	free(d);
}

uint64_t
inbox_dedup_fp(
    const inbox_dedup *d, uint64_t device, uint64_t from_device, const uint8_t msg_id[16])
{
	uint8_t in[32], out[crypto_shorthash_BYTES];
	sp_be64_put(in, device);
	sp_be64_put(in + 8, from_device);
	memcpy(in + 16, msg_id, 16);
	crypto_shorthash(out, in, sizeof(in), d->key);
	uint64_t fp = inbox_le64_get(out);
	return fp ? fp : 1;
}

bool
inbox_dedup_find(
    inbox_dedup *d, uint64_t fp, inbox_dedup_match_fn match, void *arg, uint64_t *ts,
    uint64_t *seq)
{
	for (size_t i = fp & d->mask; d->slots[i].fp; i = (i + 1) & d->mask) {
		const slot *s = &d->slots[i];
		if (s->fp == fp && match(arg, s->ts, s->seq)) {
			*ts = s->ts;
			*seq = s->seq;
			return true;
		}
	}
	return false;
}

void
inbox_dedup_prefetch(const inbox_dedup *d, uint64_t fp)
{
	__builtin_prefetch(&d->slots[fp & d->mask], 1);
}

/* Puts `s` in the first free slot of its run; the caller made sure there is room. */
static void
place(inbox_dedup *d, const slot *s)
{
	size_t i = s->fp & d->mask;
	while (d->slots[i].fp)
		i = (i + 1) & d->mask;
	d->slots[i] = *s;
	d->count++;
}

static int
grow(inbox_dedup *d)
{
	size_t cap = (d->mask + 1) * 2;
	slot *old = d->slots, *n = slots_alloc(cap);
	if (!n)
		return SP_ENOMEM;
	size_t oldcap = d->mask + 1;
	d->slots = n;
	d->mask = cap - 1;
	d->count = 0;
	for (size_t i = 0; i < oldcap; i++)
		if (old[i].fp)
			place(d, &old[i]);
	free(old);
	return SP_OK;
}

static int
log_push(inbox_dedup *d, const slot *s, bool inserted)
{
	if (d->nlog == d->caplog) {
		size_t cap = d->caplog ? d->caplog * 2 : 1024;
		undo *n = realloc(d->log, cap * sizeof(undo));
		if (!n)
			return SP_ENOMEM;
		d->log = n;
		d->caplog = cap;
	}
	d->log[d->nlog++] = (undo) { *s, inserted };
	return SP_OK;
}

int
inbox_dedup_insert(inbox_dedup *d, uint64_t fp, uint64_t ts, uint64_t seq)
{
	slot s = { fp, ts, seq };
	if (d->count + 1 > (d->mask + 1) / 4 * 3 && grow(d))
		return SP_ENOMEM;
	if (log_push(d, &s, true))
		return SP_ENOMEM;
	place(d, &s);
	return SP_OK;
}

/* Removes slot i, shifting later members of its run back so lookups never stop early. */
static void
erase(inbox_dedup *d, size_t i)
{
	size_t j = i;
	for (;;) {
		j = (j + 1) & d->mask;
		if (!d->slots[j].fp)
			break;
		size_t home = d->slots[j].fp & d->mask;
		/* Move j into the hole unless its home lies cyclically in (i, j]. */
		bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
		if (!stays) {
			d->slots[i] = d->slots[j];
			i = j;
		}
	}
	d->slots[i].fp = 0;
	d->count--;
}

static size_t
locate(const inbox_dedup *d, const slot *s)
{
	for (size_t i = s->fp & d->mask; d->slots[i].fp; i = (i + 1) & d->mask) {
		const slot *t = &d->slots[i];
		if (t->fp == s->fp && t->ts == s->ts && t->seq == s->seq)
			return i;
	}
	return SIZE_MAX;
}

int
inbox_dedup_remove(inbox_dedup *d, uint64_t fp, uint64_t ts, uint64_t seq, bool undoable)
{
	slot s = { fp, ts, seq };
	size_t i = locate(d, &s);
	if (i == SIZE_MAX)
		return SP_OK;
	if (undoable && log_push(d, &s, false))
		return SP_ENOMEM;
	erase(d, i);
	return SP_OK;
}

size_t
inbox_dedup_mark(const inbox_dedup *d)
{
	return d->nlog;
}

void
inbox_dedup_rollback(inbox_dedup *d, size_t mark)
{
	/* Newest first. Every slot put back was free at the mark, and the table only grows,
	 * so re-inserting never needs room that is not there. */
	while (d->nlog > mark) {
		const undo *u = &d->log[--d->nlog];
		if (u->inserted) {
			size_t i = locate(d, &u->s);
			if (i != SIZE_MAX)
				erase(d, i);
		} else {
			place(d, &u->s);
		}
	}
}

void
inbox_dedup_settle(inbox_dedup *d)
{
	d->nlog = 0;
	/* A huge batch (a rebuild, a long sweep) should not pin its log forever. */
	if (d->caplog > 65536) {
		free(d->log);
		d->log = NULL;
		d->caplog = 0;
	}
}

size_t
inbox_dedup_count(const inbox_dedup *d)
{
	return d->count;
}

size_t
inbox_dedup_bytes(const inbox_dedup *d)
{
	return (d->mask + 1) * sizeof(slot) + d->caplog * sizeof(undo);
}
