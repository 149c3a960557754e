/* Router map: cluster-file parsing and its errors, health by heartbeat with an injected
 * clock, epoch bumps, state persistence, the /where choice, and the MAP frame. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "router/internal.h"
#include "router/map.h"
#include "repl/ha.h"
#include "sp_cluster.h"
#include "sp_error.h"
#include "check_run.h"

static const char *good =
	"[inbox-0]\n"
	"role = inbox\n"
	"addr = tcp://127.0.0.1:7401      ; NNG address others use to reach it\n"
	"shard = 0\n"
	"[inbox-1]\n"
	"role = inbox\n"
	"addr = tcp://127.0.0.1:7402\n"
	"shard = 1\n"
	"[keysrv]\n"
	"role = keysrv\n"
	"addr = tcp://127.0.0.1:7301\n"
	"[connsrv-0]\n"
	"role = connsrv\n"
	"addr = tcp://127.0.0.1:7501\n"
	"client = 127.0.0.1:7443          ; its TLS listener\n"
	"[connsrv-1]\n"
	"role = connsrv\n"
	"addr = tcp://127.0.0.1:7502\n"
	"client = 127.0.0.1:7444\n"
	"[connsrv-2]\n"
	"role = connsrv\n"
	"addr = tcp://127.0.0.1:7503\n"
	"client = [::1]:7445\n";

static uint64_t
zero_clock(void)
{
	return 0;
}

static uint64_t wall_now;

static uint64_t
fake_wall(void)
{
	return wall_now;
}

/* A parsed `good` map with epoch 1 and a wall clock that never leads. */
static router_map *
good_map(void)
{
	router_map *m;
	char err[256];
	ck_assert_int_eq(router_map_parse(good, "good.ini", &m, err, sizeof(err)), SP_OK);
	router_map_set_wall_clock(m, zero_clock);
	ck_assert_int_eq(router_map_state_load(m, "/nonexistent-dir/state", err, sizeof(err)), SP_OK);
	ck_assert(router_map_epoch(m) == 1);
	return m;
}

START_TEST(test_parse_good)
{
	router_map *m = good_map();
	ck_assert_uint_eq(router_map_count(m), 6);
	const router_member *a = router_map_find(m, "inbox-1");
	ck_assert_ptr_nonnull(a);
	ck_assert_int_eq(a->role, SP_ROLE_INBOX);
	ck_assert_str_eq(a->addr, "tcp://127.0.0.1:7402");
	ck_assert_uint_eq(a->shard, 1);
	ck_assert(!a->healthy);
	const router_member *c = router_map_find(m, "connsrv-0");
	ck_assert_str_eq(c->addr, "tcp://127.0.0.1:7501"); /* inline comment stripped */
	ck_assert_str_eq(c->host, "127.0.0.1");
	ck_assert_uint_eq(c->port, 7443);
	c = router_map_find(m, "connsrv-2");
	ck_assert_str_eq(c->host, "::1");
	ck_assert_uint_eq(c->port, 7445);
	ck_assert_ptr_null(router_map_find(m, "nope"));
	router_map_free(m);
}
END_TEST

static const struct {
	const char *text, *msg;
} bad[] = {
	{"", "no members"},
	{"role = keysrv\n", "key 'role' outside a member section"},
	{"[a]\nrole = bogus\naddr = tcp://x:1\n", "[a]: unknown role 'bogus'"},
	{"[a]\nrole = keysrv\naddr = tcp://x:1\ncolour = red\n", "[a]: unknown key 'colour'"},
	{"[a]\nrole = keysrv\n", "[a]: missing 'addr'"},
	{"[a]\naddr = tcp://x:1\n", "[a]: missing 'role'"},
	{"[a]\nrole = keysrv\nrole = inbox\naddr = tcp://x:1\n", "[a]: key 'role' given twice"},
	{"[a]\nrole = keysrv\naddr = x:1\n", "[a]: addr 'x:1' is not an NNG address"},
	{"[c]\nrole = connsrv\naddr = tcp://x:1\n", "[c]: a connsrv needs 'client'"},
	{"[c]\nrole = connsrv\naddr = tcp://x:1\nclient = 127.0.0.1\n", "client '127.0.0.1' is not host:port"},
	{"[c]\nrole = connsrv\naddr = tcp://x:1\nclient = h:70000\n", "client 'h:70000' is not host:port"},
	{"[k]\nrole = keysrv\naddr = tcp://x:1\nclient = h:1\n", "[k]: 'client' is only for a connsrv"},
	{"[i]\nrole = inbox\naddr = tcp://x:1\n", "[i]: an inbox needs 'shard'"},
	{"[i]\nrole = inbox\naddr = tcp://x:1\nshard = -1\n", "shard '-1' is not a number"},
	{"[k]\nrole = keysrv\naddr = tcp://x:1\nshard = 0\n", "[k]: 'shard' is only for an inbox"},
	{"[a]\nrole = keysrv\naddr = tcp://x:1\n[b]\nrole = keysrv\naddr = tcp://x:2\n[a]\nrole = keysrv\n",
	 "section [a] appears twice"},
	{"[a]\nrole = keysrv\naddr = tcp://x:1\n[b]\nrole = keysrv\naddr = tcp://x:1\n",
	 "[b]: addr tcp://x:1 is also [a]'s"},
	{"[c]\nrole = connsrv\naddr = tcp://x:1\nclient = h:1\n[d]\nrole = connsrv\naddr = tcp://x:2\n"
	 "client = h:1\n",
	 "[d]: client address is also [c]'s"},
	{"[a b]\nrole = keysrv\naddr = tcp://x:1\n", "member name [a b] may only use"},
	{"[a\nrole = keysrv\n", "t.ini:1: syntax error"},
	{"[aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\nrole = keysrv\n",
	 "is too long"},
};

START_TEST(test_parse_bad)
{
	router_map *m = NULL;
	char err[256];
	err[0] = '\0';
	int rc = router_map_parse(bad[_i].text, "t.ini", &m, err, sizeof(err));
	ck_assert_int_eq(rc, SP_ECONFIG);
	ck_assert_ptr_null(m);
	ck_assert_msg(strstr(err, bad[_i].msg) != NULL, "case %d: error '%s' lacks '%s'", _i, err,
		      bad[_i].msg);
	ck_assert_msg(strncmp(err, "t.ini", 5) == 0, "error '%s' does not name the file", err);
}
END_TEST

START_TEST(test_load_file)
{
	char dir[] = "/tmp/sp-router-map-XXXXXX", path[128], err[256];
	router_map *m;
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/cluster.ini", dir);
	ck_assert_int_eq(router_map_load(path, &m, err, sizeof(err)), SP_ECONFIG);
	ck_assert_msg(strstr(err, "cannot read") != NULL, "%s", err);
	FILE *f = fopen(path, "w");
	fputs(good, f);
	fclose(f);
	ck_assert_int_eq(router_map_load(path, &m, err, sizeof(err)), SP_OK);
	ck_assert_uint_eq(router_map_count(m), 6);
	router_map_free(m);
	unlink(path);
	rmdir(dir);
}
END_TEST

START_TEST(test_health_and_epoch)
{
	router_map *m = good_map();
	bool changed;
	router_map_set_timeout(m, 3000);

	/* Heartbeats from strangers or under another role change nothing. */
	ck_assert_int_eq(router_map_heartbeat(m, "ghost", SP_ROLE_INBOX, 0, 1000, &changed), SP_ENOTFOUND);
	ck_assert_int_eq(router_map_heartbeat(m, "inbox-0", SP_ROLE_CONNSRV, 0, 1000, &changed), SP_EINVAL);
	ck_assert(!changed);
	ck_assert(router_map_epoch(m) == 1);

	/* First heartbeat: healthy, one bump. More heartbeats: no bump. */
	ck_assert_int_eq(router_map_heartbeat(m, "inbox-0", SP_ROLE_INBOX, 0, 1000, &changed), SP_OK);
	ck_assert(changed);
	ck_assert(router_map_find(m, "inbox-0")->healthy);
	ck_assert(router_map_epoch(m) == 2);
	ck_assert_int_eq(router_map_heartbeat(m, "inbox-0", SP_ROLE_INBOX, 0, 2000, &changed), SP_OK);
	ck_assert(!changed);
	ck_assert_int_eq(router_map_heartbeat(m, "connsrv-0", SP_ROLE_CONNSRV, 42, 2000, &changed), SP_OK);
	ck_assert(changed);
	ck_assert_uint_eq(router_map_find(m, "connsrv-0")->conns, 42);
	ck_assert(router_map_epoch(m) == 3);

	/* Silent for less than the timeout: still healthy. */
	ck_assert(!router_map_tick(m, 4999));
	ck_assert(router_map_epoch(m) == 3);
	/* Both silent for the timeout: unhealthy together, one bump. */
	ck_assert(router_map_tick(m, 5000));
	ck_assert(!router_map_find(m, "inbox-0")->healthy);
	ck_assert(!router_map_find(m, "connsrv-0")->healthy);
	ck_assert(router_map_epoch(m) == 4);
	ck_assert(!router_map_tick(m, 9000));
	ck_assert(router_map_epoch(m) == 4);

	/* Back: healthy again, bump. */
	ck_assert_int_eq(router_map_heartbeat(m, "inbox-0", SP_ROLE_INBOX, 0, 9500, &changed), SP_OK);
	ck_assert(changed && router_map_epoch(m) == 5);

	/* Draining: only a connsrv, only a flip bumps. */
	ck_assert_int_eq(router_map_set_draining(m, "inbox-0", true, &changed), SP_EINVAL);
	ck_assert_int_eq(router_map_set_draining(m, "ghost", true, &changed), SP_ENOTFOUND);
	ck_assert_int_eq(router_map_set_draining(m, "connsrv-1", true, &changed), SP_OK);
	ck_assert(changed && router_map_epoch(m) == 6);
	ck_assert_int_eq(router_map_set_draining(m, "connsrv-1", true, &changed), SP_OK);
	ck_assert(!changed && router_map_epoch(m) == 6);
	router_map_free(m);
}
END_TEST

START_TEST(test_epoch_follows_wall_clock)
{
	router_map *m = good_map();
	bool changed;
	wall_now = 1000000;
	router_map_set_wall_clock(m, fake_wall);
	router_map_set_draining(m, "connsrv-0", true, &changed);
	ck_assert(router_map_epoch(m) == 1000000);
	/* Faster than the clock: still strictly increasing. */
	router_map_set_draining(m, "connsrv-0", false, &changed);
	ck_assert(router_map_epoch(m) == 1000001);
	/* A clock that went back never takes the epoch back. */
	wall_now = 5;
	router_map_set_draining(m, "connsrv-0", true, &changed);
	ck_assert(router_map_epoch(m) == 1000002);
	router_map_free(m);
}
END_TEST

START_TEST(test_state_persists)
{
	char dir[] = "/tmp/sp-router-state-XXXXXX", path[128], err[256];
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/cluster.ini.state", dir);
	router_map *m = good_map();
	bool changed;
	for (int i = 0; i < 5; i++)
		router_map_set_draining(m, "connsrv-1", i % 2 == 0, &changed);
	ck_assert(router_map_epoch(m) == 6);
	ck_assert_int_eq(router_map_state_save(m, path), SP_OK);
	router_map_free(m);

	/* A restart: epoch past the saved one, draining kept, nothing healthy yet. */
	char e2[256];
	ck_assert_int_eq(router_map_parse(good, "good.ini", &m, e2, sizeof(e2)), SP_OK);
	router_map_set_wall_clock(m, zero_clock);
	ck_assert_int_eq(router_map_state_load(m, path, err, sizeof(err)), SP_OK);
	ck_assert(router_map_epoch(m) == 7);
	ck_assert(router_map_find(m, "connsrv-1")->draining);
	ck_assert(!router_map_find(m, "connsrv-0")->draining);
	router_map_free(m);

	/* Unknown names are dropped; garbage is an error naming the line. */
	FILE *f = fopen(path, "w");
	fputs("# c\nepoch 99\ndraining ghost\ndraining inbox-0\n", f);
	fclose(f);
	m = good_map();
	ck_assert_int_eq(router_map_state_load(m, path, err, sizeof(err)), SP_OK);
	ck_assert(router_map_epoch(m) == 100);
	ck_assert(!router_map_find(m, "inbox-0")->draining);
	f = fopen(path, "w");
	fputs("epoch 99\nepoch x\n", f);
	fclose(f);
	ck_assert_int_eq(router_map_state_load(m, path, err, sizeof(err)), SP_ECONFIG);
	ck_assert_msg(strstr(err, ":2: malformed state line") != NULL, "%s", err);
	router_map_free(m);
	unlink(path);
	rmdir(dir);
}
END_TEST

START_TEST(test_where)
{
	router_map *m = good_map();
	bool changed;
	ck_assert_ptr_null(router_map_where(m)); /* nobody healthy */
	router_map_heartbeat(m, "connsrv-0", SP_ROLE_CONNSRV, 10, 100, &changed);
	router_map_heartbeat(m, "connsrv-1", SP_ROLE_CONNSRV, 5, 100, &changed);
	router_map_heartbeat(m, "connsrv-2", SP_ROLE_CONNSRV, 7, 100, &changed);
	/* Fewest connections, counting the clients it was already given: 5, 6, then 7 ties
	 * with connsrv-2 and the earlier one wins, then connsrv-2. */
	ck_assert_str_eq(router_map_where(m)->name, "connsrv-1");
	ck_assert_str_eq(router_map_where(m)->name, "connsrv-1");
	ck_assert_str_eq(router_map_where(m)->name, "connsrv-1");
	ck_assert_str_eq(router_map_where(m)->name, "connsrv-2");
	/* A heartbeat replaces the estimate with the real count. */
	router_map_heartbeat(m, "connsrv-1", SP_ROLE_CONNSRV, 1, 200, &changed);
	ck_assert_str_eq(router_map_where(m)->name, "connsrv-1");
	/* Draining and unhealthy ones are skipped. */
	router_map_set_draining(m, "connsrv-1", true, &changed);
	ck_assert_str_eq(router_map_where(m)->name, "connsrv-2");
	router_map_heartbeat(m, "connsrv-0", SP_ROLE_CONNSRV, 10, 3000, &changed);
	router_map_tick(m, 3300); /* connsrv-1 and -2 silent since 200 */
	ck_assert_str_eq(router_map_where(m)->name, "connsrv-0");
	router_map_set_draining(m, "connsrv-0", true, &changed);
	ck_assert_ptr_null(router_map_where(m));
	router_map_free(m);
}
END_TEST

START_TEST(test_map_frame)
{
	router_map *m = good_map();
	bool changed;
	router_map_heartbeat(m, "connsrv-0", SP_ROLE_CONNSRV, 9, 100, &changed);
	router_map_set_draining(m, "connsrv-0", true, &changed);
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	ck_assert_int_eq(router_map_pack(m, 77, true, &sb), SP_OK);
	sp_frame f;
	ck_assert_int_eq(sp_frame_decode((const uint8_t *)sb.data, sb.size, &f), SP_OK);
	ck_assert_int_eq(f.type, SP_T_MAP);
	ck_assert(f.has_id && f.id == 77);
	sp_cluster_map *cm;
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &cm), SP_OK);
	ck_assert(sp_cluster_map_epoch(cm) == router_map_epoch(m));
	ck_assert_uint_eq(sp_cluster_map_count(cm), 6);
	const sp_cluster_member *c = sp_cluster_map_find(cm, "connsrv-0");
	ck_assert(c->healthy && c->draining);
	ck_assert_uint_eq(c->conns, 9);
	ck_assert_str_eq(c->host, "127.0.0.1");
	ck_assert_uint_eq(c->port, 7443);
	const sp_cluster_member *i1 = sp_cluster_map_find(cm, "inbox-1");
	ck_assert(!i1->healthy && !i1->draining);
	ck_assert_uint_eq(i1->shard, 1);
	ck_assert_str_eq(i1->host, "");
	/* The ring holds the two inbox shards, healthy or not. */
	ck_assert_uint_eq(sp_ring_size(sp_cluster_map_ring(cm)), 2);
	int seen[2] = {0, 0};
	for (uint64_t d = 1; d < 200; d++) {
		const sp_cluster_member *s = sp_cluster_map_shard_for(cm, d);
		ck_assert_int_eq(s->role, SP_ROLE_INBOX);
		seen[s->shard]++;
	}
	ck_assert(seen[0] > 0 && seen[1] > 0);
	sp_cluster_map_put(cm);
	sp_frame_fini(&f);
	msgpack_sbuffer_destroy(&sb);
	router_map_free(m);
}
END_TEST

/* Three copies per shard: a valid file; the shards listed once each. */
static const char *three_copies =
	"[inbox-0a]\nrole = inbox\naddr = tcp://127.0.0.1:7401\nshard = 0\n"
	"[inbox-0b]\nrole = inbox\naddr = tcp://127.0.0.1:7402\nshard = 0\n"
	"[inbox-0c]\nrole = inbox\naddr = tcp://127.0.0.1:7403\nshard = 0\n"
	"[inbox-1a]\nrole = inbox\naddr = tcp://127.0.0.1:7411\nshard = 1\n"
	"[inbox-1b]\nrole = inbox\naddr = tcp://127.0.0.1:7412\nshard = 1\n"
	"[inbox-1c]\nrole = inbox\naddr = tcp://127.0.0.1:7413\nshard = 1\n"
	"[keysrv]\nrole = keysrv\naddr = tcp://127.0.0.1:7301\n"
	"[connsrv-0]\nrole = connsrv\naddr = tcp://127.0.0.1:7501\nclient = 127.0.0.1:7443\n";

static router_map *
copies_map(void)
{
	router_map *m;
	char err[256];
	ck_assert_int_eq(router_map_parse(three_copies, "c.ini", &m, err, sizeof(err)), SP_OK);
	router_map_set_wall_clock(m, zero_clock);
	ck_assert_int_eq(router_map_state_load(m, "/nonexistent-dir/state", err, sizeof(err)), SP_OK);
	return m;
}

START_TEST(test_parse_copies)
{
	router_map *m = copies_map();
	ck_assert_uint_eq(router_map_count(m), 8);
	uint32_t sh[4];
	ck_assert_uint_eq(router_map_shards(m, sh, 4), 2);
	ck_assert_uint_eq(sh[0], 0);
	ck_assert_uint_eq(sh[1], 1);
	ck_assert_uint_eq(router_map_shards(m, sh, 1), 2);
	ck_assert_uint_eq(router_map_find(m, "inbox-1b")->shard, 1);
	ck_assert(!router_map_find(m, "inbox-1b")->repl_known);
	router_map_free(m);

	/* At most REPL_HA_MAX_COPIES copies of a shard. */
	char text[8192];
	size_t off = 0;
	for (int i = 0; i <= REPL_HA_MAX_COPIES; i++)
		off += (size_t)snprintf(text + off, sizeof(text) - off,
					"[c%d]\nrole = inbox\naddr = tcp://x:%d\nshard = 4\n", i, i + 1);
	char err[256];
	ck_assert_int_eq(router_map_parse(text, "t.ini", &m, err, sizeof(err)), SP_ECONFIG);
	ck_assert_msg(strstr(err, "[c16]: shard 4 has more than 16 copies") != NULL, "%s", err);
	/* Exactly the bound is fine. */
	char *last = strstr(text, "[c16]");
	*last = '\0';
	ck_assert_int_eq(router_map_parse(text, "t.ini", &m, err, sizeof(err)), SP_OK);
	router_map_free(m);
}
END_TEST

static repl_ha_id
hid(const char *name, const char *inc)
{
	repl_ha_id i = {0};
	snprintf(i.name, sizeof(i.name), "%s", name);
	memcpy(i.inc, inc, strlen(inc));
	i.inc_len = strlen(inc);
	return i;
}

/* A view of a group: leader `leader` (NULL: none) at `epoch`, sync set `sync` (names, each
 * with incarnation "I"), copies' status keys for `up` with their LSNs. */
static repl_ha_view
view(const char *leader, int64_t epoch, const char *const *sync, size_t nsync,
     const char *const *up, const uint64_t *lsn, size_t nup)
{
	repl_ha_view v;
	memset(&v, 0, sizeof(v));
	v.rev = 100;
	if (leader) {
		v.leader.present = v.leader.parsed = true;
		v.leader.id = hid(leader, "I");
		v.leader.epoch = epoch;
		v.leader.counter = epoch;
	}
	v.counter = epoch;
	v.sync.present = nsync > 0;
	v.sync.epoch = epoch - 1;
	v.sync.n = nsync;
	for (size_t i = 0; i < nsync; i++)
		v.sync.members[i] = hid(sync[i], "I");
	v.ncopies = nup;
	for (size_t i = 0; i < nup; i++) {
		v.copies[i].id = hid(up[i], "I");
		v.copies[i].status.flushed_lsn = lsn[i];
		v.copies[i].status.last.lsn = lsn[i];
	}
	return v;
}

/* The key store's group marks the keysrv members, and only them; the MAP carries it. */
START_TEST(test_apply_keys_group)
{
	static const char text[] = "[keys-a]\nrole = keysrv\naddr = tcp://127.0.0.1:7301\n"
				   "[keys-b]\nrole = keysrv\naddr = tcp://127.0.0.1:7302\n"
				   "[inbox-0]\nrole = inbox\naddr = tcp://127.0.0.1:7401\nshard = 0\n";
	router_map *m;
	char err[256];
	ck_assert_int_eq(router_map_parse(text, "k.ini", &m, err, sizeof(err)), SP_OK);
	router_map_set_wall_clock(m, zero_clock);
	ck_assert_int_eq(router_map_state_load(m, "/nonexistent-dir/state", err, sizeof(err)), SP_OK);
	ck_assert(router_map_has_keysrv(m));
	const char *ab[] = {"keys-a", "keys-b"};
	uint64_t lsns[] = {5, 4};
	repl_ha_view v = view("keys-b", 12, ab, 1, ab, lsns, 2);
	unsigned what;
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_KEYSRV, 0, &v, &what), SP_OK);
	ck_assert_uint_eq(what, ROUTER_SHARD_CHANGED);
	const router_member *a = router_map_find(m, "keys-a"), *b = router_map_find(m, "keys-b"),
			    *i = router_map_find(m, "inbox-0");
	ck_assert(b->primary && !b->in_sync && b->shard_epoch == 12 && b->lsn == 4);
	ck_assert(!a->primary && a->in_sync && a->lsn == 5);
	ck_assert(!i->repl_known && !i->primary);

	/* Through the MAP frame, as connsrv sees it. */
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	ck_assert_int_eq(router_map_pack(m, 0, false, &sb), SP_OK);
	sp_frame f;
	ck_assert_int_eq(sp_frame_decode((const uint8_t *)sb.data, sb.size, &f), SP_OK);
	sp_cluster_map *cm;
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &cm), SP_OK);
	ck_assert_str_eq(sp_cluster_map_keysrv_target(cm)->name, "keys-b");
	ck_assert(sp_cluster_map_find(cm, "keys-a")->in_sync);
	sp_cluster_map_put(cm);
	sp_frame_fini(&f);
	msgpack_sbuffer_destroy(&sb);

	/* A map without keysrv has no such group. */
	router_map_free(m);
	ck_assert_int_eq(router_map_parse(text + strlen("[keys-a]\nrole = keysrv\naddr = "
		"tcp://127.0.0.1:7301\n[keys-b]\nrole = keysrv\naddr = tcp://127.0.0.1:7302\n"),
		"i.ini", &m, err, sizeof(err)), SP_OK);
	ck_assert(!router_map_has_keysrv(m));
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_KEYSRV, 0, &v, &what), SP_ENOTFOUND);
	router_map_free(m);
}
END_TEST

START_TEST(test_apply_shard)
{
	router_map *m = copies_map();
	uint64_t e0 = router_map_epoch(m);
	unsigned what;
	const char *abc[] = {"inbox-0a", "inbox-0b", "inbox-0c"}, *ab[] = {"inbox-0a", "inbox-0b"};
	uint64_t lsns[] = {10, 12, 9};

	/* Unknown shard. */
	repl_ha_view v = view("inbox-0a", 50, abc, 3, abc, lsns, 3);
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 7, &v, &what), SP_ENOTFOUND);

	/* First read: a change (the fields become known), one bump. */
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 0, &v, &what), SP_OK);
	ck_assert_uint_eq(what, ROUTER_SHARD_CHANGED);
	ck_assert(router_map_epoch(m) == e0 + 1);
	const router_member *a = router_map_find(m, "inbox-0a"), *b = router_map_find(m, "inbox-0b"),
			    *c = router_map_find(m, "inbox-0c"), *x = router_map_find(m, "inbox-1a");
	ck_assert(a->repl_known && a->primary && a->in_sync && a->lsn == 10 && a->shard_epoch == 50);
	ck_assert(!b->primary && b->in_sync && b->lsn == 12 && b->shard_epoch == 50);
	ck_assert(!c->primary && c->in_sync && c->lsn == 9);
	ck_assert(!x->repl_known && !x->primary); /* another shard: untouched */

	/* The same view again: nothing. LSNs only: STATUS, no bump. */
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 0, &v, &what), SP_OK);
	ck_assert_uint_eq(what, 0);
	lsns[1] = 20;
	v = view("inbox-0a", 50, abc, 3, abc, lsns, 3);
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 0, &v, &what), SP_OK);
	ck_assert_uint_eq(what, ROUTER_SHARD_STATUS);
	ck_assert(router_map_epoch(m) == e0 + 1);
	ck_assert_uint_eq(b->lsn, 20);

	/* A copy leaves the sync set: a change. */
	v = view("inbox-0a", 50, ab, 2, abc, lsns, 3);
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 0, &v, &what), SP_OK);
	ck_assert_uint_eq(what, ROUTER_SHARD_CHANGED);
	ck_assert(!c->in_sync && router_map_epoch(m) == e0 + 2);

	/* The primary dies: no leader, its status key gone (LSN 0); the shard's epoch stays
	 * the last one etcd records. */
	v = view(NULL, 50, ab, 2, abc + 1, lsns + 1, 2);
	v.counter = 44;
	v.counter_mod_rev = 50; /* the leader key's create revision */
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 0, &v, &what), SP_OK);
	ck_assert(what & ROUTER_SHARD_CHANGED);
	ck_assert(!a->primary && !b->primary && a->lsn == 0 && a->shard_epoch == 50);
	ck_assert(a->in_sync); /* no status key: judged by name */

	/* b takes over at a higher epoch. */
	v = view("inbox-0b", 57, ab, 2, abc + 1, lsns + 1, 2);
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 0, &v, &what), SP_OK);
	ck_assert(what & ROUTER_SHARD_CHANGED);
	ck_assert(b->primary && !a->primary && b->shard_epoch == 57 && a->shard_epoch == 57);

	/* a comes back with a new data dir (another incarnation): not the sync set's a. */
	v = view("inbox-0b", 57, ab, 2, abc, lsns, 3);
	v.copies[0].id = hid("inbox-0a", "NEW");
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 0, &v, &what), SP_OK);
	ck_assert(what & ROUTER_SHARD_CHANGED);
	ck_assert(!a->in_sync && b->in_sync);

	/* A leader key that is not ours names nobody primary; copies not in the file are
	 * ignored. */
	const char *stranger[] = {"inbox-0z"};
	v = view("inbox-0z", 60, stranger, 1, stranger, lsns, 1);
	v.leader.parsed = false;
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 0, &v, &what), SP_OK);
	ck_assert(!a->primary && !b->primary && !c->primary && !b->in_sync);
	ck_assert_uint_eq(b->shard_epoch, 60);
	router_map_free(m);
}
END_TEST

/* The MAP of a three-copy cluster mirrored from etcd: members see the copies' fields, and
 * shard_for gives the primary. */
START_TEST(test_map_frame_copies)
{
	router_map *m = copies_map();
	const char *s0[] = {"inbox-0a", "inbox-0b", "inbox-0c"}, *s1[] = {"inbox-1c"};
	uint64_t lsns[] = {7, 8, 9};
	repl_ha_view v = view("inbox-0b", 33, s0, 3, s0, lsns, 3);
	unsigned what;
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 0, &v, &what), SP_OK);
	v = view("inbox-1c", 44, s1, 1, s1, lsns, 1);
	ck_assert_int_eq(router_map_apply_group(m, SP_ROLE_INBOX, 1, &v, &what), SP_OK);
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	ck_assert_int_eq(router_map_pack(m, 0, false, &sb), SP_OK);
	sp_frame f;
	ck_assert_int_eq(sp_frame_decode((const uint8_t *)sb.data, sb.size, &f), SP_OK);
	sp_cluster_map *cm;
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &cm), SP_OK);
	const sp_cluster_member *b = sp_cluster_map_find(cm, "inbox-0b");
	ck_assert(b->primary && b->in_sync && b->lsn == 8 && b->epoch == 33);
	const sp_cluster_member *a = sp_cluster_map_find(cm, "inbox-0a");
	ck_assert(!a->primary && a->in_sync && a->lsn == 7 && a->epoch == 33);
	const sp_cluster_member *x = sp_cluster_map_find(cm, "inbox-1a");
	ck_assert(!x->primary && !x->in_sync && x->lsn == 0 && x->epoch == 44);
	ck_assert_uint_eq(sp_cluster_map_shard_count(cm), 2);
	ck_assert_uint_eq(sp_ring_size(sp_cluster_map_ring(cm)), 2);
	for (uint64_t d = 1; d < 500; d++) {
		const sp_cluster_member *t = sp_cluster_map_shard_for(cm, d);
		ck_assert_str_eq(t->name, t->shard == 0 ? "inbox-0b" : "inbox-1c");
	}
	sp_cluster_map_put(cm);
	sp_frame_fini(&f);
	msgpack_sbuffer_destroy(&sb);
	router_map_free(m);
}
END_TEST

/* The cluster file of before copies (inbox-0, inbox-1, ... with shards 0, 1, ...): its
 * devices keep the owners the ring over member names gave them, and without etcd the MAP
 * carries none of the new fields. */
START_TEST(test_old_file_ownership_unchanged)
{
	router_map *m = good_map();
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	ck_assert_int_eq(router_map_pack(m, 0, false, &sb), SP_OK);
	sp_frame f;
	ck_assert_int_eq(sp_frame_decode((const uint8_t *)sb.data, sb.size, &f), SP_OK);
	const sp_val *recs = sp_frame_get(&f, SP_F_MEMBERS);
	for (uint32_t i = 0; i < recs->rs.n; i++) {
		ck_assert(!sp_frame_has(&recs->rs.v[i], SP_F_PRIMARY));
		ck_assert(!sp_frame_has(&recs->rs.v[i], SP_F_IN_SYNC));
		ck_assert(!sp_frame_has(&recs->rs.v[i], SP_F_LSN));
		ck_assert(!sp_frame_has(&recs->rs.v[i], SP_F_EPOCH));
	}
	sp_cluster_map *cm;
	ck_assert_int_eq(sp_cluster_map_from_frame(&f, &cm), SP_OK);
	/* The ring as it was built before: over the inbox members' names. */
	const char *names[] = {"inbox-0", "inbox-1"};
	sp_ring *old;
	ck_assert_int_eq(sp_ring_new(1, names, 2, SP_RING_DEFAULT_VNODES, &old), SP_OK);
	for (uint64_t d = 0; d < 20000; d++) {
		int o, rep;
		ck_assert_int_eq(sp_ring_lookup_u64(old, d * 104729, &o, &rep), SP_OK);
		ck_assert_str_eq(sp_cluster_map_shard_for(cm, d * 104729)->name, names[o]);
	}
	sp_ring_free(old);
	sp_cluster_map_put(cm);
	sp_frame_fini(&f);
	msgpack_sbuffer_destroy(&sb);
	router_map_free(m);
}
END_TEST

/* The REP socket's handler table and the catalogue name the same requests. */
START_TEST(test_server_table_matches_catalogue)
{
	for (unsigned t = 0; t < 300; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		ck_assert_msg(router_server_serves(t) == (d && d->tier == SP_TIER_ROUTER), "type %u", t);
	}
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("router_map");
	TCase *tc = tcase_create("map");
	tcase_add_test(tc, test_parse_good);
	tcase_add_loop_test(tc, test_parse_bad, 0, (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(tc, test_load_file);
	tcase_add_test(tc, test_health_and_epoch);
	tcase_add_test(tc, test_epoch_follows_wall_clock);
	tcase_add_test(tc, test_state_persists);
	tcase_add_test(tc, test_where);
	tcase_add_test(tc, test_map_frame);
	tcase_add_test(tc, test_parse_copies);
	tcase_add_test(tc, test_apply_shard);
	tcase_add_test(tc, test_apply_keys_group);
	tcase_add_test(tc, test_map_frame_copies);
	tcase_add_test(tc, test_old_file_ownership_unchanged);
	tcase_add_test(tc, test_server_table_matches_catalogue);
	suite_add_tcase(s, tc);
	return check_run(s);
}
