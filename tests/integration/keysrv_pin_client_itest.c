/*
 * The registration lock end to end, through connsrv and the sealpost CLI: the primary
 * sets a PIN; re-registering the number on another home needs it (without it, or with a
 * wrong one, the server refuses: exit code 4); the new primary clears it.
 */
#include "client_util.h"

/* The code the dev sender wrote for phone. */
static void
read_code(const char *phone, char *code, size_t cap)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/%s", ct_cluster.otp_dir, phone);
	FILE *f = fopen(path, "r");
	CHECK(f && fgets(code, (int)cap, f));
	fclose(f);
	code[strcspn(code, "\r\n")] = '\0';
}

int
main(void)
{
	const char *phone = "+14155559301";
	char out[4096], user[64], user2[64], code[32], st[64];
	ct_start();
	ct_register("a", phone, user, sizeof(user));
	CHECK(ct_run("a", out, sizeof(out), "set-pin 5827") == 0);
	CHECK(ct_nlines(out) == 1);
	CHECK(strcmp(ct_str(out, 0, "status", st, sizeof(st)), "pin_set") == 0);

	CHECK(ct_run("b", out, sizeof(out), "register %s", phone) == 0);
	read_code(phone, code, sizeof(code));
	CHECK(ct_run("b", out, sizeof(out), "verify %s %s", phone, code) == 4);
	CHECK(ct_run("b", out, sizeof(out), "verify %s %s --pin 1111", phone, code) == 4);
	CHECK(ct_run("b", out, sizeof(out), "verify %s %s --pin 5827", phone, code) == 0);
	CHECK(strcmp(ct_str(out, 0, "user", user2, sizeof(user2)), user) == 0);

	/* The old primary was revoked; the new one clears the lock. */
	CHECK(ct_run("a", out, sizeof(out), "set-pin 9999") != 0);
	CHECK(ct_run("b", out, sizeof(out), "set-pin --clear") == 0);
	CHECK(strcmp(ct_str(out, 0, "status", st, sizeof(st)), "pin_cleared") == 0);
	CHECK(ct_run("c", out, sizeof(out), "register %s", phone) == 0);
	read_code(phone, code, sizeof(code));
	CHECK(ct_run("c", out, sizeof(out), "verify %s %s", phone, code) == 0);
	printf("keysrv_pin_client_itest: all passed\n");
	return 0;
}
