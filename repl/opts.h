/*
 * The options of a replicated tier (inboxsrv, keysrv), in one place: the table entries,
 * their check, the process's internal TLS identity, the snapshot start-up and the node
 * configuration they make (docs/REPLICATION.md "Running a replicated shard").
 */
#ifndef REPL_OPTS_H
#define REPL_OPTS_H

#include <stdbool.h>

#include "repl/node.h"
#include "repl/snapshot.h"
#include "sp_config.h"
#include "sp_internal.h"

typedef struct repl_opts {
	char *etcd, *etcd_cluster, *etcd_ca, *etcd_cert, *etcd_key;
	char *etcd_user, *etcd_password_file;
	char *etcd_password; /* read from the file by repl_opts_start (freed by repl_opts_fini) */
	char *listen, *advertise, *peer_ca;
	sp_internal_opts internal; /* --internal-* and --insecure-internal */
	long long min_copies, lease_ttl, lag_ms;
	size_t segment, retain, snapshot_rate;
} repl_opts;

/* A new option table: `tier`'s entries (up to its {NULL} end), then the replication ones
 * bound to `o`, then the end. The caller frees it (free) after sp_config_free. NULL when
 * out of memory. */
sp_config_opt *repl_opts_table(const sp_config_opt *tier, repl_opts *o);

/* True when --etcd was given: the process is one copy of a replicated group. */
bool repl_opts_on(const repl_opts *o);

/* Checks the options (--etcd needs `name` and --repl-listen), applies the internal-link
 * options (sp_internal_start) to the tier's internal URLs `tier_urls` (NULL-terminated;
 * its listener, its routers) and the replication ones, and fills `cfg` (all but group,
 * metric prefix, files and boot; --repl-peer-ca defaults to --internal-ca; the etcd
 * password read from --etcd-password-file). SP_OK or
 * SP_ECONFIG / SP_EIO (logged). */
int repl_opts_start(repl_opts *o, const char *data_dir, const char *name,
    const char *const *tier_urls, repl_node_config *cfg);

/* Frees what repl_opts_start read (the etcd password, wiped). */
void repl_opts_fini(repl_opts *o);

/* The snapshot start-up (repl_snap_bootstrap) for this copy of `group`; it ends early when
 * SIGTERM or SIGINT (blocked by the caller) is pending. */
int repl_opts_bootstrap(repl_opts *o, const char *data_dir, const char *group,
    const char *name, const repl_snap_files *files, repl_snap_boot_result *result);

#endif
