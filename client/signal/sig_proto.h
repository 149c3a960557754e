/* Protobuf framing of the Signal v3 messages (WIRE.md §5-6): SignalMessage,
 * PreKeySignalMessage, and the official SenderKeyMessage and
 * SenderKeyDistributionMessage. Decoders are bounded and hostile-input safe; decoded
 * byte fields point into the caller's input buffer (no allocation, input must outlive
 * the struct). Encoders append to a sig_wbuf. */
#ifndef SIG_PROTO_H
#define SIG_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "client/signal/sig_buf.h"
#include "client/signal/sig_curve.h"

#define SIG_VERSION_BYTE 0x33
#define SIG_MAC_LEN 8
#define SIG_MAX_MESSAGE (1u << 20) /* largest whole message accepted or produced */

/* 0x33 || protobuf || MAC[8] */
typedef struct {
	uint8_t ratchet_key[SIG_PUB_LEN];
	uint32_t counter;
	uint32_t previous_counter;
	const uint8_t *ciphertext;
	size_t ciphertext_len;
	size_t mac_input_len; /* bytes covered by the MAC: version byte + protobuf */
	const uint8_t *mac;   /* SIG_MAC_LEN bytes at the end of the input */
} sig_signal_msg;

/* 0x33 || protobuf */
typedef struct {
	int has_pre_key_id;
	uint32_t pre_key_id;
	uint8_t base_key[SIG_PUB_LEN];
	uint8_t identity_key[SIG_PUB_LEN];
	const uint8_t *message; /* a whole SignalMessage */
	size_t message_len;
	uint32_t registration_id;
	uint32_t signed_pre_key_id;
} sig_prekey_msg;

/* Official SenderKeyMessage: 0x33 || protobuf || signature[64] */
typedef struct {
	uint8_t distribution_id[16];
	uint32_t chain_id;
	uint32_t iteration;
	const uint8_t *ciphertext;
	size_t ciphertext_len;
	size_t signed_len; /* bytes covered by the signature */
	const uint8_t *signature;
} sig_sk_msg;

/* Official SenderKeyDistributionMessage: 0x33 || protobuf */
typedef struct {
	uint8_t distribution_id[16];
	uint32_t chain_id;
	uint32_t iteration;
	uint8_t chain_key[32];
	uint8_t signing_key[SIG_PUB_LEN];
} sig_skdm;

/* Decoders: SP_OK, or SP_EMALFORMED / SP_ETRUNC / SP_ETOOBIG / SP_EPROTO (wrong version). */
int sig_proto_signal_decode(const uint8_t *in, size_t len, sig_signal_msg *m);
int sig_proto_prekey_decode(const uint8_t *in, size_t len, sig_prekey_msg *m);
int sig_proto_sk_msg_decode(const uint8_t *in, size_t len, sig_sk_msg *m);
int sig_proto_skdm_decode(const uint8_t *in, size_t len, sig_skdm *m);

/* Encoders. The SignalMessage encoder writes 0x33 || protobuf (the caller appends the
 * MAC); the SenderKeyMessage encoder writes 0x33 || protobuf (the caller appends the
 * signature); the others write the whole message. Fields are written in field order,
 * counters always present, like the reference implementations. */
void sig_proto_signal_encode(sig_wbuf *w, const uint8_t ratchet_key[SIG_PUB_LEN],
    uint32_t counter, uint32_t previous_counter, const uint8_t *ct, size_t ctlen);
void sig_proto_prekey_encode(sig_wbuf *w, const sig_prekey_msg *m);
void sig_proto_sk_msg_encode(sig_wbuf *w, const uint8_t distribution_id[16], uint32_t chain_id,
    uint32_t iteration, const uint8_t *ct, size_t ctlen);
void sig_proto_skdm_encode(sig_wbuf *w, const sig_skdm *m);

#endif
