#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "sp_error.h"
#include "sp_log.h"
#include "sweep.h"

struct inbox_sweep {
	inbox_commit *commit;
	uint64_t interval_ms;
	uint32_t batch;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stopping, op_done;
	inbox_req req;
};

static void
sweep_done(inbox_req *req)
{
	inbox_sweep *sw = req->arg;
	pthread_mutex_lock(&sw->lock);
	sw->op_done = true;
	pthread_cond_broadcast(&sw->cond);
	pthread_mutex_unlock(&sw->lock);
}

/* Runs one SWEEP op to completion; returns whether more remain. */
static bool
sweep_once(inbox_sweep *sw)
{
	inbox_req *r = &sw->req;
	*r = (inbox_req) { .done = sweep_done, .arg = sw, .cost = 4096 };
	r->op.kind = INBOX_OP_SWEEP;
	r->op.sweep.limit = sw->batch;
	sw->op_done = false;
	inbox_commit_submit(sw->commit, r);
	pthread_mutex_lock(&sw->lock);
	while (!sw->op_done)
		pthread_cond_wait(&sw->cond, &sw->lock);
	pthread_mutex_unlock(&sw->lock);
	if (r->op.rc == SP_ENOTPRIMARY) {
		/* A replica: its primary sweeps, and the sweep reaches it through the log. */
		sp_debug("ttl sweep: skipped (%s)", sp_strerror(r->op.rc));
		return false;
	}
	if (r->op.rc != SP_OK) {
		sp_warn("ttl sweep: %s", sp_strerror(r->op.rc));
		return false;
	}
	if (r->op.sweep.expired || r->op.sweep.blobs)
		sp_info("ttl sweep: %llu expired entries, %llu dedup records, %llu blobs",
		    (unsigned long long)r->op.sweep.expired,
		    (unsigned long long)r->op.sweep.dedup_gone,
		    (unsigned long long)r->op.sweep.blobs);
	return r->op.sweep.more;
}

static void *
sweep_main(void *arg)
{
	inbox_sweep *sw = arg;
	pthread_mutex_lock(&sw->lock);
	while (!sw->stopping) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += (time_t)(sw->interval_ms / 1000);
		ts.tv_nsec += (long)(sw->interval_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		int rc = 0;
		while (!sw->stopping && rc != ETIMEDOUT)
			rc = pthread_cond_timedwait(&sw->cond, &sw->lock, &ts);
		if (sw->stopping)
			break;
		pthread_mutex_unlock(&sw->lock);
		bool more = true;
		while (more && !sw->stopping)
			more = sweep_once(sw);
		pthread_mutex_lock(&sw->lock);
	}
	pthread_mutex_unlock(&sw->lock);
	return NULL;
}

int
inbox_sweep_start(inbox_sweep **out, inbox_commit *c, uint64_t interval_ms, uint32_t batch)
{
	inbox_sweep *sw = calloc(1, sizeof(*sw));
	pthread_condattr_t ca;
	if (!sw)
		return SP_ENOMEM;
	sw->commit = c;
	sw->interval_ms = interval_ms ? interval_ms : 1000;
	sw->batch = batch ? batch : 1000;
	pthread_mutex_init(&sw->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&sw->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&sw->thread, NULL, sweep_main, sw) != 0) {
		pthread_mutex_destroy(&sw->lock);
		pthread_cond_destroy(&sw->cond);
		free(sw);
		return SP_ENOMEM;
	}
	*out = sw;
	return SP_OK;
}

void
inbox_sweep_stop(inbox_sweep *sw)
{
	if (!sw)
		return;
	pthread_mutex_lock(&sw->lock);
	sw->stopping = true;
	pthread_cond_broadcast(&sw->cond);
	pthread_mutex_unlock(&sw->lock);
	pthread_join(sw->thread, NULL);
	pthread_mutex_destroy(&sw->lock);
	pthread_cond_destroy(&sw->cond);
	free(sw);
}
