/* Double Ratchet sessions between two C stores: round trips, ordering, limits, replay,
 * tampering, identity changes, state serialization and malformed input. */
#include <check.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/internal.h"
#include "client/signal/sig_proto.h"
#include "client/signal/sig_state.h"
#include "sp_error.h"
#include "check_run.h"

typedef struct {
	uint8_t *b;
	size_t n;
	int type;
} msg;

static sig_store *
mk(uint32_t reg)
{
	sig_store *s = NULL;

	ck_assert_int_eq(sig_store_generate(&s, reg, 1, 5), SP_OK);
	return s;
}

static msg
enc(sig_store *from, const char *to, sig_store *bundle_of, const char *pt)
{
	sig_bundle b;
	msg m;

	if (bundle_of != NULL)
		ck_assert_int_eq(sig_store_bundle(bundle_of, &b, 1), SP_OK);
	ck_assert_int_eq(sig_store_encrypt(from, to, bundle_of ? &b : NULL, (const uint8_t *)pt,
	                     strlen(pt), &m.b, &m.n, &m.type),
	    SP_OK);
	return m;
}

static int
dec_rc(sig_store *to, const char *from, const msg *m, const char *want)
{
	uint8_t *pt;
	size_t n;
	int rc = sig_store_decrypt(to, from, m->type, m->b, m->n, &pt, &n);

	if (rc == SP_OK) {
		ck_assert_uint_eq(n, strlen(want));
		ck_assert_mem_eq(pt, want, n);
		free(pt);
	}
	return rc;
}

static void
dec(sig_store *to, const char *from, const msg *m, const char *want)
{
	ck_assert_int_eq(dec_rc(to, from, m, want), SP_OK);
}

static void
mfree(msg *m)
{
	free(m->b);
	m->b = NULL;
}

/* Blob of the whole store, for "unchanged" checks. */
static uint8_t *
snap(const sig_store *s, size_t *n)
{
	uint8_t *b;

	ck_assert_int_eq(sig_store_serialize(s, &b, n), SP_OK);
	return b;
}

static void
assert_same(const sig_store *s, const uint8_t *b, size_t n)
{
	size_t n2;
	uint8_t *b2 = snap(s, &n2);

	ck_assert_uint_eq(n, n2);
	ck_assert_mem_eq(b, b2, n);
	free(b2);
}

/* alice -> bob first message, bob replies: both sides established. */
static void
establish(sig_store **a, sig_store **b)
{
	msg m;

	*a = mk(100);
	*b = mk(200);
	m = enc(*a, "bob", *b, "hi");
	ck_assert_int_eq(m.type, SIG_MSG_PREKEY);
	dec(*b, "alice", &m, "hi");
	mfree(&m);
	m = enc(*b, "alice", NULL, "hey");
	ck_assert_int_eq(m.type, SIG_MSG_WHISPER);
	dec(*a, "bob", &m, "hey");
	mfree(&m);
}

START_TEST(test_round_trip)
{
	sig_store *a, *b;
	char buf[64];
	msg m;

	establish(&a, &b);
	for (int i = 0; i < 100; i++) {
		snprintf(buf, sizeof(buf), "a%d", i);
		m = enc(a, "bob", NULL, buf);
		ck_assert_int_eq(m.type, SIG_MSG_WHISPER);
		dec(b, "alice", &m, buf);
		mfree(&m);
	}
	for (int i = 0; i < 50; i++) {
		snprintf(buf, sizeof(buf), "b%d", i);
		m = enc(b, "alice", NULL, buf);
		dec(a, "bob", &m, buf);
		mfree(&m);
		m = enc(a, "bob", NULL, buf);
		dec(b, "alice", &m, buf);
		mfree(&m);
	}
	m = enc(a, "bob", NULL, "");
	dec(b, "alice", &m, "");
	mfree(&m);
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

START_TEST(test_no_one_time_prekey)
{
	sig_store *a = mk(1), *b = mk(2);
	sig_bundle bb;
	msg m;
	sig_prekey_msg pm;

	ck_assert_int_eq(sig_store_bundle(b, &bb, 0), SP_OK);
	ck_assert(!bb.has_prekey);
	ck_assert_int_eq(sig_store_encrypt(a, "bob", &bb, (const uint8_t *)"x", 1, &m.b, &m.n, &m.type), SP_OK);
	ck_assert_int_eq(sig_proto_prekey_decode(m.b, m.n, &pm), SP_OK);
	ck_assert(!pm.has_pre_key_id);
	dec(b, "alice", &m, "x");
	mfree(&m);
	ck_assert_uint_eq(sig_store_prekeys_available(b), 5);
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

START_TEST(test_pending_prekey_messages)
{
	sig_store *a = mk(1), *b = mk(2);
	msg m1, m2, m3;

	m1 = enc(a, "bob", b, "one");
	m2 = enc(a, "bob", NULL, "two");
	ck_assert_int_eq(m2.type, SIG_MSG_PREKEY);
	dec(b, "alice", &m2, "two"); /* arrives first */
	dec(b, "alice", &m1, "one"); /* same base key: the same session, no second prekey use */
	ck_assert_int_eq(dec_rc(b, "alice", &m1, "one"), SP_EREPLAY);
	m3 = enc(b, "alice", NULL, "three");
	dec(a, "bob", &m3, "three");
	mfree(&m1);
	mfree(&m2);
	mfree(&m3);
	m1 = enc(a, "bob", NULL, "four");
	ck_assert_int_eq(m1.type, SIG_MSG_WHISPER);
	dec(b, "alice", &m1, "four");
	mfree(&m1);
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

START_TEST(test_out_of_order)
{
	sig_store *a, *b;
	msg x[6], y[3], r;
	char buf[16];
	static const int order[6] = { 3, 0, 5, 1, 4, 2 };

	establish(&a, &b);
	for (int i = 0; i < 6; i++) {
		snprintf(buf, sizeof(buf), "x%d", i);
		x[i] = enc(a, "bob", NULL, buf);
	}
	for (int k = 0; k < 6; k++) {
		snprintf(buf, sizeof(buf), "x%d", order[k]);
		dec(b, "alice", &x[order[k]], buf);
	}
	/* across chains: y on chain 1, then a new chain after a reply */
	for (int i = 0; i < 3; i++) {
		snprintf(buf, sizeof(buf), "y%d", i);
		y[i] = enc(a, "bob", NULL, buf);
	}
	dec(b, "alice", &y[0], "y0");
	r = enc(b, "alice", NULL, "turn");
	dec(a, "bob", &r, "turn");
	mfree(&r);
	r = enc(a, "bob", NULL, "z");
	dec(b, "alice", &r, "z");   /* new chain; y1, y2 become skipped keys */
	dec(b, "alice", &y[2], "y2");
	dec(b, "alice", &y[1], "y1");
	mfree(&r);
	for (int i = 0; i < 6; i++)
		mfree(&x[i]);
	for (int i = 0; i < 3; i++)
		mfree(&y[i]);
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

START_TEST(test_skip_limit)
{
	sig_store *a, *b;
	msg *m = calloc(2002, sizeof(*m));
	uint8_t *s0;
	size_t n0;
	char buf[16];

	ck_assert_ptr_nonnull(m);
	establish(&a, &b);
	for (int i = 0; i < 2002; i++) {
		snprintf(buf, sizeof(buf), "m%d", i);
		m[i] = enc(a, "bob", NULL, buf);
	}
	s0 = snap(b, &n0);
	ck_assert_int_eq(dec_rc(b, "alice", &m[2001], "m2001"), SP_ELIMIT);
	ck_assert_int_eq(dec_rc(b, "alice", &m[2000], "m2000"), SP_ELIMIT);
	assert_same(b, s0, n0);
	free(s0);
	dec(b, "alice", &m[1999], "m1999"); /* 1999 keys skipped */
	dec(b, "alice", &m[0], "m0");
	dec(b, "alice", &m[2001], "m2001");
	dec(b, "alice", &m[2000], "m2000");
	dec(b, "alice", &m[1000], "m1000");
	for (int i = 0; i < 2002; i++)
		mfree(&m[i]);
	free(m);
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

/* Receiving chains are capped at SIG_MAX_RECV_CHAINS: a skipped key of an evicted chain is gone. */
static void
check_bounds(const sig_session *ss)
{
	uint32_t total = 0;

	ck_assert_ptr_nonnull(ss);
	ck_assert_uint_le(ss->nchains, SIG_MAX_RECV_CHAINS);
	for (uint32_t i = 0; i < ss->nchains; i++) {
		ck_assert_uint_le(ss->chains[i].nskipped, SIG_MAX_SKIP);
		total += ss->chains[i].nskipped;
	}
	ck_assert_uint_le(total, SIG_MAX_SKIPPED_TOTAL);
}

/* Receiving chains are capped at SIG_MAX_RECV_CHAINS: a skipped key of an evicted chain is gone. */
START_TEST(test_chain_limit)
{
	sig_store *a, *b;
	msg lost, r;

	establish(&a, &b);
	lost = enc(a, "bob", NULL, "lost");
	for (int turn = 0; turn < SIG_MAX_RECV_CHAINS + 2; turn++) {
		r = enc(a, "bob", NULL, "ping");
		dec(b, "alice", &r, "ping");
		mfree(&r);
		r = enc(b, "alice", NULL, "pong");
		dec(a, "bob", &r, "pong");
		mfree(&r);
	}
	ck_assert_uint_eq(sig_store_current_session(b, "alice")->nchains, SIG_MAX_RECV_CHAINS);
	ck_assert_int_ne(dec_rc(b, "alice", &lost, "lost"), SP_OK);
	mfree(&lost);
	check_bounds(sig_store_current_session(b, "alice"));
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

/* Many chains, each leaving 1500 skipped keys behind: the session total stays bounded
 * and the newest skipped keys still work. */
START_TEST(test_session_bounds)
{
	sig_store *a, *b;
	msg m, *skip = calloc(1500, sizeof(*skip));
	char buf[16];

	ck_assert_ptr_nonnull(skip);
	establish(&a, &b);
	for (int turn = 0; turn < 5; turn++) {
		for (int i = 0; i < 1500; i++) {
			snprintf(buf, sizeof(buf), "s%d", i);
			skip[i] = enc(a, "bob", NULL, buf);
		}
		dec(b, "alice", &skip[1499], "s1499");
		check_bounds(sig_store_current_session(b, "alice"));
		if (turn < 4) {
			for (int i = 0; i < 1500; i++)
				mfree(&skip[i]);
			m = enc(b, "alice", NULL, "turn");
			dec(a, "bob", &m, "turn");
			mfree(&m);
		}
	}
	dec(b, "alice", &skip[3], "s3");
	dec(b, "alice", &skip[1498], "s1498");
	for (int i = 0; i < 1500; i++)
		mfree(&skip[i]);
	free(skip);
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

START_TEST(test_replay_rejected)
{
	sig_store *a, *b;
	msg m, m2;

	establish(&a, &b);
	m = enc(a, "bob", NULL, "once");
	dec(b, "alice", &m, "once");
	ck_assert_int_eq(dec_rc(b, "alice", &m, "once"), SP_EREPLAY);
	m2 = enc(a, "bob", NULL, "twice");
	dec(b, "alice", &m2, "twice");
	ck_assert_int_eq(dec_rc(b, "alice", &m, "once"), SP_EREPLAY);
	ck_assert_int_eq(dec_rc(b, "alice", &m2, "twice"), SP_EREPLAY);
	mfree(&m);
	mfree(&m2);
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

START_TEST(test_tamper_rejected)
{
	sig_store *a, *b;
	msg m, t;
	uint8_t *s0;
	size_t n0;

	establish(&a, &b);
	m = enc(a, "bob", NULL, "integrity");
	s0 = snap(b, &n0);
	for (size_t i = 0; i < m.n; i++) {
		for (int bit = 0; bit < 8; bit += 3) {
			t.b = malloc(m.n);
			memcpy(t.b, m.b, m.n);
			t.b[i] ^= (uint8_t)(1u << bit);
			t.n = m.n;
			t.type = m.type;
			ck_assert_int_ne(dec_rc(b, "alice", &t, "integrity"), SP_OK);
			mfree(&t);
		}
	}
	t.n = m.n - 1;
	t.b = m.b;
	t.type = m.type;
	ck_assert_int_ne(dec_rc(b, "alice", &t, "integrity"), SP_OK);
	assert_same(b, s0, n0);
	free(s0);
	dec(b, "alice", &m, "integrity");
	mfree(&m);
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

START_TEST(test_identity_change)
{
	sig_store *a, *b, *mallory = mk(300);
	sig_bundle mb;
	msg m, r;
	uint8_t *s0, id[33];
	size_t n0;

	establish(&a, &b);
	/* mallory, with her own identity, talks to bob under alice's name */
	m = enc(mallory, "bob", b, "it's me, alice");
	s0 = snap(b, &n0);
	ck_assert_int_eq(dec_rc(b, "alice", &m, "it's me, alice"), SP_EIDENTITY);
	assert_same(b, s0, n0);
	free(s0);
	/* bob starting a session to a bundle with a different identity for alice */
	ck_assert_int_eq(sig_store_bundle(mallory, &mb, 1), SP_OK);
	ck_assert_int_eq(sig_store_encrypt(b, "alice", &mb, (const uint8_t *)"x", 1, &r.b, &r.n, &r.type), SP_EIDENTITY);
	/* the old session goes on */
	r = enc(a, "bob", NULL, "still alice");
	dec(b, "alice", &r, "still alice");
	mfree(&r);
	/* once the user accepts the new key, the message decrypts */
	ck_assert_int_eq(sig_store_trust_identity(b, "alice", sig_store_identity(mallory)->pub), SP_OK);
	ck_assert_int_eq(sig_store_peer_identity(b, "alice", id), SP_OK);
	ck_assert_mem_eq(id, sig_store_identity(mallory)->pub, 33);
	dec(b, "alice", &m, "it's me, alice");
	mfree(&m);
	sig_store_free(a);
	sig_store_free(b);
	sig_store_free(mallory);
}
END_TEST

START_TEST(test_bad_signature_and_prekey_reuse)
{
	sig_store *a = mk(1), *b = mk(2), *c = mk(3);
	sig_bundle bb;
	msg m, m2;

	ck_assert_int_eq(sig_store_bundle(b, &bb, 1), SP_OK);
	bb.signed_prekey_sig[3] ^= 4;
	ck_assert_int_eq(sig_store_encrypt(a, "bob", &bb, (const uint8_t *)"x", 1, &m.b, &m.n, &m.type), SP_EBADSIG);
	ck_assert(!sig_store_has_session(a, "bob"));
	bb.signed_prekey_sig[3] ^= 4;
	ck_assert_int_eq(sig_store_encrypt(a, "bob", &bb, (const uint8_t *)"x", 1, &m.b, &m.n, &m.type), SP_OK);
	ck_assert_int_eq(sig_store_encrypt(c, "bob", &bb, (const uint8_t *)"y", 1, &m2.b, &m2.n, &m2.type), SP_OK);
	dec(b, "alice", &m, "x");
	/* the one-time prekey is gone after its first use */
	ck_assert_int_eq(dec_rc(b, "carol", &m2, "y"), SP_ENOTFOUND);
	mfree(&m);
	mfree(&m2);
	sig_store_free(a);
	sig_store_free(b);
	sig_store_free(c);
}
END_TEST

START_TEST(test_state_round_trip)
{
	sig_store *a, *b, *a2, *b2;
	uint8_t *ba, *bb, *again, *sk;
	size_t na, nb, nagain, nsk;
	msg m, held;

	establish(&a, &b);
	held = enc(a, "bob", NULL, "held");
	m = enc(a, "bob", NULL, "later");
	dec(b, "alice", &m, "later");
	mfree(&m);
	ck_assert_int_eq(sig_store_sk_distribution(a, "grp", 0, &sk, &nsk), SP_OK);
	ck_assert_int_eq(sig_store_sk_process(b, "grp", "alice", sk, nsk), SP_OK);
	free(sk);
	ba = snap(a, &na);
	bb = snap(b, &nb);
	ck_assert_int_eq(sig_store_deserialize(&a2, ba, na), SP_OK);
	ck_assert_int_eq(sig_store_deserialize(&b2, bb, nb), SP_OK);
	again = snap(a2, &nagain);
	ck_assert_uint_eq(na, nagain);
	ck_assert_mem_eq(ba, again, na);
	free(again);
	sig_store_free(a);
	sig_store_free(b);
	dec(b2, "alice", &held, "held"); /* skipped key survived */
	mfree(&held);
	m = enc(b2, "alice", NULL, "after reload");
	dec(a2, "bob", &m, "after reload");
	mfree(&m);
	ck_assert_int_eq(sig_store_sk_encrypt(a2, "grp", (const uint8_t *)"g", 1, &m.b, &m.n), SP_OK);
	{
		uint8_t *pt;
		size_t n;

		ck_assert_int_eq(sig_store_sk_decrypt(b2, "grp", "alice", m.b, m.n, &pt, &n), SP_OK);
		ck_assert_mem_eq(pt, "g", 1);
		free(pt);
	}
	mfree(&m);
	/* every truncation and a sample of corruptions of a blob fail cleanly */
	for (size_t i = 0; i < na; i++) {
		sig_store *t = NULL;

		ck_assert_int_ne(sig_store_deserialize(&t, ba, i), SP_OK);
		ck_assert_ptr_null(t);
	}
	for (size_t i = 0; i < na; i += 7) {
		sig_store *t = NULL;

		ba[i] ^= 0xff;
		if (sig_store_deserialize(&t, ba, na) == SP_OK)
			sig_store_free(t);
		ba[i] ^= 0xff;
	}
	free(ba);
	free(bb);
	sig_store_free(a2);
	sig_store_free(b2);
}
END_TEST

START_TEST(test_session_blob)
{
	sig_store *a, *b;
	sig_session *s1, *s2;
	sig_bundle bb;
	uint8_t *blob, *blob2, *out, *pt;
	size_t n, n2, outlen, ptlen;
	int type;

	establish(&a, &b);
	ck_assert_int_eq(sig_store_bundle(b, &bb, 0), SP_OK);
	ck_assert_int_eq(sig_session_init_alice(&s1, sig_store_identity(a), 100, &bb, NULL, NULL), SP_OK);
	ck_assert_int_eq(sig_state_session_serialize(s1, &blob, &n), SP_OK);
	ck_assert_int_eq(sig_state_session_deserialize(&s2, blob, n), SP_OK);
	ck_assert_int_eq(sig_state_session_serialize(s2, &blob2, &n2), SP_OK);
	ck_assert_uint_eq(n, n2);
	ck_assert_mem_eq(blob, blob2, n);
	ck_assert_int_eq(sig_session_encrypt(s2, (const uint8_t *)"blob", 4, &out, &outlen, &type), SP_OK);
	ck_assert_int_eq(sig_store_decrypt(b, "alice2", type, out, outlen, &pt, &ptlen), SP_OK);
	ck_assert_mem_eq(pt, "blob", 4);
	for (size_t i = 0; i < n; i++) {
		sig_session *t = NULL;

		ck_assert_int_ne(sig_state_session_deserialize(&t, blob, i), SP_OK);
	}
	free(pt);
	free(out);
	free(blob);
	free(blob2);
	sig_session_free(s1);
	sig_session_free(s2);
	sig_store_free(a);
	sig_store_free(b);
}
END_TEST

START_TEST(test_malformed_protobuf)
{
	static const struct {
		const char *hex;
	} bad_signal[] = {
		{ "" },
		{ "33" },
		{ "3300000000000000" },                           /* too short for a MAC */
		{ "230a2105000000000000000000000000000000000000000000000000000000000000000022010000000000000000" }, /* v2 */
		{ "330a200500000000000000000000000000000000000000000000000000000000000000220100aabbccddeeff0011" }, /* 32-byte key */
		{ "33ff" "0000000000000000" },                       /* truncated varint key */
		{ "330a7f00" "0000000000000000" },                   /* length past the end */
		{ "330b" "0000000000000000" },                       /* group wire type */
		{ "3310ffffffffffffffffffff01" "0000000000000000" }, /* 11-byte varint */
		{ "33100018002201aa" "0000000000000000" },           /* no ratchet key */
		{ "330a210500000000000000000000000000000000000000000000000000000000000000001000" "0000000000000000" }, /* no ciphertext */
		{ "33120100" "0000000000000000" },                   /* counter with wire type 2 */
	};
	sig_signal_msg sm;
	sig_prekey_msg pm;
	sig_sk_msg km;
	sig_skdm dm;
	uint8_t buf[256];
	size_t n;

	for (size_t i = 0; i < sizeof(bad_signal) / sizeof(bad_signal[0]); i++) {
		ck_assert_int_eq(sodium_hex2bin(buf, sizeof(buf), bad_signal[i].hex, strlen(bad_signal[i].hex), NULL, &n, NULL), 0);
		ck_assert_msg(sig_proto_signal_decode(buf, n, &sm) != SP_OK, "signal case %zu accepted", i);
		ck_assert_msg(sig_proto_prekey_decode(buf, n, &pm) != SP_OK, "prekey case %zu accepted", i);
		ck_assert_msg(sig_proto_sk_msg_decode(buf, n, &km) != SP_OK, "sk case %zu accepted", i);
		ck_assert_msg(sig_proto_skdm_decode(buf, n, &dm) != SP_OK, "skdm case %zu accepted", i);
	}
	/* absent counters default to 0; unknown fields are skipped */
	{
		const char *h = "330a2105" "0909090909090909090909090909090909090909090909090909090909090909"
		                "2201aa" "2d01020304" "0000000000000000";
		ck_assert_int_eq(sodium_hex2bin(buf, sizeof(buf), h, strlen(h), NULL, &n, NULL), 0);
		ck_assert_int_eq(sig_proto_signal_decode(buf, n, &sm), SP_OK);
		ck_assert_uint_eq(sm.counter, 0);
		ck_assert_uint_eq(sm.ciphertext_len, 1);
	}
	/* and the store refuses garbage of every type */
	{
		sig_store *b = mk(9);
		uint8_t *pt;
		size_t ptlen;

		memset(buf, 0x33, sizeof(buf));
		ck_assert_int_ne(sig_store_decrypt(b, "x", SIG_MSG_PREKEY, buf, sizeof(buf), &pt, &ptlen), SP_OK);
		ck_assert_int_ne(sig_store_decrypt(b, "x", SIG_MSG_WHISPER, buf, sizeof(buf), &pt, &ptlen), SP_OK);
		ck_assert_int_eq(sig_store_decrypt(b, "x", 99, buf, sizeof(buf), &pt, &ptlen), SP_EINVAL);
		ck_assert_int_ne(sig_store_sk_process(b, "g", "x", buf, sizeof(buf)), SP_OK);
		sig_store_free(b);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("signal_session");
	TCase *tc = tcase_create("session");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_no_one_time_prekey);
	tcase_add_test(tc, test_pending_prekey_messages);
	tcase_add_test(tc, test_out_of_order);
	tcase_add_test(tc, test_skip_limit);
	tcase_add_test(tc, test_chain_limit);
	tcase_add_test(tc, test_session_bounds);
	tcase_add_test(tc, test_replay_rejected);
	tcase_add_test(tc, test_tamper_rejected);
	tcase_add_test(tc, test_identity_change);
	tcase_add_test(tc, test_bad_signature_and_prekey_reuse);
	tcase_add_test(tc, test_state_round_trip);
	tcase_add_test(tc, test_session_blob);
	tcase_add_test(tc, test_malformed_protobuf);
	suite_add_tcase(s, tc);
	return check_run(s);
}
