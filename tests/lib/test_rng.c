#include "test_rng.h"

uint64_t
test_rng_next(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *state = x;
}

uint64_t
test_rng_below(uint64_t *state, uint64_t n)
{
	return n ? test_rng_next(state) % n : 0;
}
