/*
 * Large texts to a user with several devices: bob has five (one registered, four linked),
 * alice sends a 32 KiB text (the client's limit), encrypted once per device of bob and of
 * her own: far past a 64 KiB frame, so SEND is a large frame (1 MiB). Every one of bob's
 * devices receives it whole.
 */
#include <sodium.h>

#include "client_util.h"
#include "sp_time.h"

#define TEXT_LEN 32768

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	ct_start();
	static char out[1 << 20];
	char alice[32], bob[32], b[64], path[512];
	ct_register("alice", "+15550901", alice, sizeof(alice));
	ct_register("bob", "+15550902", bob, sizeof(bob));
	const char *homes[] = { "bob", "bob2", "bob3", "bob4", "bob5" };
	for (int i = 1; i < 5; i++)
		ct_link("bob", homes[i]);
	CHECK(ct_run("bob", out, sizeof(out), "devices") == 0);
	CHECK(ct_nlines(out) == 5);
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15550902 %s", bob) == 0);

	/* Printable, and different along its length, so a cut or a mix-up shows. */
	static char text[TEXT_LEN + 1];
	for (int i = 0; i < TEXT_LEN; i++)
		text[i] = (char)('a' + (i * 7 + i / 1000) % 26);
	text[TEXT_LEN] = '\0';
	snprintf(path, sizeof(path), "%s/large.txt", ct_cluster.dir);
	FILE *f = fopen(path, "w");
	CHECK(f && fwrite(text, 1, TEXT_LEN, f) == TEXT_LEN);
	fclose(f);
	CHECK(ct_run("alice", out, sizeof(out), "send +15550902 \"$(cat %s)\"", path) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "sent") == 0);
	for (int i = 0; i < 5; i++) {
		CHECK(ct_run(homes[i], out, sizeof(out), "recv") == 0);
		int whole = 0;
		for (int j = 0; j < ct_nlines(out); j++) {
			json_t *jl = ct_line(out, j);
			const char *t = jl ? json_string_value(json_object_get(jl, "text")) : NULL;
			whole += t && strcmp(t, text) == 0;
			json_decref(jl);
		}
		if (whole != 1)
			fprintf(stderr, "%s did not get the text whole\n", homes[i]);
		CHECK(whole == 1);
	}
	printf("client_large_itest: ok (%llu ms)\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
