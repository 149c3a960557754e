/*
 * Groups: membership lives on keysrv (GROUP_*); this device keeps a copy (name, epoch,
 * members) to name groups locally and to notice removals (of a member, or of a device
 * that holds our key), after which our Sender Key is rotated (groups.sk_epoch = -2) so a
 * removed member or device cannot read what follows.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cl_internal.h"
#include "sp_error.h"

void
cl_group_info_fini(cl_group_info *gi)
{
	free(gi->users);
	free(gi->devices);
	free(gi->owners);
	memset(gi, 0, sizeof(*gi));
}

static int
push(uint64_t **v, size_t *n, size_t *cap, uint64_t x)
{
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 16;
		uint64_t *nv = realloc(*v, nc * sizeof(uint64_t));
		if (!nv)
			return SP_ENOMEM;
		*v = nv;
		*cap = nc;
	}
	(*v)[(*n)++] = x;
	return SP_OK;
}

static int
cmp_u64(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
	return a < b ? -1 : a > b;
}

/* Has a device that holds our key (sk_sent) left the group's device list (a member's
 * device removed, or the member gone)? */
static int
key_holder_gone(sealpost *sp, const cl_group_info *gi, bool *gone)
{
	uint64_t *sorted = malloc((gi->ndevices ? gi->ndevices : 1) * sizeof(uint64_t));
	sqlite3_stmt *st;
	int rc;
	if (!sorted)
		return cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
	if (gi->ndevices)
		memcpy(sorted, gi->devices, gi->ndevices * sizeof(uint64_t));
	qsort(sorted, gi->ndevices, sizeof(uint64_t), cmp_u64);
	if ((rc = cl_prep(sp, &st, "SELECT device FROM sk_sent WHERE gid = ?"))) {
		free(sorted);
		return rc;
	}
	sqlite3_bind_int64(st, 1, (sqlite3_int64)gi->gid);
	while (!*gone && sqlite3_step(st) == SQLITE_ROW) {
		uint64_t d = (uint64_t)sqlite3_column_int64(st, 0);
		*gone = !bsearch(&d, sorted, gi->ndevices, sizeof(uint64_t), cmp_u64);
	}
	sqlite3_finalize(st);
	free(sorted);
	return SP_OK;
}

/* Replaces the local copy; a member that is gone, or a device holding our key that is no
 * longer in the group's device list, makes our Sender Key rotate. */
static int
store_group(sealpost *sp, const cl_group_info *gi)
{
	sqlite3_stmt *old = NULL, *up = NULL, *ins = NULL;
	bool removed = false;
	int rc;
	if ((rc = cl_begin(sp)) || (rc = cl_prep(sp, &old, "SELECT user FROM group_members WHERE gid = ?")))
		goto out;
	sqlite3_bind_int64(old, 1, (sqlite3_int64)gi->gid);
	while (sqlite3_step(old) == SQLITE_ROW) {
		uint64_t u = (uint64_t)sqlite3_column_int64(old, 0);
		bool found = false;
		for (size_t i = 0; i < gi->nusers && !found; i++)
			found = gi->users[i] == u;
		removed |= !found;
	}
	if (!removed && (rc = key_holder_gone(sp, gi, &removed)))
		goto out;
	if ((rc = cl_prep(sp, &up, "INSERT INTO groups(gid, name, epoch) VALUES(?1, ?2, ?3) ON CONFLICT(gid) DO UPDATE"
				   " SET name = ?2, epoch = ?3, active = 1,"
				   " sk_epoch = CASE WHEN ?4 AND sk_epoch >= 0 THEN -2 ELSE sk_epoch END")) ||
	    (rc = cl_prep(sp, &ins, "INSERT OR IGNORE INTO group_members(gid, user) VALUES(?, ?)")))
		goto out;
	sqlite3_bind_int64(up, 1, (sqlite3_int64)gi->gid);
	sqlite3_bind_text(up, 2, gi->name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(up, 3, (sqlite3_int64)gi->epoch);
	sqlite3_bind_int(up, 4, removed);
	if (sqlite3_step(up) != SQLITE_DONE) {
		rc = cl_fail(sp, SP_ESTORE, SEALPOST_ERR_OTHER, "store: %s", sqlite3_errmsg(sp->db));
		goto out;
	}
	char sql[96];
	/* Ids are stored through sqlite3_bind_int64: compare with the same signed value. */
	snprintf(sql, sizeof(sql), "DELETE FROM group_members WHERE gid = %" PRId64, (int64_t)gi->gid);
	if ((rc = cl_exec(sp, sql)))
		goto out;
	for (size_t i = 0; i < gi->nusers; i++) {
		sqlite3_reset(ins);
		sqlite3_bind_int64(ins, 1, (sqlite3_int64)gi->gid);
		sqlite3_bind_int64(ins, 2, (sqlite3_int64)gi->users[i]);
		sqlite3_step(ins);
	}
	rc = cl_commit(sp);
out:
	sqlite3_finalize(old);
	sqlite3_finalize(up);
	sqlite3_finalize(ins);
	if (rc)
		cl_rollback(sp);
	return rc;
}

int
cl_group_fetch(sealpost *sp, uint64_t gid, cl_group_info *gi)
{
	size_t ucap = 0, dcap = 0, ocap = 0, no = 0;
	uint64_t after = 0;
	bool more = true;
	int rc = SP_OK;
	memset(gi, 0, sizeof(*gi));
	gi->gid = gid;
	for (int page = 0; more && page < 8 && rc == SP_OK; page++) {
		sp_frame q, r;
		sp_frame_init(&q, SP_T_GROUP_INFO, 0, false);
		sp_frame_set_u64(&q, SP_F_GROUP, gid);
		if (after)
			sp_frame_set_u64(&q, SP_F_AFTER_USER, after);
		if ((rc = cl_call_want(sp, &q, SP_T_GROUP_INFO_R, &r)))
			break;
		sp_frame_str(&r, SP_F_GROUP_NAME, gi->name, sizeof(gi->name));
		gi->epoch = sp_frame_u64(&r, SP_F_EPOCH);
		more = sp_frame_u64(&r, SP_F_MORE) != 0;
		const sp_val *m = sp_frame_get(&r, SP_F_GROUP_MEMBERS);
		for (uint32_t i = 0; m && i < m->rs.n && rc == SP_OK; i++) {
			uint64_t u = sp_frame_u64(&m->rs.v[i], SP_F_USER);
			after = u;
			rc = push(&gi->users, &gi->nusers, &ucap, u);
			const sp_val *d = sp_frame_get(&m->rs.v[i], SP_F_DEVICES);
			for (uint32_t k = 0; d && k < d->us.n && rc == SP_OK; k++) {
				if (d->us.v[k] == sp->device)
					continue;
				if ((rc = push(&gi->devices, &gi->ndevices, &dcap, d->us.v[k])) == SP_OK)
					rc = push(&gi->owners, &no, &ocap, u);
			}
		}
		sp_frame_fini(&r);
		if (rc == SP_ENOMEM)
			cl_fail(sp, rc, SEALPOST_ERR_OTHER, "out of memory");
	}
	if (rc == SP_OK)
		rc = store_group(sp, gi);
	if (rc)
		cl_group_info_fini(gi);
	return rc;
}

int
cl_group_seen(sealpost *sp, uint64_t gid, const char *name)
{
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "INSERT INTO groups(gid, name) VALUES(?1, ?2) ON CONFLICT(gid) DO UPDATE"
				  " SET name = COALESCE(?2, name)");
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)gid);
	if (name && *name)
		sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st) == SQLITE_DONE ? SP_OK : SP_ESTORE;
	sqlite3_finalize(st);
	return rc;
}

/* One GROUP_* change; on success the local copy is re-read. */
static int
group_change(sealpost *sp, unsigned type, uint64_t gid, const uint64_t *users, size_t n)
{
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_online(sp, cl_attempts(sp))))
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, type, 0, false);
	sp_frame_set_u64(&q, SP_F_GROUP, gid);
	if (users)
		sp_frame_set_u64s(&q, SP_F_USERS, users, (uint32_t)n);
	if ((rc = cl_call_want(sp, &q, SP_T_GROUP_R, &r)))
		return rc;
	sp_frame_fini(&r);
	if (type == SP_T_GROUP_LEAVE) {
		char sql[96];
		snprintf(sql, sizeof(sql), "UPDATE groups SET active = 0 WHERE gid = %" PRId64, (int64_t)gid);
		return cl_exec(sp, sql);
	}
	cl_group_info gi;
	if ((rc = cl_group_fetch(sp, gid, &gi)))
		return rc;
	cl_group_info_fini(&gi);
	return SP_OK;
}

int
sealpost_group_create(sealpost *sp, const char *name, const char *const *phones, size_t n, uint64_t *id)
{
	int rc;
	if ((rc = cl_need_account(sp)))
		return rc;
	if (!name[0] || strlen(name) > 128 || name[0] == '@' || (name[0] >= '0' && name[0] <= '9'))
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "a group name has 1-128 bytes and starts with a letter");
	if (n > 1024)
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "at most 1024 members");
	uint64_t *users = calloc(n ? n : 1, sizeof(uint64_t));
	if (!users)
		return cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
	for (size_t i = 0; i < n && rc == SP_OK; i++)
		rc = cl_resolve_user(sp, phones[i], &users[i]);
	if (rc == SP_OK)
		rc = cl_online(sp, cl_attempts(sp));
	sp_frame q, r;
	if (rc == SP_OK) {
		sp_frame_init(&q, SP_T_GROUP_CREATE, 0, false);
		sp_frame_set_str(&q, SP_F_GROUP_NAME, name);
		sp_frame_set_u64s(&q, SP_F_USERS, users, (uint32_t)n);
		rc = cl_call_want(sp, &q, SP_T_GROUP_R, &r);
	}
	free(users);
	if (rc)
		return rc;
	*id = sp_frame_u64(&r, SP_F_GROUP);
	sp_frame_fini(&r);
	cl_group_info gi;
	if ((rc = cl_group_fetch(sp, *id, &gi)))
		return rc;
	cl_group_info_fini(&gi);
	return SP_OK;
}

static int
member_change(sealpost *sp, unsigned type, const char *group, const char *phone)
{
	uint64_t gid, user;
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_resolve_group(sp, group, &gid)) ||
	    (rc = cl_resolve_user(sp, phone, &user)))
		return rc;
	return group_change(sp, type, gid, &user, 1);
}

int
sealpost_group_add(sealpost *sp, const char *group, const char *phone)
{
	return member_change(sp, SP_T_GROUP_ADD, group, phone);
}

int
sealpost_group_remove(sealpost *sp, const char *group, const char *phone)
{
	return member_change(sp, SP_T_GROUP_REMOVE, group, phone);
}

int
sealpost_group_leave(sealpost *sp, const char *group)
{
	uint64_t gid;
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_resolve_group(sp, group, &gid)))
		return rc;
	return group_change(sp, SP_T_GROUP_LEAVE, gid, NULL, 0);
}

int
sealpost_group_list(sealpost *sp, sealpost_group_cb cb, void *arg)
{
	sqlite3_stmt *st, *mem;
	int rc;
	if ((rc = cl_prep(sp, &st, "SELECT gid, name, epoch FROM groups WHERE active = 1 ORDER BY gid")))
		return rc;
	if ((rc = cl_prep(sp, &mem, "SELECT user FROM group_members WHERE gid = ? ORDER BY user"))) {
		sqlite3_finalize(st);
		return rc;
	}
	while (rc == SP_OK && sqlite3_step(st) == SQLITE_ROW) {
		uint64_t *users = NULL;
		size_t n = 0, cap = 0;
		sealpost_group g = {(uint64_t)sqlite3_column_int64(st, 0), (uint64_t)sqlite3_column_int64(st, 2),
				    (const char *)sqlite3_column_text(st, 1), 0, NULL};
		sqlite3_reset(mem);
		sqlite3_bind_int64(mem, 1, (sqlite3_int64)g.id);
		while (rc == SP_OK && sqlite3_step(mem) == SQLITE_ROW)
			rc = push(&users, &n, &cap, (uint64_t)sqlite3_column_int64(mem, 0));
		g.members = users;
		g.n_members = n;
		if (!g.name)
			g.name = "";
		if (rc == SP_OK && cb)
			cb(&g, arg);
		free(users);
	}
	sqlite3_finalize(st);
	sqlite3_finalize(mem);
	return rc;
}
