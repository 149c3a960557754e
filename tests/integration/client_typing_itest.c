/*
 * Typing indicators (docs/CONNSRV.md, "Typing"), through the CLI on a private dev cluster:
 *   - bob listens (on whichever connsrv he lands); alice's `typing` and `typing --stop`
 *     reach him as typing/stopped events, from alice's number;
 *   - a session's second TYPING within a second is dropped by connsrv;
 *   - typing is never stored: with bob offline, alice's typing leaves nothing in his
 *     inbox (his next recv shows only the message sent after it).
 */
#include "client_util.h"
#include "sp_error.h"
#include "sp_time.h"

/* Waits up to ms for `n` lines with state == `state` in bob's listen output. */
static bool
wait_state(const char *state, int n, int ms)
{
	char out[16384];
	for (int i = 0; i < ms / 100; i++) {
		ct_read_out("bob.listen", out, sizeof(out));
		if (ct_count(out, "state", state) >= n)
			return true;
		usleep(100000);
	}
	return false;
}

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	ct_start();
	char out[16384], alice[32], bob[32];
	ct_register("alice", "+15550701", alice, sizeof(alice));
	ct_register("bob", "+15550702", bob, sizeof(bob));
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15550702 %s", bob) == 0);
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550701 %s", alice) == 0);

	/* Online: typing, then stopped, shown to bob. */
	pid_t listener = ct_spawn("bob", "bob.listen", "", "listen");
	char got[16384];
	for (int i = 0; i < 100; i++) {
		ct_read_out("bob.listen", got, sizeof(got));
		if (ct_count(got, "type", "connected") >= 1)
			break;
		usleep(100000);
	}
	CHECK(ct_count(got, "type", "connected") >= 1);
	CHECK(ct_run("alice", out, sizeof(out), "typing +15550702") == 0);
	CHECK(wait_state("typing", 1, 10000));
	ct_read_out("bob.listen", got, sizeof(got));
	char from[64];
	for (int i = 0; i < ct_nlines(got); i++)
		if (strcmp(ct_str(got, i, "type", from, sizeof(from)), "typing") == 0)
			CHECK(strcmp(ct_str(got, i, "from", from, sizeof(from)), "+15550701") == 0);
	usleep(1100000);
	CHECK(ct_run("alice", out, sizeof(out), "typing +15550702 --stop") == 0);
	CHECK(wait_state("stopped", 1, 10000));

	/* One session sending TYPING twice within a second: the second is dropped; after
	 * the second has passed, one goes through again. */
	itest_user carol;
	itest_register(&ct_cluster, 0, &carol, "+15550703");
	CHECK(itest_login(&ct_cluster, 0, &carol) == SP_OK);
	for (int i = 0; i < 3; i++) {
		if (i == 2)
			usleep(1100000);
		sp_frame t;
		sp_frame_init(&t, SP_T_TYPING, 0, false);
		sp_frame_set_u64(&t, SP_F_TO_USER, strtoull(bob, NULL, 10));
		sp_frame_set_u64(&t, SP_F_KIND, 1);
		CHECK(spc_conn_send(carol.conn, &t) == SP_OK);
	}
	CHECK(wait_state("typing", 3, 10000));
	usleep(1000000);
	ct_read_out("bob.listen", got, sizeof(got));
	char carol_from[40];
	snprintf(carol_from, sizeof(carol_from), "#%llu", (unsigned long long)carol.user);
	CHECK(ct_count(got, "from", carol_from) == 2);
	itest_logout(&carol);
	ct_stop(listener);

	/* Offline: nothing is kept for bob. */
	CHECK(ct_run("alice", out, sizeof(out), "typing +15550702") == 0);
	CHECK(ct_run("alice", out, sizeof(out), "send +15550702 after-typing") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv --wait 2") == 0);
	CHECK(ct_count(out, "type", "typing") == 0);
	CHECK(ct_count(out, "text", "after-typing") == 1);
	CHECK(ct_run("bob", out, sizeof(out), "typing +15550701 --bogus") == 2);

	ct_down();
	printf("client_typing_itest: all passed in %llu ms\n",
	       (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
