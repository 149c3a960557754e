/*
 * The HA arbiter of a replicated group (an inbox shard, keysrv): who is primary, decided
 * in etcd as Patroni does for PostgreSQL. See docs/REPLICATION-HA.md for the argument.
 *
 * Keys, under /sealpost/<cluster>/<group>/ (values are JSON unless said otherwise):
 *   leader        {"name","inc","url","counter"}, attached to the holder's lease. The
 *                 holder's epoch is max(the key's create revision, counter).
 *   epoch         the group's epoch counter, a decimal number; only grows.
 *   sync          {"epoch": E of the primary that wrote it (0: written when the group
 *                 was created), "members": [{"name","inc"}...]}.
 *   copies/<name> {"inc","url","role","epoch","last_epoch","last_lsn","flushed_lsn"},
 *                 attached to that copy's own lease: a dead copy's key goes with it.
 * "inc" is the copy's storage incarnation in hex; a copy is (name, incarnation).
 *
 * Threads. A repl_ha belongs to one thread: the caller's while it drives the calls below
 * itself, the loop's once repl_ha_loop_start ran. These are safe from any thread at any
 * time: repl_ha_may_serve and repl_ha_epoch (atomic loads), repl_ha_self, repl_ha_sync_set
 * (it has an etcd client and a lock of its own) and repl_ha_loop_view.
 *
 * Errors are 0 or negative SP_E* codes; etcd failures come through as sp_etcd gives them
 * (SP_EUNAVAIL, SP_ETIMEDOUT, ...).
 */
#ifndef REPL_HA_H
#define REPL_HA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sp_etcd.h"

/* The key store's group (one shard now: docs/KEYSRV.md "Sharding the key store later"). */
#define REPL_HA_KEYS_GROUP "keys-0"
#define REPL_HA_NAME_MAX 63   /* member, group and cluster names: [A-Za-z0-9._-] */
#define REPL_HA_INC_MAX 32    /* incarnation bytes */
#define REPL_HA_URL_MAX 255
#define REPL_HA_MAX_COPIES 16 /* copies and sync-set members a group may have */

typedef struct repl_ha repl_ha;

typedef struct repl_ha_cfg {
	sp_etcd_cfg etcd;     /* timeout_ms 0: the keepalive interval */
	const char *cluster;  /* e.g. "prod" */
	const char *group;    /* e.g. "inbox-0", "keysrv" */
	const char *name;     /* this copy's member name, unique in the group */
	const uint8_t *inc;   /* this copy's storage incarnation (made with its data dir) */
	size_t inc_len;       /* 1..REPL_HA_INC_MAX */
	const char *url;      /* where replicas reach this copy when it is primary */
	int64_t lease_ttl_s;  /* 0: 5 */
	int64_t keepalive_ms; /* 0: TTL/5 */
	int64_t margin_ms;    /* fencing margin; 0: 1000 */
	int64_t defer_max_ms; /* how long a candidate defers to a more advanced one; 0: TTL/2 */
} repl_ha_cfg;

typedef enum { REPL_HA_NONE, REPL_HA_PRIMARY, REPL_HA_REPLICA } repl_ha_role;

/* A log position. Ordered by epoch, then lsn. */
typedef struct repl_ha_pos {
	int64_t epoch;
	uint64_t lsn;
} repl_ha_pos;

/* A copy's identity: its name and the incarnation of its data dir. */
typedef struct repl_ha_id {
	char name[REPL_HA_NAME_MAX + 1];
	uint8_t inc[REPL_HA_INC_MAX];
	size_t inc_len;
} repl_ha_id;

typedef struct repl_ha_leader {
	bool present;
	bool parsed;  /* false: the key exists but its value is not ours (it still counts) */
	repl_ha_id id;
	char url[REPL_HA_URL_MAX + 1];
	int64_t epoch; /* max(create_rev, counter) */
	int64_t counter;
	int64_t create_rev, mod_rev, lease;
} repl_ha_leader;

typedef struct repl_ha_sync {
	bool present;
	int64_t epoch; /* of the primary that wrote it; 0 when written at the group's creation */
	size_t n;
	repl_ha_id members[REPL_HA_MAX_COPIES];
	int64_t create_rev, mod_rev; /* 0 when absent */
} repl_ha_sync;

/* What a copy publishes about itself. */
typedef struct repl_ha_status {
	repl_ha_role role;
	int64_t epoch;        /* the highest epoch this copy has seen (leads or follows) */
	repl_ha_pos last;     /* of the last entry in its log */
	uint64_t flushed_lsn; /* fsynced up to */
} repl_ha_status;

typedef struct repl_ha_copy {
	repl_ha_id id;
	char url[REPL_HA_URL_MAX + 1];
	repl_ha_status status;
	int64_t create_rev, mod_rev, lease;
} repl_ha_copy;

/* A snapshot of the group, read in one range request: every part is as of `rev`. A plain
 * value (no heap), copied freely. */
typedef struct repl_ha_view {
	int64_t rev; /* etcd's header revision of the read */
	repl_ha_leader leader;
	int64_t counter;         /* the epoch key's value, 0 when absent */
	int64_t counter_mod_rev; /* 0 when absent */
	repl_ha_sync sync;
	size_t ncopies;
	repl_ha_copy copies[REPL_HA_MAX_COPIES]; /* in name order; copies beyond the cap
						    are left out (and logged) */
} repl_ha_view;

/* Checks and copies cfg (all strings, the incarnation) and makes the etcd clients; talks
 * to etcd only later. SP_ECONFIG when the settings cannot fence in time (keepalive
 * interval + etcd timeout must stay below TTL - margin). On SP_OK the caller owns *out. */
int repl_ha_new(const repl_ha_cfg *cfg, repl_ha **out);
/* A reader of the group: no name, incarnation or lease, for observers such as the router
 * that mirror a group without being a copy of it. Only repl_ha_read and repl_ha_wait may be
 * called on it (and repl_ha_free); the calls that act as a copy answer SP_EPERM, and
 * repl_ha_may_serve is false. `etcd` is copied (timeout_ms 0: sp_etcd's default). On SP_OK
 * the caller owns *out; SP_EINVAL for a bad cluster or group name. */
int repl_ha_new_reader(const sp_etcd_cfg *etcd, const char *cluster, const char *group,
		       repl_ha **out);
/* Stops the loop if it runs, then frees. Does not revoke the lease: a crash does not
 * either; call repl_ha_resign first for a clean handover. NULL is a no-op. */
void repl_ha_free(repl_ha *ha);

/* CLOCK_BOOTTIME in ms: the clock of every deadline here (it counts a suspended host or a
 * stopped process, which CLOCK_MONOTONIC may not). */
int64_t repl_ha_now_ms(void);

/* Publishes this copy's status in copies/<name> under its lease. The first etcd work of a
 * process (this, campaign or renew) starts afresh: it revokes the lease a previous process
 * of the same name held (found on its copies/ key and on the leader key), so its leader
 * key goes at once. That is safe only if that process is dead: revoking the lease of a
 * live one cuts its fencing deadline short. The caller must therefore hold an exclusive
 * lock on its data dir (which a second process of the same copy cannot take) before the
 * first call. A lost lease is replaced by a new one (the key is then written again). */
int repl_ha_publish(repl_ha *ha, const repl_ha_status *status);

/* Reads the whole group into *view. SP_EPROTO when the sync key cannot be parsed (nobody
 * can then decide who may campaign: an operator must look). */
int repl_ha_read(repl_ha *ha, repl_ha_view *view);

/* Tries to take the leader key. The transaction compares: the leader key absent, the sync
 * key's mod revision and the epoch counter's mod revision as read in `view`; it puts the
 * leader key on this copy's lease and the counter bumped past every epoch known (`mine`,
 * the view's sync set and copies). On SP_OK *epoch is this primary's epoch and
 * repl_ha_may_serve turns true. Otherwise: SP_EEXIST a leader holds the key, SP_EPERM this
 * copy (name and incarnation) is not in the sync set (or the group lost its sync key),
 * SP_ESTATE the view was stale (the sync set or counter changed since it was read), or an
 * etcd error: then the outcome is unknown, and the key may hold this copy's name without
 * it serving; a later read shows it, and the copy must resign it (the loop does). A group with no sync key and no counter is new: the first campaign also
 * writes sync = {this copy}. Renews the lease first, so the fencing deadline is fresh. */
int repl_ha_campaign(repl_ha *ha, const repl_ha_view *view, repl_ha_pos mine, int64_t *epoch);

/* One lease keepalive. The request's send time (CLOCK_BOOTTIME) + the granted TTL - the
 * margin becomes the fencing deadline when it succeeds. SP_ENOTFOUND: the lease expired
 * (this copy is no longer primary and its status key is gone). */
int repl_ha_renew(repl_ha *ha);

/* True only while this copy holds the leader key (as far as it knows) and now_ms <
 * send time of the last good keepalive + granted TTL - margin: etcd cannot have let the
 * lease expire yet. Check right before acknowledging a write or serving a read. Any
 * thread. */
bool repl_ha_may_serve(const repl_ha *ha, int64_t now_ms);

/* This copy's epoch while primary, else 0. Any thread. */
int64_t repl_ha_epoch(const repl_ha *ha);

/* Sets the sync set to members[0..n) (this primary among them), by a transaction that
 * compares the leader key's create revision with this primary's and the sync key's mod
 * revision with view->sync.mod_rev. On SP_OK view->sync holds the new set and revision.
 * SP_EPERM: not (or no longer) primary; SP_ESTATE: the sync key changed since `view`;
 * SP_EINVAL: this copy not among members, a duplicate, or too many. SP_ETIMEDOUT: the
 * outcome is unknown (the request may have been applied): act as if the larger of the
 * old and new sets holds until a fresh read shows which does. The caller orders a change
 * as Patroni does: a copy is added locally first and here after; removed here first and
 * locally after. Any thread (one call at a time; they are serialised). */
int repl_ha_sync_set(repl_ha *ha, repl_ha_view *view, const repl_ha_id *members, size_t n);

/* Gives up: revokes the lease, so the leader key (if held) and the status key go now.
 * may_serve turns false before the request is sent. */
int repl_ha_resign(repl_ha *ha);

/* The primary cannot go on in this term (a batch was logged but not acknowledged when its
 * fencing deadline passed, so its log holds a tail its store does not): may_serve turns
 * false now and stays false even if the lease is renewed after all, and the HA loop
 * fences (resigns) at its next turn, so that a new term settles the tail (the promotion
 * re-replicates it). Any thread. */
void repl_ha_step_down(repl_ha *ha);

/* Waits until something under the group's prefix changes after view->rev, or max_ms.
 * SP_OK: *view is a fresh read (also after a compacted start revision: the watch could
 * not resume, so the state is read again). SP_ETIMEDOUT: nothing changed; *view is kept. */
int repl_ha_wait(repl_ha *ha, repl_ha_view *view, long max_ms);

/* ---- candidate preference (pure) ---- */

typedef enum {
	REPL_HA_GO,        /* campaign now */
	REPL_HA_LEADER,    /* a leader holds the key */
	REPL_HA_INELIGIBLE,/* not in the sync set by name and incarnation */
	REPL_HA_DEFER,     /* a live sync member is more advanced: wait (bounded) */
} repl_ha_choice;

/* Whether `me` at `mine` should campaign now on `view`. A sync member defers while another
 * sync member whose copies/ key is present (same incarnation) has a higher (epoch, lsn),
 * until it has deferred for defer_max_ms (deferred_ms: how long it has so far). In a new
 * group (no sync key, no counter) every copy is eligible. */
repl_ha_choice repl_ha_choose(const repl_ha_view *view, const repl_ha_id *me, repl_ha_pos mine,
			      int64_t deferred_ms, int64_t defer_max_ms);

/* -1, 0, 1 as a < b, a == b, a > b. */
int repl_ha_pos_cmp(repl_ha_pos a, repl_ha_pos b);
/* Whether `id` is in the view's sync set (name and incarnation). */
bool repl_ha_in_sync(const repl_ha_view *view, const repl_ha_id *id);
/* This copy's identity, as configured. */
const repl_ha_id *repl_ha_self(const repl_ha *ha);

/* ---- the HA loop ---- */

/* Called on the loop's thread, in order, never concurrently; they must not call into this
 * repl_ha other than the any-thread calls. `status` is asked for once per iteration (at
 * least every keepalive interval) and published when it changed. */
typedef struct repl_ha_callbacks {
	void (*status)(void *arg, repl_ha_status *out);
	/* Won the campaign: may_serve is true from now (until fenced). */
	void (*primary)(void *arg, int64_t epoch, const repl_ha_view *view);
	/* Another copy holds the leader key (each new holder once). */
	void (*following)(void *arg, const repl_ha_leader *leader);
	/* No longer primary (lease lost, deadline passed, key gone or resigned): may_serve
	 * already answers false; this only tells the caller to drop its primary state. It
	 * may come up to one etcd timeout after the deadline: the deadline, not this
	 * callback, is what fences. */
	void (*fenced)(void *arg, int64_t epoch);
	void *arg;
} repl_ha_callbacks;

/* Starts the HA loop on a thread of its own, which owns `ha` from now on. Each iteration:
 * renew the lease when due (every keepalive interval), check the fencing deadline,
 * publish the status if it changed, read the group, campaign when the leader key is gone
 * and this copy should (repl_ha_choose), report role changes, then watch the group until
 * something changes or the next keepalive is due. `cbs` is copied. */
int repl_ha_loop_start(repl_ha *ha, const repl_ha_callbacks *cbs);
/* Stops the loop and joins its thread (within about one keepalive interval plus one etcd
 * timeout). Does not resign. */
void repl_ha_loop_stop(repl_ha *ha);
/* A copy of the loop's latest view (any thread; SP_ESTATE before its first read). */
int repl_ha_loop_view(repl_ha *ha, repl_ha_view *view);

#endif
