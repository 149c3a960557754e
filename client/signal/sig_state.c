#include "client/signal/sig_state.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/internal.h"
#include "client/signal/sig_buf.h"
#include "sp_error.h"

typedef struct {
	char *name;
	int has_identity;
	uint8_t identity[SIG_PUB_LEN];
	sig_session *sessions[SIG_MAX_SESSIONS]; /* [0] current */
	uint32_t nsessions;
} peer_rec;

typedef struct {
	uint32_t id;
	int handed_out;
	sig_keypair kp;
} prekey_rec;

typedef struct {
	uint32_t id;
	sig_keypair kp;
	uint8_t sig[SIG_SIG_LEN];
} spk_rec;

typedef struct {
	char *group;
	char *sender; /* NULL for our own sending chain */
	sig_sk_record *rec;
} sk_entry;

struct sig_store {
	sig_keypair identity;
	uint32_t reg_id;
	uint32_t device_id;
	uint32_t next_prekey_id;
	spk_rec spks[SIG_MAX_SIGNED_PREKEYS]; /* [0] current */
	uint32_t nspks;
	prekey_rec *prekeys;
	uint32_t nprekeys, capprekeys;
	peer_rec **peers;
	uint32_t npeers, cappeers;
	sk_entry *sks;
	uint32_t nsks, capsks;
};

#define STORE_MAGIC 0x53505354u /* "SPST" */
#define PEER_MAGIC 0x53505052u  /* "SPPR" */
#define SESS_MAGIC 0x53505345u  /* "SPSE" */
#define SKR_MAGIC 0x5350534bu   /* "SPSK" */
#define BLOB_VERSION 1u
#define BLOB_LIMIT (64u << 20)

/* Grows a typed array to hold n+1 elements. */
static int
grow(void **arr, uint32_t *cap, uint32_t n, size_t elem, uint32_t max)
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
peer_free(peer_rec *p)
{
	if (p == NULL)
		return;
	for (uint32_t i = 0; i < p->nsessions; i++)
		sig_session_free(p->sessions[i]);
	free(p->name);
	sodium_memzero(p, sizeof(*p));
	free(p);
}

static peer_rec *
peer_find(const sig_store *s, const char *name)
{
	for (uint32_t i = 0; i < s->npeers; i++)
		if (strcmp(s->peers[i]->name, name) == 0)
			return s->peers[i];
	return NULL;
}

/* Adds p (ownership taken on success) to the store. */
static int
peer_insert(sig_store *s, peer_rec *p)
{
	int rc = grow((void **)&s->peers, &s->cappeers, s->npeers, sizeof(*s->peers), SIG_MAX_PEERS);

	if (rc != SP_OK)
		return rc;
	s->peers[s->npeers++] = p;
	return SP_OK;
}

static peer_rec *
peer_new(const char *name)
{
	peer_rec *p = calloc(1, sizeof(*p));

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
peer_push_session(peer_rec *p, sig_session *ss)
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
	spk_rec r;
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
	if ((rc = grow((void **)&s->prekeys, &s->capprekeys, s->nprekeys, sizeof(*s->prekeys),
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
	const peer_rec *p = peer_find(s, peer);

	return p != NULL && p->nsessions > 0 ? p->sessions[0] : NULL;
}

int
sig_store_has_session(const sig_store *s, const char *peer)
{
	const peer_rec *p = peer_find(s, peer);

	return p != NULL && p->nsessions > 0;
}

int
sig_store_peer_identity(const sig_store *s, const char *peer, uint8_t id[SIG_PUB_LEN])
{
	const peer_rec *p = peer_find(s, peer);

	if (p == NULL || !p->has_identity)
		return SP_ENOTFOUND;
	memcpy(id, p->identity, SIG_PUB_LEN);
	return SP_OK;
}

int
sig_store_trust_identity(sig_store *s, const char *peer, const uint8_t id[SIG_PUB_LEN])
{
	peer_rec *p;
	int rc;

	if (!name_ok(peer) || !sig_pubkey_valid(id, SIG_PUB_LEN))
		return SP_EINVAL;
	if ((p = peer_find(s, peer)) == NULL) {
		if ((p = peer_new(peer)) == NULL)
			return SP_ENOMEM;
		if ((rc = peer_insert(s, p)) != SP_OK) {
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
	peer_rec *p, *fresh = NULL;
	sig_session *ss = NULL;
	int rc;

	*out = NULL;
	*outlen = 0;
	if (!name_ok(peer))
		return SP_EINVAL;
	p = peer_find(s, peer);
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
		if ((rc = peer_insert(s, fresh)) != SP_OK)
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
	peer_rec *p, *fresh = NULL;
	sig_session *ss = NULL;
	const sig_keypair *spk;
	int opk_idx = -1, rc;

	if ((rc = sig_proto_prekey_decode(msg, len, &m)) != SP_OK)
		return rc;
	/* id 0 means "none", as in both reference implementations (the TypeScript one
	 * always writes the field); we never issue prekey id 0 */
	if (m.has_pre_key_id && m.pre_key_id == 0)
		m.has_pre_key_id = 0;
	p = peer_find(s, peer);
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
		if ((rc = grow((void **)&s->peers, &s->cappeers, s->npeers, sizeof(*s->peers),
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
	peer_rec *p;
	int rc, first = SP_ENOTFOUND;

	*pt = NULL;
	*ptlen = 0;
	if (!name_ok(peer) || msg == NULL)
		return SP_EINVAL;
	if (type == SIG_MSG_PREKEY)
		return decrypt_prekey(s, peer, msg, len, pt, ptlen);
	if (type != SIG_MSG_WHISPER)
		return SP_EINVAL;
	if ((p = peer_find(s, peer)) == NULL || p->nsessions == 0)
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

static sk_entry *
sk_find(const sig_store *s, const char *group, const char *sender)
{
	for (uint32_t i = 0; i < s->nsks; i++) {
		sk_entry *e = &s->sks[i];

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
sk_add(sig_store *s, const char *group, const char *sender, sk_entry **out)
{
	sk_entry e;
	int rc;

	memset(&e, 0, sizeof(e));
	if ((rc = grow((void **)&s->sks, &s->capsks, s->nsks, sizeof(*s->sks), SIG_MAX_GROUP_KEYS)) != SP_OK)
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
	sk_entry *e;
	sig_sk_record *work;
	int rc;

	*out = NULL;
	*outlen = 0;
	if (!name_ok(group))
		return SP_EINVAL;
	if ((e = sk_find(s, group, NULL)) == NULL && (rc = sk_add(s, group, NULL, &e)) != SP_OK)
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
	sk_entry *e;
	sig_sk_record *work = NULL;
	int rc;

	if (!name_ok(group) || !name_ok(sender) || skdm == NULL)
		return SP_EINVAL;
	if ((e = sk_find(s, group, sender)) != NULL) {
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
	sk_entry *e;

	*out = NULL;
	*outlen = 0;
	if (!name_ok(group))
		return SP_EINVAL;
	if ((e = sk_find(s, group, NULL)) == NULL)
		return SP_ENOTFOUND;
	return sig_sk_encrypt(e->rec, pt, len, out, outlen);
}

int
sig_store_sk_decrypt(sig_store *s, const char *group, const char *sender, const uint8_t *msg,
    size_t len, uint8_t **pt, size_t *ptlen)
{
	sk_entry *e;

	*pt = NULL;
	*ptlen = 0;
	if (!name_ok(group) || !name_ok(sender) || msg == NULL)
		return SP_EINVAL;
	if ((e = sk_find(s, group, sender)) == NULL)
		return SP_ENOTFOUND;
	return sig_sk_decrypt(e->rec, msg, len, pt, ptlen);
}

/* ---- serialization ---- */

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
		const peer_rec *p = s->peers[i];

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
		spk_rec *k = &s->spks[i];

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
		prekey_rec pk;

		if ((rc = sig_rbuf_u32(&r, &pk.id)) != SP_OK || (rc = get_bool(&r, &pk.handed_out)) != SP_OK ||
		    (rc = get_keypair(&r, &pk.kp)) != SP_OK)
			goto fail;
		rc = grow((void **)&s->prekeys, &s->capprekeys, s->nprekeys, sizeof(*s->prekeys), SIG_MAX_PREKEYS);
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
		peer_rec *p = calloc(1, sizeof(*p));
		uint32_t magic;

		if (p == NULL) {
			rc = SP_ENOMEM;
			goto fail;
		}
		if ((rc = peer_insert(s, p)) != SP_OK) {
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
		if (m > SIG_MAX_SESSIONS || peer_find(s, p->name) != p) {
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
		sk_entry e;
		int has_sender;

		memset(&e, 0, sizeof(e));
		if ((rc = get_str(&r, &e.group)) != SP_OK || (rc = get_bool(&r, &has_sender)) != SP_OK ||
		    (has_sender && (rc = get_str(&r, &e.sender)) != SP_OK) ||
		    (rc = get_sk_record(&r, &e.rec)) != SP_OK ||
		    (rc = sk_find(s, e.group, e.sender) != NULL ? SP_EMALFORMED : SP_OK) != SP_OK ||
		    (rc = grow((void **)&s->sks, &s->capsks, s->nsks, sizeof(*s->sks), SIG_MAX_GROUP_KEYS)) != SP_OK) {
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
