/*
 * Blobs of the Signal state for the client's store: the whole store, one session, one
 * sender-key record. Each starts with a magic and BLOB_VERSION; fields are big-endian
 * (sig_buf) and every count and length is checked against its limit before use, so a
 * damaged blob yields SP_EMALFORMED / SP_ETRUNC / SP_ETRAILING, never a crash.
 */
#include "client/signal/sig_state.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/internal.h"
#include "client/signal/sig_buf.h"
#include "sp_error.h"

#define STORE_MAGIC 0x53505354u /* "SPST" */
#define PEER_MAGIC 0x53505052u  /* "SPPR" */
#define SESS_MAGIC 0x53505345u  /* "SPSE" */
#define SKR_MAGIC 0x5350534bu   /* "SPSK" */
#define BLOB_VERSION 1u
#define BLOB_LIMIT (64u << 20)

static void
put_keypair(sig_wbuf *w, const sig_keypair *kp)
{
	sig_wbuf_put(w, kp->priv, SIG_PRIV_LEN);
	sig_wbuf_put(w, kp->pub, SIG_PUB_LEN);
}

static int
get_keypair(sig_rbuf *r, sig_keypair *kp)
{
	int rc;

	if ((rc = sig_rbuf_copy(r, kp->priv, SIG_PRIV_LEN)) != SP_OK ||
	    (rc = sig_rbuf_copy(r, kp->pub, SIG_PUB_LEN)) != SP_OK)
		return rc;
	return sig_pubkey_valid(kp->pub, SIG_PUB_LEN) ? SP_OK : SP_EMALFORMED;
}

static int
get_pub(sig_rbuf *r, uint8_t pub[SIG_PUB_LEN])
{
	int rc = sig_rbuf_copy(r, pub, SIG_PUB_LEN);

	if (rc != SP_OK)
		return rc;
	return sig_pubkey_valid(pub, SIG_PUB_LEN) ? SP_OK : SP_EMALFORMED;
}

static int
get_bool(sig_rbuf *r, int *v)
{
	uint8_t b;
	int rc = sig_rbuf_u8(r, &b);

	if (rc != SP_OK)
		return rc;
	if (b > 1)
		return SP_EMALFORMED;
	*v = b;
	return SP_OK;
}

static int
get_header(sig_rbuf *r, uint32_t magic)
{
	uint32_t m, v;
	int rc;

	if ((rc = sig_rbuf_u32(r, &m)) != SP_OK || (rc = sig_rbuf_u32(r, &v)) != SP_OK)
		return rc;
	if (m != magic || v != BLOB_VERSION)
		return SP_EMALFORMED;
	return SP_OK;
}

static void
put_skipped(sig_wbuf *w, const sig_skipped_key *k, uint32_t n)
{
	sig_wbuf_u32(w, n);
	for (uint32_t i = 0; i < n; i++) {
		sig_wbuf_u32(w, k[i].counter);
		sig_wbuf_put(w, k[i].seed, 32);
	}
}

static int
get_skipped(sig_rbuf *r, sig_skipped_key **k, uint32_t *n, uint32_t *cap, uint32_t max)
{
	uint32_t cnt;
	int rc;

	if ((rc = sig_rbuf_u32(r, &cnt)) != SP_OK)
		return rc;
	if (cnt > max)
		return SP_EMALFORMED;
	if (cnt > (r->len - r->off) / 36)
		return SP_ETRUNC;
	*k = NULL;
	*n = *cap = 0;
	if (cnt == 0)
		return SP_OK;
	if ((*k = calloc(cnt, sizeof(**k))) == NULL)
		return SP_ENOMEM;
	*cap = cnt;
	for (uint32_t i = 0; i < cnt; i++) {
		if ((rc = sig_rbuf_u32(r, &(*k)[i].counter)) != SP_OK ||
		    (rc = sig_rbuf_copy(r, (*k)[i].seed, 32)) != SP_OK)
			return rc; /* caller frees */
		(*n)++;
	}
	return SP_OK;
}

static void
put_session(sig_wbuf *w, const sig_session *ss)
{
	sig_wbuf_u32(w, SESS_MAGIC);
	sig_wbuf_u32(w, BLOB_VERSION);
	sig_wbuf_put(w, ss->local_identity, SIG_PUB_LEN);
	sig_wbuf_put(w, ss->remote_identity, SIG_PUB_LEN);
	sig_wbuf_u32(w, ss->local_reg_id);
	sig_wbuf_u32(w, ss->remote_reg_id);
	sig_wbuf_put(w, ss->root_key, 32);
	put_keypair(w, &ss->ratchet);
	sig_wbuf_u8(w, (uint8_t)ss->has_their_ratchet);
	sig_wbuf_put(w, ss->their_ratchet, SIG_PUB_LEN);
	sig_wbuf_u8(w, (uint8_t)ss->has_send_chain);
	sig_wbuf_put(w, ss->send_chain_key, 32);
	sig_wbuf_u32(w, ss->send_counter);
	sig_wbuf_u32(w, ss->prev_counter);
	sig_wbuf_u8(w, (uint8_t)ss->pending);
	sig_wbuf_u8(w, (uint8_t)ss->pending_has_opk);
	sig_wbuf_u32(w, ss->pending_opk_id);
	sig_wbuf_u32(w, ss->pending_spk_id);
	sig_wbuf_put(w, ss->base_key, SIG_PUB_LEN);
	sig_wbuf_u32(w, ss->nchains);
	for (uint32_t i = 0; i < ss->nchains; i++) {
		const sig_recv_chain *c = &ss->chains[i];

		sig_wbuf_put(w, c->ratchet_key, SIG_PUB_LEN);
		sig_wbuf_put(w, c->chain_key, 32);
		sig_wbuf_u32(w, c->next);
		sig_wbuf_u8(w, (uint8_t)c->closed);
		put_skipped(w, c->skipped, c->nskipped);
	}
}

static int
get_session(sig_rbuf *r, sig_session **out)
{
	sig_session *ss = calloc(1, sizeof(*ss));
	uint32_t total = 0;
	int rc;

	*out = NULL;
	if (ss == NULL)
		return SP_ENOMEM;
	if ((rc = get_header(r, SESS_MAGIC)) != SP_OK ||
	    (rc = get_pub(r, ss->local_identity)) != SP_OK ||
	    (rc = get_pub(r, ss->remote_identity)) != SP_OK ||
	    (rc = sig_rbuf_u32(r, &ss->local_reg_id)) != SP_OK ||
	    (rc = sig_rbuf_u32(r, &ss->remote_reg_id)) != SP_OK ||
	    (rc = sig_rbuf_copy(r, ss->root_key, 32)) != SP_OK ||
	    (rc = get_keypair(r, &ss->ratchet)) != SP_OK ||
	    (rc = get_bool(r, &ss->has_their_ratchet)) != SP_OK ||
	    (rc = sig_rbuf_copy(r, ss->their_ratchet, SIG_PUB_LEN)) != SP_OK ||
	    (rc = get_bool(r, &ss->has_send_chain)) != SP_OK ||
	    (rc = sig_rbuf_copy(r, ss->send_chain_key, 32)) != SP_OK ||
	    (rc = sig_rbuf_u32(r, &ss->send_counter)) != SP_OK ||
	    (rc = sig_rbuf_u32(r, &ss->prev_counter)) != SP_OK ||
	    (rc = get_bool(r, &ss->pending)) != SP_OK ||
	    (rc = get_bool(r, &ss->pending_has_opk)) != SP_OK ||
	    (rc = sig_rbuf_u32(r, &ss->pending_opk_id)) != SP_OK ||
	    (rc = sig_rbuf_u32(r, &ss->pending_spk_id)) != SP_OK ||
	    (rc = sig_rbuf_copy(r, ss->base_key, SIG_PUB_LEN)) != SP_OK)
		goto fail;
	if (ss->has_their_ratchet && !sig_pubkey_valid(ss->their_ratchet, SIG_PUB_LEN)) {
		rc = SP_EMALFORMED;
		goto fail;
	}
	{
		uint32_t n;

		if ((rc = sig_rbuf_u32(r, &n)) != SP_OK)
			goto fail;
		if (n > SIG_MAX_RECV_CHAINS) {
			rc = SP_EMALFORMED;
			goto fail;
		}
		for (uint32_t i = 0; i < n; i++) {
			sig_recv_chain *c = &ss->chains[i];

			ss->nchains++;
			if ((rc = get_pub(r, c->ratchet_key)) != SP_OK ||
			    (rc = sig_rbuf_copy(r, c->chain_key, 32)) != SP_OK ||
			    (rc = sig_rbuf_u32(r, &c->next)) != SP_OK ||
			    (rc = get_bool(r, &c->closed)) != SP_OK ||
			    (rc = get_skipped(r, &c->skipped, &c->nskipped, &c->capskipped, SIG_MAX_SKIP)) != SP_OK)
				goto fail;
			total += c->nskipped;
		}
	}
	if (total > SIG_MAX_SKIPPED_TOTAL) {
		rc = SP_EMALFORMED;
		goto fail;
	}
	*out = ss;
	return SP_OK;
fail:
	sig_session_free(ss);
	return rc;
}

static void
put_sk_record(sig_wbuf *w, const sig_sk_record *rec)
{
	sig_wbuf_u32(w, SKR_MAGIC);
	sig_wbuf_u32(w, BLOB_VERSION);
	sig_wbuf_u32(w, rec->nstates);
	for (uint32_t i = 0; i < rec->nstates; i++) {
		const sig_sk_state *st = &rec->states[i];

		sig_wbuf_put(w, st->distribution_id, 16);
		sig_wbuf_u32(w, st->chain_id);
		sig_wbuf_u32(w, st->iteration);
		sig_wbuf_put(w, st->chain_key, 32);
		sig_wbuf_put(w, st->signing_pub, SIG_PUB_LEN);
		sig_wbuf_u8(w, (uint8_t)st->has_signing_priv);
		sig_wbuf_put(w, st->signing_priv, SIG_PRIV_LEN);
		put_skipped(w, st->skipped, st->nskipped);
	}
}

static int
get_sk_record(sig_rbuf *r, sig_sk_record **out)
{
	sig_sk_record *rec = sig_sk_record_new();
	uint32_t n;
	int rc;

	*out = NULL;
	if (rec == NULL)
		return SP_ENOMEM;
	if ((rc = get_header(r, SKR_MAGIC)) != SP_OK || (rc = sig_rbuf_u32(r, &n)) != SP_OK)
		goto fail;
	if (n > SIG_SK_MAX_STATES) {
		rc = SP_EMALFORMED;
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++) {
		sig_sk_state *st = &rec->states[i];

		rec->nstates++;
		if ((rc = sig_rbuf_copy(r, st->distribution_id, 16)) != SP_OK ||
		    (rc = sig_rbuf_u32(r, &st->chain_id)) != SP_OK ||
		    (rc = sig_rbuf_u32(r, &st->iteration)) != SP_OK ||
		    (rc = sig_rbuf_copy(r, st->chain_key, 32)) != SP_OK ||
		    (rc = get_pub(r, st->signing_pub)) != SP_OK ||
		    (rc = get_bool(r, &st->has_signing_priv)) != SP_OK ||
		    (rc = sig_rbuf_copy(r, st->signing_priv, SIG_PRIV_LEN)) != SP_OK ||
		    (rc = get_skipped(r, &st->skipped, &st->nskipped, &st->capskipped, SIG_SK_MAX_KEYS)) != SP_OK)
			goto fail;
	}
	*out = rec;
	return SP_OK;
fail:
	sig_sk_record_free(rec);
	return rc;
}

static int
finish_exact(sig_rbuf *r)
{
	return r->off == r->len ? SP_OK : SP_ETRAILING;
}

int
sig_state_session_serialize(const sig_session *ss, uint8_t **out, size_t *outlen)
{
	sig_wbuf w;

	sig_wbuf_init(&w, BLOB_LIMIT);
	put_session(&w, ss);
	return sig_wbuf_finish(&w, out, outlen);
}

int
sig_state_session_deserialize(sig_session **out, const uint8_t *in, size_t len)
{
	sig_rbuf r;
	int rc;

	sig_rbuf_init(&r, in, len);
	if ((rc = get_session(&r, out)) != SP_OK)
		return rc;
	if ((rc = finish_exact(&r)) != SP_OK) {
		sig_session_free(*out);
		*out = NULL;
	}
	return rc;
}

int
sig_state_sk_serialize(const sig_sk_record *rec, uint8_t **out, size_t *outlen)
{
	sig_wbuf w;

	sig_wbuf_init(&w, BLOB_LIMIT);
	put_sk_record(&w, rec);
	return sig_wbuf_finish(&w, out, outlen);
}

int
sig_state_sk_deserialize(sig_sk_record **out, const uint8_t *in, size_t len)
{
	sig_rbuf r;
	int rc;

	sig_rbuf_init(&r, in, len);
	if ((rc = get_sk_record(&r, out)) != SP_OK)
		return rc;
	if ((rc = finish_exact(&r)) != SP_OK) {
		sig_sk_record_free(*out);
		*out = NULL;
	}
	return rc;
}

static void
put_str(sig_wbuf *w, const char *str)
{
	sig_wbuf_lenbytes(w, str, strlen(str));
}

/* A name: 1..SIG_MAX_NAME bytes without NUL; *out malloc'd. */
static int
get_str(sig_rbuf *r, char **out)
{
	const uint8_t *p;
	size_t n;
	int rc;

	*out = NULL;
	if ((rc = sig_rbuf_lenbytes(r, &p, &n, SIG_MAX_NAME)) != SP_OK)
		return rc;
	if (n == 0 || memchr(p, 0, n) != NULL)
		return SP_EMALFORMED;
	if ((*out = malloc(n + 1)) == NULL)
		return SP_ENOMEM;
	memcpy(*out, p, n);
	(*out)[n] = 0;
	return SP_OK;
}

int
sig_store_serialize(const sig_store *s, uint8_t **out, size_t *outlen)
{
	sig_wbuf w;

	sig_wbuf_init(&w, BLOB_LIMIT);
	sig_wbuf_u32(&w, STORE_MAGIC);
	sig_wbuf_u32(&w, BLOB_VERSION);
	put_keypair(&w, &s->identity);
	sig_wbuf_u32(&w, s->reg_id);
	sig_wbuf_u32(&w, s->device_id);
	sig_wbuf_u32(&w, s->next_prekey_id);
	sig_wbuf_u32(&w, s->nspks);
	for (uint32_t i = 0; i < s->nspks; i++) {
		sig_wbuf_u32(&w, s->spks[i].id);
		put_keypair(&w, &s->spks[i].kp);
		sig_wbuf_put(&w, s->spks[i].sig, SIG_SIG_LEN);
	}
	sig_wbuf_u32(&w, s->nprekeys);
	for (uint32_t i = 0; i < s->nprekeys; i++) {
		sig_wbuf_u32(&w, s->prekeys[i].id);
		sig_wbuf_u8(&w, (uint8_t)s->prekeys[i].handed_out);
		put_keypair(&w, &s->prekeys[i].kp);
	}
	sig_wbuf_u32(&w, s->npeers);
	for (uint32_t i = 0; i < s->npeers; i++) {
		const sig_peer_rec *p = s->peers[i];

		sig_wbuf_u32(&w, PEER_MAGIC);
		put_str(&w, p->name);
		sig_wbuf_u8(&w, (uint8_t)p->has_identity);
		sig_wbuf_put(&w, p->identity, SIG_PUB_LEN);
		sig_wbuf_u32(&w, p->nsessions);
		for (uint32_t j = 0; j < p->nsessions; j++)
			put_session(&w, p->sessions[j]);
	}
	sig_wbuf_u32(&w, s->nsks);
	for (uint32_t i = 0; i < s->nsks; i++) {
		put_str(&w, s->sks[i].group);
		sig_wbuf_u8(&w, s->sks[i].sender != NULL);
		if (s->sks[i].sender != NULL)
			put_str(&w, s->sks[i].sender);
		put_sk_record(&w, s->sks[i].rec);
	}
	return sig_wbuf_finish(&w, out, outlen);
}

int
sig_store_deserialize(sig_store **out, const uint8_t *in, size_t len)
{
	sig_store *s = NULL;
	sig_keypair id;
	sig_rbuf r;
	uint32_t reg, dev, n, m;
	int rc;

	*out = NULL;
	sig_rbuf_init(&r, in, len);
	if ((rc = get_header(&r, STORE_MAGIC)) != SP_OK || (rc = get_keypair(&r, &id)) != SP_OK ||
	    (rc = sig_rbuf_u32(&r, &reg)) != SP_OK || (rc = sig_rbuf_u32(&r, &dev)) != SP_OK)
		goto fail;
	rc = sig_store_new(&s, &id, reg, dev);
	sig_keypair_wipe(&id);
	if (rc != SP_OK)
		goto fail;
	if ((rc = sig_rbuf_u32(&r, &s->next_prekey_id)) != SP_OK || (rc = sig_rbuf_u32(&r, &n)) != SP_OK)
		goto fail;
	if (n > SIG_MAX_SIGNED_PREKEYS) {
		rc = SP_EMALFORMED;
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++) {
		sig_spk_rec *k = &s->spks[i];

		s->nspks++;
		if ((rc = sig_rbuf_u32(&r, &k->id)) != SP_OK || (rc = get_keypair(&r, &k->kp)) != SP_OK ||
		    (rc = sig_rbuf_copy(&r, k->sig, SIG_SIG_LEN)) != SP_OK)
			goto fail;
	}
	if ((rc = sig_rbuf_u32(&r, &n)) != SP_OK)
		goto fail;
	if (n > SIG_MAX_PREKEYS) {
		rc = SP_EMALFORMED;
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++) {
		sig_prekey_rec pk;

		if ((rc = sig_rbuf_u32(&r, &pk.id)) != SP_OK || (rc = get_bool(&r, &pk.handed_out)) != SP_OK ||
		    (rc = get_keypair(&r, &pk.kp)) != SP_OK)
			goto fail;
		rc = sig_state_grow((void **)&s->prekeys, &s->capprekeys, s->nprekeys, sizeof(*s->prekeys), SIG_MAX_PREKEYS);
		if (rc == SP_OK)
			s->prekeys[s->nprekeys++] = pk;
		sodium_memzero(&pk, sizeof(pk));
		if (rc != SP_OK)
			goto fail;
	}
	if ((rc = sig_rbuf_u32(&r, &n)) != SP_OK)
		goto fail;
	if (n > SIG_MAX_PEERS) {
		rc = SP_EMALFORMED;
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++) {
		sig_peer_rec *p = calloc(1, sizeof(*p));
		uint32_t magic;

		if (p == NULL) {
			rc = SP_ENOMEM;
			goto fail;
		}
		if ((rc = sig_state_peer_insert(s, p)) != SP_OK) {
			free(p);
			goto fail;
		}
		if ((rc = sig_rbuf_u32(&r, &magic)) != SP_OK)
			goto fail;
		if (magic != PEER_MAGIC) {
			rc = SP_EMALFORMED;
			goto fail;
		}
		if ((rc = get_str(&r, &p->name)) != SP_OK || (rc = get_bool(&r, &p->has_identity)) != SP_OK ||
		    (rc = sig_rbuf_copy(&r, p->identity, SIG_PUB_LEN)) != SP_OK ||
		    (rc = sig_rbuf_u32(&r, &m)) != SP_OK)
			goto fail;
		if (m > SIG_MAX_SESSIONS || sig_state_peer_find(s, p->name) != p) {
			rc = SP_EMALFORMED;
			goto fail;
		}
		for (uint32_t j = 0; j < m; j++) {
			if ((rc = get_session(&r, &p->sessions[j])) != SP_OK)
				goto fail;
			p->nsessions++;
		}
	}
	if ((rc = sig_rbuf_u32(&r, &n)) != SP_OK)
		goto fail;
	if (n > SIG_MAX_GROUP_KEYS) {
		rc = SP_EMALFORMED;
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++) {
		sig_sk_entry e;
		int has_sender;

		memset(&e, 0, sizeof(e));
		if ((rc = get_str(&r, &e.group)) != SP_OK || (rc = get_bool(&r, &has_sender)) != SP_OK ||
		    (has_sender && (rc = get_str(&r, &e.sender)) != SP_OK) ||
		    (rc = get_sk_record(&r, &e.rec)) != SP_OK ||
		    (rc = sig_state_sk_find(s, e.group, e.sender) != NULL ? SP_EMALFORMED : SP_OK) != SP_OK ||
		    (rc = sig_state_grow((void **)&s->sks, &s->capsks, s->nsks, sizeof(*s->sks), SIG_MAX_GROUP_KEYS)) != SP_OK) {
			free(e.group);
			free(e.sender);
			sig_sk_record_free(e.rec);
			goto fail;
		}
		s->sks[s->nsks++] = e;
	}
	if ((rc = finish_exact(&r)) != SP_OK)
		goto fail;
	*out = s;
	return SP_OK;
fail:
	sig_store_free(s);
	return rc;
}
