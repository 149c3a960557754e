/* Group envelopes of the client: the key retry request (CL_K_SK_RETRY) round trip and
 * hostile forms of it, and the distribution envelope it is answered with. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "client/cl_internal.h"
#include "sp_error.h"
#include "check_run.h"

START_TEST(test_retry_round_trip)
{
	uint8_t id[16];
	for (int i = 0; i < 16; i++)
		id[i] = (uint8_t)(0xa0 + i);
	cl_env e = {.kind = CL_K_SK_RETRY, .group = 0xfedcba9876543210ULL, .retry_msg_id = id};
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(cl_env_encode(&e, &buf, &len), SP_OK);
	cl_env d;
	ck_assert_int_eq(cl_env_decode(buf, len, &d), SP_OK);
	ck_assert_uint_eq(d.kind, CL_K_SK_RETRY);
	ck_assert_uint_eq(d.group, 0xfedcba9876543210ULL);
	ck_assert_ptr_nonnull(d.retry_msg_id);
	ck_assert(memcmp(d.retry_msg_id, id, 16) == 0);
	ck_assert_ptr_null(d.skdm);
	/* Every truncation is refused, never read past the end. */
	for (size_t k = 0; k < len; k++)
		ck_assert_int_ne(cl_env_decode(buf, k, &d), SP_OK);
	free(buf);
}
END_TEST

/* A map {v:1, k:kind, s:0} plus the given optional parts. */
static void
pack_retry(msgpack_sbuffer *sb, unsigned kind, bool with_group, const uint8_t *rm, size_t rm_len, bool rm_str)
{
	msgpack_packer pk;
	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 3 + with_group + (rm != NULL));
	msgpack_pack_str(&pk, 1);
	msgpack_pack_str_body(&pk, "v", 1);
	msgpack_pack_uint64(&pk, 1);
	msgpack_pack_str(&pk, 1);
	msgpack_pack_str_body(&pk, "k", 1);
	msgpack_pack_uint64(&pk, kind);
	msgpack_pack_str(&pk, 1);
	msgpack_pack_str_body(&pk, "s", 1);
	msgpack_pack_uint64(&pk, 0);
	if (with_group) {
		msgpack_pack_str(&pk, 1);
		msgpack_pack_str_body(&pk, "g", 1);
		msgpack_pack_uint64(&pk, 77);
	}
	if (rm) {
		msgpack_pack_str(&pk, 2);
		msgpack_pack_str_body(&pk, "rm", 2);
		if (rm_str) {
			msgpack_pack_str(&pk, rm_len);
			msgpack_pack_str_body(&pk, rm, rm_len);
		} else {
			msgpack_pack_bin(&pk, rm_len);
			msgpack_pack_bin_body(&pk, rm, rm_len);
		}
	}
}

START_TEST(test_retry_hostile)
{
	uint8_t id[32];
	memset(id, 0x41, sizeof(id));
	msgpack_sbuffer sb;
	cl_env d;
	/* The well-formed one decodes... */
	pack_retry(&sb, CL_K_SK_RETRY, true, id, 16, false);
	ck_assert_int_eq(cl_env_decode((const uint8_t *)sb.data, sb.size, &d), SP_OK);
	msgpack_sbuffer_destroy(&sb);
	/* ...and each of these is refused. */
	pack_retry(&sb, CL_K_SK_RETRY, true, NULL, 0, false); /* no message id */
	ck_assert_int_eq(cl_env_decode((const uint8_t *)sb.data, sb.size, &d), SP_EMALFORMED);
	msgpack_sbuffer_destroy(&sb);
	pack_retry(&sb, CL_K_SK_RETRY, false, id, 16, false); /* no group */
	ck_assert_int_eq(cl_env_decode((const uint8_t *)sb.data, sb.size, &d), SP_EMALFORMED);
	msgpack_sbuffer_destroy(&sb);
	pack_retry(&sb, CL_K_SK_RETRY, true, id, 15, false); /* short id */
	ck_assert_int_ne(cl_env_decode((const uint8_t *)sb.data, sb.size, &d), SP_OK);
	msgpack_sbuffer_destroy(&sb);
	pack_retry(&sb, CL_K_SK_RETRY, true, id, 32, false); /* long id */
	ck_assert_int_ne(cl_env_decode((const uint8_t *)sb.data, sb.size, &d), SP_OK);
	msgpack_sbuffer_destroy(&sb);
	pack_retry(&sb, CL_K_SK_RETRY, true, id, 16, true); /* a string, not bytes */
	ck_assert_int_ne(cl_env_decode((const uint8_t *)sb.data, sb.size, &d), SP_OK);
	msgpack_sbuffer_destroy(&sb);
	pack_retry(&sb, 5, true, id, 16, false); /* an unknown kind */
	ck_assert_int_eq(cl_env_decode((const uint8_t *)sb.data, sb.size, &d), SP_EMALFORMED);
	msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* The answer: a distribution with the group's name, as the retry answer builds it. */
START_TEST(test_answer_round_trip)
{
	uint8_t skdm[300];
	memset(skdm, 0x5a, sizeof(skdm));
	cl_env e = {.kind = CL_K_SKDM, .group = 77, .phone = "+15550401", .phone_len = 9, .gname = "trio",
		    .gname_len = 4, .skdm = skdm, .skdm_len = sizeof(skdm)};
	uint8_t *buf;
	size_t len;
	ck_assert_int_eq(cl_env_encode(&e, &buf, &len), SP_OK);
	cl_env d;
	ck_assert_int_eq(cl_env_decode(buf, len, &d), SP_OK);
	ck_assert_uint_eq(d.kind, CL_K_SKDM);
	ck_assert_uint_eq(d.group, 77);
	ck_assert(d.skdm_len == sizeof(skdm) && memcmp(d.skdm, skdm, sizeof(skdm)) == 0);
	ck_assert(d.gname_len == 4 && memcmp(d.gname, "trio", 4) == 0);
	ck_assert_ptr_null(d.retry_msg_id);
	free(buf);
}
END_TEST

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	Suite *s = suite_create("client_group");
	TCase *tc = tcase_create("group");
	tcase_add_test(tc, test_retry_round_trip);
	tcase_add_test(tc, test_retry_hostile);
	tcase_add_test(tc, test_answer_round_trip);
	suite_add_tcase(s, tc);
	return check_run(s);
}
