/* keysrv's store as the primary of a replicated group (keys_store_set_repl): every write
 * transaction's effects, handed to the hook at commit with the next LSN, applied to a
 * second store (the replica) leave both stores byte for byte the same, the secret and
 * cursor deletes (sweep, a device's prekeys) included; a hook that fails aborts the
 * transaction; an out-of-order record is refused. */
#include <check.h>

#include "keysrv/prekeys.h"
#include "keysrv_harness.h"
#include "sp_bytes.h"
#include "check_run.h"
#include "lmdb_cmp.h"

static char pdir[256], rdir[256];
static keys_store *P, *R;
static uint64_t last_lsn;
static int fail_next;

static int
to_replica(void *arg, uint64_t lsn, const uint8_t *rec, size_t len)
{
	(void)arg;
	if (fail_next) {
		fail_next = 0;
		return SP_ENOTPRIMARY;
	}
	ck_assert_uint_eq(lsn, last_lsn + 1);
	last_lsn = lsn;
	return keys_store_apply(R, lsn, rec, len);
}

static void
setup(void)
{
	snprintf(pdir, sizeof(pdir), "/tmp/keysrv-replp-XXXXXX");
	snprintf(rdir, sizeof(rdir), "/tmp/keysrv-replr-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(pdir));
	ck_assert_ptr_nonnull(mkdtemp(rdir));
	ck_assert_int_eq(keys_store_open_replicated(&P, pdir, 16 << 20), SP_OK);
	ck_assert_int_eq(keys_store_open_replicated(&R, rdir, 16 << 20), SP_OK);
	keys_store_set_repl(P, to_replica, NULL);
	last_lsn = 0;
	fail_next = 0;
}

static void
teardown(void)
{
	keys_store_close(P);
	keys_store_close(R);
	kt_rmtree(pdir);
	kt_rmtree(rdir);
}

static void
assert_same(void)
{
	MDB_txn *tp, *tr;
	ck_assert_int_eq(keys_store_begin(P, false, &tp), SP_OK);
	ck_assert_int_eq(keys_store_begin(R, false, &tr), SP_OK);
	for (int db = 0; db < KDB__COUNT; db++)
		ck_assert_msg(lmdb_same(tp, keys_store_dbi(P, db), tr, keys_store_dbi(R, db)),
		    "db %d differs", db);
	keys_store_abort(tp);
	keys_store_abort(tr);
}

static void
put(keys_db db, uint64_t k, const char *v)
{
	MDB_txn *txn;
	uint8_t key[12] = { 0 };
	sp_be64_put(key, k);
	ck_assert_int_eq(keys_store_begin(P, true, &txn), SP_OK);
	ck_assert_int_eq(keys_store_put(P, txn, db, key, db == KDB_OPKS ? 12 : 8, v, strlen(v), 0), SP_OK);
	ck_assert_int_eq(keys_store_commit(txn), SP_OK);
}

START_TEST(writes_replicate)
{
	/* The secret: made by the primary as a logged write; the replica holds the same. */
	ck_assert_int_eq(keys_store_ensure_secret(P), SP_OK);
	ck_assert_int_eq(keys_store_ensure_secret(R), SP_OK); /* loads the replicated one */
	ck_assert(memcmp(keys_store_secret(P), keys_store_secret(R), 32) == 0);
	ck_assert_uint_eq(last_lsn, 1);

	for (uint64_t i = 1; i <= 20; i++)
		put(i % 2 ? KDB_USERS : KDB_GROUPS, i, i % 3 ? "value" : "another value");
	/* One transaction with several effects, a delete and a cursor delete among them. */
	MDB_txn *txn;
	uint8_t key[12];
	ck_assert_int_eq(keys_store_begin(P, true, &txn), SP_OK);
	for (uint32_t id = 0; id < 5; id++) {
		sp_be64_put(key, 77);
		sp_be32_put(key + 8, id);
		ck_assert_int_eq(keys_store_put(P, txn, KDB_OPKS, key, 12, "opk", 3, 0), SP_OK);
	}
	sp_be64_put(key, 3);
	ck_assert_int_eq(keys_store_del(P, txn, KDB_USERS, key, 8), SP_OK);
	ck_assert_int_eq(keys_store_commit(txn), SP_OK);
	assert_same();
	ck_assert_int_eq(keys_store_begin(P, true, &txn), SP_OK);
	ck_assert_int_eq(keys_prekeys_delete_all(P, txn, 77), SP_OK);
	ck_assert_int_eq(keys_store_commit(txn), SP_OK);
	assert_same();

	/* A transaction that changed nothing logs nothing. */
	uint64_t before = last_lsn;
	ck_assert_int_eq(keys_store_begin(P, true, &txn), SP_OK);
	ck_assert_int_eq(keys_store_commit(txn), SP_OK);
	ck_assert_uint_eq(last_lsn, before);

	/* A hook that fails (deposed meanwhile) aborts the transaction: nothing stays. */
	fail_next = 1;
	ck_assert_int_eq(keys_store_begin(P, true, &txn), SP_OK);
	sp_be64_put(key, 999);
	ck_assert_int_eq(keys_store_put(P, txn, KDB_USERS, key, 8, "lost", 4, 0), SP_OK);
	ck_assert_int_eq(keys_store_commit(txn), SP_ENOTPRIMARY);
	uint64_t lp, lr;
	ck_assert_int_eq(keys_store_lsn(P, &lp), SP_OK);
	ck_assert_int_eq(keys_store_lsn(R, &lr), SP_OK);
	ck_assert_uint_eq(lp, lr);
	assert_same();

	/* Sweeping (cursor deletes) replicates too. */
	unsigned n = 0;
	ck_assert_int_eq(keys_store_sweep(P, UINT64_MAX / 2, 100, &n), SP_OK);
	assert_same();

	/* A record out of order is refused by the replica. */
	ck_assert_int_eq(keys_store_apply(R, lr + 2, (const uint8_t *)"\1", 1), SP_EGAP);
	ck_assert_int_eq(keys_store_apply(R, lr + 1, (const uint8_t *)"\1\7", 2), SP_EMALFORMED);
	ck_assert_int_eq(keys_store_lsn(R, &lr), SP_OK);
	ck_assert_uint_eq(lp, lr);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("keysrv_repl_store");
	TCase *tc = tcase_create("repl");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, writes_replicate);
	suite_add_tcase(s, tc);
	return check_run(s);
}
