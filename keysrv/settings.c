/* Privacy settings and contact sets (see settings.h). */
#include <string.h>

#include "keysrv/settings.h"
#include "sp_bytes.h"
#include "sp_error.h"
#include "sp_log.h"

#define SETTINGS_VERSION 1
#define SETTINGS_LEN 8 /* version, last_seen, online, group_add, ncontacts (be32) */

static sp_metric *m_add_refused, *m_contacts_full;

void
keys_settings_init(void)
{
	m_add_refused = sp_metric_counter("keysrv_group_add_refused_total",
	    "group adds refused by the target's group_add setting");
	m_contacts_full = sp_metric_counter("keysrv_contacts_full_total",
	    "CONTACTS_EDIT refused: the contact set would exceed its bound");
}

static bool
allows(uint8_t setting, bool is_contact)
{
	return setting == KEYS_PRIV_EVERYONE || (setting == KEYS_PRIV_CONTACTS && is_contact);
}

unsigned
keys_settings_rule(const keys_privacy *target, bool viewer_in_t, const keys_privacy *viewer,
    bool t_in_viewer)
{
	unsigned rule = 0;
	if (allows(target->online, viewer_in_t) && allows(viewer->online, t_in_viewer))
		rule |= KEYS_RULE_ONLINE;
	unsigned ls = KEYS_LS_HIDDEN;
	if (allows(target->last_seen, viewer_in_t))
		ls = allows(viewer->last_seen, t_in_viewer) ? KEYS_LS_EXACT : KEYS_LS_COARSE;
	return rule | ls << KEYS_RULE_LS_SHIFT;
}

int
keys_settings_get(keys_store *s, MDB_txn *txn, uint64_t user, keys_privacy *p)
{
	uint8_t key[8], v[SETTINGS_LEN];
	size_t len;
	memset(p, 0, sizeof(*p));
	sp_be64_put(key, user);
	int rc = keys_store_get(s, txn, KDB_SETTINGS, key, sizeof(key), v, sizeof(v), &len);
	if (rc == SP_ENOTFOUND)
		return SP_OK;
	if (rc)
		return rc;
	if (len != SETTINGS_LEN || v[0] != SETTINGS_VERSION || v[1] > KEYS_PRIV_NOBODY ||
	    v[2] > KEYS_PRIV_NOBODY || v[3] > KEYS_PRIV_CONTACTS)
		return SP_ESTORE;
	p->last_seen = v[1];
	p->online = v[2];
	p->group_add = v[3];
	p->ncontacts = sp_be32_get(v + 4);
	return SP_OK;
}

static int
settings_put(keys_store *s, MDB_txn *txn, uint64_t user, const keys_privacy *p)
{
	uint8_t key[8], v[SETTINGS_LEN] = {SETTINGS_VERSION, p->last_seen, p->online, p->group_add};
	sp_be64_put(key, user);
	sp_be32_put(v + 4, p->ncontacts);
	return keys_store_put(s, txn, KDB_SETTINGS, key, sizeof(key), v, sizeof(v), 0);
}

static void
contact_key(uint8_t key[16], uint64_t owner, uint64_t contact)
{
	sp_be64_put(key, owner);
	sp_be64_put(key + 8, contact);
}

int
keys_settings_has_contact(keys_store *s, MDB_txn *txn, uint64_t owner, uint64_t contact,
    bool *has)
{
	uint8_t key[16], v;
	size_t len;
	contact_key(key, owner, contact);
	int rc = keys_store_get(s, txn, KDB_CONTACTS, key, sizeof(key), &v, 1, &len);
	*has = rc == SP_OK;
	return rc == SP_ENOTFOUND ? SP_OK : rc;
}

int
keys_settings_may_add(keys_req *r, MDB_txn *txn, uint64_t target, uint64_t adder)
{
	keys_privacy p;
	bool has = false;
	int rc;
	if (target == adder)
		return SP_OK;
	if ((rc = keys_settings_get(r->ctx->store, txn, target, &p)))
		return rc;
	if (p.group_add == KEYS_PRIV_EVERYONE)
		return SP_OK;
	if ((rc = keys_settings_has_contact(r->ctx->store, txn, target, adder, &has)))
		return rc;
	if (has)
		return SP_OK;
	sp_metric_inc(m_add_refused);
	return keys_fail(r, SP_EPERM, "a user to add accepts group adds from contacts only");
}

static void
reply_privacy(keys_req *r, const keys_privacy *p)
{
	keys_reply_init(r, SP_T_PRIVACY);
	sp_frame_set_u64(&r->out, SP_F_PRIV_LAST_SEEN, p->last_seen);
	sp_frame_set_u64(&r->out, SP_F_PRIV_ONLINE, p->online);
	sp_frame_set_u64(&r->out, SP_F_PRIV_GROUP_ADD, p->group_add);
	sp_frame_set_u64(&r->out, SP_F_COUNT, p->ncontacts);
}

/* Reads an optional setting field bounded by max into *out; *set tells whether present. */
static int
read_setting(keys_req *r, sp_field f, uint8_t max, uint8_t *out, bool *set)
{
	if (!sp_frame_has(r->in, f))
		return SP_OK;
	uint64_t v = sp_frame_u64(r->in, f);
	if (v > max)
		return keys_fail(r, SP_EINVAL, "a privacy setting is 0 everyone, 1 contacts or 2 nobody "
					       "(group_add: 0 or 1)");
	*out = (uint8_t)v;
	*set = true;
	return SP_OK;
}

/* Writes the caller's settings when they changed (else only ends the transaction), then
 * answers them. */
static int
finish(keys_req *r, MDB_txn *txn, const keys_privacy *p, bool changed)
{
	int rc;
	if (!changed) {
		keys_store_abort(txn);
	} else {
		if ((rc = settings_put(r->ctx->store, txn, r->user, p))) {
			keys_store_abort(txn);
			return rc;
		}
		if ((rc = keys_store_commit(txn)))
			return rc;
	}
	reply_privacy(r, p);
	return SP_OK;
}

int
keys_settings_privacy(keys_req *r)
{
	keys_store *s = r->ctx->store;
	keys_privacy p;
	MDB_txn *txn;
	bool changed = false;
	int rc;
	uint8_t ls = 0, on = 0, ga = 0;
	bool set_ls = false, set_on = false, set_ga = false;

	if ((rc = read_setting(r, SP_F_PRIV_LAST_SEEN, KEYS_PRIV_NOBODY, &ls, &set_ls)) ||
	    (rc = read_setting(r, SP_F_PRIV_ONLINE, KEYS_PRIV_NOBODY, &on, &set_on)) ||
	    (rc = read_setting(r, SP_F_PRIV_GROUP_ADD, KEYS_PRIV_CONTACTS, &ga, &set_ga)))
		return rc;
	bool write = set_ls || set_on || set_ga;
	if ((rc = keys_store_begin(s, write, &txn)))
		return rc;
	if ((rc = keys_settings_get(s, txn, r->user, &p)))
		goto fail;
	if (set_ls && p.last_seen != ls)
		p.last_seen = ls, changed = true;
	if (set_on && p.online != on)
		p.online = on, changed = true;
	if (set_ga && p.group_add != ga)
		p.group_add = ga, changed = true;
	return finish(r, txn, &p, changed);
fail:
	keys_store_abort(txn);
	return rc;
}

int
keys_settings_contacts(keys_req *r)
{
	keys_store *s = r->ctx->store;
	const sp_val *add = sp_frame_get(r->in, SP_F_CONTACTS_ADD);
	const sp_val *del = sp_frame_get(r->in, SP_F_CONTACTS_DEL);
	keys_privacy p;
	MDB_txn *txn;
	bool changed = false;
	uint8_t key[16], one = 1, v;
	size_t len;
	int rc;

	if ((rc = keys_store_begin(s, true, &txn)))
		return rc;
	if ((rc = keys_settings_get(s, txn, r->user, &p)))
		goto fail;
	for (uint32_t i = 0; add && i < add->us.n; i++) {
		uint64_t c = add->us.v[i];
		if (c == 0 || c == r->user)
			continue;
		contact_key(key, r->user, c);
		rc = keys_store_get(s, txn, KDB_CONTACTS, key, sizeof(key), &v, 1, &len);
		if (rc == SP_OK)
			continue;
		if (rc != SP_ENOTFOUND)
			goto fail;
		if (p.ncontacts >= KEYS_CONTACTS_MAX) {
			sp_metric_inc(m_contacts_full);
			rc = keys_fail(r, SP_ELIMIT, "at most 5000 contacts are kept");
			goto fail;
		}
		if ((rc = keys_store_put(s, txn, KDB_CONTACTS, key, sizeof(key), &one, 1, 0)))
			goto fail;
		p.ncontacts++;
		changed = true;
	}
	for (uint32_t i = 0; del && i < del->us.n; i++) {
		contact_key(key, r->user, del->us.v[i]);
		rc = keys_store_del(s, txn, KDB_CONTACTS, key, sizeof(key));
		if (rc == SP_ENOTFOUND)
			continue;
		if (rc)
			goto fail;
		SP_ASSERT(p.ncontacts > 0);
		p.ncontacts--;
		changed = true;
	}
	return finish(r, txn, &p, changed);
fail:
	keys_store_abort(txn);
	return rc;
}

int
keys_settings_rules(keys_req *r)
{
	keys_store *s = r->ctx->store;
	const sp_val *users = sp_frame_get(r->in, SP_F_PRES_USERS);
	uint32_t n = users ? users->us.n : 0;
	uint64_t *rules = keys_arena_alloc(&r->arena, sizeof(uint64_t) * (n ? n : 1));
	keys_privacy viewer, target;
	MDB_txn *txn;
	int rc;

	if (!rules)
		return SP_ENOMEM;
	if ((rc = keys_store_begin(s, false, &txn)))
		return rc;
	if ((rc = keys_settings_get(s, txn, r->user, &viewer)))
		goto out;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t t = users->us.v[i];
		bool v_in_t = false, t_in_v = false;
		if (t == r->user) {
			rules[i] = KEYS_RULE_ONLINE | KEYS_LS_EXACT << KEYS_RULE_LS_SHIFT;
			continue;
		}
		if ((rc = keys_settings_get(s, txn, t, &target)) ||
		    (rc = keys_settings_has_contact(s, txn, t, r->user, &v_in_t)) ||
		    (rc = keys_settings_has_contact(s, txn, r->user, t, &t_in_v)))
			goto out;
		rules[i] = keys_settings_rule(&target, v_in_t, &viewer, t_in_v);
	}
	keys_reply_init(r, SP_T_PRESENCE_RULES_R);
	sp_frame_set_u64s(&r->out, SP_F_PRES_RULES, rules, n);
out:
	keys_store_abort(txn);
	return rc;
}
