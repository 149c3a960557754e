#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <sodium.h>

#include "repl/ha.h"
#include "repl/ha_internal.h"
#include "sp_error.h"
#include "sp_log.h"

int64_t
repl_ha_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int
repl_ha_pos_cmp(repl_ha_pos a, repl_ha_pos b)
{
	if (a.epoch != b.epoch)
		return a.epoch < b.epoch ? -1 : 1;
	if (a.lsn != b.lsn)
		return a.lsn < b.lsn ? -1 : 1;
	return 0;
}

static bool
id_eq(const repl_ha_id *a, const repl_ha_id *b)
{
	return strcmp(a->name, b->name) == 0 && a->inc_len == b->inc_len &&
	       memcmp(a->inc, b->inc, a->inc_len) == 0;
}

bool
repl_ha_in_sync(const repl_ha_view *view, const repl_ha_id *id)
{
	if (!view->sync.present)
		return false;
	for (size_t i = 0; i < view->sync.n; i++)
		if (id_eq(&view->sync.members[i], id))
			return true;
	return false;
}

const repl_ha_id *
repl_ha_self(const repl_ha *ha)
{
	return &ha->self;
}

/* ---- candidate preference ---- */

repl_ha_choice
repl_ha_choose(const repl_ha_view *view, const repl_ha_id *me, repl_ha_pos mine,
	       int64_t deferred_ms, int64_t defer_max_ms)
{
	if (view->leader.present)
		return REPL_HA_LEADER;
	bool new_group = !view->sync.present && view->counter_mod_rev == 0;
	if (!new_group && !repl_ha_in_sync(view, me))
		return REPL_HA_INELIGIBLE;
	if (deferred_ms >= defer_max_ms)
		return REPL_HA_GO;
	for (size_t i = 0; i < view->ncopies; i++) {
		const repl_ha_copy *c = &view->copies[i];
		if (strcmp(c->id.name, me->name) == 0)
			continue;
		if (!new_group && !repl_ha_in_sync(view, &c->id))
			continue;
		if (repl_ha_pos_cmp(c->status.last, mine) > 0)
			return REPL_HA_DEFER;
	}
	return REPL_HA_GO;
}

/* ---- names, keys, JSON ---- */

static bool
valid_name(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > REPL_HA_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

/* prefix + suffix into buf (sized REPL_HA_KEY_MAX); returns the length. */
static size_t
make_key(const repl_ha *ha, const char *suffix, char *buf)
{
	int n = snprintf(buf, REPL_HA_KEY_MAX, "%s%s", ha->prefix, suffix);
	return (size_t)n;
}

static const char *const role_names[] = {"none", "primary", "replica"};

static repl_ha_role
role_parse(const char *s)
{
	for (int r = REPL_HA_NONE; r <= REPL_HA_REPLICA; r++)
		if (s && strcmp(s, role_names[r]) == 0)
			return (repl_ha_role)r;
	return REPL_HA_NONE;
}

static json_t *
inc_json(const repl_ha_id *id)
{
	char hex[REPL_HA_INC_MAX * 2 + 1];
	sodium_bin2hex(hex, sizeof(hex), id->inc, id->inc_len);
	return json_string(hex);
}

static bool
inc_parse(json_t *o, repl_ha_id *id)
{
	const char *hex = json_string_value(json_object_get(o, "inc"));
	size_t n = hex ? strlen(hex) : 0;
	if (n == 0 || n > REPL_HA_INC_MAX * 2 || n % 2)
		return false;
	return sodium_hex2bin(id->inc, sizeof(id->inc), hex, n, NULL, &id->inc_len, NULL) == 0 &&
	       id->inc_len == n / 2;
}

static bool
name_parse(const char *s, repl_ha_id *id)
{
	if (!valid_name(s))
		return false;
	snprintf(id->name, sizeof(id->name), "%s", s);
	return true;
}

/* A non-negative integer member (absent: false). */
static bool
num_parse(json_t *o, const char *name, int64_t *out)
{
	json_t *v = json_object_get(o, name);
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return false;
	*out = (int64_t)json_integer_value(v);
	return true;
}

static bool
set(json_t *o, const char *name, json_t *v)
{
	return v && json_object_set_new(o, name, v) == 0;
}

/* Serialises `o` (consumed) into a malloc'd string. */
static char *
dump(json_t *o, bool ok)
{
	char *s = ok && o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	return s;
}

static json_t *
load(const sp_etcd_kv *kv)
{
	return json_loadb((const char *)kv->value, kv->value_len, 0, NULL);
}

static char *
leader_json(const repl_ha *ha, int64_t counter)
{
	json_t *o = json_object();
	bool ok = o && set(o, "name", json_string(ha->self.name)) && set(o, "inc", inc_json(&ha->self)) &&
		  set(o, "url", json_string(ha->url)) && set(o, "counter", json_integer(counter));
	return dump(o, ok);
}

static void
leader_parse(const sp_etcd_kv *kv, repl_ha_leader *l)
{
	memset(l, 0, sizeof(*l));
	l->present = true;
	l->create_rev = kv->create_rev;
	l->mod_rev = kv->mod_rev;
	l->lease = kv->lease;
	l->epoch = kv->create_rev;
	json_t *o = load(kv);
	const char *url = json_string_value(json_object_get(o, "url"));
	if (json_is_object(o) && name_parse(json_string_value(json_object_get(o, "name")), &l->id) &&
	    inc_parse(o, &l->id) && num_parse(o, "counter", &l->counter) && url &&
	    strlen(url) <= REPL_HA_URL_MAX) {
		snprintf(l->url, sizeof(l->url), "%s", url);
		l->parsed = true;
		if (l->counter > l->epoch)
			l->epoch = l->counter;
	} else {
		sp_warn_rl("repl_ha: leader key holds a value that is not ours");
	}
	json_decref(o);
}

static char *
sync_json(int64_t epoch, const repl_ha_id *members, size_t n)
{
	json_t *o = json_object(), *arr = json_array();
	if (!o || !arr) {
		json_decref(o);
		json_decref(arr);
		return NULL;
	}
	/* set() takes the reference to arr even when it fails. */
	bool ok = set(o, "members", arr) && set(o, "epoch", json_integer(epoch));
	for (size_t i = 0; ok && i < n; i++) {
		json_t *m = json_object();
		ok = m && json_array_append_new(arr, m) == 0 &&
		     set(m, "name", json_string(members[i].name)) && set(m, "inc", inc_json(&members[i]));
	}
	return dump(o, ok);
}

static int
sync_parse(const sp_etcd_kv *kv, repl_ha_sync *s)
{
	memset(s, 0, sizeof(*s));
	json_t *o = load(kv), *arr = json_object_get(o, "members");
	int rc = SP_EPROTO;
	if (!num_parse(o, "epoch", &s->epoch) || !json_is_array(arr) ||
	    json_array_size(arr) > REPL_HA_MAX_COPIES)
		goto out;
	for (size_t i = 0; i < json_array_size(arr); i++) {
		json_t *m = json_array_get(arr, i);
		if (!name_parse(json_string_value(json_object_get(m, "name")), &s->members[i]) ||
		    !inc_parse(m, &s->members[i]))
			goto out;
		s->n++;
	}
	s->present = true;
	s->create_rev = kv->create_rev;
	s->mod_rev = kv->mod_rev;
	rc = SP_OK;
out:
	if (rc)
		memset(s, 0, sizeof(*s));
	json_decref(o);
	return rc;
}

static char *
copy_json(const repl_ha *ha, const repl_ha_status *st)
{
	json_t *o = json_object();
	bool ok = o && set(o, "inc", inc_json(&ha->self)) && set(o, "url", json_string(ha->url)) &&
		  set(o, "role", json_string(role_names[st->role])) &&
		  set(o, "epoch", json_integer(st->epoch)) &&
		  set(o, "last_epoch", json_integer(st->last.epoch)) &&
		  set(o, "last_lsn", json_integer((json_int_t)st->last.lsn)) &&
		  set(o, "flushed_lsn", json_integer((json_int_t)st->flushed_lsn));
	return dump(o, ok);
}

static bool
copy_parse(const sp_etcd_kv *kv, const char *name, repl_ha_copy *c)
{
	memset(c, 0, sizeof(*c));
	json_t *o = load(kv);
	const char *url = json_string_value(json_object_get(o, "url"));
	int64_t last_lsn, flushed;
	bool ok = json_is_object(o) && name_parse(name, &c->id) && inc_parse(o, &c->id) && url &&
		  strlen(url) <= REPL_HA_URL_MAX && num_parse(o, "epoch", &c->status.epoch) &&
		  num_parse(o, "last_epoch", &c->status.last.epoch) &&
		  num_parse(o, "last_lsn", &last_lsn) && num_parse(o, "flushed_lsn", &flushed);
	if (ok) {
		snprintf(c->url, sizeof(c->url), "%s", url);
		c->status.role = role_parse(json_string_value(json_object_get(o, "role")));
		c->status.last.lsn = (uint64_t)last_lsn;
		c->status.flushed_lsn = (uint64_t)flushed;
		c->create_rev = kv->create_rev;
		c->mod_rev = kv->mod_rev;
		c->lease = kv->lease;
	}
	json_decref(o);
	return ok;
}

/* ---- lifetime ---- */

int
repl_ha_new(const repl_ha_cfg *cfg, repl_ha **out)
{
	if (!cfg || !valid_name(cfg->cluster) || !valid_name(cfg->group) || !valid_name(cfg->name) ||
	    !cfg->inc || cfg->inc_len == 0 || cfg->inc_len > REPL_HA_INC_MAX || !cfg->url ||
	    strlen(cfg->url) > REPL_HA_URL_MAX || cfg->lease_ttl_s < 0 || cfg->keepalive_ms < 0 ||
	    cfg->margin_ms < 0 || cfg->defer_max_ms < 0)
		return SP_EINVAL;
	repl_ha *ha = calloc(1, sizeof(*ha));
	if (!ha)
		return SP_ENOMEM;
	ha->ttl_s = cfg->lease_ttl_s ? cfg->lease_ttl_s : 5;
	/* TTL/5: a primary rides out an etcd outage of TTL - margin - interval (3 s of the
	 * default 5 s lease), e.g. a single etcd's restart. */
	ha->keepalive_ms = cfg->keepalive_ms ? cfg->keepalive_ms : ha->ttl_s * 1000 / 5;
	ha->margin_ms = cfg->margin_ms ? cfg->margin_ms : 1000;
	ha->defer_max_ms = cfg->defer_max_ms ? cfg->defer_max_ms : ha->ttl_s * 1000 / 2;
	sp_etcd_cfg ecfg = cfg->etcd;
	if (ecfg.timeout_ms <= 0)
		ecfg.timeout_ms = ha->keepalive_ms;
	/* A keepalive sent when due must be answered (or time out) before the deadline of
	 * the previous one: interval + timeout < TTL - margin. */
	if (ha->keepalive_ms + ecfg.timeout_ms >= ha->ttl_s * 1000 - ha->margin_ms) {
		free(ha);
		return SP_ECONFIG;
	}
	snprintf(ha->prefix, sizeof(ha->prefix), "/sealpost/%s/%s/", cfg->cluster, cfg->group);
	ha->prefix_len = strlen(ha->prefix);
	snprintf(ha->self.name, sizeof(ha->self.name), "%s", cfg->name);
	memcpy(ha->self.inc, cfg->inc, cfg->inc_len);
	ha->self.inc_len = cfg->inc_len;
	snprintf(ha->url, sizeof(ha->url), "%s", cfg->url);
	if (pthread_mutex_init(&ha->sync_mu, NULL) != 0) {
		free(ha);
		return SP_ENOMEM;
	}
	if (pthread_mutex_init(&ha->view_mu, NULL) != 0) {
		pthread_mutex_destroy(&ha->sync_mu);
		free(ha);
		return SP_ENOMEM;
	}
	int rc = sp_etcd_new(&ecfg, &ha->etcd);
	if (rc == SP_OK)
		rc = sp_etcd_new(&ecfg, &ha->sync_etcd);
	if (rc) {
		repl_ha_free(ha);
		return rc;
	}
	*out = ha;
	return SP_OK;
}

int
repl_ha_new_reader(const sp_etcd_cfg *etcd, const char *cluster, const char *group, repl_ha **out)
{
	if (!etcd || !valid_name(cluster) || !valid_name(group))
		return SP_EINVAL;
	repl_ha *ha = calloc(1, sizeof(*ha));
	if (!ha)
		return SP_ENOMEM;
	ha->reader = true;
	snprintf(ha->prefix, sizeof(ha->prefix), "/sealpost/%s/%s/", cluster, group);
	ha->prefix_len = strlen(ha->prefix);
	if (pthread_mutex_init(&ha->sync_mu, NULL) != 0) {
		free(ha);
		return SP_ENOMEM;
	}
	if (pthread_mutex_init(&ha->view_mu, NULL) != 0) {
		pthread_mutex_destroy(&ha->sync_mu);
		free(ha);
		return SP_ENOMEM;
	}
	/* One client: a reader never changes the sync set. */
	int rc = sp_etcd_new(etcd, &ha->etcd);
	if (rc) {
		repl_ha_free(ha);
		return rc;
	}
	*out = ha;
	return SP_OK;
}

void
repl_ha_free(repl_ha *ha)
{
	if (!ha)
		return;
	repl_ha_loop_stop(ha);
	sp_etcd_free(ha->etcd);
	sp_etcd_free(ha->sync_etcd);
	pthread_mutex_destroy(&ha->sync_mu);
	pthread_mutex_destroy(&ha->view_mu);
	free(ha);
}

/* ---- leases ---- */

static void
lose_leadership(repl_ha *ha)
{
	atomic_store(&ha->serve_until, 0);
	atomic_store(&ha->leader_rev, 0);
	atomic_store(&ha->epoch, 0);
}

static void
lose_lease(repl_ha *ha)
{
	lose_leadership(ha);
	ha->lease = 0;
	ha->published = false;
}

/* Revokes `lease` if it is there; an expired one is fine. */
static int
revoke_stale(repl_ha *ha, int64_t lease, const char *what)
{
	if (lease == 0 || lease == ha->lease)
		return SP_OK;
	int rc = sp_etcd_lease_revoke(ha->etcd, lease);
	if (rc == SP_OK)
		sp_info("repl_ha %s: revoked the lease %" PRId64 " a previous process held (%s)",
			ha->self.name, lease, what);
	return rc == SP_ENOTFOUND ? SP_OK : rc;
}

/* The first etcd work of this process: the lease a previous process of this name held
 * (on its copies/ key, and on the leader key if it was primary) is revoked, so its keys
 * go now instead of at its TTL. */
static int
start_afresh(repl_ha *ha)
{
	char key[REPL_HA_KEY_MAX];
	char suffix[REPL_HA_NAME_MAX + 8];
	snprintf(suffix, sizeof(suffix), "copies/%s", ha->self.name);
	sp_etcd_kvs kvs;
	int rc = sp_etcd_get(ha->etcd, key, make_key(ha, suffix, key), false, &kvs);
	if (rc)
		return rc;
	if (kvs.n == 1)
		rc = revoke_stale(ha, kvs.v[0].lease, "status");
	sp_etcd_kvs_free(&kvs);
	if (rc)
		return rc;
	rc = sp_etcd_get(ha->etcd, key, make_key(ha, "leader", key), false, &kvs);
	if (rc)
		return rc;
	if (kvs.n == 1) {
		repl_ha_leader l;
		leader_parse(&kvs.v[0], &l);
		if (l.parsed && strcmp(l.id.name, ha->self.name) == 0)
			rc = revoke_stale(ha, l.lease, "leader");
	}
	sp_etcd_kvs_free(&kvs);
	if (rc == SP_OK)
		ha->fresh = true;
	return rc;
}

static int
ensure_lease(repl_ha *ha)
{
	int rc;
	if (!ha->fresh && (rc = start_afresh(ha)))
		return rc;
	if (ha->lease)
		return SP_OK;
	int64_t sent = repl_ha_now_ms(), ttl;
	if ((rc = sp_etcd_lease_grant(ha->etcd, ha->ttl_s, &ha->lease, &ttl)))
		return rc;
	ha->lease_until = sent + ttl * 1000;
	ha->published = false;
	return SP_OK;
}

int
repl_ha_renew(repl_ha *ha)
{
	if (ha->reader)
		return SP_EPERM;
	if (!ha->lease)
		return ensure_lease(ha);
	int64_t sent = repl_ha_now_ms(), ttl;
	int rc = sp_etcd_lease_keepalive(ha->etcd, ha->lease, &ttl);
	if (rc == SP_ENOTFOUND) {
		if (atomic_load(&ha->leader_rev))
			sp_warn("repl_ha %s: lease expired while primary", ha->self.name);
		lose_lease(ha);
		return rc;
	}
	if (rc)
		return rc;
	ha->lease_until = sent + ttl * 1000;
	if (atomic_load(&ha->leader_rev) && !atomic_load(&ha->step_down))
		atomic_store(&ha->serve_until, ha->lease_until - ha->margin_ms);
	return SP_OK;
}

void
repl_ha_step_down(repl_ha *ha)
{
	atomic_store(&ha->step_down, true);
	atomic_store(&ha->serve_until, 0);
}

bool
repl_ha_may_serve(const repl_ha *ha, int64_t now_ms)
{
	return now_ms < atomic_load(&ha->serve_until);
}

int64_t
repl_ha_epoch(const repl_ha *ha)
{
	return atomic_load(&ha->epoch);
}

int
repl_ha_resign(repl_ha *ha)
{
	if (ha->reader)
		return SP_EPERM;
	int64_t lease = ha->lease;
	lose_lease(ha);
	if (!lease)
		return SP_OK;
	int rc = sp_etcd_lease_revoke(ha->etcd, lease);
	return rc == SP_ENOTFOUND ? SP_OK : rc;
}

/* ---- status ---- */

int
repl_ha_publish(repl_ha *ha, const repl_ha_status *status)
{
	if (ha->reader)
		return SP_EPERM;
	if ((unsigned)status->role > REPL_HA_REPLICA || status->epoch < 0 || status->last.epoch < 0)
		return SP_EINVAL;
	char *val = copy_json(ha, status);
	if (!val)
		return SP_ENOMEM;
	char key[REPL_HA_KEY_MAX];
	char suffix[REPL_HA_NAME_MAX + 8];
	snprintf(suffix, sizeof(suffix), "copies/%s", ha->self.name);
	size_t klen = make_key(ha, suffix, key);
	int rc = SP_OK;
	for (int tries = 0; tries < 2; tries++) {
		if ((rc = ensure_lease(ha)))
			break;
		rc = sp_etcd_put(ha->etcd, key, klen, val, strlen(val), ha->lease, NULL);
		if (rc != SP_ENOTFOUND)
			break;
		lose_lease(ha); /* expired under us: take a new one */
	}
	free(val);
	if (rc == SP_OK) {
		ha->published = true;
		ha->last_status = *status;
	}
	return rc;
}

/* ---- read ---- */

int
repl_ha_read(repl_ha *ha, repl_ha_view *view)
{
	sp_etcd_kvs kvs;
	int rc = sp_etcd_get(ha->etcd, ha->prefix, ha->prefix_len, true, &kvs);
	if (rc)
		return rc;
	memset(view, 0, sizeof(*view));
	view->rev = kvs.rev;
	for (size_t i = 0; i < kvs.n && rc == SP_OK; i++) {
		const sp_etcd_kv *kv = &kvs.v[i];
		const char *k = (const char *)kv->key + ha->prefix_len;
		if (kv->key_len < ha->prefix_len)
			continue;
		if (strcmp(k, "leader") == 0) {
			leader_parse(kv, &view->leader);
		} else if (strcmp(k, "epoch") == 0) {
			char *end;
			long long c = strtoll((const char *)kv->value, &end, 10);
			if (kv->value_len == 0 || *end != '\0' || c < 0) {
				sp_warn("repl_ha: the epoch counter of %s is not a number", ha->prefix);
				rc = SP_EPROTO;
			}
			view->counter = c;
			view->counter_mod_rev = kv->mod_rev;
		} else if (strcmp(k, "sync") == 0) {
			if ((rc = sync_parse(kv, &view->sync)))
				sp_warn("repl_ha: the sync key of %s cannot be parsed", ha->prefix);
		} else if (strncmp(k, "copies/", 7) == 0) {
			if (view->ncopies == REPL_HA_MAX_COPIES)
				sp_warn_rl("repl_ha: more than %d copies in %s", REPL_HA_MAX_COPIES,
					   ha->prefix);
			else if (copy_parse(kv, k + 7, &view->copies[view->ncopies]))
				view->ncopies++;
			else
				sp_warn_rl("repl_ha: copy status %s cannot be parsed", k);
		}
	}
	sp_etcd_kvs_free(&kvs);
	return rc;
}

/* ---- campaign ---- */

static int64_t
max64(int64_t a, int64_t b)
{
	return a > b ? a : b;
}

int
repl_ha_campaign(repl_ha *ha, const repl_ha_view *view, repl_ha_pos mine, int64_t *epoch)
{
	if (ha->reader)
		return SP_EPERM;
	if (view->leader.present)
		return SP_EEXIST;
	bool new_group = !view->sync.present && view->counter_mod_rev == 0;
	if (!new_group && !repl_ha_in_sync(view, &ha->self))
		return SP_EPERM;
	int rc = ensure_lease(ha);
	if (rc == SP_OK && (rc = repl_ha_renew(ha)) == SP_ENOTFOUND)
		rc = ensure_lease(ha);
	if (rc)
		return rc;

	/* The counter goes past every epoch this candidate knows of, so the new epoch is
	 * above them even if etcd's revisions went back (a restore). */
	int64_t known = max64(view->counter, max64(mine.epoch, view->sync.epoch));
	for (size_t i = 0; i < view->ncopies; i++)
		known = max64(known, max64(view->copies[i].status.epoch,
					   view->copies[i].status.last.epoch));
	int64_t counter = known + 1;
	char *lval = leader_json(ha, counter);
	char *sval = new_group ? sync_json(0, &ha->self, 1) : NULL;
	char cval[24];
	snprintf(cval, sizeof(cval), "%" PRId64, counter);
	if (!lval || (new_group && !sval)) {
		free(lval);
		free(sval);
		return SP_ENOMEM;
	}
	char lkey[REPL_HA_KEY_MAX], skey[REPL_HA_KEY_MAX], ckey[REPL_HA_KEY_MAX];
	size_t llen = make_key(ha, "leader", lkey), slen = make_key(ha, "sync", skey),
	       clen = make_key(ha, "epoch", ckey);
	sp_etcd_cmp cmps[] = {
	    {.key = lkey, .klen = llen, .result = SP_ETCD_EQUAL, .target = SP_ETCD_CREATE, .num = 0},
	    {.key = skey, .klen = slen, .result = SP_ETCD_EQUAL, .target = SP_ETCD_MOD,
	     .num = view->sync.mod_rev},
	    {.key = ckey, .klen = clen, .result = SP_ETCD_EQUAL, .target = SP_ETCD_MOD,
	     .num = view->counter_mod_rev},
	};
	sp_etcd_op then[] = {
	    {.kind = SP_ETCD_OP_PUT, .key = lkey, .klen = llen, .value = lval, .vlen = strlen(lval),
	     .lease = ha->lease},
	    {.kind = SP_ETCD_OP_PUT, .key = ckey, .klen = clen, .value = cval, .vlen = strlen(cval)},
	    {.kind = SP_ETCD_OP_PUT, .key = skey, .klen = slen, .value = sval,
	     .vlen = sval ? strlen(sval) : 0},
	};
	sp_etcd_op otherwise = {.kind = SP_ETCD_OP_GET, .key = lkey, .klen = llen};
	sp_etcd_txn_result res;
	rc = sp_etcd_txn(ha->etcd, cmps, 3, then, new_group ? 3 : 2, &otherwise, 1, &res);
	free(lval);
	free(sval);
	if (rc == SP_ENOTFOUND) /* the lease expired between the renew and the txn */
		lose_lease(ha);
	if (rc)
		return rc;
	if (!res.succeeded) {
		bool held = res.ngets == 1 && res.gets[0].n == 1;
		sp_etcd_txn_result_free(&res);
		return held ? SP_EEXIST : SP_ESTATE;
	}
	int64_t e = max64(res.rev, counter);
	atomic_store(&ha->step_down, false);
	atomic_store(&ha->leader_rev, res.rev);
	atomic_store(&ha->epoch, e);
	atomic_store(&ha->serve_until, ha->lease_until - ha->margin_ms);
	sp_etcd_txn_result_free(&res);
	sp_info("repl_ha %s: primary of %s at epoch %" PRId64, ha->self.name, ha->prefix, e);
	if (epoch)
		*epoch = e;
	return SP_OK;
}

/* ---- sync set ---- */

/* Whether an etcd call that failed with rc surely did not reach etcd. */
static bool
surely_not_applied(int rc)
{
	return rc == SP_EINVAL || rc == SP_EAUTH;
}

int
repl_ha_sync_set(repl_ha *ha, repl_ha_view *view, const repl_ha_id *members, size_t n)
{
	if (ha->reader)
		return SP_EPERM;
	if (n == 0 || n > REPL_HA_MAX_COPIES)
		return SP_EINVAL;
	bool self = false;
	for (size_t i = 0; i < n; i++) {
		if (!valid_name(members[i].name) || members[i].inc_len == 0 ||
		    members[i].inc_len > REPL_HA_INC_MAX)
			return SP_EINVAL;
		for (size_t j = 0; j < i; j++)
			if (strcmp(members[i].name, members[j].name) == 0)
				return SP_EINVAL;
		self = self || id_eq(&members[i], &ha->self);
	}
	if (!self)
		return SP_EINVAL;
	pthread_mutex_lock(&ha->sync_mu);
	int64_t leader_rev = atomic_load(&ha->leader_rev), epoch = atomic_load(&ha->epoch);
	int rc = SP_EPERM;
	char *val = NULL;
	if (!leader_rev)
		goto out;
	rc = SP_ENOMEM;
	if (!(val = sync_json(epoch, members, n)))
		goto out;
	char lkey[REPL_HA_KEY_MAX], skey[REPL_HA_KEY_MAX];
	size_t llen = make_key(ha, "leader", lkey), slen = make_key(ha, "sync", skey);
	sp_etcd_cmp cmps[] = {
	    {.key = lkey, .klen = llen, .result = SP_ETCD_EQUAL, .target = SP_ETCD_CREATE,
	     .num = leader_rev},
	    {.key = skey, .klen = slen, .result = SP_ETCD_EQUAL, .target = SP_ETCD_MOD,
	     .num = view->sync.mod_rev},
	};
	sp_etcd_op then = {.kind = SP_ETCD_OP_PUT, .key = skey, .klen = slen, .value = val,
			   .vlen = strlen(val)};
	sp_etcd_op otherwise = {.kind = SP_ETCD_OP_GET, .key = lkey, .klen = llen};
	sp_etcd_txn_result res;
	rc = sp_etcd_txn(ha->sync_etcd, cmps, 2, &then, 1, &otherwise, 1, &res);
	if (rc) {
		if (!surely_not_applied(rc)) {
			sp_warn("repl_ha %s: sync-set change of unknown outcome (%s)", ha->self.name,
				sp_errname(rc));
			rc = SP_ETIMEDOUT;
		}
		goto out;
	}
	if (!res.succeeded) {
		bool mine = res.ngets == 1 && res.gets[0].n == 1 &&
			    res.gets[0].v[0].create_rev == leader_rev;
		rc = mine ? SP_ESTATE : SP_EPERM;
	} else {
		repl_ha_sync *s = &view->sync;
		if (!s->present)
			s->create_rev = res.rev;
		s->present = true;
		s->epoch = epoch;
		s->n = n;
		memcpy(s->members, members, n * sizeof(*members));
		s->mod_rev = res.rev;
	}
	sp_etcd_txn_result_free(&res);
out:
	free(val);
	pthread_mutex_unlock(&ha->sync_mu);
	return rc;
}

/* ---- watch ---- */

static bool
stop_at_first(void *arg, int64_t rev, const sp_etcd_event *ev, size_t n)
{
	(void)arg;
	(void)rev;
	(void)ev;
	(void)n;
	return false;
}

int
repl_ha_wait(repl_ha *ha, repl_ha_view *view, long max_ms)
{
	int rc = SP_OK;
	if (view->rev > 0) {
		rc = sp_etcd_watch(ha->etcd, ha->prefix, ha->prefix_len, true, view->rev + 1,
				   max_ms > 0 ? max_ms : 1, stop_at_first, NULL);
		if (rc == SP_ERANGE)
			sp_info("repl_ha %s: watch start revision %" PRId64 " compacted; reading again",
				ha->self.name, view->rev + 1);
		else if (rc)
			return rc;
	}
	repl_ha_view fresh;
	if ((rc = repl_ha_read(ha, &fresh)))
		return rc;
	*view = fresh;
	return SP_OK;
}
