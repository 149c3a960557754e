/*
 * A sender cannot claim another user's phone number (docs/SECURITY.md, "Identity shown to
 * users"): mallory's client is altered to write bob's number inside her envelopes; carol,
 * who has no contact for either, sees mallory's messages as from "#<mallory's user id>",
 * does not learn bob's number for her, and still shows bob's own message as bob's number
 * (keysrv confirms that number is his).
 */
#include <sqlite3.h>

#include "client_util.h"
#include "sp_time.h"

/* What mallory's home says her number is (her client writes it into every envelope). */
static void
set_home_phone(const char *home, const char *phone)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/home-%s/sealpost.db", ct_cluster.dir, home);
	sqlite3 *db;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	sqlite3_stmt *st;
	CHECK(sqlite3_prepare_v2(db, "UPDATE meta SET v = ? WHERE k = 'phone'", -1, &st, NULL) ==
	      SQLITE_OK);
	sqlite3_bind_blob(st, 1, phone, (int)strlen(phone), SQLITE_STATIC);
	CHECK(sqlite3_step(st) == SQLITE_DONE);
	CHECK(sqlite3_changes(db) == 1);
	sqlite3_finalize(st);
	sqlite3_close(db);
}

/* The user id carol's contacts give `phone` (0: none). */
static unsigned long long
contact_of(const char *home, const char *phone)
{
	char path[400];
	snprintf(path, sizeof(path), "%s/home-%s/sealpost.db", ct_cluster.dir, home);
	sqlite3 *db;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	sqlite3_stmt *st;
	CHECK(sqlite3_prepare_v2(db, "SELECT user FROM contacts WHERE phone = ?", -1, &st, NULL) ==
	      SQLITE_OK);
	sqlite3_bind_text(st, 1, phone, -1, SQLITE_STATIC);
	unsigned long long u = sqlite3_step(st) == SQLITE_ROW ? (unsigned long long)sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	sqlite3_close(db);
	return u;
}

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	ct_start();
	char out[16384], bob[32], carol[32], mallory[32], from[64], want[64];
	ct_register("bob", "+15550601", bob, sizeof(bob));
	ct_register("carol", "+15550602", carol, sizeof(carol));
	ct_register("mallory", "+15550603", mallory, sizeof(mallory));
	CHECK(ct_run("mallory", out, sizeof(out), "contact add +15550602 %s", carol) == 0);
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550602 %s", carol) == 0);

	set_home_phone("mallory", "+15550601");
	CHECK(ct_run("mallory", out, sizeof(out), "send +15550602 'it is me, bob'") == 0);
	CHECK(ct_run("carol", out, sizeof(out), "recv --wait 3") == 0);
	CHECK(ct_nlines(out) >= 1);
	snprintf(want, sizeof(want), "#%s", mallory);
	CHECK(strcmp(ct_str(out, 0, "from", from, sizeof(from)), want) == 0);
	CHECK(contact_of("carol", "+15550601") == 0);

	/* bob's own claim is confirmed by keysrv: shown and learnt. */
	CHECK(ct_run("bob", out, sizeof(out), "send +15550602 'really bob'") == 0);
	CHECK(ct_run("carol", out, sizeof(out), "recv --wait 3") == 0);
	CHECK(strcmp(ct_str(out, 0, "from", from, sizeof(from)), "+15550601") == 0);
	CHECK(contact_of("carol", "+15550601") == strtoull(bob, NULL, 10));

	/* mallory again: still herself, not bob. */
	CHECK(ct_run("mallory", out, sizeof(out), "send +15550602 'bob again'") == 0);
	CHECK(ct_run("carol", out, sizeof(out), "recv --wait 3") == 0);
	CHECK(strcmp(ct_str(out, 0, "from", from, sizeof(from)), want) == 0);

	ct_down();
	printf("client_identity_itest: all passed in %llu ms\n",
	       (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
