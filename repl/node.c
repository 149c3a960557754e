/* One copy of a replicated group: the log, shipping, the sync set, failover, retention and
 * snapshots around a state machine (node.h). */
#include "node.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>

#include "repl/ha.h"
#include "repl/log.h"
#include "repl/sync.h"
#include "sp_error.h"
#include "sp_frame.h"
#include "sp_log.h"
#include "sp_metrics.h"
#include "sp_nng.h"
#include "sp_time.h"

#define NSERVE 4 /* fetches served at once: one per replica, with room for a rejoining one */
#define LSN_MAX (1ULL << 62)
#define REPLY_SLACK 8192 /* room for a reply's own keys and each record's */
#define SHIP_MAX_RECS 4096 /* records one REPL_RECORDS carries at most */
#define APPLY_CHUNK (8u << 20) /* record bytes replayed per writer batch */
#define APPLY_EVERY_MS 50 /* lazy_commit: a replica's apply step under load... */
#define APPLY_MIN_RECS 4096 /* ...or as soon as this many committed records wait */
#define TICK_MS 50 /* the manager's period */
#define UNWRITABLE_FAIL_MS 100 /* then queued writes get SP_EUNAVAIL instead of waiting */
#define FETCH_TIMEOUT_SLACK_MS 1000

typedef enum { ROLE_NONE, ROLE_REPLICA, ROLE_STARTING, ROLE_PRIMARY } repl_role;

/* The node's metrics, <prefix>_<name> (docs/REPLICATION.md "Metrics"). */
typedef struct node_metrics {
	sp_metric *role, *epoch, *applied, *flushed, *commit, *lag_lsn, *lag_ms, *sync_size;
	sp_metric *shipped, *fetched, *applied_batches, *promotions, *fenced, *unavailable;
	sp_metric *sync_changes, *diverged, *log_bytes, *log_first;
	sp_metric *snap_made, *snap_sent, *snap_installed, *snap_install_bytes, *snap_install_ms;
	sp_metric *log_sync_s, *commit_wait_s;
} node_metrics;

struct repl_node {
	repl_node_config cfg;
	repl_node_sm sm;
	char *data_dir, *etcd, *cluster, *name, *listen, *advertise;
	char group[REPL_HA_NAME_MAX + 1];
	node_metrics m;
	repl_log *log;
	repl_ha *ha;
	uint8_t inc[REPL_LOG_INCARNATION_LEN];

	pthread_mutex_t lock; /* guards everything below */
	pthread_cond_t cond; /* log appended, commit advanced, role changed, stopping */
	repl_role role;
	int64_t epoch; /* led (PRIMARY, STARTING) or followed (REPLICA) */
	int64_t highest_epoch; /* the highest epoch seen: older primaries are refused */
	char leader_name[REPL_HA_NAME_MAX + 1];
	char leader_url[REPL_HA_URL_MAX + 1];
	repl_sync *sync; /* PRIMARY and STARTING only */
	bool stopping;
	/* The follower is between taking the REPLICA role for a fetch and having handled its
	 * answer: a promotion waits for it, so no record from the old primary lands after the
	 * new one counted its log, and no two threads replay at once. */
	bool follower_busy;
	/* The fetch in flight: whoever sees the primary change (or stop) cancels it, so a
	 * fetch waiting on a primary that is gone ends at once. Sockets are never closed
	 * while the process runs (one per primary URL, see follow_main): closing one can
	 * hang in NNG 1.5 (nanomsg/nng#1543). NULL while the follower is not running. */
	nng_aio *follow_aio;
	/* A lagging sync-set copy is kept because dropping it would leave fewer than
	 * min-copies: the commit waits for it, so new writes are refused (SP_EUNAVAIL) rather
	 * than queued behind it. Set by the manager each tick. */
	bool stalled;
	/* The sync key's revision after this primary's last successful change: the manager
	 * waits for the HA loop's view to reach it before the next change (an older view
	 * would only be refused by etcd). Reset for each term. */
	int64_t sync_rev_written;

	/* A replica's word from the primary, for reads it may serve (repl_node_read_fresh):
	 * fresh_ms is the send time of the latest fetch whose reply's commit LSN the store
	 * holds; `heard` are replies whose commit the store does not hold yet (oldest first;
	 * when full, the newest entry is overwritten). Reset when the role changes. */
	uint64_t fresh_ms;
	struct { uint64_t commit, sent_ms; } heard[8];
	unsigned nheard;

	_Atomic uint64_t applied; /* the store's LSN (changed under the lock) */
	_Atomic uint64_t submitted; /* records handed to the writer to apply, >= applied */

	repl_snap_src *snap; /* snapshots this copy serves while it leads */
	uint64_t trim_ms; /* the last retention pass (writer thread of the role) */
	uint64_t apply_ms; /* a replica's last apply step (follower thread) */
	_Atomic bool restart; /* the follower marked the data dir for a snapshot */

	nng_socket rep;
	bool rep_open;
	pthread_t serve_th[NSERVE], follow_th, manage_th;
	int nserve;
	bool follow_started, manage_started, ha_started;
};

/* ---- small helpers ---- */

static void
fatal(const char *what, int rc)
{
	sp_error("FATAL: replication: %s (%s): exiting; if this repeats, rebuild this copy from "
		 "an empty data dir",
	    what, sp_strerror(rc));
	_exit(70);
}

static void
deadline_in(struct timespec *ts, uint64_t ms)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += (time_t)(ms / 1000);
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static void
wait_ms(repl_node *r, uint64_t ms)
{
	struct timespec ts;
	deadline_in(&ts, ms);
	pthread_cond_timedwait(&r->cond, &r->lock, &ts);
}

static char *
dup_or_null(const char *s, bool *oom)
{
	if (!s)
		return NULL;
	char *d = strdup(s);
	if (!d)
		*oom = true;
	return d;
}

/* Lock held. */
static void
follow_abort(repl_node *r)
{
	if (r->follow_aio)
		nng_aio_cancel(r->follow_aio);
}

static void
set_role(repl_node *r, repl_role role)
{
	if (role != r->role) {
		r->nheard = 0;
		r->fresh_ms = 0;
	}
	r->role = role;
	sp_metric_set(r->m.role, (int64_t)role);
	pthread_cond_broadcast(&r->cond);
}

/* ---- handing committed records to the store ---- */

/* Under the lock: the replies whose commit the store now holds make the copy fresh as of
 * their fetch's send time (the primary answered after it, so what it had committed then
 * is here). */
static void
heard_applied(repl_node *r)
{
	uint64_t applied = atomic_load(&r->applied);
	unsigned k = 0;
	while (k < r->nheard && r->heard[k].commit <= applied) {
		if (r->heard[k].sent_ms > r->fresh_ms)
			r->fresh_ms = r->heard[k].sent_ms;
		k++;
	}
	if (k) {
		memmove(r->heard, r->heard + k, (r->nheard - k) * sizeof(r->heard[0]));
		r->nheard -= k;
	}
}

/* Under the lock: a reply of the primary to a fetch sent at sent_ms said `commit`. */
static void
heard_reply(repl_node *r, uint64_t commit, uint64_t sent_ms)
{
	unsigned cap = sizeof(r->heard) / sizeof(r->heard[0]);
	unsigned i = r->nheard < cap ? r->nheard++ : cap - 1;
	r->heard[i].commit = commit;
	r->heard[i].sent_ms = sent_ms;
	heard_applied(r);
}

void
repl_node_applied(repl_node *r, uint64_t lsn)
{
	/* Completions come in LSN order, after the commit that made the op durable. */
	pthread_mutex_lock(&r->lock);
	if (lsn > atomic_load(&r->applied)) {
		atomic_store(&r->applied, lsn);
		sp_metric_set(r->m.applied, (int64_t)lsn);
	}
	heard_applied(r);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

typedef struct collect_ctx {
	repl_log_rec *recs;
	size_t n, cap;
	int rc;
} collect_ctx;

static int
collect_rec(void *arg, const repl_log_rec *rec)
{
	collect_ctx *cc = arg;
	if (cc->n == cc->cap) {
		size_t cap = cc->cap ? 2 * cc->cap : 256;
		repl_log_rec *v = realloc(cc->recs, cap * sizeof(*v));
		if (!v)
			return cc->rc = SP_ENOMEM;
		cc->recs = v;
		cc->cap = cap;
	}
	uint8_t *data = malloc(rec->len ? rec->len : 1);
	if (!data)
		return cc->rc = SP_ENOMEM;
	memcpy(data, rec->data, rec->len);
	cc->recs[cc->n++] = (repl_log_rec) { rec->epoch, rec->lsn, data, rec->len };
	return 0;
}

static void
collect_free(collect_ctx *cc)
{
	for (size_t i = 0; i < cc->n; i++)
		free((void *)cc->recs[i].data);
	free(cc->recs);
}

/* Hands the log's records up to `upto` (committed) to the store to apply; with `wait`,
 * returns once they are in the store. A replica does not wait: its next fetch (its
 * acknowledgement) goes out while the store catches up. One caller at a time (the follower
 * while replica, the manager while promoting). */
static void
apply_upto(repl_node *r, uint64_t upto, bool wait)
{
	while (atomic_load(&r->submitted) < upto) {
		uint64_t from = atomic_load(&r->submitted) + 1;
		collect_ctx cc = { NULL, 0, 0, SP_OK };
		size_t count = 0;
		int rc = repl_log_read(r->log, from, upto, APPLY_CHUNK, collect_rec, &cc, &count);
		if (rc == SP_OK && cc.n == 0)
			rc = SP_ERANGE;
		if (rc == SP_OK) {
			atomic_store(&r->submitted, cc.recs[cc.n - 1].lsn);
			rc = r->sm.apply(r->sm.arg, r, cc.recs, cc.n);
		}
		collect_free(&cc);
		if (rc)
			fatal("applying committed records", rc);
		sp_metric_inc(r->m.applied_batches);
	}
	if (!wait)
		return;
	pthread_mutex_lock(&r->lock);
	while (atomic_load(&r->applied) < upto)
		wait_ms(r, 50);
	pthread_mutex_unlock(&r->lock);
}

/* ---- the primary's writer (its thread) ---- */

/* Whether this copy may serve a write (or a read) now: SP_OK, SP_EUNAVAIL (promoting, or
 * too few copies in sync) or SP_ENOTPRIMARY (not primary, or past its fencing deadline). */
static int
serve_check(repl_node *r, bool write)
{
	int rc;
	pthread_mutex_lock(&r->lock);
	if (r->role == ROLE_PRIMARY)
		rc = write && (!repl_sync_writable(r->sync) || r->stalled) ? SP_EUNAVAIL : SP_OK;
	else
		rc = r->role == ROLE_STARTING ? SP_EUNAVAIL : SP_ENOTPRIMARY;
	pthread_mutex_unlock(&r->lock);
	if (rc == SP_OK && !repl_ha_may_serve(r->ha, repl_ha_now_ms()))
		rc = SP_ENOTPRIMARY;
	return rc;
}

int
repl_node_admit(repl_node *r)
{
	int rc = serve_check(r, true);
	if (rc == SP_EUNAVAIL)
		sp_metric_inc(r->m.unavailable);
	return rc;
}

/* Retention, on the thread that writes the log in the copy's role (the writer while
 * primary, the follower while replica), at most once a second: whole segments whose
 * records every copy of the sync set has (the log's commit LSN bounds trim), that this
 * copy's store holds durably, and that no snapshot being served still needs, keeping
 * retain_bytes for copies that fall behind for a while. */
static void
maybe_trim(repl_node *r)
{
	uint64_t now = sp_mono_ms();
	if (now - r->trim_ms < 1000)
		return;
	r->trim_ms = now;
	uint64_t upto = atomic_load(&r->applied), pin = repl_snap_pin(r->snap);
	if (pin < upto)
		upto = pin;
	/* The store is flushed (a forced fsync, on the writer's thread) only when a segment
	 * will actually go: most passes delete nothing. */
	int rc = SP_OK;
	if (repl_log_would_trim(r->log, upto, r->cfg.retain_bytes)
	    && (rc = r->sm.store_sync(r->sm.arg)) == SP_OK)
		rc = repl_log_retain(r->log, upto, r->cfg.retain_bytes);
	if (rc == SP_EIO)
		fatal("log trim", rc);
	if (rc)
		sp_warn_rl("repl %s: retention: %s", r->group, sp_strerror(rc));
	sp_metric_set(r->m.log_bytes, (int64_t)repl_log_bytes(r->log));
	sp_metric_set(r->m.log_first, (int64_t)repl_log_first_lsn(r->log));
}

int
repl_node_replicate(repl_node *r, repl_log_rec *recs, size_t n)
{
	int64_t epoch;
	int rc = SP_OK;

	pthread_mutex_lock(&r->lock);
	epoch = r->epoch;
	if (r->role != ROLE_PRIMARY)
		rc = SP_ENOTPRIMARY;
	pthread_mutex_unlock(&r->lock);
	if (rc)
		return rc;
	maybe_trim(r);
	repl_log_pos prev = repl_log_last(r->log);
	if (n > REPL_LOG_BATCH_MAX)
		return SP_ETOOBIG; /* the writer's batch bound is below it */
	for (size_t i = 0; i < n; i++) {
		if (recs[i].lsn != prev.lsn + i + 1) {
			/* LSNs come from the store, which holds exactly the log's records. */
			sp_error("repl %s: record lsn %" PRIu64 " does not follow the log's %" PRIu64,
			    r->group, recs[i].lsn, prev.lsn + i);
			return SP_ESTATE;
		}
		recs[i].epoch = (uint64_t)epoch;
	}
	rc = repl_log_append(r->log, prev.epoch, prev.lsn, recs, n);
	if (rc == SP_EIO)
		fatal("log append", rc);
	if (rc)
		return rc;
	uint64_t last = prev.lsn + n, t0 = sp_mono_ns();
	pthread_mutex_lock(&r->lock);
	pthread_cond_broadcast(&r->cond); /* fetches waiting for records */
	pthread_mutex_unlock(&r->lock);
	if ((rc = repl_log_sync(r->log)))
		fatal("log fsync", rc);
	sp_metric_observe(r->m.log_sync_s, (double)(sp_mono_ns() - t0) / 1e9);
	sp_metric_set(r->m.flushed, (int64_t)last);

	uint64_t unwritable_since = 0;
	pthread_mutex_lock(&r->lock);
	if (r->sync)
		repl_sync_set_flushed(r->sync, last, (uint64_t)repl_ha_now_ms());
	pthread_cond_broadcast(&r->cond);
	for (;;) {
		if (r->role != ROLE_PRIMARY || r->epoch != epoch || r->stopping) {
			rc = SP_ENOTPRIMARY;
			break;
		}
		if (repl_sync_commit_lsn(r->sync) >= last) {
			rc = SP_OK;
			break;
		}
		if (!repl_sync_writable(r->sync) || r->stalled) {
			/* This batch waits for a copy to come back (its records are in the log
			 * and may be on a replica: they are never given up while primary);
			 * requests arriving meanwhile are told to retry. */
			uint64_t now = sp_mono_ms();
			if (!unwritable_since)
				unwritable_since = now;
			if (now - unwritable_since >= UNWRITABLE_FAIL_MS) {
				pthread_mutex_unlock(&r->lock);
				if (r->sm.fail_queued)
					r->sm.fail_queued(r->sm.arg, SP_EUNAVAIL);
				pthread_mutex_lock(&r->lock);
				unwritable_since = now;
			}
		} else {
			unwritable_since = 0;
		}
		wait_ms(r, 20);
	}
	uint64_t commit = r->sync ? repl_sync_commit_lsn(r->sync) : 0;
	pthread_mutex_unlock(&r->lock);
	sp_metric_observe(r->m.commit_wait_s, (double)(sp_mono_ns() - t0) / 1e9);
	if (rc == SP_OK && !repl_ha_may_serve(r->ha, repl_ha_now_ms())) {
		/* Past the fencing deadline while waiting: acknowledge nothing. The batch stays
		 * in the log as an uncommitted tail the store does not hold, which only a new
		 * term settles, so this one ends even if the lease can still be renewed (etcd
		 * back just in time): the next batch would not follow the log otherwise. */
		rc = SP_ENOTPRIMARY;
		repl_ha_step_down(r->ha);
	}
	if (rc == SP_OK) {
		repl_log_set_committed(r->log, last);
		atomic_store(&r->submitted, last);
		pthread_mutex_lock(&r->lock);
		atomic_store(&r->applied, last);
		pthread_mutex_unlock(&r->lock);
		sp_metric_set(r->m.applied, (int64_t)last);
		sp_metric_set(r->m.commit, (int64_t)commit);
	}
	return rc;
}

/* ---- the primary's replication endpoint ---- */

static nng_msg *
error_reply(const sp_frame *req, int code, const char *reason)
{
	nng_msg *m;
	if (sp_nng_error_msg(req ? req->id : 0, req && req->has_id, code,
		reason && reason[0] ? reason : NULL, &m))
		return NULL;
	return m;
}

typedef struct ship_ctx {
	sp_frame *recs;
	uint8_t **bufs;
	size_t n, cap, bytes, budget;
} ship_ctx;

static int
ship_rec(void *arg, const repl_log_rec *rec)
{
	ship_ctx *sc = arg;
	if (sc->n && sc->bytes + rec->len + 64 > sc->budget)
		return 1;
	if (sc->n == sc->cap)
		return 1;
	uint8_t *copy = malloc(rec->len ? rec->len : 1);
	if (!copy)
		return SP_ENOMEM;
	memcpy(copy, rec->data, rec->len);
	sc->bufs[sc->n] = copy;
	sp_frame *f = &sc->recs[sc->n];
	sp_frame_init(f, SP_T_REPL_REC, 0, false);
	sp_frame_set_u64(f, SP_F_EPOCH, rec->epoch);
	sp_frame_set_u64(f, SP_F_LSN, rec->lsn);
	sp_frame_set_bin(f, SP_F_REPL_DATA, copy, rec->len);
	sc->n++;
	sc->bytes += rec->len + 64;
	return 0;
}

/* The answer to one REPL_FETCH (see frames_repl.def). */
static nng_msg *
serve_fetch(repl_node *r, const sp_frame *f)
{
	char name[REPL_SYNC_NAME_MAX + 1], primary[REPL_HA_NAME_MAX + 1];
	uint64_t epoch = sp_frame_u64(f, SP_F_EPOCH), last_epoch = sp_frame_u64(f, SP_F_LAST_EPOCH);
	uint64_t last_lsn = sp_frame_u64(f, SP_F_LAST_LSN), flushed = sp_frame_u64(f, SP_F_FLUSHED_LSN);
	uint64_t known = sp_frame_u64(f, SP_F_COMMIT_LSN);
	sp_bin inc = sp_frame_bin(f, SP_F_REPL_INC);

	if (epoch >= LSN_MAX || last_epoch >= LSN_MAX || last_lsn >= LSN_MAX || flushed >= LSN_MAX
	    || known >= LSN_MAX || sp_frame_str(f, SP_F_NAME, name, sizeof(name)))
		return error_reply(f, SP_ERANGE, "epoch, lsn or name out of range");
	if (strcmp(name, r->name) == 0)
		return error_reply(f, SP_EPERM, "a copy cannot follow itself");

	pthread_mutex_lock(&r->lock);
	bool leading = r->role == ROLE_PRIMARY || r->role == ROLE_STARTING;
	int64_t my_epoch = r->epoch;
	snprintf(primary, sizeof(primary), "%s", r->leader_name);
	pthread_mutex_unlock(&r->lock);
	if (!leading || (int64_t)epoch > my_epoch)
		return error_reply(f, SP_ENOTPRIMARY, primary);

	if (last_lsn > 0) {
		repl_log_pos end;
		int rc = repl_log_epoch_end(r->log, last_epoch, &end);
		if (rc == SP_ERANGE)
			return error_reply(f, SP_ERANGE, "needs a snapshot");
		if (rc)
			return error_reply(f, rc, NULL);
		if (end.epoch != last_epoch || end.lsn < last_lsn) {
			sp_frame rep;
			nng_msg *m = NULL;
			sp_frame_init(&rep, SP_T_REPL_DIVERGED, f->id, f->has_id);
			sp_frame_set_u64(&rep, SP_F_EPOCH, (uint64_t)my_epoch);
			sp_frame_set_u64(&rep, SP_F_LAST_EPOCH, end.epoch);
			sp_frame_set_u64(&rep, SP_F_LAST_LSN, end.lsn);
			if (sp_nng_msg_from_frame(&rep, &m))
				m = NULL;
			return m;
		}
	}
	if (repl_log_first_lsn(r->log) > last_lsn + 1)
		return error_reply(f, SP_ERANGE, "needs a snapshot");

	repl_snap_fetched(r->snap, name, last_lsn);
	/* Matched up to last_lsn: what it has fsynced of that counts. */
	uint64_t now = (uint64_t)repl_ha_now_ms();
	uint64_t acked = flushed < last_lsn ? flushed : last_lsn;
	pthread_mutex_lock(&r->lock);
	if (r->sync && r->epoch == my_epoch) {
		int rc = repl_sync_ack(r->sync, name, inc.p, acked, now);
		if (rc == SP_ENOTFOUND) {
			/* A new storage incarnation of a known name: the copy lost its data dir
			 * (a name runs as one process, and this one revoked the old one's lease),
			 * so the old incarnation holds nothing any more and it joins afresh. In
			 * etcd the old entry stays until the new one replaces it (manage_sync):
			 * until then no copy can campaign under that name. */
			repl_sync_info info;
			if (repl_sync_member(r->sync, name, &info) == SP_OK)
				repl_sync_remove(r->sync, name);
			if (repl_sync_add(r->sync, name, inc.p, repl_log_flushed(r->log), now) == SP_OK) {
				sp_info("repl %s: %s joins at barrier %" PRIu64, r->group, name,
				    repl_log_flushed(r->log));
				repl_sync_ack(r->sync, name, inc.p, acked, now);
			}
		}
		pthread_cond_broadcast(&r->cond);
	}
	/* Long-poll: until records (or, without lazy_commit, a newer commit LSN) can be
	 * sent. */
	struct timespec until;
	deadline_in(&until, r->cfg.fetch_wait_ms);
	while (!r->stopping && r->sync && r->epoch == my_epoch && repl_log_last(r->log).lsn <= last_lsn
	    && (r->cfg.lazy_commit || repl_sync_commit_lsn(r->sync) <= known))
		if (pthread_cond_timedwait(&r->cond, &r->lock, &until) == ETIMEDOUT)
			break;
	uint64_t commit = r->sync && r->epoch == my_epoch ? repl_sync_commit_lsn(r->sync) : 0;
	leading = r->sync && r->epoch == my_epoch;
	/* Only a primary past its start (its tail committed) whose lease holds vouches for
	 * the commit LSN as "everything acknowledged so far". */
	bool vouch = leading && r->role == ROLE_PRIMARY;
	pthread_mutex_unlock(&r->lock);
	if (!leading)
		return error_reply(f, SP_ENOTPRIMARY, NULL);
	vouch = vouch && repl_ha_may_serve(r->ha, repl_ha_now_ms());

	ship_ctx sc = { 0 };
	sc.budget = sp_frame_limit_large() - REPLY_SLACK;
	/* Sized by what the log holds past the fetch (usually one batch): a frame is a few
	 * hundred bytes, and a reply per batch per copy must not zero megabytes. */
	uint64_t log_end = repl_log_last(r->log).lsn;
	uint64_t avail = log_end > last_lsn ? log_end - last_lsn : 0;
	sc.cap = avail < SHIP_MAX_RECS ? (size_t)avail : SHIP_MAX_RECS;
	sc.recs = calloc(sc.cap ? sc.cap : 1, sizeof(*sc.recs));
	sc.bufs = calloc(sc.cap ? sc.cap : 1, sizeof(*sc.bufs));
	nng_msg *m = NULL;
	int rc = SP_ENOMEM;
	if (sc.recs && sc.bufs) {
		rc = SP_OK;
		if (sc.cap)
			rc = repl_log_read(r->log, last_lsn + 1, UINT64_MAX, sc.budget, ship_rec, &sc,
			    NULL);
		if (rc == 1)
			rc = SP_OK;
	}
	if (rc == SP_OK) {
		sp_frame rep;
		sp_frame_init(&rep, SP_T_REPL_RECORDS, f->id, f->has_id);
		sp_frame_set_u64(&rep, SP_F_EPOCH, (uint64_t)my_epoch);
		sp_frame_set_u64(&rep, SP_F_COMMIT_LSN, commit);
		sp_frame_set_recs(&rep, SP_F_REPL_RECS, sc.recs, (uint32_t)sc.n);
		sp_frame_set_u64(&rep, SP_F_LAST_LSN, log_end);
		if (vouch)
			sp_frame_set_bool(&rep, SP_F_PRIMARY, true);
		if ((rc = sp_nng_msg_from_frame(&rep, &m)))
			m = NULL;
		else
			sp_metric_add(r->m.shipped, sc.n);
	}
	if (!m)
		m = error_reply(f, rc, NULL);
	for (size_t i = 0; i < sc.n; i++)
		free(sc.bufs[i]);
	free(sc.bufs);
	free(sc.recs);
	return m;
}

/* A snapshot is served by the copy that leads (its store holds only committed ops). */
static nng_msg *
serve_snapshot(repl_node *r, const sp_frame *f)
{
	char primary[REPL_HA_NAME_MAX + 1];
	pthread_mutex_lock(&r->lock);
	bool leading = r->role == ROLE_PRIMARY || r->role == ROLE_STARTING;
	snprintf(primary, sizeof(primary), "%s", r->leader_name);
	pthread_mutex_unlock(&r->lock);
	if (!leading)
		return error_reply(f, SP_ENOTPRIMARY, primary);
	return repl_snap_serve(r->snap, f);
}

static void *
serve_main(void *arg)
{
	repl_node *r = arg;
	nng_ctx ctx;
	nng_aio *aio;
	if (nng_aio_alloc(&aio, NULL, NULL))
		return NULL;
	if (nng_ctx_open(&ctx, r->rep)) {
		nng_aio_free(aio);
		return NULL;
	}
	for (;;) {
		nng_ctx_recv(ctx, aio);
		nng_aio_wait(aio);
		int rv = nng_aio_result(aio);
		if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
			break;
		if (rv)
			continue;
		nng_msg *msg = nng_aio_get_msg(aio), *rep;
		sp_frame f;
		int rc = sp_nng_msg_decode(msg, &f);
		if (rc)
			rep = error_reply(NULL, rc, "bad frame");
		else if (f.type == SP_T_REPL_FETCH)
			rep = serve_fetch(r, &f);
		else if (f.type == SP_T_REPL_SNAP_GET)
			rep = serve_snapshot(r, &f);
		else
			rep = error_reply(&f, SP_EBADTYPE, NULL);
		if (rc == SP_OK)
			sp_frame_fini(&f);
		nng_msg_free(msg);
		if (!rep)
			continue;
		nng_aio_set_msg(aio, rep);
		nng_ctx_send(ctx, aio);
		nng_aio_wait(aio);
		if ((rv = nng_aio_result(aio))) {
			nng_msg_free(rep);
			if (rv == NNG_ECLOSED)
				break;
		}
	}
	nng_ctx_close(ctx);
	nng_aio_free(aio);
	return NULL;
}

bool
repl_node_serves(unsigned type)
{
	return type == SP_T_REPL_FETCH || type == SP_T_REPL_SNAP_GET;
}

bool
repl_node_restart_wanted(repl_node *r)
{
	return r && atomic_load(&r->restart);
}

/* ---- the replica's follower ---- */

/* Appends the records of one REPL_RECORDS reply, fsyncs, and applies what is committed
 * (with lazy_commit in steps: see APPLY_EVERY_MS). True when this copy now holds the
 * primary's whole log as it answered. */
static bool
take_records(repl_node *r, const sp_frame *rep, uint64_t sent_ms)
{
	uint64_t epoch = sp_frame_u64(rep, SP_F_EPOCH), commit = sp_frame_u64(rep, SP_F_COMMIT_LSN);
	const sp_val *v = sp_frame_get(rep, SP_F_REPL_RECS);
	uint32_t n = v ? v->rs.n : 0;

	pthread_mutex_lock(&r->lock);
	bool stale = (int64_t)epoch < r->highest_epoch || epoch >= LSN_MAX || r->role != ROLE_REPLICA;
	if (!stale && (int64_t)epoch > r->highest_epoch)
		r->highest_epoch = (int64_t)epoch;
	pthread_mutex_unlock(&r->lock);
	if (stale) {
		sp_warn_rl("repl %s: ignoring a reply of epoch %" PRIu64
			   " (a newer epoch was seen, or this copy no longer follows)",
		    r->group, epoch);
		return false;
	}
	if (n) {
		repl_log_rec *recs = calloc(n, sizeof(*recs));
		if (!recs)
			return false;
		for (uint32_t i = 0; i < n; i++) {
			const sp_frame *f = &v->rs.v[i];
			sp_bin d = sp_frame_bin(f, SP_F_REPL_DATA);
			recs[i] = (repl_log_rec) { sp_frame_u64(f, SP_F_EPOCH), sp_frame_u64(f, SP_F_LSN),
				d.p, d.len };
			if (recs[i].epoch > epoch || recs[i].lsn >= LSN_MAX) {
				sp_warn_rl("repl %s: record %" PRIu64 " of a later epoch than its "
					   "primary's: reply ignored",
				    r->group, recs[i].lsn);
				free(recs);
				return false;
			}
		}
		repl_log_pos prev = repl_log_last(r->log);
		int rc = repl_log_append(r->log, prev.epoch, prev.lsn, recs, n);
		free(recs);
		if (rc == SP_EIO)
			fatal("log append", rc);
		if (rc) {
			sp_warn_rl("repl %s: records from the primary refused (%s): fetching again",
			    r->group, sp_strerror(rc));
			return false;
		}
		uint64_t t0 = sp_mono_ns();
		if ((rc = repl_log_sync(r->log)))
			fatal("log fsync", rc);
		sp_metric_observe(r->m.log_sync_s, (double)(sp_mono_ns() - t0) / 1e9);
		sp_metric_add(r->m.fetched, n);
	}
	maybe_trim(r);
	repl_log_pos last = repl_log_last(r->log);
	sp_metric_set(r->m.flushed, (int64_t)last.lsn);
	sp_metric_set(r->m.commit, (int64_t)commit);
	uint64_t raw_commit = commit; /* what the store must hold to be as fresh as the reply */
	if (commit > last.lsn)
		commit = last.lsn;
	if (commit > repl_log_committed(r->log))
		repl_log_set_committed(r->log, commit);
	/* Lazily, a replica applies when the primary is idle (an empty reply), every
	 * APPLY_EVERY_MS, or once APPLY_MIN_RECS wait: one store commit (and its fsync) for
	 * many of the primary's batches. The records are durable in the log meanwhile. */
	uint64_t now = sp_mono_ms(), submitted = atomic_load(&r->submitted);
	if (commit > submitted
	    && (!r->cfg.lazy_commit || n == 0 || now - r->apply_ms >= APPLY_EVERY_MS
		|| commit - submitted >= APPLY_MIN_RECS)) {
		r->apply_ms = now;
		apply_upto(r, commit, false);
	}
	if (sp_frame_u64(rep, SP_F_PRIMARY)) {
		pthread_mutex_lock(&r->lock);
		if (r->role == ROLE_REPLICA)
			heard_reply(r, raw_commit, sent_ms);
		pthread_mutex_unlock(&r->lock);
	}
	return n == 0 || last.lsn >= sp_frame_u64(rep, SP_F_LAST_LSN);
}

static void
take_diverged(repl_node *r, const sp_frame *rep)
{
	repl_log_pos answer = { sp_frame_u64(rep, SP_F_LAST_EPOCH), sp_frame_u64(rep, SP_F_LAST_LSN) };
	repl_log_pos mine = repl_log_last(r->log);
	uint64_t to = repl_divergence(mine, answer);
	sp_info("repl %s: my log ends at (%" PRIu64 ", %" PRIu64 "), the primary's history of "
		"epoch %" PRIu64 " at (%" PRIu64 ", %" PRIu64 "): truncating after %" PRIu64,
	    r->group, mine.epoch, mine.lsn, mine.epoch, answer.epoch, answer.lsn, to);
	int rc = repl_log_truncate(r->log, to);
	if (rc == SP_ERANGE)
		fatal("the primary's history leaves out records this copy committed", rc);
	if (rc)
		fatal("log truncate", rc);
	sp_metric_inc(r->m.diverged);
}

/* The follower's sockets, one per primary URL it has followed, kept until stop. */
typedef struct follow_socks {
	struct {
		char url[REPL_HA_URL_MAX + 1];
		nng_socket sock;
	} v[REPL_HA_MAX_COPIES];
	size_t n;
} follow_socks;

static int
follow_sock(repl_node *r, follow_socks *fs, const char *url, nng_socket *out)
{
	for (size_t i = 0; i < fs->n; i++)
		if (strcmp(fs->v[i].url, url) == 0) {
			*out = fs->v[i].sock;
			return SP_OK;
		}
	if (fs->n == REPL_HA_MAX_COPIES)
		return SP_ELIMIT; /* more primaries than a shard has copies: a misconfiguration */
	int rc = sp_nng_req_open(&fs->v[fs->n].sock, url,
	    (int)(r->cfg.fetch_wait_ms + FETCH_TIMEOUT_SLACK_MS), 0);
	if (rc)
		return rc;
	snprintf(fs->v[fs->n].url, sizeof(fs->v[fs->n].url), "%s", url);
	*out = fs->v[fs->n++].sock;
	return SP_OK;
}

/* One request/reply on `sock` through the follower's aio (cancellable by follow_abort).
 * On SP_OK (or an ERROR frame's code) *msg holds the reply and *rep its decoded frame. */
static int
follow_call(repl_node *r, nng_aio *aio, nng_socket sock, const sp_frame *req, nng_msg **msg,
    sp_frame *rep)
{
	nng_msg *m;
	int rc = sp_nng_msg_from_frame(req, &m);
	*msg = NULL;
	if (rc)
		return rc;
	nng_aio_set_timeout(aio, (nng_duration)(r->cfg.fetch_wait_ms + FETCH_TIMEOUT_SLACK_MS));
	nng_aio_set_msg(aio, m);
	nng_send_aio(sock, aio);
	nng_aio_wait(aio);
	int rv = nng_aio_result(aio);
	if (rv) {
		nng_msg_free(nng_aio_get_msg(aio));
		return rv == NNG_ECANCELED ? SP_ECLOSED : sp_nng_err(rv);
	}
	nng_recv_aio(sock, aio);
	nng_aio_wait(aio);
	if ((rv = nng_aio_result(aio)))
		return rv == NNG_ECANCELED ? SP_ECLOSED : sp_nng_err(rv);
	m = nng_aio_get_msg(aio);
	if ((rc = sp_nng_msg_decode(m, rep))) {
		nng_msg_free(m);
		return rc;
	}
	*msg = m;
	if (rep->type == SP_T_ERROR) {
		rc = (int)sp_frame_i64(rep, SP_F_CODE);
		return rc < 0 ? rc : SP_EPROTO;
	}
	return SP_OK;
}

static void *
follow_main(void *arg)
{
	repl_node *r = arg;
	char url[REPL_HA_URL_MAX + 1] = "";
	uint64_t caught_up_ms = sp_mono_ms();
	follow_socks fs = { .n = 0 };
	nng_aio *aio;

	if (nng_aio_alloc(&aio, NULL, NULL))
		fatal("the follower's aio", SP_ENOMEM);
	pthread_mutex_lock(&r->lock);
	r->follow_aio = aio;
	for (;;) {
		while (!r->stopping && (r->role != ROLE_REPLICA || !r->leader_url[0]))
			wait_ms(r, 200);
		if (r->stopping)
			break;
		int64_t epoch = r->highest_epoch;
		r->follower_busy = true;
		snprintf(url, sizeof(url), "%s", r->leader_url);
		nng_socket sock;
		/* The dial is asynchronous: holding the lock here is short. */
		int rc = follow_sock(r, &fs, url, &sock);
		if (rc) {
			sp_warn_rl("repl %s: cannot dial the primary at %s: %s", r->group, url,
			    sp_strerror(rc));
			r->follower_busy = false;
			pthread_cond_broadcast(&r->cond);
			wait_ms(r, 200);
			continue;
		}
		pthread_mutex_unlock(&r->lock);

		repl_log_pos last = repl_log_last(r->log);
		sp_frame req, rep;
		nng_msg *msg = NULL;
		sp_frame_init(&req, SP_T_REPL_FETCH, 0, false);
		sp_frame_set_u64(&req, SP_F_EPOCH, (uint64_t)epoch);
		sp_frame_set_str(&req, SP_F_NAME, r->name);
		sp_frame_set_bin(&req, SP_F_REPL_INC, r->inc, sizeof(r->inc));
		sp_frame_set_u64(&req, SP_F_LAST_EPOCH, last.epoch);
		sp_frame_set_u64(&req, SP_F_LAST_LSN, last.lsn);
		sp_frame_set_u64(&req, SP_F_FLUSHED_LSN, repl_log_flushed(r->log));
		sp_frame_set_u64(&req, SP_F_COMMIT_LSN, repl_log_committed(r->log));
		uint64_t sent_ms = sp_mono_ms();
		rc = follow_call(r, aio, sock, &req, &msg, &rep);
		uint64_t pause = 0;
		if (rc == SP_OK && rep.type == SP_T_REPL_RECORDS) {
			if (take_records(r, &rep, sent_ms))
				caught_up_ms = sp_mono_ms();
		} else if (rc == SP_OK && rep.type == SP_T_REPL_DIVERGED) {
			take_diverged(r, &rep);
		} else if (rc == SP_ERANGE) {
			/* Its place in the primary's log is gone: start again from a snapshot. */
			int mrc = repl_snap_mark_needed(r->data_dir);
			if (mrc)
				fatal("marking the data dir for a snapshot", mrc);
			sp_error("repl %s: the primary no longer holds the records after LSN %" PRIu64
				 ": restarting to install a snapshot",
			    r->group, last.lsn);
			if (!atomic_exchange(&r->restart, true))
				kill(getpid(), SIGTERM);
			pause = 1000;
		} else if (rc == SP_ECLOSED) {
			pause = 0; /* cancelled: the primary changed */
		} else if (rc) {
			if (rc != SP_ENOTPRIMARY)
				sp_warn_rl("repl %s: fetch from %s: %s", r->group, url, sp_strerror(rc));
			pause = 100;
		} else {
			pause = 100; /* an unexpected reply type */
		}
		if (msg) {
			sp_frame_fini(&rep);
			nng_msg_free(msg);
		}
		sp_metric_set(r->m.lag_ms, (int64_t)(sp_mono_ms() - caught_up_ms));
		pthread_mutex_lock(&r->lock);
		r->follower_busy = false;
		pthread_cond_broadcast(&r->cond);
		if (pause && !r->stopping)
			wait_ms(r, pause);
	}
	r->follow_aio = NULL;
	pthread_mutex_unlock(&r->lock);
	nng_aio_free(aio);
	for (size_t i = 0; i < fs.n; i++)
		nng_close(fs.v[i].sock);
	return NULL;
}

/* ---- the HA loop's callbacks (its thread) ---- */

static void
cb_status(void *arg, repl_ha_status *out)
{
	repl_node *r = arg;
	pthread_mutex_lock(&r->lock);
	out->role = r->role == ROLE_REPLICA ? REPL_HA_REPLICA
	    : r->role == ROLE_NONE	    ? REPL_HA_NONE
					    : REPL_HA_PRIMARY;
	out->epoch = r->epoch > r->highest_epoch ? r->epoch : r->highest_epoch;
	pthread_mutex_unlock(&r->lock);
	repl_log_pos last = repl_log_last(r->log);
	out->last = (repl_ha_pos) { (int64_t)last.epoch, last.lsn };
	out->flushed_lsn = repl_log_flushed(r->log);
}

static void
cb_primary(void *arg, int64_t epoch, const repl_ha_view *view)
{
	repl_node *r = arg;
	repl_sync *s;
	repl_sync_config sc = {
		.min_copies = r->cfg.min_copies,
		.max_members = REPL_HA_MAX_COPIES,
		.flushed = repl_log_flushed(r->log),
		.commit = atomic_load(&r->applied),
	};
	if (repl_sync_new(&sc, &s) != SP_OK)
		fatal("commit tracker", SP_ENOMEM);
	uint64_t now = (uint64_t)repl_ha_now_ms();
	/* The sync set's copies hold every acknowledged write: the commit waits for each
	 * until it acknowledges or is dropped (from etcd first) for lagging. */
	for (size_t i = 0; i < view->sync.n; i++) {
		const repl_ha_id *m = &view->sync.members[i];
		if (strcmp(m->name, r->name) != 0 && m->inc_len == REPL_SYNC_INCARNATION_LEN)
			repl_sync_add(s, m->name, m->inc, 0, now);
	}
	pthread_mutex_lock(&r->lock);
	repl_sync_free(r->sync);
	r->sync = s;
	r->epoch = epoch;
	if (epoch > r->highest_epoch)
		r->highest_epoch = epoch;
	snprintf(r->leader_name, sizeof(r->leader_name), "%s", r->name);
	snprintf(r->leader_url, sizeof(r->leader_url), "%s", r->advertise);
	follow_abort(r);
	r->stalled = false;
	r->sync_rev_written = 0;
	set_role(r, ROLE_STARTING);
	pthread_mutex_unlock(&r->lock);
	sp_metric_set(r->m.epoch, epoch);
	sp_info("repl %s: won epoch %" PRId64 "; promoting once the sync set holds the log to "
		"LSN %" PRIu64,
	    r->group, epoch, repl_log_last(r->log).lsn);
}

static void
cb_following(void *arg, const repl_ha_leader *leader)
{
	repl_node *r = arg;
	pthread_mutex_lock(&r->lock);
	if (r->role == ROLE_PRIMARY || r->role == ROLE_STARTING) {
		repl_sync_free(r->sync);
		r->sync = NULL;
	}
	r->epoch = leader->epoch;
	if (leader->epoch > r->highest_epoch)
		r->highest_epoch = leader->epoch;
	snprintf(r->leader_name, sizeof(r->leader_name), "%s", leader->parsed ? leader->id.name : "");
	snprintf(r->leader_url, sizeof(r->leader_url), "%s", leader->parsed ? leader->url : "");
	follow_abort(r);
	set_role(r, ROLE_REPLICA);
	pthread_mutex_unlock(&r->lock);
	sp_metric_set(r->m.epoch, leader->epoch);
}

static void
cb_fenced(void *arg, int64_t epoch)
{
	repl_node *r = arg;
	pthread_mutex_lock(&r->lock);
	if (r->role == ROLE_PRIMARY || r->role == ROLE_STARTING) {
		repl_sync_free(r->sync);
		r->sync = NULL;
		r->leader_name[0] = r->leader_url[0] = '\0';
		set_role(r, ROLE_NONE);
	}
	pthread_mutex_unlock(&r->lock);
	sp_metric_inc(r->m.fenced);
	sp_warn("repl %s: no longer primary of epoch %" PRId64, r->group, epoch);
}

/* ---- the manager: promotion and sync-set changes in etcd ---- */

static bool
view_has(const repl_ha_view *v, const char *name, const uint8_t *inc, bool match_inc)
{
	for (size_t i = 0; i < v->sync.n; i++) {
		const repl_ha_id *m = &v->sync.members[i];
		if (strcmp(m->name, name) == 0
		    && (!match_inc
			|| (m->inc_len == REPL_SYNC_INCARNATION_LEN
			    && memcmp(m->inc, inc, REPL_SYNC_INCARNATION_LEN) == 0)))
			return true;
	}
	return false;
}

/* Whether the view lists a status key of this member's incarnation. */
static bool
copy_alive(const repl_ha_view *v, const repl_sync_info *m)
{
	for (size_t i = 0; i < v->ncopies; i++) {
		const repl_ha_id *c = &v->copies[i].id;
		if (strcmp(c->name, m->name) == 0 && c->inc_len == REPL_SYNC_INCARNATION_LEN
		    && memcmp(c->inc, m->incarnation, REPL_SYNC_INCARNATION_LEN) == 0)
			return true;
	}
	return false;
}

/* Writes a new sync set to etcd: the view's, without `drop` and/or with `add`. */
static int
change_sync(repl_node *r, repl_ha_view *view, const char *drop, const repl_sync_info *add)
{
	repl_ha_id ids[REPL_HA_MAX_COPIES] = { 0 };
	size_t n = 0;
	for (size_t i = 0; i < view->sync.n; i++)
		if (!drop || strcmp(view->sync.members[i].name, drop) != 0)
			ids[n++] = view->sync.members[i];
	if (add) {
		if (n == REPL_HA_MAX_COPIES)
			return SP_ELIMIT;
		memset(&ids[n], 0, sizeof(ids[n]));
		memcpy(ids[n].name, add->name, strnlen(add->name, REPL_HA_NAME_MAX));
		memcpy(ids[n].inc, add->incarnation, REPL_SYNC_INCARNATION_LEN);
		ids[n].inc_len = REPL_SYNC_INCARNATION_LEN;
		n++;
	}
	int rc = repl_ha_sync_set(r->ha, view, ids, n);
	if (rc == SP_OK) {
		pthread_mutex_lock(&r->lock);
		r->sync_rev_written = view->sync.mod_rev;
		pthread_mutex_unlock(&r->lock);
	}
	const char *what = drop && add ? "renewing" : drop ? "without" : "with";
	if (rc == SP_OK) {
		sp_metric_inc(r->m.sync_changes);
		sp_info("repl %s: sync set %s %s (%zu copies)", r->group, what, drop ? drop : add->name,
		    n);
	} else {
		sp_warn_rl("repl %s: sync-set change (%s %s) not written: %s", r->group, what,
		    drop ? drop : add->name, sp_strerror(rc));
	}
	return rc;
}

static void
set_stalled(repl_node *r, int64_t epoch, bool stalled)
{
	pthread_mutex_lock(&r->lock);
	if (r->epoch == epoch) {
		if (stalled && !r->stalled)
			sp_warn("repl %s: a sync-set copy is silent and fewer than %u copies would "
				"remain without it: writes are refused until it returns or another "
				"copy joins",
			    r->group, r->cfg.min_copies);
		r->stalled = stalled;
	}
	pthread_mutex_unlock(&r->lock);
}

static void
manage_sync(repl_node *r, int64_t epoch)
{
	repl_sync_info lag[REPL_HA_MAX_COPIES], mem[REPL_HA_MAX_COPIES];
	size_t nlag = 0, nmem = 0;
	repl_ha_view *view = malloc(sizeof(*view));
	if (!view)
		return;
	pthread_mutex_lock(&r->lock);
	int64_t written = r->sync_rev_written;
	pthread_mutex_unlock(&r->lock);
	if (repl_ha_loop_view(r->ha, view) != SP_OK || view->leader.epoch != epoch
	    || view->sync.mod_rev < written) {
		free(view);
		return;
	}
	pthread_mutex_lock(&r->lock);
	if (r->sync && r->epoch == epoch) {
		repl_sync_lagging(r->sync, (uint64_t)repl_ha_now_ms(), r->cfg.lag_ms, lag,
		    REPL_HA_MAX_COPIES, &nlag);
		if (nlag > REPL_HA_MAX_COPIES)
			nlag = REPL_HA_MAX_COPIES;
		nmem = repl_sync_members(r->sync, mem, REPL_HA_MAX_COPIES);
		if (nmem > REPL_HA_MAX_COPIES)
			nmem = REPL_HA_MAX_COPIES;
	}
	pthread_mutex_unlock(&r->lock);
	/* A member whose status key is gone has no live process (its lease expired): it is
	 * treated as lagging now rather than after the lag bound, which after a failover
	 * would hold the first commit back by that long for the dead old primary. */
	for (size_t i = 0; i < nmem && nlag < REPL_HA_MAX_COPIES; i++) {
		if (mem[i].state == REPL_SYNC_JOINING || copy_alive(view, &mem[i]))
			continue;
		bool listed = false;
		for (size_t k = 0; k < nlag && !listed; k++)
			listed = strcmp(lag[k].name, mem[i].name) == 0;
		if (!listed)
			lag[nlag++] = mem[i];
	}

	/* Drop a lagging copy: from etcd first (guarded by the leader key), then here, so no
	 * write is acknowledged without it while etcd still names it a candidate. */
	bool stalled = false;
	for (size_t i = 0; i < nlag; i++) {
		int rc = SP_OK;
		if (view_has(view, lag[i].name, NULL, false)) {
			/* Below min-copies nothing commits with or without it, and kept it stays a
			 * candidate holding every acknowledged write: if this primary dies too,
			 * the shard can still fail over to it (rule 8). */
			if (view->sync.n - 1 < r->cfg.min_copies) {
				stalled = true;
				continue;
			}
			rc = change_sync(r, view, lag[i].name, NULL);
		}
		if (rc == SP_OK) {
			pthread_mutex_lock(&r->lock);
			if (r->sync && r->epoch == epoch && repl_sync_remove(r->sync, lag[i].name) == SP_OK)
				sp_warn("repl %s: %s dropped from the sync set (%s)", r->group,
				    lag[i].name, copy_alive(view, &lag[i]) ? "silent too long" : "no live process");
			pthread_cond_broadcast(&r->cond);
			pthread_mutex_unlock(&r->lock);
		}
		set_stalled(r, epoch, stalled);
		free(view);
		return; /* one etcd change per tick: the next works on a fresh view */
	}
	set_stalled(r, epoch, stalled);
	/* Add a caught-up copy: here first (done: it is a MEMBER), then in etcd. */
	for (size_t i = 0; i < nmem; i++) {
		if (mem[i].state != REPL_SYNC_MEMBER || view_has(view, mem[i].name, mem[i].incarnation, true))
			continue;
		/* A new incarnation of a named copy replaces the old entry in one transaction:
		 * the set never shrinks below what it held (rule 8). */
		change_sync(r, view, view_has(view, mem[i].name, NULL, false) ? mem[i].name : NULL,
		    &mem[i]);
		break;
	}
	sp_metric_set(r->m.sync_size, (int64_t)view->sync.n);
	free(view);
}

static void *
manage_main(void *arg)
{
	repl_node *r = arg;
	pthread_mutex_lock(&r->lock);
	while (!r->stopping) {
		wait_ms(r, TICK_MS);
		if (r->stopping)
			break;
		repl_role role = r->role;
		int64_t epoch = r->epoch;
		uint64_t last = repl_log_last(r->log).lsn;
		bool tail_done = false;
		if (role == ROLE_STARTING && !r->follower_busy) {
			/* Records the follower took after the tracker was made count too. */
			repl_sync_set_flushed(r->sync, repl_log_flushed(r->log), (uint64_t)repl_ha_now_ms());
			tail_done = repl_sync_commit_lsn(r->sync) >= last;
		}
		pthread_mutex_unlock(&r->lock);
		if (role == ROLE_STARTING || role == ROLE_PRIMARY)
			manage_sync(r, epoch);
		repl_snap_expire(r->snap, sp_mono_ms(), role != ROLE_STARTING && role != ROLE_PRIMARY);
		if (tail_done) {
			/* The sync set holds the whole log: apply its tail, then serve. */
			repl_log_set_committed(r->log, last);
			apply_upto(r, last, true);
			pthread_mutex_lock(&r->lock);
			if (r->role == ROLE_STARTING && r->epoch == epoch) {
				set_role(r, ROLE_PRIMARY);
				sp_metric_set(r->m.lag_ms, 0);
				sp_metric_inc(r->m.promotions);
				sp_info("repl %s: primary of epoch %" PRId64 " at LSN %" PRIu64, r->group,
				    epoch, last);
			}
			pthread_mutex_unlock(&r->lock);
		}
		pthread_mutex_lock(&r->lock);
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

/* ---- life cycle ---- */

static void
metrics_init(node_metrics *m, const char *prefix)
{
	static const struct {
		size_t off;
		char kind; /* g(auge), c(ounter), h(istogram) */
		const char *name, *help;
	} defs[] = {
#define G(f, n, h) { offsetof(node_metrics, f), 'g', n, h }
#define C(f, n, h) { offsetof(node_metrics, f), 'c', n, h }
#define H(f, n, h) { offsetof(node_metrics, f), 'h', n, h }
		G(role, "role", "Replication role: 0 none (no etcd, or not yet decided), 1 replica, 2 promoting, 3 primary"),
		G(epoch, "epoch", "The epoch this copy follows or leads"),
		G(applied, "applied_lsn", "Last LSN applied to the store"),
		G(flushed, "flushed_lsn", "Last LSN fsynced in the log"),
		G(commit, "commit_lsn", "The commit LSN as this copy knows it"),
		G(lag_lsn, "lag_lsn", "Replica: LSNs behind the primary's log end at the last fetch"),
		G(lag_ms, "lag_ms", "Replica: ms since the last fetch that found it caught up with the primary"),
		G(sync_size, "sync_set_size", "Primary: copies in the sync set (itself included)"),
		C(shipped, "records_shipped_total", "Primary: log records sent to replicas"),
		C(fetched, "records_fetched_total", "Replica: log records received and fsynced"),
		C(applied_batches, "applied_batches_total", "Batches of committed records handed to the store"),
		C(promotions, "promotions_total", "Times this copy became primary (failovers it took over)"),
		C(fenced, "fenced_total", "Times this copy stopped being primary (lease lost or resigned)"),
		C(unavailable, "unavailable_total", "Write batches refused: too few copies in sync (SP_EUNAVAIL)"),
		C(sync_changes, "sync_set_changes_total", "Sync-set transactions written to etcd by this primary"),
		C(diverged, "truncations_total", "Replica: log truncations after a divergence from the primary's history"),
		G(log_bytes, "log_bytes", "Bytes of replication log segments held (retention trims whole segments)"),
		G(log_first, "log_first_lsn", "First LSN the replication log still holds (a copy behind it needs a snapshot)"),
		C(snap_made, "snapshots_made_total", "Primary: snapshots of the store made for copies that needed one"),
		C(snap_sent, "snapshot_sent_bytes_total", "Primary: snapshot bytes sent"),
		C(snap_installed, "snapshots_installed_total", "Snapshots this copy downloaded and installed at start-up"),
		G(snap_install_bytes, "snapshot_install_bytes", "Size of the last snapshot this copy installed"),
		G(snap_install_ms, "snapshot_install_ms", "Duration of the last snapshot download and install, ms"),
		H(log_sync_s, "log_sync_seconds", "fsync of the log after an append (primary: each batch; replica: each fetch's records)"),
		H(commit_wait_s, "commit_wait_seconds", "Primary: from a batch's append to the log until the commit LSN covers it (the replicas' fetch, fsync and acknowledgement)"),
#undef G
#undef C
#undef H
	};
	for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
		char name[160];
		snprintf(name, sizeof(name), "%s_%s", prefix, defs[i].name);
		sp_metric **slot = (sp_metric **)((char *)m + defs[i].off);
		*slot = defs[i].kind == 'g'   ? sp_metric_gauge(name, defs[i].help)
			: defs[i].kind == 'c' ? sp_metric_counter(name, defs[i].help)
					      : sp_metric_histogram(name, defs[i].help);
	}
}

int
repl_node_open(repl_node **out, const repl_node_config *cfg, const repl_node_sm *sm)
{
	char path[PATH_MAX];
	bool oom = false;
	int rc;

	if (!cfg->data_dir || !cfg->etcd || !cfg->cluster || !cfg->group || !cfg->name
	    || !cfg->listen || !cfg->metric_prefix || !cfg->files || !sm->store_lsn
	    || !sm->store_sync || !sm->apply || !sm->snapshot_copy
	    || strlen(cfg->group) > REPL_HA_NAME_MAX)
		return SP_EINVAL;
	repl_node *r = calloc(1, sizeof(*r));
	if (!r)
		return SP_ENOMEM;
	r->cfg = *cfg;
	r->sm = *sm;
	r->data_dir = dup_or_null(cfg->data_dir, &oom);
	r->etcd = dup_or_null(cfg->etcd, &oom);
	r->cluster = dup_or_null(cfg->cluster, &oom);
	r->name = dup_or_null(cfg->name, &oom);
	r->listen = dup_or_null(cfg->listen, &oom);
	r->advertise = dup_or_null(cfg->advertise ? cfg->advertise : cfg->listen, &oom);
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	if (oom) {
		repl_node_free(r);
		return SP_ENOMEM;
	}
	if (!r->cfg.min_copies)
		r->cfg.min_copies = REPL_SYNC_DEFAULT_MIN_COPIES;
	if (!r->cfg.lag_ms)
		r->cfg.lag_ms = REPL_SYNC_DEFAULT_LAG_MS;
	if (!r->cfg.fetch_wait_ms)
		r->cfg.fetch_wait_ms = 200;
	snprintf(r->group, sizeof(r->group), "%s", cfg->group);
	metrics_init(&r->m, cfg->metric_prefix);
	if (cfg->boot && cfg->boot->installed) {
		sp_metric_inc(r->m.snap_installed);
		sp_metric_set(r->m.snap_install_bytes, (int64_t)cfg->boot->bytes);
		sp_metric_set(r->m.snap_install_ms, (int64_t)cfg->boot->ms);
	}

	if ((size_t)snprintf(path, sizeof(path), "%s/repl", cfg->data_dir) >= sizeof(path)) {
		repl_node_free(r);
		return SP_EINVAL;
	}
	repl_log_config lcfg = { .segment_bytes = cfg->segment_bytes };
	if ((rc = repl_log_open(path, &lcfg, &r->log))) {
		sp_error("repl: cannot open the log in %s: %s", path, sp_strerror(rc));
		repl_node_free(r);
		return rc;
	}
	uint64_t applied;
	if ((rc = sm->store_lsn(sm->arg, &applied))) {
		repl_node_free(r);
		return rc;
	}
	repl_log_pos last = repl_log_last(r->log);
	if (applied > last.lsn || (applied > 0 && repl_log_fresh(r->log))
	    || applied + 1 < repl_log_first_lsn(r->log)) {
		sp_error("repl: the store in %s is at LSN %" PRIu64 " but its log holds %" PRIu64
			 "..%" PRIu64 "%s: the two do not belong together; rebuild this copy from "
			 "an empty data dir",
		    cfg->data_dir, applied, repl_log_first_lsn(r->log), last.lsn,
		    repl_log_fresh(r->log) ? " (a new log)" : "");
		repl_node_free(r);
		return SP_ESTORE;
	}
	repl_log_set_committed(r->log, applied);
	if ((rc = repl_snap_src_new(&r->snap, cfg->data_dir, sm->snapshot_copy, sm->arg, r->log,
		 cfg->snapshot_rate, r->m.snap_made, r->m.snap_sent))) {
		repl_node_free(r);
		return rc;
	}
	atomic_store(&r->applied, applied);
	atomic_store(&r->submitted, applied);
	repl_log_incarnation(r->log, r->inc);

	int64_t ttl_s = cfg->lease_ttl_s ? cfg->lease_ttl_s : 5;
	repl_ha_cfg hc = {
		/* keepalive (TTL/5) + one etcd call must end before TTL - margin: the fence. */
		.etcd = { .endpoints = r->etcd, .ca = cfg->etcd_ca, .cert = cfg->etcd_cert,
			.key = cfg->etcd_key, .user = cfg->etcd_user, .password = cfg->etcd_password,
			.timeout_ms = ttl_s * 1000 / 6 },
		.cluster = r->cluster,
		.group = r->group,
		.name = r->name,
		.inc = r->inc,
		.inc_len = sizeof(r->inc),
		.url = r->advertise,
		.lease_ttl_s = ttl_s,
	};
	if ((rc = repl_ha_new(&hc, &r->ha))) {
		sp_error("repl: %s", sp_strerror(rc));
		repl_node_free(r);
		return rc;
	}
	sp_metric_set(r->m.applied, (int64_t)applied);
	sp_metric_set(r->m.flushed, (int64_t)last.lsn);
	sp_info("repl %s: copy %s, log %" PRIu64 "..%" PRIu64 " (epoch %" PRIu64
		"), store at %" PRIu64,
	    r->group, r->name, repl_log_first_lsn(r->log), last.lsn, last.epoch, applied);
	*out = r;
	return SP_OK;
}

int
repl_node_start(repl_node *r)
{
	int rc;
	if ((rc = sp_nng_rep_listen_ca(&r->rep, r->listen, r->cfg.peer_ca))) {
		sp_error("repl: cannot listen on %s: %s", r->listen, sp_strerror(rc));
		return rc;
	}
	r->rep_open = true;
	for (r->nserve = 0; r->nserve < NSERVE; r->nserve++)
		if (pthread_create(&r->serve_th[r->nserve], NULL, serve_main, r))
			return SP_ENOMEM;
	if (pthread_create(&r->follow_th, NULL, follow_main, r))
		return SP_ENOMEM;
	r->follow_started = true;
	if (pthread_create(&r->manage_th, NULL, manage_main, r))
		return SP_ENOMEM;
	r->manage_started = true;
	repl_ha_callbacks cbs = { cb_status, cb_primary, cb_following, cb_fenced, r };
	if ((rc = repl_ha_loop_start(r->ha, &cbs)))
		return rc;
	r->ha_started = true;
	return SP_OK;
}

int
repl_node_gate(repl_node *r, bool write)
{
	return serve_check(r, write);
}

int
repl_node_read_fresh(repl_node *r, uint64_t max_age_ms)
{
	pthread_mutex_lock(&r->lock);
	bool fresh = !r->cfg.lazy_commit && r->role == ROLE_REPLICA && r->fresh_ms
	    && sp_mono_ms() - r->fresh_ms <= max_age_ms;
	pthread_mutex_unlock(&r->lock);
	return fresh ? SP_OK : SP_ENOTPRIMARY;
}

void
repl_node_primary_name(repl_node *r, char *buf, size_t cap)
{
	pthread_mutex_lock(&r->lock);
	snprintf(buf, cap, "%s", r->leader_name);
	pthread_mutex_unlock(&r->lock);
}

void
repl_node_stop(repl_node *r, bool resign)
{
	if (!r)
		return;
	if (r->ha_started) {
		repl_ha_loop_stop(r->ha);
		r->ha_started = false;
		if (resign)
			repl_ha_resign(r->ha);
	}
	pthread_mutex_lock(&r->lock);
	r->stopping = true;
	follow_abort(r);
	repl_sync_free(r->sync);
	r->sync = NULL;
	set_role(r, ROLE_NONE);
	pthread_mutex_unlock(&r->lock);
	if (r->rep_open) {
		nng_close(r->rep);
		r->rep_open = false;
	}
	for (int i = 0; i < r->nserve; i++)
		pthread_join(r->serve_th[i], NULL);
	r->nserve = 0;
	if (r->follow_started)
		pthread_join(r->follow_th, NULL);
	if (r->manage_started)
		pthread_join(r->manage_th, NULL);
	r->follow_started = r->manage_started = false;
}

void
repl_node_free(repl_node *r)
{
	if (!r)
		return;
	repl_node_stop(r, false);
	repl_ha_free(r->ha);
	repl_snap_src_free(r->snap);
	repl_log_close(r->log);
	repl_sync_free(r->sync);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	free(r->data_dir);
	free(r->etcd);
	free(r->cluster);
	free(r->name);
	free(r->listen);
	free(r->advertise);
	free(r);
}
