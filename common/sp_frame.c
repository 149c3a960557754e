/*
 * Table-driven msgpack codec for the frame catalogue.
 *
 * Decoding reads the msgpack bytes directly instead of building a msgpack_object tree:
 * msgpack-c's unpacker allocates every array's elements before reading them, so a 64 KiB
 * frame could claim gigabytes. Here a count is checked against the field's bound and the
 * bytes left before anything is allocated. Encoding uses msgpack-c's packer.
 */
#include <string.h>

#include "sp_bytes.h"
#include "sp_error.h"
#include "sp_frame.h"

static size_t limit_small = 64 * 1024;
static size_t limit_large = 1024 * 1024;

void
sp_frame_set_limits(size_t small, size_t large)
{
	limit_small = small;
	limit_large = large < small ? small : large;
}

size_t
sp_frame_limit_small(void)
{
	return limit_small;
}

size_t
sp_frame_limit_large(void)
{
	return limit_large;
}

void
sp_frame_init(sp_frame *f, unsigned type, uint64_t id, bool has_id)
{
	f->type = (uint8_t)type;
	f->has_id = has_id;
	f->id = id;
	f->present = 0;
	f->zone = NULL;
}

void
sp_frame_fini(sp_frame *f)
{
	if (f->zone)
		msgpack_zone_free(f->zone);
	f->zone = NULL;
	f->present = 0;
}

int
sp_frame_slot(unsigned type, sp_field fld)
{
	const sp_frame_def *d = sp_frame_def_get(type);
	if (!d)
		return -1;
	for (int i = 0; i < d->nfields; i++)
		if (d->fields[i].field == fld)
			return i;
	return -1;
}

/* ---- reader ---- */

typedef struct reader {
	const uint8_t *p, *end;
	msgpack_zone **zone;
} reader;

static int
rd_need(reader *r, size_t n)
{
	return (size_t)(r->end - r->p) >= n ? SP_OK : SP_ETRUNC;
}

static uint64_t
rd_be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* Reads a big-endian length/count of n bytes following the type byte. */
static int
rd_len(reader *r, int n, uint64_t *out)
{
	if (rd_need(r, (size_t)n))
		return SP_ETRUNC;
	*out = rd_be(r->p, n);
	r->p += n;
	return SP_OK;
}

static int
rd_map_header(reader *r, uint32_t *n)
{
	uint64_t v;
	int rc;
	if (rd_need(r, 1))
		return SP_ETRUNC;
	uint8_t b = *r->p++;
	if (b >= 0x80 && b <= 0x8f) {
		*n = b & 0x0f;
		return SP_OK;
	}
	if (b == 0xde || b == 0xdf) {
		if ((rc = rd_len(r, b == 0xde ? 2 : 4, &v)))
			return rc;
		*n = (uint32_t)v;
		return SP_OK;
	}
	return SP_EMALFORMED;
}

/* Reads an array header; the count must fit in the bytes left (each element >= 1 byte). */
static int
rd_array_header(reader *r, uint32_t *n)
{
	uint64_t v;
	int rc;
	if (rd_need(r, 1))
		return SP_ETRUNC;
	uint8_t b = *r->p;
	if (b >= 0x90 && b <= 0x9f) {
		r->p++;
		v = b & 0x0f;
	} else if (b == 0xdc || b == 0xdd) {
		r->p++;
		if ((rc = rd_len(r, b == 0xdc ? 2 : 4, &v)))
			return rc;
	} else {
		return SP_EFIELDTYPE;
	}
	if (v > (uint64_t)(r->end - r->p))
		return SP_ETRUNC;
	*n = (uint32_t)v;
	return SP_OK;
}

/* Reads a str (want_str) or bin value without copying. */
static int
rd_raw(reader *r, bool want_str, sp_bin *out)
{
	uint64_t len;
	int rc;
	if (rd_need(r, 1))
		return SP_ETRUNC;
	uint8_t b = *r->p;
	if (want_str && b >= 0xa0 && b <= 0xbf) {
		r->p++;
		len = b & 0x1f;
	} else if (want_str && b >= 0xd9 && b <= 0xdb) {
		r->p++;
		if ((rc = rd_len(r, 1 << (b - 0xd9), &len)))
			return rc;
	} else if (!want_str && b >= 0xc4 && b <= 0xc6) {
		r->p++;
		if ((rc = rd_len(r, 1 << (b - 0xc4), &len)))
			return rc;
	} else {
		return SP_EFIELDTYPE;
	}
	if (len > (uint64_t)(r->end - r->p))
		return SP_ETRUNC;
	out->p = r->p;
	out->len = (uint32_t)len;
	r->p += len;
	return SP_OK;
}

static int
rd_uint(reader *r, uint64_t *out)
{
	if (rd_need(r, 1))
		return SP_ETRUNC;
	uint8_t b = *r->p;
	if (b <= 0x7f) {
		r->p++;
		*out = b;
		return SP_OK;
	}
	if (b >= 0xcc && b <= 0xcf) {
		r->p++;
		return rd_len(r, 1 << (b - 0xcc), out);
	}
	return SP_EFIELDTYPE;
}

static int
rd_int(reader *r, int64_t *out)
{
	uint64_t u;
	int rc;
	if (rd_need(r, 1))
		return SP_ETRUNC;
	uint8_t b = *r->p;
	if (b >= 0xe0) {
		r->p++;
		*out = (int8_t)b;
		return SP_OK;
	}
	if (b >= 0xd0 && b <= 0xd3) {
		int n = 1 << (b - 0xd0);
		r->p++;
		if ((rc = rd_len(r, n, &u)))
			return rc;
		/* Sign-extend from n bytes. */
		if (n < 8 && (u & (1ULL << (n * 8 - 1))))
			u |= ~0ULL << (n * 8);
		*out = (int64_t)u;
		return SP_OK;
	}
	if ((rc = rd_uint(r, &u)))
		return rc;
	if (u > INT64_MAX)
		return SP_ERANGE;
	*out = (int64_t)u;
	return SP_OK;
}

static void *
zone_alloc(reader *r, size_t size)
{
	if (!*r->zone) {
		*r->zone = msgpack_zone_new(size > 8192 ? size + 64 : 8192);
		if (!*r->zone)
			return NULL;
	}
	return msgpack_zone_malloc(*r->zone, size);
}

static int decode_map(reader *r, const sp_frame_def *d, bool top, int depth, sp_frame *f);

static int
decode_value(reader *r, const sp_field_def *fd, int depth, sp_val *v)
{
	int rc;
	uint32_t n;
	switch (fd->type) {
	case SP_FT_UINT:
		return rd_uint(r, &v->u);
	case SP_FT_INT:
		return rd_int(r, &v->i);
	case SP_FT_BOOL:
		if (rd_need(r, 1))
			return SP_ETRUNC;
		if (*r->p != 0xc2 && *r->p != 0xc3)
			return SP_EFIELDTYPE;
		v->u = *r->p++ == 0xc3;
		return SP_OK;
	case SP_FT_BIN:
	case SP_FT_STR:
		if ((rc = rd_raw(r, fd->type == SP_FT_STR, &v->b)))
			return rc;
		return v->b.len < fd->min || v->b.len > fd->max ? SP_EFIELDLEN : SP_OK;
	case SP_FT_UINTS:
	case SP_FT_BINS:
	case SP_FT_RECS:
		break;
	}
	if ((rc = rd_array_header(r, &n)))
		return rc;
	if (n > fd->max_count)
		return SP_EFIELDLEN;
	if (fd->type == SP_FT_UINTS) {
		uint64_t *a = n ? zone_alloc(r, n * sizeof(*a)) : NULL;
		if (n && !a)
			return SP_ENOMEM;
		for (uint32_t i = 0; i < n; i++)
			if ((rc = rd_uint(r, &a[i])))
				return rc;
		v->us.v = a;
		v->us.n = n;
		return SP_OK;
	}
	if (fd->type == SP_FT_BINS) {
		sp_bin *a = n ? zone_alloc(r, n * sizeof(*a)) : NULL;
		if (n && !a)
			return SP_ENOMEM;
		for (uint32_t i = 0; i < n; i++) {
			if ((rc = rd_raw(r, false, &a[i])))
				return rc;
			if (a[i].len < fd->min || a[i].len > fd->max)
				return SP_EFIELDLEN;
		}
		v->bs.v = a;
		v->bs.n = n;
		return SP_OK;
	}
	if (depth >= SP_FRAME_MAX_DEPTH)
		return SP_EMALFORMED;
	const sp_frame_def *rd = sp_frame_def_get((unsigned)fd->rec);
	sp_frame *a = n ? zone_alloc(r, n * sizeof(*a)) : NULL;
	if (n && !a)
		return SP_ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		sp_frame_init(&a[i], (unsigned)fd->rec, 0, false);
		if ((rc = decode_map(r, rd, false, depth + 1, &a[i])))
			return rc;
	}
	v->rs.v = a;
	v->rs.n = n;
	return SP_OK;
}

static bool
key_is(sp_bin k, const char *s)
{
	size_t n = strlen(s);
	return k.len == n && memcmp(k.p, s, n) == 0;
}

/* Decodes the fields of one map. For a top-level frame the map header and "t" were already
 * read by the caller (d is then the frame's definition and `nkeys` counts the rest). */
static int
decode_fields(reader *r, const sp_frame_def *d, uint32_t nkeys, bool top, int depth, sp_frame *f)
{
	int rc;
	for (uint32_t k = 0; k < nkeys; k++) {
		sp_bin key;
		if ((rc = rd_raw(r, true, &key)))
			return rc == SP_EFIELDTYPE ? SP_EMALFORMED : rc;
		if (top && key_is(key, "id")) {
			if (f->has_id)
				return SP_EDUPFIELD;
			if ((rc = rd_uint(r, &f->id)))
				return rc;
			f->has_id = true;
			continue;
		}
		int slot = -1;
		for (int i = 0; i < d->nfields; i++) {
			if (key_is(key, sp_field_def_get(d->fields[i].field)->key)) {
				slot = i;
				break;
			}
		}
		if (slot < 0)
			return key_is(key, "t") ? SP_EDUPFIELD : SP_EUNKNOWNFIELD;
		if (f->present & (1u << slot))
			return SP_EDUPFIELD;
		if ((rc = decode_value(r, sp_field_def_get(d->fields[slot].field), depth, &f->v[slot])))
			return rc;
		f->present |= 1u << slot;
	}
	for (int i = 0; i < d->nfields; i++)
		if (d->fields[i].required && !(f->present & (1u << i)))
			return SP_EMISSING;
	return SP_OK;
}

static int
decode_map(reader *r, const sp_frame_def *d, bool top, int depth, sp_frame *f)
{
	uint32_t n;
	int rc = rd_map_header(r, &n);
	if (rc)
		return rc == SP_EMALFORMED ? SP_EFIELDTYPE : rc;
	return decode_fields(r, d, n, top, depth, f);
}

int
sp_frame_decode(const uint8_t *p, size_t len, sp_frame *f)
{
	reader r = {p, p + len, NULL};
	uint32_t n;
	uint64_t type;
	sp_bin key;
	int rc;

	sp_frame_init(f, 0, 0, false);
	r.zone = &f->zone;
	if (len > limit_large)
		return SP_ETOOBIG;
	if ((rc = rd_map_header(&r, &n)))
		return rc;
	if (n == 0)
		return SP_EMISSING;
	/* The type comes first so that every later key can be checked against it. */
	if ((rc = rd_raw(&r, true, &key)))
		return rc == SP_EFIELDTYPE ? SP_EMALFORMED : rc;
	if (!key_is(key, "t"))
		return SP_EMISSING;
	if ((rc = rd_uint(&r, &type)))
		goto fail;
	const sp_frame_def *d = sp_frame_def_get(type < 256 ? (unsigned)type : 256);
	if (!d || (d->flags & SP_FL_RECORD)) {
		rc = SP_EBADTYPE;
		goto fail;
	}
	f->type = (uint8_t)type;
	if (!(d->flags & SP_FL_LARGE) && len > limit_small) {
		rc = SP_ETOOBIG;
		goto fail;
	}
	if ((rc = decode_fields(&r, d, n - 1, true, 0, f)))
		goto fail;
	if (r.p != r.end) {
		rc = SP_ETRAILING;
		goto fail;
	}
	return SP_OK;
fail:
	sp_frame_fini(f);
	return rc;
}

/* ---- getters and setters ---- */

const sp_val *
sp_frame_get(const sp_frame *f, sp_field fld)
{
	int s = sp_frame_slot(f->type, fld);
	if (s < 0 || !(f->present & (1u << s)))
		return NULL;
	return &f->v[s];
}

bool
sp_frame_has(const sp_frame *f, sp_field fld)
{
	return sp_frame_get(f, fld) != NULL;
}

uint64_t
sp_frame_u64(const sp_frame *f, sp_field fld)
{
	const sp_val *v = sp_frame_get(f, fld);
	return v ? v->u : 0;
}

int64_t
sp_frame_i64(const sp_frame *f, sp_field fld)
{
	const sp_val *v = sp_frame_get(f, fld);
	return v ? v->i : 0;
}

sp_bin
sp_frame_bin(const sp_frame *f, sp_field fld)
{
	const sp_val *v = sp_frame_get(f, fld);
	sp_bin none = {NULL, 0};
	return v ? v->b : none;
}

int
sp_frame_str(const sp_frame *f, sp_field fld, char *buf, size_t cap)
{
	const sp_val *v = sp_frame_get(f, fld);
	if (!v)
		return SP_EMISSING;
	if (v->b.len >= cap)
		return SP_ETOOBIG;
	memcpy(buf, v->b.p, v->b.len);
	buf[v->b.len] = '\0';
	return SP_OK;
}

static sp_val *
slot_for_set(sp_frame *f, sp_field fld, sp_ftype want, int *rc)
{
	int s = sp_frame_slot(f->type, fld);
	if (s < 0) {
		*rc = SP_EUNKNOWNFIELD;
		return NULL;
	}
	if (sp_field_def_get(fld)->type != want) {
		*rc = SP_EFIELDTYPE;
		return NULL;
	}
	f->present |= 1u << s;
	*rc = SP_OK;
	return &f->v[s];
}

int
sp_frame_set_u64(sp_frame *f, sp_field fld, uint64_t x)
{
	int rc;
	sp_val *v = slot_for_set(f, fld, SP_FT_UINT, &rc);
	if (v)
		v->u = x;
	return rc;
}

int
sp_frame_set_i64(sp_frame *f, sp_field fld, int64_t x)
{
	int rc;
	sp_val *v = slot_for_set(f, fld, SP_FT_INT, &rc);
	if (v)
		v->i = x;
	return rc;
}

int
sp_frame_set_bool(sp_frame *f, sp_field fld, bool x)
{
	int rc;
	sp_val *v = slot_for_set(f, fld, SP_FT_BOOL, &rc);
	if (v)
		v->u = x;
	return rc;
}

int
sp_frame_set_bin(sp_frame *f, sp_field fld, const void *p, size_t len)
{
	int rc;
	const sp_field_def *fd = sp_field_def_get(fld);
	if (len > UINT32_MAX)
		return SP_ETOOBIG;
	sp_val *v = slot_for_set(f, fld, fd && fd->type == SP_FT_STR ? SP_FT_STR : SP_FT_BIN, &rc);
	if (v) {
		v->b.p = p;
		v->b.len = (uint32_t)len;
	}
	return rc;
}

int
sp_frame_set_str(sp_frame *f, sp_field fld, const char *s)
{
	return sp_frame_set_bin(f, fld, s, strlen(s));
}

int
sp_frame_set_u64s(sp_frame *f, sp_field fld, const uint64_t *a, uint32_t n)
{
	int rc;
	sp_val *v = slot_for_set(f, fld, SP_FT_UINTS, &rc);
	if (v) {
		v->us.v = a;
		v->us.n = n;
	}
	return rc;
}

int
sp_frame_set_bins(sp_frame *f, sp_field fld, const sp_bin *a, uint32_t n)
{
	int rc;
	sp_val *v = slot_for_set(f, fld, SP_FT_BINS, &rc);
	if (v) {
		v->bs.v = a;
		v->bs.n = n;
	}
	return rc;
}

int
sp_frame_set_recs(sp_frame *f, sp_field fld, const sp_frame *a, uint32_t n)
{
	int rc;
	sp_val *v = slot_for_set(f, fld, SP_FT_RECS, &rc);
	if (v) {
		v->rs.v = a;
		v->rs.n = n;
	}
	return rc;
}

/* ---- encoder ---- */

static int check_rec(const sp_frame *f, const sp_frame_def *d, int depth);

static int
check_value(const sp_field_def *fd, const sp_val *v, int depth)
{
	int rc;
	switch (fd->type) {
	case SP_FT_UINT:
	case SP_FT_INT:
	case SP_FT_BOOL:
		return SP_OK;
	case SP_FT_BIN:
	case SP_FT_STR:
		return v->b.len < fd->min || v->b.len > fd->max ? SP_EFIELDLEN : SP_OK;
	case SP_FT_UINTS:
		return v->us.n > fd->max_count ? SP_EFIELDLEN : SP_OK;
	case SP_FT_BINS:
		if (v->bs.n > fd->max_count)
			return SP_EFIELDLEN;
		for (uint32_t i = 0; i < v->bs.n; i++)
			if (v->bs.v[i].len < fd->min || v->bs.v[i].len > fd->max)
				return SP_EFIELDLEN;
		return SP_OK;
	case SP_FT_RECS:
		if (v->rs.n > fd->max_count || depth >= SP_FRAME_MAX_DEPTH)
			return SP_EFIELDLEN;
		for (uint32_t i = 0; i < v->rs.n; i++) {
			if (v->rs.v[i].type != (unsigned)fd->rec)
				return SP_EFIELDTYPE;
			if ((rc = check_rec(&v->rs.v[i], sp_frame_def_get((unsigned)fd->rec), depth + 1)))
				return rc;
		}
		return SP_OK;
	}
	return SP_EINVAL;
}

static int
check_rec(const sp_frame *f, const sp_frame_def *d, int depth)
{
	int rc;
	for (int i = 0; i < d->nfields; i++) {
		bool has = f->present & (1u << i);
		if (!has) {
			if (d->fields[i].required)
				return SP_EMISSING;
			continue;
		}
		if ((rc = check_value(sp_field_def_get(d->fields[i].field), &f->v[i], depth)))
			return rc;
	}
	return SP_OK;
}

static int
popcount32(uint32_t x)
{
	return __builtin_popcount(x);
}

static int pack_rec(msgpack_packer *pk, const sp_frame *f, const sp_frame_def *d, bool top);

static int
pack_value(msgpack_packer *pk, const sp_field_def *fd, const sp_val *v)
{
	int rc = 0;
	switch (fd->type) {
	case SP_FT_UINT:
		return msgpack_pack_uint64(pk, v->u);
	case SP_FT_INT:
		return msgpack_pack_int64(pk, v->i);
	case SP_FT_BOOL:
		return v->u ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
	case SP_FT_BIN:
		rc = msgpack_pack_bin(pk, v->b.len);
		return rc ? rc : msgpack_pack_bin_body(pk, v->b.p, v->b.len);
	case SP_FT_STR:
		rc = msgpack_pack_str(pk, v->b.len);
		return rc ? rc : msgpack_pack_str_body(pk, v->b.p, v->b.len);
	case SP_FT_UINTS:
		rc = msgpack_pack_array(pk, v->us.n);
		for (uint32_t i = 0; !rc && i < v->us.n; i++)
			rc = msgpack_pack_uint64(pk, v->us.v[i]);
		return rc;
	case SP_FT_BINS:
		rc = msgpack_pack_array(pk, v->bs.n);
		for (uint32_t i = 0; !rc && i < v->bs.n; i++) {
			rc = msgpack_pack_bin(pk, v->bs.v[i].len);
			if (!rc)
				rc = msgpack_pack_bin_body(pk, v->bs.v[i].p, v->bs.v[i].len);
		}
		return rc;
	case SP_FT_RECS:
		rc = msgpack_pack_array(pk, v->rs.n);
		for (uint32_t i = 0; !rc && i < v->rs.n; i++)
			rc = pack_rec(pk, &v->rs.v[i], sp_frame_def_get((unsigned)fd->rec), false);
		return rc;
	}
	return -1;
}

static int
pack_key(msgpack_packer *pk, const char *key)
{
	size_t n = strlen(key);
	int rc = msgpack_pack_str(pk, n);
	return rc ? rc : msgpack_pack_str_body(pk, key, n);
}

static int
pack_rec(msgpack_packer *pk, const sp_frame *f, const sp_frame_def *d, bool top)
{
	uint32_t mask = f->present & ((d->nfields >= 32 ? 0 : (1u << d->nfields)) - 1);
	size_t n = (size_t)popcount32(mask) + (top ? 1 + f->has_id : 0);
	int rc = msgpack_pack_map(pk, n);
	if (!rc && top) {
		rc = pack_key(pk, "t");
		if (!rc)
			rc = msgpack_pack_uint8(pk, f->type);
		if (!rc && f->has_id) {
			rc = pack_key(pk, "id");
			if (!rc)
				rc = msgpack_pack_uint64(pk, f->id);
		}
	}
	for (int i = 0; !rc && i < d->nfields; i++) {
		if (!(mask & (1u << i)))
			continue;
		const sp_field_def *fd = sp_field_def_get(d->fields[i].field);
		rc = pack_key(pk, fd->key);
		if (!rc)
			rc = pack_value(pk, fd, &f->v[i]);
	}
	return rc;
}

static int
pack_checked(const sp_frame *f, msgpack_sbuffer *sb, size_t body_start)
{
	const sp_frame_def *d = sp_frame_def_get(f->type);
	msgpack_packer pk;
	int rc;

	if (!d || (d->flags & SP_FL_RECORD))
		return SP_EBADTYPE;
	if ((rc = check_rec(f, d, 0)))
		return rc;
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	if (pack_rec(&pk, f, d, true)) {
		sb->size = body_start;
		return SP_ENOMEM;
	}
	size_t len = sb->size - body_start;
	if (len > ((d->flags & SP_FL_LARGE) ? limit_large : limit_small)) {
		sb->size = body_start;
		return SP_ETOOBIG;
	}
	return SP_OK;
}

int
sp_frame_pack(const sp_frame *f, msgpack_sbuffer *sb)
{
	return pack_checked(f, sb, sb->size);
}

int
sp_frame_pack_prefixed(const sp_frame *f, msgpack_sbuffer *sb)
{
	static const char zero[4];
	size_t start = sb->size;
	if (msgpack_sbuffer_write(sb, zero, 4))
		return SP_ENOMEM;
	int rc = pack_checked(f, sb, start + 4);
	if (rc) {
		sb->size = start;
		return rc;
	}
	size_t len = sb->size - start - 4;
	uint8_t *h = (uint8_t *)sb->data + start;
	sp_be32_put(h, (uint32_t)len);
	return SP_OK;
}
