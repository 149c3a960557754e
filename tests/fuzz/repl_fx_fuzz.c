/* Fuzzes the LMDB effects record checker and applier (repl/lmdbfx.c) with arbitrary bytes,
 * as a replica reads them from another server: a record the check accepts is applied to a
 * scratch environment in a transaction that is then aborted, and must apply or end in
 * SP_EMISMATCH (a delete of a missing key); one the check refuses is refused by apply too
 * and writes nothing (sanitizers catch overreads). */
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "repl/lmdbfx.h"
#include "sp_error.h"

#define NDB 4

static MDB_env *env;
static MDB_dbi dbi[NDB];

static void
fail(const char *what)
{
	fprintf(stderr, "repl_fx_fuzz: %s\n", what);
	abort();
}

static char dir[] = "/tmp/repl_fx_fuzz.XXXXXX";

/* The scratch environment goes when the run ends. */
static void
remove_env(void)
{
	char p[64];
	mdb_env_close(env);
	snprintf(p, sizeof(p), "%s/data.mdb", dir);
	unlink(p);
	snprintf(p, sizeof(p), "%s/lock.mdb", dir);
	unlink(p);
	rmdir(dir);
}

static void
open_env(void)
{
	MDB_txn *t;
	if (!mkdtemp(dir) || mdb_env_create(&env) || mdb_env_set_maxdbs(env, NDB)
	    || mdb_env_set_mapsize(env, 256u << 20) || mdb_env_open(env, dir, MDB_NOSYNC, 0600)
	    || mdb_txn_begin(env, NULL, 0, &t))
		fail("scratch environment");
	for (int i = 0; i < NDB; i++) {
		char name[2] = { (char)('a' + i), 0 };
		if (mdb_dbi_open(t, name, MDB_CREATE, &dbi[i]))
			fail("dbi");
	}
	if (mdb_txn_commit(t))
		fail("commit");
	atexit(remove_env);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!env)
		open_env();
	size_t n = 0;
	int crc = repl_fx_check(data, size, NDB, &n);
	MDB_txn *txn;
	if (mdb_txn_begin(env, NULL, 0, &txn))
		fail("begin");
	int arc = repl_fx_apply(data, size, txn, dbi, NDB);
	mdb_txn_abort(txn);
	if (crc != SP_OK && arc != crc)
		fail("apply took a record the check refused");
	if (crc == SP_OK && arc != SP_OK && arc != SP_EMISMATCH && arc != SP_ESTORE)
		fail("apply refused a checked record");
	return 0;
}
