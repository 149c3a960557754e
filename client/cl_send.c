/*
 * Sending: the outbox (a message is stored before anything goes on the wire and keeps
 * its msg_id until SENT), device lists and pairwise sessions (bundles fetched on
 * demand), per-device encryption with self-fan-out, MISMATCHED_DEVICES handling, and
 * group sends with Sender Keys (distribution to devices that lack our current key).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/cl_internal.h"
#include "sp_error.h"
#include "sp_time.h"

#define SEND_TRIES 4

/* ---- device lists and sessions ---- */

int
cl_devices_refresh(sealpost *sp, uint64_t user)
{
	sp_frame q, r;
	sp_frame_init(&q, SP_T_DEVICES_GET, 0, false);
	sp_frame_set_u64(&q, SP_F_USER, user);
	int rc = cl_call_want(sp, &q, SP_T_DEVICES_R, &r);
	if (rc)
		return rc;
	const sp_val *v = sp_frame_get(&r, SP_F_DEVICE_LIST);
	sqlite3_stmt *del = NULL, *ins = NULL, *mark = NULL;
	if ((rc = cl_begin(sp)) || (rc = cl_prep(sp, &del, "DELETE FROM devices WHERE user = ?")) ||
	    (rc = cl_prep(sp, &ins, "INSERT OR IGNORE INTO devices(user, device) VALUES(?, ?)")) ||
	    (rc = cl_prep(sp, &mark, "INSERT OR REPLACE INTO device_lists(user, fetched) VALUES(?, ?)")))
		goto out;
	sqlite3_bind_int64(del, 1, (sqlite3_int64)user);
	sqlite3_step(del);
	for (uint32_t i = 0; v && i < v->rs.n; i++) {
		sqlite3_reset(ins);
		sqlite3_bind_int64(ins, 1, (sqlite3_int64)user);
		sqlite3_bind_int64(ins, 2, (sqlite3_int64)sp_frame_u64(&v->rs.v[i], SP_F_DEVICE));
		if (sqlite3_step(ins) != SQLITE_DONE)
			rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
	}
	sqlite3_bind_int64(mark, 1, (sqlite3_int64)user);
	sqlite3_bind_int64(mark, 2, (sqlite3_int64)sp_time_ms());
	if (sqlite3_step(mark) != SQLITE_DONE)
		rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
	if (rc == SP_OK)
		rc = cl_commit(sp);
out:
	sqlite3_finalize(del);
	sqlite3_finalize(ins);
	sqlite3_finalize(mark);
	sp_frame_fini(&r);
	if (rc)
		cl_rollback(sp);
	return rc;
}

/* A user's devices from the store (refreshed from keysrv when unknown or `force`). */
static int
devices_of(sealpost *sp, uint64_t user, bool force, uint64_t *out, size_t cap, size_t *n)
{
	sqlite3_stmt *st;
	int rc;
	if (!force) {
		if ((rc = cl_prep(sp, &st, "SELECT 1 FROM device_lists WHERE user = ?")))
			return rc;
		sqlite3_bind_int64(st, 1, (sqlite3_int64)user);
		force = sqlite3_step(st) != SQLITE_ROW;
		sqlite3_finalize(st);
	}
	if (force && (rc = cl_devices_refresh(sp, user)))
		return rc;
	if ((rc = cl_prep(sp, &st, "SELECT device FROM devices WHERE user = ? ORDER BY device")))
		return rc;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)user);
	*n = 0;
	while (sqlite3_step(st) == SQLITE_ROW && *n < cap)
		out[(*n)++] = (uint64_t)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return SP_OK;
}

static int
bundle_fetch(sealpost *sp, uint64_t user, uint64_t device, sig_bundle *b)
{
	sp_frame q, r;
	sp_frame_init(&q, SP_T_BUNDLE_GET, 0, false);
	sp_frame_set_u64(&q, SP_F_USER, user);
	sp_frame_set_u64(&q, SP_F_DEVICE, device);
	int rc = cl_call_want(sp, &q, SP_T_BUNDLE_R, &r);
	if (rc)
		return rc;
	const sp_val *v = sp_frame_get(&r, SP_F_BUNDLES);
	const sp_frame *d = NULL;
	for (uint32_t i = 0; v && i < v->rs.n; i++)
		if (sp_frame_u64(&v->rs.v[i], SP_F_DEVICE) == device)
			d = &v->rs.v[i];
	if (!d) {
		sp_frame_fini(&r);
		return cl_fail(sp, SP_ENOTFOUND, SEALPOST_ERR_SERVER, "device %" PRIu64 " has no keys", device);
	}
	memset(b, 0, sizeof(*b));
	b->registration_id = (uint32_t)sp_frame_u64(d, SP_F_REG_ID);
	b->device_id = (uint32_t)device;
	memcpy(b->identity_key, sp_frame_bin(d, SP_F_IDENTITY_KEY).p, SIG_PUB_LEN);
	b->signed_prekey_id = (uint32_t)sp_frame_u64(d, SP_F_SPK_ID);
	memcpy(b->signed_prekey, sp_frame_bin(d, SP_F_SPK).p, SIG_PUB_LEN);
	memcpy(b->signed_prekey_sig, sp_frame_bin(d, SP_F_SPK_SIG).p, SIG_SIG_LEN);
	if (sp_frame_has(d, SP_F_OPK)) {
		b->has_prekey = 1;
		b->prekey_id = (uint32_t)sp_frame_u64(d, SP_F_OPK_ID);
		memcpy(b->prekey, sp_frame_bin(d, SP_F_OPK).p, SIG_PUB_LEN);
	}
	sp_frame_fini(&r);
	return SP_OK;
}

int
cl_encrypt_for(sealpost *sp, uint64_t user, uint64_t device, const uint8_t *pt, size_t len,
	       uint8_t **out, size_t *outlen, int *etype)
{
	char peer[48];
	sig_bundle b, *bp = NULL;
	int type = 0, rc;
	cl_peer_name(user, device, peer);
	if (!sig_store_has_session(sp->sig, peer)) {
		if ((rc = bundle_fetch(sp, user, device, &b)))
			return rc;
		bp = &b;
	}
	rc = sig_store_encrypt(sp->sig, peer, bp, pt, len, out, outlen, &type);
	if (rc == SP_EIDENTITY && bp) {
		/* The device was re-keyed (a new install under the same id is not possible, so
		 * this is a changed identity): accept it, like a "security code changed" notice. */
		if ((rc = sig_store_trust_identity(sp->sig, peer, bp->identity_key)) == SP_OK)
			rc = sig_store_encrypt(sp->sig, peer, bp, pt, len, out, outlen, &type);
	}
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_CRYPTO, "encrypting for device %" PRIu64 ": %s", device,
			       sp_strerror(rc));
	*etype = type == SIG_MSG_PREKEY ? CL_ET_PREKEY : CL_ET_WHISPER;
	return SP_OK;
}

/* ---- outbox ---- */

typedef struct outbox_row {
	int64_t seq;
	uint8_t msg_id[16];
	char conv[48];
	uint8_t *env;
	size_t env_len;
	char media_file[4096];
	bool uploaded;
} outbox_row;

static bool
listed(const sp_val *v, uint64_t x)
{
	for (uint32_t i = 0; v && i < v->us.n; i++)
		if (v->us.v[i] == x)
			return true;
	return false;
}

/* SENT: the outbox entry is sent; each recipient device is `sent`, or `failed` (queue
 * full) when SENT's grp_refused names it. */
static int
mark_sent(sealpost *sp, const outbox_row *o, const sp_frame *sent, const uint64_t *users, const uint64_t *devs,
	  size_t n)
{
	uint64_t server_ts = sp_frame_u64(sent, SP_F_SERVER_TS);
	const sp_val *refused = sp_frame_get(sent, SP_F_GRP_REFUSED);
	sqlite3_stmt *st = NULL, *rec = NULL, *msg = NULL;
	int rc;
	if ((rc = cl_begin(sp)) ||
	    (rc = cl_prep(sp, &st, "UPDATE outbox SET state = 1, server_ts = ? WHERE seq = ?")) ||
	    (rc = cl_prep(sp, &rec, "INSERT OR IGNORE INTO recipients(msg_id, user, device, status) VALUES(?, ?, ?, ?)")) ||
	    (rc = cl_prep(sp, &msg, "UPDATE messages SET server_ts = ? WHERE msg_id = ? AND outgoing = 1")))
		goto out;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)server_ts);
	sqlite3_bind_int64(st, 2, o->seq);
	if (sqlite3_step(st) != SQLITE_DONE)
		goto store_err;
	for (size_t i = 0; i < n; i++) {
		sqlite3_reset(rec);
		sqlite3_bind_blob(rec, 1, o->msg_id, 16, SQLITE_STATIC);
		sqlite3_bind_int64(rec, 2, (sqlite3_int64)users[i]);
		sqlite3_bind_int64(rec, 3, (sqlite3_int64)devs[i]);
		sqlite3_bind_int(rec, 4, listed(refused, devs[i]) ? CL_ST_FAILED : CL_ST_SENT);
		if (sqlite3_step(rec) != SQLITE_DONE)
			goto store_err;
	}
	sqlite3_bind_int64(msg, 1, (sqlite3_int64)server_ts);
	sqlite3_bind_blob(msg, 2, o->msg_id, 16, SQLITE_STATIC);
	if (sqlite3_step(msg) != SQLITE_DONE)
		goto store_err;
	rc = cl_commit(sp);
	goto out;
store_err:
	rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
out:
	sqlite3_finalize(st);
	sqlite3_finalize(rec);
	sqlite3_finalize(msg);
	if (rc)
		cl_rollback(sp);
	else if (o->media_file[0])
		unlink(o->media_file);
	return rc;
}

/* Persists the ratchet steps taken for a send before it goes on the wire, so a message
 * key is never used twice. */
static int
save_state(sealpost *sp)
{
	int rc;
	if ((rc = cl_begin(sp)) || (rc = cl_sig_save(sp)) || (rc = cl_commit(sp))) {
		cl_rollback(sp);
		return rc;
	}
	return SP_OK;
}

static int
set_uploaded(sealpost *sp, const outbox_row *o)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "UPDATE outbox SET uploaded = 1 WHERE seq = ?");
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, o->seq);
	rc = sqlite3_step(st) == SQLITE_DONE ? SP_OK : SP_ESTORE;
	sqlite3_finalize(st);
	return rc;
}

static int
media_of(sealpost *sp, const outbox_row *o, cl_media *m)
{
	cl_env e;
	int rc = cl_env_decode(o->env, o->env_len, &e);
	if (rc || e.kind != CL_K_MEDIA)
		return cl_fail(sp, SP_EMALFORMED, SEALPOST_ERR_OTHER, "outbox entry is damaged");
	*m = e.media;
	return SP_OK;
}

/* Uploads an outbox entry's media for these devices, unless it has no media or an
 * earlier attempt finished the upload. */
static int
upload_media(sealpost *sp, const outbox_row *o, const uint64_t *devs, size_t n, sealpost_progress_cb cb,
	     void *arg)
{
	cl_media m;
	int rc;
	if (!o->media_file[0] || o->uploaded)
		return SP_OK;
	if ((rc = media_of(sp, o, &m)) || (rc = cl_media_upload(sp, o->media_file, &m, devs, n, cb, arg)))
		return rc;
	return set_uploaded(sp, o);
}

/* A request too large for one frame fails before the ratchet steps taken for it are
 * saved (the caller reloads the state: those message keys were never used). The id is
 * set as cl_call will set it, so the size is the one that goes on the wire. */
static int
frame_fits(sealpost *sp, sp_frame *q, size_t ncopies)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	q->has_id = true;
	q->id = sp->next_id + 1;
	int rc = sp_frame_pack(q, &sb);
	size_t len = sb.size;
	msgpack_sbuffer_destroy(&sb);
	if (rc == SP_ETOOBIG)
		return cl_fail(sp, rc, SEALPOST_ERR_SERVER,
			       "message too large: %zu encrypted copies do not fit in one %zu-byte frame", ncopies,
			       sp_frame_limit_small());
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_SERVER, "%s cannot be encoded: %s (%zu bytes)",
			       sp_frame_type_name(q->type), sp_strerror(rc), len);
	return SP_OK;
}

static int
send_one(sealpost *sp, const outbox_row *o, sealpost_progress_cb cb, void *arg)
{
	uint64_t to = strtoull(o->conv + 2, NULL, 10);
	uint64_t devs[2 * SP_MAX_SEND_DEVICES], users[2 * SP_MAX_SEND_DEVICES];
	int rc = SP_OK;
	for (int attempt = 0; attempt < SEND_TRIES; attempt++) {
		size_t nto = 0, nself = 0, n = 0;
		uint64_t self[SP_MAX_SEND_DEVICES];
		if ((rc = devices_of(sp, to, attempt > 0, devs, SP_MAX_SEND_DEVICES, &nto)))
			return rc;
		for (size_t i = 0; i < nto; i++)
			if (!(to == sp->user && devs[i] == sp->device)) {
				users[n] = to;
				devs[n++] = devs[i];
			}
		if (to != sp->user) {
			if ((rc = devices_of(sp, sp->user, attempt > 0, self, SP_MAX_SEND_DEVICES, &nself)))
				return rc;
			for (size_t i = 0; i < nself && n < SP_MAX_SEND_DEVICES; i++)
				if (self[i] != sp->device) {
					users[n] = sp->user;
					devs[n++] = self[i];
				}
		}
		if (n == 0)
			return cl_fail(sp, SP_ENOTFOUND, SEALPOST_ERR_SERVER, "the recipient has no devices");
		if ((rc = upload_media(sp, o, devs, n, cb, arg)))
			return rc;
		sp_frame items[SP_MAX_SEND_DEVICES];
		uint8_t *cts[SP_MAX_SEND_DEVICES] = {0};
		for (size_t i = 0; i < n && rc == SP_OK; i++) {
			size_t len;
			int et;
			rc = cl_encrypt_for(sp, users[i], devs[i], o->env, o->env_len, &cts[i], &len, &et);
			if (rc == SP_OK) {
				sp_frame_init(&items[i], SP_T_SEND_ITEM, 0, false);
				sp_frame_set_u64(&items[i], SP_F_DEVICE, devs[i]);
				sp_frame_set_u64(&items[i], SP_F_ETYPE, (uint64_t)et);
				sp_frame_set_bin(&items[i], SP_F_CT, cts[i], len);
			}
		}
		sp_frame q, r;
		if (rc == SP_OK) {
			sp_frame_init(&q, SP_T_SEND, 0, false);
			sp_frame_set_bin(&q, SP_F_MSG_ID, o->msg_id, 16);
			sp_frame_set_u64(&q, SP_F_TO_USER, to);
			sp_frame_set_recs(&q, SP_F_ITEMS, items, (uint32_t)n);
			if ((rc = frame_fits(sp, &q, n)) == SP_OK && (rc = save_state(sp)) == SP_OK)
				rc = cl_call(sp, &q, &r);
		}
		for (size_t i = 0; i < n; i++)
			free(cts[i]);
		if (rc) {
			cl_sig_reload(sp);
			/* A device that lost its keys (ENOTFOUND) may have been removed: re-read. */
			if (rc == SP_ENOTFOUND && attempt + 1 < SEND_TRIES)
				continue;
			return rc;
		}
		if (r.type == SP_T_SENT) {
			rc = mark_sent(sp, o, &r, users, devs, n);
			sp_frame_fini(&r);
			return rc;
		}
		unsigned type = r.type;
		sp_frame_fini(&r);
		if (type != SP_T_MISMATCHED_DEVICES)
			return cl_fail(sp, SP_EPROTO, SEALPOST_ERR_SERVER, "unexpected reply to SEND");
		/* Both device lists are re-read on the next attempt. */
	}
	return cl_fail(sp, SP_EMISMATCH, SEALPOST_ERR_SERVER, "device lists keep changing; message kept queued");
}

/* Our Sender Key for a group: created, or rotated when a member left (sk_epoch -2). */
static int
group_sender_key(sealpost *sp, uint64_t gid, const char *gname, uint64_t epoch, uint8_t **skdm, size_t *len)
{
	sqlite3_stmt *st;
	int64_t sk_epoch = -1;
	int rc = cl_prep(sp, &st, "SELECT sk_epoch FROM groups WHERE gid = ?");
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)gid);
	if (sqlite3_step(st) == SQLITE_ROW)
		sk_epoch = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	bool rotate = sk_epoch == -2;
	if ((rc = sig_store_sk_distribution(sp->sig, gname, rotate, skdm, len)))
		return cl_fail(sp, rc, SEALPOST_ERR_CRYPTO, "sender key: %s", sp_strerror(rc));
	if (sk_epoch >= 0)
		return SP_OK;
	/* New or rotated: every device needs the new key. */
	char sql[160];
	snprintf(sql, sizeof(sql),
		 "DELETE FROM sk_sent WHERE gid = %" PRId64 "; UPDATE groups SET sk_epoch = %" PRId64
		 " WHERE gid = %" PRId64,
		 (int64_t)gid, (int64_t)epoch, (int64_t)gid); /* stored as signed int64 */
	if ((rc = cl_begin(sp)) || (rc = cl_sig_save(sp)) || (rc = cl_exec(sp, sql)) || (rc = cl_commit(sp))) {
		cl_rollback(sp);
		return rc;
	}
	return SP_OK;
}

/* Devices whose SKDM the server stored (after each SEND_SK chunk). */
static int
sk_sent_mark(sealpost *sp, uint64_t gid, const uint64_t *devs, const bool *stored, size_t n)
{
	sqlite3_stmt *st;
	int rc;
	if ((rc = cl_begin(sp)) || (rc = cl_prep(sp, &st, "INSERT OR IGNORE INTO sk_sent(gid, device) VALUES(?, ?)"))) {
		cl_rollback(sp);
		return rc;
	}
	for (size_t i = 0; i < n && rc == SP_OK; i++) {
		if (!stored[i])
			continue;
		sqlite3_reset(st);
		sqlite3_bind_int64(st, 1, (sqlite3_int64)gid);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)devs[i]);
		if (sqlite3_step(st) != SQLITE_DONE)
			rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
	}
	sqlite3_finalize(st);
	if (rc == SP_OK)
		rc = cl_commit(sp);
	if (rc)
		cl_rollback(sp);
	return rc;
}

/* One SEND_SK of items[0..n) (devices devs): its SENT marks stored[i] for the devices not
 * refused. The ratchet steps are saved first; on failure the caller reloads. */
static int
sk_send_chunk(sealpost *sp, uint64_t gid, sp_frame *items, const uint64_t *devs, size_t n, bool *stored)
{
	uint8_t msg_id[16];
	sp_frame q, r;
	int rc;
	/* Its own id: the inbox dedups by msg_id, and the group body must not collide. */
	randombytes_buf(msg_id, sizeof(msg_id));
	sp_frame_init(&q, SP_T_SEND_SK, 0, false);
	sp_frame_set_u64(&q, SP_F_GROUP, gid);
	sp_frame_set_bin(&q, SP_F_MSG_ID, msg_id, 16);
	sp_frame_set_recs(&q, SP_F_ITEMS, items, (uint32_t)n);
	if ((rc = frame_fits(sp, &q, n)) || (rc = save_state(sp)) || (rc = cl_call_want(sp, &q, SP_T_SENT, &r)))
		return rc;
	const sp_val *refused = sp_frame_get(&r, SP_F_GRP_REFUSED);
	for (size_t i = 0; i < n; i++)
		stored[i] = !listed(refused, devs[i]);
	sp_frame_fini(&r);
	return SP_OK;
}

int
cl_sk_send(sealpost *sp, uint64_t gid, const uint64_t *users, const uint64_t *devs, size_t n, const uint8_t *pt,
	   size_t ptlen, bool mark, bool *stored)
{
	sp_frame *items = calloc(CL_SK_CHUNK_ITEMS, sizeof(sp_frame));
	uint8_t **cts = calloc(CL_SK_CHUNK_ITEMS, sizeof(uint8_t *));
	int rc = items && cts ? SP_OK : cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
	memset(stored, 0, n * sizeof(bool));
	for (size_t first = 0; first < n && rc == SP_OK;) {
		size_t k = 0, bytes = 0;
		/* A chunk stays well inside the small frame limit (frame_fits checks it). */
		while (first + k < n && k < CL_SK_CHUNK_ITEMS && bytes < CL_SK_CHUNK_BYTES && rc == SP_OK) {
			uint8_t *ct;
			size_t len;
			int et;
			if ((rc = cl_encrypt_for(sp, users[first + k], devs[first + k], pt, ptlen, &ct, &len, &et)))
				break;
			/* DELIVER carries an item's ct without its etype: the Signal type goes first. */
			if (!(cts[k] = malloc(len + 1))) {
				free(ct);
				rc = cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
				break;
			}
			cts[k][0] = (uint8_t)et;
			memcpy(cts[k] + 1, ct, len);
			free(ct);
			sp_frame_init(&items[k], SP_T_SEND_ITEM, 0, false);
			sp_frame_set_u64(&items[k], SP_F_DEVICE, devs[first + k]);
			sp_frame_set_u64(&items[k], SP_F_ETYPE, CL_ET_SKDM);
			sp_frame_set_bin(&items[k], SP_F_CT, cts[k], len + 1);
			bytes += len + 32;
			k++;
		}
		if (rc == SP_OK)
			rc = sk_send_chunk(sp, gid, items, devs + first, k, stored + first);
		if (rc == SP_OK && mark)
			rc = sk_sent_mark(sp, gid, devs + first, stored + first, k);
		for (size_t i = 0; i < k; i++) {
			free(cts[i]);
			cts[i] = NULL;
		}
		first += k;
	}
	if (rc)
		cl_sig_reload(sp); /* the steps of the failed chunk were never used */
	free(items);
	free(cts);
	return rc;
}

/* Sends our current key to every device of the group that lacks it, in as many SEND_SK
 * frames as it takes, each acknowledged before the next (sk_sent marks only what the
 * server stored). Devices refused for a full queue stay unmarked: a later send or their
 * retry request brings them the key. */
static int
distribute(sealpost *sp, uint64_t gid, const cl_group_info *gi, const uint8_t *skdm, size_t skdm_len)
{
	uint64_t *users = calloc(gi->ndevices ? gi->ndevices : 1, sizeof(uint64_t));
	uint64_t *devs = calloc(gi->ndevices ? gi->ndevices : 1, sizeof(uint64_t));
	bool *stored = calloc(gi->ndevices ? gi->ndevices : 1, sizeof(bool));
	sqlite3_stmt *st = NULL;
	size_t n = 0;
	int rc = users && devs && stored ? SP_OK : cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
	if (rc == SP_OK)
		rc = cl_prep(sp, &st, "SELECT 1 FROM sk_sent WHERE gid = ? AND device = ?");
	for (size_t i = 0; i < gi->ndevices && rc == SP_OK; i++) {
		sqlite3_reset(st);
		sqlite3_bind_int64(st, 1, (sqlite3_int64)gid);
		sqlite3_bind_int64(st, 2, (sqlite3_int64)gi->devices[i]);
		if (sqlite3_step(st) == SQLITE_ROW)
			continue;
		users[n] = gi->owners[i];
		devs[n++] = gi->devices[i];
	}
	sqlite3_finalize(st);
	cl_env de = {.kind = CL_K_SKDM, .group = gid, .phone = sp->phone, .phone_len = strlen(sp->phone),
		     .gname = gi->name, .gname_len = strlen(gi->name), .skdm = skdm, .skdm_len = skdm_len};
	uint8_t *dpt = NULL;
	size_t dlen = 0;
	if (rc == SP_OK && n && (rc = cl_env_encode(&de, &dpt, &dlen)) == SP_OK)
		rc = cl_sk_send(sp, gid, users, devs, n, dpt, dlen, true, stored);
	if (dpt) {
		sodium_memzero(dpt, dlen);
		free(dpt);
	}
	free(users);
	free(devs);
	free(stored);
	return rc;
}

/* Keeps our key as it was for a group message (a retry request for it is answered with
 * this), bounded per group: the oldest beyond CL_SK_DIST_KEEP go. */
static int
sk_dist_keep(sealpost *sp, uint64_t gid, const uint8_t msg_id[16], const uint8_t *skdm, size_t len)
{
	sqlite3_stmt *ins = NULL, *trim = NULL;
	int rc;
	if ((rc = cl_begin(sp)) ||
	    (rc = cl_prep(sp, &ins, "INSERT OR REPLACE INTO sk_dist(msg_id, gid, skdm, ts) VALUES(?, ?, ?, ?)")) ||
	    (rc = cl_prep(sp, &trim, "DELETE FROM sk_dist WHERE gid = ?1 AND rowid NOT IN (SELECT rowid FROM sk_dist"
				     " WHERE gid = ?1 ORDER BY rowid DESC LIMIT ?2)")))
		goto out;
	sqlite3_bind_blob(ins, 1, msg_id, 16, SQLITE_STATIC);
	sqlite3_bind_int64(ins, 2, (sqlite3_int64)gid);
	sqlite3_bind_blob(ins, 3, skdm, (int)len, SQLITE_STATIC);
	sqlite3_bind_int64(ins, 4, (sqlite3_int64)sp_time_ms());
	sqlite3_bind_int64(trim, 1, (sqlite3_int64)gid);
	sqlite3_bind_int(trim, 2, CL_SK_DIST_KEEP);
	if (sqlite3_step(ins) != SQLITE_DONE || sqlite3_step(trim) != SQLITE_DONE)
		rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
	if (rc == SP_OK)
		rc = cl_commit(sp);
out:
	sqlite3_finalize(ins);
	sqlite3_finalize(trim);
	if (rc)
		cl_rollback(sp);
	return rc;
}

/* A group message: the key to whoever lacks it (SEND_SK frames, acknowledged first: each
 * device's queue is FIFO, so its SKDM is ahead of the body), then the body once
 * (SEND_GROUP). */
static int
send_group_one(sealpost *sp, const outbox_row *o, sealpost_progress_cb cb, void *arg)
{
	uint64_t gid = strtoull(o->conv + 2, NULL, 10);
	char gname[32];
	snprintf(gname, sizeof(gname), "g%" PRIu64, gid);
	int rc = SP_OK;
	for (int attempt = 0; attempt < SEND_TRIES; attempt++) {
		cl_group_info gi;
		uint8_t *skdm = NULL, *body = NULL;
		size_t skdm_len = 0, body_len = 0;
		if ((rc = cl_group_fetch(sp, gid, &gi)))
			return rc;
		if (gi.ndevices == 0) {
			rc = cl_fail(sp, SP_ENOTFOUND, SEALPOST_ERR_USAGE, "the group has no other devices");
			goto next;
		}
		if ((rc = upload_media(sp, o, gi.devices, gi.ndevices, cb, arg)) ||
		    (rc = group_sender_key(sp, gid, gname, gi.epoch, &skdm, &skdm_len)) ||
		    (rc = distribute(sp, gid, &gi, skdm, skdm_len)))
			goto next;
		if ((rc = sig_store_sk_encrypt(sp->sig, gname, o->env, o->env_len, &body, &body_len))) {
			cl_fail(sp, rc, SEALPOST_ERR_CRYPTO, "group encrypt: %s", sp_strerror(rc));
			goto next;
		}
		sp_frame q, r;
		sp_frame_init(&q, SP_T_SEND_GROUP, 0, false);
		sp_frame_set_u64(&q, SP_F_GROUP, gid);
		sp_frame_set_bin(&q, SP_F_MSG_ID, o->msg_id, 16);
		sp_frame_set_u64(&q, SP_F_ETYPE, CL_ET_SENDERKEY);
		sp_frame_set_bin(&q, SP_F_BODY, body, body_len);
		/* The key as it was for this body is kept before it goes (a retry answer). */
		if ((rc = frame_fits(sp, &q, 1)) || (rc = sk_dist_keep(sp, gid, o->msg_id, skdm, skdm_len)) ||
		    (rc = save_state(sp)) || (rc = cl_call_want(sp, &q, SP_T_SENT, &r))) {
			cl_sig_reload(sp);
			goto next;
		}
		rc = mark_sent(sp, o, &r, gi.owners, gi.devices, gi.ndevices);
		sp_frame_fini(&r);
	next:
		free(body);
		if (skdm) {
			sodium_memzero(skdm, skdm_len);
			free(skdm);
		}
		cl_group_info_fini(&gi);
		if (rc != SP_EMISMATCH)
			return rc;
	}
	return rc;
}

/* Tries of one entry that end in an error neither permanent nor "later" (device lists
 * that keep changing, an encryption or protocol failure) before it is given up. */
#define OUTBOX_TRIES 5

enum { OB_LATER, OB_COUNTED, OB_FAILED };

/* What a failed try means for its entry: OB_FAILED when the same message can never go
 * (it leaves the outbox, and the entries behind it go on), OB_LATER when the network or
 * the server says "not now" (nothing counted), OB_COUNTED otherwise. */
static int
classify(const sealpost *sp, int rc)
{
	if (sp->errclass == SEALPOST_ERR_NET)
		return OB_LATER;
	switch (rc) {
	case SP_ENOTFOUND:  /* no such user, the recipient has no devices */
	case SP_EPERM:      /* not a member */
	case SP_EINVAL:     /* refused as invalid */
	case SP_ETOOBIG:    /* does not fit in a frame */
	case SP_EFIELDLEN:  /* a field out of its bounds */
	case SP_EMALFORMED: /* a damaged outbox entry */
	case SP_EBADTYPE:
		return OB_FAILED;
	case SP_EUNAVAIL:
	case SP_ERATELIMIT:
	case SP_EFULL:
	case SP_ENOMEM:
	case SP_ESTORE:
		return OB_LATER;
	default:
		return OB_COUNTED;
	}
}

/* A message that could not even be encoded never left this device: when it holds the
 * newest sequence number of its conversation, the next message takes that number again,
 * so that the recipient sees no gap (which it would hold back for gap_hold_ms). */
static int
give_back_seq(sealpost *sp, const outbox_row *o, int rc)
{
	cl_env e;
	if ((rc != SP_ETOOBIG && rc != SP_EFIELDLEN) || cl_env_decode(o->env, o->env_len, &e) || !e.seq)
		return SP_OK;
	sqlite3_stmt *st;
	int src = cl_prep(sp, &st, "UPDATE conv_out SET next_seq = next_seq - 1 WHERE conv = ? AND next_seq = ?");
	if (src)
		return src;
	sqlite3_bind_text(st, 1, o->conv, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)(e.seq + 1));
	return cl_step_done(sp, st);
}

/* Marks an entry failed with the current error (or, after too many tries, says so). */
static int
mark_failed(sealpost *sp, const outbox_row *o, int rc, int tries)
{
	char reason[sizeof(sp->err) + 48];
	if (tries >= OUTBOX_TRIES)
		snprintf(reason, sizeof(reason), "gave up after %d tries: %s", tries, sp->err);
	else
		snprintf(reason, sizeof(reason), "%s", sp->err);
	sqlite3_stmt *st;
	int src = cl_prep(sp, &st, "UPDATE outbox SET state = 2, error = ?, reason = ? WHERE seq = ?");
	if (src)
		return src;
	sqlite3_bind_int(st, 1, rc < 0 ? rc : SP_EPROTO);
	sqlite3_bind_text(st, 2, reason, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, o->seq);
	if ((src = cl_step_done(sp, st)))
		return src;
	if (o->media_file[0])
		unlink(o->media_file); /* it will never be uploaded */
	return give_back_seq(sp, o, rc);
}

/* Counts a try that failed (OB_COUNTED); returns the tries so far. */
static int
count_try(sealpost *sp, const outbox_row *o)
{
	sqlite3_stmt *st;
	int n = OUTBOX_TRIES; /* a store that cannot count gives the entry up */
	if (cl_prep(sp, &st, "UPDATE outbox SET attempts = attempts + 1 WHERE seq = ? RETURNING attempts"))
		return n;
	sqlite3_bind_int64(st, 1, o->seq);
	if (sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return n;
}

int
cl_outbox_flush(sealpost *sp, sealpost_progress_cb cb, void *arg)
{
	int rc = SP_OK;
	for (;;) {
		sqlite3_stmt *st;
		outbox_row o;
		memset(&o, 0, sizeof(o));
		if ((rc = cl_prep(sp, &st, "SELECT seq, msg_id, conv, env, media_file, uploaded FROM outbox"
					   " WHERE state = 0 ORDER BY seq LIMIT 1")))
			return rc;
		if (sqlite3_step(st) != SQLITE_ROW) {
			sqlite3_finalize(st);
			return SP_OK;
		}
		o.seq = sqlite3_column_int64(st, 0);
		memcpy(o.msg_id, sqlite3_column_blob(st, 1), 16);
		snprintf(o.conv, sizeof(o.conv), "%s", (const char *)sqlite3_column_text(st, 2));
		o.env_len = (size_t)sqlite3_column_bytes(st, 3);
		o.env = malloc(o.env_len ? o.env_len : 1);
		if (o.env)
			memcpy(o.env, sqlite3_column_blob(st, 3), o.env_len);
		if (sqlite3_column_text(st, 4))
			snprintf(o.media_file, sizeof(o.media_file), "%s", (const char *)sqlite3_column_text(st, 4));
		o.uploaded = sqlite3_column_int(st, 5) != 0;
		sqlite3_finalize(st);
		if (!o.env)
			return cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
		/* Not reaching the cluster says nothing about the message. */
		if ((rc = cl_online(sp, cl_attempts(sp)))) {
			free(o.env);
			return rc;
		}
		rc = o.conv[0] == 'g' ? send_group_one(sp, &o, cb, arg) : send_one(sp, &o, cb, arg);
		if (rc) {
			int kind = classify(sp, rc), tries = 0;
			if (kind == OB_COUNTED && (tries = count_try(sp, &o)) >= OUTBOX_TRIES)
				kind = OB_FAILED;
			/* Failed for good, it leaves the queue and the entries behind it go on; any
			 * other error keeps it, in order, and the entries behind it wait with it. */
			if (kind == OB_FAILED)
				rc = mark_failed(sp, &o, rc, tries);
		}
		free(o.env);
		if (rc)
			return rc;
	}
}

/* ---- queueing ---- */

/* Inserts the outbox row and our own copy of the message (inside a transaction). */
static int
queue_insert(sealpost *sp, const uint8_t msg_id[16], const char *conv, const cl_env *e, const char *media_file)
{
	uint8_t *env = NULL;
	size_t len = 0;
	sqlite3_stmt *ob = NULL, *msg = NULL;
	int rc = cl_env_encode(e, &env, &len);
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_USAGE, "message too large");
	if ((rc = cl_prep(sp, &ob, "INSERT INTO outbox(msg_id, conv, env, created, media_file) VALUES(?, ?, ?, ?, ?)")) ||
	    (rc = cl_prep(sp, &msg, "INSERT INTO messages(msg_id, conv, outgoing, from_user, from_device, from_phone,"
				    " conv_seq, server_ts, kind, text, media_path, media_name, media_mime, media_size,"
				    " reported) VALUES(?, ?, 1, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, 1)")))
		goto out;
	sqlite3_bind_blob(ob, 1, msg_id, 16, SQLITE_STATIC);
	sqlite3_bind_text(ob, 2, conv, -1, SQLITE_STATIC);
	sqlite3_bind_blob(ob, 3, env, (int)len, SQLITE_STATIC);
	sqlite3_bind_int64(ob, 4, (sqlite3_int64)sp_time_ms());
	if (media_file)
		sqlite3_bind_text(ob, 5, media_file, -1, SQLITE_STATIC);
	sqlite3_bind_blob(msg, 1, msg_id, 16, SQLITE_STATIC);
	sqlite3_bind_text(msg, 2, conv, -1, SQLITE_STATIC);
	sqlite3_bind_int64(msg, 3, (sqlite3_int64)sp->user);
	sqlite3_bind_int64(msg, 4, (sqlite3_int64)sp->device);
	sqlite3_bind_text(msg, 5, sp->phone, -1, SQLITE_STATIC);
	sqlite3_bind_int64(msg, 6, (sqlite3_int64)e->seq);
	sqlite3_bind_int(msg, 7, (int)e->kind);
	if (e->kind == CL_K_TEXT) {
		sqlite3_bind_text(msg, 8, e->text, (int)e->text_len, SQLITE_STATIC);
	} else {
		sqlite3_bind_text(msg, 10, e->media.name, -1, SQLITE_STATIC);
		sqlite3_bind_text(msg, 11, e->media.mime, -1, SQLITE_STATIC);
		sqlite3_bind_int64(msg, 12, (sqlite3_int64)e->media.plain_size);
	}
	if (sqlite3_step(ob) != SQLITE_DONE || sqlite3_step(msg) != SQLITE_DONE)
		rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
out:
	sqlite3_finalize(ob);
	sqlite3_finalize(msg);
	free(env);
	return rc;
}

/* Resolves a destination to its conversation key and fills the addressing of e. */
static int
address(sealpost *sp, const char *to, char *conv, size_t cap, cl_env *e)
{
	int rc;
	uint64_t id;
	if (to[0] == '@') {
		if ((rc = cl_resolve_group(sp, to, &id)))
			return rc;
		e->group = id;
		cl_conv_key(conv, cap, true, id);
		return SP_OK;
	}
	if ((rc = cl_resolve_user(sp, to, &id)))
		return rc;
	e->to = id;
	cl_conv_key(conv, cap, false, id);
	return SP_OK;
}

static int
queue_env(sealpost *sp, const char *to, cl_env *e, const char *media_file, uint8_t msg_id[16])
{
	char conv[48];
	int rc;
	if ((rc = address(sp, to, conv, sizeof(conv), e)))
		return rc;
	e->phone = sp->phone;
	e->phone_len = strlen(sp->phone);
	randombytes_buf(msg_id, 16);
	if ((rc = cl_begin(sp)) || (rc = cl_conv_next_seq(sp, conv, &e->seq)) ||
	    (rc = queue_insert(sp, msg_id, conv, e, media_file)) || (rc = cl_commit(sp)))
		cl_rollback(sp);
	return rc;
}

int
cl_outbox_add_text(sealpost *sp, const char *to, const char *text, uint8_t msg_id[16])
{
	cl_env e = {.kind = CL_K_TEXT, .text = text, .text_len = strlen(text)};
	if (e.text_len > 32768)
		return cl_fail(sp, SP_ETOOBIG, SEALPOST_ERR_USAGE, "text longer than 32768 bytes");
	return queue_env(sp, to, &e, NULL, msg_id);
}

/* After a flush: was msg_id sent? */
static int
result_of(sealpost *sp, const uint8_t msg_id[16], int flush_rc, sealpost_sent *out)
{
	sqlite3_stmt *st;
	int state = 0, rc;
	memset(out, 0, sizeof(*out));
	cl_hex(msg_id, 16, out->msg_id);
	if ((rc = cl_prep(sp, &st, "SELECT state, server_ts, error, reason FROM outbox WHERE msg_id = ?")))
		return rc;
	sqlite3_bind_blob(st, 1, msg_id, 16, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		state = sqlite3_column_int(st, 0);
		out->server_ts = (uint64_t)sqlite3_column_int64(st, 1);
		out->error = sqlite3_column_int(st, 2);
		if (sqlite3_column_text(st, 3))
			snprintf(out->reason, sizeof(out->reason), "%s", (const char *)sqlite3_column_text(st, 3));
	}
	sqlite3_finalize(st);
	if (state == 1) {
		out->sent = 1;
		out->error = 0;
		if ((rc = cl_prep(sp, &st, "SELECT COUNT(*) FROM recipients WHERE msg_id = ? AND status = ?")))
			return rc;
		sqlite3_bind_blob(st, 1, msg_id, 16, SQLITE_STATIC);
		sqlite3_bind_int(st, 2, CL_ST_FAILED);
		if (sqlite3_step(st) == SQLITE_ROW)
			out->n_refused = (size_t)sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
		return SP_OK;
	}
	if (state == 2) {
		out->failed = 1;
		if (out->error >= 0)
			out->error = SP_EPERM;
		return cl_fail(sp, out->error, SEALPOST_ERR_SERVER, "message %s failed: %s", out->msg_id,
			       out->reason[0] ? out->reason : sp_strerror(out->error));
	}
	out->error = 0;
	/* Still queued: offline (or the server asked us to retry later) is not a failure. */
	if (flush_rc && sp->errclass != SEALPOST_ERR_NET && flush_rc != SP_EUNAVAIL && flush_rc != SP_ERATELIMIT &&
	    flush_rc != SP_EFULL)
		return flush_rc;
	return SP_OK;
}

/* The outbox, for a send the caller waits on: a connection that went away under it (a
 * drained connsrv, a dead one) is replaced at once for one more round, so a DRAIN does not
 * leave the message queued. */
static int
flush_now(sealpost *sp, sealpost_progress_cb cb, void *arg)
{
	bool had = sp->conn != NULL;
	uint64_t connects = sp->connects;
	int rc = cl_outbox_flush(sp, cb, arg);
	/* Only a connection lost on the way: a cluster out of reach is not tried twice. */
	if (rc && sp->errclass == SEALPOST_ERR_NET && (had || sp->connects != connects))
		rc = cl_outbox_flush(sp, cb, arg);
	return rc;
}

int
sealpost_send_text(sealpost *sp, const char *to, const char *text, sealpost_sent *out)
{
	uint8_t msg_id[16];
	int rc;
	memset(out, 0, sizeof(*out));
	if ((rc = cl_need_account(sp)) || (rc = cl_outbox_add_text(sp, to, text, msg_id)))
		return rc;
	return result_of(sp, msg_id, flush_now(sp, NULL, NULL), out);
}

static const char *
mime_of(const char *name)
{
	static const struct {
		const char *ext, *mime;
	} t[] = {{".txt", "text/plain"}, {".jpg", "image/jpeg"}, {".jpeg", "image/jpeg"}, {".png", "image/png"},
		 {".gif", "image/gif"},  {".pdf", "application/pdf"}, {".mp4", "video/mp4"}, {".mp3", "audio/mpeg"}};
	const char *dot = strrchr(name, '.');
	for (size_t i = 0; dot && i < sizeof(t) / sizeof(t[0]); i++)
		if (strcasecmp(dot, t[i].ext) == 0)
			return t[i].mime;
	return "application/octet-stream";
}

int
sealpost_send_file(sealpost *sp, const char *to, const char *path, sealpost_progress_cb cb, void *arg,
		   sealpost_sent *out)
{
	int rc;
	memset(out, 0, sizeof(*out));
	if ((rc = cl_need_account(sp)))
		return rc;
	cl_env e = {.kind = CL_K_MEDIA};
	char conv[48], enc[4096], hex[33];
	/* Check the address before the (possibly long) encryption. */
	if ((rc = address(sp, to, conv, sizeof(conv), &e)))
		return rc;
	randombytes_buf(e.media.blob_id, 16);
	cl_hex(e.media.blob_id, 16, hex);
	snprintf(enc, sizeof(enc), "%s/media/out-%s.enc", sp->cfg.home, hex);
	if ((rc = cl_media_encrypt_file(path, enc, &e.media)))
		return cl_fail(sp, rc, rc == SP_EIO ? SEALPOST_ERR_USAGE : SEALPOST_ERR_CRYPTO, "%s: %s", path,
			       rc == SP_EIO ? strerror(errno) : sp_strerror(rc));
	const char *base = strrchr(path, '/');
	snprintf(e.media.name, sizeof(e.media.name), "%s", base ? base + 1 : path);
	snprintf(e.media.mime, sizeof(e.media.mime), "%s", mime_of(e.media.name));
	uint8_t msg_id[16];
	e.group = 0;
	e.to = 0;
	if ((rc = queue_env(sp, to, &e, enc, msg_id))) {
		unlink(enc);
		return rc;
	}
	return result_of(sp, msg_id, flush_now(sp, cb, arg), out);
}
