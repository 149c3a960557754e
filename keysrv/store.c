#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>

#include "keysrv/store.h"
#include "repl/lmdbfx.h"
#include "sp_bytes.h"
#include "sp_error.h"
#include "sp_log.h"

/* Bumped when a record layout changes; records carry it as their first byte. */
#define REC_VERSION 1

struct keys_store {
	MDB_env *env;
	MDB_dbi dbi[KDB__COUNT];
	uint8_t secret[32];
	bool secret_loaded;
	/* Replication (keys_store_set_repl): every put and delete of the write transaction in
	 * progress (LMDB has one at a time) is captured, and its commit goes through `repl`
	 * first. */
	keys_store_repl_fn repl;
	void *repl_arg;
	MDB_txn *wtxn;
	repl_fx fx;
};

#define LSN_KEY "lsn"

static const char *const db_names[KDB__COUNT] = {
	"meta", "phones", "users", "devices", "opks", "otps", "links", "groups", "members", "budgets",
	"pins", "replies", "settings", "contacts",
};

int
keys_store_err(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return SP_OK;
	case MDB_NOTFOUND:
		return SP_ENOTFOUND;
	case MDB_KEYEXIST:
		return SP_EEXIST;
	case MDB_MAP_FULL:
	case MDB_TXN_FULL:
		return SP_EFULL;
	default:
		sp_error("lmdb: %s", mdb_strerror(rc));
		return SP_ESTORE;
	}
}

/* ---- record codec: little-endian fields in a fixed order after a version byte ---- */

typedef struct wbuf {
	uint8_t *p;
	size_t n, cap;
	bool overflow;
} wbuf;

typedef struct rbuf {
	const uint8_t *p;
	size_t n, off;
	bool bad;
} rbuf;

static void
w_bytes(wbuf *w, const void *p, size_t n)
{
	if (w->n + n > w->cap) {
		w->overflow = true;
		return;
	}
	memcpy(w->p + w->n, p, n);
	w->n += n;
}

static void
w_uint(wbuf *w, uint64_t v, int width)
{
	uint8_t b[8];
	for (int i = 0; i < width; i++, v >>= 8)
		b[i] = (uint8_t)v;
	w_bytes(w, b, (size_t)width);
}

static void
r_bytes(rbuf *r, void *p, size_t n)
{
	if (r->bad || r->off + n > r->n) {
		r->bad = true;
		memset(p, 0, n);
		return;
	}
	memcpy(p, r->p + r->off, n);
	r->off += n;
}

static uint64_t
r_uint(rbuf *r, int width)
{
	uint8_t b[8];
	uint64_t v = 0;
	r_bytes(r, b, (size_t)width);
	for (int i = width - 1; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

/* A length-prefixed (u16) string of at most `max` bytes into buf (NUL-terminated). */
static uint16_t
r_str(rbuf *r, char *buf, size_t max)
{
	uint16_t n = (uint16_t)r_uint(r, 2);
	if (n > max) {
		r->bad = true;
		buf[0] = '\0';
		return 0;
	}
	r_bytes(r, buf, n);
	buf[r->bad ? 0 : n] = '\0';
	return r->bad ? 0 : n;
}

static void
w_str(wbuf *w, const char *s, size_t n)
{
	w_uint(w, n, 2);
	w_bytes(w, s, n);
}

static int
r_done(rbuf *r)
{
	return r->bad || r->off != r->n ? SP_ESTORE : SP_OK;
}

/* ---- open / close ---- */

/* Reads the secret if the store holds one (SP_ENOTFOUND if not). */
static int
read_secret(keys_store *s)
{
	MDB_txn *txn;
	size_t len = 0;
	uint8_t buf[32];
	int rc = keys_store_begin(s, false, &txn);
	if (rc)
		return rc;
	rc = keys_store_get(s, txn, KDB_META, "secret", 6, buf, sizeof(buf), &len);
	keys_store_abort(txn);
	if (rc == SP_OK && len != sizeof(s->secret))
		rc = SP_ESTORE;
	if (rc == SP_OK) {
		memcpy(s->secret, buf, sizeof(buf));
		s->secret_loaded = true;
	}
	sodium_memzero(buf, sizeof(buf));
	return rc;
}

int
keys_store_ensure_secret(keys_store *s)
{
	if (s->secret_loaded)
		return SP_OK;
	int rc = read_secret(s);
	if (rc != SP_ENOTFOUND)
		return rc;
	MDB_txn *txn;
	uint8_t buf[32];
	if ((rc = keys_store_begin(s, true, &txn)))
		return rc;
	size_t len = 0;
	rc = keys_store_get(s, txn, KDB_META, "secret", 6, buf, sizeof(buf), &len);
	if (rc == SP_ENOTFOUND) {
		/* Made once, by the primary when replicated: a logged write like any other. */
		randombytes_buf(buf, sizeof(buf));
		rc = keys_store_put(s, txn, KDB_META, "secret", 6, buf, sizeof(buf), 0);
		if (rc == SP_OK)
			rc = keys_store_commit(txn);
		else
			keys_store_abort(txn);
	} else {
		keys_store_abort(txn);
	}
	sodium_memzero(buf, sizeof(buf));
	return rc ? rc : read_secret(s);
}

/* mkdir -p: creates the missing directories of `dir`. */
static int
mkdir_p(const char *dir)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0700) != 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	return mkdir(path, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

static int
store_open(keys_store **out, const char *dir, size_t map_size)
{
	keys_store *s;
	MDB_txn *txn = NULL;
	int rc;

	if (sodium_init() < 0)
		return SP_ECRYPTO;
	if (mkdir_p(dir) != 0) {
		sp_error("keysrv: cannot create %s: %s", dir, strerror(errno));
		return SP_EIO;
	}
	if (!(s = calloc(1, sizeof(*s))))
		return SP_ENOMEM;
	if ((rc = mdb_env_create(&s->env)) || (rc = mdb_env_set_maxdbs(s->env, KDB__COUNT)) ||
	    (rc = mdb_env_set_mapsize(s->env, map_size)) ||
	    (rc = mdb_env_set_maxreaders(s->env, 126)) || (rc = mdb_env_open(s->env, dir, 0, 0600)))
		goto fail;
	/* Reader slots of a process that was killed would otherwise stay taken. */
	int dead = 0;
	mdb_reader_check(s->env, &dead);
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)))
		goto fail;
	for (int i = 0; i < KDB__COUNT; i++)
		if ((rc = mdb_dbi_open(txn, db_names[i], MDB_CREATE, &s->dbi[i])))
			goto fail;
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc)
		goto fail;
	mdb_env_set_userctx(s->env, s);
	repl_fx_init(&s->fx);
	if ((rc = read_secret(s)) && rc != SP_ENOTFOUND) {
		keys_store_close(s);
		return rc;
	}
	*out = s;
	return SP_OK;
fail:
	sp_error("keysrv: cannot open store in %s: %s", dir, mdb_strerror(rc));
	if (txn)
		mdb_txn_abort(txn);
	keys_store_close(s);
	return SP_ESTORE;
}

int
keys_store_open(keys_store **out, const char *dir, size_t map_size)
{
	int rc = store_open(out, dir, map_size);
	if (rc == SP_OK && (rc = keys_store_ensure_secret(*out))) {
		keys_store_close(*out);
		*out = NULL;
	}
	return rc;
}

int
keys_store_open_replicated(keys_store **out, const char *dir, size_t map_size)
{
	return store_open(out, dir, map_size);
}

void
keys_store_close(keys_store *s)
{
	if (!s)
		return;
	repl_fx_fini(&s->fx);
	if (s->env)
		mdb_env_close(s->env);
	sodium_memzero(s->secret, sizeof(s->secret));
	free(s);
}

const uint8_t *
keys_store_secret(const keys_store *s)
{
	return s->secret;
}

MDB_dbi
keys_store_dbi(const keys_store *s, keys_db db)
{
	return s->dbi[db];
}

int
keys_store_begin(keys_store *s, bool write, MDB_txn **txn)
{
	int rc = keys_store_err(mdb_txn_begin(s->env, NULL, write ? 0 : MDB_RDONLY, txn));
	if (rc == SP_OK && write) {
		s->wtxn = *txn;
		repl_fx_reset(&s->fx);
	}
	return rc;
}

static keys_store *
store_of(MDB_txn *txn)
{
	return mdb_env_get_userctx(mdb_txn_env(txn));
}

static int
get_lsn(keys_store *s, MDB_txn *txn, uint64_t *lsn)
{
	MDB_val k = { sizeof(LSN_KEY) - 1, LSN_KEY }, v;
	int rc = mdb_get(txn, s->dbi[KDB_META], &k, &v);
	if (rc == MDB_NOTFOUND) {
		*lsn = 0;
		return SP_OK;
	}
	if (rc || v.mv_size != 8)
		return SP_ESTORE;
	*lsn = sp_be64_get(v.mv_data);
	return SP_OK;
}

/* The LSN goes in with the ops it follows, and is not itself an effect. */
static int
put_lsn(keys_store *s, MDB_txn *txn, uint64_t lsn)
{
	uint8_t b[8];
	sp_be64_put(b, lsn);
	MDB_val k = { sizeof(LSN_KEY) - 1, LSN_KEY }, v = { 8, b };
	return keys_store_err(mdb_put(txn, s->dbi[KDB_META], &k, &v, 0));
}

int
keys_store_commit(MDB_txn *txn)
{
	keys_store *s = store_of(txn);
	if (s && txn == s->wtxn) {
		s->wtxn = NULL;
		if (s->repl && s->fx.err) {
			mdb_txn_abort(txn);
			return s->fx.err;
		}
		if (s->repl && s->fx.n > 0) {
			/* Logged and fsynced on the sync set before the commit makes it visible. */
			uint64_t lsn;
			int rc = get_lsn(s, txn, &lsn);
			if (rc == SP_OK && (rc = put_lsn(s, txn, lsn + 1)) == SP_OK)
				rc = s->repl(s->repl_arg, lsn + 1, s->fx.buf, s->fx.len);
			if (rc) {
				mdb_txn_abort(txn);
				return rc;
			}
		}
	}
	return keys_store_err(mdb_txn_commit(txn));
}

void
keys_store_abort(MDB_txn *txn)
{
	if (!txn)
		return;
	keys_store *s = store_of(txn);
	if (s && txn == s->wtxn)
		s->wtxn = NULL;
	mdb_txn_abort(txn);
}

void
keys_store_set_repl(keys_store *s, keys_store_repl_fn fn, void *arg)
{
	s->repl = fn;
	s->repl_arg = arg;
}

int
keys_store_lsn(keys_store *s, uint64_t *lsn)
{
	MDB_txn *txn;
	int rc = keys_store_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
	if (rc)
		return rc;
	rc = get_lsn(s, txn, lsn);
	mdb_txn_abort(txn);
	return rc;
}

int
keys_store_apply(keys_store *s, uint64_t lsn, const uint8_t *rec, size_t len)
{
	MDB_txn *txn;
	uint64_t have;
	int rc = keys_store_err(mdb_txn_begin(s->env, NULL, 0, &txn));
	if (rc)
		return rc;
	if ((rc = get_lsn(s, txn, &have)) == SP_OK && have + 1 != lsn)
		rc = SP_EGAP;
	if (rc == SP_OK)
		rc = repl_fx_apply(rec, len, txn, s->dbi, KDB__COUNT);
	if (rc == SP_OK)
		rc = put_lsn(s, txn, lsn);
	if (rc) {
		mdb_txn_abort(txn);
		return rc;
	}
	return keys_store_err(mdb_txn_commit(txn));
}

int
keys_store_sync(keys_store *s)
{
	return mdb_env_sync(s->env, 1) ? SP_EIO : SP_OK;
}

int
keys_store_copy(keys_store *s, int fd, const char *path, uint64_t *lsn)
{
	int rc = mdb_env_copyfd2(s->env, fd, MDB_CP_COMPACT);
	if (rc) {
		sp_error("keysrv: snapshot copy: %s", mdb_strerror(rc));
		return SP_ESTORE;
	}
	uint8_t b[8];
	rc = repl_lmdb_file_get(path, db_names[KDB_META], LSN_KEY, sizeof(LSN_KEY) - 1, b, sizeof(b));
	if (rc == SP_ENOTFOUND) {
		*lsn = 0;
		return SP_OK;
	}
	if (rc == SP_OK)
		*lsn = sp_be64_get(b);
	return rc;
}

int
keys_store_get(keys_store *s, MDB_txn *txn, keys_db db, const void *key, size_t klen, void *buf,
    size_t cap, size_t *len)
{
	MDB_val k = {klen, (void *)key}, v;
	int rc = keys_store_err(mdb_get(txn, s->dbi[db], &k, &v));
	if (rc)
		return rc;
	if (v.mv_size > cap)
		return SP_ESTORE;
	memcpy(buf, v.mv_data, v.mv_size);
	*len = v.mv_size;
	return SP_OK;
}

int
keys_store_put(keys_store *s, MDB_txn *txn, keys_db db, const void *key, size_t klen,
    const void *val, size_t vlen, unsigned flags)
{
	MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
	int rc = keys_store_err(mdb_put(txn, s->dbi[db], &k, &v, flags));
	if (rc == SP_OK && s->repl && txn == s->wtxn)
		repl_fx_put(&s->fx, db, key, klen, val, vlen);
	return rc;
}

int
keys_store_del(keys_store *s, MDB_txn *txn, keys_db db, const void *key, size_t klen)
{
	MDB_val k = {klen, (void *)key};
	int rc = keys_store_err(mdb_del(txn, s->dbi[db], &k, NULL));
	if (rc == SP_OK && s->repl && txn == s->wtxn)
		repl_fx_del(&s->fx, db, key, klen);
	return rc;
}

int
keys_store_cursor_del(keys_store *s, MDB_txn *txn, MDB_cursor *c, keys_db db)
{
	MDB_val k, v;
	int rc = mdb_cursor_get(c, &k, &v, MDB_GET_CURRENT);
	if (rc == 0 && s->repl && txn == s->wtxn)
		repl_fx_del(&s->fx, db, k.mv_data, k.mv_size);
	return rc ? rc : mdb_cursor_del(c, 0);
}

/* Reads a record into a stack buffer and starts a reader on it. */
#define REC_MAX 1024

static int
get_rec(keys_store *s, MDB_txn *txn, keys_db db, const void *key, size_t klen, uint8_t *buf,
    rbuf *r)
{
	size_t len;
	int rc = keys_store_get(s, txn, db, key, klen, buf, REC_MAX, &len);
	if (rc)
		return rc;
	*r = (rbuf){buf, len, 0, false};
	if (r_uint(r, 1) != REC_VERSION)
		return SP_ESTORE;
	return SP_OK;
}

static int
put_rec(keys_store *s, MDB_txn *txn, keys_db db, const void *key, size_t klen, wbuf *w)
{
	if (w->overflow)
		return SP_EINVAL;
	return keys_store_put(s, txn, db, key, klen, w->p, w->n, 0);
}

/* ---- users ---- */

int
keys_user_get(keys_store *s, MDB_txn *txn, uint64_t id, keys_user *u)
{
	uint8_t key[8], buf[REC_MAX];
	rbuf r;
	sp_be64_put(key, id);
	int rc = get_rec(s, txn, KDB_USERS, key, 8, buf, &r);
	if (rc)
		return rc;
	memset(u, 0, sizeof(*u));
	u->id = id;
	u->primary = r_uint(&r, 8);
	u->created_ms = r_uint(&r, 8);
	r_str(&r, u->phone, KEYS_PHONE_MAX);
	u->ndevices = (uint8_t)r_uint(&r, 1);
	if (u->ndevices > KEYS_MAX_DEVICES)
		return SP_ESTORE;
	for (int i = 0; i < u->ndevices; i++)
		u->devices[i] = r_uint(&r, 8);
	return r_done(&r);
}

int
keys_user_put(keys_store *s, MDB_txn *txn, const keys_user *u)
{
	uint8_t key[8], buf[REC_MAX];
	wbuf w = {buf, 0, sizeof(buf), false};
	if (u->ndevices > KEYS_MAX_DEVICES)
		return SP_EINVAL;
	sp_be64_put(key, u->id);
	w_uint(&w, REC_VERSION, 1);
	w_uint(&w, u->primary, 8);
	w_uint(&w, u->created_ms, 8);
	w_str(&w, u->phone, strlen(u->phone));
	w_uint(&w, u->ndevices, 1);
	for (int i = 0; i < u->ndevices; i++)
		w_uint(&w, u->devices[i], 8);
	return put_rec(s, txn, KDB_USERS, key, 8, &w);
}

int
keys_user_by_phone(keys_store *s, MDB_txn *txn, const char *phone, uint64_t *user)
{
	uint8_t buf[8];
	size_t len;
	int rc = keys_store_get(s, txn, KDB_PHONES, phone, strlen(phone), buf, sizeof(buf), &len);
	if (rc)
		return rc;
	if (len != 8)
		return SP_ESTORE;
	*user = sp_be64_get(buf);
	return SP_OK;
}

/* ---- devices ---- */

int
keys_device_get(keys_store *s, MDB_txn *txn, uint64_t id, keys_device *d)
{
	uint8_t key[8], buf[REC_MAX];
	rbuf r;
	sp_be64_put(key, id);
	int rc = get_rec(s, txn, KDB_DEVICES, key, 8, buf, &r);
	if (rc)
		return rc;
	memset(d, 0, sizeof(*d));
	d->id = id;
	d->user = r_uint(&r, 8);
	d->flags = (uint8_t)r_uint(&r, 1);
	d->reg_id = (uint32_t)r_uint(&r, 4);
	d->created_ms = r_uint(&r, 8);
	r_bytes(&r, d->ik, sizeof(d->ik));
	r_bytes(&r, d->auth_key, sizeof(d->auth_key));
	d->spk_id = (uint32_t)r_uint(&r, 4);
	r_bytes(&r, d->spk, sizeof(d->spk));
	r_bytes(&r, d->spk_sig, sizeof(d->spk_sig));
	d->opk_count = (uint32_t)r_uint(&r, 4);
	d->push_len = r_str(&r, d->push, KEYS_PUSH_MAX);
	return r_done(&r);
}

int
keys_device_put(keys_store *s, MDB_txn *txn, const keys_device *d)
{
	uint8_t key[8], buf[REC_MAX];
	wbuf w = {buf, 0, sizeof(buf), false};
	if (d->push_len > KEYS_PUSH_MAX)
		return SP_EINVAL;
	sp_be64_put(key, d->id);
	w_uint(&w, REC_VERSION, 1);
	w_uint(&w, d->user, 8);
	w_uint(&w, d->flags, 1);
	w_uint(&w, d->reg_id, 4);
	w_uint(&w, d->created_ms, 8);
	w_bytes(&w, d->ik, sizeof(d->ik));
	w_bytes(&w, d->auth_key, sizeof(d->auth_key));
	w_uint(&w, d->spk_id, 4);
	w_bytes(&w, d->spk, sizeof(d->spk));
	w_bytes(&w, d->spk_sig, sizeof(d->spk_sig));
	w_uint(&w, d->opk_count, 4);
	w_str(&w, d->push, d->push_len);
	return put_rec(s, txn, KDB_DEVICES, key, 8, &w);
}

/* ---- OTPs ---- */

int
keys_otp_get(keys_store *s, MDB_txn *txn, const char *phone, keys_otp *o)
{
	uint8_t buf[REC_MAX];
	rbuf r;
	int rc = get_rec(s, txn, KDB_OTPS, phone, strlen(phone), buf, &r);
	if (rc)
		return rc;
	memset(o, 0, sizeof(*o));
	r_bytes(&r, o->hash, sizeof(o->hash));
	o->expires_ms = r_uint(&r, 8);
	o->attempts_left = (uint8_t)r_uint(&r, 1);
	o->state = (uint8_t)r_uint(&r, 1);
	o->user = r_uint(&r, 8);
	o->device = r_uint(&r, 8);
	r_bytes(&r, o->keys_hash, sizeof(o->keys_hash));
	return r_done(&r);
}

int
keys_otp_put(keys_store *s, MDB_txn *txn, const char *phone, const keys_otp *o)
{
	uint8_t buf[REC_MAX];
	wbuf w = {buf, 0, sizeof(buf), false};
	w_uint(&w, REC_VERSION, 1);
	w_bytes(&w, o->hash, sizeof(o->hash));
	w_uint(&w, o->expires_ms, 8);
	w_uint(&w, o->attempts_left, 1);
	w_uint(&w, o->state, 1);
	w_uint(&w, o->user, 8);
	w_uint(&w, o->device, 8);
	w_bytes(&w, o->keys_hash, sizeof(o->keys_hash));
	return put_rec(s, txn, KDB_OTPS, phone, strlen(phone), &w);
}

/* ---- per-phone budgets and PINs ---- */

int
keys_budget_get(keys_store *s, MDB_txn *txn, const char *phone, uint64_t now_ms, keys_budget *b)
{
	uint8_t buf[REC_MAX];
	rbuf r;
	int rc = get_rec(s, txn, KDB_BUDGETS, phone, strlen(phone), buf, &r);
	memset(b, 0, sizeof(*b));
	if (rc == SP_ENOTFOUND)
		goto fresh;
	if (rc)
		return rc;
	b->expires_ms = r_uint(&r, 8);
	b->sends = (uint32_t)r_uint(&r, 4);
	b->verify_fails = (uint32_t)r_uint(&r, 4);
	b->pin_fails = (uint32_t)r_uint(&r, 4);
	if ((rc = r_done(&r)))
		return rc;
	if (b->expires_ms > now_ms)
		return SP_OK;
fresh:
	memset(b, 0, sizeof(*b));
	b->expires_ms = now_ms + KEYS_BUDGET_WINDOW_MS;
	return SP_OK;
}

int
keys_budget_put(keys_store *s, MDB_txn *txn, const char *phone, const keys_budget *b)
{
	uint8_t buf[REC_MAX];
	wbuf w = {buf, 0, sizeof(buf), false};
	w_uint(&w, REC_VERSION, 1);
	w_uint(&w, b->expires_ms, 8);
	w_uint(&w, b->sends, 4);
	w_uint(&w, b->verify_fails, 4);
	w_uint(&w, b->pin_fails, 4);
	return put_rec(s, txn, KDB_BUDGETS, phone, strlen(phone), &w);
}

int
keys_pin_get(keys_store *s, MDB_txn *txn, uint64_t user, keys_pin *p)
{
	uint8_t key[8], buf[REC_MAX];
	rbuf r;
	sp_be64_put(key, user);
	int rc = get_rec(s, txn, KDB_PINS, key, 8, buf, &r);
	if (rc)
		return rc;
	memset(p, 0, sizeof(*p));
	p->set_ms = r_uint(&r, 8);
	r_str(&r, p->hash, KEYS_PIN_HASH_MAX - 1);
	if (!p->hash[0])
		return SP_ESTORE;
	return r_done(&r);
}

int
keys_pin_put(keys_store *s, MDB_txn *txn, uint64_t user, const keys_pin *p)
{
	uint8_t key[8], buf[REC_MAX];
	wbuf w = {buf, 0, sizeof(buf), false};
	size_t n = strnlen(p->hash, KEYS_PIN_HASH_MAX);
	if (n == 0 || n >= KEYS_PIN_HASH_MAX)
		return SP_EINVAL;
	sp_be64_put(key, user);
	w_uint(&w, REC_VERSION, 1);
	w_uint(&w, p->set_ms, 8);
	w_str(&w, p->hash, n);
	return put_rec(s, txn, KDB_PINS, key, 8, &w);
}

/* ---- links ---- */

int
keys_link_get(keys_store *s, MDB_txn *txn, const uint8_t key[KEYS_HASH_LEN], keys_link *l)
{
	uint8_t buf[REC_MAX];
	rbuf r;
	int rc = get_rec(s, txn, KDB_LINKS, key, KEYS_HASH_LEN, buf, &r);
	if (rc)
		return rc;
	memset(l, 0, sizeof(*l));
	l->state = (uint8_t)r_uint(&r, 1);
	l->expires_ms = r_uint(&r, 8);
	r_bytes(&r, l->ik, sizeof(l->ik));
	r_bytes(&r, l->auth_key, sizeof(l->auth_key));
	l->reg_id = (uint32_t)r_uint(&r, 4);
	l->has_spk = r_uint(&r, 1) != 0;
	l->spk_id = (uint32_t)r_uint(&r, 4);
	r_bytes(&r, l->spk, sizeof(l->spk));
	r_bytes(&r, l->spk_sig, sizeof(l->spk_sig));
	l->push_len = r_str(&r, l->push, KEYS_PUSH_MAX);
	l->user = r_uint(&r, 8);
	l->device = r_uint(&r, 8);
	return r_done(&r);
}

int
keys_link_put(keys_store *s, MDB_txn *txn, const uint8_t key[KEYS_HASH_LEN], const keys_link *l)
{
	uint8_t buf[REC_MAX];
	wbuf w = {buf, 0, sizeof(buf), false};
	if (l->push_len > KEYS_PUSH_MAX)
		return SP_EINVAL;
	w_uint(&w, REC_VERSION, 1);
	w_uint(&w, l->state, 1);
	w_uint(&w, l->expires_ms, 8);
	w_bytes(&w, l->ik, sizeof(l->ik));
	w_bytes(&w, l->auth_key, sizeof(l->auth_key));
	w_uint(&w, l->reg_id, 4);
	w_uint(&w, l->has_spk, 1);
	w_uint(&w, l->spk_id, 4);
	w_bytes(&w, l->spk, sizeof(l->spk));
	w_bytes(&w, l->spk_sig, sizeof(l->spk_sig));
	w_str(&w, l->push, l->push_len);
	w_uint(&w, l->user, 8);
	w_uint(&w, l->device, 8);
	return put_rec(s, txn, KDB_LINKS, key, KEYS_HASH_LEN, &w);
}

/* ---- groups ---- */

int
keys_group_get(keys_store *s, MDB_txn *txn, uint64_t id, keys_group *g)
{
	uint8_t key[8], buf[REC_MAX];
	rbuf r;
	sp_be64_put(key, id);
	int rc = get_rec(s, txn, KDB_GROUPS, key, 8, buf, &r);
	if (rc)
		return rc;
	memset(g, 0, sizeof(*g));
	g->id = id;
	g->epoch = r_uint(&r, 8);
	g->created_ms = r_uint(&r, 8);
	g->nmembers = (uint32_t)r_uint(&r, 4);
	g->nadmins = (uint32_t)r_uint(&r, 4);
	r_str(&r, g->name, KEYS_GROUP_NAME_MAX);
	return r_done(&r);
}

int
keys_group_put(keys_store *s, MDB_txn *txn, const keys_group *g)
{
	uint8_t key[8], buf[REC_MAX];
	wbuf w = {buf, 0, sizeof(buf), false};
	sp_be64_put(key, g->id);
	w_uint(&w, REC_VERSION, 1);
	w_uint(&w, g->epoch, 8);
	w_uint(&w, g->created_ms, 8);
	w_uint(&w, g->nmembers, 4);
	w_uint(&w, g->nadmins, 4);
	w_str(&w, g->name, strlen(g->name));
	return put_rec(s, txn, KDB_GROUPS, key, 8, &w);
}

/* ---- stored replies ---- */

static void
reply_key(uint8_t key[8 + KEYS_REQ_ID_LEN], uint64_t device, const uint8_t id[KEYS_REQ_ID_LEN])
{
	sp_be64_put(key, device);
	memcpy(key + 8, id, KEYS_REQ_ID_LEN);
}

int
keys_reply_get(keys_store *s, MDB_txn *txn, uint64_t device, const uint8_t id[KEYS_REQ_ID_LEN],
    uint64_t now_ms, uint8_t *buf, size_t cap, size_t *len)
{
	uint8_t key[8 + KEYS_REQ_ID_LEN];
	MDB_val k = {sizeof(key), key}, v;
	reply_key(key, device, id);
	int rc = mdb_get(txn, s->dbi[KDB_REPLIES], &k, &v);
	if (rc)
		return keys_store_err(rc);
	rbuf r = {v.mv_data, v.mv_size, 0, false};
	if (r_uint(&r, 1) != REC_VERSION)
		return SP_ESTORE;
	uint64_t exp = r_uint(&r, 8);
	if (r.bad || v.mv_size - r.off > cap)
		return SP_ESTORE;
	if (exp <= now_ms)
		return SP_ENOTFOUND;
	*len = v.mv_size - r.off;
	memcpy(buf, (const uint8_t *)v.mv_data + r.off, *len);
	return SP_OK;
}

int
keys_reply_put(keys_store *s, MDB_txn *txn, uint64_t device, const uint8_t id[KEYS_REQ_ID_LEN],
    uint64_t expires_ms, const uint8_t *reply, size_t len)
{
	uint8_t key[8 + KEYS_REQ_ID_LEN], buf[1 + 8 + KEYS_REPLY_MAX];
	if (len > KEYS_REPLY_MAX)
		return SP_EINVAL;
	reply_key(key, device, id);
	wbuf w = {buf, 0, sizeof(buf), false};
	w_uint(&w, REC_VERSION, 1);
	w_uint(&w, expires_ms, 8);
	memcpy(buf + w.n, reply, len);
	return keys_store_put(s, txn, KDB_REPLIES, key, sizeof(key), buf, w.n + len, 0);
}

/* ---- ids and sweeping ---- */

int
keys_store_new_id(keys_store *s, MDB_txn *txn, keys_db db, uint64_t *id)
{
	/* 64 random bits collide so rarely that a few tries always suffice. */
	for (int tries = 0; tries < 16; tries++) {
		uint64_t v;
		uint8_t key[8];
		MDB_val k = {8, key}, val;
		randombytes_buf(&v, sizeof(v));
		if (v == 0)
			continue;
		sp_be64_put(key, v);
		int rc = mdb_get(txn, s->dbi[db], &k, &val);
		if (rc == MDB_NOTFOUND) {
			*id = v;
			return SP_OK;
		}
		if (rc)
			return keys_store_err(rc);
	}
	return SP_ESTORE;
}

/* Expiry sits at a fixed offset in each swept record kind: OTP after the version byte and
 * the hash, link after the version and state bytes, budget and reply right after the
 * version. */
static int
sweep_db(keys_store *s, MDB_txn *txn, keys_db db, size_t exp_off, uint64_t now_ms, unsigned max,
    unsigned *deleted)
{
	MDB_cursor *c;
	MDB_val k, v;
	int rc = mdb_cursor_open(txn, s->dbi[db], &c);
	if (rc)
		return keys_store_err(rc);
	unsigned n = 0;
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && n < max;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		rbuf r = {v.mv_data, v.mv_size, exp_off, false};
		uint64_t exp = r_uint(&r, 8);
		if (r.bad || exp <= now_ms) {
			if ((rc = keys_store_cursor_del(s, txn, c, db)))
				break;
			n++;
		}
	}
	mdb_cursor_close(c);
	*deleted += n;
	return rc == 0 || rc == MDB_NOTFOUND ? SP_OK : keys_store_err(rc);
}

int
keys_store_sweep(keys_store *s, uint64_t now_ms, unsigned max, unsigned *deleted)
{
	MDB_txn *txn;
	int rc = keys_store_begin(s, true, &txn);
	*deleted = 0;
	if (rc)
		return rc;
	if ((rc = sweep_db(s, txn, KDB_OTPS, 1 + KEYS_HASH_LEN, now_ms, max, deleted)) ||
	    (rc = sweep_db(s, txn, KDB_LINKS, 2, now_ms, max, deleted)) ||
	    (rc = sweep_db(s, txn, KDB_BUDGETS, 1, now_ms, max, deleted)) ||
	    (rc = sweep_db(s, txn, KDB_REPLIES, 1, now_ms, max, deleted))) {
		keys_store_abort(txn);
		return rc;
	}
	return keys_store_commit(txn);
}
