/* Effects of an LMDB write transaction as a replication record (lmdbfx.h). */
#include "lmdbfx.h"

#include <stdlib.h>
#include <string.h>

#include "sp_bytes.h"
#include "sp_error.h"

void
repl_fx_init(repl_fx *fx)
{
	memset(fx, 0, sizeof(*fx));
}

void
repl_fx_fini(repl_fx *fx)
{
	free(fx->buf);
	memset(fx, 0, sizeof(*fx));
}

void
repl_fx_reset(repl_fx *fx)
{
	fx->len = 0;
	fx->n = 0;
	fx->err = SP_OK;
}

static int
reserve(repl_fx *fx, size_t more)
{
	if (fx->len == 0)
		more++; /* the version byte */
	if (fx->len + more <= fx->cap)
		return SP_OK;
	size_t cap = fx->cap ? fx->cap : 256;
	while (cap < fx->len + more)
		cap *= 2;
	uint8_t *b = realloc(fx->buf, cap);
	if (!b)
		return SP_ENOMEM;
	fx->buf = b;
	fx->cap = cap;
	return SP_OK;
}

static int
add(repl_fx *fx, unsigned kind, unsigned db, const void *key, size_t klen, const void *val,
    size_t vlen)
{
	if (fx->err)
		return fx->err;
	int rc = SP_OK;
	if (db >= REPL_FX_MAX_DBS || klen == 0 || klen > REPL_FX_KEY_MAX || vlen > UINT32_MAX)
		rc = SP_EINVAL;
	else
		rc = reserve(fx, 4 + klen + (kind == REPL_FX_PUT ? 4 + vlen : 0));
	if (rc)
		return fx->err = rc;
	if (fx->len == 0)
		fx->buf[fx->len++] = REPL_FX_VERSION;
	uint8_t *p = fx->buf + fx->len;
	p[0] = (uint8_t)kind;
	p[1] = (uint8_t)db;
	sp_be16_put(p + 2, (uint16_t)klen);
	memcpy(p + 4, key, klen);
	p += 4 + klen;
	if (kind == REPL_FX_PUT) {
		sp_be32_put(p, (uint32_t)vlen);
		if (vlen)
			memcpy(p + 4, val, vlen);
		p += 4 + vlen;
	}
	fx->len = (size_t)(p - fx->buf);
	fx->n++;
	return SP_OK;
}

int
repl_fx_put(repl_fx *fx, unsigned db, const void *key, size_t klen, const void *val, size_t vlen)
{
	return add(fx, REPL_FX_PUT, db, key, klen, val, vlen);
}

int
repl_fx_del(repl_fx *fx, unsigned db, const void *key, size_t klen)
{
	return add(fx, REPL_FX_DEL, db, key, klen, NULL, 0);
}

/* One entry at rec[*off]: checked against the bounds, *off moved past it. */
typedef struct fx_entry {
	unsigned kind, db;
	const uint8_t *key, *val;
	size_t klen, vlen;
} fx_entry;

static int
next_entry(const uint8_t *rec, size_t len, size_t *off, unsigned ndb, fx_entry *e)
{
	size_t o = *off;
	if (len - o < 4)
		return SP_EMALFORMED;
	e->kind = rec[o];
	e->db = rec[o + 1];
	e->klen = sp_be16_get(rec + o + 2);
	o += 4;
	if ((e->kind != REPL_FX_PUT && e->kind != REPL_FX_DEL) || e->klen == 0
	    || e->klen > REPL_FX_KEY_MAX || len - o < e->klen)
		return SP_EMALFORMED;
	if (e->db >= ndb)
		return SP_ERANGE;
	e->key = rec + o;
	o += e->klen;
	e->val = NULL;
	e->vlen = 0;
	if (e->kind == REPL_FX_PUT) {
		if (len - o < 4)
			return SP_EMALFORMED;
		e->vlen = sp_be32_get(rec + o);
		o += 4;
		if (len - o < e->vlen)
			return SP_EMALFORMED;
		e->val = rec + o;
		o += e->vlen;
	}
	*off = o;
	return SP_OK;
}

int
repl_fx_check(const uint8_t *rec, size_t len, unsigned ndb, size_t *entries)
{
	size_t n = 0, off = 1;
	if (!rec || len == 0 || rec[0] != REPL_FX_VERSION || ndb > REPL_FX_MAX_DBS)
		return SP_EMALFORMED;
	while (off < len) {
		fx_entry e;
		int rc = next_entry(rec, len, &off, ndb, &e);
		if (rc)
			return rc;
		n++;
	}
	if (entries)
		*entries = n;
	return SP_OK;
}

int
repl_fx_apply(const uint8_t *rec, size_t len, MDB_txn *txn, const MDB_dbi *dbis, unsigned ndb)
{
	int rc = repl_fx_check(rec, len, ndb, NULL);
	if (rc)
		return rc;
	size_t off = 1;
	while (off < len) {
		fx_entry e;
		next_entry(rec, len, &off, ndb, &e); /* checked above */
		MDB_val k = { e.klen, (void *)e.key };
		if (e.kind == REPL_FX_PUT) {
			MDB_val v = { e.vlen, (void *)e.val };
			rc = mdb_put(txn, dbis[e.db], &k, &v, 0);
		} else {
			rc = mdb_del(txn, dbis[e.db], &k, NULL);
			if (rc == MDB_NOTFOUND)
				return SP_EMISMATCH;
		}
		if (rc)
			return SP_ESTORE;
	}
	return SP_OK;
}

int
repl_lmdb_file_get(const char *path, const char *db, const void *key, size_t klen, uint8_t *out,
    size_t cap)
{
	MDB_env *env = NULL;
	MDB_txn *txn = NULL;
	MDB_dbi dbi;
	int rc;
	if ((rc = mdb_env_create(&env)) || (rc = mdb_env_set_maxdbs(env, REPL_FX_MAX_DBS))
	    || (rc = mdb_env_open(env, path, MDB_NOSUBDIR | MDB_RDONLY | MDB_NOLOCK, 0600))
	    || (rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn)) || (rc = mdb_dbi_open(txn, db, 0, &dbi))) {
		if (txn)
			mdb_txn_abort(txn);
		if (env)
			mdb_env_close(env);
		return rc == MDB_NOTFOUND ? SP_ENOTFOUND : SP_ESTORE;
	}
	MDB_val k = { klen, (void *)key }, v;
	rc = mdb_get(txn, dbi, &k, &v);
	int out_rc = rc == MDB_NOTFOUND ? SP_ENOTFOUND : rc || v.mv_size != cap ? SP_ESTORE : SP_OK;
	if (out_rc == SP_OK)
		memcpy(out, v.mv_data, cap);
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return out_rc;
}
