#include <stdlib.h>
#include <string.h>

#include "keysrv/groups.h"
#include "keysrv/replies.h"
#include "keysrv/settings.h"
#include "sp_bytes.h"
#include "sp_error.h"

static void
member_key(uint8_t key[16], uint64_t group, uint64_t user)
{
	sp_be64_put(key, group);
	sp_be64_put(key + 8, user);
}

static int
member_get(keys_store *s, MDB_txn *txn, uint64_t group, uint64_t user, uint8_t *flags)
{
	uint8_t key[16];
	size_t len;
	member_key(key, group, user);
	int rc = keys_store_get(s, txn, KDB_MEMBERS, key, sizeof(key), flags, 1, &len);
	return rc == SP_OK && len != 1 ? SP_ESTORE : rc;
}

static int
member_put(keys_store *s, MDB_txn *txn, uint64_t group, uint64_t user, uint8_t flags)
{
	uint8_t key[16];
	member_key(key, group, user);
	return keys_store_put(s, txn, KDB_MEMBERS, key, sizeof(key), &flags, 1, 0);
}

static int
member_del(keys_store *s, MDB_txn *txn, uint64_t group, uint64_t user)
{
	uint8_t key[16];
	member_key(key, group, user);
	return keys_store_del(s, txn, KDB_MEMBERS, key, sizeof(key));
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The USERS field, sorted and without duplicates, in the arena. */
static int
read_users(keys_req *r, uint64_t **out, uint32_t *n)
{
	const sp_val *v = sp_frame_get(r->in, SP_F_USERS);
	uint32_t cnt = v ? v->us.n : 0, k = 0;
	uint64_t *a = keys_arena_alloc(&r->arena, sizeof(uint64_t) * (cnt ? cnt : 1));
	if (!a)
		return SP_ENOMEM;
	if (cnt)
		memcpy(a, v->us.v, sizeof(uint64_t) * cnt);
	qsort(a, cnt, sizeof(uint64_t), cmp_u64);
	for (uint32_t i = 0; i < cnt; i++)
		if (k == 0 || a[k - 1] != a[i])
			a[k++] = a[i];
	*out = a;
	*n = k;
	return SP_OK;
}

/* Loads the group and checks that the caller is a member (and an admin if asked). */
static int
load_group(keys_req *r, MDB_txn *txn, keys_group *g, bool need_admin, uint8_t *caller_flags)
{
	keys_store *s = r->ctx->store;
	uint8_t flags;
	int rc = keys_group_get(s, txn, sp_frame_u64(r->in, SP_F_GROUP), g);
	if (rc == SP_ENOTFOUND)
		return keys_fail(r, rc, "no such group");
	if (rc)
		return rc;
	rc = member_get(s, txn, g->id, r->user, &flags);
	if (rc == SP_ENOTFOUND)
		return keys_fail(r, SP_EPERM, "not a member of this group");
	if (rc)
		return rc;
	if (need_admin && !(flags & KEYS_MEMBER_ADMIN))
		return keys_fail(r, SP_EPERM, "only group admins may do that");
	if (caller_flags)
		*caller_flags = flags;
	return SP_OK;
}

/* Removes `user` if a member; *changed is set when it was. */
static int
remove_member(keys_req *r, MDB_txn *txn, keys_group *g, uint64_t user, bool *changed)
{
	keys_store *s = r->ctx->store;
	uint8_t flags;
	int rc = member_get(s, txn, g->id, user, &flags);
	if (rc == SP_ENOTFOUND)
		return SP_OK;
	if (rc || (rc = member_del(s, txn, g->id, user)))
		return rc;
	g->nmembers--;
	if (flags & KEYS_MEMBER_ADMIN)
		g->nadmins--;
	*changed = true;
	return SP_OK;
}

/* Bumps the epoch and writes the group, after an admin handover or deletion if the
 * removals left it without admins or members; commits and replies GROUP_R. */
static int
finish(keys_req *r, MDB_txn *txn, keys_group *g, bool changed)
{
	keys_store *s = r->ctx->store;
	int rc = SP_OK;

	if (!changed) {
		keys_store_abort(txn);
		goto reply;
	}
	g->epoch++;
	if (g->nmembers == 0) {
		uint8_t key[8];
		sp_be64_put(key, g->id);
		rc = keys_store_del(s, txn, KDB_GROUPS, key, 8);
	} else {
		if (g->nadmins == 0) {
			uint8_t key[16];
			MDB_cursor *c;
			MDB_val k = {sizeof(key), key}, v;
			member_key(key, g->id, 0);
			if ((rc = mdb_cursor_open(txn, keys_store_dbi(s, KDB_MEMBERS), &c)))
				goto fail_mdb;
			rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
			uint64_t heir = rc == 0 && k.mv_size == 16 ? sp_be64_get((uint8_t *)k.mv_data + 8) : 0;
			bool same = rc == 0 && k.mv_size == 16 && memcmp(k.mv_data, key, 8) == 0;
			mdb_cursor_close(c);
			if (!same) {
				rc = SP_ESTORE; /* nmembers > 0 but no member rows */
				goto fail;
			}
			if ((rc = member_put(s, txn, g->id, heir, KEYS_MEMBER_ADMIN)))
				goto fail;
			g->nadmins = 1;
		}
		rc = keys_group_put(s, txn, g);
	}
	if (rc)
		goto fail;
	/* Built before the commit: a deduplicated write (a creation) stores it with it. */
	keys_reply_init(r, SP_T_GROUP_R);
	sp_frame_set_u64(&r->out, SP_F_GROUP, g->id);
	sp_frame_set_u64(&r->out, SP_F_EPOCH, g->epoch);
	if ((rc = keys_replies_store(r, txn)))
		goto fail;
	return keys_store_commit(txn);
reply:
	keys_reply_init(r, SP_T_GROUP_R);
	sp_frame_set_u64(&r->out, SP_F_GROUP, g->id);
	sp_frame_set_u64(&r->out, SP_F_EPOCH, g->epoch);
	return SP_OK;
fail_mdb:
	rc = keys_store_err(rc);
fail:
	keys_store_abort(txn);
	return rc;
}

/* Adds the users not yet members; all must exist, each must accept adds from the caller
 * (its group_add setting), and the group must stay within KEYS_GROUP_MAX. One refusal
 * refuses the whole request: nothing is added. */
static int
add_members(keys_req *r, MDB_txn *txn, keys_group *g, const uint64_t *users, uint32_t n,
    bool *changed)
{
	keys_store *s = r->ctx->store;
	uint32_t fresh = 0;
	int rc;

	for (uint32_t i = 0; i < n; i++) {
		uint8_t flags;
		keys_user u;
		rc = member_get(s, txn, g->id, users[i], &flags);
		if (rc == SP_OK)
			continue;
		if (rc != SP_ENOTFOUND)
			return rc;
		rc = keys_user_get(s, txn, users[i], &u);
		if (rc == SP_ENOTFOUND)
			return keys_fail(r, rc, "no such user");
		if (rc || (rc = keys_settings_may_add(r, txn, users[i], r->user)))
			return rc;
		if (g->nmembers + fresh + 1 > KEYS_GROUP_MAX)
			return keys_fail(r, SP_ELIMIT, "a group has at most 1024 members");
		if ((rc = member_put(s, txn, g->id, users[i], 0)))
			return rc;
		fresh++;
	}
	g->nmembers += fresh;
	if (fresh)
		*changed = true;
	return SP_OK;
}

int
keys_groups_create(keys_req *r)
{
	keys_store *s = r->ctx->store;
	keys_group g;
	uint64_t *users;
	uint32_t n;
	MDB_txn *txn;
	bool changed = true;
	int rc;

	memset(&g, 0, sizeof(g));
	if (sp_frame_str(r->in, SP_F_GROUP_NAME, g.name, sizeof(g.name)) != SP_OK)
		return keys_fail(r, SP_EINVAL, "group name too long");
	if ((rc = read_users(r, &users, &n)))
		return rc;
	if ((rc = keys_store_begin(s, true, &txn)))
		return rc;
	/* A creation retried by connsrv (after a failover or a lost answer) that committed
	 * gets the first group, not a second one. */
	rc = keys_replies_replay(r, txn, SP_T_GROUP_R);
	if (rc == SP_OK) {
		keys_store_abort(txn);
		return SP_OK;
	}
	if (rc != SP_ENOTFOUND ||
	    (rc = keys_store_new_id(s, txn, KDB_GROUPS, &g.id)))
		goto fail;
	g.created_ms = r->ctx->now_ms();
	g.nmembers = 1;
	g.nadmins = 1;
	if ((rc = member_put(s, txn, g.id, r->user, KEYS_MEMBER_ADMIN)) ||
	    (rc = add_members(r, txn, &g, users, n, &changed)))
		goto fail;
	return finish(r, txn, &g, true);
fail:
	keys_store_abort(txn);
	return rc;
}

int
keys_groups_add(keys_req *r)
{
	keys_group g;
	uint64_t *users;
	uint32_t n;
	MDB_txn *txn;
	bool changed = false;
	int rc;

	if ((rc = read_users(r, &users, &n)))
		return rc;
	if ((rc = keys_store_begin(r->ctx->store, true, &txn)))
		return rc;
	if ((rc = load_group(r, txn, &g, true, NULL)) ||
	    (rc = add_members(r, txn, &g, users, n, &changed))) {
		keys_store_abort(txn);
		return rc;
	}
	return finish(r, txn, &g, changed);
}

int
keys_groups_remove(keys_req *r)
{
	keys_group g;
	uint64_t *users;
	uint32_t n;
	MDB_txn *txn;
	bool changed = false;
	int rc;

	if ((rc = read_users(r, &users, &n)))
		return rc;
	if ((rc = keys_store_begin(r->ctx->store, true, &txn)))
		return rc;
	if ((rc = load_group(r, txn, &g, true, NULL)))
		goto fail;
	for (uint32_t i = 0; i < n; i++)
		if ((rc = remove_member(r, txn, &g, users[i], &changed)))
			goto fail;
	return finish(r, txn, &g, changed);
fail:
	keys_store_abort(txn);
	return rc;
}

int
keys_groups_leave(keys_req *r)
{
	keys_group g;
	MDB_txn *txn;
	bool changed = false;
	int rc;

	if ((rc = keys_store_begin(r->ctx->store, true, &txn)))
		return rc;
	if ((rc = load_group(r, txn, &g, false, NULL)) ||
	    (rc = remove_member(r, txn, &g, r->user, &changed))) {
		keys_store_abort(txn);
		return rc;
	}
	return finish(r, txn, &g, changed);
}

int
keys_groups_admin(keys_req *r)
{
	keys_store *s = r->ctx->store;
	bool admin = sp_frame_u64(r->in, SP_F_ADMIN) != 0;
	keys_group g;
	uint64_t *users;
	uint32_t n;
	MDB_txn *txn;
	bool changed = false;
	int rc;

	if ((rc = read_users(r, &users, &n)))
		return rc;
	if ((rc = keys_store_begin(s, true, &txn)))
		return rc;
	if ((rc = load_group(r, txn, &g, true, NULL)))
		goto fail;
	for (uint32_t i = 0; i < n; i++) {
		uint8_t flags;
		rc = member_get(s, txn, g.id, users[i], &flags);
		if (rc == SP_ENOTFOUND)
			rc = keys_fail(r, rc, "not a member of this group");
		if (rc)
			goto fail;
		if (((flags & KEYS_MEMBER_ADMIN) != 0) == admin)
			continue;
		if (!admin && g.nadmins == 1) {
			rc = keys_fail(r, SP_ESTATE, "a group keeps at least one admin");
			goto fail;
		}
		flags = admin ? (uint8_t)(flags | KEYS_MEMBER_ADMIN) : (uint8_t)(flags & ~KEYS_MEMBER_ADMIN);
		if ((rc = member_put(s, txn, g.id, users[i], flags)))
			goto fail;
		g.nadmins = admin ? g.nadmins + 1 : g.nadmins - 1;
		changed = true;
	}
	return finish(r, txn, &g, changed);
fail:
	keys_store_abort(txn);
	return rc;
}

/* Copies the live device ids of `user` to `out` (room for KEYS_MAX_DEVICES). A member
 * whose account record is missing has no devices. */
static int
user_devices(keys_store *s, MDB_txn *txn, uint64_t user, uint64_t *out, uint32_t *n)
{
	keys_user u;
	int rc = keys_user_get(s, txn, user, &u);
	*n = 0;
	if (rc == SP_ENOTFOUND)
		return SP_OK;
	if (rc)
		return rc;
	memcpy(out, u.devices, sizeof(uint64_t) * u.ndevices);
	*n = u.ndevices;
	return SP_OK;
}

int
keys_groups_info(keys_req *r)
{
	keys_store *s = r->ctx->store;
	keys_group *g = keys_arena_alloc(&r->arena, sizeof(*g));
	sp_frame *recs = keys_arena_alloc(&r->arena, sizeof(sp_frame) * KEYS_GROUP_PAGE);
	uint64_t *devs = keys_arena_alloc(&r->arena, sizeof(uint64_t) * KEYS_GROUP_PAGE * KEYS_MAX_DEVICES);
	bool has_after = sp_frame_has(r->in, SP_F_AFTER_USER);
	uint64_t after = sp_frame_u64(r->in, SP_F_AFTER_USER);
	uint32_t n = 0;
	bool more = false;
	MDB_txn *txn;
	MDB_cursor *c = NULL;
	int rc;

	if (!g || !recs || !devs)
		return SP_ENOMEM;
	if ((rc = keys_store_begin(s, false, &txn)))
		return rc;
	if ((rc = load_group(r, txn, g, false, NULL)))
		goto out;
	if (has_after && after == UINT64_MAX)
		goto reply;
	uint8_t key[16];
	MDB_val k = {sizeof(key), key}, v;
	member_key(key, g->id, has_after ? after + 1 : 0);
	if ((rc = mdb_cursor_open(txn, keys_store_dbi(s, KDB_MEMBERS), &c))) {
		rc = keys_store_err(rc);
		goto out;
	}
	for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	     rc == 0 && k.mv_size == 16 && memcmp(k.mv_data, key, 8) == 0;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		if (n == KEYS_GROUP_PAGE) {
			more = true;
			break;
		}
		uint64_t user = sp_be64_get((uint8_t *)k.mv_data + 8);
		bool admin = v.mv_size == 1 && (*(uint8_t *)v.mv_data & KEYS_MEMBER_ADMIN);
		uint64_t *d = devs + (size_t)n * KEYS_MAX_DEVICES;
		uint32_t nd;
		int urc = user_devices(s, txn, user, d, &nd);
		if (urc) {
			rc = urc;
			goto out;
		}
		sp_frame_init(&recs[n], SP_T_GROUP_MEMBER, 0, false);
		sp_frame_set_u64(&recs[n], SP_F_USER, user);
		sp_frame_set_bool(&recs[n], SP_F_ADMIN, admin);
		sp_frame_set_u64s(&recs[n], SP_F_DEVICES, d, nd);
		n++;
	}
	if (rc && rc != MDB_NOTFOUND) {
		rc = keys_store_err(rc);
		goto out;
	}
reply:
	rc = SP_OK;
	keys_reply_init(r, SP_T_GROUP_INFO_R);
	sp_frame_set_u64(&r->out, SP_F_GROUP, g->id);
	sp_frame_set_str(&r->out, SP_F_GROUP_NAME, g->name);
	sp_frame_set_u64(&r->out, SP_F_EPOCH, g->epoch);
	sp_frame_set_u64(&r->out, SP_F_COUNT, g->nmembers);
	sp_frame_set_recs(&r->out, SP_F_GROUP_MEMBERS, recs, n);
	sp_frame_set_bool(&r->out, SP_F_MORE, more);
out:
	if (c)
		mdb_cursor_close(c);
	keys_store_abort(txn);
	return rc;
}

int
keys_groups_devices(keys_req *r)
{
	keys_store *s = r->ctx->store;
	uint64_t *devs = keys_arena_alloc(&r->arena, sizeof(uint64_t) * KEYS_GROUP_MAX * KEYS_MAX_DEVICES);
	uint32_t n = 0;
	keys_group g;
	MDB_txn *txn;
	MDB_cursor *c = NULL;
	int rc;

	if (!devs)
		return SP_ENOMEM;
	if ((rc = keys_store_begin(s, false, &txn)))
		return rc;
	if ((rc = load_group(r, txn, &g, false, NULL)))
		goto out;
	uint8_t key[16];
	MDB_val k = {sizeof(key), key}, v;
	member_key(key, g.id, 0);
	if ((rc = mdb_cursor_open(txn, keys_store_dbi(s, KDB_MEMBERS), &c))) {
		rc = keys_store_err(rc);
		goto out;
	}
	for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	     rc == 0 && k.mv_size == 16 && memcmp(k.mv_data, key, 8) == 0;
	     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		uint32_t nd;
		if (n + KEYS_MAX_DEVICES > KEYS_GROUP_MAX * KEYS_MAX_DEVICES) {
			rc = SP_ESTORE; /* more member rows than a group may hold */
			goto out;
		}
		int urc = user_devices(s, txn, sp_be64_get((uint8_t *)k.mv_data + 8), devs + n, &nd);
		if (urc) {
			rc = urc;
			goto out;
		}
		n += nd;
	}
	if (rc && rc != MDB_NOTFOUND) {
		rc = keys_store_err(rc);
		goto out;
	}
	rc = SP_OK;
	keys_reply_init(r, SP_T_GROUP_DEVICES_R);
	sp_frame_set_u64(&r->out, SP_F_GROUP, g.id);
	sp_frame_set_u64(&r->out, SP_F_EPOCH, g.epoch);
	sp_frame_set_u64s(&r->out, SP_F_DEVICES, devs, n);
out:
	if (c)
		mdb_cursor_close(c);
	keys_store_abort(txn);
	return rc;
}
