/* The client's E2E plaintext container: round trips and hostile input; backoff bounds. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "client/cl_internal.h"
#include "sp_error.h"
#include "check_run.h"

START_TEST(test_text_round_trip)
{
	cl_env e = {.kind = CL_K_TEXT, .seq = 42, .to = 0xfedcba9876543210ULL, .phone = "+15550001",
		    .phone_len = 9, .text = "héllo", .text_len = strlen("héllo")};
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(cl_env_encode(&e, &buf, &len), SP_OK);
	cl_env d;
	ck_assert_int_eq(cl_env_decode(buf, len, &d), SP_OK);
	ck_assert_uint_eq(d.kind, CL_K_TEXT);
	ck_assert_uint_eq(d.seq, 42);
	ck_assert_uint_eq(d.to, 0xfedcba9876543210ULL);
	ck_assert_uint_eq(d.group, 0);
	ck_assert_uint_eq(d.text_len, e.text_len);
	ck_assert(memcmp(d.text, e.text, e.text_len) == 0);
	ck_assert(d.phone_len == 9 && memcmp(d.phone, "+15550001", 9) == 0);
	/* Every truncation is refused, never read past the end. */
	for (size_t k = 0; k < len; k++)
		ck_assert_int_ne(cl_env_decode(buf, k, &d), SP_OK);
	free(buf);
}
END_TEST

START_TEST(test_media_and_skdm_round_trip)
{
	cl_env e = {.kind = CL_K_MEDIA, .seq = 7, .group = 99, .gname = "friends", .gname_len = 7};
	memset(e.media.blob_id, 1, 16);
	memset(e.media.key, 2, 32);
	memset(e.media.digest, 3, 32);
	e.media.size = 1234;
	e.media.plain_size = 1100;
	strcpy(e.media.mime, "image/png");
	strcpy(e.media.name, "cat.png");
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(cl_env_encode(&e, &buf, &len), SP_OK);
	cl_env d;
	ck_assert_int_eq(cl_env_decode(buf, len, &d), SP_OK);
	ck_assert_uint_eq(d.kind, CL_K_MEDIA);
	ck_assert_uint_eq(d.group, 99);
	ck_assert(memcmp(&d.media, &e.media, sizeof(e.media)) == 0);
	ck_assert(d.gname_len == 7 && memcmp(d.gname, "friends", 7) == 0);
	free(buf);

	uint8_t skdm[200];
	memset(skdm, 0x33, sizeof(skdm));
	cl_env s = {.kind = CL_K_SKDM, .group = 5, .skdm = skdm, .skdm_len = sizeof(skdm)};
	ck_assert_int_eq(cl_env_encode(&s, &buf, &len), SP_OK);
	ck_assert_int_eq(cl_env_decode(buf, len, &d), SP_OK);
	ck_assert(d.kind == CL_K_SKDM && d.skdm_len == sizeof(skdm) && memcmp(d.skdm, skdm, sizeof(skdm)) == 0);
	free(buf);
}
END_TEST

/* Packs a map from (key, kind, value) triples: kind 'u' uint, 's' str, 'b' bin. */
static size_t
pack(uint8_t *out, size_t cap, int n, const char *keys[], const char *kinds, const void *vals[], size_t lens[])
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, (size_t)n);
	for (int i = 0; i < n; i++) {
		msgpack_pack_str_with_body(&pk, keys[i], strlen(keys[i]));
		if (kinds[i] == 'u')
			msgpack_pack_uint64(&pk, (uint64_t)(uintptr_t)vals[i]);
		else if (kinds[i] == 's')
			msgpack_pack_str_with_body(&pk, vals[i], lens[i]);
		else
			msgpack_pack_bin_with_body(&pk, vals[i], lens[i]);
	}
	size_t n_out = sb.size < cap ? sb.size : cap;
	memcpy(out, sb.data, n_out);
	msgpack_sbuffer_destroy(&sb);
	return n_out;
}

START_TEST(test_hostile_input)
{
	cl_env d;
	uint8_t buf[70000];
	static char big[40000];
	memset(big, 'a', sizeof(big));
	const char *keys[] = {"v", "k", "s", "t"};
	const void *vals[4] = {(void *)1, (void *)CL_K_TEXT, (void *)1, "hi"};
	size_t lens[4] = {0, 0, 0, 2};
	size_t n = pack(buf, sizeof(buf), 4, keys, "uuus", vals, lens);
	ck_assert_int_eq(cl_env_decode(buf, n, &d), SP_OK);
	/* Wrong version, wrong types, missing body, oversized text, unknown kind. */
	vals[0] = (void *)2;
	n = pack(buf, sizeof(buf), 4, keys, "uuus", vals, lens);
	ck_assert_int_eq(cl_env_decode(buf, n, &d), SP_EMALFORMED);
	vals[0] = (void *)1;
	n = pack(buf, sizeof(buf), 4, keys, "uuub", vals, lens);
	ck_assert_int_ne(cl_env_decode(buf, n, &d), SP_OK);
	n = pack(buf, sizeof(buf), 3, keys, "uuu", vals, lens);
	ck_assert_int_eq(cl_env_decode(buf, n, &d), SP_EMALFORMED);
	vals[3] = big;
	lens[3] = sizeof(big);
	n = pack(buf, sizeof(buf), 4, keys, "uuus", vals, lens);
	ck_assert_int_eq(cl_env_decode(buf, n, &d), SP_ETOOBIG);
	vals[1] = (void *)77;
	vals[3] = "x";
	lens[3] = 1;
	n = pack(buf, sizeof(buf), 4, keys, "uuus", vals, lens);
	ck_assert_int_eq(cl_env_decode(buf, n, &d), SP_EMALFORMED);
	/* A count far beyond the input is refused before anything is allocated. */
	uint8_t huge[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v', 0x01};
	ck_assert_int_eq(cl_env_decode(huge, sizeof(huge), &d), SP_ETRUNC);
	uint8_t deep[] = {0x81, 0xa1, 'x', 0x91, 0x91, 0x91, 0x91, 0x91, 0x01};
	ck_assert_int_eq(cl_env_decode(deep, sizeof(deep), &d), SP_EMALFORMED);
	/* Not a map; trailing bytes; random garbage never crashes. */
	uint8_t arr[] = {0x91, 0x01};
	ck_assert_int_ne(cl_env_decode(arr, sizeof(arr), &d), SP_OK);
	vals[1] = (void *)CL_K_TEXT;
	n = pack(buf, sizeof(buf), 4, keys, "uuus", vals, lens);
	buf[n] = 0xc0;
	ck_assert_int_ne(cl_env_decode(buf, n + 1, &d), SP_OK);
	for (int i = 0; i < 2000; i++) {
		size_t len = 1 + randombytes_uniform(200);
		randombytes_buf(buf, len);
		buf[0] = (uint8_t)(0x80 | (buf[0] & 0x0f)); /* usually a fixmap */
		cl_env_decode(buf, len, &d);
	}
}
END_TEST

START_TEST(test_backoff_full_jitter)
{
	for (unsigned a = 0; a < 20; a++) {
		uint64_t ceil = 100ull << (a < 10 ? a : 10);
		if (ceil > 5000)
			ceil = 5000;
		uint64_t max = 0;
		for (int i = 0; i < 500; i++) {
			uint64_t d = cl_backoff_ms(a, 100, 5000);
			ck_assert_uint_le(d, ceil);
			if (d > max)
				max = d;
		}
		/* Full jitter spreads over the whole window, not just its top. */
		ck_assert_uint_gt(max, ceil / 2);
	}
	ck_assert_uint_le(cl_backoff_ms(1000, 200, 10000), 10000);
}
END_TEST

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	Suite *s = suite_create("client_env");
	TCase *tc = tcase_create("env");
	tcase_add_test(tc, test_text_round_trip);
	tcase_add_test(tc, test_media_and_skdm_round_trip);
	tcase_add_test(tc, test_hostile_input);
	tcase_add_test(tc, test_backoff_full_jitter);
	suite_add_tcase(s, tc);
	return check_run(s);
}
