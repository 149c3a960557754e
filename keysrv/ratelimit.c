#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "keysrv/ratelimit.h"
#include "sp_error.h"

#define KEY_MAX 64

typedef struct bucket {
	struct bucket *next;
	uint64_t stamp_ms; /* when `milli` was last brought up to date */
	uint64_t milli;    /* tokens x 1000, so that slow refill rates stay exact */
	char key[KEY_MAX + 1];
} bucket;

struct keys_rl {
	pthread_mutex_t lock;
	uint64_t cap_milli;
	unsigned per_min;
	size_t max_keys, nkeys, nslots;
	bucket **slots;
};

static uint64_t
hash_key(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

int
keys_rl_new(keys_rl **out, unsigned burst, unsigned per_min, size_t max_keys)
{
	keys_rl *rl;
	if (burst == 0 || per_min == 0 || max_keys == 0)
		return SP_EINVAL;
	if (!(rl = calloc(1, sizeof(*rl))))
		return SP_ENOMEM;
	rl->cap_milli = (uint64_t)burst * 1000;
	rl->per_min = per_min;
	rl->max_keys = max_keys;
	rl->nslots = 1024;
	while (rl->nslots < max_keys && rl->nslots < (1u << 20))
		rl->nslots <<= 1;
	if (!(rl->slots = calloc(rl->nslots, sizeof(*rl->slots)))) {
		free(rl);
		return SP_ENOMEM;
	}
	pthread_mutex_init(&rl->lock, NULL);
	*out = rl;
	return SP_OK;
}

void
keys_rl_free(keys_rl *rl)
{
	if (!rl)
		return;
	for (size_t i = 0; i < rl->nslots; i++) {
		bucket *b = rl->slots[i], *next;
		for (; b; b = next) {
			next = b->next;
			free(b);
		}
	}
	free(rl->slots);
	pthread_mutex_destroy(&rl->lock);
	free(rl);
}

/* Brings a bucket's tokens up to date. */
static void
refill(const keys_rl *rl, bucket *b, uint64_t now_ms)
{
	if (now_ms <= b->stamp_ms)
		return;
	uint64_t elapsed = now_ms - b->stamp_ms;
	if (elapsed >= rl->cap_milli * 60) {
		b->milli = rl->cap_milli;
		b->stamp_ms = now_ms;
		return;
	}
	/* per_min tokens per 60000 ms, in thousandths: elapsed * per_min / 60. The stamp only
	 * advances by the time actually converted, so frequent calls lose no refill. */
	uint64_t add = elapsed * rl->per_min / 60;
	if (b->milli + add >= rl->cap_milli) {
		b->milli = rl->cap_milli;
		b->stamp_ms = now_ms;
	} else {
		b->milli += add;
		b->stamp_ms += add * 60 / rl->per_min;
	}
}

/* Drops every bucket that is full again: it carries no information. */
static void
evict_idle(keys_rl *rl, uint64_t now_ms)
{
	for (size_t i = 0; i < rl->nslots; i++) {
		bucket **pp = &rl->slots[i];
		while (*pp) {
			bucket *b = *pp;
			refill(rl, b, now_ms);
			if (b->milli >= rl->cap_milli) {
				*pp = b->next;
				free(b);
				rl->nkeys--;
			} else {
				pp = &b->next;
			}
		}
	}
}

int
keys_rl_take(keys_rl *rl, const char *key, uint64_t now_ms, uint64_t *retry_after_ms)
{
	char k[KEY_MAX + 1];
	int rc = SP_OK;

	/* Longer keys are truncated; callers pass short identifiers. */
	strncpy(k, key, KEY_MAX);
	k[KEY_MAX] = '\0';
	pthread_mutex_lock(&rl->lock);
	size_t slot = hash_key(k) & (rl->nslots - 1);
	bucket *b = rl->slots[slot];
	while (b && strcmp(b->key, k) != 0)
		b = b->next;
	if (!b) {
		if (rl->nkeys >= rl->max_keys)
			evict_idle(rl, now_ms);
		if (rl->nkeys >= rl->max_keys || !(b = calloc(1, sizeof(*b)))) {
			if (retry_after_ms)
				*retry_after_ms = 60000 / rl->per_min + 1;
			rc = SP_ERATELIMIT;
			goto out;
		}
		memcpy(b->key, k, sizeof(b->key));
		b->milli = rl->cap_milli;
		b->stamp_ms = now_ms;
		b->next = rl->slots[slot];
		rl->slots[slot] = b;
		rl->nkeys++;
	}
	refill(rl, b, now_ms);
	if (b->milli >= 1000) {
		b->milli -= 1000;
	} else {
		if (retry_after_ms)
			*retry_after_ms = ((1000 - b->milli) * 60 + rl->per_min - 1) / rl->per_min;
		rc = SP_ERATELIMIT;
	}
out:
	pthread_mutex_unlock(&rl->lock);
	return rc;
}
