/* The commit tracker: commit LSN, min_copies, barrier joins, stale acks, lagging, and a
 * seeded property test against a reference model. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repl/sync.h"
#include "sp_error.h"
#include "check_run.h"
#include "test_rng.h"

static const uint8_t INC_A[16] = {0xa};
static const uint8_t INC_B[16] = {0xb};
static const uint8_t INC_C[16] = {0xc};

static repl_sync *
tracker(unsigned min_copies, uint64_t flushed, uint64_t commit)
{
	repl_sync_config cfg = {.min_copies = min_copies, .flushed = flushed, .commit = commit};
	repl_sync *s;
	ck_assert_int_eq(repl_sync_new(&cfg, &s), SP_OK);
	return s;
}

static repl_sync_state
state_of(repl_sync *s, const char *name)
{
	repl_sync_info info;
	ck_assert_int_eq(repl_sync_member(s, name, &info), SP_OK);
	return info.state;
}

START_TEST(test_commit_is_min_of_primary_and_members)
{
	repl_sync *s = tracker(2, 0, 0);
	ck_assert(!repl_sync_writable(s));
	ck_assert_int_eq(repl_sync_add(s, "a", INC_A, 0, 0), SP_OK);
	ck_assert_int_eq(state_of(s, "a"), REPL_SYNC_MEMBER); /* barrier 0: nothing to wait for */
	ck_assert(repl_sync_writable(s));
	ck_assert_int_eq(repl_sync_set_flushed(s, 10, 1), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 0);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 5, 2), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 5);
	/* A replica may fsync before the primary does: the primary bounds the commit. */
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 12, 3), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 10);
	ck_assert_int_eq(repl_sync_set_flushed(s, 20, 4), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 12);
	ck_assert_int_eq(repl_sync_set_flushed(s, 19, 5), SP_ERANGE);
	/* Two members: the slower one holds the commit. */
	ck_assert_int_eq(repl_sync_add(s, "b", INC_B, 20, 6), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "b", INC_B, 20, 7), SP_OK);
	ck_assert_int_eq(state_of(s, "b"), REPL_SYNC_MEMBER);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 12);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 20, 8), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 20);
	repl_sync_free(s);
}
END_TEST

START_TEST(test_min_copies)
{
	/* Alone and min_copies 2: nothing commits. */
	repl_sync *s = tracker(2, 0, 0);
	ck_assert_int_eq(repl_sync_set_flushed(s, 10, 0), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 0);
	ck_assert(!repl_sync_writable(s));
	repl_sync_free(s);
	/* min_copies 1: the primary alone commits, from the start. */
	s = tracker(1, 50, 40);
	ck_assert(repl_sync_writable(s));
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 50);
	repl_sync_free(s);
	/* min_copies 3 with one member: not writable until a second member counts. */
	s = tracker(3, 0, 0);
	ck_assert_int_eq(repl_sync_add(s, "a", INC_A, 0, 0), SP_OK);
	ck_assert_int_eq(repl_sync_set_flushed(s, 10, 0), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 10, 0), SP_OK);
	ck_assert(!repl_sync_writable(s));
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 0);
	ck_assert_int_eq(repl_sync_add(s, "b", INC_B, 10, 0), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 0);
	ck_assert_int_eq(repl_sync_ack(s, "b", INC_B, 10, 0), SP_OK);
	ck_assert(repl_sync_writable(s));
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 10);
	/* Removing one: not writable, the commit stays where it was. */
	ck_assert_int_eq(repl_sync_remove(s, "a"), SP_OK);
	ck_assert(!repl_sync_writable(s));
	ck_assert_int_eq(repl_sync_set_flushed(s, 20, 0), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "b", INC_B, 20, 0), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 10);
	repl_sync_free(s);
}
END_TEST

START_TEST(test_stale_and_foreign_acks)
{
	repl_sync *s = tracker(2, 100, 0);
	ck_assert_int_eq(repl_sync_add(s, "a", INC_A, 0, 0), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 80, 1), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 80);
	/* Reordered and duplicated: taken as a maximum. */
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 60, 2), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 80, 3), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 80);
	repl_sync_info info;
	ck_assert_int_eq(repl_sync_member(s, "a", &info), SP_OK);
	ck_assert_uint_eq(info.flushed, 80);
	ck_assert_uint_eq(info.last_ack_ms, 1);
	/* Unknown name, old incarnation: ignored and counted. */
	ck_assert_int_eq(repl_sync_ack(s, "zz", INC_A, 100, 4), SP_ENOTFOUND);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_B, 100, 5), SP_ENOTFOUND);
	ck_assert_uint_eq(repl_sync_ignored_acks(s), 2);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 80);
	/* The copy came back with a new data dir: removed, re-added under its new identity;
	 * its old incarnation's acks stay ignored. */
	ck_assert_int_eq(repl_sync_remove(s, "a"), SP_OK);
	ck_assert_int_eq(repl_sync_add(s, "a", INC_C, 100, 6), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 100, 7), SP_ENOTFOUND);
	ck_assert_int_eq(state_of(s, "a"), REPL_SYNC_JOINING);
	ck_assert_uint_eq(repl_sync_ignored_acks(s), 3);
	repl_sync_free(s);
}
END_TEST

/* Rule 8 and rule 3: a joiner does not stall writes while it catches up to its barrier;
 * past it, it holds the commit back; it counts only once it holds every committed write. */
START_TEST(test_join_at_barrier)
{
	repl_sync *s = tracker(2, 100, 0);
	ck_assert_int_eq(repl_sync_add(s, "a", INC_A, 0, 0), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 100, 0), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 100);
	ck_assert_int_eq(repl_sync_add(s, "b", INC_B, 100, 0), SP_OK);
	ck_assert_int_eq(state_of(s, "b"), REPL_SYNC_JOINING);
	/* Writes go on without b. */
	ck_assert_int_eq(repl_sync_set_flushed(s, 150, 1), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 150, 1), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 150);
	ck_assert_int_eq(repl_sync_ack(s, "b", INC_B, 99, 2), SP_OK);
	ck_assert_int_eq(state_of(s, "b"), REPL_SYNC_JOINING);
	/* Past the barrier but behind the commit point: it holds the commit back. */
	ck_assert_int_eq(repl_sync_ack(s, "b", INC_B, 100, 3), SP_OK);
	ck_assert_int_eq(state_of(s, "b"), REPL_SYNC_SYNCING);
	ck_assert_int_eq(repl_sync_set_flushed(s, 200, 4), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 200, 4), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 150);
	/* It reaches the commit point: a member, and the commit moves with it. */
	ck_assert_int_eq(repl_sync_ack(s, "b", INC_B, 160, 5), SP_OK);
	ck_assert_int_eq(state_of(s, "b"), REPL_SYNC_MEMBER);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 160);
	ck_assert_int_eq(repl_sync_ack(s, "b", INC_B, 200, 6), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 200);
	/* A joiner already past both targets goes straight through. */
	ck_assert_int_eq(repl_sync_add(s, "c", INC_C, 200, 7), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "c", INC_C, 200, 8), SP_OK);
	ck_assert_int_eq(state_of(s, "c"), REPL_SYNC_MEMBER);
	repl_sync_free(s);
}
END_TEST

START_TEST(test_remove)
{
	repl_sync *s = tracker(2, 0, 0);
	ck_assert_int_eq(repl_sync_add(s, "a", INC_A, 0, 0), SP_OK);
	ck_assert_int_eq(repl_sync_add(s, "b", INC_B, 0, 0), SP_OK);
	ck_assert_int_eq(repl_sync_set_flushed(s, 50, 0), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 50, 0), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 0); /* b holds it */
	/* After etcd dropped b: the commit moves on without it. */
	ck_assert_int_eq(repl_sync_remove(s, "b"), SP_OK);
	ck_assert_uint_eq(repl_sync_commit_lsn(s), 50);
	ck_assert_int_eq(repl_sync_remove(s, "b"), SP_ENOTFOUND);
	ck_assert_int_eq(repl_sync_remove(s, ""), SP_EINVAL);
	repl_sync_info all[4];
	ck_assert_uint_eq(repl_sync_members(s, all, 4), 1);
	ck_assert_str_eq(all[0].name, "a");
	ck_assert(!memcmp(all[0].incarnation, INC_A, 16));
	repl_sync_free(s);
}
END_TEST

START_TEST(test_lagging)
{
	repl_sync *s = tracker(2, 10, 0);
	ck_assert_int_eq(repl_sync_add(s, "a", INC_A, 0, 0), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 10, 0), SP_OK);
	repl_sync_info out[4];
	size_t n;
	/* Idle for long: nothing outstanding, nobody lags. */
	ck_assert_int_eq(repl_sync_lagging(s, 100000, 0, out, 4, &n), SP_OK);
	ck_assert_uint_eq(n, 0);
	/* Data outstanding from t=100000: the clock starts then, not at the last ack. */
	ck_assert_int_eq(repl_sync_set_flushed(s, 20, 100000), SP_OK);
	ck_assert_int_eq(repl_sync_lagging(s, 100500, 1000, out, 4, &n), SP_OK);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(repl_sync_lagging(s, 101001, 1000, out, 4, &n), SP_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(out[0].name, "a");
	ck_assert_int_eq(out[0].state, REPL_SYNC_MEMBER);
	/* Progress resets the clock; an ack that does not advance does not. */
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 15, 101100), SP_OK);
	ck_assert_int_eq(repl_sync_ack(s, "a", INC_A, 15, 101900), SP_OK);
	ck_assert_int_eq(repl_sync_lagging(s, 102000, 1000, out, 4, &n), SP_OK);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(repl_sync_lagging(s, 102101, 0, out, 4, &n), SP_OK); /* default bound */
	ck_assert_uint_eq(n, 1);
	/* A joiner that does not move is listed too, with its state; cap bounds the output. */
	ck_assert_int_eq(repl_sync_add(s, "b", INC_B, 20, 102000), SP_OK);
	ck_assert_int_eq(repl_sync_lagging(s, 103500, 1000, out, 1, &n), SP_OK);
	ck_assert_uint_eq(n, 2);
	ck_assert_int_eq(repl_sync_lagging(s, 103500, 1000, NULL, 0, &n), SP_OK);
	ck_assert_uint_eq(n, 2);
	/* A clock that went back counts as no time. */
	ck_assert_int_eq(repl_sync_lagging(s, 5, 1000, out, 4, &n), SP_OK);
	ck_assert_uint_eq(n, 0);
	repl_sync_free(s);
}
END_TEST

START_TEST(test_bad_input)
{
	repl_sync *s;
	repl_sync_config bad1 = {.min_copies = 10, .max_members = 3};
	repl_sync_config bad2 = {.flushed = 5, .commit = 6};
	repl_sync_config bad3 = {.max_members = REPL_SYNC_MAX_MEMBERS + 1};
	ck_assert_int_eq(repl_sync_new(&bad1, &s), SP_EINVAL);
	ck_assert_int_eq(repl_sync_new(&bad2, &s), SP_EINVAL);
	ck_assert_int_eq(repl_sync_new(&bad3, &s), SP_EINVAL);
	ck_assert_int_eq(repl_sync_new(NULL, NULL), SP_EINVAL);
	repl_sync_config two = {.max_members = 2};
	ck_assert_int_eq(repl_sync_new(&two, &s), SP_OK);
	char longname[REPL_SYNC_NAME_MAX + 2];
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	ck_assert_int_eq(repl_sync_add(s, longname, INC_A, 0, 0), SP_EINVAL);
	longname[REPL_SYNC_NAME_MAX] = 0;
	ck_assert_int_eq(repl_sync_add(s, longname, INC_A, 0, 0), SP_OK);
	ck_assert_int_eq(repl_sync_add(s, "", INC_A, 0, 0), SP_EINVAL);
	ck_assert_int_eq(repl_sync_add(s, NULL, INC_A, 0, 0), SP_EINVAL);
	ck_assert_int_eq(repl_sync_add(s, "b", INC_B, 1, 0), SP_ERANGE); /* barrier past flushed */
	ck_assert_int_eq(repl_sync_add(s, longname, INC_B, 0, 0), SP_EEXIST);
	ck_assert_int_eq(repl_sync_add(s, "b", INC_B, 0, 0), SP_OK);
	ck_assert_int_eq(repl_sync_add(s, "c", INC_C, 0, 0), SP_ELIMIT);
	repl_sync_info info;
	ck_assert_int_eq(repl_sync_member(s, "c", &info), SP_ENOTFOUND);
	ck_assert_int_eq(repl_sync_ack(s, longname, INC_A, 0, 0), SP_OK);
	repl_sync_free(s);
	repl_sync_free(NULL);
}
END_TEST

/*
 * Property test. The world: a primary whose flushed LSN grows; replicas, each with a true
 * durable LSN (never above what the primary shipped) that grows on its own; acks in flight
 * that are delivered late, out of order, twice, or after their sender was removed and
 * re-added with a new incarnation; joins at the current barrier, removals, timeouts that
 * remove lagging copies. A reference model (below) computes states and the commit LSN
 * from the same events with the rules written plainly; after every event the tracker must
 * agree with it, and these must hold:
 *   - the commit LSN never goes back and never exceeds the primary's flushed LSN;
 *   - it never exceeds any MEMBER's acknowledged (nor true) flushed LSN;
 *   - it moves only while primary + MEMBERs >= min_copies, and then at least min_copies
 *     copies truly hold it;
 *   - once the chaos stops and every copy catches up, everything commits (liveness).
 */
#define NREP 5
#define MAXACK 4096

typedef struct replica {
	char name[16];
	uint8_t inc[16];
	bool present; /* in the tracker */
	uint64_t truth; /* durable on the replica */
	/* Reference model. */
	repl_sync_state st;
	uint64_t acked, barrier;
} replica;

typedef struct ack {
	int r;
	uint8_t inc[16];
	uint64_t lsn;
} ack;

typedef struct world {
	replica rep[NREP];
	ack q[MAXACK];
	size_t nq;
	uint64_t primary, commit, now, ignored;
	unsigned min_copies;
	uint32_t gen;
} world;

static uint64_t rs;

static uint64_t
below(uint64_t n)
{
	return test_rng_below(&rs, n);
}

static size_t
model_members(const world *w)
{
	size_t c = 1;
	for (int i = 0; i < NREP; i++)
		c += w->rep[i].present && w->rep[i].st == REPL_SYNC_MEMBER;
	return c;
}

/* The rules, plainly: promote what reached its target; if enough copies count, the commit
 * is the minimum over the primary and every non-joining member; repeat until stable. */
static void
model_settle(world *w)
{
	for (int round = 0; round < 2 * NREP + 2; round++) {
		for (int i = 0; i < NREP; i++) {
			replica *r = &w->rep[i];
			if (!r->present)
				continue;
			if (r->st == REPL_SYNC_JOINING && r->acked >= r->barrier)
				r->st = REPL_SYNC_SYNCING;
			if (r->st == REPL_SYNC_SYNCING && r->acked >= w->commit)
				r->st = REPL_SYNC_MEMBER;
		}
		if (model_members(w) >= w->min_copies) {
			uint64_t c = w->primary;
			for (int i = 0; i < NREP; i++)
				if (w->rep[i].present && w->rep[i].st != REPL_SYNC_JOINING && w->rep[i].acked < c)
					c = w->rep[i].acked;
			if (c > w->commit)
				w->commit = c;
		}
	}
}

static void
send_ack(world *w, int i)
{
	if (w->nq < MAXACK) {
		w->q[w->nq].r = i;
		memcpy(w->q[w->nq].inc, w->rep[i].inc, 16);
		w->q[w->nq++].lsn = w->rep[i].truth;
	}
}

static void
deliver(world *w, repl_sync *s, size_t k, bool keep)
{
	ack a = w->q[k];
	if (!keep)
		w->q[k] = w->q[--w->nq];
	replica *r = &w->rep[a.r];
	int rc = repl_sync_ack(s, r->name, a.inc, a.lsn, w->now);
	if (!r->present || memcmp(r->inc, a.inc, 16) != 0) {
		ck_assert_int_eq(rc, SP_ENOTFOUND);
		w->ignored++;
		return;
	}
	ck_assert_int_eq(rc, SP_OK);
	if (a.lsn > r->acked)
		r->acked = a.lsn;
	model_settle(w);
}

static void
remove_rep(world *w, repl_sync *s, int i)
{
	ck_assert_int_eq(repl_sync_remove(s, w->rep[i].name), SP_OK);
	w->rep[i].present = false;
	model_settle(w);
}

static void
check_world(world *w, repl_sync *s, uint64_t before, uint64_t seed, int step)
{
	uint64_t c = repl_sync_commit_lsn(s);
	ck_assert_msg(c == w->commit, "seed %" PRIu64 " step %d: commit %" PRIu64 ", model %" PRIu64, seed, step, c,
	    w->commit);
	ck_assert_msg(c >= before, "seed %" PRIu64 " step %d: commit went back", seed, step);
	ck_assert_msg(c <= w->primary, "seed %" PRIu64 " step %d: commit past the primary", seed, step);
	ck_assert_uint_eq(repl_sync_ignored_acks(s), w->ignored);
	ck_assert(repl_sync_writable(s) == (model_members(w) >= w->min_copies));
	size_t holders = 1;
	for (int i = 0; i < NREP; i++) {
		replica *r = &w->rep[i];
		if (!r->present)
			continue;
		repl_sync_info info;
		ck_assert_int_eq(repl_sync_member(s, r->name, &info), SP_OK);
		ck_assert_msg(info.state == r->st, "seed %" PRIu64 " step %d: %s state %d, model %d", seed, step, r->name,
		    info.state, r->st);
		ck_assert_uint_eq(info.flushed, r->acked);
		if (r->st == REPL_SYNC_MEMBER) {
			ck_assert_msg(c <= info.flushed && c <= r->truth,
			    "seed %" PRIu64 " step %d: commit %" PRIu64 " beyond member %s (%" PRIu64 ")", seed, step, c,
			    r->name, info.flushed);
			holders++;
		}
	}
	if (c > before) {
		ck_assert_msg(repl_sync_writable(s), "seed %" PRIu64 " step %d: committed while not writable", seed, step);
		ck_assert_msg(holders >= w->min_copies, "seed %" PRIu64 " step %d: committed on %zu copies", seed, step,
		    holders);
	}
}

static void
property_run(uint64_t seed, int steps)
{
	rs = seed * 0x9e3779b97f4a7c15ULL + 7;
	world *w = calloc(1, sizeof(*w));
	ck_assert_ptr_nonnull(w);
	w->min_copies = 1 + (unsigned)below(3);
	repl_sync_config cfg = {.min_copies = w->min_copies};
	repl_sync *s;
	ck_assert_int_eq(repl_sync_new(&cfg, &s), SP_OK);
	for (int i = 0; i < NREP; i++)
		snprintf(w->rep[i].name, sizeof(w->rep[i].name), "r%d", i);
	model_settle(w);
	for (int step = 0; step < steps; step++) {
		uint64_t before = repl_sync_commit_lsn(s);
		uint64_t op = below(100);
		w->now += below(300);
		int i = (int)below(NREP);
		replica *r = &w->rep[i];
		if (op < 20) {
			w->primary += 1 + below(5);
			ck_assert_int_eq(repl_sync_set_flushed(s, w->primary, w->now), SP_OK);
			model_settle(w);
		} else if (op < 45) {
			/* A replica flushes some or all of what was shipped and acks (in flight). */
			if (r->present) {
				r->truth += below(2) ? w->primary - r->truth : below(w->primary - r->truth + 1);
				send_ack(w, i);
			}
		} else if (op < 75) {
			if (w->nq)
				deliver(w, s, below(w->nq), below(8) == 0); /* sometimes twice */
		} else if (op < 82) {
			/* Join (or rejoin with a new data dir) at the current barrier. */
			if (!r->present) {
				w->gen++;
				memset(r->inc, 0, 16);
				memcpy(r->inc, &w->gen, sizeof(w->gen));
				r->inc[15] = (uint8_t)i;
				r->truth = below(w->primary + 1); /* whatever it holds so far */
				r->present = true;
				r->st = REPL_SYNC_JOINING;
				r->acked = 0;
				r->barrier = w->primary;
				ck_assert_int_eq(repl_sync_add(s, r->name, r->inc, w->primary, w->now), SP_OK);
				model_settle(w);
			}
		} else if (op < 84) {
			if (r->present)
				remove_rep(w, s, i);
		} else if (op < 90) {
			/* A timeout check: lagging copies are dropped (etcd first, then here). */
			repl_sync_info out[NREP];
			size_t n;
			ck_assert_int_eq(repl_sync_lagging(s, w->now, 2000, out, NREP, &n), SP_OK);
			for (size_t k = 0; k < n; k++) {
				for (int j = 0; j < NREP; j++)
					if (w->rep[j].present && strcmp(w->rep[j].name, out[k].name) == 0) {
						ck_assert_uint_lt(w->rep[j].acked, w->primary);
						/* Each removal is an event of its own. */
						uint64_t b = repl_sync_commit_lsn(s);
						remove_rep(w, s, j);
						check_world(w, s, b, seed, step);
					}
			}
			before = repl_sync_commit_lsn(s);
		} else if (op < 93) {
			/* An ack from nobody we know. */
			uint8_t junk[16] = {0xff, (uint8_t)step};
			ck_assert_int_eq(repl_sync_ack(s, "ghost", junk, below(1000), w->now), SP_ENOTFOUND);
			w->ignored++;
		}
		check_world(w, s, before, seed, step);
	}
	/* Liveness: the chaos stops, every present copy catches up and acks. */
	uint64_t before = repl_sync_commit_lsn(s);
	for (int i = 0; i < NREP; i++)
		if (w->rep[i].present) {
			w->rep[i].truth = w->primary;
			ck_assert_int_eq(repl_sync_ack(s, w->rep[i].name, w->rep[i].inc, w->primary, w->now), SP_OK);
			w->rep[i].acked = w->primary;
		}
	model_settle(w);
	check_world(w, s, before, seed, steps);
	if (repl_sync_writable(s))
		ck_assert_uint_eq(repl_sync_commit_lsn(s), w->primary);
	repl_sync_free(s);
	free(w);
}

START_TEST(test_property)
{
	const char *env = getenv("SP_SEED");
	uint64_t seed = env ? strtoull(env, NULL, 10) : 500 + (uint64_t)_i;
	property_run(seed, 20000);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("repl_sync");
	TCase *tc = tcase_create("sync");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_commit_is_min_of_primary_and_members);
	tcase_add_test(tc, test_min_copies);
	tcase_add_test(tc, test_stale_and_foreign_acks);
	tcase_add_test(tc, test_join_at_barrier);
	tcase_add_test(tc, test_remove);
	tcase_add_test(tc, test_lagging);
	tcase_add_test(tc, test_bad_input);
	tcase_add_loop_test(tc, test_property, 0, 12);
	suite_add_tcase(s, tc);
	return check_run(s);
}
