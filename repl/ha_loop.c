/* The HA loop: one thread per repl_ha that renews, publishes, campaigns and watches (the
 * shape of Patroni's HA loop, but woken by the watch instead of polling). */
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "repl/ha.h"
#include "repl/ha_internal.h"
#include "sp_error.h"
#include "sp_log.h"

#define RETRY_MS 200 /* after an etcd error, before trying again */
/* While a leader serves, a copy's new LSNs are published at most this often: every put
 * wakes every watcher of the group (the other copies, the routers, and through the map
 * every connsrv), and under load the LSNs change on every batch. Campaigns never wait
 * for it: without a leader, positions go out at once (repl_ha_choose compares them). */
#define STATUS_EVERY_MS 5000

typedef struct loop_state {
	repl_ha_view view;
	bool have_view;
	bool primary;
	int64_t epoch;          /* while primary */
	int64_t next_renew;     /* when the next keepalive is due */
	int64_t followed_rev;   /* create revision of the leader key last reported */
	int64_t defer_since;    /* when this candidate began to defer, 0: not deferring */
	int64_t next_status;    /* an LSN-only change waits until then, 0: none waits */
	int64_t published_ms;   /* when the status was last written */
	repl_ha_status status;
} loop_state;

static void
sleep_ms(int64_t ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static bool
status_eq(const repl_ha_status *a, const repl_ha_status *b)
{
	return a->role == b->role && a->epoch == b->epoch && repl_ha_pos_cmp(a->last, b->last) == 0 &&
	       a->flushed_lsn == b->flushed_lsn;
}

static void
keep_view(repl_ha *ha, loop_state *s)
{
	s->have_view = true;
	pthread_mutex_lock(&ha->view_mu);
	ha->loop_view = s->view;
	ha->have_view = true;
	pthread_mutex_unlock(&ha->view_mu);
}

static void
fence(repl_ha *ha, loop_state *s, const char *why)
{
	sp_warn("repl_ha %s: fenced at epoch %" PRId64 ": %s", ha->self.name, s->epoch, why);
	int rc = repl_ha_resign(ha); /* may_serve is false before this returns */
	if (rc)
		sp_warn("repl_ha %s: revoking the lease: %s", ha->self.name, sp_errname(rc));
	s->primary = false;
	s->followed_rev = 0;
	s->have_view = false;
	if (ha->cbs.fenced)
		ha->cbs.fenced(ha->cbs.arg, s->epoch);
	s->epoch = 0;
}

/* Publishes the caller's status (with our role and epoch) when it changed. */
static void
publish(repl_ha *ha, loop_state *s)
{
	repl_ha_status st = {0};
	if (ha->cbs.status)
		ha->cbs.status(ha->cbs.arg, &st);
	st.role = s->primary ? REPL_HA_PRIMARY : s->followed_rev ? REPL_HA_REPLICA : REPL_HA_NONE;
	if (s->primary && st.epoch < s->epoch)
		st.epoch = s->epoch;
	s->status = st;
	s->next_status = 0;
	if (ha->published && status_eq(&st, &ha->last_status))
		return;
	int64_t now = repl_ha_now_ms();
	bool positions_only = ha->published && st.role == ha->last_status.role
			      && st.epoch == ha->last_status.epoch;
	if (positions_only && s->have_view && s->view.leader.present
	    && now - s->published_ms < STATUS_EVERY_MS) {
		s->next_status = s->published_ms + STATUS_EVERY_MS;
		return;
	}
	int rc = repl_ha_publish(ha, &st);
	if (rc) {
		sp_warn_rl("repl_ha %s: publishing status: %s", ha->self.name, sp_errname(rc));
		return;
	}
	s->published_ms = now;
	if (s->next_renew == 0)
		s->next_renew = now + ha->keepalive_ms;
}

static void
renew(repl_ha *ha, loop_state *s, int64_t now)
{
	if (!ha->lease || now < s->next_renew)
		return;
	int rc = repl_ha_renew(ha);
	if (rc == SP_OK) {
		s->next_renew = now + ha->keepalive_ms;
		return;
	}
	sp_warn_rl("repl_ha %s: lease keepalive: %s", ha->self.name, sp_errname(rc));
	/* Expired: a new lease comes with the next publish. Else retry soon. */
	s->next_renew = rc == SP_ENOTFOUND ? 0 : now + RETRY_MS;
}

/* Decides on a fresh view: still primary, follow a new leader, or campaign. */
static void
decide(repl_ha *ha, loop_state *s, int64_t now)
{
	const repl_ha_leader *l = &s->view.leader;
	if (s->primary) {
		if (!l->present || l->create_rev != atomic_load(&ha->leader_rev))
			fence(ha, s, "the leader key is no longer ours");
		return;
	}
	if (l->present && l->parsed && strcmp(l->id.name, ha->self.name) == 0) {
		/* Our name on the key while we are not primary: a campaign whose answer was
		 * lost, or a lease we dropped. Nobody serves under it; give it up. */
		sp_warn("repl_ha %s: the leader key holds our name but we are not primary; "
			"revoking its lease", ha->self.name);
		int rc = l->lease == ha->lease ? repl_ha_resign(ha)
					       : sp_etcd_lease_revoke(ha->etcd, l->lease);
		if (rc && rc != SP_ENOTFOUND)
			sp_warn_rl("repl_ha %s: revoking: %s", ha->self.name, sp_errname(rc));
		s->have_view = false;
		return;
	}
	if (l->present) {
		s->defer_since = 0;
		if (l->create_rev != s->followed_rev) {
			s->followed_rev = l->create_rev;
			sp_info("repl_ha %s: following %s at epoch %" PRId64, ha->self.name,
				l->parsed ? l->id.name : "?", l->epoch);
			if (ha->cbs.following)
				ha->cbs.following(ha->cbs.arg, l);
		}
		return;
	}
	int64_t deferred = s->defer_since ? now - s->defer_since : 0;
	repl_ha_choice c =
	    repl_ha_choose(&s->view, &ha->self, s->status.last, deferred, ha->defer_max_ms);
	if (c == REPL_HA_DEFER && !s->defer_since)
		s->defer_since = now;
	if (c != REPL_HA_GO)
		return;
	s->defer_since = 0;
	int64_t epoch;
	int rc = repl_ha_campaign(ha, &s->view, s->status.last, &epoch);
	s->have_view = false; /* whatever happened, read again */
	if (rc) {
		if (rc != SP_EEXIST && rc != SP_ESTATE) {
			sp_warn_rl("repl_ha %s: campaign: %s", ha->self.name, sp_errname(rc));
			sleep_ms(RETRY_MS); /* an etcd error: do not spin */
		}
		return;
	}
	s->primary = true;
	s->epoch = epoch;
	s->followed_rev = 0;
	s->next_renew = repl_ha_now_ms() + ha->keepalive_ms;
	if (repl_ha_read(ha, &s->view) == SP_OK)
		keep_view(ha, s);
	if (ha->cbs.primary)
		ha->cbs.primary(ha->cbs.arg, epoch, &s->view);
}

/* How long to watch: until the next keepalive, the fencing deadline, the end of a
 * deferral or a held-back status, whichever comes first. */
static long
watch_ms(const repl_ha *ha, const loop_state *s, int64_t now)
{
	int64_t until = s->next_renew ? s->next_renew : now + ha->keepalive_ms;
	if (s->primary && atomic_load(&ha->serve_until) < until)
		until = atomic_load(&ha->serve_until);
	if (s->defer_since && s->defer_since + ha->defer_max_ms < until)
		until = s->defer_since + ha->defer_max_ms;
	if (s->next_status && s->next_status < until)
		until = s->next_status;
	int64_t ms = until - now;
	return ms < 10 ? 10 : ms > ha->keepalive_ms ? (long)ha->keepalive_ms : (long)ms;
}

static void *
loop_main(void *arg)
{
	repl_ha *ha = arg;
	loop_state s;
	memset(&s, 0, sizeof(s));
	while (!atomic_load(&ha->stop)) {
		int64_t now = repl_ha_now_ms();
		renew(ha, &s, now);
		if (s.primary && atomic_load(&ha->step_down))
			fence(ha, &s, "a batch was left unacknowledged at the fencing deadline");
		else if (s.primary && !repl_ha_may_serve(ha, repl_ha_now_ms()))
			fence(ha, &s, "the lease could not be renewed in time");
		publish(ha, &s);
		if (!s.have_view) {
			int rc = repl_ha_read(ha, &s.view);
			if (rc) {
				sp_warn_rl("repl_ha %s: reading the group: %s", ha->self.name,
					   sp_errname(rc));
				sleep_ms(RETRY_MS);
				continue;
			}
			keep_view(ha, &s);
		}
		now = repl_ha_now_ms();
		decide(ha, &s, now);
		if (!s.have_view || atomic_load(&ha->stop))
			continue;
		int rc = repl_ha_wait(ha, &s.view, watch_ms(ha, &s, repl_ha_now_ms()));
		if (rc == SP_OK) {
			keep_view(ha, &s);
		} else if (rc != SP_ETIMEDOUT) {
			sp_warn_rl("repl_ha %s: watching the group: %s", ha->self.name,
				   sp_errname(rc));
			s.have_view = false;
			sleep_ms(RETRY_MS);
		}
	}
	return NULL;
}

int
repl_ha_loop_start(repl_ha *ha, const repl_ha_callbacks *cbs)
{
	if (ha->reader)
		return SP_EPERM;
	if (ha->running)
		return SP_ESTATE;
	ha->cbs = *cbs;
	atomic_store(&ha->stop, false);
	if (pthread_create(&ha->thread, NULL, loop_main, ha) != 0)
		return SP_ENOMEM;
	ha->running = true;
	return SP_OK;
}

void
repl_ha_loop_stop(repl_ha *ha)
{
	if (!ha->running)
		return;
	atomic_store(&ha->stop, true);
	pthread_join(ha->thread, NULL);
	ha->running = false;
}

int
repl_ha_loop_view(repl_ha *ha, repl_ha_view *view)
{
	pthread_mutex_lock(&ha->view_mu);
	int rc = ha->have_view ? SP_OK : SP_ESTATE;
	if (rc == SP_OK)
		*view = ha->loop_view;
	pthread_mutex_unlock(&ha->view_mu);
	return rc;
}
