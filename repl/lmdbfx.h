/*
 * Effects of an LMDB write transaction as one replication record ("effects, not
 * requests": docs/REPLICATION.md rule 6), for a store whose ops are too varied to log
 * one by one (the key store, issue 13): while a primary's write transaction runs, every
 * put and delete it makes is appended to a repl_fx; the encoded effects are the record the
 * node logs and ships (repl/node.h); a replica applies them in one write transaction and
 * reaches the same bytes in every database. Databases are named by a small index the store
 * fixes (its table of DBIs, the same on every copy). Not for MDB_DUPSORT databases (a
 * delete removes the key).
 *
 * Record format (big-endian): a version byte (1), then entries up to the end:
 *   u8 kind (1 put, 2 delete), u8 database index, u16 key length (1..511: LMDB's bound),
 *   the key, and for a put: u32 value length, the value.
 * A record comes from another server and is checked whole before anything is applied.
 *
 * A repl_fx is used by one thread at a time (the store's writer).
 */
#ifndef REPL_LMDBFX_H
#define REPL_LMDBFX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#define REPL_FX_VERSION 1
#define REPL_FX_KEY_MAX 511
#define REPL_FX_MAX_DBS 64
#define REPL_FX_PUT 1
#define REPL_FX_DEL 2

typedef struct repl_fx {
	uint8_t *buf; /* the record so far; buf[0] is the version once anything was added */
	size_t len, cap;
	size_t n; /* entries */
	int err; /* the first failed append (SP_ENOMEM, SP_EINVAL): the record is unusable */
} repl_fx;

void repl_fx_init(repl_fx *fx);
void repl_fx_fini(repl_fx *fx);
/* Empties it for the next transaction (keeps the buffer). */
void repl_fx_reset(repl_fx *fx);

/* Appends a put / a delete. SP_OK, SP_EINVAL (db >= REPL_FX_MAX_DBS, key length out of
 * 1..REPL_FX_KEY_MAX, value over 4 GiB), SP_ENOMEM; an error sticks in fx->err. */
int repl_fx_put(repl_fx *fx, unsigned db, const void *key, size_t klen, const void *val,
    size_t vlen);
int repl_fx_del(repl_fx *fx, unsigned db, const void *key, size_t klen);

/* Checks a record (hostile input): SP_OK, or SP_EMALFORMED (bad version, kind or lengths,
 * truncated entry) or SP_ERANGE (a database index >= ndb). An empty record (no entries)
 * is valid. *entries (optional) gets the count. */
int repl_fx_check(const uint8_t *rec, size_t len, unsigned ndb, size_t *entries);

/* Checks, then applies a record in `txn` (a write transaction on the replica), dbis[i]
 * being the replica's handle of database i. SP_OK; the check's errors (nothing applied);
 * SP_EMISMATCH when a delete finds no key (the replica's store differs from the
 * primary's: the caller stops); SP_ESTORE for another LMDB error. On an error the caller
 * aborts the transaction. */
int repl_fx_apply(const uint8_t *rec, size_t len, MDB_txn *txn, const MDB_dbi *dbis,
    unsigned ndb);

/* Reads the value of `key` in the named database of an LMDB environment file (a snapshot
 * copy: opened read-only, no lock file) into out[0..cap), which it must fill exactly.
 * SP_OK, SP_ENOTFOUND, SP_ESTORE. */
int repl_lmdb_file_get(const char *path, const char *db, const void *key, size_t klen,
    uint8_t *out, size_t cap);

#endif
