/*
 * The local store: one SQLite database per home in WAL mode with synchronous=FULL (a
 * commit is on disk before we ACK what it holds). Also the handle's error recording and
 * the naming helpers (contacts, groups, conversations).
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "client/cl_internal.h"
#include "sp_error.h"
#include "sp_time.h"

static const char schema[] =
	"CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v);"
	"CREATE TABLE IF NOT EXISTS signal_state(id INTEGER PRIMARY KEY CHECK (id = 1), blob BLOB NOT NULL);"
	"CREATE TABLE IF NOT EXISTS contacts(phone TEXT PRIMARY KEY, user INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS devices(user INTEGER, device INTEGER, PRIMARY KEY(user, device));"
	"CREATE TABLE IF NOT EXISTS device_lists(user INTEGER PRIMARY KEY, fetched INTEGER);"
	"CREATE TABLE IF NOT EXISTS groups(gid INTEGER PRIMARY KEY, name TEXT, epoch INTEGER DEFAULT 0,"
	" sk_epoch INTEGER DEFAULT -1, active INTEGER DEFAULT 1);"
	"CREATE TABLE IF NOT EXISTS group_members(gid INTEGER, user INTEGER, PRIMARY KEY(gid, user));"
	"CREATE TABLE IF NOT EXISTS sk_sent(gid INTEGER, device INTEGER, PRIMARY KEY(gid, device));"
	"CREATE TABLE IF NOT EXISTS conv_out(conv TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS conv_in(conv TEXT, from_user INTEGER, from_device INTEGER,"
	" next_seq INTEGER NOT NULL, PRIMARY KEY(conv, from_user, from_device));"
	"CREATE TABLE IF NOT EXISTS messages(id INTEGER PRIMARY KEY AUTOINCREMENT, msg_id BLOB NOT NULL,"
	" conv TEXT NOT NULL, outgoing INTEGER NOT NULL, from_user INTEGER, from_device INTEGER,"
	" from_phone TEXT, conv_seq INTEGER, server_ts INTEGER, kind INTEGER, text TEXT,"
	" media_path TEXT, media_name TEXT, media_mime TEXT, media_size INTEGER, media_err INTEGER DEFAULT 0,"
	" surfaced INTEGER DEFAULT 1, held_since INTEGER DEFAULT 0, reported INTEGER DEFAULT 0,"
	" read_sent INTEGER DEFAULT 0);"
	"CREATE INDEX IF NOT EXISTS messages_conv ON messages(conv, id);"
	"CREATE INDEX IF NOT EXISTS messages_msgid ON messages(msg_id);"
	"CREATE INDEX IF NOT EXISTS messages_surfaced ON messages(surfaced);"
	"CREATE TABLE IF NOT EXISTS dedup(from_user INTEGER, from_device INTEGER, msg_id BLOB, ts INTEGER,"
	" PRIMARY KEY(from_user, from_device, msg_id));"
	"CREATE TABLE IF NOT EXISTS outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, msg_id BLOB UNIQUE NOT NULL,"
	" conv TEXT NOT NULL, env BLOB NOT NULL, created INTEGER, state INTEGER DEFAULT 0, server_ts INTEGER,"
	" attempts INTEGER DEFAULT 0, media_file TEXT, uploaded INTEGER DEFAULT 0);"
	"CREATE TABLE IF NOT EXISTS recipients(msg_id BLOB, user INTEGER, device INTEGER, status INTEGER,"
	" PRIMARY KEY(msg_id, user, device));";

int
cl_class_of(int rc)
{
	switch (rc) {
	case SP_ECLOSED:
	case SP_ETIMEDOUT:
	case SP_EIO:
	case SP_ETLS:
	case SP_EUNAVAIL:
		return SEALPOST_ERR_NET;
	case SP_ECRYPTO:
	case SP_EBADSIG:
	case SP_EIDENTITY:
	case SP_EDIGEST:
	case SP_EREPLAY:
	case SP_EMALFORMED:
	case SP_ETRUNC:
		return SEALPOST_ERR_CRYPTO;
	case SP_EINVAL:
	case SP_ENOTFOUND:
		return SEALPOST_ERR_USAGE;
	default:
		return SEALPOST_ERR_OTHER;
	}
}

int
cl_fail(sealpost *sp, int rc, int cls, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(sp->err, sizeof(sp->err), fmt, ap);
	va_end(ap);
	sp->errclass = cls;
	return rc;
}

const char *
sealpost_errmsg(const sealpost *sp)
{
	return sp && sp->err[0] ? sp->err : "no error";
}

int
sealpost_errclass(const sealpost *sp)
{
	return sp && sp->errclass ? sp->errclass : SEALPOST_ERR_OTHER;
}

int
cl_exec(sealpost *sp, const char *sql)
{
	char *msg = NULL;
	if (sqlite3_exec(sp->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", msg ? msg : "error");
		sqlite3_free(msg);
		return SP_ESTORE;
	}
	return SP_OK;
}

int
cl_begin(sealpost *sp)
{
	return cl_exec(sp, "BEGIN IMMEDIATE");
}

int
cl_commit(sealpost *sp)
{
	return cl_exec(sp, "COMMIT");
}

void
cl_rollback(sealpost *sp)
{
	if (!sqlite3_get_autocommit(sp->db))
		sqlite3_exec(sp->db, "ROLLBACK", NULL, NULL, NULL);
}

int
cl_prep(sealpost *sp, sqlite3_stmt **st, const char *sql)
{
	if (sqlite3_prepare_v2(sp->db, sql, -1, st, NULL) != SQLITE_OK)
		return cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
	return SP_OK;
}

/* Runs a prepared statement to completion and finalizes it. */
static int
step_done(sealpost *sp, sqlite3_stmt *st)
{
	int r = sqlite3_step(st);
	sqlite3_finalize(st);
	if (r != SQLITE_DONE && r != SQLITE_ROW)
		return cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
	return SP_OK;
}

int
cl_meta_set_u64(sealpost *sp, const char *k, uint64_t v)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "INSERT OR REPLACE INTO meta(k, v) VALUES(?, ?)");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)v);
	return step_done(sp, st);
}

int
cl_meta_set_blob(sealpost *sp, const char *k, const void *p, size_t n)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "INSERT OR REPLACE INTO meta(k, v) VALUES(?, ?)");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 2, p, (int)n, SQLITE_STATIC);
	return step_done(sp, st);
}

uint64_t
cl_meta_u64(sealpost *sp, const char *k)
{
	sqlite3_stmt *st;
	uint64_t v = 0;
	if (cl_prep(sp, &st, "SELECT v FROM meta WHERE k = ?"))
		return 0;
	sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = (uint64_t)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

int
cl_meta_blob(sealpost *sp, const char *k, void *buf, size_t cap)
{
	sqlite3_stmt *st;
	int n = -1;
	if (cl_prep(sp, &st, "SELECT v FROM meta WHERE k = ?"))
		return -1;
	sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		const void *p = sqlite3_column_blob(st, 0);
		int len = sqlite3_column_bytes(st, 0);
		if (p && len >= 0 && (size_t)len <= cap) {
			memcpy(buf, p, (size_t)len);
			n = len;
		}
	}
	sqlite3_finalize(st);
	return n;
}

int
cl_sig_save(sealpost *sp)
{
	uint8_t *blob;
	size_t len;
	int rc = sig_store_serialize(sp->sig, &blob, &len);
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_OTHER, "serializing the Signal state: %s", sp_strerror(rc));
	sqlite3_stmt *st;
	if ((rc = cl_prep(sp, &st, "INSERT OR REPLACE INTO signal_state(id, blob) VALUES(1, ?)")) == SP_OK) {
		sqlite3_bind_blob(st, 1, blob, (int)len, SQLITE_STATIC);
		rc = step_done(sp, st);
	}
	sodium_memzero(blob, len);
	free(blob);
	return rc;
}

int
cl_sig_reload(sealpost *sp)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "SELECT blob FROM signal_state WHERE id = 1");
	if (rc)
		return rc;
	sig_store *s = NULL;
	rc = SP_ENOTFOUND;
	if (sqlite3_step(st) == SQLITE_ROW)
		rc = sig_store_deserialize(&s, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0));
	sqlite3_finalize(st);
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_CRYPTO, "the Signal state in the store is unreadable: %s",
			       sp_strerror(rc));
	sig_store_free(sp->sig);
	sp->sig = s;
	return SP_OK;
}

int
cl_account_load(sealpost *sp)
{
	sp->user = cl_meta_u64(sp, "user");
	sp->device = cl_meta_u64(sp, "device");
	sp->last_seq = cl_meta_u64(sp, "last_seq");
	int n = cl_meta_blob(sp, "phone", sp->phone, sizeof(sp->phone) - 1);
	sp->phone[n > 0 ? n : 0] = '\0';
	if (!sp->user)
		return SP_OK;
	if (cl_meta_blob(sp, "auth_sk", sp->auth_sk, sizeof(sp->auth_sk)) != (int)sizeof(sp->auth_sk))
		return cl_fail(sp, SP_EMALFORMED, SEALPOST_ERR_CRYPTO, "the store has no device key");
	crypto_sign_ed25519_sk_to_pk(sp->auth_pk, sp->auth_sk);
	return cl_sig_reload(sp);
}

bool
cl_registered(const sealpost *sp)
{
	return sp->user != 0 && sp->sig != NULL;
}

int
cl_need_account(sealpost *sp)
{
	if (cl_registered(sp))
		return SP_OK;
	return cl_fail(sp, SP_ESTATE, SEALPOST_ERR_USAGE,
		       "this home has no account: run `sealpost register` and `verify`, or `link`");
}

int
cl_store_open(sealpost *sp)
{
	char path[4096];
	if (mkdir(sp->cfg.home, 0700) && errno != EEXIST)
		return cl_fail(sp, SP_EIO, SEALPOST_ERR_USAGE, "cannot create %s: %s", sp->cfg.home,
			       strerror(errno));
	snprintf(path, sizeof(path), "%s/media", sp->cfg.home);
	if (mkdir(path, 0700) && errno != EEXIST)
		return cl_fail(sp, SP_EIO, SEALPOST_ERR_USAGE, "cannot create %s: %s", path, strerror(errno));
	snprintf(path, sizeof(path), "%s/sealpost.db", sp->cfg.home);
	if (sqlite3_open_v2(path, &sp->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
			    NULL) != SQLITE_OK)
		return cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "cannot open %s: %s", path,
			       sp->db ? sqlite3_errmsg(sp->db) : "out of memory");
	sqlite3_busy_timeout(sp->db, 10000);
	int rc;
	if ((rc = cl_exec(sp, "PRAGMA journal_mode=WAL")) || (rc = cl_exec(sp, "PRAGMA synchronous=FULL")) ||
	    (rc = cl_exec(sp, schema)))
		return rc;
	return cl_account_load(sp);
}

void
cl_store_close(sealpost *sp)
{
	if (sp->db)
		sqlite3_close(sp->db);
	sp->db = NULL;
}

int
cl_conv_next_seq(sealpost *sp, const char *conv, uint64_t *seq)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st,
			 "INSERT INTO conv_out(conv, next_seq) VALUES(?, 2) ON CONFLICT(conv) DO UPDATE"
			 " SET next_seq = next_seq + 1 RETURNING next_seq - 1");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_ROW) {
		sqlite3_finalize(st);
		return cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
	}
	*seq = (uint64_t)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return SP_OK;
}

/* ---- names ---- */

void
cl_hex(const uint8_t *p, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[p[i] >> 4];
		out[2 * i + 1] = d[p[i] & 15];
	}
	out[2 * n] = '\0';
}

int
cl_unhex(const char *s, uint8_t *out, size_t n)
{
	if (strlen(s) != 2 * n)
		return SP_EINVAL;
	for (size_t i = 0; i < n; i++) {
		int v = 0;
		for (int k = 0; k < 2; k++) {
			char c = (char)tolower((unsigned char)s[2 * i + k]);
			if (c >= '0' && c <= '9')
				v = v * 16 + (c - '0');
			else if (c >= 'a' && c <= 'f')
				v = v * 16 + (c - 'a' + 10);
			else
				return SP_EINVAL;
		}
		out[i] = (uint8_t)v;
	}
	return SP_OK;
}

void
cl_peer_name(uint64_t user, uint64_t device, char out[48])
{
	snprintf(out, 48, "%" PRIu64 ".%" PRIu64, user, device);
}

static int
parse_u64(const char *s, uint64_t *v)
{
	char *end;
	if (!*s || !isdigit((unsigned char)*s))
		return SP_EINVAL;
	errno = 0;
	unsigned long long x = strtoull(s, &end, 10);
	if (errno || *end || x == 0)
		return SP_EINVAL;
	*v = x;
	return SP_OK;
}

int
cl_resolve_user(sealpost *sp, const char *name, uint64_t *user)
{
	if (name[0] == '#') {
		if (parse_u64(name + 1, user))
			return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "bad user id '%s'", name);
		return SP_OK;
	}
	if (name[0] != '+')
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE,
			       "'%s' is not a phone (+E.164), a #user id or an @group", name);
	if (sp->user && strcmp(name, sp->phone) == 0) {
		*user = sp->user;
		return SP_OK;
	}
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "SELECT user FROM contacts WHERE phone = ?");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = SP_ENOTFOUND;
	if (sqlite3_step(st) == SQLITE_ROW) {
		*user = (uint64_t)sqlite3_column_int64(st, 0);
		rc = SP_OK;
	}
	sqlite3_finalize(st);
	if (rc == SP_OK)
		return SP_OK;
	/* Not a known contact: ask keysrv who has that number, and remember the answer. */
	if (!sp->conn && (rc = cl_connect(sp, 1)))
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_USER_LOOKUP, 0, false);
	sp_frame_set_str(&q, SP_F_PHONE, name);
	if ((rc = cl_call_want(sp, &q, SP_T_USER_FOUND, &r)))
		return rc == SP_ENOTFOUND ? cl_fail(sp, rc, SEALPOST_ERR_SERVER, "%s is not on Sealpost", name)
					  : rc;
	*user = sp_frame_u64(&r, SP_F_USER);
	sp_frame_fini(&r);
	return sealpost_contact_add(sp, name, *user);
}

int
cl_resolve_group(sealpost *sp, const char *name, uint64_t *gid)
{
	if (name[0] != '@' || !name[1])
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "'%s' is not a group (@NAME or @ID)", name);
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "SELECT gid FROM groups WHERE name = ?1 OR CAST(gid AS TEXT) = ?1"
				  " ORDER BY active DESC, gid LIMIT 1");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, name + 1, -1, SQLITE_STATIC);
	rc = SP_ENOTFOUND;
	if (sqlite3_step(st) == SQLITE_ROW) {
		*gid = (uint64_t)sqlite3_column_int64(st, 0);
		rc = SP_OK;
	}
	sqlite3_finalize(st);
	if (rc == SP_ENOTFOUND && parse_u64(name + 1, gid) == SP_OK)
		return SP_OK; /* a group id we have not seen yet: keysrv decides */
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_USAGE, "unknown group %s", name);
	return SP_OK;
}

void
cl_user_display(sealpost *sp, uint64_t user, char *out, size_t cap)
{
	if (user == sp->user && sp->phone[0]) {
		snprintf(out, cap, "%s", sp->phone);
		return;
	}
	sqlite3_stmt *st;
	snprintf(out, cap, "#%" PRIu64, user);
	if (cl_prep(sp, &st, "SELECT phone FROM contacts WHERE user = ? LIMIT 1"))
		return;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)user);
	if (sqlite3_step(st) == SQLITE_ROW)
		snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
}

void
cl_conv_key(char *out, size_t cap, bool group, uint64_t id)
{
	snprintf(out, cap, "%c:%" PRIu64, group ? 'g' : 'u', id);
}

void
cl_conv_display(sealpost *sp, const char *key, char *out, size_t cap)
{
	uint64_t id = strtoull(key + 2, NULL, 10);
	if (key[0] == 'u') {
		cl_user_display(sp, id, out, cap);
		return;
	}
	sqlite3_stmt *st;
	snprintf(out, cap, "@%" PRIu64, id);
	if (cl_prep(sp, &st, "SELECT name FROM groups WHERE gid = ?"))
		return;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
		snprintf(out, cap, "@%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
}

int
sealpost_contact_add(sealpost *sp, const char *phone, uint64_t user)
{
	if (phone[0] != '+' || strlen(phone) > 32 || !user)
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "contact add needs +PHONE and a user id");
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "INSERT OR REPLACE INTO contacts(phone, user) VALUES(?, ?)");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, phone, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)user);
	return step_done(sp, st);
}

int
sealpost_whoami(sealpost *sp, uint64_t *user, uint64_t *device, char *phone, size_t cap)
{
	int rc = cl_need_account(sp);
	if (rc)
		return rc;
	*user = sp->user;
	*device = sp->device;
	snprintf(phone, cap, "%s", sp->phone);
	return SP_OK;
}

/* ---- handle ---- */

static char *
dup_opt(const char *s, bool *oom)
{
	if (!s || !*s)
		return NULL;
	char *d = strdup(s);
	if (!d)
		*oom = true;
	return d;
}

void
sealpost_close(sealpost *sp)
{
	if (!sp)
		return;
	cl_disconnect(sp);
	cl_store_close(sp);
	sig_store_free(sp->sig);
	sodium_memzero(sp->auth_sk, sizeof(sp->auth_sk));
	free((char *)sp->cfg.home);
	free((char *)sp->cfg.server);
	free((char *)sp->cfg.router);
	free((char *)sp->cfg.ca);
	free(sp);
}

int
sealpost_open(const sealpost_config *cfg, sealpost **out, char *err, size_t errlen)
{
	*out = NULL;
	if (!cfg || !cfg->home || !*cfg->home) {
		if (err)
			snprintf(err, errlen, "no home directory: use --home or SEALPOST_HOME");
		return SP_EINVAL;
	}
	if (sodium_init() < 0 || sig_crypto_init() != SP_OK) {
		if (err)
			snprintf(err, errlen, "libsodium failed to initialise");
		return SP_ECRYPTO;
	}
	sealpost *sp = calloc(1, sizeof(*sp));
	if (!sp) {
		if (err)
			snprintf(err, errlen, "out of memory");
		return SP_ENOMEM;
	}
	bool oom = false;
	sp->cfg = *cfg;
	sp->cfg.home = dup_opt(cfg->home, &oom);
	sp->cfg.server = dup_opt(cfg->server, &oom);
	sp->cfg.router = dup_opt(cfg->router, &oom);
	sp->cfg.ca = dup_opt(cfg->ca, &oom);
	sp->cut_chunks_left = cfg->test_cut_upload_after;
	int rc = oom ? cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory") : cl_store_open(sp);
	if (rc) {
		if (err)
			snprintf(err, errlen, "%s", sp->err);
		sealpost_close(sp);
		return rc;
	}
	*out = sp;
	return SP_OK;
}
