/*
 * The E2E plaintext container (docs/CLIENT.md): a msgpack map with short keys, inside
 * the Signal ciphertext. The server never sees it. Decoding is strict about types and
 * lengths because a peer's device may be hostile.
 */
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "client/cl_internal.h"
#include "sp_error.h"

#define ENV_VERSION 1
#define ENV_MAX_TEXT 32768
#define ENV_MAX_SKDM 1024

static void
pack_str(msgpack_packer *pk, const char *s, size_t n)
{
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

static void
pack_key(msgpack_packer *pk, const char *k)
{
	pack_str(pk, k, strlen(k));
}

static void
pack_bin(msgpack_packer *pk, const void *p, size_t n)
{
	msgpack_pack_bin(pk, n);
	msgpack_pack_bin_body(pk, p, n);
}

int
cl_env_encode(const cl_env *e, uint8_t **out, size_t *outlen)
{
	if (e->text_len > ENV_MAX_TEXT || e->skdm_len > ENV_MAX_SKDM || e->phone_len > 32 ||
	    e->gname_len > 128)
		return SP_ETOOBIG;
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	size_t n = 3 + (e->to != 0) + (e->group != 0) + (e->phone_len != 0) + (e->gname_len != 0);
	n += e->kind == CL_K_TEXT || e->kind == CL_K_MEDIA || e->kind == CL_K_SKDM || e->kind == CL_K_SK_RETRY;
	msgpack_pack_map(&pk, n);
	pack_key(&pk, "v");
	msgpack_pack_uint64(&pk, ENV_VERSION);
	pack_key(&pk, "k");
	msgpack_pack_uint64(&pk, e->kind);
	pack_key(&pk, "s");
	msgpack_pack_uint64(&pk, e->seq);
	if (e->to) {
		pack_key(&pk, "to");
		msgpack_pack_uint64(&pk, e->to);
	}
	if (e->group) {
		pack_key(&pk, "g");
		msgpack_pack_uint64(&pk, e->group);
	}
	if (e->phone_len) {
		pack_key(&pk, "p");
		pack_str(&pk, e->phone, e->phone_len);
	}
	if (e->gname_len) {
		pack_key(&pk, "gn");
		pack_str(&pk, e->gname, e->gname_len);
	}
	if (e->kind == CL_K_TEXT) {
		pack_key(&pk, "t");
		pack_str(&pk, e->text ? e->text : "", e->text_len);
	} else if (e->kind == CL_K_SKDM) {
		pack_key(&pk, "sk");
		pack_bin(&pk, e->skdm, e->skdm_len);
	} else if (e->kind == CL_K_SK_RETRY) {
		pack_key(&pk, "rm");
		pack_bin(&pk, e->retry_msg_id, 16);
	} else if (e->kind == CL_K_MEDIA) {
		const cl_media *m = &e->media;
		pack_key(&pk, "m");
		msgpack_pack_map(&pk, 7);
		pack_key(&pk, "id");
		pack_bin(&pk, m->blob_id, 16);
		pack_key(&pk, "key");
		pack_bin(&pk, m->key, 32);
		pack_key(&pk, "dg");
		pack_bin(&pk, m->digest, 32);
		pack_key(&pk, "sz");
		msgpack_pack_uint64(&pk, m->size);
		pack_key(&pk, "psz");
		msgpack_pack_uint64(&pk, m->plain_size);
		pack_key(&pk, "mime");
		pack_str(&pk, m->mime, strlen(m->mime));
		pack_key(&pk, "name");
		pack_str(&pk, m->name, strlen(m->name));
	}
	*out = (uint8_t *)sb.data;
	*outlen = sb.size;
	return *out ? SP_OK : SP_ENOMEM;
}

static bool
key_is(const msgpack_object *k, const char *s)
{
	size_t n = strlen(s);
	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, s, n) == 0;
}

/* Reads a str or bin into (p, n) with 0 <= n <= max; it must lie inside the input. */
static int
get_raw(const msgpack_object *o, bool bin, size_t max, const uint8_t *in, size_t inlen,
	const void **p, size_t *n)
{
	if (bin ? o->type != MSGPACK_OBJECT_BIN : o->type != MSGPACK_OBJECT_STR)
		return SP_EMALFORMED;
	const uint8_t *ptr = (const uint8_t *)(bin ? (const void *)o->via.bin.ptr : (const void *)o->via.str.ptr);
	size_t len = bin ? o->via.bin.size : o->via.str.size;
	if (len > max)
		return SP_ETOOBIG;
	if (len && (ptr < in || ptr + len > in + inlen))
		return SP_EMALFORMED;
	*p = ptr;
	*n = len;
	return SP_OK;
}

static int
get_uint(const msgpack_object *o, uint64_t *v)
{
	if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return SP_EMALFORMED;
	*v = o->via.u64;
	return SP_OK;
}

static int
get_fixed(const msgpack_object *o, void *dst, size_t want, const uint8_t *in, size_t inlen)
{
	const void *p;
	size_t n;
	int rc = get_raw(o, true, want, in, inlen, &p, &n);
	if (rc == SP_OK && n != want)
		rc = SP_EMALFORMED;
	if (rc == SP_OK)
		memcpy(dst, p, want);
	return rc;
}

static int
get_cstr(const msgpack_object *o, char *dst, size_t cap, const uint8_t *in, size_t inlen)
{
	const void *p;
	size_t n;
	int rc = get_raw(o, false, cap - 1, in, inlen, &p, &n);
	if (rc)
		return rc;
	memcpy(dst, p, n);
	dst[n] = '\0';
	return memchr(dst, '\0', n) ? SP_EMALFORMED : SP_OK;
}

static int
decode_media(const msgpack_object *o, cl_media *m, const uint8_t *in, size_t len)
{
	if (o->type != MSGPACK_OBJECT_MAP || o->via.map.size > 16)
		return SP_EMALFORMED;
	unsigned seen = 0;
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
		int rc = SP_OK;
		if (key_is(k, "id"))
			rc = get_fixed(v, m->blob_id, 16, in, len), seen |= 1;
		else if (key_is(k, "key"))
			rc = get_fixed(v, m->key, 32, in, len), seen |= 2;
		else if (key_is(k, "dg"))
			rc = get_fixed(v, m->digest, 32, in, len), seen |= 4;
		else if (key_is(k, "sz"))
			rc = get_uint(v, &m->size), seen |= 8;
		else if (key_is(k, "psz"))
			rc = get_uint(v, &m->plain_size);
		else if (key_is(k, "mime"))
			rc = get_cstr(v, m->mime, sizeof(m->mime), in, len);
		else if (key_is(k, "name"))
			rc = get_cstr(v, m->name, sizeof(m->name), in, len);
		if (rc)
			return rc;
	}
	return seen == 15 ? SP_OK : SP_EMISSING;
}

/* Walks one msgpack object without allocating: every length and count must fit in the
 * bytes that remain (msgpack_unpack_next would otherwise allocate what a hostile count
 * asks for), nesting at most `depth`. */
static int
mp_check(const uint8_t *p, size_t len, size_t *off, int depth)
{
	if (depth <= 0 || *off >= len)
		return SP_EMALFORMED;
	uint8_t c = p[(*off)++];
	uint64_t n = 0, items = 0;
	size_t lenbytes = 0, extra = 0;
	if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
		return SP_OK;
	if (c >= 0x80 && c <= 0x8f)
		items = 2 * (uint64_t)(c & 0x0f);
	else if (c >= 0x90 && c <= 0x9f)
		items = c & 0x0f;
	else if (c >= 0xa0 && c <= 0xbf)
		n = c & 0x1f;
	else
		switch (c) {
		case 0xc4: case 0xd9: lenbytes = 1; break;
		case 0xc5: case 0xda: lenbytes = 2; break;
		case 0xc6: case 0xdb: lenbytes = 4; break;
		case 0xc7: lenbytes = 1; extra = 1; break;
		case 0xc8: lenbytes = 2; extra = 1; break;
		case 0xc9: lenbytes = 4; extra = 1; break;
		case 0xca: n = 4; break;
		case 0xcb: n = 8; break;
		case 0xcc: case 0xd0: n = 1; break;
		case 0xcd: case 0xd1: n = 2; break;
		case 0xce: case 0xd2: n = 4; break;
		case 0xcf: case 0xd3: n = 8; break;
		case 0xd4: n = 2; break;
		case 0xd5: n = 3; break;
		case 0xd6: n = 5; break;
		case 0xd7: n = 9; break;
		case 0xd8: n = 17; break;
		case 0xdc: case 0xde: lenbytes = 2; break;
		case 0xdd: case 0xdf: lenbytes = 4; break;
		default: return SP_EMALFORMED;
		}
	if (lenbytes) {
		if (len - *off < lenbytes)
			return SP_ETRUNC;
		uint64_t v = 0;
		for (size_t i = 0; i < lenbytes; i++)
			v = v << 8 | p[(*off)++];
		if (c >= 0xdc)
			items = c >= 0xde ? 2 * v : v;
		else
			n = v + extra;
	}
	if (items) {
		if (items > len - *off)
			return SP_ETRUNC;
		for (uint64_t i = 0; i < items; i++) {
			int rc = mp_check(p, len, off, depth - 1);
			if (rc)
				return rc;
		}
		return SP_OK;
	}
	if (n > len - *off)
		return SP_ETRUNC;
	*off += (size_t)n;
	return SP_OK;
}

int
cl_env_decode(const uint8_t *in, size_t len, cl_env *e)
{
	memset(e, 0, sizeof(*e));
	size_t chk = 0;
	int crc = mp_check(in, len, &chk, 4);
	if (crc || chk != len)
		return crc ? crc : SP_EMALFORMED;
	msgpack_unpacked u;
	msgpack_unpacked_init(&u);
	size_t off = 0;
	int rc = SP_OK;
	if (msgpack_unpack_next(&u, (const char *)in, len, &off) != MSGPACK_UNPACK_SUCCESS) {
		msgpack_unpacked_destroy(&u);
		return SP_EMALFORMED;
	}
	const msgpack_object *o = &u.data;
	if (off != len || o->type != MSGPACK_OBJECT_MAP || o->via.map.size > 32) {
		rc = SP_EMALFORMED;
		goto out;
	}
	uint64_t version = 0, kind = 0;
	bool has_seq = false;
	const void *p;
	for (uint32_t i = 0; i < o->via.map.size && rc == SP_OK; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
		if (key_is(k, "v")) {
			rc = get_uint(v, &version);
		} else if (key_is(k, "k")) {
			rc = get_uint(v, &kind);
		} else if (key_is(k, "s")) {
			rc = get_uint(v, &e->seq);
			has_seq = true;
		} else if (key_is(k, "to")) {
			rc = get_uint(v, &e->to);
		} else if (key_is(k, "g")) {
			rc = get_uint(v, &e->group);
		} else if (key_is(k, "p")) {
			if ((rc = get_raw(v, false, 32, in, len, &p, &e->phone_len)) == SP_OK)
				e->phone = p;
		} else if (key_is(k, "gn")) {
			if ((rc = get_raw(v, false, 128, in, len, &p, &e->gname_len)) == SP_OK)
				e->gname = p;
		} else if (key_is(k, "t")) {
			if ((rc = get_raw(v, false, ENV_MAX_TEXT, in, len, &p, &e->text_len)) == SP_OK)
				e->text = e->text_len ? p : "";
		} else if (key_is(k, "sk")) {
			if ((rc = get_raw(v, true, ENV_MAX_SKDM, in, len, &p, &e->skdm_len)) == SP_OK)
				e->skdm = p;
		} else if (key_is(k, "rm")) {
			size_t n = 0;
			if ((rc = get_raw(v, true, 16, in, len, &p, &n)) == SP_OK && n != 16)
				rc = SP_EMALFORMED;
			if (rc == SP_OK)
				e->retry_msg_id = p;
		} else if (key_is(k, "m")) {
			rc = decode_media(v, &e->media, in, len);
		}
		/* Unknown keys are skipped: newer clients may add fields. */
	}
	if (rc == SP_OK && (version != ENV_VERSION || !has_seq))
		rc = SP_EMALFORMED;
	if (rc == SP_OK) {
		e->kind = (unsigned)kind;
		if ((kind == CL_K_TEXT && !e->text) || (kind == CL_K_SKDM && !e->skdm) ||
		    (kind == CL_K_MEDIA && !e->media.size) ||
		    (kind == CL_K_SK_RETRY && (!e->retry_msg_id || !e->group)) ||
		    (kind != CL_K_TEXT && kind != CL_K_MEDIA && kind != CL_K_SKDM && kind != CL_K_SK_RETRY))
			rc = SP_EMALFORMED;
	}
out:
	msgpack_unpacked_destroy(&u);
	if (rc)
		memset(e, 0, sizeof(*e));
	return rc;
}
