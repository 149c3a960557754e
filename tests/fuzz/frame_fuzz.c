/* libFuzzer target for the frame decoder and the stream framer. Any input must either be
 * refused with an error code or decode to a frame that re-encodes to a stable form. */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "sp_error.h"
#include "sp_frame.h"
#include "sp_framer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sp_frame f, g;
	if (sp_frame_decode(data, size, &f) == SP_OK) {
		msgpack_sbuffer a, b;
		msgpack_sbuffer_init(&a);
		msgpack_sbuffer_init(&b);
		/* Decoded values are within bounds, so packing them must succeed unless the
		 * canonical form is larger than the limit (the input used short encodings). */
		int rc = sp_frame_pack(&f, &a);
		if (rc == SP_OK) {
			if (sp_frame_decode((const uint8_t *)a.data, a.size, &g) != SP_OK)
				abort();
			if (sp_frame_pack(&g, &b) != SP_OK || a.size != b.size ||
			    memcmp(a.data, b.data, a.size) != 0)
				abort();
			sp_frame_fini(&g);
		} else if (rc != SP_ETOOBIG) {
			abort();
		}
		msgpack_sbuffer_destroy(&a);
		msgpack_sbuffer_destroy(&b);
		sp_frame_fini(&f);
	}

	/* The same bytes as a stream of length-prefixed frames. */
	struct evbuffer *in = evbuffer_new();
	if (!in)
		return 0;
	evbuffer_add(in, data, size);
	for (int i = 0; i < 64; i++) {
		size_t used;
		int rc = sp_framer_next(in, 1 << 16, &f, &used);
		if (rc == SP_OK)
			sp_frame_fini(&f);
		if (used == 0)
			break;
		sp_framer_consume(in, used);
	}
	evbuffer_free(in);
	return 0;
}
