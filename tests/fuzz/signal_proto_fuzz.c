/* libFuzzer target for the Signal core: arbitrary bytes go to every message decoder,
 * to the state-blob parsers, and to decryption on fixed sessions (1:1 whisper and
 * prekey paths, and a sender-key record). Nothing may crash, leak or misbehave under
 * ASan/UBSan; failures must leave the fixed state unchanged. */
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client/signal/sig_kdf.h"
#include "client/signal/sig_proto.h"
#include "client/signal/sig_senderkey.h"
#include "client/signal/sig_session.h"
#include "client/signal/sig_state.h"
#include "sp_error.h"

static sig_store *bob;         /* has a session with "alice" and one-time prekeys */
static uint8_t *bob_blob;      /* bob serialized, to check he never changes */
static size_t bob_len;
static sig_sk_record *group;   /* a receiving sender-key record */
static uint8_t *valid_whisper; /* a real message, mutated by some inputs */
static size_t valid_len;

static void
fixed_key(sig_keypair *kp, const char *label, uint32_t i)
{
	uint8_t seed[32];
	const uint8_t *p[2] = { (const uint8_t *)label, (const uint8_t *)&i };
	size_t l[2] = { strlen(label), sizeof(i) };

	sig_hmac_sha256(seed, (const uint8_t *)"sealpost-fuzz", 13, 2, p, l);
	if (sig_keypair_from_private(kp, seed) != SP_OK)
		abort();
}

static void
setup(void)
{
	sig_keypair bid, bspk, bopk, aid, abase, arat;
	sig_session *alice;
	sig_bundle b;
	sig_skdm dm;
	sig_wbuf w;
	uint8_t *m, *pt, *d;
	size_t mn, ptlen, dn;
	int type;

	fixed_key(&bid, "bob-id", 0);
	fixed_key(&bspk, "bob-spk", 0);
	fixed_key(&aid, "alice-id", 0);
	fixed_key(&abase, "alice-base", 0);
	fixed_key(&arat, "alice-ratchet", 0);
	if (sig_store_new(&bob, &bid, 2, 1) != SP_OK || sig_store_add_signed_prekey(bob, 1, &bspk, NULL) != SP_OK)
		abort();
	for (uint32_t i = 1; i <= 3; i++) {
		fixed_key(&bopk, "bob-opk", i);
		if (sig_store_add_prekey(bob, i, &bopk) != SP_OK)
			abort();
	}
	if (sig_store_bundle(bob, &b, 1) != SP_OK)
		abort();
	if (sig_session_init_alice(&alice, &aid, 1, &b, &abase, &arat) != SP_OK)
		abort();
	if (sig_session_encrypt(alice, (const uint8_t *)"hello", 5, &m, &mn, &type) != SP_OK ||
	    sig_store_decrypt(bob, "alice", type, m, mn, &pt, &ptlen) != SP_OK)
		abort();
	free(m);
	free(pt);
	if (sig_session_encrypt(alice, (const uint8_t *)"again", 5, &m, &mn, &type) != SP_OK)
		abort();
	{
		sig_prekey_msg pm;

		if (sig_proto_prekey_decode(m, mn, &pm) != SP_OK)
			abort();
		valid_len = pm.message_len;
		valid_whisper = malloc(valid_len);
		memcpy(valid_whisper, pm.message, valid_len);
	}
	free(m);
	sig_session_free(alice);
	if (sig_store_serialize(bob, &bob_blob, &bob_len) != SP_OK)
		abort();

	memset(&dm, 0, sizeof(dm));
	memset(dm.distribution_id, 7, 16);
	dm.chain_id = 12345;
	memset(dm.chain_key, 9, 32);
	memcpy(dm.signing_key, aid.pub, SIG_PUB_LEN);
	sig_wbuf_init(&w, 0);
	sig_proto_skdm_encode(&w, &dm);
	if (sig_wbuf_finish(&w, &d, &dn) != SP_OK || (group = sig_sk_record_new()) == NULL ||
	    sig_sk_process(group, d, dn) != SP_OK)
		abort();
	free(d);
}

static void
check_bob_unchanged(void)
{
	uint8_t *b;
	size_t n;

	if (sig_store_serialize(bob, &b, &n) != SP_OK)
		abort();
	if (n != bob_len || memcmp(b, bob_blob, n) != 0)
		abort(); /* a failed decrypt changed the state */
	free(b);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sig_signal_msg sm;
	sig_prekey_msg pm;
	sig_sk_msg km;
	sig_skdm dm;
	uint8_t *pt = NULL;
	size_t ptlen = 0;
	int rc;

	if (bob == NULL)
		setup();
	(void)sig_proto_signal_decode(data, size, &sm);
	(void)sig_proto_prekey_decode(data, size, &pm);
	(void)sig_proto_sk_msg_decode(data, size, &km);
	(void)sig_proto_skdm_decode(data, size, &dm);

	/* 1:1 decrypt on the fixed session, as whisper and as prekey message */
	rc = sig_store_decrypt(bob, "alice", SIG_MSG_WHISPER, data, size, &pt, &ptlen);
	free(pt);
	pt = NULL;
	if (rc == SP_OK) {
		/* only a genuine message could get here; restore the fixed state */
		sig_store_free(bob);
		if (sig_store_deserialize(&bob, bob_blob, bob_len) != SP_OK)
			abort();
	}
	rc = sig_store_decrypt(bob, "alice", SIG_MSG_PREKEY, data, size, &pt, &ptlen);
	free(pt);
	pt = NULL;
	if (rc == SP_OK) {
		sig_store_free(bob);
		if (sig_store_deserialize(&bob, bob_blob, bob_len) != SP_OK)
			abort();
	}
	check_bob_unchanged();

	/* a real whisper message with the input spliced into it */
	if (size > 0 && valid_len > 0) {
		uint8_t *m = malloc(valid_len);
		size_t pos = data[0] % valid_len;

		memcpy(m, valid_whisper, valid_len);
		for (size_t i = 1; i < size && pos + i - 1 < valid_len; i++)
			m[pos + i - 1] ^= data[i];
		if (sig_store_decrypt(bob, "alice", SIG_MSG_WHISPER, m, valid_len, &pt, &ptlen) == SP_OK) {
			free(pt);
			sig_store_free(bob);
			if (sig_store_deserialize(&bob, bob_blob, bob_len) != SP_OK)
				abort();
		}
		free(m);
		pt = NULL;
	}

	/* sender keys */
	if (sig_sk_decrypt(group, data, size, &pt, &ptlen) == SP_OK)
		abort(); /* nobody but alice's signing key can produce this */
	{
		sig_sk_record *r = NULL;

		if (sig_sk_record_dup(&r, group) == SP_OK) {
			(void)sig_sk_process(r, data, size);
			sig_sk_record_free(r);
		}
	}

	/* state blobs */
	{
		sig_store *s = NULL;
		sig_session *ss = NULL;
		sig_sk_record *r = NULL;

		if (sig_store_deserialize(&s, data, size) == SP_OK) {
			uint8_t *b;
			size_t n;

			if (sig_store_serialize(s, &b, &n) == SP_OK)
				free(b);
			sig_store_free(s);
		}
		if (sig_state_session_deserialize(&ss, data, size) == SP_OK)
			sig_session_free(ss);
		if (sig_state_sk_deserialize(&r, data, size) == SP_OK)
			sig_sk_record_free(r);
	}
	return 0;
}
