/* Fuzzes keysrv's request layer end to end (decode, the caller check, every handler, the
 * LMDB store) with arbitrary request bytes, as a peer holding a connsrv certificate could
 * send them. Every input must get a reply that packs, and the store must stay usable;
 * sanitizers catch the rest. The store and the dev code sender's files live in a temp dir
 * removed at exit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "keysrv/server.h"
#include "sp_error.h"
#include "sp_frame.h"
#include "sp_nng.h"

static char dir[64];
static keys_ctx *ctx;

static void
remove_dir(void)
{
	char cmd[128];
	keys_ctx_close(ctx);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

static void
init(void)
{
	static char codes[96];
	strcpy(dir, "/tmp/keysrv_fuzz.XXXXXX");
	if (sodium_init() < 0 || !mkdtemp(dir))
		abort();
	snprintf(codes, sizeof(codes), "%s/codes", dir);
	keys_ctx_cfg cfg = {
		.data_dir = dir,
		.map_size = 256u << 20,
		.otp = { .mode = "dev", .dir = codes, .queue_max = 16 },
		/* argon2id at its minimum: a PIN set or checked must not take a second. */
		.keys = { .otp_ttl_ms = 600000, .otp_attempts = 5, .link_ttl_ms = 60000, .low_water = 10,
			.pin_opslimit = crypto_pwhash_OPSLIMIT_MIN, .pin_memlimit = crypto_pwhash_MEMLIMIT_MIN },
		/* Generous limits, so that inputs reach the handlers rather than the limiter. */
		.rate_phone = { 1000000, 1000000 },
		.rate_source = { 1000000, 1000000 },
		.rate_bundle = { 1000000, 1000000 },
		.rate_link = { 1000000, 1000000 },
		.rate_max_keys = 4096,
	};
	if (keys_ctx_open(&ctx, &cfg) != SP_OK)
		abort();
	atexit(remove_dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	nng_msg *m, *out;
	sp_frame reply;

	if (!ctx)
		init();
	if (nng_msg_alloc(&m, 0) != 0 || nng_msg_append(m, data, size) != 0)
		abort();
	out = keys_handle_msg(ctx, m);
	nng_msg_free(m);
	if (!out)
		abort(); /* only out of memory may leave a request unanswered */
	/* The reply is a well-formed frame of our own. */
	if (sp_nng_msg_decode(out, &reply) != SP_OK)
		abort();
	sp_frame_fini(&reply);
	nng_msg_free(out);
	return 0;
}
