/*
 * Expired messages: on a cluster of its own whose inbox shards keep a message 4 s
 * (--msg-ttl 4, swept every second) and whose connsrvs tell clients exp_after 6 s
 * (--expire-after 6), alice sends bob one message he receives at once and one while he
 * stays away. The second turns `expired` at alice -- `status` overall and for bob's device,
 * `history` -- and shows so in --format text; the first stays `delivered`. bob, back after,
 * never gets the expired one (the sweep deleted it: the server agrees).
 */
#include <sodium.h>

#include "client_util.h"
#include "sp_time.h"

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	setenv("SP_INBOX_ARGS", "--msg-ttl 4 --sweep-interval 1", 1);
	setenv("SP_CONNSRV_ARGS", "--expire-after 6", 1);
	ct_start();
	char out[16384], alice[32], bob[32], got[64], gone[64], b[64];
	ct_register("alice", "+15550901", alice, sizeof(alice));
	ct_register("bob", "+15550902", bob, sizeof(bob));
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15550902 %s", bob) == 0);
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550901 %s", alice) == 0);

	/* Delivered at once; alice takes bob's DELIVERED receipt before it could expire. */
	CHECK(ct_run("alice", out, sizeof(out), "send +15550902 'you get this'") == 0);
	ct_str(out, 0, "msg_id", got, sizeof(got));
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count_text(out, "you get this") == 1);
	bool delivered = false;
	for (int i = 0; i < 40 && !delivered; i++) {
		if (ct_run("alice", out, sizeof(out), "status %s", got) == 0)
			delivered = strcmp(ct_str(out, 0, "status", b, sizeof(b)), "delivered") == 0;
		if (!delivered)
			usleep(100000);
	}
	CHECK(delivered);

	/* bob stays away: sent, then expired once exp_after has passed. */
	CHECK(ct_run("alice", out, sizeof(out), "send +15550902 'never delivered'") == 0);
	ct_str(out, 0, "msg_id", gone, sizeof(gone));
	CHECK(ct_run("alice", out, sizeof(out), "status %s", gone) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "sent") == 0);
	bool expired = false;
	for (int i = 0; i < 60 && !expired; i++) {
		if (ct_run("alice", out, sizeof(out), "status %s", gone) == 0)
			expired = strcmp(ct_str(out, 0, "status", b, sizeof(b)), "expired") == 0;
		if (!expired)
			usleep(250000);
	}
	CHECK(expired);
	json_t *j = ct_line(out, 0);
	json_t *devs = json_object_get(j, "devices");
	CHECK(json_array_size(devs) == 1);
	CHECK(strcmp(json_string_value(json_object_get(json_array_get(devs, 0), "status")), "expired") == 0);
	CHECK(strcmp(json_string_value(json_object_get(json_array_get(devs, 0), "user")), bob) == 0);
	json_decref(j);
	CHECK(ct_run("alice", out, sizeof(out), "status %s", got) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "delivered") == 0);

	/* History, as JSON and as text. */
	CHECK(ct_run("alice", out, sizeof(out), "history +15550902") == 0);
	CHECK(ct_nlines(out) == 2);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "delivered") == 0);
	CHECK(strcmp(ct_str(out, 1, "status", b, sizeof(b)), "expired") == 0);
	CHECK(ct_run("alice", out, sizeof(out), "--format text history +15550902") == 0);
	CHECK(strstr(out, "you get this (delivered)") != NULL);
	CHECK(strstr(out, "never delivered (expired)") != NULL);
	CHECK(ct_run("alice", out, sizeof(out), "--format text status %s", gone) == 0);
	CHECK(strncmp(out, gone, strlen(gone)) == 0 && strstr(out, ": expired") != NULL);

	/* bob comes back: the inbox swept it, he never sees it. */
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count_text(out, "never delivered") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "history +15550901") == 0);
	CHECK(ct_count_text(out, "never delivered") == 0 && ct_count_text(out, "you get this") == 1);
	printf("client_expiry_itest: ok (%llu ms)\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
