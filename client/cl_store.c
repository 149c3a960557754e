/*
 * The local store: one SQLite database per home in WAL mode with synchronous=FULL (a
 * commit is on disk before we ACK what it holds). Schema, transactions, statements, the
 * meta key-value table and the outgoing conversation sequence counters.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "client/cl_internal.h"
#include "sp_error.h"

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
	/* Sender keys (docs/CLIENT.md "Groups"): our key as it was for each group message we
	 * sent (answers to retry requests), group messages held for a missing key, and the
	 * retry requests asked (dir 0) and answered (dir 1) per (group, device). */
	"CREATE TABLE IF NOT EXISTS sk_dist(msg_id BLOB PRIMARY KEY, gid INTEGER, skdm BLOB, ts INTEGER);"
	"CREATE TABLE IF NOT EXISTS sk_held(id INTEGER PRIMARY KEY AUTOINCREMENT, gid INTEGER, from_user INTEGER,"
	" from_device INTEGER, msg_id BLOB, server_ts INTEGER, seq INTEGER, env BLOB, ts INTEGER);"
	"CREATE TABLE IF NOT EXISTS sk_retry(gid INTEGER, device INTEGER, dir INTEGER, ts INTEGER, msg_id BLOB,"
	" PRIMARY KEY(gid, device, dir));"
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
	" attempts INTEGER DEFAULT 0, media_file TEXT, uploaded INTEGER DEFAULT 0, error INTEGER DEFAULT 0,"
	" reason TEXT);"
	"CREATE TABLE IF NOT EXISTS recipients(msg_id BLOB, user INTEGER, device INTEGER, status INTEGER,"
	" PRIMARY KEY(msg_id, user, device));";

/* Columns added after the first release: a home made before gets them here. */
static int
migrate(sealpost *sp)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(sp->db, "SELECT error, reason FROM outbox LIMIT 0", -1, &st, NULL) == SQLITE_OK) {
		sqlite3_finalize(st);
		return SP_OK;
	}
	return cl_exec(sp, "ALTER TABLE outbox ADD COLUMN error INTEGER DEFAULT 0;"
			   " ALTER TABLE outbox ADD COLUMN reason TEXT");
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

int
cl_step_done(sealpost *sp, sqlite3_stmt *st)
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
	return cl_step_done(sp, st);
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
	return cl_step_done(sp, st);
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
	    (rc = cl_exec(sp, schema)) || (rc = migrate(sp)))
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
