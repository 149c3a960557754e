/*
 * Big-endian integers in byte strings: the one codec for keys on disk (LMDB orders keys
 * bytewise, so big-endian keys sort by value) and for signed messages. Header-only.
 */
#ifndef SP_BYTES_H
#define SP_BYTES_H

#include <stdint.h>

static inline void
sp_be64_put(uint8_t out[8], uint64_t v)
{
	for (int i = 0; i < 8; i++)
		out[i] = (uint8_t)(v >> (56 - 8 * i));
}

static inline uint64_t
sp_be64_get(const uint8_t in[8])
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | in[i];
	return v;
}

static inline void
sp_be16_put(uint8_t out[2], uint16_t v)
{
	out[0] = (uint8_t)(v >> 8);
	out[1] = (uint8_t)v;
}

static inline uint16_t
sp_be16_get(const uint8_t in[2])
{
	return (uint16_t)(in[0] << 8 | in[1]);
}

static inline void
sp_be32_put(uint8_t out[4], uint32_t v)
{
	for (int i = 0; i < 4; i++)
		out[i] = (uint8_t)(v >> (24 - 8 * i));
}

static inline uint32_t
sp_be32_get(const uint8_t in[4])
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v = v << 8 | in[i];
	return v;
}

#endif
