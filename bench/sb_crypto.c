/* --crypto: a real Signal session between a benchmark sender and its recipient, through
 * the client library's Signal core. The X3DH bundle is built locally (both devices live in
 * this process) instead of being fetched from keysrv: what is measured is the per-message
 * Double Ratchet cost (encrypt on the sender, decrypt on the recipient) next to the
 * server's, not the key server. The first exchange (PreKey message and a reply) is done at
 * setup so every measured message is an ordinary SignalMessage. */
#include <stdlib.h>
#include <string.h>

#include "bench/sb.h"
#include "client/signal/sig_proto.h"
#include "client/signal/sig_session.h"
#include "sp_error.h"

struct sb_crypto_pair {
	sig_session *alice, *bob;
};

void
sb_crypto_pair_free(sb_crypto_pair *p)
{
	if (!p)
		return;
	sig_session_free(p->alice);
	sig_session_free(p->bob);
	free(p);
}

/* One message from `from` to `to` (both sides' sessions advance). */
static int
roundtrip(sig_session *from, sig_session *to)
{
	static const uint8_t hello[] = "hello";
	uint8_t *ct = NULL, *pt = NULL;
	size_t ctlen, ptlen;
	int type;
	int rc = sig_session_encrypt(from, hello, sizeof(hello), &ct, &ctlen, &type);
	if (rc == SP_OK)
		rc = sig_session_decrypt(to, ct, ctlen, &pt, &ptlen);
	free(ct);
	free(pt);
	return rc;
}

int
sb_crypto_pair_new(sb_crypto_pair **out)
{
	sig_keypair aik, bik, spk, opk;
	sig_bundle b;
	sb_crypto_pair *p = calloc(1, sizeof(*p));
	uint8_t *ct = NULL, *pt = NULL;
	size_t ctlen, ptlen;
	int type, rc = SP_ENOMEM;
	if (!p)
		return SP_ENOMEM;
	if ((rc = sig_keypair_generate(&aik)) || (rc = sig_keypair_generate(&bik)) ||
	    (rc = sig_keypair_generate(&spk)) || (rc = sig_keypair_generate(&opk)))
		goto out;
	memset(&b, 0, sizeof(b));
	b.registration_id = 2;
	b.device_id = 1;
	memcpy(b.identity_key, bik.pub, SIG_PUB_LEN);
	b.signed_prekey_id = 1;
	memcpy(b.signed_prekey, spk.pub, SIG_PUB_LEN);
	if ((rc = sig_curve_sign(b.signed_prekey_sig, bik.priv, spk.pub, SIG_PUB_LEN)))
		goto out;
	b.has_prekey = 1;
	b.prekey_id = 7;
	memcpy(b.prekey, opk.pub, SIG_PUB_LEN);
	if ((rc = sig_session_init_alice(&p->alice, &aik, 1, &b, NULL, NULL)))
		goto out;
	static const uint8_t first[] = "first";
	if ((rc = sig_session_encrypt(p->alice, first, sizeof(first), &ct, &ctlen, &type)))
		goto out;
	sig_prekey_msg m;
	if (type != SIG_MSG_PREKEY || (rc = sig_proto_prekey_decode(ct, ctlen, &m))) {
		rc = rc ? rc : SP_EPROTO;
		goto out;
	}
	if ((rc = sig_session_init_bob(&p->bob, &bik, 2, &spk, &opk, &m)) ||
	    (rc = sig_session_decrypt(p->bob, m.message, m.message_len, &pt, &ptlen)) ||
	    (rc = roundtrip(p->bob, p->alice)))
		goto out;
out:
	free(ct);
	free(pt);
	sig_keypair_wipe(&aik);
	sig_keypair_wipe(&bik);
	sig_keypair_wipe(&spk);
	sig_keypair_wipe(&opk);
	if (rc) {
		sb_crypto_pair_free(p);
		return rc;
	}
	*out = p;
	return SP_OK;
}

int
sb_crypto_encrypt(sb_crypto_pair *p, sb_stats *st, const uint8_t *pt, size_t len, uint8_t **out,
		  size_t *outlen)
{
	int type;
	uint64_t t0 = sb_now_ns();
	int rc = sig_session_encrypt(p->alice, pt, len, out, outlen, &type);
	st->crypto_enc_ns += sb_now_ns() - t0;
	st->crypto_enc++;
	st->crypto_fail += rc != SP_OK;
	return rc;
}

int
sb_crypto_decrypt(sb_crypto_pair *p, sb_stats *st, const uint8_t *ct, size_t len, uint8_t **pt,
		  size_t *ptlen)
{
	uint64_t t0 = sb_now_ns();
	int rc = sig_session_decrypt(p->bob, ct, len, pt, ptlen);
	st->crypto_dec_ns += sb_now_ns() - t0;
	st->crypto_dec++;
	st->crypto_fail += rc != SP_OK;
	return rc;
}
