/*
 * bin/sealpost against a private cluster whose inbox queues hold 16 entries:
 * - a device that lost the sender's key (its Signal state restored from an earlier
 *   backup, while alice's store says it holds her key) reports the group message
 *   undecryptable and held and asks alice for her key; alice's client answers when it
 *   next receives, and the held message then shows as a message with the same msg_id;
 * - a member that never drains fills its queue: the group send still goes to the
 *   others, and alice's send result and status name that device failed, "queue full";
 *   a 1:1 send to a user with one full device of two is SENT with that device refused;
 * - a device holding alice's key is removed: her next send rotates the key.
 */
#include <sqlite3.h>

#include "client_util.h"
#include "sp_error.h"
#include "sp_time.h"

static char alice[32], bob[32], carol[32];

/* The device id of a home (whoami). */
static void
device_of(const char *home, char *out, size_t cap)
{
	char buf[4096];
	CHECK(ct_run(home, buf, sizeof(buf), "whoami") == 0);
	ct_str(buf, 0, "device", out, cap);
	CHECK(out[0]);
}

/* Runs sql on a home's store (the test plays a device that lost its keys). */
static void
store_exec(const char *home, const char *sql)
{
	char path[512];
	sqlite3 *db;
	snprintf(path, sizeof(path), "%s/home-%s/sealpost.db", ct_cluster.dir, home);
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK);
	sqlite3_close(db);
}

static void
test_retry(void)
{
	char out[65536], id[64], b[64];
	CHECK(ct_run("alice", out, sizeof(out), "group create trio +15550402 +15550403") == 0);
	/* Bob's Signal state as it is now, before he holds alice's sessions or key. */
	store_exec("bob", "CREATE TABLE backup AS SELECT * FROM signal_state");
	CHECK(ct_run("alice", out, sizeof(out), "send @trio 'warm up'") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count(out, "text", "warm up") == 1);
	CHECK(ct_run("carol", out, sizeof(out), "recv") == 0);
	/* Bob's device loses it (restored from that backup): alice's store still says he has
	 * her key, so the next message brings him none. */
	store_exec("bob", "UPDATE signal_state SET blob = (SELECT blob FROM backup); DROP TABLE backup");
	CHECK(ct_run("alice", out, sizeof(out), "send @trio 'can you read this'") == 0);
	ct_str(out, 0, "msg_id", id, sizeof(id));
	CHECK(ct_run("carol", out, sizeof(out), "recv") == 0);
	CHECK(ct_count(out, "text", "can you read this") == 1);
	/* Bob cannot: held, and his client asks alice. */
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count(out, "text", "can you read this") == 0);
	CHECK(ct_count(out, "msg_id", id) == 1);
	json_t *j = ct_line(out, 0);
	CHECK(j && strcmp(json_string_value(json_object_get(j, "type")), "error") == 0);
	CHECK(json_is_true(json_object_get(j, "held")));
	json_decref(j);
	/* Alice's client answers the request with her key as it was for that message. */
	CHECK(ct_run("alice", out, sizeof(out), "recv") == 0);
	int got = 0;
	for (int i = 0; i < 20 && !got; i++) {
		CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
		got = ct_count(out, "text", "can you read this");
		if (!got)
			usleep(250000);
	}
	CHECK(got == 1);
	CHECK(ct_count(out, "msg_id", id) == 1);
	/* And the next message needs nothing more. */
	CHECK(ct_run("alice", out, sizeof(out), "send @trio 'and this'") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count(out, "text", "and this") == 1);
	CHECK(strcmp(ct_str(out, 0, "conv", b, sizeof(b)), "@trio") == 0);
	CHECK(ct_run("carol", out, sizeof(out), "recv") == 0);
}

static void
test_queue_full(void)
{
	char out[65536], cdev[32], id[64];
	device_of("carol", cdev, sizeof(cdev));
	/* Carol stops reading: her queue (16 entries) fills while bob keeps up. */
	int refused = 0;
	for (int i = 0; i < 24 && !refused; i++) {
		CHECK(ct_run("alice", out, sizeof(out), "send @trio 'msg %d'", i) == 0);
		json_t *j = ct_line(out, 0);
		CHECK(j && strcmp(json_string_value(json_object_get(j, "status")), "sent") == 0);
		refused = (int)json_integer_value(json_object_get(j, "refused"));
		json_decref(j);
		ct_str(out, 0, "msg_id", id, sizeof(id));
		/* Bob reads, and alice takes his receipts (her queue has a cap too). */
		CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
		CHECK(ct_run("alice", out, sizeof(out), "recv") == 0);
	}
	CHECK(refused == 1);
	/* Bob got it; the sender's record says carol's device failed: queue full. */
	CHECK(ct_run("alice", out, sizeof(out), "status %s --offline", id) == 0);
	json_t *j = ct_line(out, 0), *devs = json_object_get(j, "devices");
	int failed = 0, sent = 0;
	for (size_t i = 0; i < json_array_size(devs); i++) {
		json_t *d = json_array_get(devs, i);
		const char *st = json_string_value(json_object_get(d, "status"));
		if (strcmp(st, "failed") == 0) {
			failed++;
			CHECK(strcmp(json_string_value(json_object_get(d, "device")), cdev) == 0);
			CHECK(strcmp(json_string_value(json_object_get(d, "reason")), "queue full") == 0);
		} else {
			sent++;
		}
	}
	json_decref(j);
	CHECK(failed == 1 && sent == 1);
	/* 1:1 to carol, whose second device has room: SENT, her full one refused. */
	ct_link("carol", "carol2");
	CHECK(ct_run("alice", out, sizeof(out), "send +15550403 'one of two'") == 0);
	j = ct_line(out, 0);
	CHECK(j && strcmp(json_string_value(json_object_get(j, "status")), "sent") == 0);
	CHECK(json_integer_value(json_object_get(j, "refused")) == 1);
	json_decref(j);
	CHECK(ct_run("carol2", out, sizeof(out), "recv") == 0);
	CHECK(ct_count(out, "text", "one of two") == 1);
}

/* Rows of a query on a home's store that yield 1 (e.g. "SELECT 1 FROM ..."). */
static int
store_count(const char *home, const char *sql)
{
	char path[512];
	sqlite3 *db;
	sqlite3_stmt *st;
	int n = 0;
	snprintf(path, sizeof(path), "%s/home-%s/sealpost.db", ct_cluster.dir, home);
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK);
	while (sqlite3_step(st) == SQLITE_ROW)
		n++;
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

/* Carol's second device holds alice's key, then is removed: alice's next send rotates
 * (her record of who holds the key starts again without it) and the others still read. */
static void
test_device_removed(void)
{
	char out[65536], dev2[32], sql[160];
	CHECK(ct_run("carol", out, sizeof(out), "recv") == 0);
	CHECK(ct_run("carol2", out, sizeof(out), "recv") == 0);
	device_of("carol2", dev2, sizeof(dev2));
	CHECK(ct_run("alice", out, sizeof(out), "send @trio 'to all three and carol2'") == 0);
	/* Ids are stored as signed 64-bit values. */
	snprintf(sql, sizeof(sql), "SELECT 1 FROM sk_sent WHERE device = %lld", (long long)strtoull(dev2, NULL, 10));
	CHECK(store_count("alice", sql) == 1);
	CHECK(ct_run("carol2", out, sizeof(out), "recv") == 0);
	CHECK(ct_count(out, "text", "to all three and carol2") == 1);
	CHECK(ct_run("carol", out, sizeof(out), "devices remove %s", dev2) == 0);
	CHECK(ct_run("alice", out, sizeof(out), "send @trio 'after carol2 left'") == 0);
	CHECK(store_count("alice", sql) == 0);
	CHECK(store_count("alice", "SELECT 1 FROM sk_sent") == 2);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count(out, "text", "after carol2 left") == 1);
	CHECK(ct_run("carol", out, sizeof(out), "recv") == 0);
	CHECK(ct_count(out, "text", "after carol2 left") == 1);
}

int
main(void)
{
	uint64_t t0 = sp_time_ms();
	setenv("SEALPOST_INBOXSRV_MAX_QUEUE_ENTRIES", "16", 1);
	setenv("SEALPOST_INBOXSRV_QUEUE_SHARE", "100", 1);
	setenv("SEALPOST_CONNSRV_DEVCACHE_MS", "200", 1);
	ct_start();
	ct_register("alice", "+15550401", alice, sizeof(alice));
	ct_register("bob", "+15550402", bob, sizeof(bob));
	ct_register("carol", "+15550403", carol, sizeof(carol));
	char out[4096];
	const char *homes[] = {"alice", "bob", "carol"}, *phones[] = {"+15550401", "+15550402", "+15550403"};
	const char *ids[] = {alice, bob, carol};
	for (int i = 0; i < 3; i++)
		for (int k = 0; k < 3; k++)
			if (i != k)
				CHECK(ct_run(homes[i], out, sizeof(out), "contact add %s %s", phones[k], ids[k]) == 0);
	test_retry();
	test_queue_full();
	test_device_removed();
	ct_down();
	printf("group_recover_itest: all passed in %llu ms\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
