/* The classic Signal v3 test vector (shared/signal/vectors/vector1.json) reproduced
 * byte for byte: signatures, X3DH, the first message both ways, and Bob's reply. */
#include <check.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/sig_curve.h"
#include "client/signal/sig_kdf.h"
#include "client/signal/sig_proto.h"
#include "client/signal/sig_session.h"
#include "client/signal/sig_state.h"
#include "sp_error.h"
#include "check_run.h"

static char *vec;

static void
load_vector(void)
{
	const char *path = getenv("SP_SIGNAL_VECTOR");
	FILE *f;
	long n;

	if (path == NULL)
		path = "../shared/signal/vectors/vector1.json";
	f = fopen(path, "rb");
	if (f == NULL) {
		fprintf(stderr, "cannot open test vector %s\n", path);
		exit(1);
	}
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	vec = calloc(1, (size_t)n + 1);
	if (vec == NULL || fread(vec, 1, (size_t)n, f) != (size_t)n) {
		fprintf(stderr, "cannot read test vector\n");
		exit(1);
	}
	fclose(f);
}

/* The string value of "key" inside the object "section" (a minimal, purpose-built
 * extractor: the vector is flat JSON of hex and text strings). Returns a static copy. */
static const char *
jstr(const char *section, const char *key)
{
	static char out[1024];
	char pat[128];
	const char *sec, *end, *k, *q;

	snprintf(pat, sizeof(pat), "\"%s\"", section);
	sec = strstr(vec, pat);
	ck_assert_msg(sec != NULL, "section %s", section);
	end = strchr(sec, '}');
	snprintf(pat, sizeof(pat), "\"%s\"", key);
	k = strstr(sec, pat);
	ck_assert_msg(k != NULL && k < end, "key %s.%s", section, key);
	k = strchr(k + strlen(pat), '"');
	ck_assert(k != NULL);
	q = strchr(k + 1, '"');
	ck_assert(q != NULL && (size_t)(q - k - 1) < sizeof(out));
	memcpy(out, k + 1, (size_t)(q - k - 1));
	out[q - k - 1] = 0;
	return out;
}

static unsigned
jnum(const char *section, const char *key)
{
	char pat[128];
	const char *sec, *k;

	snprintf(pat, sizeof(pat), "\"%s\"", section);
	sec = strstr(vec, pat);
	ck_assert(sec != NULL);
	snprintf(pat, sizeof(pat), "\"%s\"", key);
	k = strstr(sec, pat);
	ck_assert(k != NULL);
	k = strchr(k, ':');
	return (unsigned)strtoul(k + 1, NULL, 10);
}

/* Hex value into buf; returns its length. */
static size_t
jhex(const char *section, const char *key, uint8_t *buf, size_t cap)
{
	const char *h = jstr(section, key);
	size_t n = 0;

	ck_assert_int_eq(sodium_hex2bin(buf, cap, h, strlen(h), NULL, &n, NULL), 0);
	return n;
}

static void
keypair(const char *section, const char *priv, const char *pub, sig_keypair *kp)
{
	uint8_t p[32], want[33];

	ck_assert_uint_eq(jhex(section, priv, p, sizeof(p)), 32);
	ck_assert_int_eq(sig_keypair_from_private(kp, p), SP_OK);
	ck_assert_uint_eq(jhex(section, pub, want, sizeof(want)), 33);
	ck_assert_mem_eq(kp->pub, want, 33);
}

START_TEST(test_signature_verify)
{
	uint8_t idpub[33], spk[33], sig[64], t[64], tk[33], tm[33];

	jhex("bob", "identity_pub", idpub, 33);
	jhex("bob", "signed_prekey_pub", spk, 33);
	ck_assert_uint_eq(jhex("bob", "signed_prekey_signature", sig, 64), 64);
	ck_assert_int_eq(sig_curve_verify(idpub, spk, 33, sig), SP_OK);
	for (int bit = 0; bit < 512; bit++) {
		memcpy(t, sig, 64);
		t[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		ck_assert_int_ne(sig_curve_verify(idpub, spk, 33, t), SP_OK);
	}
	for (int bit = 0; bit < 33 * 8; bit++) {
		memcpy(tm, spk, 33);
		tm[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		ck_assert_int_ne(sig_curve_verify(idpub, tm, 33, sig), SP_OK);
	}
	/* every key bit but the u-coordinate's unused top bit (bit 255 is ignored) */
	for (int bit = 0; bit < 33 * 8; bit++) {
		if (bit == 32 * 8 + 7)
			continue;
		memcpy(tk, idpub, 33);
		tk[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		ck_assert_int_ne(sig_curve_verify(tk, spk, 33, sig), SP_OK);
	}
}
END_TEST

START_TEST(test_signature_deterministic)
{
	sig_keypair id;
	uint8_t spk[33], sig[64], mine[64];

	keypair("bob", "identity_priv", "identity_pub", &id);
	jhex("bob", "signed_prekey_pub", spk, 33);
	jhex("bob", "signed_prekey_signature", sig, 64);
	ck_assert_int_eq(sig_curve_sign_deterministic(mine, id.priv, spk, 33), SP_OK);
	ck_assert_mem_eq(mine, sig, 64);
	/* the random-nonce form differs but verifies */
	ck_assert_int_eq(sig_curve_sign(mine, id.priv, spk, 33), SP_OK);
	ck_assert_mem_ne(mine, sig, 64);
	ck_assert_int_eq(sig_curve_verify(id.pub, spk, 33, mine), SP_OK);
}
END_TEST

START_TEST(test_x3dh_values)
{
	sig_keypair aid, abase, bid, bspk, bopk;
	uint8_t dh[4][32], want[32], ikm[160], out[64];

	keypair("alice", "identity_priv", "identity_pub", &aid);
	keypair("alice", "base_key_priv", "base_key_pub", &abase);
	keypair("bob", "identity_priv", "identity_pub", &bid);
	keypair("bob", "signed_prekey_priv", "signed_prekey_pub", &bspk);
	keypair("bob", "one_time_prekey_priv", "one_time_prekey_pub", &bopk);
	ck_assert_int_eq(sig_curve_dh(dh[0], aid.priv, bspk.pub), SP_OK);
	ck_assert_int_eq(sig_curve_dh(dh[1], abase.priv, bid.pub), SP_OK);
	ck_assert_int_eq(sig_curve_dh(dh[2], abase.priv, bspk.pub), SP_OK);
	ck_assert_int_eq(sig_curve_dh(dh[3], abase.priv, bopk.pub), SP_OK);
	jhex("x3dh", "dh1_IKa_SPKb", want, 32);
	ck_assert_mem_eq(dh[0], want, 32);
	jhex("x3dh", "dh2_EKa_IKb", want, 32);
	ck_assert_mem_eq(dh[1], want, 32);
	jhex("x3dh", "dh3_EKa_SPKb", want, 32);
	ck_assert_mem_eq(dh[2], want, 32);
	jhex("x3dh", "dh4_EKa_OPKb", want, 32);
	ck_assert_mem_eq(dh[3], want, 32);
	/* Bob's side gives the same */
	ck_assert_int_eq(sig_curve_dh(want, bspk.priv, aid.pub), SP_OK);
	ck_assert_mem_eq(dh[0], want, 32);
	memset(ikm, 0xff, 32);
	memcpy(ikm + 32, dh, 128);
	ck_assert_int_eq(sig_hkdf(out, 64, ikm, 160, NULL, 0, "WhisperText"), SP_OK);
	jhex("x3dh", "root_key_0", want, 32);
	ck_assert_mem_eq(out, want, 32);
	jhex("x3dh", "chain_key_unused_by_both_sides", want, 32);
	ck_assert_mem_eq(out + 32, want, 32);
}
END_TEST

START_TEST(test_message_keys)
{
	uint8_t ck[32], seed[32], next[32], want[32], k[80];

	jhex("alice_first_ratchet", "sending_chain_key_0", ck, 32);
	sig_chain_step(ck, seed, next);
	jhex("alice_first_ratchet", "message_key_seed_0", want, 32);
	ck_assert_mem_eq(seed, want, 32);
	jhex("alice_first_ratchet", "chain_key_1", want, 32);
	ck_assert_mem_eq(next, want, 32);
	ck_assert_int_eq(sig_hkdf(k, 80, seed, 32, NULL, 0, "WhisperMessageKeys"), SP_OK);
	jhex("alice_first_ratchet", "cipher_key", want, 32);
	ck_assert_mem_eq(k, want, 32);
	jhex("alice_first_ratchet", "mac_key", want, 32);
	ck_assert_mem_eq(k + 32, want, 32);
	jhex("alice_first_ratchet", "iv", want, 16);
	ck_assert_mem_eq(k + 64, want, 16);
}
END_TEST

static sig_session *
bob_session_from_message1(sig_keypair *bid)
{
	sig_keypair bspk, bopk;
	uint8_t msg[512];
	size_t n;
	sig_prekey_msg m;
	sig_session *s = NULL;

	keypair("bob", "identity_priv", "identity_pub", bid);
	keypair("bob", "signed_prekey_priv", "signed_prekey_pub", &bspk);
	keypair("bob", "one_time_prekey_priv", "one_time_prekey_pub", &bopk);
	n = jhex("message1", "prekey_signal_message", msg, sizeof(msg));
	ck_assert_int_eq(sig_proto_prekey_decode(msg, n, &m), SP_OK);
	ck_assert(m.has_pre_key_id);
	ck_assert_uint_eq(m.pre_key_id, jnum("bob", "one_time_prekey_id"));
	ck_assert_uint_eq(m.signed_pre_key_id, jnum("bob", "signed_prekey_id"));
	ck_assert_uint_eq(m.registration_id, jnum("alice", "registrationId"));
	ck_assert_int_eq(sig_session_init_bob(&s, bid, jnum("bob", "registrationId"), &bspk, &bopk, &m), SP_OK);
	return s;
}

START_TEST(test_full_decrypt)
{
	sig_keypair bid;
	sig_session *s;
	uint8_t msg[512], *pt;
	size_t n, ptlen;
	sig_prekey_msg m;

	s = bob_session_from_message1(&bid);
	n = jhex("message1", "prekey_signal_message", msg, sizeof(msg));
	ck_assert_int_eq(sig_proto_prekey_decode(msg, n, &m), SP_OK);
	ck_assert_int_eq(sig_session_decrypt(s, m.message, m.message_len, &pt, &ptlen), SP_OK);
	ck_assert_uint_eq(ptlen, strlen(jstr("message1", "plaintext_utf8")));
	ck_assert_mem_eq(pt, "Hello, Bob!", ptlen);
	free(pt);
	/* replay of the same message is refused */
	ck_assert_int_eq(sig_session_decrypt(s, m.message, m.message_len, &pt, &ptlen), SP_EREPLAY);
	sig_session_free(s);
}
END_TEST

START_TEST(test_full_decrypt_store)
{
	sig_keypair bid, bspk, bopk;
	sig_store *st;
	uint8_t msg[512], sig[64], *pt, *blob;
	size_t n, ptlen, blen;

	keypair("bob", "identity_priv", "identity_pub", &bid);
	keypair("bob", "signed_prekey_priv", "signed_prekey_pub", &bspk);
	keypair("bob", "one_time_prekey_priv", "one_time_prekey_pub", &bopk);
	jhex("bob", "signed_prekey_signature", sig, 64);
	ck_assert_int_eq(sig_store_new(&st, &bid, jnum("bob", "registrationId"), 1), SP_OK);
	ck_assert_int_eq(sig_store_add_signed_prekey(st, 7, &bspk, sig), SP_OK);
	ck_assert_int_eq(sig_store_add_prekey(st, 31, &bopk), SP_OK);
	n = jhex("message1", "prekey_signal_message", msg, sizeof(msg));
	ck_assert_int_eq(sig_store_decrypt(st, "alice", SIG_MSG_PREKEY, msg, n, &pt, &ptlen), SP_OK);
	ck_assert_mem_eq(pt, "Hello, Bob!", 11);
	free(pt);
	/* the same PreKeySignalMessage again: same session, key already used */
	ck_assert_int_eq(sig_store_decrypt(st, "alice", SIG_MSG_PREKEY, msg, n, &pt, &ptlen), SP_EREPLAY);
	ck_assert_int_eq(sig_store_prekeys_available(st), 0);
	ck_assert_int_eq(sig_store_serialize(st, &blob, &blen), SP_OK);
	sig_store_free(st);
	ck_assert_int_eq(sig_store_deserialize(&st, blob, blen), SP_OK);
	sodium_memzero(blob, blen);
	free(blob);
	ck_assert(sig_store_has_session(st, "alice"));
	sig_store_free(st);
}
END_TEST

static sig_session *
alice_session(void)
{
	sig_keypair aid, abase, arat;
	sig_bundle b;
	sig_session *s = NULL;

	keypair("alice", "identity_priv", "identity_pub", &aid);
	keypair("alice", "base_key_priv", "base_key_pub", &abase);
	keypair("alice", "ratchet_key_priv", "ratchet_key_pub", &arat);
	memset(&b, 0, sizeof(b));
	b.registration_id = jnum("bob", "registrationId");
	b.device_id = 1;
	jhex("bob", "identity_pub", b.identity_key, 33);
	b.signed_prekey_id = jnum("bob", "signed_prekey_id");
	jhex("bob", "signed_prekey_pub", b.signed_prekey, 33);
	jhex("bob", "signed_prekey_signature", b.signed_prekey_sig, 64);
	b.has_prekey = 1;
	b.prekey_id = jnum("bob", "one_time_prekey_id");
	jhex("bob", "one_time_prekey_pub", b.prekey, 33);
	ck_assert_int_eq(sig_session_init_alice(&s, &aid, jnum("alice", "registrationId"), &b, &abase, &arat), SP_OK);
	return s;
}

START_TEST(test_encrypt_exact)
{
	sig_session *s = alice_session();
	uint8_t want[512], *out;
	size_t n, outlen;
	int type;

	n = jhex("message1", "prekey_signal_message", want, sizeof(want));
	ck_assert_int_eq(sig_session_encrypt(s, (const uint8_t *)"Hello, Bob!", 11, &out, &outlen, &type), SP_OK);
	ck_assert_int_eq(type, SIG_MSG_PREKEY);
	ck_assert_uint_eq(outlen, n);
	ck_assert_mem_eq(out, want, n);
	free(out);
	sig_session_free(s);
}
END_TEST

START_TEST(test_bad_signature_refused)
{
	sig_keypair aid;
	sig_bundle b;
	sig_session *s = NULL;

	keypair("alice", "identity_priv", "identity_pub", &aid);
	memset(&b, 0, sizeof(b));
	jhex("bob", "identity_pub", b.identity_key, 33);
	b.signed_prekey_id = 7;
	jhex("bob", "signed_prekey_pub", b.signed_prekey, 33);
	jhex("bob", "signed_prekey_signature", b.signed_prekey_sig, 64);
	b.signed_prekey_sig[10] ^= 0x20;
	ck_assert_int_eq(sig_session_init_alice(&s, &aid, 1, &b, NULL, NULL), SP_EBADSIG);
	ck_assert_ptr_null(s);
}
END_TEST

START_TEST(test_bob_reply)
{
	sig_keypair bid, brat;
	sig_session *bob, *alice;
	uint8_t msg[512], want[512], *pt, *out;
	size_t n, wn, ptlen, outlen;
	int type;
	sig_prekey_msg m;

	bob = bob_session_from_message1(&bid);
	keypair("bob", "ratchet_key_priv", "ratchet_key_pub", &brat);
	sig_session_preset_ratchet_key(bob, &brat);
	n = jhex("message1", "prekey_signal_message", msg, sizeof(msg));
	ck_assert_int_eq(sig_proto_prekey_decode(msg, n, &m), SP_OK);
	ck_assert_int_eq(sig_session_decrypt(bob, m.message, m.message_len, &pt, &ptlen), SP_OK);
	free(pt);
	ck_assert_int_eq(sig_session_encrypt(bob, (const uint8_t *)"Hi Alice", 8, &out, &outlen, &type), SP_OK);
	ck_assert_int_eq(type, SIG_MSG_WHISPER);
	wn = jhex("message2", "signal_message", want, sizeof(want));
	ck_assert_uint_eq(outlen, wn);
	ck_assert_mem_eq(out, want, wn);

	/* Alice decrypts the reply and stops sending PreKeySignalMessages */
	alice = alice_session();
	ck_assert_int_eq(sig_session_encrypt(alice, (const uint8_t *)"Hello, Bob!", 11, &pt, &ptlen, &type), SP_OK);
	free(pt);
	ck_assert(sig_session_is_pending(alice));
	ck_assert_int_eq(sig_session_decrypt(alice, out, outlen, &pt, &ptlen), SP_OK);
	ck_assert_uint_eq(ptlen, 8);
	ck_assert_mem_eq(pt, "Hi Alice", 8);
	free(pt);
	ck_assert(!sig_session_is_pending(alice));
	free(out);
	ck_assert_int_eq(sig_session_encrypt(alice, (const uint8_t *)"x", 1, &out, &outlen, &type), SP_OK);
	ck_assert_int_eq(type, SIG_MSG_WHISPER);
	ck_assert_int_eq(sig_session_decrypt(bob, out, outlen, &pt, &ptlen), SP_OK);
	ck_assert_mem_eq(pt, "x", 1);
	free(pt);
	free(out);
	sig_session_free(alice);
	sig_session_free(bob);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("signal_vector");
	TCase *tc = tcase_create("vector1");

	load_vector();
	tcase_add_test(tc, test_signature_verify);
	tcase_add_test(tc, test_signature_deterministic);
	tcase_add_test(tc, test_x3dh_values);
	tcase_add_test(tc, test_message_keys);
	tcase_add_test(tc, test_full_decrypt);
	tcase_add_test(tc, test_full_decrypt_store);
	tcase_add_test(tc, test_encrypt_exact);
	tcase_add_test(tc, test_bad_signature_refused);
	tcase_add_test(tc, test_bob_reply);
	suite_add_tcase(s, tc);
	int failed = check_run(s);
	free(vec);
	return failed;
}
