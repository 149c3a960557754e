/* XEdDSA verification in common/: accepts what the client's signer makes, rejects any
 * flipped bit in message, key or signature. */
#include <check.h>
#include <string.h>

#include "client/signal/sig_curve.h"
#include "sp_error.h"
#include "sp_xeddsa.h"
#include "check_run.h"

static sig_keypair kp;
static uint8_t msg[SP_XEDDSA_PUB_LEN], sig[SP_XEDDSA_SIG_LEN];

/* A signed-prekey-style signature: the identity key signs a 33-byte public key. */
static void
setup(void)
{
	sig_keypair spk;

	ck_assert_int_eq(sig_keypair_generate(&kp), SP_OK);
	ck_assert_int_eq(sig_keypair_generate(&spk), SP_OK);
	memcpy(msg, spk.pub, sizeof(msg));
	sig_keypair_wipe(&spk);
	ck_assert_int_eq(sig_curve_sign(sig, kp.priv, msg, sizeof(msg)), SP_OK);
}

START_TEST(test_client_signature_verifies)
{
	uint8_t det[SP_XEDDSA_SIG_LEN];

	ck_assert_int_eq(sp_xeddsa_verify(kp.pub, msg, sizeof(msg), sig), SP_OK);
	ck_assert_int_eq(sig_curve_sign_deterministic(det, kp.priv, msg, sizeof(msg)), SP_OK);
	ck_assert_int_eq(sp_xeddsa_verify(kp.pub, msg, sizeof(msg), det), SP_OK);
	ck_assert_int_eq(sig_curve_sign(det, kp.priv, NULL, 0), SP_OK);
	ck_assert_int_eq(sp_xeddsa_verify(kp.pub, NULL, 0, det), SP_OK);
}
END_TEST

START_TEST(test_flipped_message_bit)
{
	uint8_t m[sizeof(msg)];

	for (size_t bit = 0; bit < sizeof(msg) * 8; bit++) {
		memcpy(m, msg, sizeof(m));
		m[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		ck_assert_int_eq(sp_xeddsa_verify(kp.pub, m, sizeof(m), sig), SP_EBADSIG);
	}
}
END_TEST

START_TEST(test_flipped_key_bit)
{
	uint8_t k[SP_XEDDSA_PUB_LEN];

	for (size_t bit = 0; bit < sizeof(k) * 8; bit++) {
		/* the u-coordinate's top bit is ignored (RFC 7748) */
		if (bit == 32 * 8 + 7)
			continue;
		memcpy(k, kp.pub, sizeof(k));
		k[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		/* a changed type byte is a malformed key, any other bit a wrong one */
		ck_assert_int_eq(
		    sp_xeddsa_verify(k, msg, sizeof(msg), sig), bit < 8 ? SP_EINVAL : SP_EBADSIG);
	}
}
END_TEST

START_TEST(test_flipped_signature_bit)
{
	uint8_t s[SP_XEDDSA_SIG_LEN];

	for (size_t bit = 0; bit < sizeof(s) * 8; bit++) {
		memcpy(s, sig, sizeof(s));
		s[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		ck_assert_int_eq(sp_xeddsa_verify(kp.pub, msg, sizeof(msg), s), SP_EBADSIG);
	}
}
END_TEST

START_TEST(test_pubkey_valid)
{
	ck_assert_int_eq(sp_xeddsa_pubkey_valid(kp.pub, SP_XEDDSA_PUB_LEN), 1);
	ck_assert_int_eq(sp_xeddsa_pubkey_valid(kp.pub, SP_XEDDSA_PUB_LEN - 1), 0);
	ck_assert_int_eq(sp_xeddsa_pubkey_valid(kp.pub + 1, SP_XEDDSA_PUB_LEN), 0);
	ck_assert_int_eq(sp_xeddsa_pubkey_valid(NULL, SP_XEDDSA_PUB_LEN), 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("xeddsa");
	TCase *tc = tcase_create("xeddsa");
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_client_signature_verifies);
	tcase_add_test(tc, test_flipped_message_bit);
	tcase_add_test(tc, test_flipped_key_bit);
	tcase_add_test(tc, test_flipped_signature_bit);
	tcase_add_test(tc, test_pubkey_valid);
	suite_add_tcase(s, tc);
	return check_run(s);
}
