#include "client/signal/sig_senderkey.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/internal.h"
#include "client/signal/sig_kdf.h"
#include "client/signal/sig_proto.h"
#include "sp_error.h"

sig_sk_record *
sig_sk_record_new(void)
{
	return calloc(1, sizeof(sig_sk_record));
}

static void
state_clear(sig_sk_state *st)
{
	sig_skip_free(&st->skipped, &st->nskipped, &st->capskipped);
	sodium_memzero(st, sizeof(*st));
}

void
sig_sk_record_free(sig_sk_record *r)
{
	if (r == NULL)
		return;
	for (uint32_t i = 0; i < r->nstates; i++)
		state_clear(&r->states[i]);
	sodium_memzero(r, sizeof(*r));
	free(r);
}

int
sig_sk_record_dup(sig_sk_record **out, const sig_sk_record *r)
{
	sig_sk_record *d = sig_sk_record_new();

	*out = NULL;
	if (d == NULL)
		return SP_ENOMEM;
	memcpy(d, r, sizeof(*d));
	for (uint32_t i = 0; i < SIG_SK_MAX_STATES; i++) {
		d->states[i].skipped = NULL;
		d->states[i].capskipped = 0;
	}
	for (uint32_t i = 0; i < r->nstates; i++) {
		if (sig_skip_dup(&d->states[i].skipped, &d->states[i].capskipped,
		        r->states[i].skipped, r->states[i].nskipped) != SP_OK) {
			sig_sk_record_free(d);
			return SP_ENOMEM;
		}
	}
	*out = d;
	return SP_OK;
}

unsigned
sig_sk_record_count(const sig_sk_record *r)
{
	return r->nstates;
}

/* Puts st (moved in) at the front, dropping the oldest state when full. */
static void
push_front(sig_sk_record *r, sig_sk_state *st)
{
	if (r->nstates == SIG_SK_MAX_STATES) {
		state_clear(&r->states[SIG_SK_MAX_STATES - 1]);
		r->nstates--;
	}
	memmove(&r->states[1], &r->states[0], sizeof(r->states[0]) * r->nstates);
	r->states[0] = *st;
	r->nstates++;
	memset(st, 0, sizeof(*st));
}

static void
remove_at(sig_sk_record *r, uint32_t i)
{
	state_clear(&r->states[i]);
	memmove(&r->states[i], &r->states[i + 1], sizeof(r->states[0]) * (r->nstates - i - 1));
	memset(&r->states[r->nstates - 1], 0, sizeof(r->states[0]));
	r->nstates--;
}

int
sig_sk_rotate(sig_sk_record *own, const uint8_t *distribution_id)
{
	sig_sk_state st;
	sig_keypair kp;
	int rc;

	if (sig_crypto_init() != SP_OK)
		return SP_ECRYPTO;
	memset(&st, 0, sizeof(st));
	if (distribution_id != NULL) {
		memcpy(st.distribution_id, distribution_id, 16);
	} else if (own->nstates > 0) {
		memcpy(st.distribution_id, own->states[0].distribution_id, 16);
	} else {
		randombytes_buf(st.distribution_id, 16);
		st.distribution_id[6] = (uint8_t)((st.distribution_id[6] & 0x0f) | 0x40);
		st.distribution_id[8] = (uint8_t)((st.distribution_id[8] & 0x3f) | 0x80);
	}
	do {
		st.chain_id = randombytes_random() >> 1;
		for (uint32_t i = 0; i < own->nstates; i++)
			if (own->states[i].chain_id == st.chain_id)
				st.chain_id = 0;
	} while (st.chain_id == 0);
	st.iteration = 0;
	randombytes_buf(st.chain_key, 32);
	if ((rc = sig_keypair_generate(&kp)) != SP_OK) {
		sodium_memzero(&st, sizeof(st));
		return rc;
	}
	memcpy(st.signing_pub, kp.pub, SIG_PUB_LEN);
	memcpy(st.signing_priv, kp.priv, SIG_PRIV_LEN);
	st.has_signing_priv = 1;
	sig_keypair_wipe(&kp);
	push_front(own, &st);
	return SP_OK;
}

int
sig_sk_distribution_id(const sig_sk_record *r, uint8_t id[16])
{
	if (r->nstates == 0)
		return SP_ESTATE;
	memcpy(id, r->states[0].distribution_id, 16);
	return SP_OK;
}

int
sig_sk_distribution(const sig_sk_record *own, uint8_t **out, size_t *outlen)
{
	const sig_sk_state *st;
	sig_skdm m;
	sig_wbuf w;
	int rc;

	*out = NULL;
	*outlen = 0;
	if (own->nstates == 0 || !own->states[0].has_signing_priv)
		return SP_ESTATE;
	st = &own->states[0];
	memcpy(m.distribution_id, st->distribution_id, 16);
	m.chain_id = st->chain_id;
	m.iteration = st->iteration;
	memcpy(m.chain_key, st->chain_key, 32);
	memcpy(m.signing_key, st->signing_pub, SIG_PUB_LEN);
	sig_wbuf_init(&w, 4096);
	sig_proto_skdm_encode(&w, &m);
	rc = sig_wbuf_finish(&w, out, outlen);
	sodium_memzero(&m, sizeof(m));
	return rc;
}

int
sig_sk_process(sig_sk_record *r, const uint8_t *skdm, size_t len)
{
	sig_skdm m;
	sig_sk_state st;
	int rc;

	if ((rc = sig_proto_skdm_decode(skdm, len, &m)) != SP_OK)
		return rc;
	for (uint32_t i = 0; i < r->nstates; i++) {
		sig_sk_state *o = &r->states[i];

		if (o->chain_id != m.chain_id || memcmp(o->distribution_id, m.distribution_id, 16) != 0)
			continue;
		if (memcmp(o->signing_pub, m.signing_key, SIG_PUB_LEN) == 0) {
			sodium_memzero(&m, sizeof(m));
			return SP_OK; /* already known */
		}
		remove_at(r, i);
		i--;
	}
	memset(&st, 0, sizeof(st));
	memcpy(st.distribution_id, m.distribution_id, 16);
	st.chain_id = m.chain_id;
	st.iteration = m.iteration;
	memcpy(st.chain_key, m.chain_key, 32);
	memcpy(st.signing_pub, m.signing_key, SIG_PUB_LEN);
	push_front(r, &st);
	sodium_memzero(&m, sizeof(m));
	return SP_OK;
}

/* iv = k[0:16], cipher key = k[16:48] */
static int
sk_message_keys(const uint8_t seed[32], uint8_t k[48])
{
	return sig_hkdf(k, 48, seed, 32, NULL, 0, "WhisperGroup");
}

int
sig_sk_encrypt(sig_sk_record *own, const uint8_t *pt, size_t len, uint8_t **out,
    size_t *outlen)
{
	sig_sk_state *st;
	uint8_t seed[32], next_ck[32], k[48], sig[SIG_SIG_LEN];
	uint8_t *ct = NULL;
	size_t ctlen = 0;
	sig_wbuf w;
	int rc;

	*out = NULL;
	*outlen = 0;
	if (len > SIG_MAX_MESSAGE - 4096)
		return SP_ETOOBIG;
	if (own->nstates == 0 || !own->states[0].has_signing_priv)
		return SP_ESTATE;
	st = &own->states[0];
	if (st->iteration == UINT32_MAX)
		return SP_ELIMIT;
	sig_chain_step(st->chain_key, seed, next_ck);
	if ((rc = sk_message_keys(seed, k)) != SP_OK)
		goto out;
	if ((rc = sig_aes_cbc_encrypt(k + 16, k, pt, len, &ct, &ctlen)) != SP_OK)
		goto out;
	sig_wbuf_init(&w, SIG_MAX_MESSAGE);
	sig_proto_sk_msg_encode(&w, st->distribution_id, st->chain_id, st->iteration, ct, ctlen);
	if (w.err == SP_OK) {
		if ((rc = sig_curve_sign(sig, st->signing_priv, w.data, w.len)) != SP_OK) {
			sig_wbuf_dispose(&w);
			goto out;
		}
		sig_wbuf_put(&w, sig, SIG_SIG_LEN);
	}
	if ((rc = sig_wbuf_finish(&w, out, outlen)) != SP_OK)
		goto out;
	memcpy(st->chain_key, next_ck, 32);
	st->iteration++;
out:
	free(ct);
	sodium_memzero(seed, sizeof(seed));
	sodium_memzero(next_ck, sizeof(next_ck));
	sodium_memzero(k, sizeof(k));
	return rc;
}

static int
decrypt_in(sig_sk_record *r, const uint8_t *msg, size_t len, uint8_t **pt, size_t *ptlen)
{
	sig_sk_msg m;
	sig_sk_state *st = NULL;
	uint8_t seed[32], k[48];
	int rc;

	if ((rc = sig_proto_sk_msg_decode(msg, len, &m)) != SP_OK)
		return rc;
	for (uint32_t i = 0; i < r->nstates; i++) {
		if (r->states[i].chain_id == m.chain_id &&
		    memcmp(r->states[i].distribution_id, m.distribution_id, 16) == 0) {
			st = &r->states[i];
			break;
		}
	}
	if (st == NULL)
		return SP_ENOTFOUND;
	if (sig_curve_verify(st->signing_pub, msg, m.signed_len, m.signature) != SP_OK)
		return SP_EBADSIG;
	if (m.iteration < st->iteration) {
		if (sig_skip_take(st->skipped, &st->nskipped, m.iteration, seed) != SP_OK)
			return SP_EREPLAY;
	} else {
		if (m.iteration - st->iteration > SIG_SK_MAX_FORWARD || m.iteration == UINT32_MAX)
			return SP_ELIMIT;
		while (st->iteration < m.iteration) {
			sig_chain_step(st->chain_key, seed, st->chain_key);
			if ((rc = sig_skip_add(&st->skipped, &st->nskipped, &st->capskipped,
			         SIG_SK_MAX_KEYS, st->iteration, seed)) != SP_OK) {
				sodium_memzero(seed, sizeof(seed));
				return rc;
			}
			st->iteration++;
		}
		sig_chain_step(st->chain_key, seed, st->chain_key);
		st->iteration++;
	}
	rc = sk_message_keys(seed, k);
	sodium_memzero(seed, sizeof(seed));
	if (rc == SP_OK)
		rc = sig_aes_cbc_decrypt(k + 16, k, m.ciphertext, m.ciphertext_len, pt, ptlen);
	sodium_memzero(k, sizeof(k));
	return rc;
}

int
sig_sk_decrypt(sig_sk_record *r, const uint8_t *msg, size_t len, uint8_t **pt, size_t *ptlen)
{
	sig_sk_record *scratch;
	int rc;

	*pt = NULL;
	*ptlen = 0;
	if ((rc = sig_sk_record_dup(&scratch, r)) != SP_OK)
		return rc;
	if ((rc = decrypt_in(scratch, msg, len, pt, ptlen)) != SP_OK) {
		sig_sk_record_free(scratch);
		return rc;
	}
	{
		sig_sk_record tmp = *r;

		*r = *scratch;
		*scratch = tmp;
	}
	sig_sk_record_free(scratch);
	return SP_OK;
}
