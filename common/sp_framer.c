#include "sp_bytes.h"
#include "sp_error.h"
#include "sp_framer.h"

int
sp_framer_split(const uint8_t *p, size_t avail, size_t max, size_t *body_len)
{
	if (avail < 4)
		return SP_EAGAIN;
	size_t len = sp_be32_get(p);
	if (len > max)
		return SP_ETOOBIG;
	*body_len = len;
	return avail - 4 >= len ? SP_OK : SP_EAGAIN;
}

int
sp_framer_next(struct evbuffer *in, size_t max, sp_frame *f, size_t *consumed)
{
	uint8_t hdr[4];
	size_t len;

	*consumed = 0;
	if (evbuffer_copyout(in, hdr, 4) < 4)
		return SP_EAGAIN;
	int rc = sp_framer_split(hdr, evbuffer_get_length(in), max, &len);
	if (rc)
		return rc;
	const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)(4 + len));
	if (!p)
		return SP_ENOMEM;
	*consumed = 4 + len;
	return sp_frame_decode(p + 4, len, f);
}

void
sp_framer_consume(struct evbuffer *in, size_t consumed)
{
	evbuffer_drain(in, consumed);
}

int
sp_framer_write(struct evbuffer *out, const sp_frame *f)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	int rc = sp_frame_pack_prefixed(f, &sb);
	if (rc == SP_OK && evbuffer_add(out, sb.data, sb.size))
		rc = SP_ENOMEM;
	msgpack_sbuffer_destroy(&sb);
	return rc;
}
