/*
 * Snapshots of a replicated shard's store (docs/REPLICATION.md "Snapshots").
 *
 * The primary's side (inbox_snap_src): on a copy's first REPL_SNAP_GET it makes a
 * consistent, compacted copy of its LMDB environment in a file of its data dir (on a thread
 * of its own; the asker polls meanwhile), learns the LSN the copy holds and that record's
 * epoch, and serves the file in chunks by offset. Its LSN pins the log (inbox_snap_pin):
 * the records after it stay until every copy that downloaded it fetches the log from there
 * (inbox_snap_fetched), or it goes unused for INBOX_SNAP_KEEP_MS and is deleted.
 *
 * The new copy's side (inbox_snap_bootstrap) runs at start-up, before the store is opened:
 * a copy whose data dir holds no store and no log (new or emptied), or one marked by
 * inbox_snap_mark_needed (its place in the primary's log is gone), downloads a snapshot
 * from the shard's primary (found in etcd), checks its SHA-256, and installs it: a log
 * whose trim point is the snapshot's (epoch, lsn), then the file as the store. Every step
 * is redone from the start after a crash: a partial download is discarded, and a complete
 * one not yet installed is installed again.
 *
 * Threads: inbox_snap_serve runs on the replication endpoint's serving threads (any number
 * at once); inbox_snap_pin and inbox_snap_expire on any thread.
 */
#ifndef INBOX_SNAPSHOT_H
#define INBOX_SNAPSHOT_H

#include <stdbool.h>
#include <stdint.h>

#include <nng/nng.h>

#include "repl/log.h"
#include "sp_etcd.h"
#include "sp_frame.h"
#include "store.h"

#define INBOX_SNAP_CHUNK (512u << 10) /* bytes of data per REPL_SNAP_CHUNK */
#define INBOX_SNAP_KEEP_MS 60000 /* a snapshot unused this long is deleted */
#define INBOX_SNAP_REUSE_MS 30000 /* a new download reuses a snapshot made this recently */
#define INBOX_SNAP_MARKER "needs-snapshot"

typedef struct inbox_snap_src inbox_snap_src;

/* `data_dir` is the store's (the snapshot file is made there); `store` and `log` are
 * borrowed and outlive the source. rate_bytes: most bytes served per second (0: no
 * limit). A snapshot file left by a crashed process is removed. SP_OK, SP_ENOMEM. */
int inbox_snap_src_new(inbox_snap_src **out, const char *data_dir, inbox_store *store,
    repl_log *log, uint64_t rate_bytes);
/* Waits for a snapshot being made, removes the file, frees. NULL is a no-op. */
void inbox_snap_src_free(inbox_snap_src *s);

/* The answer to one REPL_SNAP_GET (the caller checked this copy leads). May sleep to keep
 * to the rate. NULL only when no reply could be built (out of memory). */
nng_msg *inbox_snap_serve(inbox_snap_src *s, const sp_frame *req);

/* The lowest LSN after which a snapshot being made or served needs the log's records
 * (UINT64_MAX: none). */
uint64_t inbox_snap_pin(inbox_snap_src *s);

/* A copy named `name` fetches the log after `last_lsn` (serve_fetch): once every copy
 * that downloaded the snapshot does so from its LSN on, the snapshot pins nothing. */
void inbox_snap_fetched(inbox_snap_src *s, const char *name, uint64_t last_lsn);

/* Deletes a snapshot unused for INBOX_SNAP_KEEP_MS, and every snapshot when `all`. */
void inbox_snap_expire(inbox_snap_src *s, uint64_t now_ms, bool all);

typedef struct inbox_snap_boot_cfg {
	const char *data_dir;
	const sp_etcd_cfg *etcd; /* endpoints; timeout */
	const char *cluster, *group, *name;
	/* Ends the wait for a primary and the download: checked between steps (a signal the
	 * caller blocked is pending). NULL: never. */
	bool (*stop)(void *arg);
	void *stop_arg;
} inbox_snap_boot_cfg;

/*
 * Start-up: installs a snapshot if this copy needs one (see above). SP_OK when the data dir
 * is ready for the store and the log (with a snapshot installed, or none needed: a copy
 * with data of its own, or a new shard with no history in etcd); SP_ECLOSED when `stop`
 * said so; SP_ESTORE / SP_EIO when the data dir cannot be prepared.
 */
int inbox_snap_bootstrap(const inbox_snap_boot_cfg *cfg);

/* Marks the data dir (durably) so that the next start-up replaces the store and log with a
 * snapshot. SP_OK or SP_EIO. */
int inbox_snap_mark_needed(const char *data_dir);

#endif
