/*
 * The queue index: for every device, its queued entries (seq -> log key) and its counters
 * (last seq, entries, bytes), in memory.
 *
 * Queue entries are stored in the shard's log table under keys that grow with the LSN, so
 * an append writes at the end of one B-tree (a commit of a thousand appends to a thousand
 * devices dirties a handful of leaves) instead of into the leaf of each recipient's queue.
 * This index says which log records make up a device's queue. It is rebuilt from the log
 * and the TTL table when the store opens.
 *
 * Per queue it also counts the entries and bytes of each sender (the user id stored in the
 * entry's header): the writer's view only, so that the primary can refuse a sender past its
 * share of a device's queue. Like the rest, these counts follow adds, removes and undo, and
 * are rebuilt from the entries at open.
 *
 * Two views, one structure:
 *  - the writer's view (the writer thread, inside its write transaction): every change is
 *    visible at once; changes are undoable with marks like the dedup index (a nested or
 *    outer transaction that aborts rolls them back);
 *  - the readers' view (any thread, inside a read-only LMDB transaction): candidates, a
 *    superset of the entries the reader's snapshot can hold. An entry appears here before
 *    the transaction that writes it commits and disappears only after the one that deletes
 *    it committed (publish), so a reader checks each candidate in its snapshot and skips
 *    the ones it cannot see.
 * One mutex guards it; every call is short.
 */
#ifndef INBOX_QINDEX_H
#define INBOX_QINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct inbox_qindex inbox_qindex;

typedef struct inbox_qmeta {
	uint64_t last_seq; /* highest seq ever given to the device (0: none) */
	uint64_t count, bytes; /* queued entries and their envelope/body + ct bytes */
} inbox_qmeta;

typedef struct inbox_qcand {
	uint64_t seq, key; /* key: the entry's log key */
} inbox_qcand;

/* NULL when out of memory; the caller owns the result (inbox_qindex_free). */
inbox_qindex *inbox_qindex_new(void);
void inbox_qindex_free(inbox_qindex *q);

/* ---- loading (at open, before any other use): committed state ---- */

/* An entry read from the log; seqs of one device must come in increasing order, after its
 * load_seq. One at or below the device's acknowledged seq is counted as garbage. */
int inbox_qindex_load_entry(inbox_qindex *q, uint64_t device, uint64_t sender, uint64_t seq,
    uint64_t key, uint64_t bytes);
/* Raises the device's last_seq to at least `seq` and its acknowledged seq to at least
 * `acked` (from TTL records and the dev table). */
int inbox_qindex_load_seq(inbox_qindex *q, uint64_t device, uint64_t seq, uint64_t acked);

/* ---- the writer's view (writer thread only) ---- */

/* The device's counters (zeros for a device never seen). */
void inbox_qindex_meta(inbox_qindex *q, uint64_t device, inbox_qmeta *m);

/* Queues entry `seq` (which must be above last_seq) from user `sender` at log key `key`,
 * adding `bytes`. SP_OK or SP_ENOMEM (nothing changed). Undoable. */
int inbox_qindex_add(inbox_qindex *q, uint64_t device, uint64_t sender, uint64_t seq,
    uint64_t key, uint64_t bytes);

/* The entries and bytes from user `sender` in the device's queue (writer's view). */
void inbox_qindex_sender(inbox_qindex *q, uint64_t device, uint64_t sender, uint64_t *count,
    uint64_t *bytes);

/* The first queued entry of `device` with seq > after: SP_OK (sets *seq, *key) or
 * SP_ENOTFOUND. */
int inbox_qindex_next(inbox_qindex *q, uint64_t device, uint64_t after, uint64_t *seq,
    uint64_t *key);

/* The queued entry `seq`: SP_OK (sets *key) or SP_ENOTFOUND. */
int inbox_qindex_find(inbox_qindex *q, uint64_t device, uint64_t seq, uint64_t *key);

/* Takes queued entry `seq` (from user `sender`, as its header says) off the queue,
 * subtracting `bytes`; `garbage`: its log record stays for the collector (counted in
 * inbox_qindex_garbage). SP_OK, SP_ENOTFOUND, SP_ESTORE (no entry of that sender is
 * counted: index and log disagree) or SP_ENOMEM (nothing changed). Undoable. */
int inbox_qindex_remove(inbox_qindex *q, uint64_t device, uint64_t sender, uint64_t seq,
    uint64_t bytes, bool garbage);

/* Log records no longer queued and not yet deleted (writer's view). */
uint64_t inbox_qindex_garbage(inbox_qindex *q);
/* The collector deleted `n` of them. Undoable. */
int inbox_qindex_collected(inbox_qindex *q, uint64_t n);

/* Undo marks, as for the dedup index. publish() is called once the outermost transaction
 * committed: readers stop seeing what it deleted, and its counters become the committed
 * ones. */
size_t inbox_qindex_mark(inbox_qindex *q);
void inbox_qindex_rollback(inbox_qindex *q, size_t mark);
void inbox_qindex_publish(inbox_qindex *q);

/* ---- the readers' view (any thread) ---- */

/* Up to `max` candidates of `device` with seq > after, in seq order; *more is set when
 * further candidates exist. Returns the count. */
size_t inbox_qindex_candidates(inbox_qindex *q, uint64_t device, uint64_t after,
    inbox_qcand *out, size_t max, bool *more);

/* The committed counters of `device`. */
void inbox_qindex_committed(inbox_qindex *q, uint64_t device, inbox_qmeta *m);

/* Devices known and entries queued (committed), and the bytes the index holds. */
void inbox_qindex_stats(inbox_qindex *q, uint64_t *devices, uint64_t *entries, uint64_t *mem);

#endif
