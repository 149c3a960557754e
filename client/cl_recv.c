/*
 * Receiving: decrypt, store (committed), and only then ACK. A DELIVER already in the
 * dedup table (a crash between commit and ACK) is ACKed and dropped; one that fails to
 * decrypt is recorded as refused and ACKed (it can never succeed later). Messages carry
 * the sender device's per-conversation sequence number: they are reported in order, a
 * gap is held back for gap_hold_ms, then what follows it is surfaced anyway. Also READ
 * receipts, status and history.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/cl_internal.h"
#include "client/signal/sig_proto.h"
#include "sp_error.h"
#include "sp_time.h"

/* ST_EXPIRED is never stored: a recipient device still at ST_SENT past exp_after shows it. */
enum { ST_FAILED = -1, ST_QUEUED = 0, ST_SENT = 1, ST_DELIVERED = 2, ST_READ = 3, ST_EXPIRED = 4 };

static const char *
status_name(int s)
{
	return s == ST_EXPIRED	   ? "expired"
	       : s >= ST_READ	   ? "read"
	       : s == ST_DELIVERED ? "delivered"
	       : s == ST_SENT	   ? "sent"
	       : s == ST_FAILED	   ? "failed"
				   : "queued";
}

static uint64_t
hold_ms(const sealpost *sp)
{
	return sp->cfg.gap_hold_ms > 0 ? (uint64_t)sp->cfg.gap_hold_ms : 2000;
}

/* ---- ordering ---- */

static int
surface(sealpost *sp, int64_t row)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "UPDATE messages SET surfaced = (SELECT IFNULL(MAX(surfaced), 0) + 1 FROM messages),"
				  " held_since = 0 WHERE id = ?");
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, row);
	rc = sqlite3_step(st) == SQLITE_DONE ? SP_OK : SP_ESTORE;
	sqlite3_finalize(st);
	return rc;
}

static int
set_next(sealpost *sp, const char *conv, uint64_t fu, uint64_t fd, uint64_t next)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "INSERT OR REPLACE INTO conv_in(conv, from_user, from_device, next_seq) VALUES(?, ?, ?, ?)");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)fu);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)fd);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)next);
	rc = sqlite3_step(st) == SQLITE_DONE ? SP_OK : SP_ESTORE;
	sqlite3_finalize(st);
	return rc;
}

int
cl_order_admit(sealpost *sp, const char *conv, uint64_t fu, uint64_t fd, uint64_t seq, int64_t row)
{
	sqlite3_stmt *st;
	uint64_t next = 1;
	int rc = cl_prep(sp, &st, "SELECT next_seq FROM conv_in WHERE conv = ? AND from_user = ? AND from_device = ?");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)fu);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)fd);
	if (sqlite3_step(st) == SQLITE_ROW)
		next = (uint64_t)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	if (seq < next) /* late: its gap was already surfaced past it */
		return surface(sp, row);
	if (seq > next) {
		if ((rc = cl_prep(sp, &st, "UPDATE messages SET surfaced = 0, held_since = ? WHERE id = ?")))
			return rc;
		sqlite3_bind_int64(st, 1, (sqlite3_int64)sp_time_ms());
		sqlite3_bind_int64(st, 2, row);
		rc = sqlite3_step(st) == SQLITE_DONE ? SP_OK : SP_ESTORE;
		sqlite3_finalize(st);
		return rc;
	}
	if ((rc = surface(sp, row)))
		return rc;
	next++;
	/* Held messages that now follow in order. */
	if ((rc = cl_prep(sp, &st, "SELECT id FROM messages WHERE surfaced = 0 AND conv = ? AND from_user = ?"
				   " AND from_device = ? AND conv_seq = ? LIMIT 1")))
		return rc;
	for (;;) {
		sqlite3_reset(st);
		sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)fu);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)fd);
		sqlite3_bind_int64(st, 4, (sqlite3_int64)next);
		if (sqlite3_step(st) != SQLITE_ROW)
			break;
		int64_t id = sqlite3_column_int64(st, 0);
		sqlite3_reset(st);
		if ((rc = surface(sp, id)))
			break;
		next++;
	}
	sqlite3_finalize(st);
	return rc ? rc : set_next(sp, conv, fu, fd, next);
}

int
cl_order_expire(sealpost *sp, uint64_t now, uint64_t *next_ms)
{
	sqlite3_stmt *st, *rows = NULL;
	*next_ms = 0;
	int rc = cl_prep(sp, &st, "SELECT conv, from_user, from_device, MIN(held_since) FROM messages"
				  " WHERE surfaced = 0 GROUP BY conv, from_user, from_device");
	if (rc)
		return rc;
	if ((rc = cl_prep(sp, &rows, "SELECT id, conv_seq FROM messages WHERE surfaced = 0 AND conv = ?"
				     " AND from_user = ? AND from_device = ? ORDER BY conv_seq"))) {
		sqlite3_finalize(st);
		return rc;
	}
	while (rc == SP_OK && sqlite3_step(st) == SQLITE_ROW) {
		uint64_t since = (uint64_t)sqlite3_column_int64(st, 3), due = since + hold_ms(sp);
		if (due > now) {
			if (!*next_ms || due < *next_ms)
				*next_ms = due;
			continue;
		}
		const char *conv = (const char *)sqlite3_column_text(st, 0);
		uint64_t fu = (uint64_t)sqlite3_column_int64(st, 1), fd = (uint64_t)sqlite3_column_int64(st, 2), last = 0;
		sqlite3_reset(rows);
		sqlite3_bind_text(rows, 1, conv, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(rows, 2, (sqlite3_int64)fu);
		sqlite3_bind_int64(rows, 3, (sqlite3_int64)fd);
		int64_t ids[256];
		size_t n = 0;
		while (n < 256 && sqlite3_step(rows) == SQLITE_ROW) {
			ids[n++] = sqlite3_column_int64(rows, 0);
			last = (uint64_t)sqlite3_column_int64(rows, 1);
		}
		sqlite3_reset(rows);
		for (size_t i = 0; i < n && rc == SP_OK; i++)
			rc = surface(sp, ids[i]);
		if (rc == SP_OK)
			rc = set_next(sp, conv, fu, fd, last + 1);
	}
	sqlite3_finalize(st);
	sqlite3_finalize(rows);
	return rc;
}

/* ---- reporting ---- */

static int
report_rows(sealpost *sp, sqlite3_stmt *st, bool history, sealpost_event_cb cb, void *arg);

int
cl_report_pending(sealpost *sp, sealpost_event_cb cb, void *arg)
{
	if (!cb)
		return SP_OK;
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "SELECT id, msg_id, conv, outgoing, from_user, from_device, from_phone, conv_seq,"
				  " server_ts, kind, text, media_path, media_name, media_mime, media_size, media_err"
				  " FROM messages WHERE surfaced > 0 AND reported = 0 ORDER BY surfaced");
	if (rc)
		return rc;
	return report_rows(sp, st, false, cb, arg);
}

static int status_of(sealpost *sp, const uint8_t msg_id[16], int *st_out, uint64_t *ts);

/* Reports each row of st (finalized here); outside history marks them reported. */
static int
report_rows(sealpost *sp, sqlite3_stmt *st, bool history, sealpost_event_cb cb, void *arg)
{
	sqlite3_stmt *mark = NULL;
	int rc = history ? SP_OK : cl_prep(sp, &mark, "UPDATE messages SET reported = 1 WHERE id = ?");
	while (rc == SP_OK && sqlite3_step(st) == SQLITE_ROW) {
		char conv[160], from[48], hex[33];
		const char *phone = (const char *)sqlite3_column_text(st, 6);
		sealpost_event ev = {.type = SEALPOST_EV_MESSAGE};
		cl_conv_display(sp, (const char *)sqlite3_column_text(st, 2), conv, sizeof(conv));
		ev.outgoing = sqlite3_column_int(st, 3);
		ev.from_user = (uint64_t)sqlite3_column_int64(st, 4);
		ev.from_device = (uint64_t)sqlite3_column_int64(st, 5);
		if (phone && *phone)
			snprintf(from, sizeof(from), "%s", phone);
		else
			cl_user_display(sp, ev.from_user, from, sizeof(from));
		if (sqlite3_column_bytes(st, 1) == 16)
			cl_hex(sqlite3_column_blob(st, 1), 16, hex);
		else
			hex[0] = '\0';
		ev.conv = conv;
		ev.from = from;
		ev.msg_id = hex;
		ev.group = conv[0] == '@' ? strtoull((const char *)sqlite3_column_text(st, 2) + 2, NULL, 10) : 0;
		ev.conv_seq = (uint64_t)sqlite3_column_int64(st, 7);
		ev.server_ts = (uint64_t)sqlite3_column_int64(st, 8);
		if (sqlite3_column_int(st, 9) == CL_K_TEXT) {
			ev.text = (const char *)sqlite3_column_text(st, 10);
			if (!ev.text)
				ev.text = "";
		} else {
			ev.media_path = (const char *)sqlite3_column_text(st, 11);
			ev.media_name = (const char *)sqlite3_column_text(st, 12);
			ev.media_mime = (const char *)sqlite3_column_text(st, 13);
			ev.media_size = (uint64_t)sqlite3_column_int64(st, 14);
			ev.media_error = sqlite3_column_int(st, 15);
		}
		int s = 0;
		if (history && ev.outgoing && sqlite3_column_bytes(st, 1) == 16 &&
		    status_of(sp, sqlite3_column_blob(st, 1), &s, NULL) == SP_OK)
			ev.status = status_name(s);
		cb(&ev, arg);
		if (mark) {
			sqlite3_reset(mark);
			sqlite3_bind_int64(mark, 1, sqlite3_column_int64(st, 0));
			if (sqlite3_step(mark) != SQLITE_DONE)
				rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
		}
	}
	sqlite3_finalize(st);
	sqlite3_finalize(mark);
	return rc;
}

/* ---- processing one DELIVER ---- */

static int
dedup_seen(sealpost *sp, uint64_t fu, uint64_t fd, const uint8_t msg_id[16], bool *seen)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "SELECT 1 FROM dedup WHERE from_user = ? AND from_device = ? AND msg_id = ?");
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)fu);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)fd);
	sqlite3_bind_blob(st, 3, msg_id, 16, SQLITE_STATIC);
	*seen = sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	return SP_OK;
}

/* Inside a transaction: the dedup row and our inbox position. */
static int
record_seen(sealpost *sp, const cl_deliver *d)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "INSERT OR IGNORE INTO dedup(from_user, from_device, msg_id, ts) VALUES(?, ?, ?, ?)");
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)d->from_user);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)d->from_device);
	sqlite3_bind_blob(st, 3, d->msg_id, 16, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)sp_time_ms());
	rc = sqlite3_step(st) == SQLITE_DONE ? SP_OK : SP_ESTORE;
	sqlite3_finalize(st);
	if (rc == SP_OK && d->seq > sp->last_seq)
		rc = cl_meta_set_u64(sp, "last_seq", d->seq);
	return rc;
}

/* After the commit: ACK and remember the position. */
static int
acked(sealpost *sp, const cl_deliver *d)
{
	if (d->seq > sp->last_seq)
		sp->last_seq = d->seq;
	return cl_ack(sp, d->seq);
}

/* The receipt event for the nrep messages in hex whose status moved. */
static void
report_receipt(sealpost *sp, uint64_t fu, uint64_t fd, int status, char **hex, uint32_t nrep,
	       sealpost_event_cb cb, void *arg)
{
	if (!cb || !nrep)
		return;
	char from[48];
	cl_user_display(sp, fu, from, sizeof(from));
	sealpost_event ev = {.type = SEALPOST_EV_RECEIPT, .from = from, .from_user = fu, .from_device = fd,
			     .receipt_kind = status == ST_READ ? SEALPOST_RECEIPT_READ : SEALPOST_RECEIPT_DELIVERED,
			     .msg_ids = (const char *const *)hex, .n_msg_ids = nrep, .msg_id = hex[0]};
	cb(&ev, arg);
}

/* Sets (msg_id, user, device) to status unless it is there already, inside the caller's
 * transaction; *moved says whether it changed. */
static int
raise_status(sealpost *sp, sqlite3_stmt *up, const uint8_t *msg_id, uint64_t fu, uint64_t fd, int status,
	     bool *moved)
{
	sqlite3_reset(up);
	sqlite3_bind_blob(up, 1, msg_id, 16, SQLITE_TRANSIENT);
	sqlite3_bind_int64(up, 2, (sqlite3_int64)fu);
	sqlite3_bind_int64(up, 3, (sqlite3_int64)fd);
	sqlite3_bind_int(up, 4, status);
	if (sqlite3_step(up) != SQLITE_DONE)
		return cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
	*moved = sqlite3_changes(sp->db) > 0;
	return SP_OK;
}

/* Appends a message id's hex to the growing list *hex (n entries, *cap allocated). */
static int
hex_push(sealpost *sp, char ***hex, uint32_t *n, uint32_t *cap, const uint8_t *id)
{
	if (*n == *cap) {
		uint32_t nc = *cap ? 2 * *cap : 64;
		char **nh = realloc(*hex, nc * sizeof(char *));
		if (!nh)
			return cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
		*hex = nh;
		*cap = nc;
	}
	if (!((*hex)[*n] = malloc(33)))
		return cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
	cl_hex(id, 16, (*hex)[(*n)++]);
	return SP_OK;
}

/*
 * A RECEIPT_UPTO (reader fu on its device fd read every message of our device rd_devices[i]
 * in the conversation up to that device's seq rd_seqs[i]): marks read only messages this
 * device holds as sent to the reader in that conversation -- its own sends that the server
 * took (SENT) with the reader among their recipients, or copies of what another of our
 * devices sent in the 1:1 conversation with the reader or in a group the reader is a member
 * of -- with a seq from 1 to the one given. Nothing is remembered for later messages, so a
 * seq past what was sent (2^63) marks nothing more than what is already there.
 */
static int
apply_upto(sealpost *sp, const sp_frame *f, char ***hex, uint32_t *nrep, uint32_t *cap)
{
	uint64_t fu = sp_frame_u64(f, SP_F_FROM_USER), fd = sp_frame_u64(f, SP_F_FROM_DEVICE);
	uint64_t group = sp_frame_u64(f, SP_F_GROUP);
	const sp_val *devs = sp_frame_get(f, SP_F_RD_DEVICES), *seqs = sp_frame_get(f, SP_F_RD_SEQS);
	if (sp_frame_u64(f, SP_F_KIND) != SP_ETYPE_RECEIPT_READ || devs->us.n != seqs->us.n || fu == sp->user)
		return SP_OK; /* not one we can apply: ACKed only */
	char conv[48];
	cl_conv_key(conv, sizeof(conv), group != 0, group ? group : fu);
	sqlite3_stmt *sel = NULL, *up = NULL;
	int rc;
	if ((rc = cl_prep(sp, &sel, "SELECT m.msg_id FROM messages m WHERE m.conv = ?1 AND m.outgoing = 1"
				    " AND m.from_user = ?2 AND m.from_device = ?3 AND m.conv_seq BETWEEN 1 AND ?4"
				    " AND m.server_ts > 0 AND LENGTH(m.msg_id) = 16"
				    " AND (CASE WHEN m.from_device = ?5 THEN"
				    "  EXISTS (SELECT 1 FROM outbox o WHERE o.msg_id = m.msg_id AND o.state = 1) AND"
				    "  EXISTS (SELECT 1 FROM recipients r WHERE r.msg_id = m.msg_id AND r.user = ?6)"
				    " ELSE ?7 = 0 OR EXISTS (SELECT 1 FROM group_members g WHERE g.gid = ?7 AND g.user = ?6) END)"
				    " ORDER BY m.conv_seq")) ||
	    (rc = cl_prep(sp, &up, "INSERT INTO recipients(msg_id, user, device, status) VALUES(?1, ?2, ?3, ?4)"
				   " ON CONFLICT(msg_id, user, device) DO UPDATE SET status = ?4 WHERE status < ?4")))
		goto out;
	for (uint32_t i = 0; i < devs->us.n && rc == SP_OK; i++) {
		uint64_t upto = seqs->us.v[i] > INT64_MAX ? INT64_MAX : seqs->us.v[i];
		sqlite3_reset(sel);
		sqlite3_bind_text(sel, 1, conv, -1, SQLITE_STATIC);
		sqlite3_bind_int64(sel, 2, (sqlite3_int64)sp->user);
		sqlite3_bind_int64(sel, 3, (sqlite3_int64)devs->us.v[i]);
		sqlite3_bind_int64(sel, 4, (sqlite3_int64)upto);
		sqlite3_bind_int64(sel, 5, (sqlite3_int64)sp->device);
		sqlite3_bind_int64(sel, 6, (sqlite3_int64)fu);
		sqlite3_bind_int64(sel, 7, (sqlite3_int64)group);
		while (rc == SP_OK && sqlite3_step(sel) == SQLITE_ROW) {
			bool moved = false;
			const uint8_t *id = sqlite3_column_blob(sel, 0);
			if ((rc = raise_status(sp, up, id, fu, fd, ST_READ, &moved)) == SP_OK && moved)
				rc = hex_push(sp, hex, nrep, cap, id);
		}
	}
out:
	sqlite3_finalize(sel);
	sqlite3_finalize(up);
	return rc;
}

static int
process_receipt(sealpost *sp, const cl_deliver *d, sealpost_event_cb cb, void *arg)
{
	sp_frame f;
	int rc = sp_frame_decode(d->env, d->env_len, &f);
	bool ok = rc == SP_OK, upto = ok && f.type == SP_T_RECEIPT_UPTO;
	if (ok && f.type != SP_T_RECEIPT && !upto) {
		sp_frame_fini(&f);
		ok = false;
	}
	int status = d->etype == CL_ET_RECEIPT_READ ? ST_READ : ST_DELIVERED;
	const sp_val *ids = ok && !upto ? sp_frame_get(&f, SP_F_MSG_IDS) : NULL;
	uint64_t fu = ok ? sp_frame_u64(&f, SP_F_FROM_USER) : 0, fd = ok ? sp_frame_u64(&f, SP_F_FROM_DEVICE) : 0;
	sqlite3_stmt *up = NULL;
	char **hex = NULL;
	uint32_t n = ids ? ids->bs.n : 0, nrep = 0, cap = 0;
	/* A receipt we cannot parse is only recorded and ACKed. */
	if ((rc = cl_begin(sp)))
		goto out;
	if (upto && d->etype == CL_ET_RECEIPT_READ && (rc = apply_upto(sp, &f, &hex, &nrep, &cap)))
		goto out;
	if (n && (rc = cl_prep(sp, &up, "INSERT INTO recipients(msg_id, user, device, status)"
					" SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM outbox WHERE msg_id = ?1)"
					" OR EXISTS (SELECT 1 FROM messages WHERE msg_id = ?1 AND outgoing = 1)"
					" ON CONFLICT(msg_id, user, device) DO UPDATE SET status = MAX(status, ?4)")))
		goto out;
	for (uint32_t i = 0; i < n && rc == SP_OK; i++) {
		bool moved = false;
		/* Receipts for what this user sent -- from this device, or from another one
		 * whose copy this device holds -- are recorded and reported, so every device of
		 * the sender shows the same ticks; others (receipts for messages this device
		 * never saw) are only ACKed. */
		if ((rc = raise_status(sp, up, ids->bs.v[i].p, fu, fd, status, &moved)) == SP_OK && moved)
			rc = hex_push(sp, &hex, &nrep, &cap, ids->bs.v[i].p);
	}
	if (rc == SP_OK && (rc = record_seen(sp, d)) == SP_OK)
		rc = cl_commit(sp);
out:
	sqlite3_finalize(up);
	if (rc)
		cl_rollback(sp);
	if (rc == SP_OK)
		rc = acked(sp, d);
	if (rc == SP_OK)
		report_receipt(sp, fu, fd, status, hex, nrep, cb, arg);
	for (uint32_t i = 0; i < nrep; i++)
		free(hex[i]);
	free(hex);
	if (ok)
		sp_frame_fini(&f);
	return rc;
}

/* Reports a DELIVER that could not be read (held: kept until its key comes). */
static void
report_undecryptable(sealpost *sp, const cl_deliver *d, int why, bool held, sealpost_event_cb cb, void *arg)
{
	if (!cb)
		return;
	char from[48], hex[33];
	cl_user_display(sp, d->from_user, from, sizeof(from));
	cl_hex(d->msg_id, 16, hex);
	sealpost_event ev = {.type = SEALPOST_EV_UNDECRYPTABLE, .from = from, .from_user = d->from_user,
			     .from_device = d->from_device, .group = d->group, .msg_id = hex, .error = why,
			     .server_ts = d->server_ts, .held = held};
	cb(&ev, arg);
}

/* A DELIVER that cannot be read: remembered (so a redelivery is dropped), ACKed, reported. */
static int
refuse(sealpost *sp, const cl_deliver *d, int why, sealpost_event_cb cb, void *arg)
{
	int rc;
	if ((rc = cl_begin(sp)) || (rc = cl_sig_save(sp)) || (rc = record_seen(sp, d)) || (rc = cl_commit(sp))) {
		cl_rollback(sp);
		return rc;
	}
	if ((rc = acked(sp, d)))
		return rc;
	report_undecryptable(sp, d, why, false, cb, arg);
	return SP_OK;
}

static int
decrypt_pairwise(sealpost *sp, const char *peer, int type, const uint8_t *msg, size_t len, uint8_t **pt,
		 size_t *ptlen)
{
	int stype = type == CL_ET_PREKEY ? SIG_MSG_PREKEY : type == CL_ET_WHISPER ? SIG_MSG_WHISPER : -1;
	if (stype < 0)
		return SP_EPROTO;
	int rc = sig_store_decrypt(sp->sig, peer, stype, msg, len, pt, ptlen);
	if (rc == SP_EIDENTITY && stype == SIG_MSG_PREKEY) {
		/* The sender's identity changed (reinstall): accept it like a "security code
		 * changed" notice, then decrypt. */
		sig_prekey_msg m;
		if (sig_proto_prekey_decode(msg, len, &m) == SP_OK &&
		    sig_store_trust_identity(sp->sig, peer, m.identity_key) == SP_OK)
			rc = sig_store_decrypt(sp->sig, peer, stype, msg, len, pt, ptlen);
		sp->identity_changed = rc == SP_OK; /* reported to the application by process() */
	}
	return rc;
}

/* Decrypts a DELIVER into its plaintext envelope (*pt caller frees). */
static int
decrypt(sealpost *sp, const cl_deliver *d, uint8_t **pt, size_t *ptlen)
{
	char peer[48];
	int rc;
	cl_peer_name(d->from_user, d->from_device, peer);
	if (!d->group)
		return decrypt_pairwise(sp, peer, (int)d->etype, d->env, d->env_len, pt, ptlen);
	if (d->etype != CL_ET_SENDERKEY)
		return SP_EPROTO;
	char gname[32];
	snprintf(gname, sizeof(gname), "g%" PRIu64, d->group);
	if (d->ct_len > 1) {
		/* Our copy of the sender's key, sent pairwise with this message. */
		uint8_t *skpt;
		size_t sklen;
		cl_env e;
		if ((rc = decrypt_pairwise(sp, peer, d->ct[0], d->ct + 1, d->ct_len - 1, &skpt, &sklen)))
			return rc;
		rc = cl_env_decode(skpt, sklen, &e);
		if (rc == SP_OK && (e.kind != CL_K_SKDM || e.group != d->group))
			rc = SP_EMALFORMED;
		if (rc == SP_OK)
			rc = sig_store_sk_process(sp->sig, gname, peer, e.skdm, e.skdm_len);
		if (rc == SP_OK && e.gname_len) {
			char name[129];
			memcpy(name, e.gname, e.gname_len);
			name[e.gname_len] = '\0';
			rc = cl_group_seen(sp, d->group, name);
		}
		sodium_memzero(skpt, sklen);
		free(skpt);
		if (rc)
			return rc;
	}
	return sig_store_sk_decrypt(sp->sig, gname, peer, d->env, d->env_len, pt, ptlen);
}

/* A file name safe to use in the media directory. */
static void
safe_name(const char *in, char *out, size_t cap)
{
	size_t k = 0;
	for (size_t i = 0; in[i] && k + 1 < cap; i++) {
		char c = in[i];
		out[k++] = isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_' ? c : '_';
	}
	out[k] = '\0';
	if (!k || out[0] == '.')
		snprintf(out, cap, "file");
}

/* Downloads and decrypts a media message; network failures are returned (no ACK), a bad
 * blob is recorded in *media_err. */
static int
fetch_media(sealpost *sp, const cl_deliver *d, const cl_media *m, char *path, size_t cap, int *media_err)
{
	char hex[33], enc[4096], name[80];
	cl_hex(d->msg_id, 16, hex);
	snprintf(enc, sizeof(enc), "%s/media/in-%s.enc", sp->cfg.home, hex);
	safe_name(m->name, name, sizeof(name));
	snprintf(path, cap, "%s/media/%.8s-%s", sp->cfg.home, hex, name);
	*media_err = 0;
	int rc = cl_media_download(sp, m, enc);
	if (rc && sp->errclass == SEALPOST_ERR_NET)
		return rc;
	if (rc == SP_OK)
		rc = cl_media_decrypt_file(enc, path, m);
	unlink(enc);
	if (rc) {
		*media_err = rc;
		path[0] = '\0';
	}
	return SP_OK;
}

/* The phone to show for the sender of `d` (into out; "" when unknown: shown as #user). The
 * sender's user id is the server's (connsrv sets from_user from the login); the phone
 * written inside the envelope is only a claim, believed when keysrv says that number is
 * that user's (USER_LOOKUP), and then remembered as a contact. A contact's or our own
 * number needs no lookup. Fails only on a network error (the message is not acknowledged
 * and comes again). */
static int
sender_phone(sealpost *sp, const cl_deliver *d, const cl_env *e, char *out, size_t cap)
{
	out[0] = '\0';
	if (d->from_user == sp->user) {
		snprintf(out, cap, "%s", sp->phone);
		return SP_OK;
	}
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "SELECT phone FROM contacts WHERE user = ? LIMIT 1");
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)d->from_user);
	if (sqlite3_step(st) == SQLITE_ROW)
		snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	if (out[0] || e->phone_len == 0 || e->phone_len >= cap || e->phone[0] != '+')
		return SP_OK;
	char claim[33];
	memcpy(claim, e->phone, e->phone_len);
	claim[e->phone_len] = '\0';
	sp_frame q, r;
	sp_frame_init(&q, SP_T_USER_LOOKUP, 0, false);
	sp_frame_set_str(&q, SP_F_PHONE, claim);
	if ((rc = cl_call_want(sp, &q, SP_T_USER_FOUND, &r)))
		return sp->errclass == SEALPOST_ERR_NET ? rc : SP_OK;
	bool theirs = sp_frame_u64(&r, SP_F_USER) == d->from_user;
	sp_frame_fini(&r);
	if (!theirs)
		return SP_OK; /* someone else's number: shown as #user, not learnt */
	if ((rc = cl_prep(sp, &st, "INSERT OR IGNORE INTO contacts(phone, user) VALUES(?, ?)")))
		return rc;
	sqlite3_bind_text(st, 1, claim, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)d->from_user);
	sqlite3_step(st);
	sqlite3_finalize(st);
	snprintf(out, cap, "%s", claim);
	return SP_OK;
}

static int
store_message(sealpost *sp, const cl_deliver *d, const cl_env *e, const char *conv, const char *media_path,
	      int media_err)
{
	sqlite3_stmt *st = NULL;
	char phone[33] = "";
	int rc;
	if ((rc = sender_phone(sp, d, e, phone, sizeof(phone))))
		return rc;
	if ((rc = cl_begin(sp)))
		return rc;
	if (d->group && (rc = cl_group_seen(sp, d->group, NULL)))
		goto out;
	if ((rc = cl_prep(sp, &st, "INSERT INTO messages(msg_id, conv, outgoing, from_user, from_device, from_phone,"
				   " conv_seq, server_ts, kind, text, media_path, media_name, media_mime, media_size,"
				   " media_err, surfaced) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)")))
		goto out;
	sqlite3_bind_blob(st, 1, d->msg_id, 16, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, conv, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 3, d->from_user == sp->user);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)d->from_user);
	sqlite3_bind_int64(st, 5, (sqlite3_int64)d->from_device);
	sqlite3_bind_text(st, 6, phone, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 7, (sqlite3_int64)e->seq);
	sqlite3_bind_int64(st, 8, (sqlite3_int64)d->server_ts);
	sqlite3_bind_int(st, 9, (int)e->kind);
	if (e->kind == CL_K_TEXT) {
		sqlite3_bind_text(st, 10, e->text, (int)e->text_len, SQLITE_STATIC);
	} else {
		if (media_path && *media_path)
			sqlite3_bind_text(st, 11, media_path, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 12, e->media.name, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 13, e->media.mime, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 14, (sqlite3_int64)e->media.plain_size);
	}
	sqlite3_bind_int(st, 15, media_err);
	if (sqlite3_step(st) != SQLITE_DONE) {
		rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
		goto out;
	}
	if ((rc = cl_order_admit(sp, conv, d->from_user, d->from_device, e->seq, sqlite3_last_insert_rowid(sp->db))) ||
	    (rc = record_seen(sp, d)) || (rc = cl_sig_save(sp)))
		goto out;
	rc = cl_commit(sp);
out:
	sqlite3_finalize(st);
	if (rc)
		cl_rollback(sp);
	return rc;
}

/* ---- sender keys: held messages, retry requests and answers ---- */

static int
sk_retry_set(sealpost *sp, uint64_t gid, uint64_t device, int dir, const uint8_t msg_id[16])
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "INSERT OR REPLACE INTO sk_retry(gid, device, dir, ts, msg_id) VALUES(?, ?, ?, ?, ?)");
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)gid);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)device);
	sqlite3_bind_int(st, 3, dir);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)sp_time_ms());
	sqlite3_bind_blob(st, 5, msg_id, 16, SQLITE_STATIC);
	return cl_step_done(sp, st);
}

/* The last time (ms) a retry was asked of / answered for (gid, device) in direction dir;
 * 0: none outstanding. */
static uint64_t
sk_retry_at(sealpost *sp, uint64_t gid, uint64_t device, int dir)
{
	sqlite3_stmt *st;
	uint64_t at = 0;
	if (cl_prep(sp, &st, "SELECT ts FROM sk_retry WHERE gid = ? AND device = ? AND dir = ?"))
		return 0;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)gid);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)device);
	sqlite3_bind_int(st, 3, dir);
	if (sqlite3_step(st) == SQLITE_ROW)
		at = (uint64_t)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return at;
}

/* Asks the sender device of a held group message for its key as it was for the oldest
 * message held from it: at most one request outstanding per (group, sender device), asked
 * again only after CL_SK_RETRY_MS. A failure is only logged in the error text: the next
 * undecryptable message from it asks again. */
static void
sk_ask(sealpost *sp, uint64_t gid, uint64_t user, uint64_t device)
{
	uint64_t at = sk_retry_at(sp, gid, device, 0);
	if (at && sp_time_ms() < at + CL_SK_RETRY_MS)
		return;
	sqlite3_stmt *st;
	uint8_t msg_id[16];
	bool found = false;
	if (cl_prep(sp, &st, "SELECT msg_id FROM sk_held WHERE gid = ? AND from_user = ? AND from_device = ?"
			     " ORDER BY id LIMIT 1"))
		return;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)gid);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)user);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)device);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 0) == 16) {
		memcpy(msg_id, sqlite3_column_blob(st, 0), 16);
		found = true;
	}
	sqlite3_finalize(st);
	if (!found)
		return;
	cl_env e = {.kind = CL_K_SK_RETRY, .group = gid, .retry_msg_id = msg_id};
	uint8_t *pt = NULL;
	size_t len = 0;
	bool stored = false;
	if (cl_env_encode(&e, &pt, &len) == SP_OK && cl_sk_send(sp, gid, &user, &device, 1, pt, len, false, &stored) == SP_OK &&
	    stored)
		sk_retry_set(sp, gid, device, 0, msg_id);
	free(pt);
}

/* A group message we cannot decrypt (missed or lost key): kept (at most CL_SK_HELD_MAX,
 * for CL_SK_HELD_MS; the oldest go first), recorded as seen, ACKed and reported
 * undecryptable (held), then the sender is asked for its key. */
static int
hold(sealpost *sp, const cl_deliver *d, int why, sealpost_event_cb cb, void *arg)
{
	sqlite3_stmt *ins = NULL, *trim = NULL;
	uint64_t now = sp_time_ms();
	int rc;
	if ((rc = cl_begin(sp)) ||
	    (rc = cl_prep(sp, &ins, "INSERT INTO sk_held(gid, from_user, from_device, msg_id, server_ts, seq, env, ts)"
				    " VALUES(?, ?, ?, ?, ?, ?, ?, ?)")) ||
	    (rc = cl_prep(sp, &trim, "DELETE FROM sk_held WHERE ts < ?1 OR id NOT IN (SELECT id FROM sk_held"
				     " ORDER BY id DESC LIMIT ?2)")))
		goto out;
	sqlite3_bind_int64(ins, 1, (sqlite3_int64)d->group);
	sqlite3_bind_int64(ins, 2, (sqlite3_int64)d->from_user);
	sqlite3_bind_int64(ins, 3, (sqlite3_int64)d->from_device);
	sqlite3_bind_blob(ins, 4, d->msg_id, 16, SQLITE_STATIC);
	sqlite3_bind_int64(ins, 5, (sqlite3_int64)d->server_ts);
	sqlite3_bind_int64(ins, 6, (sqlite3_int64)d->seq);
	sqlite3_bind_blob(ins, 7, d->env, (int)d->env_len, SQLITE_STATIC);
	sqlite3_bind_int64(ins, 8, (sqlite3_int64)now);
	sqlite3_bind_int64(trim, 1, (sqlite3_int64)(now > CL_SK_HELD_MS ? now - CL_SK_HELD_MS : 0));
	sqlite3_bind_int(trim, 2, CL_SK_HELD_MAX);
	if (sqlite3_step(ins) != SQLITE_DONE || sqlite3_step(trim) != SQLITE_DONE)
		rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
	if (rc == SP_OK && (rc = record_seen(sp, d)) == SP_OK)
		rc = cl_commit(sp);
out:
	sqlite3_finalize(ins);
	sqlite3_finalize(trim);
	if (rc) {
		cl_rollback(sp);
		return rc;
	}
	if ((rc = acked(sp, d)))
		return rc;
	report_undecryptable(sp, d, why, true, cb, arg);
	sk_ask(sp, d->group, d->from_user, d->from_device);
	return SP_OK;
}

/* The sender's key came: the messages held from it that now decrypt are stored and
 * reported like any other (their msg_id is the one reported undecryptable before). */
static int
retry_held(sealpost *sp, uint64_t gid, uint64_t user, uint64_t device, sealpost_event_cb cb, void *arg)
{
	char gname[32], peer[48];
	snprintf(gname, sizeof(gname), "g%" PRIu64, gid);
	cl_peer_name(user, device, peer);
	for (int64_t after = 0;;) {
		sqlite3_stmt *st;
		int rc = cl_prep(sp, &st, "SELECT id, msg_id, server_ts, env FROM sk_held WHERE gid = ? AND from_user = ?"
					  " AND from_device = ? AND id > ? ORDER BY id LIMIT 1");
		if (rc)
			return rc;
		sqlite3_bind_int64(st, 1, (sqlite3_int64)gid);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)user);
		sqlite3_bind_int64(st, 3, (sqlite3_int64)device);
		sqlite3_bind_int64(st, 4, after);
		if (sqlite3_step(st) != SQLITE_ROW || sqlite3_column_bytes(st, 1) != 16) {
			sqlite3_finalize(st);
			return cl_report_pending(sp, cb, arg);
		}
		cl_deliver d = {.from_user = user, .from_device = device, .group = gid,
				.server_ts = (uint64_t)sqlite3_column_int64(st, 2), .etype = CL_ET_SENDERKEY};
		int64_t id = sqlite3_column_int64(st, 0);
		memcpy(d.msg_id, sqlite3_column_blob(st, 1), 16);
		uint8_t *pt = NULL;
		size_t ptlen = 0;
		rc = sig_store_sk_decrypt(sp->sig, gname, peer, sqlite3_column_blob(st, 3),
					  (size_t)sqlite3_column_bytes(st, 3), &pt, &ptlen);
		sqlite3_finalize(st);
		after = id;
		if (rc) {
			cl_sig_reload(sp);
			continue; /* still not: kept until its time or count is up */
		}
		cl_env e;
		char conv[48], media_path[4096] = "";
		int media_err = 0;
		rc = cl_env_decode(pt, ptlen, &e);
		if (rc == SP_OK && (e.group != gid || (e.kind != CL_K_TEXT && e.kind != CL_K_MEDIA)))
			rc = SP_EMALFORMED;
		cl_conv_key(conv, sizeof(conv), true, gid);
		if (rc == SP_OK && e.kind == CL_K_MEDIA)
			rc = fetch_media(sp, &d, &e.media, media_path, sizeof(media_path), &media_err);
		if (rc == SP_OK)
			rc = store_message(sp, &d, &e, conv, media_path, media_err);
		sodium_memzero(pt, ptlen);
		free(pt);
		if (rc && sp->errclass == SEALPOST_ERR_NET) {
			cl_sig_reload(sp);
			return rc; /* held still: tried again with the next key or request */
		}
		if (rc)
			cl_sig_reload(sp);
		char sql[96];
		snprintf(sql, sizeof(sql), "DELETE FROM sk_held WHERE id = %" PRId64, id);
		if ((rc = cl_exec(sp, sql)))
			return rc;
	}
}

/* A retry request from a member device: answered with our key as it was for the message
 * it names, only if that device is in the group's device list now and was a recipient of
 * that message (never a key for messages sent before it joined), at most once per
 * CL_SK_ANSWER_MS per (group, device). Network failures are returned (no ACK: asked again). */
static int
sk_answer(sealpost *sp, const cl_deliver *d, const cl_env *e)
{
	uint64_t at = sk_retry_at(sp, d->group, d->from_device, 1);
	if (at && sp_time_ms() < at + CL_SK_ANSWER_MS)
		return SP_OK;
	sqlite3_stmt *st;
	uint8_t skdm[1024];
	int n = -1, rc;
	if ((rc = cl_prep(sp, &st, "SELECT skdm FROM sk_dist WHERE msg_id = ?1 AND gid = ?2 AND EXISTS (SELECT 1 FROM"
				   " recipients WHERE msg_id = ?1 AND user = ?3 AND device = ?4)")))
		return rc;
	sqlite3_bind_blob(st, 1, e->retry_msg_id, 16, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)d->group);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)d->from_user);
	sqlite3_bind_int64(st, 4, (sqlite3_int64)d->from_device);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 0) <= (int)sizeof(skdm)) {
		n = sqlite3_column_bytes(st, 0);
		memcpy(skdm, sqlite3_column_blob(st, 0), (size_t)n);
	}
	sqlite3_finalize(st);
	if (n <= 0)
		return SP_OK; /* not ours, too old, or not a recipient of it */
	cl_group_info gi;
	if ((rc = cl_group_fetch(sp, d->group, &gi)))
		return sp->errclass == SEALPOST_ERR_NET ? rc : SP_OK;
	bool member = false;
	for (size_t i = 0; i < gi.ndevices && !member; i++)
		member = gi.devices[i] == d->from_device && gi.owners[i] == d->from_user;
	cl_env de = {.kind = CL_K_SKDM, .group = d->group, .phone = sp->phone, .phone_len = strlen(sp->phone),
		     .gname = gi.name, .gname_len = strlen(gi.name), .skdm = skdm, .skdm_len = (size_t)n};
	uint8_t *pt = NULL;
	size_t len = 0;
	bool stored = false;
	if (member && (rc = cl_env_encode(&de, &pt, &len)) == SP_OK &&
	    (rc = cl_sk_send(sp, d->group, &d->from_user, &d->from_device, 1, pt, len, false, &stored)) == SP_OK)
		rc = sk_retry_set(sp, d->group, d->from_device, 1, e->retry_msg_id);
	if (pt) {
		sodium_memzero(pt, len);
		free(pt);
	}
	sodium_memzero(skdm, sizeof(skdm));
	cl_group_info_fini(&gi);
	return rc && sp->errclass == SEALPOST_ERR_NET ? rc : SP_OK;
}

/* A SEND_SK item: our copy of a member's key (a distribution or a retry answer), or a
 * member's retry request. */
static int
process_sk(sealpost *sp, const cl_deliver *d, sealpost_event_cb cb, void *arg)
{
	char peer[48], gname[32];
	uint8_t *pt = NULL;
	size_t ptlen = 0;
	cl_env e;
	int rc;
	cl_peer_name(d->from_user, d->from_device, peer);
	snprintf(gname, sizeof(gname), "g%" PRIu64, d->group);
	if (d->env_len < 2 || (rc = decrypt_pairwise(sp, peer, d->env[0], d->env + 1, d->env_len - 1, &pt, &ptlen))) {
		cl_sig_reload(sp);
		return refuse(sp, d, SP_EMALFORMED, cb, arg);
	}
	rc = cl_env_decode(pt, ptlen, &e);
	if (rc == SP_OK && (e.group != d->group || (e.kind != CL_K_SKDM && e.kind != CL_K_SK_RETRY)))
		rc = SP_EMALFORMED;
	if (rc == SP_OK && e.kind == CL_K_SKDM)
		rc = sig_store_sk_process(sp->sig, gname, peer, e.skdm, e.skdm_len);
	if (rc == SP_OK && e.kind == CL_K_SKDM && e.gname_len) {
		char name[129];
		memcpy(name, e.gname, e.gname_len);
		name[e.gname_len] = '\0';
		rc = cl_group_seen(sp, d->group, name);
	}
	if (rc) {
		sodium_memzero(pt, ptlen);
		free(pt);
		cl_sig_reload(sp);
		return refuse(sp, d, rc, cb, arg);
	}
	/* The answer goes before the ACK: lost on the way, the request comes again. */
	if (e.kind == CL_K_SK_RETRY && (rc = sk_answer(sp, d, &e))) {
		sodium_memzero(pt, ptlen);
		free(pt);
		cl_sig_reload(sp);
		return rc;
	}
	sodium_memzero(pt, ptlen);
	free(pt);
	char sql[160];
	snprintf(sql, sizeof(sql), "DELETE FROM sk_retry WHERE gid = %" PRId64 " AND device = %" PRId64 " AND dir = 0",
		 (int64_t)d->group, (int64_t)d->from_device);
	if ((rc = cl_begin(sp)) || (rc = cl_sig_save(sp)) || (rc = record_seen(sp, d)) ||
	    (e.kind == CL_K_SKDM && (rc = cl_exec(sp, sql))) || (rc = cl_commit(sp))) {
		cl_rollback(sp);
		return rc;
	}
	if ((rc = acked(sp, d)))
		return rc;
	return e.kind == CL_K_SKDM ? retry_held(sp, d->group, d->from_user, d->from_device, cb, arg) : SP_OK;
}

int
cl_recv_process(sealpost *sp, const cl_deliver *d, sealpost_event_cb cb, void *arg)
{
	if (d->typing) {
		cl_typing_report(sp, d, cb, arg);
		return SP_OK;
	}
	if (d->presence) {
		cl_presence_report(sp, d, cb, arg);
		return SP_OK;
	}
	if (d->etype == CL_ET_RECEIPT_DELIVERED || d->etype == CL_ET_RECEIPT_READ)
		return d->from_device == 0 ? process_receipt(sp, d, cb, arg) : refuse(sp, d, SP_EPROTO, cb, arg);
	bool seen;
	int rc;
	if ((rc = dedup_seen(sp, d->from_user, d->from_device, d->msg_id, &seen)))
		return rc;
	if (seen)
		return acked(sp, d);
	if (d->group && d->etype == CL_ET_SKDM)
		return process_sk(sp, d, cb, arg);
	uint8_t *pt = NULL;
	size_t ptlen = 0;
	sp->identity_changed = false;
	if ((rc = decrypt(sp, d, &pt, &ptlen))) {
		/* The Signal state is unchanged by a failed decrypt; drop anything else. */
		cl_sig_reload(sp);
		/* A group body without its sender's key: held until the key comes on request. */
		if (d->group && d->etype == CL_ET_SENDERKEY)
			return hold(sp, d, rc, cb, arg);
		return refuse(sp, d, rc, cb, arg);
	}
	if (sp->identity_changed && cb) {
		char from[48];
		cl_user_display(sp, d->from_user, from, sizeof(from));
		sealpost_event ev = {.type = SEALPOST_EV_IDENTITY, .from = from, .from_user = d->from_user,
				     .from_device = d->from_device, .server_ts = d->server_ts};
		cb(&ev, arg);
	}
	cl_env e;
	char conv[48], media_path[4096] = "";
	int media_err = 0;
	rc = cl_env_decode(pt, ptlen, &e);
	if (rc == SP_OK && d->group && e.group != d->group)
		rc = SP_EMALFORMED; /* a body re-sent into another group */
	if (rc == SP_OK && !d->group && (e.group || (d->from_user == sp->user && !e.to)))
		rc = SP_EMALFORMED;
	if (rc == SP_OK && e.kind == CL_K_SKDM)
		rc = SP_EPROTO; /* distributions only travel inside a group send */
	if (rc) {
		sodium_memzero(pt, ptlen);
		free(pt);
		return refuse(sp, d, rc, cb, arg);
	}
	cl_conv_key(conv, sizeof(conv), d->group != 0,
		    d->group ? d->group : d->from_user == sp->user ? e.to : d->from_user);
	if (e.kind == CL_K_MEDIA && (rc = fetch_media(sp, d, &e.media, media_path, sizeof(media_path), &media_err))) {
		sodium_memzero(pt, ptlen);
		free(pt);
		cl_sig_reload(sp); /* not stored: the DELIVER comes again */
		return rc;
	}
	rc = store_message(sp, d, &e, conv, media_path, media_err);
	sodium_memzero(pt, ptlen);
	free(pt);
	if (rc) {
		cl_sig_reload(sp);
		return rc;
	}
	if ((rc = acked(sp, d)))
		return rc;
	return cl_report_pending(sp, cb, arg);
}

int
cl_recv_expire(sealpost *sp, sealpost_event_cb cb, void *arg, uint64_t *next_ms)
{
	int rc;
	if ((rc = cl_begin(sp)) || (rc = cl_order_expire(sp, sp_time_ms(), next_ms)) || (rc = cl_commit(sp))) {
		cl_rollback(sp);
		return rc;
	}
	return cl_report_pending(sp, cb, arg);
}

/* listen: reports each new connection (the count of lost ones says whether the
 * connection stays up). */
static void
report_connection(sealpost *sp, sealpost_event_cb cb, void *arg, uint64_t *seen)
{
	if (!cb || !sp->conn || sp->connects == *seen)
		return;
	*seen = sp->connects;
	sealpost_event ev = {.type = SEALPOST_EV_CONNECTED,
			     .server = sp->server,
			     .reconnects = sp->connects - 1,
			     .drop_reason = sp->connects > 1 && sp->drop_reason[0] ? sp->drop_reason : NULL};
	cb(&ev, arg);
}

/* The receive loop shared by recv, listen and status. */
static int
drain(sealpost *sp, int wait_ms, int listen, sealpost_event_cb cb, void *arg)
{
	int attempts = listen ? -1 : cl_attempts(sp), rc;
	uint64_t qe_at = 0, hard_end = sp_time_ms() + 120000 + (uint64_t)(wait_ms > 0 ? wait_ms : 0);
	uint64_t seen = sp->connects;
	if (sp->conn)
		seen--; /* a connection made before this call is reported too */
	if ((rc = cl_online(sp, attempts)))
		return rc;
	rc = cl_outbox_flush(sp, NULL, NULL);
	if (rc && sp->errclass == SEALPOST_ERR_NET && (rc = cl_online(sp, attempts)))
		return rc;
	for (;;) {
		uint64_t next_hold = 0, now;
		if (listen)
			report_connection(sp, cb, arg, &seen);
		if ((rc = cl_recv_expire(sp, cb, arg, &next_hold)))
			return rc;
		now = sp_time_ms();
		uint64_t until = now + 1000;
		if (!listen) {
			if (sp->queue_empty && !sp->dq_head) {
				if (!qe_at)
					qe_at = now;
				uint64_t end = qe_at + (uint64_t)(wait_ms > 0 ? wait_ms : 0);
				if (next_hold > end)
					end = next_hold;
				if (now >= end)
					return SP_OK;
				if (end < until)
					until = end;
			}
			if (now >= hard_end)
				return cl_fail(sp, SP_ETIMEDOUT, SEALPOST_ERR_NET, "the inbox did not drain in time");
		}
		if (next_hold && next_hold < until)
			until = next_hold;
		cl_deliver *d = NULL;
		rc = cl_next_deliver(sp, until > now ? (int)(until - now) : 0, &d);
		if (rc == SP_OK) {
			rc = cl_recv_process(sp, d, cb, arg);
			cl_deliver_free(d);
		}
		/* (A connection whose PING went unanswered is gone with SP_ETIMEDOUT too.) */
		if (rc == SP_OK || rc == SP_EAGAIN || (rc == SP_ETIMEDOUT && sp->conn))
			continue;
		if (sp->errclass != SEALPOST_ERR_NET)
			return rc;
		/* Lost connection: reconnect (backoff with jitter) and carry on from last_seq;
		 * what was queued meanwhile goes out (a failure here shows in the next round). */
		qe_at = 0;
		if ((rc = cl_online(sp, attempts)))
			return rc;
		cl_outbox_flush(sp, NULL, NULL);
	}
}

int
sealpost_recv(sealpost *sp, int wait_ms, int listen, sealpost_event_cb cb, void *arg)
{
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_report_pending(sp, cb, arg)))
		return rc;
	return drain(sp, wait_ms, listen, cb, arg);
}

/* ---- READ receipts ---- */

static int
conv_of(sealpost *sp, const char *name, char *conv, size_t cap)
{
	uint64_t id;
	int rc;
	if (name[0] == '@') {
		if ((rc = cl_resolve_group(sp, name, &id)))
			return rc;
		cl_conv_key(conv, cap, true, id);
		return SP_OK;
	}
	if ((rc = cl_resolve_user(sp, name, &id)))
		return rc;
	cl_conv_key(conv, cap, false, id);
	return SP_OK;
}

/* Marks read_sent what one READ_UPTO covered: the rows from `to`'s devices up to their seqs,
 * no newer than row `maxid` (what the reader had when the receipt was made). */
static int
mark_read_sent(sealpost *sp, const char *conv, uint64_t to, int64_t maxid, const uint64_t *devs,
	       const uint64_t *seqs, uint32_t n)
{
	sqlite3_stmt *up;
	int rc;
	if ((rc = cl_begin(sp)) ||
	    (rc = cl_prep(sp, &up, "UPDATE messages SET read_sent = 1 WHERE conv = ? AND outgoing = 0 AND from_user = ?"
				   " AND from_device = ? AND IFNULL(conv_seq, 0) <= ? AND read_sent = 0 AND surfaced > 0"
				   " AND id <= ?"))) {
		cl_rollback(sp);
		return rc;
	}
	for (uint32_t i = 0; i < n && rc == SP_OK; i++) {
		sqlite3_reset(up);
		sqlite3_bind_text(up, 1, conv, -1, SQLITE_STATIC);
		sqlite3_bind_int64(up, 2, (sqlite3_int64)to);
		sqlite3_bind_int64(up, 3, (sqlite3_int64)devs[i]);
		sqlite3_bind_int64(up, 4, (sqlite3_int64)seqs[i]);
		sqlite3_bind_int64(up, 5, maxid);
		if (sqlite3_step(up) != SQLITE_DONE)
			rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
	}
	sqlite3_finalize(up);
	if (rc == SP_OK && (rc = cl_commit(sp)) == SP_OK)
		return SP_OK;
	cl_rollback(sp);
	return rc;
}

/*
 * One READ_UPTO per sender user per round, however many messages: for each of the
 * sender's devices, the highest per-conversation seq (the one that device put in its
 * envelopes) among the messages shown here and not yet reported read. Seqs are per sending
 * device, so the receipt names each device's own; a message still missing here below that
 * seq (a gap surfaced past after gap_hold_ms) counts as read, as in "read up to".
 */
int
sealpost_read(sealpost *sp, const char *name)
{
	char conv[48];
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = conv_of(sp, name, conv, sizeof(conv))))
		return rc;
	uint64_t group = conv[0] == 'g' ? strtoull(conv + 2, NULL, 10) : 0;
	for (;;) {
		sqlite3_stmt *st;
		uint64_t to = 0, devs[64], seqs[64];
		int64_t maxid = 0;
		uint32_t n = 0;
		if ((rc = cl_prep(sp, &st, "SELECT from_user, MAX(id) FROM messages WHERE conv = ? AND outgoing = 0"
					   " AND read_sent = 0 AND surfaced > 0 GROUP BY from_user ORDER BY MIN(id) LIMIT 1")))
			return rc;
		sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW) {
			to = (uint64_t)sqlite3_column_int64(st, 0);
			maxid = sqlite3_column_int64(st, 1);
		}
		sqlite3_finalize(st);
		if (maxid == 0)
			return SP_OK;
		if ((rc = cl_prep(sp, &st, "SELECT from_device, MAX(IFNULL(conv_seq, 0)) FROM messages WHERE conv = ?"
					   " AND outgoing = 0 AND from_user = ? AND read_sent = 0 AND surfaced > 0"
					   " AND id <= ? GROUP BY from_device ORDER BY from_device LIMIT 64")))
			return rc;
		sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)to);
		sqlite3_bind_int64(st, 3, maxid);
		while (n < 64 && sqlite3_step(st) == SQLITE_ROW) {
			devs[n] = (uint64_t)sqlite3_column_int64(st, 0);
			seqs[n++] = (uint64_t)sqlite3_column_int64(st, 1);
		}
		sqlite3_finalize(st);
		if ((rc = cl_online(sp, cl_attempts(sp))))
			return rc;
		sp_frame q, r;
		sp_frame_init(&q, SP_T_READ_UPTO, 0, false);
		sp_frame_set_u64(&q, SP_F_TO_USER, to);
		if (group)
			sp_frame_set_u64(&q, SP_F_GROUP, group);
		sp_frame_set_u64s(&q, SP_F_RD_DEVICES, devs, n);
		sp_frame_set_u64s(&q, SP_F_RD_SEQS, seqs, n);
		/* OK: the receipt is stored for every device of the sender. No such user: it is
		 * gone, and nothing will ever take it. Anything else: sent again next time. */
		rc = cl_call_want(sp, &q, SP_T_OK, &r);
		if (rc == SP_OK)
			sp_frame_fini(&r);
		else if (rc != SP_ENOTFOUND)
			return rc;
		if ((rc = mark_read_sent(sp, conv, to, maxid, devs, seqs, n)))
			return rc;
	}
}

/* ---- status and history ---- */

void
cl_expiry_learn(sealpost *sp, uint64_t server_ts, uint64_t exp_after)
{
	if (!server_ts)
		return;
	int64_t skew = (int64_t)server_ts - (int64_t)sp_time_ms();
	/* A store error (reported by cl_meta_set_u64) only delays `expired` to a later login. */
	if (cl_meta_set_u64(sp, "srv_skew", (uint64_t)skew) == SP_OK)
		cl_meta_set_u64(sp, "exp_after", exp_after);
}

/* Whether a message sent at server_ts (the server's clock) is past the time the server
 * said an undelivered message is gone for good: measured on the server's clock as last
 * seen at login, so a wrong clock here does not turn anything expired early. */
static bool
past_expiry(sealpost *sp, uint64_t server_ts)
{
	uint64_t after = cl_meta_u64(sp, "exp_after");
	if (!after || !server_ts)
		return false;
	int64_t now = (int64_t)sp_time_ms() + (int64_t)cl_meta_u64(sp, "srv_skew");
	return now > 0 && (uint64_t)now >= server_ts + after;
}

/* Overall status: every recipient user (other than us) at least delivered/read on one
 * of its devices; a message only to our own devices uses those. */
static int
status_of(sealpost *sp, const uint8_t msg_id[16], int *out, uint64_t *ts)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "SELECT state, server_ts FROM outbox WHERE msg_id = ?");
	if (rc)
		return rc;
	sqlite3_bind_blob(st, 1, msg_id, 16, SQLITE_STATIC);
	int state = -1;
	uint64_t sent_ts = 0;
	if (sqlite3_step(st) == SQLITE_ROW) {
		state = sqlite3_column_int(st, 0);
		sent_ts = (uint64_t)sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	if (state < 0) {
		/* A copy of what another of our devices sent: sent, with the ticks its
		 * recipients' receipts bring here too. */
		if ((rc = cl_prep(sp, &st, "SELECT server_ts FROM messages WHERE msg_id = ? AND outgoing = 1")))
			return rc;
		sqlite3_bind_blob(st, 1, msg_id, 16, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW) {
			state = 1;
			sent_ts = (uint64_t)sqlite3_column_int64(st, 0);
		}
		sqlite3_finalize(st);
	}
	if (state < 0)
		return SP_ENOTFOUND;
	if (ts)
		*ts = sent_ts;
	if (state != 1) {
		*out = state == 2 ? ST_FAILED : ST_QUEUED;
		return SP_OK;
	}
	if ((rc = cl_prep(sp, &st, "SELECT MIN(best) FROM (SELECT MAX(status) AS best FROM recipients WHERE msg_id = ?1"
				   " AND status >= 0 AND (user != ?2 OR NOT EXISTS (SELECT 1 FROM recipients WHERE msg_id = ?1"
				   " AND user != ?2 AND status >= 0)) GROUP BY user)")))
		return rc;
	sqlite3_bind_blob(st, 1, msg_id, 16, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)sp->user);
	*out = ST_SENT;
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
		*out = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	if (*out != ST_SENT || !past_expiry(sp, sent_ts))
		return SP_OK;
	/* Expired: past exp_after and no recipient device (other than ours, as above) got it;
	 * one that did keeps the message at sent for the others. */
	if ((rc = cl_prep(sp, &st, "SELECT 1 FROM recipients WHERE msg_id = ?1 AND status > 1 AND (user != ?2 OR"
				   " NOT EXISTS (SELECT 1 FROM recipients WHERE msg_id = ?1 AND user != ?2)) LIMIT 1")))
		return rc;
	sqlite3_bind_blob(st, 1, msg_id, 16, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)sp->user);
	if (sqlite3_step(st) != SQLITE_ROW)
		*out = ST_EXPIRED;
	sqlite3_finalize(st);
	return SP_OK;
}

void
sealpost_status_free(sealpost_status *s)
{
	if (!s)
		return;
	free(s->devices);
	free(s);
}

int
sealpost_status_get(sealpost *sp, const char *msg_hex, int offline, sealpost_status **out)
{
	uint8_t id[16];
	int rc, overall = 0;
	*out = NULL;
	if ((rc = cl_need_account(sp)))
		return rc;
	if (cl_unhex(msg_hex, id, 16))
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "a message id is 32 hex characters");
	if (!offline && (rc = drain(sp, 0, 0, NULL, NULL)) && sp->errclass != SEALPOST_ERR_NET)
		return rc; /* offline is fine: the local state is shown */
	sealpost_status *s = calloc(1, sizeof(*s));
	if (!s)
		return cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
	if ((rc = status_of(sp, id, &overall, &s->server_ts))) {
		free(s);
		return rc == SP_ENOTFOUND ? cl_fail(sp, rc, SEALPOST_ERR_USAGE, "no message %s sent from this device", msg_hex)
					  : rc;
	}
	snprintf(s->status, sizeof(s->status), "%s", status_name(overall));
	sqlite3_stmt *st;
	if (overall == ST_FAILED) {
		if ((rc = cl_prep(sp, &st, "SELECT error, reason FROM outbox WHERE msg_id = ?"))) {
			free(s);
			return rc;
		}
		sqlite3_bind_blob(st, 1, id, 16, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW) {
			s->error = sqlite3_column_int(st, 0);
			if (sqlite3_column_text(st, 1))
				snprintf(s->reason, sizeof(s->reason), "%s", (const char *)sqlite3_column_text(st, 1));
		}
		sqlite3_finalize(st);
		if (s->error >= 0)
			s->error = SP_EPERM; /* failed before the reason was kept */
	}
	if ((rc = cl_prep(sp, &st, "SELECT user, device, status FROM recipients WHERE msg_id = ? ORDER BY user, device"))) {
		free(s);
		return rc;
	}
	sqlite3_bind_blob(st, 1, id, 16, SQLITE_STATIC);
	size_t cap = 0;
	bool past = past_expiry(sp, s->server_ts);
	while (sqlite3_step(st) == SQLITE_ROW) {
		if (s->n_devices == cap) {
			cap = cap ? 2 * cap : 8;
			sealpost_device_status *nd = realloc(s->devices, cap * sizeof(*nd));
			if (!nd) {
				rc = cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
				break;
			}
			s->devices = nd;
		}
		sealpost_device_status *d = &s->devices[s->n_devices++];
		d->user = (uint64_t)sqlite3_column_int64(st, 0);
		d->device = (uint64_t)sqlite3_column_int64(st, 1);
		int ds = sqlite3_column_int(st, 2);
		d->status = status_name(ds == ST_SENT && past ? ST_EXPIRED : ds);
		/* Refused by the server for a full queue (SENT's grp_refused), the only failure
		 * recorded per device. */
		d->reason = ds == ST_FAILED ? "queue full" : NULL;
	}
	sqlite3_finalize(st);
	if (rc) {
		sealpost_status_free(s);
		return rc;
	}
	*out = s;
	return SP_OK;
}

int
sealpost_history(sealpost *sp, const char *name, int limit, sealpost_event_cb cb, void *arg)
{
	char conv[48];
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = conv_of(sp, name, conv, sizeof(conv))))
		return rc;
	sqlite3_stmt *st;
	if ((rc = cl_prep(sp, &st, "SELECT * FROM (SELECT id, msg_id, conv, outgoing, from_user, from_device, from_phone,"
				   " conv_seq, server_ts, kind, text, media_path, media_name, media_mime, media_size,"
				   " media_err FROM messages WHERE conv = ? AND surfaced > 0 ORDER BY id DESC LIMIT ?)"
				   " ORDER BY id")))
		return rc;
	sqlite3_bind_text(st, 1, conv, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 2, limit > 0 ? limit : 50);
	return report_rows(sp, st, true, cb, arg);
}
