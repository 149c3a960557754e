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
#include "repl/node.h"
#include "repl/snapshot.h"
#include "store.h"

typedef struct inbox_repl inbox_repl;

/* The shard's store files, for the snapshot start-up (repl/snapshot.h). */
extern const repl_snap_files inbox_repl_files;

/* Opens shard `shard`'s copy (repl_node_open with `cfg`, whose group, metric prefix and
 * files this sets: inbox-<shard>, sp_inbox_repl, inbox_repl_files). Nothing runs yet. */
int inbox_repl_open(inbox_repl **out, const repl_node_config *cfg, uint64_t shard,
    inbox_store *store);

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
 * start-up installs the snapshot, repl/snapshot.h). Any thread. */
bool inbox_repl_restart_wanted(inbox_repl *r);

/* Whether the replication endpoint serves request frames of `type`. */
bool inbox_repl_serves(unsigned type);

#endif
