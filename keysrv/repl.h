/*
 * keysrv as one copy of the replicated key store (issue 13; docs/REPLICATION.md): the
 * store's write transactions go through the replication mechanism (repl/node.h) as LMDB
 * effects (repl/lmdbfx.h); a replica applies the primary's. Only the primary serves
 * requests, but for reads that tolerate bounded staleness (keys_repl_gate; the others
 * answer SP_ENOTPRIMARY with the primary's name); it makes the
 * store's secret as a logged write when it first leads.
 */
#ifndef KEYS_REPL_H
#define KEYS_REPL_H

#include <stdbool.h>
#include <stddef.h>

#include "keysrv/store.h"
#include "repl/ha.h"
#include "repl/node.h"
#include "repl/snapshot.h"

typedef struct keys_repl keys_repl;

/* The key store's files, for the snapshot start-up. */
extern const repl_snap_files keys_repl_files;

/* The group's name in etcd. */
#define KEYS_REPL_GROUP REPL_HA_KEYS_GROUP

/* Opens the copy (repl_node_open with `cfg`, whose group, metric prefix and files this
 * sets) and hooks the store's commits into it. Nothing runs yet. */
int keys_repl_open(keys_repl **out, const repl_node_config *cfg, keys_store *store);
int keys_repl_start(keys_repl *r);

/* Whether this copy may serve now (SP_OK), or the error to answer, with the primary's name
 * (when known) in `primary`. Makes the store's secret the first time it leads. With
 * stale_ms > 0 the request is a read that tolerates that much staleness: a replica serves
 * it while repl_node_read_fresh(stale_ms) holds. */
int keys_repl_gate(keys_repl *r, uint64_t stale_ms, char *primary, size_t cap);

bool keys_repl_restart_wanted(keys_repl *r);
void keys_repl_stop(keys_repl *r, bool resign);
void keys_repl_free(keys_repl *r);

#endif
