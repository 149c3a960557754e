#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "sp_error.h"
#include "sp_ring.h"

typedef struct point {
	uint64_t hash;
	uint32_t member;
} point;

struct sp_ring {
	uint64_t epoch;
	size_t nmembers, npoints;
	char **names;
	point *points;
};

static const unsigned char ring_key[crypto_shorthash_KEYBYTES] = "sealpost-ring-v1";

static uint64_t
ring_hash(const void *p, size_t len)
{
	unsigned char out[crypto_shorthash_BYTES];
	crypto_shorthash(out, p, len, ring_key);
	uint64_t h = 0;
	for (int i = 0; i < 8; i++)
		h = (h << 8) | out[i];
	return h;
}

/* Ties (equal hashes) are ordered by member name so that the order of `members` as given
 * never matters. */
static int
point_cmp(const void *a, const void *b, void *ring)
{
	const point *x = a, *y = b;
	const sp_ring *r = ring;
	if (x->hash != y->hash)
		return x->hash < y->hash ? -1 : 1;
	return strcmp(r->names[x->member], r->names[y->member]);
}

void
sp_ring_free(sp_ring *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->nmembers; i++)
		free(r->names[i]);
	free(r->names);
	free(r->points);
	free(r);
}

int
sp_ring_new(uint64_t epoch, const char *const *members, size_t n, unsigned vnodes, sp_ring **out)
{
	if (vnodes == 0 || n > UINT32_MAX / vnodes)
		return SP_EINVAL;
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++)
			if (strcmp(members[i], members[j]) == 0)
				return SP_EINVAL;
	if (sodium_init() < 0)
		return SP_ECRYPTO;
	sp_ring *r = calloc(1, sizeof(*r));
	if (!r)
		return SP_ENOMEM;
	r->epoch = epoch;
	r->names = calloc(n ? n : 1, sizeof(char *));
	r->points = calloc(n ? n * vnodes : 1, sizeof(point));
	if (!r->names || !r->points)
		goto fail;
	r->nmembers = n;
	for (size_t i = 0; i < n; i++) {
		if (!(r->names[i] = strdup(members[i])))
			goto fail;
		size_t len = strlen(members[i]);
		char buf[300];
		if (len > 256)
			goto fail;
		for (unsigned v = 0; v < vnodes; v++) {
			/* Point v of a member: hash of "name#v". */
			int k = snprintf(buf, sizeof(buf), "%s#%u", members[i], v);
			r->points[r->npoints].hash = ring_hash(buf, (size_t)k);
			r->points[r->npoints].member = (uint32_t)i;
			r->npoints++;
		}
	}
	qsort_r(r->points, r->npoints, sizeof(point), point_cmp, r);
	*out = r;
	return SP_OK;
fail:
	sp_ring_free(r);
	return SP_ENOMEM;
}

uint64_t
sp_ring_epoch(const sp_ring *r)
{
	return r->epoch;
}

size_t
sp_ring_size(const sp_ring *r)
{
	return r->nmembers;
}

const char *
sp_ring_member(const sp_ring *r, size_t i)
{
	return i < r->nmembers ? r->names[i] : NULL;
}

int
sp_ring_lookup(const sp_ring *r, const void *key, size_t len, int *owner, int *replica)
{
	if (r->npoints == 0)
		return SP_EINVAL;
	uint64_t h = ring_hash(key, len);
	/* First point with hash >= h, wrapping to the start. */
	size_t lo = 0, hi = r->npoints;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (r->points[mid].hash < h)
			lo = mid + 1;
		else
			hi = mid;
	}
	size_t i = lo == r->npoints ? 0 : lo;
	uint32_t own = r->points[i].member;
	*owner = (int)own;
	*replica = -1;
	if (r->nmembers > 1) {
		for (size_t k = 1; k < r->npoints; k++) {
			uint32_t m = r->points[(i + k) % r->npoints].member;
			if (m != own) {
				*replica = (int)m;
				break;
			}
		}
	}
	return SP_OK;
}

int
sp_ring_lookup_u64(const sp_ring *r, uint64_t id, int *owner, int *replica)
{
	unsigned char b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (unsigned char)(id >> (56 - 8 * i));
	return sp_ring_lookup(r, b, sizeof(b), owner, replica);
}
