/*
 * Snapshots of a replicated group's store (docs/REPLICATION.md "Snapshots"). The store is
 * one file in the data dir (an LMDB environment's data.mdb, say), made by a callback.
 *
 * The primary's side (repl_snap_src): on a copy's first REPL_SNAP_GET it makes a
 * consistent, compacted copy of its LMDB environment in a file of its data dir (on a thread
 * of its own; the asker polls meanwhile), learns the LSN the copy holds and that record's
 * epoch, and serves the file in chunks by offset. Its LSN pins the log (repl_snap_pin):
 * the records after it stay until every copy that downloaded it fetches the log from there
 * (repl_snap_fetched), or it goes unused for REPL_SNAP_KEEP_MS and is deleted.
 *
 * The new copy's side (repl_snap_bootstrap) runs at start-up, before the store is opened:
 * a copy whose data dir holds no store and no log (new or emptied), or one marked by
 * repl_snap_mark_needed (its place in the primary's log is gone), downloads a snapshot
 * from the shard's primary (found in etcd), checks its SHA-256, and installs it: a log
 * whose trim point is the snapshot's (epoch, lsn), then the file as the store. Every step
 * is redone from the start after a crash: a partial download is discarded, and a complete
 * one not yet installed is installed again.
 *
 * Threads: repl_snap_serve runs on the replication endpoint's serving threads (any number
 * at once); repl_snap_pin and repl_snap_expire on any thread.
 */
#ifndef REPL_SNAPSHOT_H
#define REPL_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include <nng/nng.h>

#include "repl/log.h"
#include "sp_etcd.h"
#include "sp_frame.h"
#include "sp_metrics.h"

#define REPL_SNAP_CHUNK (512u << 10) /* bytes of data per REPL_SNAP_CHUNK */
#define REPL_SNAP_KEEP_MS 60000 /* a snapshot unused this long is deleted */
#define REPL_SNAP_REUSE_MS 30000 /* a new download reuses a snapshot made this recently */
#define REPL_SNAP_MARKER "needs-snapshot"

typedef struct repl_snap_src repl_snap_src;

/* The store's files in its data dir: the file a snapshot replaces, and a lock file that
 * goes with it (removed at install; NULL if none). */
typedef struct repl_snap_files {
	const char *store, *store_lock;
} repl_snap_files;

/* Writes a consistent copy of the store to `fd` (the file at `path`) and sets *lsn to the
 * LSN it holds (its last applied op). SP_OK or an error. */
typedef int (*repl_snap_copy_fn)(void *arg, int fd, const char *path, uint64_t *lsn);

/* `data_dir` is the store's (the snapshot file is made there); `log` is borrowed and
 * outlives the source. rate_bytes: most bytes served per second (0: no limit). `made` and
 * `sent` count snapshots made and bytes sent (may be NULL). A snapshot file left by a
 * crashed process is removed. SP_OK, SP_EINVAL, SP_ENOMEM. */
int repl_snap_src_new(repl_snap_src **out, const char *data_dir, repl_snap_copy_fn copy,
    void *copy_arg, repl_log *log, uint64_t rate_bytes, sp_metric *made, sp_metric *sent);
/* Waits for a snapshot being made, removes the file, frees. NULL is a no-op. */
void repl_snap_src_free(repl_snap_src *s);

/* The answer to one REPL_SNAP_GET (the caller checked this copy leads). May sleep to keep
 * to the rate. NULL only when no reply could be built (out of memory). */
nng_msg *repl_snap_serve(repl_snap_src *s, const sp_frame *req);

/* The lowest LSN after which a snapshot being made or served needs the log's records
 * (UINT64_MAX: none). */
uint64_t repl_snap_pin(repl_snap_src *s);

/* A copy named `name` fetches the log after `last_lsn` (serve_fetch): once every copy
 * that downloaded the snapshot does so from its LSN on, the snapshot pins nothing. */
void repl_snap_fetched(repl_snap_src *s, const char *name, uint64_t last_lsn);

/* Deletes a snapshot unused for REPL_SNAP_KEEP_MS, and every snapshot when `all`. */
void repl_snap_expire(repl_snap_src *s, uint64_t now_ms, bool all);

/* What a start-up did: installed a snapshot of `bytes` in `ms`. */
typedef struct repl_snap_boot_result {
	bool installed;
	uint64_t bytes, ms;
} repl_snap_boot_result;

typedef struct repl_snap_boot_cfg {
	const char *data_dir;
	const repl_snap_files *files;
	const sp_etcd_cfg *etcd; /* endpoints; timeout */
	const char *cluster, *group, *name;
	/* Ends the wait for a primary and the download: checked between steps (a signal the
	 * caller blocked is pending). NULL: never. */
	bool (*stop)(void *arg);
	void *stop_arg;
} repl_snap_boot_cfg;

/*
 * Start-up: installs a snapshot if this copy needs one (see above). SP_OK when the data dir
 * is ready for the store and the log (with a snapshot installed, or none needed: a copy
 * with data of its own, or a new shard with no history in etcd); SP_ECLOSED when `stop`
 * said so; SP_ESTORE / SP_EIO when the data dir cannot be prepared.
 */
int repl_snap_bootstrap(const repl_snap_boot_cfg *cfg, repl_snap_boot_result *result);

/* Marks the data dir (durably) so that the next start-up replaces the store and log with a
 * snapshot. SP_OK or SP_EIO. */
int repl_snap_mark_needed(const char *data_dir);

#endif
