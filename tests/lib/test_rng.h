/* The tests' one seeded pseudo-random generator (xorshift64): reproducible sequences for
 * model and property tests. Not for anything secret. */
#ifndef TEST_RNG_H
#define TEST_RNG_H

#include <stdint.h>

/* The next value of the sequence in *state (which must not be 0). */
uint64_t test_rng_next(uint64_t *state);
/* A value in [0, n) (0 when n is 0). */
uint64_t test_rng_below(uint64_t *state, uint64_t n);

#endif
