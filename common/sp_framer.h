/*
 * Length-prefixed framing for byte streams: a 4-byte big-endian body length, then one
 * msgpack map (sp_frame.h). The length is checked against the large frame limit before
 * any body byte is buffered as a frame; the per-type small limit is checked on decode.
 */
#ifndef SP_FRAMER_H
#define SP_FRAMER_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "sp_frame.h"

/* Looks at `avail` bytes of stream: on SP_OK a whole frame is there and *body_len is its
 * body length (the frame occupies 4 + *body_len bytes). SP_EAGAIN: need more bytes.
 * SP_ETOOBIG: the announced length exceeds `max` (the stream cannot be trusted). */
int sp_framer_split(const uint8_t *p, size_t avail, size_t max, size_t *body_len);

/* Incremental decode from an evbuffer holding partial input. On SP_OK, `f` holds the next
 * frame, whose values point into `in`'s (now contiguous) first bytes: use them, then call
 * sp_framer_consume(in, consumed) and sp_frame_fini(f). SP_EAGAIN: not enough input yet
 * (nothing consumed). Any other code: the frame is bad; *consumed is set when the framing
 * itself was valid (the bad frame may be skipped) and 0 when the stream is broken (too big). */
int sp_framer_next(struct evbuffer *in, size_t max, sp_frame *f, size_t *consumed);

/* Drains `consumed` bytes (as reported by sp_framer_next) from `in`. */
void sp_framer_consume(struct evbuffer *in, size_t consumed);

/* Packs `f` with its length prefix and appends it to `out`. SP_OK or a pack error. */
int sp_framer_write(struct evbuffer *out, const sp_frame *f);

#endif
