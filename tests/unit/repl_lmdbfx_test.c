/* Effects of LMDB write transactions as replication records (repl/lmdbfx.h): a seeded
 * sequence of random transactions on a "primary" environment, each captured and applied
 * to a "replica" environment, leaves every database byte-for-byte equal; malformed records
 * are refused whole. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check_run.h"
#include "lmdb_cmp.h"
#include "repl/lmdbfx.h"
#include "sp_error.h"
#include "test_rng.h"

#define NDB 3
static const char *const db_names[NDB] = { "a", "b", "c" };

typedef struct env {
	char dir[64];
	MDB_env *env;
	MDB_dbi dbi[NDB];
} env;

static env P, R;

static void
env_open(env *e, const char *tmpl)
{
	snprintf(e->dir, sizeof(e->dir), "%s", tmpl);
	ck_assert_ptr_nonnull(mkdtemp(e->dir));
	ck_assert_int_eq(mdb_env_create(&e->env), 0);
	ck_assert_int_eq(mdb_env_set_maxdbs(e->env, NDB), 0);
	ck_assert_int_eq(mdb_env_set_mapsize(e->env, 64u << 20), 0);
	ck_assert_int_eq(mdb_env_open(e->env, e->dir, MDB_NOSYNC, 0600), 0);
	MDB_txn *t;
	ck_assert_int_eq(mdb_txn_begin(e->env, NULL, 0, &t), 0);
	for (int i = 0; i < NDB; i++)
		ck_assert_int_eq(mdb_dbi_open(t, db_names[i], MDB_CREATE, &e->dbi[i]), 0);
	ck_assert_int_eq(mdb_txn_commit(t), 0);
}

static void
env_close(env *e)
{
	char cmd[96];
	mdb_env_close(e->env);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", e->dir);
	ck_assert_int_eq(system(cmd), 0);
}

static void
setup(void)
{
	env_open(&P, "/tmp/repl_fx_p.XXXXXX");
	env_open(&R, "/tmp/repl_fx_r.XXXXXX");
}

static void
teardown(void)
{
	env_close(&P);
	env_close(&R);
}

/* Every database of the two environments holds the same keys and values. */
static void
assert_same(void)
{
	MDB_txn *tp, *tr;
	ck_assert_int_eq(mdb_txn_begin(P.env, NULL, MDB_RDONLY, &tp), 0);
	ck_assert_int_eq(mdb_txn_begin(R.env, NULL, MDB_RDONLY, &tr), 0);
	for (int i = 0; i < NDB; i++)
		ck_assert_msg(lmdb_same(tp, P.dbi[i], tr, R.dbi[i]), "db %d differs", i);
	mdb_txn_abort(tp);
	mdb_txn_abort(tr);
}

START_TEST(random_transactions_replicate)
{
	uint64_t rng = 0x5eed0001;
	repl_fx fx;
	repl_fx_init(&fx);
	uint8_t key[REPL_FX_KEY_MAX], val[2048];
	for (int t = 0; t < 300; t++) {
		MDB_txn *txn;
		ck_assert_int_eq(mdb_txn_begin(P.env, NULL, 0, &txn), 0);
		repl_fx_reset(&fx);
		int ops = 1 + (int)test_rng_below(&rng, 20);
		for (int k = 0; k < ops; k++) {
			unsigned db = (unsigned)test_rng_below(&rng, NDB);
			/* Small key space so that deletes and overwrites hit existing keys. */
			size_t klen = 1 + test_rng_below(&rng, 3);
			for (size_t i = 0; i < klen; i++)
				key[i] = (uint8_t)test_rng_below(&rng, 4);
			MDB_val mk = { klen, key };
			if (test_rng_below(&rng, 3) == 0) {
				MDB_val cur;
				if (mdb_get(txn, P.dbi[db], &mk, &cur) != 0)
					continue;
				ck_assert_int_eq(mdb_del(txn, P.dbi[db], &mk, NULL), 0);
				ck_assert_int_eq(repl_fx_del(&fx, db, key, klen), SP_OK);
			} else {
				size_t vlen = test_rng_below(&rng, sizeof(val));
				for (size_t i = 0; i < vlen; i++)
					val[i] = (uint8_t)test_rng_next(&rng);
				MDB_val mv = { vlen, val };
				ck_assert_int_eq(mdb_put(txn, P.dbi[db], &mk, &mv, 0), 0);
				ck_assert_int_eq(repl_fx_put(&fx, db, key, klen, val, vlen), SP_OK);
			}
		}
		ck_assert_int_eq(mdb_txn_commit(txn), 0);
		if (fx.n == 0)
			continue;
		size_t entries = 0;
		ck_assert_int_eq(repl_fx_check(fx.buf, fx.len, NDB, &entries), SP_OK);
		ck_assert_uint_eq(entries, fx.n);
		ck_assert_int_eq(mdb_txn_begin(R.env, NULL, 0, &txn), 0);
		ck_assert_int_eq(repl_fx_apply(fx.buf, fx.len, txn, R.dbi, NDB), SP_OK);
		ck_assert_int_eq(mdb_txn_commit(txn), 0);
		if (t % 50 == 49)
			assert_same();
	}
	assert_same();
	repl_fx_fini(&fx);
}
END_TEST

START_TEST(bad_appends_and_records_refused)
{
	repl_fx fx;
	uint8_t k[REPL_FX_KEY_MAX + 1] = { 1 };
	repl_fx_init(&fx);
	ck_assert_int_eq(repl_fx_put(&fx, REPL_FX_MAX_DBS, k, 1, "v", 1), SP_EINVAL);
	ck_assert_int_eq(repl_fx_put(&fx, 0, k, 1, "v", 1), SP_EINVAL); /* the error sticks */
	repl_fx_reset(&fx);
	ck_assert_int_eq(repl_fx_del(&fx, 0, k, 0), SP_EINVAL);
	repl_fx_reset(&fx);
	ck_assert_int_eq(repl_fx_del(&fx, 0, k, REPL_FX_KEY_MAX + 1), SP_EINVAL);
	repl_fx_reset(&fx);
	ck_assert_int_eq(repl_fx_put(&fx, 1, k, 2, "xyz", 3), SP_OK);
	ck_assert_int_eq(repl_fx_del(&fx, 2, k, 1), SP_OK);
	/* A truncation is malformed unless it falls between entries (the log's framing, with
	 * its length and CRC, keeps records whole): the version byte alone is empty, and the
	 * put alone (1 + 4 + 2 + 4 + 3 bytes) is one entry. */
	size_t one = 1 + 4 + 2 + 4 + 3;
	for (size_t n = 2; n < fx.len; n++)
		ck_assert_int_eq(repl_fx_check(fx.buf, n, NDB, NULL), n == one ? SP_OK : SP_EMALFORMED);
	ck_assert_int_eq(repl_fx_check(fx.buf, 1, NDB, NULL), SP_OK);
	ck_assert_int_eq(repl_fx_check(fx.buf, fx.len, 2, NULL), SP_ERANGE); /* db 2 of 2 */
	uint8_t bad[64];
	memcpy(bad, fx.buf, fx.len);
	bad[0] = 9;
	ck_assert_int_eq(repl_fx_check(bad, fx.len, NDB, NULL), SP_EMALFORMED);
	memcpy(bad, fx.buf, fx.len);
	bad[1] = 7; /* kind */
	ck_assert_int_eq(repl_fx_check(bad, fx.len, NDB, NULL), SP_EMALFORMED);
	memcpy(bad, fx.buf, fx.len);
	bad[3] = 0, bad[4] = 0; /* key length 0 */
	ck_assert_int_eq(repl_fx_check(bad, fx.len, NDB, NULL), SP_EMALFORMED);
	memcpy(bad, fx.buf, fx.len);
	bad[9] = 0xff; /* value length past the end */
	ck_assert_int_eq(repl_fx_check(bad, fx.len, NDB, NULL), SP_EMALFORMED);

	/* A malformed record applies nothing; a delete of a missing key is a mismatch. */
	MDB_txn *txn;
	ck_assert_int_eq(mdb_txn_begin(R.env, NULL, 0, &txn), 0);
	ck_assert_int_eq(repl_fx_apply(bad, fx.len, txn, R.dbi, NDB), SP_EMALFORMED);
	ck_assert_int_eq(repl_fx_apply(fx.buf, fx.len, txn, R.dbi, NDB), SP_EMISMATCH);
	mdb_txn_abort(txn);
	assert_same();
	repl_fx_fini(&fx);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("repl_lmdbfx");
	TCase *tc = tcase_create("fx");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, random_transactions_replicate);
	tcase_add_test(tc, bad_appends_and_records_refused);
	suite_add_tcase(s, tc);
	return check_run(s);
}
