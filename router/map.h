/*
 * The router's cluster map: members from the cluster file, their health (by heartbeat),
 * draining flags and the epoch. Pure state: no I/O except loading the cluster file and
 * loading/saving the state file; every function takes the current time so tests drive it
 * with their own clock. Not thread-safe: the router uses it from its one loop thread.
 *
 * Epoch: every change of health or draining sets epoch = max(epoch + 1, wall-clock ms).
 * The state file keeps the last epoch (and the draining names) across restarts, and the
 * wall clock keeps epochs ahead of the previous run's even if that file is lost.
 */
#ifndef ROUTER_MAP_H
#define ROUTER_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

/* Names are section names, which inih truncates at 49 bytes: longer ones are refused. */
#define ROUTER_NAME_MAX 48
#define ROUTER_MAX_MEMBERS 256

typedef struct router_member {
	char name[ROUTER_NAME_MAX + 1];
	int role; /* SP_ROLE_* */
	char addr[256];
	char host[256]; /* connsrv: client listener; "" otherwise */
	uint16_t port;
	uint32_t shard; /* inbox only */
	bool healthy;
	bool draining;   /* connsrv only */
	uint64_t conns;  /* as last heartbeated */
	uint64_t placed; /* clients sent here by /where since that heartbeat */
	uint64_t last_hb; /* ms (caller's clock) of the last heartbeat; 0: never */
	/* Inbox and keysrv copies, as etcd last said (router_map_apply_group); all unset
	 * until then. */
	bool repl_known;      /* etcd has been read for this copy's group */
	bool primary;         /* holds the group's leader key */
	bool in_sync;         /* in the group's sync set (name, and incarnation when known) */
	uint64_t lsn;         /* flushed LSN from its copies/ key; 0 when it has none */
	uint64_t shard_epoch; /* the group's epoch */
} router_member;

typedef struct router_map router_map;

/* Loads a cluster file (INI: one section per member; keys role, addr, client, shard).
 * Inbox members that share a shard number are that shard's copies (at most
 * REPL_HA_MAX_COPIES each).
 * router_map_parse does the same from text, `src` naming it in messages. Every member
 * starts unhealthy, epoch 0 (see router_map_state_load). On SP_ECONFIG `err` holds a
 * one-line message. On SP_OK *out is the caller's (router_map_free). */
int router_map_load(const char *path, router_map **out, char *err, size_t errlen);
int router_map_parse(const char *text, const char *src, router_map **out, char *err,
		     size_t errlen);
void router_map_free(router_map *m);

/* Heartbeat timeout in ms (default 3000). */
void router_map_set_timeout(router_map *m, uint64_t ms);

/* The wall clock used for epochs (default sp_time_ms); tests pass their own. */
void router_map_set_wall_clock(router_map *m, uint64_t (*wall_ms)(void));

uint64_t router_map_epoch(const router_map *m);
size_t router_map_count(const router_map *m);
const router_member *router_map_member(const router_map *m, size_t i);
const router_member *router_map_find(const router_map *m, const char *name);

/* Loads the state file if it exists (a missing one is a first start) and sets the epoch
 * past every epoch the previous run can have published: max(saved + 1, wall clock).
 * Draining names not in the cluster file are dropped with a warning. SP_ECONFIG with
 * `err` set when the file is unreadable or malformed. */
int router_map_state_load(router_map *m, const char *path, char *err, size_t errlen);

/* Writes the epoch and draining names to `path` atomically (temporary file, fsync,
 * rename, fsync of the directory). SP_OK or SP_EIO. */
int router_map_state_save(const router_map *m, const char *path);

/* A heartbeat from `name`. SP_OK, SP_ENOTFOUND (no such member) or SP_EINVAL (the member
 * has another role). *changed is set when the member became healthy (epoch bumped). */
int router_map_heartbeat(router_map *m, const char *name, int role, uint64_t conns,
			 uint64_t now_ms, bool *changed);

/* Marks unhealthy every healthy member silent for the timeout. Returns true when
 * something changed (epoch bumped once). */
bool router_map_tick(router_map *m, uint64_t now_ms);

/* Sets a connsrv's draining flag. SP_OK (*changed when it flipped, epoch bumped),
 * SP_ENOTFOUND, or SP_EINVAL for a member that is not a connsrv. */
int router_map_set_draining(router_map *m, const char *name, bool draining, bool *changed);

/* The healthy, non-draining connsrv with the fewest connections (counting the clients
 * already sent to it since its last heartbeat, so a burst spreads out; ties go to the
 * first in the cluster file), or NULL. Counts the placement. */
const router_member *router_map_where(router_map *m);

/* The distinct inbox shard numbers, ascending: up to `cap` into `out`; returns how many
 * there are. */
size_t router_map_shards(const router_map *m, uint32_t *out, size_t cap);

/* Whether any member is a keysrv (whose copies form the group REPL_HA_KEYS_GROUP). */
bool router_map_has_keysrv(const router_map *m);

/* What router_map_apply_group found. */
#define ROUTER_SHARD_CHANGED 1 /* a primary, sync set membership or epoch changed (or etcd
				  was read for the first time): the epoch was bumped */
#define ROUTER_SHARD_STATUS 2  /* only LSNs changed: no bump (the caller republishes
				  them at its own pace, router_map_bump) */

/* Applies etcd's view of a group to its copies: an inbox shard's (role SP_ROLE_INBOX,
 * group inbox-<shard>) or the key store's (SP_ROLE_KEYSRV, every keysrv member; shard
 * ignored). Primary
 * (the leader key names it), in_sync (in the sync set by name; by incarnation too when
 * the copy's status key is there), lsn (its flushed LSN, 0 without a status key) and the
 * shard's epoch (the leader's; with no leader, the last leader's: max(the epoch counter,
 * its mod revision, the sync set's epoch), which every reader computes alike). Copies etcd names that are not in
 * the cluster file are ignored. *what gets ROUTER_SHARD_* bits. SP_ENOTFOUND when no
 * member is in the group. */
struct repl_ha_view;
int router_map_apply_group(router_map *m, int role, uint32_t shard, const struct repl_ha_view *v,
			   unsigned *what);

/* Bumps the epoch (after changes that do not bump it themselves: LSNs). */
void router_map_bump(router_map *m);

/* Appends the MAP frame (with request id `id` when has_id) to `sb`. SP_OK or the codec's
 * error (SP_ETOOBIG: the map does not fit in one frame). */
int router_map_pack(const router_map *m, uint64_t id, bool has_id, msgpack_sbuffer *sb);

/* The MAP frame with epoch 0 and no request id: the map's content, which routers sharing
 * etcd store there and compare (router/store.c). */
int router_map_pack_content(const router_map *m, msgpack_sbuffer *sb);

#endif
