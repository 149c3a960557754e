/*
 * Read receipts are durable before READ is answered: bob reads alice's message, and the
 * moment `sealpost read` has its OK both connsrvs are SIGKILLed (before anything could
 * be flushed later); once they are back, alice's status turns `read`, and bob's next
 * read goes out as before. (The refusals, a failed store and a user that does not exist,
 * are in connsrv_handlers_test.)
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
	ct_start();
	char out[16384], alice[32], bob[32], id[64], b[64];
	ct_register("alice", "+15550801", alice, sizeof(alice));
	ct_register("bob", "+15550802", bob, sizeof(bob));
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15550802 %s", bob) == 0);
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550801 %s", alice) == 0);

	CHECK(ct_run("alice", out, sizeof(out), "send +15550802 'read me'") == 0);
	ct_str(out, 0, "msg_id", id, sizeof(id));
	CHECK(strlen(id) == 32);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(strstr(out, "read me") != NULL);
	CHECK(ct_run("bob", out, sizeof(out), "read +15550801") == 0);
	itest_signal(&ct_cluster, "connsrv-0", SIGKILL);
	itest_signal(&ct_cluster, "connsrv-1", SIGKILL);
	itest_restart(&ct_cluster, "connsrv-0");
	itest_restart(&ct_cluster, "connsrv-1");
	bool read = false;
	for (int i = 0; i < 60 && !read; i++) {
		if (ct_run("alice", out, sizeof(out), "status %s", id) == 0)
			read = strcmp(ct_str(out, 0, "status", b, sizeof(b)), "read") == 0;
		if (!read)
			usleep(250000);
	}
	CHECK(read);

	/* bob's next read goes out through the restarted connsrvs. */
	CHECK(ct_run("alice", out, sizeof(out), "send +15550802 'and me'") == 0);
	ct_str(out, 0, "msg_id", id, sizeof(id));
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "read +15550801") == 0);
	read = false;
	for (int i = 0; i < 60 && !read; i++) {
		if (ct_run("alice", out, sizeof(out), "status %s", id) == 0)
			read = strcmp(ct_str(out, 0, "status", b, sizeof(b)), "read") == 0;
		if (!read)
			usleep(250000);
	}
	CHECK(read);
	printf("client_receipts_itest: ok (%llu ms)\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
