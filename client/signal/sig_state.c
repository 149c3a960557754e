/*
 * A party's Signal store (sig_state.h): identity, signed and one-time prekeys, peers
 * with their trusted identity and sessions, sender keys; and the store-level encrypt /
 * decrypt that picks or starts the right session. Blobs of it: sig_state_codec.c.
 */
#include "client/signal/sig_state.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/internal.h"
#include "sp_error.h"

/* Grows a typed array to hold n+1 elements. */
int
sig_state_grow(void **arr, uint32_t *cap, uint32_t n, size_t elem, uint32_t max)
{
	uint32_t ncap;
	void *na;

	if (n < *cap)
		return SP_OK;
	if (n >= max)
		return SP_ELIMIT;
	ncap = *cap ? *cap * 2 : 8;
	if (ncap > max)
		ncap = max;
	na = calloc(ncap, elem);
	if (na == NULL)
		return SP_ENOMEM;
	if (*arr != NULL) {
		memcpy(na, *arr, (size_t)n * elem);
		sodium_memzero(*arr, (size_t)*cap * elem);
		free(*arr);
	}
	*arr = na;
	*cap = ncap;
	return SP_OK;
}

static int
name_ok(const char *n)
{
	size_t l;

	if (n == NULL)
		return 0;
	l = strnlen(n, SIG_MAX_NAME + 1);
	return l > 0 && l <= SIG_MAX_NAME;
}

static void
peer_free(sig_peer_rec *p)
{
	if (p == NULL)
		return;
	for (uint32_t i = 0; i < p->nsessions; i++)
		sig_session_free(p->sessions[i]);
	free(p->name);
	sodium_memzero(p, sizeof(*p));
	free(p);
}

sig_peer_rec *
sig_state_peer_find(const sig_store *s, const char *name)
{
	for (uint32_t i = 0; i < s->npeers; i++)
		if (strcmp(s->peers[i]->name, name) == 0)
			return s->peers[i];
	return NULL;
}

/* Adds p (ownership taken on success) to the store. */
int
sig_state_peer_insert(sig_store *s, sig_peer_rec *p)
{
	int rc = sig_state_grow((void **)&s->peers, &s->cappeers, s->npeers, sizeof(*s->peers), SIG_MAX_PEERS);

	if (rc != SP_OK)
		return rc;
	s->peers[s->npeers++] = p;
	return SP_OK;
}

static sig_peer_rec *
peer_new(const char *name)
{
	sig_peer_rec *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return NULL;
	if ((p->name = strdup(name)) == NULL) {
		free(p);
		return NULL;
	}
	return p;
}

/* Makes ss (ownership taken) the current session of p, archiving older ones. */
static void
peer_push_session(sig_peer_rec *p, sig_session *ss)
{
	if (p->nsessions == SIG_MAX_SESSIONS) {
		sig_session_free(p->sessions[SIG_MAX_SESSIONS - 1]);
		p->nsessions--;
	}
	memmove(&p->sessions[1], &p->sessions[0], sizeof(p->sessions[0]) * p->nsessions);
	p->sessions[0] = ss;
	p->nsessions++;
}

int
sig_store_new(sig_store **out, const sig_keypair *identity, uint32_t reg_id, uint32_t device_id)
{
	sig_store *s;

	*out = NULL;
	if (sig_crypto_init() != SP_OK)
		return SP_ECRYPTO;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return SP_ENOMEM;
	s->identity = *identity;
	s->reg_id = reg_id;
	s->device_id = device_id;
	s->next_prekey_id = 1;
	*out = s;
	return SP_OK;
}

int
sig_store_generate(sig_store **out, uint32_t reg_id, uint32_t device_id, uint32_t n_prekeys)
{
	sig_keypair id, spk;
	sig_store *s = NULL;
	int rc;

	*out = NULL;
	if ((rc = sig_keypair_generate(&id)) != SP_OK)
		return rc;
	rc = sig_store_new(&s, &id, reg_id, device_id);
	sig_keypair_wipe(&id);
	if (rc != SP_OK)
		return rc;
	if ((rc = sig_keypair_generate(&spk)) != SP_OK)
		goto fail;
	rc = sig_store_add_signed_prekey(s, 1, &spk, NULL);
	sig_keypair_wipe(&spk);
	if (rc != SP_OK)
		goto fail;
	if ((rc = sig_store_generate_prekeys(s, n_prekeys)) != SP_OK)
		goto fail;
	*out = s;
	return SP_OK;
fail:
	sig_store_free(s);
	return rc;
}

void
sig_store_free(sig_store *s)
{
	if (s == NULL)
		return;
	for (uint32_t i = 0; i < s->npeers; i++)
		peer_free(s->peers[i]);
	free(s->peers);
	for (uint32_t i = 0; i < s->nsks; i++) {
		free(s->sks[i].group);
		free(s->sks[i].sender);
		sig_sk_record_free(s->sks[i].rec);
	}
	free(s->sks);
	if (s->prekeys != NULL) {
		sodium_memzero(s->prekeys, (size_t)s->capprekeys * sizeof(*s->prekeys));
		free(s->prekeys);
	}
	sodium_memzero(s, sizeof(*s));
	free(s);
}

const sig_keypair *
sig_store_identity(const sig_store *s)
{
	return &s->identity;
}

uint32_t
sig_store_registration_id(const sig_store *s)
{
	return s->reg_id;
}

int
sig_store_add_signed_prekey(sig_store *s, uint32_t id, const sig_keypair *kp, const uint8_t *sig)
{
	sig_spk_rec r;
	int rc;

	for (uint32_t i = 0; i < s->nspks; i++)
		if (s->spks[i].id == id)
			return SP_EEXIST;
	r.id = id;
	r.kp = *kp;
	if (sig != NULL)
		memcpy(r.sig, sig, SIG_SIG_LEN);
	else if ((rc = sig_curve_sign(r.sig, s->identity.priv, kp->pub, SIG_PUB_LEN)) != SP_OK)
		return rc;
	if (s->nspks == SIG_MAX_SIGNED_PREKEYS) {
		sodium_memzero(&s->spks[SIG_MAX_SIGNED_PREKEYS - 1], sizeof(s->spks[0]));
		s->nspks--;
	}
	memmove(&s->spks[1], &s->spks[0], sizeof(s->spks[0]) * s->nspks);
	s->spks[0] = r;
	s->nspks++;
	sodium_memzero(&r, sizeof(r));
	return SP_OK;
}

int
sig_store_add_prekey(sig_store *s, uint32_t id, const sig_keypair *kp)
{
	int rc;

	if (id == 0)
		return SP_EINVAL; /* 0 reads as "no one-time prekey" on the wire */
	for (uint32_t i = 0; i < s->nprekeys; i++)
		if (s->prekeys[i].id == id)
			return SP_EEXIST;
	if ((rc = sig_state_grow((void **)&s->prekeys, &s->capprekeys, s->nprekeys, sizeof(*s->prekeys),
	         SIG_MAX_PREKEYS)) != SP_OK)
		return rc;
	s->prekeys[s->nprekeys].id = id;
	s->prekeys[s->nprekeys].handed_out = 0;
	s->prekeys[s->nprekeys].kp = *kp;
	s->nprekeys++;
	if (id >= s->next_prekey_id)
		s->next_prekey_id = id + 1;
	return SP_OK;
}

int
sig_store_generate_prekeys(sig_store *s, uint32_t n)
{
	sig_keypair kp;
	int rc = SP_OK;

	if (n > SIG_MAX_PREKEYS - s->nprekeys)
		return SP_ELIMIT;
	for (uint32_t i = 0; i < n && rc == SP_OK; i++) {
		if (s->next_prekey_id == 0 || s->next_prekey_id > 0xffffff)
			s->next_prekey_id = 1;
		if ((rc = sig_keypair_generate(&kp)) != SP_OK)
			break;
		rc = sig_store_add_prekey(s, s->next_prekey_id, &kp);
		sig_keypair_wipe(&kp);
	}
	return rc;
}

uint32_t
sig_store_prekeys_available(const sig_store *s)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < s->nprekeys; i++)
		n += !s->prekeys[i].handed_out;
	return n;
}

int
sig_store_bundle(sig_store *s, sig_bundle *b, int take_prekey)
{
	memset(b, 0, sizeof(*b));
	if (s->nspks == 0)
		return SP_ESTATE;
	b->registration_id = s->reg_id;
	b->device_id = s->device_id;
	memcpy(b->identity_key, s->identity.pub, SIG_PUB_LEN);
	b->signed_prekey_id = s->spks[0].id;
	memcpy(b->signed_prekey, s->spks[0].kp.pub, SIG_PUB_LEN);
	memcpy(b->signed_prekey_sig, s->spks[0].sig, SIG_SIG_LEN);
	if (take_prekey) {
		for (uint32_t i = 0; i < s->nprekeys; i++) {
			if (s->prekeys[i].handed_out)
				continue;
			s->prekeys[i].handed_out = 1;
			b->has_prekey = 1;
			b->prekey_id = s->prekeys[i].id;
			memcpy(b->prekey, s->prekeys[i].kp.pub, SIG_PUB_LEN);
			break;
		}
	}
	return SP_OK;
}

const sig_session *
sig_store_current_session(const sig_store *s, const char *peer)
{
	const sig_peer_rec *p = sig_state_peer_find(s, peer);

	return p != NULL && p->nsessions > 0 ? p->sessions[0] : NULL;
}

int
sig_store_has_session(const sig_store *s, const char *peer)
{
	const sig_peer_rec *p = sig_state_peer_find(s, peer);

	return p != NULL && p->nsessions > 0;
}

int
sig_store_peer_identity(const sig_store *s, const char *peer, uint8_t id[SIG_PUB_LEN])
{
	const sig_peer_rec *p = sig_state_peer_find(s, peer);

	if (p == NULL || !p->has_identity)
		return SP_ENOTFOUND;
	memcpy(id, p->identity, SIG_PUB_LEN);
	return SP_OK;
}

int
sig_store_trust_identity(sig_store *s, const char *peer, const uint8_t id[SIG_PUB_LEN])
{
	sig_peer_rec *p;
	int rc;

	if (!name_ok(peer) || !sig_pubkey_valid(id, SIG_PUB_LEN))
		return SP_EINVAL;
	if ((p = sig_state_peer_find(s, peer)) == NULL) {
		if ((p = peer_new(peer)) == NULL)
			return SP_ENOMEM;
		if ((rc = sig_state_peer_insert(s, p)) != SP_OK) {
			peer_free(p);
			return rc;
		}
	}
	for (uint32_t i = 0; i < p->nsessions; i++) {
		if (memcmp(sig_session_remote_identity(p->sessions[i]), id, SIG_PUB_LEN) == 0)
			continue;
		sig_session_free(p->sessions[i]);
		memmove(&p->sessions[i], &p->sessions[i + 1], sizeof(p->sessions[0]) * (p->nsessions - i - 1));
		p->nsessions--;
		i--;
	}
	memcpy(p->identity, id, SIG_PUB_LEN);
	p->has_identity = 1;
	return SP_OK;
}

int
sig_store_encrypt(sig_store *s, const char *peer, const sig_bundle *bundle, const uint8_t *pt,
    size_t len, uint8_t **out, size_t *outlen, int *type)
{
	sig_peer_rec *p, *fresh = NULL;
	sig_session *ss = NULL;
	int rc;

	*out = NULL;
	*outlen = 0;
	if (!name_ok(peer))
		return SP_EINVAL;
	p = sig_state_peer_find(s, peer);
	if (bundle == NULL) {
		if (p == NULL || p->nsessions == 0)
			return SP_ENOTFOUND;
		return sig_session_encrypt(p->sessions[0], pt, len, out, outlen, type);
	}
	if (p != NULL && p->has_identity && sodium_memcmp(p->identity, bundle->identity_key, SIG_PUB_LEN) != 0)
		return SP_EIDENTITY;
	if ((rc = sig_session_init_alice(&ss, &s->identity, s->reg_id, bundle, NULL, NULL)) != SP_OK)
		return rc;
	if ((rc = sig_session_encrypt(ss, pt, len, out, outlen, type)) != SP_OK)
		goto fail;
	if (p == NULL) {
		if ((fresh = peer_new(peer)) == NULL) {
			rc = SP_ENOMEM;
			goto fail;
		}
		if ((rc = sig_state_peer_insert(s, fresh)) != SP_OK)
			goto fail;
		p = fresh;
	}
	memcpy(p->identity, bundle->identity_key, SIG_PUB_LEN);
	p->has_identity = 1;
	peer_push_session(p, ss);
	return SP_OK;
fail:
	if (fresh != NULL && (s->npeers == 0 || s->peers[s->npeers - 1] != fresh))
		peer_free(fresh);
	sig_session_free(ss);
	free(*out);
	*out = NULL;
	*outlen = 0;
	return rc;
}

static const sig_keypair *
find_spk(const sig_store *s, uint32_t id)
{
	for (uint32_t i = 0; i < s->nspks; i++)
		if (s->spks[i].id == id)
			return &s->spks[i].kp;
	return NULL;
}

static int
find_prekey(const sig_store *s, uint32_t id)
{
	for (uint32_t i = 0; i < s->nprekeys; i++)
		if (s->prekeys[i].id == id)
			return (int)i;
	return -1;
}

static int
decrypt_prekey(sig_store *s, const char *peer, const uint8_t *msg, size_t len, uint8_t **pt,
    size_t *ptlen)
{
	sig_prekey_msg m;
	sig_peer_rec *p, *fresh = NULL;
	sig_session *ss = NULL;
	const sig_keypair *spk;
	int opk_idx = -1, rc;

	if ((rc = sig_proto_prekey_decode(msg, len, &m)) != SP_OK)
		return rc;
	/* id 0 means "none", as in both reference implementations (the TypeScript one
	 * always writes the field); we never issue prekey id 0 */
	if (m.has_pre_key_id && m.pre_key_id == 0)
		m.has_pre_key_id = 0;
	p = sig_state_peer_find(s, peer);
	if (p != NULL && p->has_identity && sodium_memcmp(p->identity, m.identity_key, SIG_PUB_LEN) != 0)
		return SP_EIDENTITY;
	/* a further PreKeySignalMessage of a session we already have */
	for (uint32_t i = 0; p != NULL && i < p->nsessions; i++) {
		if (sig_session_has_base_key(p->sessions[i], m.base_key) &&
		    memcmp(sig_session_remote_identity(p->sessions[i]), m.identity_key, SIG_PUB_LEN) == 0)
			return sig_session_decrypt(p->sessions[i], m.message, m.message_len, pt, ptlen);
	}
	if ((spk = find_spk(s, m.signed_pre_key_id)) == NULL)
		return SP_ENOTFOUND;
	if (m.has_pre_key_id && (opk_idx = find_prekey(s, m.pre_key_id)) < 0)
		return SP_ENOTFOUND;
	if ((rc = sig_session_init_bob(&ss, &s->identity, s->reg_id, spk,
	         opk_idx >= 0 ? &s->prekeys[opk_idx].kp : NULL, &m)) != SP_OK)
		return rc;
	if (p == NULL) {
		if ((fresh = peer_new(peer)) == NULL) {
			sig_session_free(ss);
			return SP_ENOMEM;
		}
		/* reserve the slot before anything irreversible */
		if ((rc = sig_state_grow((void **)&s->peers, &s->cappeers, s->npeers, sizeof(*s->peers),
		         SIG_MAX_PEERS)) != SP_OK) {
			peer_free(fresh);
			sig_session_free(ss);
			return rc;
		}
	}
	if ((rc = sig_session_decrypt(ss, m.message, m.message_len, pt, ptlen)) != SP_OK) {
		peer_free(fresh);
		sig_session_free(ss);
		return rc;
	}
	/* commit */
	if (fresh != NULL) {
		s->peers[s->npeers++] = fresh;
		p = fresh;
	}
	memcpy(p->identity, m.identity_key, SIG_PUB_LEN);
	p->has_identity = 1;
	peer_push_session(p, ss);
	if (opk_idx >= 0) {
		sodium_memzero(&s->prekeys[opk_idx], sizeof(s->prekeys[0]));
		memmove(&s->prekeys[opk_idx], &s->prekeys[opk_idx + 1],
		    sizeof(s->prekeys[0]) * (s->nprekeys - (uint32_t)opk_idx - 1));
		s->nprekeys--;
		sodium_memzero(&s->prekeys[s->nprekeys], sizeof(s->prekeys[0]));
	}
	return SP_OK;
}

int
sig_store_decrypt(sig_store *s, const char *peer, int type, const uint8_t *msg, size_t len,
    uint8_t **pt, size_t *ptlen)
{
	sig_peer_rec *p;
	int rc, first = SP_ENOTFOUND;

	*pt = NULL;
	*ptlen = 0;
	if (!name_ok(peer) || msg == NULL)
		return SP_EINVAL;
	if (type == SIG_MSG_PREKEY)
		return decrypt_prekey(s, peer, msg, len, pt, ptlen);
	if (type != SIG_MSG_WHISPER)
		return SP_EINVAL;
	if ((p = sig_state_peer_find(s, peer)) == NULL || p->nsessions == 0)
		return SP_ENOTFOUND;
	for (uint32_t i = 0; i < p->nsessions; i++) {
		rc = sig_session_decrypt(p->sessions[i], msg, len, pt, ptlen);
		if (rc == SP_OK)
			return SP_OK;
		if (i == 0)
			first = rc;
		if (rc != SP_ECRYPTO && rc != SP_EREPLAY && rc != SP_ELIMIT && rc != SP_ESTATE)
			break; /* framing errors are the same for every session */
	}
	return first;
}

/* ---- sender keys in the store ---- */

sig_sk_entry *
sig_state_sk_find(const sig_store *s, const char *group, const char *sender)
{
	for (uint32_t i = 0; i < s->nsks; i++) {
		sig_sk_entry *e = &s->sks[i];

		if (strcmp(e->group, group) != 0)
			continue;
		if ((sender == NULL) != (e->sender == NULL))
			continue;
		if (sender == NULL || strcmp(e->sender, sender) == 0)
			return e;
	}
	return NULL;
}

/* New empty entry; on success the store owns it. */
static int
sk_add(sig_store *s, const char *group, const char *sender, sig_sk_entry **out)
{
	sig_sk_entry e;
	int rc;

	memset(&e, 0, sizeof(e));
	if ((rc = sig_state_grow((void **)&s->sks, &s->capsks, s->nsks, sizeof(*s->sks), SIG_MAX_GROUP_KEYS)) != SP_OK)
		return rc;
	e.group = strdup(group);
	e.sender = sender != NULL ? strdup(sender) : NULL;
	e.rec = sig_sk_record_new();
	if (e.group == NULL || (sender != NULL && e.sender == NULL) || e.rec == NULL) {
		free(e.group);
		free(e.sender);
		sig_sk_record_free(e.rec);
		return SP_ENOMEM;
	}
	s->sks[s->nsks] = e;
	*out = &s->sks[s->nsks++];
	return SP_OK;
}

int
sig_store_sk_distribution(sig_store *s, const char *group, int rotate, uint8_t **out,
    size_t *outlen)
{
	sig_sk_entry *e;
	sig_sk_record *work;
	int rc;

	*out = NULL;
	*outlen = 0;
	if (!name_ok(group))
		return SP_EINVAL;
	if ((e = sig_state_sk_find(s, group, NULL)) == NULL && (rc = sk_add(s, group, NULL, &e)) != SP_OK)
		return rc;
	if ((rc = sig_sk_record_dup(&work, e->rec)) != SP_OK)
		return rc;
	if ((rotate || sig_sk_record_count(work) == 0) && (rc = sig_sk_rotate(work, NULL)) != SP_OK)
		goto out;
	if ((rc = sig_sk_distribution(work, out, outlen)) != SP_OK)
		goto out;
	sig_sk_record_free(e->rec);
	e->rec = work;
	work = NULL;
out:
	sig_sk_record_free(work);
	return rc;
}

int
sig_store_sk_process(sig_store *s, const char *group, const char *sender, const uint8_t *skdm,
    size_t len)
{
	sig_sk_entry *e;
	sig_sk_record *work = NULL;
	int rc;

	if (!name_ok(group) || !name_ok(sender) || skdm == NULL)
		return SP_EINVAL;
	if ((e = sig_state_sk_find(s, group, sender)) != NULL) {
		if ((rc = sig_sk_record_dup(&work, e->rec)) != SP_OK)
			return rc;
	} else if ((work = sig_sk_record_new()) == NULL) {
		return SP_ENOMEM;
	}
	if ((rc = sig_sk_process(work, skdm, len)) != SP_OK)
		goto out;
	if (e == NULL && (rc = sk_add(s, group, sender, &e)) != SP_OK)
		goto out;
	sig_sk_record_free(e->rec);
	e->rec = work;
	work = NULL;
out:
	sig_sk_record_free(work);
	return rc;
}

int
sig_store_sk_encrypt(sig_store *s, const char *group, const uint8_t *pt, size_t len,
    uint8_t **out, size_t *outlen)
{
	sig_sk_entry *e;

	*out = NULL;
	*outlen = 0;
	if (!name_ok(group))
		return SP_EINVAL;
	if ((e = sig_state_sk_find(s, group, NULL)) == NULL)
		return SP_ENOTFOUND;
	return sig_sk_encrypt(e->rec, pt, len, out, outlen);
}

int
sig_store_sk_decrypt(sig_store *s, const char *group, const char *sender, const uint8_t *msg,
    size_t len, uint8_t **pt, size_t *ptlen)
{
	sig_sk_entry *e;

	*pt = NULL;
	*ptlen = 0;
	if (!name_ok(group) || !name_ok(sender) || msg == NULL)
		return SP_EINVAL;
	if ((e = sig_state_sk_find(s, group, sender)) == NULL)
		return SP_ENOTFOUND;
	return sig_sk_decrypt(e->rec, msg, len, pt, ptlen);
}
