/* Frame catalogue and codec: round-trips of every type, and malformed input. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "sp_error.h"
#include "sp_frame.h"
#include "sp_framer.h"
#include "check_run.h"

/* Storage for generated values: a frame's fields borrow pointers into it. */
static uint8_t blob[1 << 20];
static uint64_t u64s[8] = {1, 2, 3, 0xffffffffffffffffULL, 0, 127, 128, 65536};
static sp_bin bins[4];
static sp_frame recs[4][2];

/* Fills every field of `f` (all of them when `all`, else only required ones) with a
 * valid value of its type within its bounds. `depth` limits record nesting. */
static void
fill(sp_frame *f, bool all, unsigned seed, int depth)
{
	const sp_frame_def *d = sp_frame_def_get(f->type);
	for (int i = 0; i < d->nfields; i++) {
		if (!all && !d->fields[i].required)
			continue;
		const sp_field_def *fd = sp_field_def_get(d->fields[i].field);
		size_t len = fd->min + (seed % (fd->max - fd->min + 1 > 0 ? fd->max - fd->min + 1 : 1));
		if (len > 300)
			len = fd->min > 300 ? fd->min : 300;
		int rc = SP_OK;
		switch (fd->type) {
		case SP_FT_UINT:
			rc = sp_frame_set_u64(f, fd - sp_field_def_get(0), 1000003ULL * seed + i);
			break;
		case SP_FT_INT:
			rc = sp_frame_set_i64(f, fd - sp_field_def_get(0), -(int64_t)seed - 5);
			break;
		case SP_FT_BOOL:
			rc = sp_frame_set_bool(f, fd - sp_field_def_get(0), seed & 1);
			break;
		case SP_FT_BIN:
			rc = sp_frame_set_bin(f, fd - sp_field_def_get(0), blob + seed, len);
			break;
		case SP_FT_STR:
			rc = sp_frame_set_bin(f, fd - sp_field_def_get(0), "abcdefghijklmnopqrstuvwxyz+0123456789",
					      len > 37 ? 37 : len < fd->min ? fd->min : len);
			break;
		case SP_FT_UINTS:
			rc = sp_frame_set_u64s(f, fd - sp_field_def_get(0), u64s,
					       fd->max_count < 8 ? fd->max_count : 8);
			break;
		case SP_FT_BINS:
			for (int k = 0; k < 4; k++) {
				bins[k].p = blob + k;
				bins[k].len = fd->min;
			}
			rc = sp_frame_set_bins(f, fd - sp_field_def_get(0), bins, fd->max_count < 4 ? fd->max_count : 4);
			break;
		case SP_FT_RECS: {
			uint32_t n = fd->max_count < 2 ? fd->max_count : 2;
			if (depth > 0 || n == 0) {
				if (!d->fields[i].required)
					continue;
				n = 0;
			}
			sp_frame *r = recs[depth > 3 ? 3 : depth];
			for (uint32_t k = 0; k < n; k++) {
				sp_frame_init(&r[k], (unsigned)fd->rec, 0, false);
				fill(&r[k], true, seed + k + 1, depth + 1);
			}
			rc = sp_frame_set_recs(f, fd - sp_field_def_get(0), r, n);
			break;
		}
		}
		ck_assert_int_eq(rc, SP_OK);
	}
}

static void
assert_same(const sp_frame *a, const sp_frame *b)
{
	ck_assert_int_eq(a->type, b->type);
	ck_assert_int_eq(a->has_id, b->has_id);
	ck_assert(!a->has_id || a->id == b->id);
	ck_assert_uint_eq(a->present, b->present);
	const sp_frame_def *d = sp_frame_def_get(a->type);
	for (int i = 0; i < d->nfields; i++) {
		if (!(a->present & (1u << i)))
			continue;
		const sp_field_def *fd = sp_field_def_get(d->fields[i].field);
		const sp_val *x = &a->v[i], *y = &b->v[i];
		switch (fd->type) {
		case SP_FT_UINT:
		case SP_FT_BOOL:
			ck_assert(x->u == y->u);
			break;
		case SP_FT_INT:
			ck_assert(x->i == y->i);
			break;
		case SP_FT_BIN:
		case SP_FT_STR:
			ck_assert_uint_eq(x->b.len, y->b.len);
			ck_assert(memcmp(x->b.p, y->b.p, x->b.len) == 0);
			break;
		case SP_FT_UINTS:
			ck_assert_uint_eq(x->us.n, y->us.n);
			ck_assert(memcmp(x->us.v, y->us.v, x->us.n * 8) == 0);
			break;
		case SP_FT_BINS:
			ck_assert_uint_eq(x->bs.n, y->bs.n);
			for (uint32_t k = 0; k < x->bs.n; k++) {
				ck_assert_uint_eq(x->bs.v[k].len, y->bs.v[k].len);
				ck_assert(memcmp(x->bs.v[k].p, y->bs.v[k].p, x->bs.v[k].len) == 0);
			}
			break;
		case SP_FT_RECS:
			ck_assert_uint_eq(x->rs.n, y->rs.n);
			for (uint32_t k = 0; k < x->rs.n; k++)
				assert_same(&x->rs.v[k], &y->rs.v[k]);
			break;
		}
	}
}

static int
roundtrip(unsigned type, bool all, unsigned seed)
{
	sp_frame f, g;
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	sp_frame_init(&f, type, seed * 7, seed & 1);
	fill(&f, all, seed, 0);
	int rc = sp_frame_pack(&f, &sb);
	if (rc == SP_OK) {
		rc = sp_frame_decode((const uint8_t *)sb.data, sb.size, &g);
		ck_assert_msg(rc == SP_OK, "decode %s: %s", sp_frame_type_name(type), sp_strerror(rc));
		assert_same(&f, &g);
		sp_frame_fini(&g);
	}
	msgpack_sbuffer_destroy(&sb);
	return rc;
}

START_TEST(test_roundtrip_every_type)
{
	int n = 0;
	for (unsigned t = 0; t < 256; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		if (!d || (d->flags & SP_FL_RECORD))
			continue;
		for (unsigned seed = 0; seed < 5; seed++) {
			ck_assert_msg(roundtrip(t, true, seed) == SP_OK, "%s all fields", d->name);
			ck_assert_msg(roundtrip(t, false, seed) == SP_OK, "%s required fields", d->name);
		}
		n++;
	}
	ck_assert_int_gt(n, 40);
}
END_TEST

/* Packs a SEND frame into sb (a frame with bins, arrays of records, and nesting). */
static void
pack_send(msgpack_sbuffer *sb)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_SEND, 42, true);
	fill(&f, true, 3, 0);
	ck_assert_int_eq(sp_frame_pack(&f, sb), SP_OK);
}

START_TEST(test_truncated_every_prefix)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	pack_send(&sb);
	for (size_t n = 0; n < sb.size; n++) {
		sp_frame g;
		uint8_t *copy = malloc(n ? n : 1);
		memcpy(copy, sb.data, n);
		int rc = sp_frame_decode(copy, n, &g);
		ck_assert_msg(rc == SP_ETRUNC || rc == SP_EMISSING, "prefix %zu gave %s", n, sp_errname(rc));
		free(copy);
	}
	msgpack_sbuffer_destroy(&sb);
}
END_TEST

START_TEST(test_trailing_bytes)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	pack_send(&sb);
	msgpack_sbuffer_write(&sb, "\xc0", 1);
	sp_frame g;
	ck_assert_int_eq(sp_frame_decode((uint8_t *)sb.data, sb.size, &g), SP_ETRAILING);
	msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* Builds raw msgpack with the packer for the malformed cases. */
/* Malformed frames, one binary fixture each (tests/fixtures/frames/, see its README), and
 * the code each must fail with. */
static const struct {
	const char *file;
	int code;
} malformed[] = {
	{"unknown_type", SP_EBADTYPE},
	{"record_at_top_level", SP_EBADTYPE}, /* SEND_ITEM outside SEND */
	{"t_not_first", SP_EMISSING},
	{"not_a_map", SP_EMALFORMED},
	{"missing_required_field", SP_EMISSING}, /* SENT without server_ts */
	{"uint_as_string", SP_EFIELDTYPE},       /* SENT server_ts "12" */
	{"negative_uint", SP_EFIELDTYPE},        /* SENT server_ts -1 */
	{"bin_too_short", SP_EFIELDLEN},         /* a 15-byte msg_id */
	{"unknown_field", SP_EUNKNOWNFIELD},     /* PING with from_user */
	{"duplicate_field", SP_EDUPFIELD},       /* HELLO with ver twice */
	{"array_longer_than_input", SP_ETRUNC},  /* ACK seqs claims 1000: refused before allocating */
	{"array_over_bound", SP_EFIELDLEN},      /* ACK with 1025 seqs */
	{"record_missing_field", SP_EMISSING},   /* SEND item without etype and ct */
	{"key_not_a_string", SP_EMALFORMED},
};

static size_t
read_fixture(const char *name, uint8_t *buf, size_t cap)
{
	char path[512];
	const char *root = getenv("SP_ROOT");
	snprintf(path, sizeof(path), "%s/tests/fixtures/frames/%s.bin", root ? root : ".", name);
	FILE *fp = fopen(path, "rb");
	ck_assert_msg(fp != NULL, "fixture %s missing", path);
	size_t n = fread(buf, 1, cap, fp);
	ck_assert_msg(!ferror(fp) && feof(fp), "fixture %s unreadable or too big", path);
	fclose(fp);
	return n;
}

START_TEST(test_malformed_cases)
{
	static uint8_t buf[4096];
	for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
		size_t n = read_fixture(malformed[i].file, buf, sizeof(buf));
		sp_frame g;
		int rc = sp_frame_decode(buf, n, &g);
		if (rc == SP_OK)
			sp_frame_fini(&g);
		ck_assert_msg(rc == malformed[i].code, "%s: got %s, want %s", malformed[i].file,
			      sp_strerror(rc), sp_strerror(malformed[i].code));
	}
}
END_TEST

START_TEST(test_size_limits)
{
	static uint8_t big[70000];
	sp_frame f;
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);

	/* A small-limit frame cannot carry 70,000 bytes ... */
	sp_frame_init(&f, SP_T_ERROR, 0, false);
	sp_frame_set_i64(&f, SP_F_CODE, SP_EINVAL);
	ck_assert_int_eq(sp_frame_pack(&f, &sb), SP_OK);
	sb.size = 0;
	sp_frame_init(&f, SP_T_SEND_GROUP, 0, false);
	fill(&f, false, 1, 0);
	sp_frame_set_bin(&f, SP_F_BODY, big, 65536);
	ck_assert_int_eq(sp_frame_pack(&f, &sb), SP_ETOOBIG);
	ck_assert_uint_eq(sb.size, 0);
	/* ... a media chunk can. */
	sp_frame_init(&f, SP_T_MEDIA_PUT, 0, false);
	fill(&f, false, 1, 0);
	sp_frame_set_bin(&f, SP_F_BYTES, big, sizeof(big));
	ck_assert_int_eq(sp_frame_pack(&f, &sb), SP_OK);
	sp_frame g;
	ck_assert_int_eq(sp_frame_decode((uint8_t *)sb.data, sb.size, &g), SP_OK);
	ck_assert_uint_eq(sp_frame_bin(&g, SP_F_BYTES).len, sizeof(big));
	sp_frame_fini(&g);

	/* Lowering the limits makes the same bytes too big to decode. */
	sp_frame_set_limits(1024, 4096);
	ck_assert_int_eq(sp_frame_decode((uint8_t *)sb.data, sb.size, &g), SP_ETOOBIG);
	sp_frame_set_limits(64 * 1024, 1024 * 1024);
	msgpack_sbuffer_destroy(&sb);
}
END_TEST

START_TEST(test_setters_reject_foreign_fields)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_PING, 0, false);
	ck_assert_int_eq(sp_frame_set_u64(&f, SP_F_DEVICE, 1), SP_EUNKNOWNFIELD);
	sp_frame_init(&f, SP_T_AUTH, 0, false);
	ck_assert_int_eq(sp_frame_set_bin(&f, SP_F_DEVICE, "x", 1), SP_EFIELDTYPE);
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	ck_assert_int_eq(sp_frame_pack(&f, &sb), SP_EMISSING);
	msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* The stream framer: frames fed a byte at a time come out whole and in order. */
START_TEST(test_framer_partial_input)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	for (unsigned i = 0; i < 5; i++) {
		sp_frame f;
		sp_frame_init(&f, SP_T_QUEUE_EMPTY, i, true);
		sp_frame_set_u64(&f, SP_F_SEQ, 1000 + i);
		ck_assert_int_eq(sp_frame_pack_prefixed(&f, &sb), SP_OK);
	}
	struct evbuffer *in = evbuffer_new();
	unsigned got = 0;
	for (size_t k = 0; k < sb.size; k++) {
		evbuffer_add(in, sb.data + k, 1);
		for (;;) {
			sp_frame g;
			size_t used;
			int rc = sp_framer_next(in, 1 << 20, &g, &used);
			if (rc == SP_EAGAIN)
				break;
			ck_assert_int_eq(rc, SP_OK);
			ck_assert(g.id == got);
			ck_assert(sp_frame_u64(&g, SP_F_SEQ) == 1000 + got);
			sp_frame_fini(&g);
			sp_framer_consume(in, used);
			got++;
		}
	}
	ck_assert_uint_eq(got, 5);
	ck_assert_uint_eq(evbuffer_get_length(in), 0);

	/* An announced length over the limit is refused before the body arrives. */
	evbuffer_add(in, "\x7f\xff\xff\xff", 4);
	sp_frame g;
	size_t used;
	ck_assert_int_eq(sp_framer_next(in, 1 << 20, &g, &used), SP_ETOOBIG);
	ck_assert_uint_eq(used, 0);
	evbuffer_free(in);

	/* sp_framer_write produces what sp_framer_next reads. */
	struct evbuffer *out = evbuffer_new();
	sp_frame f;
	sp_frame_init(&f, SP_T_PONG, 77, true);
	ck_assert_int_eq(sp_framer_write(out, &f), SP_OK);
	ck_assert_int_eq(sp_framer_next(out, 1 << 20, &g, &used), SP_OK);
	ck_assert_int_eq(g.type, SP_T_PONG);
	ck_assert(g.id == 77);
	sp_frame_fini(&g);
	evbuffer_free(out);
	msgpack_sbuffer_destroy(&sb);
}
END_TEST

int
main(void)
{
	for (size_t i = 0; i < sizeof(blob); i++)
		blob[i] = (uint8_t)(i * 31 + 7);
	Suite *s = suite_create("frame");
	TCase *tc = tcase_create("codec");
	tcase_add_test(tc, test_roundtrip_every_type);
	tcase_add_test(tc, test_truncated_every_prefix);
	tcase_add_test(tc, test_trailing_bytes);
	tcase_add_test(tc, test_malformed_cases);
	tcase_add_test(tc, test_size_limits);
	tcase_add_test(tc, test_setters_reject_foreign_fields);
	tcase_add_test(tc, test_framer_partial_input);
	suite_add_tcase(s, tc);
	return check_run(s);
}
