/*
 * One copy of a replicated group (an inbox shard, the key store): the replication
 * mechanism with the state machine plugged in (docs/REPLICATION.md). It puts together the
 * log (log.h), the primary's commit tracker (sync.h), the leader key and fencing in etcd
 * (ha.h) and snapshots (snapshot.h):
 *   - the primary's writer hands it each batch's records (repl_node_replicate): they are
 *     logged, fsynced, shipped and acknowledged by the sync set before the call returns;
 *   - replicas fetch the log from the primary's replication endpoint, fsync it, and hand
 *     committed records to the state machine to apply (repl_node_sm.apply);
 *   - failover, fencing, sync-set changes in etcd, retention and snapshots run inside.
 * The state machine owns the store. Its ops must be deterministic given the store and the
 * record ("effects, not requests"), and its store must hold its LSN in the same commit
 * as each op.
 *
 * Roles. The HA loop decides, through etcd, whether this copy is primary:
 *  - REPLICA: a follower thread fetches records from the primary (frames_repl.def),
 *    appends them to the log, fsyncs, and with its next fetch acknowledges; it hands
 *    records to the store only up to the commit LSN the primary sends. Requests are
 *    answered SP_ENOTPRIMARY (repl_node_gate).
 *  - STARTING: won the leader key. Nothing is served (SP_EUNAVAIL) until the sync set
 *    holds the whole log (its uncommitted tail included: the winner's log wins) and the
 *    tail is in the store.
 *  - PRIMARY: writes are admitted only while the copies that make a commit are reachable;
 *    repl_node_replicate returns once the commit LSN covers the batch; reads are served
 *    only while the lease cannot have expired. A primary that loses its lease is fenced
 *    (repl_ha_may_serve turns false at its deadline): a waiting replicate ends with
 *    SP_ENOTPRIMARY.
 *
 * Threads: repl_node_replicate and repl_node_admit on the state machine's writer thread;
 * repl_node_applied on whatever thread completes applies (in LSN order); repl_node_gate,
 * repl_node_primary_name and repl_node_restart_wanted on any thread. The callbacks run on
 * the node's threads (apply on the follower's or the manager's, store_sync on the thread
 * that writes the log).
 */
#ifndef REPL_NODE_H
#define REPL_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "repl/log.h"
#include "repl/snapshot.h"

typedef struct repl_node repl_node;

typedef struct repl_node_sm {
	void *arg;
	/* The store's LSN: its last applied op (SP_OK or an error). */
	int (*store_lsn)(void *arg, uint64_t *lsn);
	/* Makes every applied op durable in the store (before the log drops their records). */
	int (*store_sync)(void *arg);
	/* A replica's (or a promoting primary's) committed records, contiguous and in order,
	 * valid during the call: the store applies them, asynchronously, calling
	 * repl_node_applied once they are in the store (for each, or for the last of the
	 * call only: the applied LSN is a high-water mark), in LSN order. An error is
	 * fatal (the copy exits and must be rebuilt). */
	int (*apply)(void *arg, repl_node *node, const repl_log_rec *recs, size_t n);
	/* The writer waits for a commit the sync set cannot give now: ops queued behind the
	 * waiting batch are answered `rc` (SP_EUNAVAIL) instead of waiting. May be NULL. */
	void (*fail_queued)(void *arg, int rc);
	/* Snapshots: a consistent copy of the store written to `fd` (the file at `path`), and
	 * the LSN it holds. */
	int (*snapshot_copy)(void *arg, int fd, const char *path, uint64_t *lsn);
} repl_node_sm;

typedef struct repl_node_config {
	const char *data_dir; /* the log goes in <data_dir>/repl, snapshots next to the store */
	const char *etcd; /* comma-separated etcd endpoints (http://host:port, https://...) */
	const char *etcd_ca, *etcd_cert, *etcd_key; /* PEM files for https and client auth */
	const char *etcd_user, *etcd_password; /* etcd with auth enabled (NULL: none) */
	const char *cluster; /* etcd key prefix: /sealpost/<cluster>/<group>/ */
	const char *group; /* e.g. "inbox-3", "keys-0" */
	const char *name; /* this copy's member name */
	const char *listen; /* NNG URL replicas fetch from */
	const char *advertise; /* URL other copies dial (NULL: listen) */
	const char *peer_ca; /* CAs a copy fetching over tls+tcp:// must chain to (NULL: the
			      * process's internal CA bundle, sp_nng_tls_init) */
	const char *metric_prefix; /* e.g. "sp_inbox_repl": <prefix>_role, ... */
	const repl_snap_files *files; /* the store's file names (snapshot.h) */
	unsigned min_copies; /* fsynced copies a write needs, this one included */
	int64_t lease_ttl_s; /* 0: 5 */
	uint64_t lag_ms; /* a sync-set copy silent this long is dropped (0: 1000) */
	uint64_t fetch_wait_ms; /* a fetch's long-poll (0: 200) */
	uint32_t segment_bytes; /* log segment size (0: 64 MiB); retention drops whole ones */
	uint64_t retain_bytes; /* log kept past what every copy applied, for late copies */
	uint64_t snapshot_rate; /* snapshot bytes served per second (0: no limit) */
	/* Replicas serve no reads (the inbox): a fetch's long-poll ends on new records only,
	 * so the commit LSN rides on the next records (or the long-poll's end) instead of
	 * costing each replica a round trip of its own per batch, and a replica applies to
	 * its store in steps (APPLY_EVERY_MS), not once per fetch. repl_node_read_fresh is
	 * then never SP_OK. */
	bool lazy_commit;
	const repl_snap_boot_result *boot; /* what the start-up's snapshot did (metrics) */
} repl_node_config;

/* Opens the log (checking it against the store: a store ahead of its log, or a log
 * without its store, is refused: SP_ESTORE, the copy must be rebuilt from an empty
 * data dir), registers the metrics and makes the etcd client. Nothing runs yet. `sm` is
 * copied. */
int repl_node_open(repl_node **out, const repl_node_config *cfg, const repl_node_sm *sm);

/* Starts the threads (the replication endpoint, the follower, the manager, the HA loop). */
int repl_node_start(repl_node *n);

/* The writer, before it applies a batch of new ops: SP_OK, or the error every op of the
 * batch gets (nothing is written). */
int repl_node_admit(repl_node *n);

/*
 * The writer, after it applied a batch in its still-open transaction: `recs` are the
 * batch's records, their lsn set by the store (each the previous + 1, following the log),
 * their epoch set here. Returns SP_OK once they are fsynced on every copy the commit
 * needs: then the writer commits and answers. Any other result (SP_ENOTPRIMARY: fenced or
 * deposed meanwhile) means the writer aborts its transaction; the records stay in the log
 * as an uncommitted tail.
 */
int repl_node_replicate(repl_node *n, repl_log_rec *recs, size_t nrec);

/* The store holds the op at `lsn` (in LSN order). */
void repl_node_applied(repl_node *n, uint64_t lsn);

/* Whether this copy may serve a request now (a write: is primary and may accept writes;
 * a read: is primary and its lease holds): SP_OK, SP_ENOTPRIMARY or SP_EUNAVAIL. */
int repl_node_gate(repl_node *n, bool write);

/* Whether this replica may serve a read that tolerates staleness (SP_OK), else
 * SP_ENOTPRIMARY: its store holds everything its primary had acknowledged when this copy
 * sent a fetch at most max_age_ms ago, and that primary vouched for its commit LSN (it was
 * primary past its start, its lease holding, as it answered). So a write acknowledged more
 * than max_age_ms ago is visible here, whatever happened since (a failover, a partition).
 * Any thread. */
int repl_node_read_fresh(repl_node *n, uint64_t max_age_ms);

/* The primary's name (when known) into buf, "" otherwise. */
void repl_node_primary_name(repl_node *n, char *buf, size_t cap);

/* True once the copy found its place in the primary's log gone: it marked its data dir for
 * a snapshot and raised SIGTERM; the process stops cleanly and starts again (the start-up
 * installs the snapshot, snapshot.h). */
bool repl_node_restart_wanted(repl_node *n);

/* Stops every thread (the HA loop without resigning: the lease runs out, as after a crash,
 * unless `resign`). A writer waiting in repl_node_replicate gets SP_ENOTPRIMARY. */
void repl_node_stop(repl_node *n, bool resign);
void repl_node_free(repl_node *n);

/* Whether the replication endpoint serves request frames of `type`. */
bool repl_node_serves(unsigned type);

#endif
