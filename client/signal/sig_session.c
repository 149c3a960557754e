#include "client/signal/sig_session.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/internal.h"
#include "client/signal/sig_kdf.h"
#include "sp_error.h"

static sig_session *
session_alloc(void)
{
	return calloc(1, sizeof(sig_session));
}

static void
chain_clear(sig_recv_chain *c)
{
	sig_skip_free(&c->skipped, &c->nskipped, &c->capskipped);
	sodium_memzero(c, sizeof(*c));
}

void
sig_session_free(sig_session *s)
{
	if (s == NULL)
		return;
	for (uint32_t i = 0; i < s->nchains; i++)
		chain_clear(&s->chains[i]);
	sodium_memzero(s, sizeof(*s));
	free(s);
}

int
sig_session_dup(sig_session **out, const sig_session *s)
{
	sig_session *d = session_alloc();

	*out = NULL;
	if (d == NULL)
		return SP_ENOMEM;
	memcpy(d, s, sizeof(*d));
	for (uint32_t i = 0; i < SIG_MAX_RECV_CHAINS; i++) {
		d->chains[i].skipped = NULL;
		d->chains[i].capskipped = 0;
	}
	for (uint32_t i = 0; i < s->nchains; i++) {
		if (sig_skip_dup(&d->chains[i].skipped, &d->chains[i].capskipped,
		        s->chains[i].skipped, s->chains[i].nskipped) != SP_OK) {
			sig_session_free(d);
			return SP_ENOMEM;
		}
	}
	*out = d;
	return SP_OK;
}

const uint8_t *
sig_session_remote_identity(const sig_session *s)
{
	return s->remote_identity;
}

uint32_t
sig_session_remote_registration_id(const sig_session *s)
{
	return s->remote_reg_id;
}

int
sig_session_has_base_key(const sig_session *s, const uint8_t base[SIG_PUB_LEN])
{
	return memcmp(s->base_key, base, SIG_PUB_LEN) == 0;
}

int
sig_session_is_pending(const sig_session *s)
{
	return s->pending;
}

void
sig_session_preset_ratchet_key(sig_session *s, const sig_keypair *kp)
{
	s->preset = *kp;
	s->has_preset = 1;
}

/* RK, CK = HKDF(DH(priv, pub), salt = RK, "WhisperRatchet") */
static int
ratchet_kdf(uint8_t root[32], uint8_t ck[32], const uint8_t priv[32], const uint8_t pub[33])
{
	uint8_t dh[32], out[64];
	int rc;

	if ((rc = sig_curve_dh(dh, priv, pub)) != SP_OK)
		return rc;
	rc = sig_hkdf(out, sizeof(out), dh, sizeof(dh), root, 32, "WhisperRatchet");
	if (rc == SP_OK) {
		memcpy(root, out, 32);
		memcpy(ck, out + 32, 32);
	}
	sodium_memzero(dh, sizeof(dh));
	sodium_memzero(out, sizeof(out));
	return rc;
}

/* RK0 from the concatenated DH outputs (WIRE.md §3). */
static int
x3dh_root(uint8_t root[32], const uint8_t dh[4][32], int ndh)
{
	uint8_t ikm[32 * 5], out[64];
	int rc;

	memset(ikm, 0xff, 32);
	for (int i = 0; i < ndh; i++)
		memcpy(ikm + 32 * (i + 1), dh[i], 32);
	rc = sig_hkdf(out, sizeof(out), ikm, (size_t)32 * (ndh + 1), NULL, 0, "WhisperText");
	if (rc == SP_OK)
		memcpy(root, out, 32);
	sodium_memzero(ikm, sizeof(ikm));
	sodium_memzero(out, sizeof(out));
	return rc;
}

int
sig_session_init_alice(sig_session **out, const sig_keypair *identity, uint32_t reg_id,
    const sig_bundle *b, const sig_keypair *base_key, const sig_keypair *ratchet_key)
{
	sig_session *s;
	sig_keypair base;
	uint8_t dh[4][32];
	int rc, ndh = 3;

	*out = NULL;
	if (!sig_pubkey_valid(b->identity_key, SIG_PUB_LEN) ||
	    !sig_pubkey_valid(b->signed_prekey, SIG_PUB_LEN) ||
	    (b->has_prekey && !sig_pubkey_valid(b->prekey, SIG_PUB_LEN)))
		return SP_EINVAL;
	if ((rc = sig_curve_verify(b->identity_key, b->signed_prekey, SIG_PUB_LEN,
	         b->signed_prekey_sig)) != SP_OK)
		return rc == SP_EINVAL ? rc : SP_EBADSIG;
	if ((s = session_alloc()) == NULL)
		return SP_ENOMEM;
	if (base_key != NULL)
		base = *base_key;
	else if ((rc = sig_keypair_generate(&base)) != SP_OK)
		goto fail;
	if (ratchet_key != NULL)
		s->ratchet = *ratchet_key;
	else if ((rc = sig_keypair_generate(&s->ratchet)) != SP_OK)
		goto fail;

	if ((rc = sig_curve_dh(dh[0], identity->priv, b->signed_prekey)) != SP_OK ||
	    (rc = sig_curve_dh(dh[1], base.priv, b->identity_key)) != SP_OK ||
	    (rc = sig_curve_dh(dh[2], base.priv, b->signed_prekey)) != SP_OK)
		goto fail;
	if (b->has_prekey) {
		if ((rc = sig_curve_dh(dh[3], base.priv, b->prekey)) != SP_OK)
			goto fail;
		ndh = 4;
	}
	if ((rc = x3dh_root(s->root_key, (const uint8_t(*)[32])dh, ndh)) != SP_OK)
		goto fail;
	if ((rc = ratchet_kdf(s->root_key, s->send_chain_key, s->ratchet.priv, b->signed_prekey)) != SP_OK)
		goto fail;

	memcpy(s->local_identity, identity->pub, SIG_PUB_LEN);
	memcpy(s->remote_identity, b->identity_key, SIG_PUB_LEN);
	s->local_reg_id = reg_id;
	s->remote_reg_id = b->registration_id;
	s->has_send_chain = 1;
	s->send_counter = 0;
	s->prev_counter = 0;
	s->has_their_ratchet = 1;
	memcpy(s->their_ratchet, b->signed_prekey, SIG_PUB_LEN);
	s->pending = 1;
	s->pending_has_opk = b->has_prekey;
	s->pending_opk_id = b->prekey_id;
	s->pending_spk_id = b->signed_prekey_id;
	memcpy(s->base_key, base.pub, SIG_PUB_LEN);
	sodium_memzero(dh, sizeof(dh));
	sig_keypair_wipe(&base);
	*out = s;
	return SP_OK;
fail:
	sodium_memzero(dh, sizeof(dh));
	sig_keypair_wipe(&base);
	sig_session_free(s);
	return rc;
}

int
sig_session_init_bob(sig_session **out, const sig_keypair *identity, uint32_t reg_id,
    const sig_keypair *spk, const sig_keypair *opk, const sig_prekey_msg *m)
{
	sig_session *s;
	uint8_t dh[4][32];
	int rc, ndh = 3;

	*out = NULL;
	if ((s = session_alloc()) == NULL)
		return SP_ENOMEM;
	if ((rc = sig_curve_dh(dh[0], spk->priv, m->identity_key)) != SP_OK ||
	    (rc = sig_curve_dh(dh[1], identity->priv, m->base_key)) != SP_OK ||
	    (rc = sig_curve_dh(dh[2], spk->priv, m->base_key)) != SP_OK)
		goto fail;
	if (opk != NULL) {
		if ((rc = sig_curve_dh(dh[3], opk->priv, m->base_key)) != SP_OK)
			goto fail;
		ndh = 4;
	}
	if ((rc = x3dh_root(s->root_key, (const uint8_t(*)[32])dh, ndh)) != SP_OK)
		goto fail;
	memcpy(s->local_identity, identity->pub, SIG_PUB_LEN);
	memcpy(s->remote_identity, m->identity_key, SIG_PUB_LEN);
	s->local_reg_id = reg_id;
	s->remote_reg_id = m->registration_id;
	s->ratchet = *spk;
	s->has_send_chain = 0;
	s->has_their_ratchet = 0;
	memcpy(s->base_key, m->base_key, SIG_PUB_LEN);
	sodium_memzero(dh, sizeof(dh));
	*out = s;
	return SP_OK;
fail:
	sodium_memzero(dh, sizeof(dh));
	sig_session_free(s);
	return rc;
}

/* cipher key, MAC key, IV from a message-key seed. */
static int
message_keys(const uint8_t seed[32], uint8_t k[80])
{
	return sig_hkdf(k, 80, seed, 32, NULL, 0, "WhisperMessageKeys");
}

static int
compute_mac(uint8_t mac[32], const uint8_t mac_key[32], const uint8_t sender_ik[33],
    const uint8_t receiver_ik[33], const uint8_t *body, size_t len)
{
	const uint8_t *p[3] = { sender_ik, receiver_ik, body };
	size_t l[3] = { SIG_PUB_LEN, SIG_PUB_LEN, len };

	return sig_hmac_sha256(mac, mac_key, 32, 3, p, l);
}

int
sig_session_encrypt(sig_session *s, const uint8_t *pt, size_t len, uint8_t **out,
    size_t *outlen, int *type)
{
	uint8_t seed[32], next_ck[32], k[80], mac[32];
	uint8_t *ct = NULL, *sm = NULL;
	size_t ctlen = 0, smlen = 0;
	sig_wbuf w;
	int rc;

	*out = NULL;
	*outlen = 0;
	if (len > SIG_MAX_PLAINTEXT)
		return SP_ETOOBIG;
	if (!s->has_send_chain)
		return SP_ESTATE;
	if (s->send_counter == UINT32_MAX)
		return SP_ELIMIT;
	sig_chain_step(s->send_chain_key, seed, next_ck);
	if ((rc = message_keys(seed, k)) != SP_OK)
		goto out;
	if ((rc = sig_aes_cbc_encrypt(k, k + 64, pt, len, &ct, &ctlen)) != SP_OK)
		goto out;
	sig_wbuf_init(&w, SIG_MAX_MESSAGE);
	sig_proto_signal_encode(&w, s->ratchet.pub, s->send_counter, s->prev_counter, ct, ctlen);
	if (w.err == SP_OK) {
		compute_mac(mac, k + 32, s->local_identity, s->remote_identity, w.data, w.len);
		sig_wbuf_put(&w, mac, SIG_MAC_LEN);
	}
	if ((rc = sig_wbuf_finish(&w, &sm, &smlen)) != SP_OK)
		goto out;
	if (s->pending) {
		sig_prekey_msg pm;

		memset(&pm, 0, sizeof(pm));
		pm.has_pre_key_id = s->pending_has_opk;
		pm.pre_key_id = s->pending_opk_id;
		memcpy(pm.base_key, s->base_key, SIG_PUB_LEN);
		memcpy(pm.identity_key, s->local_identity, SIG_PUB_LEN);
		pm.message = sm;
		pm.message_len = smlen;
		pm.registration_id = s->local_reg_id;
		pm.signed_pre_key_id = s->pending_spk_id;
		sig_wbuf_init(&w, SIG_MAX_MESSAGE);
		sig_proto_prekey_encode(&w, &pm);
		if ((rc = sig_wbuf_finish(&w, out, outlen)) != SP_OK)
			goto out;
		*type = SIG_MSG_PREKEY;
	} else {
		*out = sm;
		*outlen = smlen;
		sm = NULL;
		*type = SIG_MSG_WHISPER;
	}
	/* commit */
	memcpy(s->send_chain_key, next_ck, 32);
	s->send_counter++;
	rc = SP_OK;
out:
	free(sm);
	free(ct);
	sodium_memzero(seed, sizeof(seed));
	sodium_memzero(next_ck, sizeof(next_ck));
	sodium_memzero(k, sizeof(k));
	return rc;
}

static uint32_t
total_skipped(const sig_session *s)
{
	uint32_t t = 0;

	for (uint32_t i = 0; i < s->nchains; i++)
		t += s->chains[i].nskipped;
	return t;
}

/* Keeps the session-wide skipped-key total bounded, dropping the oldest keys of the
 * oldest chains first. */
static void
enforce_total(sig_session *s)
{
	uint32_t t = total_skipped(s);

	for (uint32_t i = 0; i < s->nchains && t > SIG_MAX_SKIPPED_TOTAL; i++) {
		uint32_t k = t - SIG_MAX_SKIPPED_TOTAL;

		if (k > s->chains[i].nskipped)
			k = s->chains[i].nskipped;
		sig_skip_drop_oldest(s->chains[i].skipped, &s->chains[i].nskipped, k);
		t -= k;
	}
}

/* Advances chain c so that its chain key is for counter `upto`, storing skipped seeds
 * for counters next..upto-1. */
static int
chain_fill(sig_session *s, sig_recv_chain *c, uint32_t upto)
{
	uint8_t seed[32];
	int rc = SP_OK;

	if (upto <= c->next)
		return SP_OK;
	if (c->closed)
		return SP_ESTATE;
	if (upto - c->next >= SIG_MAX_SKIP)
		return SP_ELIMIT;
	while (c->next < upto) {
		sig_chain_step(c->chain_key, seed, c->chain_key);
		if ((rc = sig_skip_add(&c->skipped, &c->nskipped, &c->capskipped, SIG_MAX_SKIP,
		         c->next, seed)) != SP_OK)
			break;
		c->next++;
	}
	sodium_memzero(seed, sizeof(seed));
	enforce_total(s);
	return rc;
}

static sig_recv_chain *
find_chain(sig_session *s, const uint8_t key[SIG_PUB_LEN])
{
	for (uint32_t i = 0; i < s->nchains; i++)
		if (memcmp(s->chains[i].ratchet_key, key, SIG_PUB_LEN) == 0)
			return &s->chains[i];
	return NULL;
}

/* DH ratchet step on receipt of a new ratchet key (libsignal-node maybeStepRatchet). */
static int
ratchet_step(sig_session *s, const uint8_t their[SIG_PUB_LEN], uint32_t previous_counter)
{
	sig_recv_chain *c;
	sig_keypair nk;
	int rc;

	if (s->has_their_ratchet && (c = find_chain(s, s->their_ratchet)) != NULL) {
		if (previous_counter >= c->next && !c->closed &&
		    (rc = chain_fill(s, c, previous_counter + 1)) != SP_OK)
			return rc;
		c->closed = 1;
		sodium_memzero(c->chain_key, sizeof(c->chain_key));
	}
	if (s->nchains == SIG_MAX_RECV_CHAINS) {
		chain_clear(&s->chains[0]);
		memmove(&s->chains[0], &s->chains[1], sizeof(s->chains[0]) * (SIG_MAX_RECV_CHAINS - 1));
		memset(&s->chains[SIG_MAX_RECV_CHAINS - 1], 0, sizeof(s->chains[0]));
		s->nchains--;
	}
	c = &s->chains[s->nchains];
	memset(c, 0, sizeof(*c));
	memcpy(c->ratchet_key, their, SIG_PUB_LEN);
	if ((rc = ratchet_kdf(s->root_key, c->chain_key, s->ratchet.priv, their)) != SP_OK)
		return rc;
	s->nchains++;

	if (s->has_preset) {
		nk = s->preset;
		sig_keypair_wipe(&s->preset);
		s->has_preset = 0;
	} else if ((rc = sig_keypair_generate(&nk)) != SP_OK) {
		return rc;
	}
	if (s->has_send_chain)
		s->prev_counter = s->send_counter ? s->send_counter - 1 : 0;
	s->ratchet = nk;
	sig_keypair_wipe(&nk);
	if ((rc = ratchet_kdf(s->root_key, s->send_chain_key, s->ratchet.priv, their)) != SP_OK)
		return rc;
	s->has_send_chain = 1;
	s->send_counter = 0;
	s->has_their_ratchet = 1;
	memcpy(s->their_ratchet, their, SIG_PUB_LEN);
	return SP_OK;
}

/* Decrypts into the (scratch) session s; the caller commits or discards it. */
static int
decrypt_in(sig_session *s, const uint8_t *msg, size_t len, uint8_t **pt, size_t *ptlen)
{
	sig_signal_msg m;
	sig_recv_chain *c;
	uint8_t seed[32], k[80], mac[32];
	int rc;

	if ((rc = sig_proto_signal_decode(msg, len, &m)) != SP_OK)
		return rc;
	if ((c = find_chain(s, m.ratchet_key)) == NULL) {
		if ((rc = ratchet_step(s, m.ratchet_key, m.previous_counter)) != SP_OK)
			return rc;
		c = &s->chains[s->nchains - 1];
	}
	if (m.counter < c->next) {
		if (sig_skip_take(c->skipped, &c->nskipped, m.counter, seed) != SP_OK)
			return SP_EREPLAY;
	} else {
		if (m.counter == UINT32_MAX)
			return SP_ELIMIT;
		if ((rc = chain_fill(s, c, m.counter)) != SP_OK)
			return rc;
		sig_chain_step(c->chain_key, seed, c->chain_key);
		c->next = m.counter + 1;
	}
	rc = message_keys(seed, k);
	sodium_memzero(seed, sizeof(seed));
	if (rc != SP_OK)
		goto out;
	compute_mac(mac, k + 32, s->remote_identity, s->local_identity, msg, m.mac_input_len);
	if (sodium_memcmp(mac, m.mac, SIG_MAC_LEN) != 0) {
		rc = SP_ECRYPTO;
		goto out;
	}
	if ((rc = sig_aes_cbc_decrypt(k, k + 64, m.ciphertext, m.ciphertext_len, pt, ptlen)) != SP_OK)
		goto out;
	s->pending = 0;
out:
	sodium_memzero(k, sizeof(k));
	sodium_memzero(mac, sizeof(mac));
	return rc;
}

int
sig_session_decrypt(sig_session *s, const uint8_t *msg, size_t len, uint8_t **pt,
    size_t *ptlen)
{
	sig_session *scratch;
	int rc;

	*pt = NULL;
	*ptlen = 0;
	if ((rc = sig_session_dup(&scratch, s)) != SP_OK)
		return rc;
	if ((rc = decrypt_in(scratch, msg, len, pt, ptlen)) != SP_OK) {
		sig_session_free(scratch);
		return rc;
	}
	/* commit: swap contents, free the old state */
	{
		sig_session tmp = *s;

		*s = *scratch;
		*scratch = tmp;
	}
	sig_session_free(scratch);
	return SP_OK;
}
