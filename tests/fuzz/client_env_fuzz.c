/* Fuzzes the client's envelope decoder (client/cl_env.c): the plaintext inside every
 * message is written by the sender, so to the recipient it is as hostile as any network
 * input. Whatever decodes must encode again and decode to the same envelope; sanitizers
 * catch reads out of bounds. */
#include <stdlib.h>
#include <string.h>

#include "client/cl_internal.h"
#include "sp_error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
same_bytes(const void *a, size_t alen, const void *b, size_t blen)
{
	return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	cl_env e, e2;
	uint8_t *enc = NULL;
	size_t enc_len = 0;

	if (cl_env_decode(data, size, &e) != SP_OK)
		return 0;
	if (cl_env_encode(&e, &enc, &enc_len) != SP_OK)
		abort(); /* what we accept we can write again */
	if (cl_env_decode(enc, enc_len, &e2) != SP_OK)
		abort();
	if (e.kind != e2.kind || e.seq != e2.seq || e.to != e2.to || e.group != e2.group
	    || !same_bytes(e.phone, e.phone_len, e2.phone, e2.phone_len)
	    || !same_bytes(e.gname, e.gname_len, e2.gname, e2.gname_len)
	    || !same_bytes(e.text, e.text_len, e2.text, e2.text_len)
	    || !same_bytes(e.skdm, e.skdm_len, e2.skdm, e2.skdm_len)
	    || memcmp(&e.media, &e2.media, sizeof(e.media)) != 0)
		abort();
	free(enc);
	return 0;
}
