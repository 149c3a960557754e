/* Latency histograms and stats merging. Buckets: exact below 128 us, then 64 per power
 * of two (about 1.6 % resolution) up to 2^32 us; larger values land in the last bucket. */
#include <string.h>

#include "bench/sb.h"

static unsigned
bucket_of(uint64_t us)
{
	if (us < 128)
		return (unsigned)us;
	unsigned msb = 63u - (unsigned)__builtin_clzll(us); /* >= 7 */
	unsigned shift = msb - 6;
	unsigned idx = 128 + (msb - 7) * 64 + (unsigned)((us >> shift) - 64);
	return idx < SB_HIST_BUCKETS ? idx : SB_HIST_BUCKETS - 1;
}

/* The largest value that falls into bucket i. */
static uint64_t
bucket_top(unsigned i)
{
	if (i < 128)
		return i;
	unsigned msb = (i - 128) / 64 + 7, sub = (i - 128) % 64;
	unsigned shift = msb - 6;
	return (((uint64_t)(64 + sub) + 1) << shift) - 1;
}

void
sb_hist_add(sb_hist *h, uint64_t us)
{
	h->b[bucket_of(us)]++;
	h->n++;
	h->sum_us += us;
	if (us > h->max_us)
		h->max_us = us;
}

void
sb_hist_merge(sb_hist *dst, const sb_hist *src)
{
	for (unsigned i = 0; i < SB_HIST_BUCKETS; i++)
		dst->b[i] += src->b[i];
	dst->n += src->n;
	dst->sum_us += src->sum_us;
	if (src->max_us > dst->max_us)
		dst->max_us = src->max_us;
}

double
sb_hist_pct_ms(const sb_hist *h, double p)
{
	if (!h->n)
		return 0;
	uint64_t want = (uint64_t)((double)h->n * p / 100.0 + 0.999999);
	if (want < 1)
		want = 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < SB_HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= want) {
			uint64_t top = bucket_top(i);
			return (double)(top < h->max_us ? top : h->max_us) / 1000.0;
		}
	}
	return (double)h->max_us / 1000.0;
}

static uint64_t
min_set(uint64_t a, uint64_t b)
{
	return !a ? b : !b ? a : a < b ? a : b;
}

static uint64_t
max_u(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

void
sb_stats_merge(sb_stats *d, const sb_stats *s)
{
	/* Counters are the leading run of uint64_t fields, up to the first timestamp. */
	const uint64_t *sv = (const uint64_t *)s;
	uint64_t *dv = (uint64_t *)d;
	for (size_t i = 0; i < offsetof(sb_stats, t_first_connect) / sizeof(uint64_t); i++)
		dv[i] += sv[i];
	d->t_first_connect = min_set(d->t_first_connect, s->t_first_connect);
	d->t_go = min_set(d->t_go, s->t_go);
	d->t_last_ready = max_u(d->t_last_ready, s->t_last_ready);
	d->t_last_send = max_u(d->t_last_send, s->t_last_send);
	d->t_last_delivery = max_u(d->t_last_delivery, s->t_last_delivery);
	d->t_done = max_u(d->t_done, s->t_done);
	sb_hist_merge(&d->lat_sent, &s->lat_sent);
	sb_hist_merge(&d->lat_recv, &s->lat_recv);
	sb_hist_merge(&d->lat_login, &s->lat_login);
}
