/*
 * `--format text` (docs/CLIENT.md, "Output formats") on a private dev cluster: the same
 * commands print human-readable lines instead of JSON, every result and event through
 * the one formatter; JSON stays the default; a bad --format is a usage error; text from
 * the network reaches the terminal without its control characters.
 */
#include <regex.h>

#include "client_util.h"
#include "sp_time.h"

/* Whether some line of out matches the extended regex re (anchored per line). */
static bool
has_line(const char *out, const char *re)
{
	regex_t rx;
	CHECK(regcomp(&rx, re, REG_EXTENDED | REG_NEWLINE | REG_NOSUB) == 0);
	bool ok = regexec(&rx, out, 0, NULL, 0) == 0;
	regfree(&rx);
	if (!ok)
		fprintf(stderr, "no line matching /%s/ in:\n%s\n", re, out);
	return ok;
}

int
main(void)
{
	uint64_t t0 = sp_time_ms();
	ct_start();
	char out[16384], alice[32], bob[32], re[256];
	ct_register("alice", "+15550901", alice, sizeof(alice));
	ct_register("bob", "+15550902", bob, sizeof(bob));
	CHECK(ct_run("alice", out, sizeof(out), "--format text contact add +15550902 %s", bob) == 0);
	CHECK(strcmp(out, "ok\n") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550901 %s", alice) == 0);
	json_t *first = ct_line(out, 0);
	CHECK(first != NULL); /* JSON by default */
	json_decref(first);

	/* whoami: one "key: value" per line. */
	CHECK(ct_run("alice", out, sizeof(out), "--format text whoami") == 0);
	snprintf(re, sizeof(re), "^user: %s$", alice);
	CHECK(has_line(out, re));
	CHECK(has_line(out, "^phone: \\+15550901$"));
	CHECK(has_line(out, "^device: [0-9]+$"));

	/* send: "sent ID at HH:MM"; the id is what status takes. */
	CHECK(ct_run("alice", out, sizeof(out), "--format text send +15550902 'hello in text'") == 0);
	CHECK(has_line(out, "^sent [0-9a-f]{32} at [0-9]{2}:[0-9]{2}$"));
	char id[33];
	CHECK(sscanf(out, "sent %32s", id) == 1);

	/* recv: the message as a line; a message with an escape sequence comes defused. */
	CHECK(ct_run("alice", out, sizeof(out), "send +15550902 \"$(printf 'clear\\033[2Jscreen')\"") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "--format text recv") == 0);
	CHECK(has_line(out, "^\\[[0-9]{2}:[0-9]{2}\\] \\+15550901: hello in text$"));
	CHECK(has_line(out, "^\\[[0-9]{2}:[0-9]{2}\\] \\+15550901: clear\\?\\[2Jscreen$"));
	CHECK(strchr(out, '\033') == NULL);

	/* status: the overall state, then one line per device. */
	CHECK(ct_run("alice", out, sizeof(out), "--format text status %s", id) == 0);
	snprintf(re, sizeof(re), "^%s: delivered \\(sent at [0-9]{2}:[0-9]{2}\\)$", id);
	CHECK(has_line(out, re));
	snprintf(re, sizeof(re), "^  user %s device [0-9]+: delivered$", bob);
	CHECK(has_line(out, re));

	/* read, then history with the ticks. */
	CHECK(ct_run("bob", out, sizeof(out), "--format text read +15550901") == 0);
	CHECK(strcmp(out, "ok\n") == 0);
	CHECK(ct_run("alice", out, sizeof(out), "--format text recv") == 0);
	snprintf(re, sizeof(re), "^read by \\+15550902 \\(device [0-9]+\\):( [0-9a-f]{32})*( %s)", id);
	CHECK(has_line(out, re));
	CHECK(ct_run("alice", out, sizeof(out), "--format text history +15550902") == 0);
	CHECK(has_line(out, "^\\[[0-9]{2}:[0-9]{2}\\] me to \\+15550902: hello in text \\(read\\)$"));

	/* devices and group list. */
	CHECK(ct_run("alice", out, sizeof(out), "--format text devices") == 0);
	CHECK(has_line(out, "^device [0-9]+ \\(primary, this device\\)$"));
	CHECK(ct_run("alice", out, sizeof(out), "--format text group create friends +15550902") == 0);
	CHECK(has_line(out, "^group: [0-9]+$"));
	CHECK(has_line(out, "^name: friends$"));
	CHECK(ct_run("alice", out, sizeof(out), "--format text group list") == 0);
	snprintf(re, sizeof(re), "^@friends  group [0-9]+  epoch [0-9]+  members: .*%s", bob);
	CHECK(has_line(out, re));

	/* JSON stays the default, and "json" can be asked for; anything else is a usage error. */
	CHECK(ct_run("alice", out, sizeof(out), "--format json whoami") == 0);
	json_t *j = ct_line(out, 0);
	CHECK(j && strcmp(json_string_value(json_object_get(j, "user")), alice) == 0);
	json_decref(j);
	CHECK(ct_run("alice", out, sizeof(out), "--format xml whoami") == 2);
	CHECK(ct_run("alice", out, sizeof(out), "--format") == 2);

	printf("client_format_itest: ok (%.1f s)\n", (double)(sp_time_ms() - t0) / 1000.0);
	return 0;
}
