/* Clocks. Wall-clock milliseconds for timestamps on the wire; monotonic for intervals. */
#ifndef SP_TIME_H
#define SP_TIME_H

#include <stdint.h>
#include <time.h>

static inline uint64_t
sp_time_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline uint64_t
sp_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t
sp_mono_ms(void)
{
	return sp_mono_ns() / 1000000;
}

#endif
