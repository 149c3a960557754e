#include "client/signal/sig_proto.h"

#include <sodium.h>
#include <string.h>

#include "sp_error.h"

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

/* One decoded protobuf field. */
typedef struct {
	uint32_t field;
	int wt;
	uint64_t v;
	const uint8_t *p;
	size_t n;
} pb_field;

/* Next field of r into f; 1 when one was read, 0 at the end, negative on error.
 * Unknown wire types (groups) are refused. */
static int
pb_next(sig_rbuf *r, pb_field *f)
{
	uint64_t key, l;
	int rc;

	if (r->off >= r->len)
		return 0;
	if ((rc = sig_rbuf_varint(r, &key)) != SP_OK)
		return SP_EMALFORMED;
	if ((key >> 3) == 0 || (key >> 3) > 0x1fffffff)
		return SP_EMALFORMED;
	f->field = (uint32_t)(key >> 3);
	f->wt = (int)(key & 7);
	f->p = NULL;
	f->n = 0;
	f->v = 0;
	switch (f->wt) {
	case WT_VARINT:
		if (sig_rbuf_varint(r, &f->v) != SP_OK)
			return SP_EMALFORMED;
		break;
	case WT_I64:
	case WT_I32:
		l = f->wt == WT_I64 ? 8 : 4;
		if (r->len - r->off < l)
			return SP_EMALFORMED;
		f->p = r->p + r->off;
		f->n = (size_t)l;
		r->off += (size_t)l;
		break;
	case WT_LEN:
		if (sig_rbuf_varint(r, &l) != SP_OK)
			return SP_EMALFORMED;
		if (l > r->len - r->off)
			return SP_EMALFORMED;
		f->p = r->p + r->off;
		f->n = (size_t)l;
		r->off += (size_t)l;
		break;
	default:
		return SP_EMALFORMED;
	}
	return 1;
}

static int
want(const pb_field *f, int wt)
{
	return f->wt == wt;
}

static int
get_key(const pb_field *f, uint8_t out[SIG_PUB_LEN])
{
	if (!want(f, WT_LEN) || !sig_pubkey_valid(f->p, f->n))
		return SP_EMALFORMED;
	memcpy(out, f->p, SIG_PUB_LEN);
	return SP_OK;
}

static int
check_version(const uint8_t *in, size_t len)
{
	if (len < 1)
		return SP_ETRUNC;
	if ((in[0] >> 4) != 3 || (in[0] & 0x0f) != 3)
		return SP_EPROTO;
	return SP_OK;
}

int
sig_proto_signal_decode(const uint8_t *in, size_t len, sig_signal_msg *m)
{
	sig_rbuf r;
	pb_field f;
	int rc, have_key = 0, have_ct = 0;

	memset(m, 0, sizeof(*m));
	if (len > SIG_MAX_MESSAGE)
		return SP_ETOOBIG;
	if (len < 1 + SIG_MAC_LEN)
		return SP_ETRUNC;
	if ((rc = check_version(in, len)) != SP_OK)
		return rc;
	sig_rbuf_init(&r, in + 1, len - 1 - SIG_MAC_LEN);
	while ((rc = pb_next(&r, &f)) == 1) {
		switch (f.field) {
		case 1:
			if (get_key(&f, m->ratchet_key) != SP_OK)
				return SP_EMALFORMED;
			have_key = 1;
			break;
		case 2:
		case 3:
			if (!want(&f, WT_VARINT))
				return SP_EMALFORMED;
			if (f.field == 2)
				m->counter = (uint32_t)f.v;
			else
				m->previous_counter = (uint32_t)f.v;
			break;
		case 4:
			if (!want(&f, WT_LEN))
				return SP_EMALFORMED;
			m->ciphertext = f.p;
			m->ciphertext_len = f.n;
			have_ct = 1;
			break;
		default:
			break;
		}
	}
	if (rc < 0)
		return rc;
	if (!have_key || !have_ct)
		return SP_EMALFORMED;
	m->mac_input_len = len - SIG_MAC_LEN;
	m->mac = in + len - SIG_MAC_LEN;
	return SP_OK;
}

int
sig_proto_prekey_decode(const uint8_t *in, size_t len, sig_prekey_msg *m)
{
	sig_rbuf r;
	pb_field f;
	int rc, have_base = 0, have_id = 0, have_msg = 0;

	memset(m, 0, sizeof(*m));
	if (len > SIG_MAX_MESSAGE)
		return SP_ETOOBIG;
	if ((rc = check_version(in, len)) != SP_OK)
		return rc;
	sig_rbuf_init(&r, in + 1, len - 1);
	while ((rc = pb_next(&r, &f)) == 1) {
		switch (f.field) {
		case 1:
		case 5:
		case 6:
			if (!want(&f, WT_VARINT))
				return SP_EMALFORMED;
			if (f.field == 1) {
				m->has_pre_key_id = 1;
				m->pre_key_id = (uint32_t)f.v;
			} else if (f.field == 5) {
				m->registration_id = (uint32_t)f.v;
			} else {
				m->signed_pre_key_id = (uint32_t)f.v;
			}
			break;
		case 2:
			if (get_key(&f, m->base_key) != SP_OK)
				return SP_EMALFORMED;
			have_base = 1;
			break;
		case 3:
			if (get_key(&f, m->identity_key) != SP_OK)
				return SP_EMALFORMED;
			have_id = 1;
			break;
		case 4:
			if (!want(&f, WT_LEN))
				return SP_EMALFORMED;
			m->message = f.p;
			m->message_len = f.n;
			have_msg = 1;
			break;
		default:
			break;
		}
	}
	if (rc < 0)
		return rc;
	if (!have_base || !have_id || !have_msg)
		return SP_EMALFORMED;
	return SP_OK;
}

int
sig_proto_sk_msg_decode(const uint8_t *in, size_t len, sig_sk_msg *m)
{
	sig_rbuf r;
	pb_field f;
	int rc, have_uuid = 0, have_chain = 0, have_iter = 0, have_ct = 0;

	memset(m, 0, sizeof(*m));
	if (len > SIG_MAX_MESSAGE)
		return SP_ETOOBIG;
	if (len < 1 + SIG_SIG_LEN)
		return SP_ETRUNC;
	if ((rc = check_version(in, len)) != SP_OK)
		return rc;
	sig_rbuf_init(&r, in + 1, len - 1 - SIG_SIG_LEN);
	while ((rc = pb_next(&r, &f)) == 1) {
		switch (f.field) {
		case 1:
			if (!want(&f, WT_LEN) || f.n != 16)
				return SP_EMALFORMED;
			memcpy(m->distribution_id, f.p, 16);
			have_uuid = 1;
			break;
		case 2:
		case 3:
			if (!want(&f, WT_VARINT))
				return SP_EMALFORMED;
			if (f.field == 2) {
				m->chain_id = (uint32_t)f.v;
				have_chain = 1;
			} else {
				m->iteration = (uint32_t)f.v;
				have_iter = 1;
			}
			break;
		case 4:
			if (!want(&f, WT_LEN))
				return SP_EMALFORMED;
			m->ciphertext = f.p;
			m->ciphertext_len = f.n;
			have_ct = 1;
			break;
		default:
			break;
		}
	}
	if (rc < 0)
		return rc;
	if (!have_uuid || !have_chain || !have_iter || !have_ct)
		return SP_EMALFORMED;
	m->signed_len = len - SIG_SIG_LEN;
	m->signature = in + len - SIG_SIG_LEN;
	return SP_OK;
}

int
sig_proto_skdm_decode(const uint8_t *in, size_t len, sig_skdm *m)
{
	sig_rbuf r;
	pb_field f;
	int rc, have = 0;

	memset(m, 0, sizeof(*m));
	if (len > 4096)
		return SP_ETOOBIG;
	if ((rc = check_version(in, len)) != SP_OK)
		return rc;
	sig_rbuf_init(&r, in + 1, len - 1);
	while ((rc = pb_next(&r, &f)) == 1) {
		switch (f.field) {
		case 1:
			if (!want(&f, WT_LEN) || f.n != 16)
				return SP_EMALFORMED;
			memcpy(m->distribution_id, f.p, 16);
			have |= 1;
			break;
		case 2:
		case 3:
			if (!want(&f, WT_VARINT))
				return SP_EMALFORMED;
			if (f.field == 2) {
				m->chain_id = (uint32_t)f.v;
				have |= 2;
			} else {
				m->iteration = (uint32_t)f.v;
				have |= 4;
			}
			break;
		case 4:
			if (!want(&f, WT_LEN) || f.n != 32)
				return SP_EMALFORMED;
			memcpy(m->chain_key, f.p, 32);
			have |= 8;
			break;
		case 5:
			if (get_key(&f, m->signing_key) != SP_OK)
				return SP_EMALFORMED;
			have |= 16;
			break;
		default:
			break;
		}
	}
	if (rc < 0 || have != 31) {
		sodium_memzero(m->chain_key, sizeof(m->chain_key));
		return rc < 0 ? rc : SP_EMALFORMED;
	}
	return SP_OK;
}

static void
pb_bytes(sig_wbuf *w, uint32_t field, const uint8_t *p, size_t n)
{
	sig_wbuf_varint(w, ((uint64_t)field << 3) | WT_LEN);
	sig_wbuf_varint(w, n);
	sig_wbuf_put(w, p, n);
}

static void
pb_uint(sig_wbuf *w, uint32_t field, uint32_t v)
{
	sig_wbuf_varint(w, ((uint64_t)field << 3) | WT_VARINT);
	sig_wbuf_varint(w, v);
}

void
sig_proto_signal_encode(sig_wbuf *w, const uint8_t ratchet_key[SIG_PUB_LEN], uint32_t counter,
    uint32_t previous_counter, const uint8_t *ct, size_t ctlen)
{
	sig_wbuf_u8(w, SIG_VERSION_BYTE);
	pb_bytes(w, 1, ratchet_key, SIG_PUB_LEN);
	pb_uint(w, 2, counter);
	pb_uint(w, 3, previous_counter);
	pb_bytes(w, 4, ct, ctlen);
}

void
sig_proto_prekey_encode(sig_wbuf *w, const sig_prekey_msg *m)
{
	sig_wbuf_u8(w, SIG_VERSION_BYTE);
	if (m->has_pre_key_id)
		pb_uint(w, 1, m->pre_key_id);
	pb_bytes(w, 2, m->base_key, SIG_PUB_LEN);
	pb_bytes(w, 3, m->identity_key, SIG_PUB_LEN);
	pb_bytes(w, 4, m->message, m->message_len);
	pb_uint(w, 5, m->registration_id);
	pb_uint(w, 6, m->signed_pre_key_id);
}

void
sig_proto_sk_msg_encode(sig_wbuf *w, const uint8_t distribution_id[16], uint32_t chain_id,
    uint32_t iteration, const uint8_t *ct, size_t ctlen)
{
	sig_wbuf_u8(w, SIG_VERSION_BYTE);
	pb_bytes(w, 1, distribution_id, 16);
	pb_uint(w, 2, chain_id);
	pb_uint(w, 3, iteration);
	pb_bytes(w, 4, ct, ctlen);
}

void
sig_proto_skdm_encode(sig_wbuf *w, const sig_skdm *m)
{
	sig_wbuf_u8(w, SIG_VERSION_BYTE);
	pb_bytes(w, 1, m->distribution_id, 16);
	pb_uint(w, 2, m->chain_id);
	pb_uint(w, 3, m->iteration);
	pb_bytes(w, 4, m->chain_key, 32);
	pb_bytes(w, 5, m->signing_key, SIG_PUB_LEN);
}
