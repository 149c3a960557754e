/* Benchmark payloads and the per-stream received-set behind lost/duplicated. A payload
 * is "SPB1", run id, stream, seq (u32 each), scheduled send time (u64, CLOCK_MONOTONIC
 * ns), then padding: the recipient checks every message against its stream without any state
 * shared with the sender. */
#include <stdlib.h>
#include <string.h>

#include "bench/sb.h"
#include "sp_error.h"

static const uint8_t magic[4] = {'S', 'P', 'B', '1'};

void
sb_payload_make(uint8_t *p, size_t len, const sb_msg *m)
{
	memcpy(p, magic, 4);
	memcpy(p + 4, &m->run, 4);
	memcpy(p + 8, &m->stream, 4);
	memcpy(p + 12, &m->seq, 4);
	memcpy(p + 16, &m->t_ns, 8);
	for (size_t i = 24; i < len; i++)
		p[i] = (uint8_t)(i * 31 + m->seq);
}

bool
sb_payload_parse(const uint8_t *p, size_t len, sb_msg *m)
{
	if (len < SB_PAYLOAD_MIN || memcmp(p, magic, 4) != 0)
		return false;
	memcpy(&m->run, p + 4, 4);
	memcpy(&m->stream, p + 8, 4);
	memcpy(&m->seq, p + 12, 4);
	memcpy(&m->t_ns, p + 16, 8);
	return true;
}

void
sb_msg_id(uint8_t id[16], const sb_msg *m)
{
	memcpy(id, &m->stream, 4);
	memcpy(id + 4, &m->seq, 4);
	memcpy(id + 8, &m->t_ns, 8);
}

void
sb_msg_from_id(const uint8_t id[16], sb_msg *m)
{
	memcpy(&m->stream, id, 4);
	memcpy(&m->seq, id + 4, 4);
	memcpy(&m->t_ns, id + 8, 8);
}

int
sb_track_mark(sb_track *t, uint64_t seq)
{
	if (seq >= (uint64_t)1 << 32)
		return SP_EINVAL;
	if (seq >= t->cap) {
		size_t ncap = t->cap ? t->cap : 1024;
		while (ncap <= seq)
			ncap *= 2;
		uint8_t *nb = realloc(t->bits, ncap / 8);
		if (!nb)
			return SP_ENOMEM;
		memset(nb + t->cap / 8, 0, (ncap - t->cap) / 8);
		t->bits = nb;
		t->cap = ncap;
	}
	uint8_t bit = (uint8_t)(1u << (seq & 7));
	if (t->bits[seq >> 3] & bit)
		return 0;
	t->bits[seq >> 3] |= bit;
	t->distinct++;
	return 1;
}

uint64_t
sb_track_missing(const sb_track *t, uint64_t n)
{
	uint64_t miss = 0;
	for (uint64_t s = 0; s < n; s++)
		if (s >= t->cap || !(t->bits[s >> 3] & (1u << (s & 7))))
			miss++;
	return miss;
}

uint64_t
sb_track_lost(const sb_track *want, const sb_track *got)
{
	uint64_t lost = 0;
	for (size_t i = 0; i < want->cap / 8; i++) {
		uint8_t g = i < got->cap / 8 ? got->bits[i] : 0;
		lost += (uint64_t)__builtin_popcount((unsigned)(want->bits[i] & (uint8_t)~g));
	}
	return lost;
}

void
sb_track_free(sb_track *t)
{
	free(t->bits);
	memset(t, 0, sizeof(*t));
}
