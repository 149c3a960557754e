/*
 * The outbox never jams (docs/CLIENT.md, "Outbox"): a message that can never be sent is
 * marked failed, with its reason, and the messages queued behind it go out.
 *   - a 32 KiB text to a user with one device arrives intact;
 *   - a 32 KiB text to a user with two devices (past 64 KiB once encrypted for each of
 *     them and for alice's own: SEND is a 1 MiB frame), queued offline in front of a
 *     normal message: the next connection sends both, both devices get both, whole;
 *   - the same sent online, and the next message follows it without a gap;
 *   - a message to a user id that does not exist, queued in front of a normal one: failed
 *     with its reason, the other delivered (the outbox does not jam).
 */
#include "client/sealpost.h"
#include "client_util.h"
#include "sp_error.h"
#include "sp_time.h"

static char alice[32], bob[32], carol[32];

/* A shell word that expands to 32768 'x' (the largest text a message may carry). */
#define BIG "\"$(head -c 32768 /dev/zero | tr '\\0' x)\""
/* A connsrv address where nothing listens: the send stays queued. */
#define OFFLINE "--server 127.0.0.1:1"

static void
link_second_device(void)
{
	char out[65536], b[64];
	ct_link("bob", "bob2");
	CHECK(ct_run("bob2", out, sizeof(out), "whoami") == 0);
	CHECK(strcmp(ct_str(out, 0, "user", b, sizeof(b)), bob) == 0);
}

/* `status ID --offline`: the line's status, error and reason. */
static void
status_of(const char *id, char *status, char *error, char *reason, size_t cap)
{
	char out[8192];
	CHECK(ct_run("alice", out, sizeof(out), "status %s --offline", id) == 0);
	ct_str(out, 0, "status", status, cap);
	ct_str(out, 0, "error", error, cap);
	ct_str(out, 0, "reason", reason, cap);
}

/* The length of the text of the message with this id in out (-1: none). */
static long
text_len_of(const char *out, const char *id)
{
	char b[64];
	for (int i = 0; i < ct_nlines(out); i++) {
		if (strcmp(ct_str(out, i, "msg_id", b, sizeof(b)), id) != 0)
			continue;
		json_t *j = ct_line(out, i);
		const char *t = j ? json_string_value(json_object_get(j, "text")) : NULL;
		long n = t ? (long)strlen(t) : -1;
		json_decref(j);
		return n;
	}
	return -1;
}

static void
test_big_to_one_device(void)
{
	static char out[262144];
	char id[64], b[64];
	CHECK(ct_run("alice", out, sizeof(out), "send +15550803 " BIG) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "sent") == 0);
	ct_str(out, 0, "msg_id", id, sizeof(id));
	CHECK(ct_run("carol", out, sizeof(out), "recv") == 0);
	CHECK(text_len_of(out, id) == 32768);
}

static void
test_queued_big_then_normal(void)
{
	static char out[262144];
	char big[64], small[64], st[256], err[256], reason[256];
	CHECK(ct_run("alice", out, sizeof(out), OFFLINE " send +15550802 " BIG) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", st, sizeof(st)), "queued") == 0);
	ct_str(out, 0, "msg_id", big, sizeof(big));
	CHECK(ct_run("alice", out, sizeof(out), OFFLINE " send +15550802 'behind the big one'") == 0);
	CHECK(strcmp(ct_str(out, 0, "status", st, sizeof(st)), "queued") == 0);
	ct_str(out, 0, "msg_id", small, sizeof(small));
	status_of(big, st, err, reason, sizeof(st));
	CHECK(strcmp(st, "queued") == 0 && err[0] == '\0');
	/* The next command that connects flushes the outbox: a 32 KiB text for two devices
	 * of bob's and alice's own goes in one SEND (a large frame), then the other. */
	CHECK(ct_run("alice", out, sizeof(out), "recv") == 0);
	status_of(big, st, err, reason, sizeof(st));
	CHECK(strcmp(st, "sent") == 0 || strcmp(st, "delivered") == 0);
	CHECK(err[0] == '\0');
	status_of(small, st, err, reason, sizeof(st));
	CHECK(strcmp(st, "sent") == 0 || strcmp(st, "delivered") == 0);
	/* Both of bob's devices get both, the big one whole. */
	const char *homes[] = {"bob", "bob2"};
	for (int i = 0; i < 2; i++) {
		CHECK(ct_run(homes[i], out, sizeof(out), "recv") == 0);
		CHECK(ct_count(out, "text", "behind the big one") == 1);
		CHECK(text_len_of(out, big) == 32768);
	}
}

static void
test_online_big(void)
{
	static char out[262144];
	char b[256], id[64];
	CHECK(ct_run("alice", out, sizeof(out), "send +15550802 " BIG) == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "sent") == 0);
	CHECK(strlen(ct_str(out, 0, "msg_id", id, sizeof(id))) == 32);
	CHECK(ct_run("alice", out, sizeof(out), "send +15550802 'after the big one'") == 0);
	CHECK(strcmp(ct_str(out, 0, "status", b, sizeof(b)), "sent") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count(out, "text", "after the big one") == 1);
	CHECK(text_len_of(out, id) == 32768);
	/* In order, without a gap: the two queued above had 1 and 2. */
	long long seq = -1;
	for (int i = 0; i < ct_nlines(out); i++) {
		json_t *j = ct_line(out, i);
		const char *t = j ? json_string_value(json_object_get(j, "text")) : NULL;
		if (t && strcmp(t, "after the big one") == 0)
			seq = json_integer_value(json_object_get(j, "conv_seq"));
		json_decref(j);
	}
	CHECK(seq == 4);
}

static void
test_bad_recipient(void)
{
	char out[65536], bad[64], small[64], st[256], err[256], reason[256];
	/* A user id no account has (ids are random 64-bit numbers). */
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15550899 12345") == 0);
	CHECK(ct_run("alice", out, sizeof(out), OFFLINE " send +15550899 'to nobody'") == 0);
	ct_str(out, 0, "msg_id", bad, sizeof(bad));
	CHECK(ct_run("alice", out, sizeof(out), OFFLINE " send +15550802 'after nobody'") == 0);
	ct_str(out, 0, "msg_id", small, sizeof(small));
	CHECK(ct_run("alice", out, sizeof(out), "recv") == 0);
	status_of(bad, st, err, reason, sizeof(st));
	printf("to nobody: %s %s %s\n", st, err, reason);
	CHECK(strcmp(st, "failed") == 0);
	CHECK(err[0] != '\0' && reason[0] != '\0');
	status_of(small, st, err, reason, sizeof(st));
	CHECK(strcmp(st, "sent") == 0 || strcmp(st, "delivered") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count(out, "text", "after nobody") == 1);
}

int
main(void)
{
	uint64_t t0 = sp_time_ms();
	ct_start();
	ct_register("alice", "+15550801", alice, sizeof(alice));
	ct_register("bob", "+15550802", bob, sizeof(bob));
	ct_register("carol", "+15550803", carol, sizeof(carol));
	char out[4096];
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550801 %s", alice) == 0);
	CHECK(ct_run("carol", out, sizeof(out), "contact add +15550801 %s", alice) == 0);
	/* Known without a lookup, so that alice can queue to bob while offline. */
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15550802 %s", bob) == 0);
	link_second_device();
	test_big_to_one_device();
	test_queued_big_then_normal();
	test_online_big();
	test_bad_recipient();
	ct_down();
	printf("client_outbox_itest: all passed in %llu ms\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
