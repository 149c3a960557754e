/*
 * The primary's commit tracker: which copies make up the sync set, how far each has
 * fsynced, and from that the shard's commit LSN (issue 12, rules 1, 3 and 8). Pure logic:
 * no I/O, no clock (times are passed in, in milliseconds, from any monotonic clock).
 * See docs/REPLICATION.md "The commit point and the sync set".
 *
 * A member is named by (name, incarnation) and goes through three states:
 *   JOINING  added at a barrier LSN (the primary's flushed LSN when it asked to join); it
 *            neither holds back the commit LSN nor counts toward min_copies, so a copy
 *            catching up under load stalls nobody;
 *   SYNCING  its flushed LSN passed the barrier: from now on the commit LSN waits for it,
 *            but it does not count yet, because writes committed while it was joining may
 *            be beyond it;
 *   MEMBER   its flushed LSN also reached the commit LSN: it holds every acknowledged write
 *            and every later one waits for it; it counts toward min_copies. Only now may
 *            the caller write it into the sync set in etcd (where it becomes a candidate).
 * Both targets are fixed once reached (the commit LSN cannot pass a SYNCING member), so a
 * copy that keeps up gets through.
 *
 * Order of membership changes (Patroni's; the caller's job): add here first, write etcd
 * once the member is MEMBER; to remove, remove from etcd first (a transaction guarded by
 * the leader key), and call repl_sync_remove() only after etcd confirmed it. If the
 * outcome of an etcd transaction is unknown, keep the member here (the larger set).
 *
 * Commit LSN: the highest LSN flushed on the primary and on every SYNCING and MEMBER
 * copy, advanced only while the primary plus the MEMBERs are at least min_copies; never
 * reported lower than before. Acks are taken as a maximum, so stale, duplicated and
 * reordered acks are harmless; an ack naming an unknown member or an old incarnation is
 * ignored and counted.
 *
 * Not thread-safe: one thread (the primary's replication loop) owns a tracker. A tracker
 * lives for one term: a new primary makes a new one from its log's flushed and committed
 * LSNs.
 */
#ifndef REPL_SYNC_H
#define REPL_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log.h"

#define REPL_SYNC_NAME_MAX 64 /* bytes of a member's name */
#define REPL_SYNC_INCARNATION_LEN REPL_LOG_INCARNATION_LEN
#define REPL_SYNC_DEFAULT_MIN_COPIES 2
#define REPL_SYNC_DEFAULT_MAX_MEMBERS 8
#define REPL_SYNC_MAX_MEMBERS 64
#define REPL_SYNC_DEFAULT_LAG_MS 1000

typedef struct repl_sync repl_sync;

/* Zero fields take the defaults (a NULL config: all defaults, starting at LSN 0). */
typedef struct repl_sync_config {
	unsigned min_copies; /* copies a write needs, the primary included; [1, max_members + 1] */
	unsigned max_members; /* replicas tracked at most; [1, REPL_SYNC_MAX_MEMBERS] */
	uint64_t flushed; /* the primary's flushed LSN at start */
	uint64_t commit; /* the commit LSN at start, <= flushed */
} repl_sync_config;

typedef enum {
	REPL_SYNC_JOINING = 1,
	REPL_SYNC_SYNCING,
	REPL_SYNC_MEMBER,
} repl_sync_state;

/* A snapshot of one member. */
typedef struct repl_sync_info {
	char name[REPL_SYNC_NAME_MAX + 1];
	uint8_t incarnation[REPL_SYNC_INCARNATION_LEN];
	repl_sync_state state;
	uint64_t flushed; /* highest flushed LSN it acknowledged */
	uint64_t barrier;
	uint64_t last_ack_ms; /* time of its last ack that advanced `flushed` (or of its add) */
} repl_sync_info;

/* SP_OK, SP_EINVAL (bad config), SP_ENOMEM. */
int repl_sync_new(const repl_sync_config *cfg, repl_sync **out);
void repl_sync_free(repl_sync *s);

/* The primary's own flushed LSN advanced (after its repl_log_sync). SP_ERANGE if lower
 * than before (nothing changes). */
int repl_sync_set_flushed(repl_sync *s, uint64_t lsn, uint64_t now_ms);

/*
 * Adds a member in the JOINING state (or further, if its barrier is 0). `barrier_lsn` is
 * the primary's flushed LSN when the copy asked to join (<= the current one, else
 * SP_ERANGE). SP_EEXIST if the name is present (whatever its incarnation: the old one is
 * removed first), SP_ELIMIT past max_members, SP_EINVAL for a bad name (empty or longer
 * than REPL_SYNC_NAME_MAX). `name` and `incarnation` are copied.
 */
int repl_sync_add(repl_sync *s, const char *name, const uint8_t incarnation[REPL_SYNC_INCARNATION_LEN],
    uint64_t barrier_lsn, uint64_t now_ms);

/* Removes a member (after etcd removed it). SP_ENOTFOUND if absent. */
int repl_sync_remove(repl_sync *s, const char *name);

/* A member acknowledged that it has flushed up to `flushed`. SP_ENOTFOUND (ignored and
 * counted) if no member has this name and incarnation. */
int repl_sync_ack(repl_sync *s, const char *name, const uint8_t incarnation[REPL_SYNC_INCARNATION_LEN],
    uint64_t flushed, uint64_t now_ms);

uint64_t repl_sync_commit_lsn(const repl_sync *s);
/* True when the primary plus the MEMBERs are at least min_copies: writes may be accepted;
 * otherwise they fail retryably (SP_EUNAVAIL) and the commit LSN does not move. */
bool repl_sync_writable(const repl_sync *s);
/* Acks ignored so far (unknown name or old incarnation). */
uint64_t repl_sync_ignored_acks(const repl_sync *s);

/*
 * Members (of any state) with outstanding data (flushed < the primary's) that have not
 * advanced for more than bound_ms (0: REPL_SYNC_DEFAULT_LAG_MS), counted from the later
 * of their last advancing ack and the moment data became outstanding for them. Up to `cap`
 * go to `out`; `*n` gets how many lag in all. The caller removes a lagging MEMBER from etcd
 * first and then here, before it acknowledges anything without it; a lagging JOINING or
 * SYNCING copy is not in etcd and is removed here directly.
 */
int repl_sync_lagging(const repl_sync *s, uint64_t now_ms, uint64_t bound_ms, repl_sync_info *out,
    size_t cap, size_t *n);

/* One member by name: SP_OK or SP_ENOTFOUND. */
int repl_sync_member(const repl_sync *s, const char *name, repl_sync_info *out);
/* Up to `cap` members into `out`; returns how many there are. */
size_t repl_sync_members(const repl_sync *s, repl_sync_info *out, size_t cap);

#endif
