#include "client/signal/sig_buf.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "sp_bytes.h"
#include "sp_error.h"

void
sig_wbuf_init(sig_wbuf *b, size_t limit)
{
	memset(b, 0, sizeof(*b));
	b->limit = limit;
}

static int
wbuf_grow(sig_wbuf *b, size_t need)
{
	size_t ncap;
	uint8_t *nd;

	if (b->limit && need > b->limit)
		return SP_ETOOBIG;
	if (need <= b->cap)
		return SP_OK;
	ncap = b->cap ? b->cap : 64;
	while (ncap < need) {
		if (ncap > SIZE_MAX / 2)
			return SP_ENOMEM;
		ncap *= 2;
	}
	nd = malloc(ncap);
	if (nd == NULL)
		return SP_ENOMEM;
	if (b->data != NULL) {
		memcpy(nd, b->data, b->len);
		sodium_memzero(b->data, b->cap);
		free(b->data);
	}
	b->data = nd;
	b->cap = ncap;
	return SP_OK;
}

void
sig_wbuf_put(sig_wbuf *b, const void *p, size_t n)
{
	int rc;

	if (b->err)
		return;
	if (n > SIZE_MAX - b->len) {
		b->err = SP_ETOOBIG;
		return;
	}
	if ((rc = wbuf_grow(b, b->len + n)) != SP_OK) {
		b->err = rc;
		return;
	}
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
}

void
sig_wbuf_u8(sig_wbuf *b, uint8_t v)
{
	sig_wbuf_put(b, &v, 1);
}

void
sig_wbuf_u32(sig_wbuf *b, uint32_t v)
{
	uint8_t t[4];

	sp_be32_put(t, v);
	sig_wbuf_put(b, t, 4);
}

void
sig_wbuf_lenbytes(sig_wbuf *b, const void *p, size_t n)
{
	if (n > UINT32_MAX) {
		if (!b->err)
			b->err = SP_ETOOBIG;
		return;
	}
	sig_wbuf_u32(b, (uint32_t)n);
	sig_wbuf_put(b, p, n);
}

void
sig_wbuf_varint(sig_wbuf *b, uint64_t v)
{
	uint8_t t[10];
	size_t n = 0;

	do {
		t[n] = (uint8_t)(v & 0x7f);
		v >>= 7;
		if (v)
			t[n] |= 0x80;
		n++;
	} while (v);
	sig_wbuf_put(b, t, n);
}

int
sig_wbuf_finish(sig_wbuf *b, uint8_t **out, size_t *len)
{
	int rc = b->err;

	if (rc == SP_OK && b->data == NULL && (rc = wbuf_grow(b, 1)) != SP_OK)
		b->err = rc;
	if (rc != SP_OK) {
		sig_wbuf_dispose(b);
		return rc;
	}
	*out = b->data;
	*len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return SP_OK;
}

void
sig_wbuf_dispose(sig_wbuf *b)
{
	if (b->data != NULL) {
		sodium_memzero(b->data, b->cap);
		free(b->data);
	}
	b->data = NULL;
	b->len = b->cap = 0;
}

void
sig_rbuf_init(sig_rbuf *r, const uint8_t *p, size_t len)
{
	r->p = p;
	r->len = len;
	r->off = 0;
}

int
sig_rbuf_u8(sig_rbuf *r, uint8_t *v)
{
	if (r->len - r->off < 1)
		return SP_ETRUNC;
	*v = r->p[r->off++];
	return SP_OK;
}

int
sig_rbuf_u32(sig_rbuf *r, uint32_t *v)
{
	if (r->len - r->off < 4)
		return SP_ETRUNC;
	*v = sp_be32_get(r->p + r->off);
	r->off += 4;
	return SP_OK;
}

int
sig_rbuf_copy(sig_rbuf *r, void *dst, size_t n)
{
	if (r->len - r->off < n)
		return SP_ETRUNC;
	if (n)
		memcpy(dst, r->p + r->off, n);
	r->off += n;
	return SP_OK;
}

int
sig_rbuf_lenbytes(sig_rbuf *r, const uint8_t **p, size_t *n, size_t max)
{
	uint32_t l;
	int rc;

	if ((rc = sig_rbuf_u32(r, &l)) != SP_OK)
		return rc;
	if (l > max)
		return SP_EFIELDLEN;
	if (r->len - r->off < l)
		return SP_ETRUNC;
	*p = r->p + r->off;
	*n = l;
	r->off += l;
	return SP_OK;
}

int
sig_rbuf_varint(sig_rbuf *r, uint64_t *v)
{
	uint64_t x = 0;
	unsigned shift = 0;
	uint8_t c;

	for (int i = 0; i < 10; i++) {
		if (r->off >= r->len)
			return SP_ETRUNC;
		c = r->p[r->off++];
		if (i == 9 && (c & 0xfe))
			return SP_EMALFORMED;
		x |= (uint64_t)(c & 0x7f) << shift;
		if (!(c & 0x80)) {
			*v = x;
			return SP_OK;
		}
		shift += 7;
	}
	return SP_EMALFORMED;
}
