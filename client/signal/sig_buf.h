/* Byte buffers for the Signal core: a growable writer and a bounds-checked reader.
 * Used by the protobuf codec (sig_proto) and the state serializer (sig_state). */
#ifndef SIG_BUF_H
#define SIG_BUF_H

#include <stddef.h>
#include <stdint.h>

/* Growable output buffer with a sticky error: after the first failed append every
 * further append is a no-op and sig_wbuf_finish() reports the error. Growth wipes the
 * old block, so secrets written into the buffer never linger in freed memory. */
typedef struct {
	uint8_t *data;
	size_t len;
	size_t cap;
	size_t limit; /* 0: no limit; otherwise appends past it fail with SP_ETOOBIG */
	int err;
} sig_wbuf;

void sig_wbuf_init(sig_wbuf *b, size_t limit);
void sig_wbuf_put(sig_wbuf *b, const void *p, size_t n);
void sig_wbuf_u8(sig_wbuf *b, uint8_t v);
void sig_wbuf_u32(sig_wbuf *b, uint32_t v); /* big-endian */
void sig_wbuf_lenbytes(sig_wbuf *b, const void *p, size_t n); /* u32 length, bytes */
void sig_wbuf_varint(sig_wbuf *b, uint64_t v); /* protobuf base-128 varint */

/* On success hands the bytes to the caller (*out owned by caller, free() it; may be
 * NULL-safe empty when len is 0: a 1-byte block is still returned) and resets b.
 * On error frees the buffer (wiped) and returns the sticky error. */
int sig_wbuf_finish(sig_wbuf *b, uint8_t **out, size_t *len);

/* Wipes and frees whatever b holds. */
void sig_wbuf_dispose(sig_wbuf *b);

/* Read cursor over caller-owned bytes; every read is bounds-checked and returns
 * SP_ETRUNC when the input is too short. */
typedef struct {
	const uint8_t *p;
	size_t len;
	size_t off;
} sig_rbuf;

void sig_rbuf_init(sig_rbuf *r, const uint8_t *p, size_t len);
int sig_rbuf_u8(sig_rbuf *r, uint8_t *v);
int sig_rbuf_u32(sig_rbuf *r, uint32_t *v);
int sig_rbuf_copy(sig_rbuf *r, void *dst, size_t n);
/* Reads a u32 length (must be <= max) and returns a pointer into the input. */
int sig_rbuf_lenbytes(sig_rbuf *r, const uint8_t **p, size_t *n, size_t max);
/* Reads a protobuf varint (at most 10 bytes). */
int sig_rbuf_varint(sig_rbuf *r, uint64_t *v);

#endif
