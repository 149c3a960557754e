/* Sender Keys (official v3 format): distribution, chain, signatures, ordering, limits,
 * rotation and record serialization. */
#include <check.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/internal.h"
#include "client/signal/sig_proto.h"
#include "client/signal/sig_senderkey.h"
#include "client/signal/sig_state.h"
#include "sp_error.h"
#include "check_run.h"

typedef struct {
	uint8_t *b;
	size_t n;
} blob;

static blob
skenc(sig_sk_record *own, const char *pt)
{
	blob m;

	ck_assert_int_eq(sig_sk_encrypt(own, (const uint8_t *)pt, strlen(pt), &m.b, &m.n), SP_OK);
	return m;
}

static int
skdec_rc(sig_sk_record *r, const blob *m, const char *want)
{
	uint8_t *pt;
	size_t n;
	int rc = sig_sk_decrypt(r, m->b, m->n, &pt, &n);

	if (rc == SP_OK) {
		ck_assert_uint_eq(n, strlen(want));
		ck_assert_mem_eq(pt, want, n);
		free(pt);
	}
	return rc;
}

static void
skdec(sig_sk_record *r, const blob *m, const char *want)
{
	ck_assert_int_eq(skdec_rc(r, m, want), SP_OK);
}

/* own + a receiver that processed own's distribution message */
static void
setup(sig_sk_record **own, sig_sk_record **rx)
{
	uint8_t *d;
	size_t n;

	*own = sig_sk_record_new();
	*rx = sig_sk_record_new();
	ck_assert_ptr_nonnull(*own);
	ck_assert_ptr_nonnull(*rx);
	ck_assert_int_eq(sig_sk_distribution(*own, &d, &n), SP_ESTATE);
	ck_assert_int_eq(sig_sk_rotate(*own, NULL), SP_OK);
	ck_assert_int_eq(sig_sk_distribution(*own, &d, &n), SP_OK);
	ck_assert_int_eq(sig_sk_process(*rx, d, n), SP_OK);
	ck_assert_int_eq(sig_sk_process(*rx, d, n), SP_OK); /* duplicate: ignored */
	ck_assert_uint_eq(sig_sk_record_count(*rx), 1);
	free(d);
}

START_TEST(test_round_trip_and_format)
{
	sig_sk_record *own, *rx;
	sig_sk_msg km;
	sig_skdm dm;
	uint8_t *d, id[16];
	size_t n;
	char buf[32];

	setup(&own, &rx);
	ck_assert_int_eq(sig_sk_distribution(own, &d, &n), SP_OK);
	ck_assert_int_eq(d[0], 0x33);
	ck_assert_int_eq(sig_proto_skdm_decode(d, n, &dm), SP_OK);
	ck_assert_int_eq(sig_sk_distribution_id(own, id), SP_OK);
	ck_assert_mem_eq(dm.distribution_id, id, 16);
	ck_assert_int_eq(id[6] >> 4, 4); /* a v4 UUID */
	ck_assert_uint_lt(dm.chain_id, 1u << 31);
	ck_assert_uint_eq(dm.iteration, 0);
	free(d);
	for (int i = 0; i < 100; i++) {
		blob m;

		snprintf(buf, sizeof(buf), "group %d", i);
		m = skenc(own, buf);
		ck_assert_int_eq(sig_proto_sk_msg_decode(m.b, m.n, &km), SP_OK);
		ck_assert_uint_eq(km.iteration, (uint32_t)i);
		ck_assert_uint_eq(km.chain_id, dm.chain_id);
		skdec(rx, &m, buf);
		free(m.b);
	}
	sig_sk_record_free(own);
	sig_sk_record_free(rx);
}
END_TEST

START_TEST(test_out_of_order_replay_tamper)
{
	sig_sk_record *own, *rx;
	blob m[10], t;
	char buf[32];
	static const int order[10] = { 9, 2, 0, 5, 1, 8, 3, 7, 4, 6 };

	setup(&own, &rx);
	for (int i = 0; i < 10; i++) {
		snprintf(buf, sizeof(buf), "m%d", i);
		m[i] = skenc(own, buf);
	}
	for (int k = 0; k < 10; k++) {
		snprintf(buf, sizeof(buf), "m%d", order[k]);
		skdec(rx, &m[order[k]], buf);
	}
	for (int i = 0; i < 10; i++) {
		snprintf(buf, sizeof(buf), "m%d", i);
		ck_assert_int_eq(skdec_rc(rx, &m[i], buf), SP_EREPLAY);
	}
	t = skenc(own, "signed");
	for (size_t i = 0; i < t.n; i++) {
		t.b[i] ^= 0x10;
		ck_assert_int_ne(skdec_rc(rx, &t, "signed"), SP_OK);
		t.b[i] ^= 0x10;
	}
	skdec(rx, &t, "signed");
	free(t.b);
	for (int i = 0; i < 10; i++)
		free(m[i].b);
	sig_sk_record_free(own);
	sig_sk_record_free(rx);
}
END_TEST

START_TEST(test_forward_limit)
{
	sig_sk_record *own, *rx;
	blob *m = calloc(2200, sizeof(*m));
	char buf[32];

	setup(&own, &rx);
	for (int i = 0; i < 2200; i++) {
		snprintf(buf, sizeof(buf), "n%d", i);
		m[i] = skenc(own, buf);
	}
	ck_assert_int_eq(skdec_rc(rx, &m[2001], "n2001"), SP_ELIMIT);
	skdec(rx, &m[2000], "n2000");
	skdec(rx, &m[0], "n0");
	skdec(rx, &m[2199], "n2199");
	ck_assert_uint_le(rx->states[0].nskipped, SIG_SK_MAX_KEYS);
	/* the oldest skipped keys were dropped to stay within SIG_SK_MAX_KEYS */
	ck_assert_int_eq(skdec_rc(rx, &m[1], "n1"), SP_EREPLAY);
	skdec(rx, &m[2198], "n2198");
	for (int i = 0; i < 2200; i++)
		free(m[i].b);
	free(m);
	sig_sk_record_free(own);
	sig_sk_record_free(rx);
}
END_TEST

START_TEST(test_rotation)
{
	sig_sk_record *own, *rx;
	blob old[SIG_SK_MAX_STATES + 1];
	uint8_t *d, id0[16], id1[16], newid[16];
	size_t n;
	char buf[32];

	setup(&own, &rx);
	ck_assert_int_eq(sig_sk_distribution_id(own, id0), SP_OK);
	for (int r = 0; r <= SIG_SK_MAX_STATES; r++) {
		snprintf(buf, sizeof(buf), "epoch%d", r);
		old[r] = skenc(own, buf);
		ck_assert_int_eq(sig_sk_rotate(own, NULL), SP_OK);
		ck_assert_int_eq(sig_sk_distribution(own, &d, &n), SP_OK);
		ck_assert_int_eq(sig_sk_process(rx, d, n), SP_OK);
		free(d);
	}
	ck_assert_int_eq(sig_sk_distribution_id(own, id1), SP_OK);
	ck_assert_mem_eq(id0, id1, 16); /* rotation keeps the distribution id unless told */
	ck_assert_uint_eq(sig_sk_record_count(own), SIG_SK_MAX_STATES);
	ck_assert_uint_eq(sig_sk_record_count(rx), SIG_SK_MAX_STATES);
	/* the oldest two chains are gone, the newer in-flight messages still decrypt */
	ck_assert_int_eq(skdec_rc(rx, &old[0], "epoch0"), SP_ENOTFOUND);
	ck_assert_int_eq(skdec_rc(rx, &old[1], "epoch1"), SP_ENOTFOUND);
	for (int r = 2; r <= SIG_SK_MAX_STATES; r++) {
		snprintf(buf, sizeof(buf), "epoch%d", r);
		skdec(rx, &old[r], buf);
	}
	for (int r = 0; r <= SIG_SK_MAX_STATES; r++)
		free(old[r].b);
	/* a new distribution id */
	memset(newid, 0x42, sizeof(newid));
	ck_assert_int_eq(sig_sk_rotate(own, newid), SP_OK);
	ck_assert_int_eq(sig_sk_distribution(own, &d, &n), SP_OK);
	ck_assert_int_eq(sig_sk_process(rx, d, n), SP_OK);
	free(d);
	old[0] = skenc(own, "new id");
	skdec(rx, &old[0], "new id");
	free(old[0].b);
	sig_sk_record_free(own);
	sig_sk_record_free(rx);
}
END_TEST

START_TEST(test_replaced_signing_key)
{
	sig_sk_record *own, *rx, *evil;
	sig_skdm dm;
	sig_wbuf w;
	uint8_t *d, *forged;
	size_t n, fn;
	blob m;

	setup(&own, &rx);
	ck_assert_int_eq(sig_sk_distribution(own, &d, &n), SP_OK);
	ck_assert_int_eq(sig_proto_skdm_decode(d, n, &dm), SP_OK);
	free(d);
	/* same chain id, another signing key: replaces the state */
	evil = sig_sk_record_new();
	ck_assert_int_eq(sig_sk_rotate(evil, dm.distribution_id), SP_OK);
	evil->states[0].chain_id = dm.chain_id;
	ck_assert_int_eq(sig_sk_distribution(evil, &forged, &fn), SP_OK);
	ck_assert_int_eq(sig_sk_process(rx, forged, fn), SP_OK);
	free(forged);
	ck_assert_uint_eq(sig_sk_record_count(rx), 1);
	m = skenc(own, "real");
	ck_assert_int_eq(skdec_rc(rx, &m, "real"), SP_EBADSIG);
	free(m.b);
	m = skenc(evil, "other");
	skdec(rx, &m, "other");
	free(m.b);
	/* a malformed SKDM changes nothing */
	sig_wbuf_init(&w, 0);
	dm.signing_key[0] = 0x06;
	sig_proto_skdm_encode(&w, &dm);
	ck_assert_int_eq(sig_wbuf_finish(&w, &d, &n), SP_OK);
	ck_assert_int_eq(sig_sk_process(rx, d, n), SP_EMALFORMED);
	free(d);
	sig_sk_record_free(evil);
	sig_sk_record_free(own);
	sig_sk_record_free(rx);
}
END_TEST

START_TEST(test_record_blob)
{
	sig_sk_record *own, *rx, *own2, *rx2;
	uint8_t *b1, *b2;
	size_t n1, n2;
	blob held, m;

	setup(&own, &rx);
	held = skenc(own, "held");
	m = skenc(own, "now");
	skdec(rx, &m, "now");
	free(m.b);
	ck_assert_int_eq(sig_state_sk_serialize(own, &b1, &n1), SP_OK);
	ck_assert_int_eq(sig_state_sk_deserialize(&own2, b1, n1), SP_OK);
	for (size_t i = 0; i < n1; i++) {
		sig_sk_record *t = NULL;

		ck_assert_int_ne(sig_state_sk_deserialize(&t, b1, i), SP_OK);
		ck_assert_ptr_null(t);
	}
	free(b1);
	ck_assert_int_eq(sig_state_sk_serialize(rx, &b2, &n2), SP_OK);
	ck_assert_int_eq(sig_state_sk_deserialize(&rx2, b2, n2), SP_OK);
	free(b2);
	skdec(rx2, &held, "held");
	free(held.b);
	m = skenc(own2, "after reload");
	skdec(rx2, &m, "after reload");
	free(m.b);
	sig_sk_record_free(own);
	sig_sk_record_free(rx);
	sig_sk_record_free(own2);
	sig_sk_record_free(rx2);
}
END_TEST

START_TEST(test_store_groups)
{
	sig_store *a, *b;
	uint8_t *d, *d2, *m, *pt;
	size_t n, n2, mn, ptlen;

	ck_assert_int_eq(sig_store_generate(&a, 1, 1, 0), SP_OK);
	ck_assert_int_eq(sig_store_generate(&b, 2, 1, 0), SP_OK);
	ck_assert_int_eq(sig_store_sk_encrypt(a, "g", (const uint8_t *)"x", 1, &m, &mn), SP_ENOTFOUND);
	ck_assert_int_eq(sig_store_sk_distribution(a, "g", 0, &d, &n), SP_OK);
	ck_assert_int_eq(sig_store_sk_distribution(a, "g", 0, &d2, &n2), SP_OK);
	ck_assert_uint_eq(n, n2);
	ck_assert_mem_eq(d, d2, n); /* no rotation without asking */
	free(d2);
	ck_assert_int_eq(sig_store_sk_process(b, "g", "alice", d, n), SP_OK);
	free(d);
	ck_assert_int_eq(sig_store_sk_encrypt(a, "g", (const uint8_t *)"hello group", 11, &m, &mn), SP_OK);
	ck_assert_int_eq(sig_store_sk_decrypt(b, "other", "alice", m, mn, &pt, &ptlen), SP_ENOTFOUND);
	ck_assert_int_eq(sig_store_sk_decrypt(b, "g", "mallory", m, mn, &pt, &ptlen), SP_ENOTFOUND);
	ck_assert_int_eq(sig_store_sk_decrypt(b, "g", "alice", m, mn, &pt, &ptlen), SP_OK);
	ck_assert_mem_eq(pt, "hello group", 11);
	free(pt);
	free(m);
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("signal_senderkey");
	TCase *tc = tcase_create("senderkey");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_round_trip_and_format);
	tcase_add_test(tc, test_out_of_order_replay_tamper);
	tcase_add_test(tc, test_forward_limit);
	tcase_add_test(tc, test_rotation);
	tcase_add_test(tc, test_replaced_signing_key);
	tcase_add_test(tc, test_record_blob);
	tcase_add_test(tc, test_store_groups);
	suite_add_tcase(s, tc);
	return check_run(s);
}
