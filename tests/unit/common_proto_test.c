/* Protocol facts in common/: the login message and the catalogue's serve column. */
#include <check.h>
#include <string.h>

#include <sodium.h>

#include "sp_error.h"
#include "sp_frame.h"
#include "sp_proto.h"
#include "check_run.h"

START_TEST(test_login_message_layout)
{
	uint8_t nonce[SP_LOGIN_NONCE_LEN], msg[SP_LOGIN_MSG_LEN];
	for (size_t i = 0; i < sizeof(nonce); i++)
		nonce[i] = (uint8_t)i;
	sp_login_message(msg, nonce, 0x0102030405060708ULL, 0x1112131415161718ULL);
	ck_assert_uint_eq(sizeof(msg), 16 + 32 + 16);
	ck_assert(memcmp(msg, "sealpost-auth-v1", 16) == 0);
	ck_assert(memcmp(msg + 16, nonce, 32) == 0);
	static const uint8_t ids[16] = {1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18};
	ck_assert(memcmp(msg + 48, ids, 16) == 0);
}
END_TEST

START_TEST(test_login_sign_verify)
{
	uint8_t pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
	uint8_t nonce[SP_LOGIN_NONCE_LEN], sig[SP_LOGIN_SIG_LEN];
	ck_assert_int_eq(sodium_init() >= 0, 1);
	crypto_sign_keypair(pk, sk);
	randombytes_buf(nonce, sizeof(nonce));
	sp_login_sign(sig, nonce, 7, 9, sk);
	ck_assert_int_eq(sp_login_verify(sig, sizeof(sig), nonce, 7, 9, pk, sizeof(pk)), SP_OK);
	/* Another device, user, nonce or key: refused. */
	ck_assert_int_eq(sp_login_verify(sig, sizeof(sig), nonce, 7, 10, pk, sizeof(pk)), SP_EAUTH);
	ck_assert_int_eq(sp_login_verify(sig, sizeof(sig), nonce, 8, 9, pk, sizeof(pk)), SP_EAUTH);
	nonce[0] ^= 1;
	ck_assert_int_eq(sp_login_verify(sig, sizeof(sig), nonce, 7, 9, pk, sizeof(pk)), SP_EAUTH);
	nonce[0] ^= 1;
	ck_assert_int_eq(sp_login_verify(sig, sizeof(sig), nonce, 7, 9, pk, sizeof(pk) - 1), SP_EAUTH);
	ck_assert_int_eq(sp_login_verify(sig, sizeof(sig) - 1, nonce, 7, 9, pk, sizeof(pk)), SP_EAUTH);
	sig[5] ^= 0x40;
	ck_assert_int_eq(sp_login_verify(sig, sizeof(sig), nonce, 7, 9, pk, sizeof(pk)), SP_EAUTH);
}
END_TEST

/* Every request names a reply that exists, and no record or reply is served. */
START_TEST(test_serve_column_consistent)
{
	unsigned requests = 0;
	for (unsigned t = 0; t < 256; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		if (!d)
			continue;
		if (d->flags & SP_FL_RECORD)
			ck_assert_msg(d->tier == SP_TIER_NONE, "record %s is served", d->name);
		if (d->tier == SP_TIER_NONE) {
			ck_assert_msg(d->login == SP_LOGIN_NO, "%s: clients may send an unserved frame", d->name);
			ck_assert(d->reply == SP_T_NONE);
			continue;
		}
		requests++;
		if (d->reply != SP_T_NONE) {
			const sp_frame_def *r = sp_frame_def_get((unsigned)d->reply);
			ck_assert_msg(r && !(r->flags & SP_FL_RECORD), "%s: bad reply type", d->name);
		}
		/* Clients only reach connsrv and, through it, keysrv. */
		if (d->login != SP_LOGIN_NO)
			ck_assert_msg(d->tier == SP_TIER_CONNSRV || d->tier == SP_TIER_KEYSRV,
				      "%s: a client frame served by another tier", d->name);
		if (d->flags & SP_FL_RATED)
			ck_assert(d->tier == SP_TIER_CONNSRV && d->login == SP_LOGIN_POST);
	}
	ck_assert_uint_ge(requests, 40);
}
END_TEST

START_TEST(test_client_may_send)
{
	ck_assert(sp_frame_client_may_send(SP_T_HELLO, false));
	ck_assert(!sp_frame_client_may_send(SP_T_HELLO, true));
	ck_assert(sp_frame_client_may_send(SP_T_PING, false));
	ck_assert(sp_frame_client_may_send(SP_T_PING, true));
	ck_assert(sp_frame_client_may_send(SP_T_REGISTER, false));
	ck_assert(!sp_frame_client_may_send(SP_T_SEND, false));
	ck_assert(sp_frame_client_may_send(SP_T_SEND, true));
	ck_assert(sp_frame_client_may_send(SP_T_MEDIA_GET, true));
	/* Server-only requests, replies and unknown types: never from a client. */
	ck_assert(!sp_frame_client_may_send(SP_T_APPEND, true));
	ck_assert(!sp_frame_client_may_send(SP_T_AUTH_KEY_GET, true));
	ck_assert(!sp_frame_client_may_send(SP_T_DELIVER, true));
	ck_assert(!sp_frame_client_may_send(SP_T_KICK, true));
	ck_assert(!sp_frame_client_may_send(SP_T_SENT, true));
	ck_assert(!sp_frame_client_may_send(250, true));
	ck_assert(!sp_frame_client_may_send(4000, true));
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("proto");
	TCase *tc = tcase_create("proto");
	tcase_add_test(tc, test_login_message_layout);
	tcase_add_test(tc, test_login_sign_verify);
	tcase_add_test(tc, test_serve_column_consistent);
	tcase_add_test(tc, test_client_may_send);
	suite_add_tcase(s, tc);
	return check_run(s);
}
