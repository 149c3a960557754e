/*
 * A replicated shard copy (issue 12; docs/REPLICATION.md): the inbox store and its
 * group-commit writer plugged into the replication mechanism (repl/node.h, which has the
 * roles, threads and protocol). The writer's hooks (inbox_commit_repl) admit a batch and
 * hand its applied ops, encoded as effect records (oplog.h), to the node, which returns
 * once the sync set holds them; a replica's committed records are decoded and replayed
 * through the same writer, each checked against the outcome the primary recorded.
 */
#ifndef INBOX_REPL_H
#define INBOX_REPL_H

#include <stdbool.h>
#include <stdint.h>

#include "commit.h"
#include "repl/snapshot.h"
#include "store.h"

typedef struct inbox_repl inbox_repl;

typedef struct inbox_repl_config {
	const char *data_dir; /* the log goes in <data_dir>/repl */
	const char *etcd; /* comma-separated etcd endpoints (http://host:port, https://...) */
	const char *etcd_ca, *etcd_cert, *etcd_key; /* PEM files for https and client auth */
	const char *cluster; /* etcd key prefix: /sealpost/<cluster>/inbox-<shard>/ */
	uint64_t shard;
	const char *name; /* this copy's member name */
	const char *listen; /* NNG URL replicas fetch from */
	const char *advertise; /* URL other copies dial (NULL: listen) */
	unsigned min_copies; /* fsynced copies a write needs, this one included */
	int64_t lease_ttl_s; /* 0: 5 */
	uint64_t lag_ms; /* a sync-set copy silent this long is dropped (0: 1000) */
	uint64_t fetch_wait_ms; /* a fetch's long-poll (0: 200) */
	uint32_t segment_bytes; /* log segment size (0: 64 MiB); retention drops whole ones */
	uint64_t retain_bytes; /* log kept past what every copy applied, for late copies */
	uint64_t snapshot_rate; /* snapshot bytes served per second (0: no limit) */
	const char *peer_ca; /* CAs a copy fetching over tls+tcp:// must chain to (NULL: the
			      * process's internal CA bundle, sp_nng_tls_init) */
	const repl_snap_boot_result *boot; /* what the start-up's snapshot did (metrics) */
} inbox_repl_config;

/* The shard's store files, for the snapshot start-up (repl/snapshot.h). */
extern const repl_snap_files inbox_repl_files;

/* Opens the log (checking it against the store: a store ahead of its log, or a log
 * without its store, is refused: SP_ESTORE, the copy must be rebuilt from an empty
 * data dir) and makes the etcd client. Nothing runs yet. */
int inbox_repl_open(inbox_repl **out, const inbox_repl_config *cfg, inbox_store *store);

/* The hooks for the commit writer (valid while `r` lives). */
const inbox_commit_repl *inbox_repl_hooks(inbox_repl *r);

/* Starts the threads; `c` is the writer the replayed ops go through (it must have been
 * started with inbox_repl_hooks(r)). */
int inbox_repl_start(inbox_repl *r, inbox_commit *c);

/* The dispatch gate: SP_OK if this copy may serve a request now (a write: is primary and
 * may accept writes; a read: is primary and its lease holds), else the error to answer
 * (SP_ENOTPRIMARY, SP_EUNAVAIL). Any thread. */
int inbox_repl_gate(void *r, bool write);

/* Writes the primary's name (when known) into buf, "" otherwise. Any thread. */
void inbox_repl_primary_name(inbox_repl *r, char *buf, size_t cap);

/* Stops every thread (the HA loop without resigning: the lease runs out, as after a
 * crash, unless `resign`). Writes waiting in the writer end with SP_ENOTPRIMARY. */
void inbox_repl_stop(inbox_repl *r, bool resign);
void inbox_repl_free(inbox_repl *r);

/* True once the copy found its place in the primary's log gone: it marked its data dir
 * for a snapshot and raised SIGTERM; the caller stops cleanly and starts again (the
 * start-up installs the snapshot, inboxsrv/snapshot.h). Any thread. */
bool inbox_repl_restart_wanted(inbox_repl *r);

/* Whether the replication endpoint serves request frames of `type`. */
bool inbox_repl_serves(unsigned type);

#endif
