/*
 * The dedup index: an in-memory hash table over the shard's TTL log.
 *
 * Every stored append has a TTL record (ts, device, seq) -> (from_device, msg_id), written
 * in time order, so on disk the dedup records are an append-only log and cost one leaf
 * per commit. Looking a message up by (device, from_device, msg_id) needs an index over
 * that log; keeping it on disk as a B-tree keyed by msg id means one random leaf written
 * per append, which capped a shard at ~40k appends/s. This index lives in memory instead:
 * per record a 64-bit keyed SipHash fingerprint of (device, from_device, msg_id) and the
 * TTL key's (ts, seq). A fingerprint match is only a candidate: the caller confirms it
 * against the TTL record, so a collision can never turn a new message into a "duplicate".
 * It is rebuilt from the TTL log when the store opens.
 *
 * Changes are undoable: the store opens an undo mark with each (nested) write transaction
 * and rolls the index back with the transaction, so the index always describes what is
 * committed plus what the open transaction wrote. Single-threaded: only the writer uses it.
 */
#ifndef INBOX_DEDUP_H
#define INBOX_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct inbox_dedup inbox_dedup;

/* Returns true if the record at (ts, seq) is the one looked for (the caller reads the TTL
 * record and compares the full key). */
typedef bool (*inbox_dedup_match_fn)(void *arg, uint64_t ts, uint64_t seq);

/* An empty index sized for `expect` entries (it grows as needed). Returns NULL when out of
 * memory; the caller owns the result (inbox_dedup_free). */
inbox_dedup *inbox_dedup_new(size_t expect);
void inbox_dedup_free(inbox_dedup *d);

/* The fingerprint of (device, from_device, msg_id) under this index's random key. */
uint64_t inbox_dedup_fp(
    const inbox_dedup *d, uint64_t device, uint64_t from_device, const uint8_t msg_id[16]);

/* Finds an entry with fingerprint `fp` that `match` confirms; sets *ts and *seq. */
bool inbox_dedup_find(
    inbox_dedup *d, uint64_t fp, inbox_dedup_match_fn match, void *arg, uint64_t *ts,
    uint64_t *seq);

/* Hints that `fp` will be inserted or looked up soon (bulk loads hide memory latency). */
void inbox_dedup_prefetch(const inbox_dedup *d, uint64_t fp);

/* Adds an entry (undoable). SP_OK or SP_ENOMEM (nothing changed). */
int inbox_dedup_insert(inbox_dedup *d, uint64_t fp, uint64_t ts, uint64_t seq);

/* Removes the entry (fp, ts, seq) if present. `undoable` false: forget it for good even if
 * the transaction is rolled back (eviction under the memory cap). SP_OK or SP_ENOMEM
 * (nothing changed: no room to record the undo). */
int inbox_dedup_remove(inbox_dedup *d, uint64_t fp, uint64_t ts, uint64_t seq, bool undoable);

/* Undo marks: mark() before a transaction's first change; rollback(mark) undoes every
 * change since; settle() forgets the undo log once the outermost transaction committed. */
size_t inbox_dedup_mark(const inbox_dedup *d);
void inbox_dedup_rollback(inbox_dedup *d, size_t mark);
void inbox_dedup_settle(inbox_dedup *d);

size_t inbox_dedup_count(const inbox_dedup *d);
size_t inbox_dedup_bytes(const inbox_dedup *d); /* memory held by the table */

#endif
