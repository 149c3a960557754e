/* Tests: whether two LMDB databases hold the same keys and values (in two transactions,
 * possibly of two environments). */
#ifndef LMDB_CMP_H
#define LMDB_CMP_H

#include <lmdb.h>
#include <stdbool.h>
#include <string.h>

static inline bool
lmdb_same(MDB_txn *ta, MDB_dbi da, MDB_txn *tb, MDB_dbi db)
{
	MDB_cursor *ca, *cb;
	MDB_val ka, va, kb, vb;
	if (mdb_cursor_open(ta, da, &ca))
		return false;
	if (mdb_cursor_open(tb, db, &cb)) {
		mdb_cursor_close(ca);
		return false;
	}
	int a = mdb_cursor_get(ca, &ka, &va, MDB_FIRST), b = mdb_cursor_get(cb, &kb, &vb, MDB_FIRST);
	bool same = true;
	while (same && a == 0 && b == 0) {
		same = ka.mv_size == kb.mv_size && memcmp(ka.mv_data, kb.mv_data, ka.mv_size) == 0
		    && va.mv_size == vb.mv_size
		    && (va.mv_size == 0 || memcmp(va.mv_data, vb.mv_data, va.mv_size) == 0);
		a = mdb_cursor_get(ca, &ka, &va, MDB_NEXT);
		b = mdb_cursor_get(cb, &kb, &vb, MDB_NEXT);
	}
	mdb_cursor_close(ca);
	mdb_cursor_close(cb);
	return same && a == MDB_NOTFOUND && b == MDB_NOTFOUND;
}

#endif
