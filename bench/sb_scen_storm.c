/* storm: U devices each with K messages queued while they were offline reconnect at once
 * (bounded only by --concurrency handshakes in flight per process) and drain their
 * inboxes. Setup: each process's senders queue K numbered messages for each of its
 * recipients and wait for every SENT (durable), then go offline. Measured: from go until
 * every recipient has all K messages (and QUEUE_EMPTY). Each recipient checks its own
 * sequence 0..K-1: missing ones are lost, repeated ones duplicated. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/sb.h"
#include "sp_error.h"

#define DRAIN_LIMIT_S 300

typedef struct storm_run {
	const sb_account *acc; /* recipients [0, users), then senders */
	uint32_t run_id;
} storm_run;

typedef struct rcpt {
	sb_conn c;
	sb_track seen;
	uint32_t sent_ok; /* SENTs for it during setup */
	bool complete;
} rcpt;

typedef struct sender {
	sb_conn c;
	size_t next_job, end_job; /* jobs: recipient-major (recipient, seq) */
	int inflight;
	bool empty;
} sender;

typedef struct storm_proc {
	rcpt *r;
	sender *s;
	size_t rlo, rn, slo, sn;
	size_t conns_next;
	int conns_inflight;
	size_t senders_ready, complete;
	uint64_t jobs_left;
	bool going;
	struct event *tick;
	uint8_t *buf;
} storm_proc;

static storm_proc P;
static const storm_run *RUN;
static sb_worker *W;

static void sender_cb(sb_conn *c, int ev, const sp_frame *f);
static void rcpt_cb(sb_conn *c, int ev, const sp_frame *f);

static void
send_job(sender *s, size_t job)
{
	size_t ri = job / (size_t)sb_o.queued;
	sb_msg m = {RUN->run_id, (uint32_t)(P.rlo + ri), (uint32_t)(job % (size_t)sb_o.queued), sb_now_ns()};
	uint8_t id[16];
	sb_payload_make(P.buf, (size_t)sb_o.size, &m);
	sb_msg_id(id, &m);
	sp_frame q, item;
	sp_frame_init(&q, SP_T_SEND, job, true);
	sp_frame_set_bin(&q, SP_F_MSG_ID, id, 16);
	sp_frame_set_u64(&q, SP_F_TO_USER, RUN->acc[P.rlo + ri].user);
	sp_frame_init(&item, SP_T_SEND_ITEM, 0, false);
	sp_frame_set_u64(&item, SP_F_DEVICE, RUN->acc[P.rlo + ri].device);
	sp_frame_set_u64(&item, SP_F_ETYPE, 1);
	sp_frame_set_bin(&item, SP_F_CT, P.buf, (size_t)sb_o.size);
	sp_frame_set_recs(&q, SP_F_ITEMS, &item, 1);
	if (sb_conn_send(&s->c, &q) == SP_OK) {
		W->st.sent++;
		s->inflight++;
	}
}

static void
pump(sender *s)
{
	while (s->inflight < sb_o.window && s->next_job < s->end_job)
		send_job(s, s->next_job++);
}

static void
setup_done(void)
{
	for (size_t i = 0; i < P.sn; i++)
		sb_conn_close(&P.s[i].c);
	sb_worker_ready(W);
}

/* Resend after a rate limit: the job number is the request id. */
static void
resend_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	uintptr_t v = (uintptr_t)arg;
	sender *s = &P.s[v & 0xffff];
	s->inflight--;
	send_job(s, v >> 16);
}

static void
sender_cb(sb_conn *c, int ev, const sp_frame *f)
{
	sender *s = c->user;
	if (ev == SB_EV_CLOSED) {
		if (P.jobs_left) {
			fprintf(stderr, "spbench: a storm sender lost its connection during setup\n");
			sb_worker_done(W);
		}
		return;
	}
	if (ev == SB_EV_EMPTY && !s->empty) {
		s->empty = true;
		pump(s);
		return;
	}
	if (ev != SB_EV_FRAME || !f->has_id)
		return;
	if (f->type == SP_T_ERROR && sp_frame_i64(f, SP_F_CODE) == SP_ERATELIMIT) {
		W->st.rate_limited++;
		uint64_t after = sp_frame_has(f, SP_F_RETRY_AFTER) ? sp_frame_u64(f, SP_F_RETRY_AFTER) : 10;
		struct timeval tv = {(time_t)(after / 1000), (suseconds_t)(after % 1000) * 1000};
		uintptr_t v = ((uintptr_t)f->id << 16) | (uintptr_t)(s - P.s);
		event_base_once(W->net.base, -1, EV_TIMEOUT, resend_cb, (void *)v, &tv);
		return;
	}
	if (f->type != SP_T_SENT && f->type != SP_T_ERROR)
		return;
	s->inflight--;
	if (f->type == SP_T_SENT) {
		W->st.sent_ok++;
		P.r[f->id / (uint64_t)sb_o.queued].sent_ok++;
	} else {
		W->st.send_err++;
	}
	if (--P.jobs_left == 0) {
		setup_done();
		return;
	}
	pump(s);
}

static void
connect_more(void)
{
	while (P.conns_inflight < sb_o.concurrency && P.conns_next < P.rn) {
		size_t i = P.conns_next++;
		if (sb_conn_start(&P.r[i].c, &W->net, (int)((P.rlo + i) % (size_t)sb_o.ntargets),
				  &RUN->acc[P.rlo + i], rcpt_cb, &P.r[i]) == SP_OK)
			P.conns_inflight++;
	}
}

static void
finish(void)
{
	for (size_t i = 0; i < P.rn; i++) {
		rcpt *r = &P.r[i];
		uint64_t got = r->seen.distinct;
		/* Only what was SENT (durable) can be lost. */
		W->st.lost += r->sent_ok > got ? r->sent_ok - got : 0;
		sb_conn_close(&r->c);
	}
	event_del(P.tick);
	sb_worker_done(W);
}

static void
rcpt_cb(sb_conn *c, int ev, const sp_frame *f)
{
	rcpt *r = c->user;
	sb_stats *st = &W->st;
	if (ev == SB_EV_READY || (ev == SB_EV_CLOSED && !c->tag)) {
		c->tag = 1;
		P.conns_inflight--;
		connect_more();
		return;
	}
	if (ev == SB_EV_EMPTY) {
		/* Everything was stored before the reconnect: QUEUE_EMPTY ends this device's drain. */
		if (!r->complete) {
			r->complete = true;
			st->drained++;
			if (++P.complete == P.rn)
				finish();
		}
		return;
	}
	if (ev != SB_EV_FRAME || f->type != SP_T_DELIVER)
		return;
	if (sp_frame_u64(f, SP_F_ETYPE) >= 10) {
		st->receipts++;
		return;
	}
	sp_bin env = sp_frame_bin(f, SP_F_ENV);
	sb_msg m;
	if (!sb_payload_parse(env.p, env.len, &m) || m.run != RUN->run_id)
		return; /* a leftover of an earlier run */
	if (m.stream != (uint32_t)(P.rlo + (size_t)(r - P.r))) {
		st->bad_payload++;
		return;
	}
	if (sb_track_mark(&r->seen, m.seq) == 0) {
		st->dups++;
		return;
	}
	st->delivered++;
	st->t_last_delivery = sb_now_ns();
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (P.going && sb_now_ns() > W->st.t_go + (uint64_t)DRAIN_LIMIT_S * 1000000000u) {
		fprintf(stderr, "spbench: storm not drained after %d s\n", DRAIN_LIMIT_S);
		finish();
	}
}

static void
storm_setup(sb_worker *w)
{
	W = w;
	RUN = w->sc->arg;
	memset(&P, 0, sizeof(P));
	size_t hi;
	sb_worker_slice(w, (size_t)sb_o.users, &P.rlo, &hi);
	P.rn = hi - P.rlo;
	sb_worker_slice(w, (size_t)sb_o.storm_senders, &P.slo, &hi);
	P.sn = hi - P.slo;
	P.r = calloc(P.rn + 1, sizeof(rcpt));
	P.s = calloc(P.sn + 1, sizeof(sender));
	P.buf = malloc((size_t)sb_o.size);
	P.tick = event_new(w->net.base, -1, EV_PERSIST, on_tick, NULL);
	struct timeval tv = {1, 0};
	if (!P.r || !P.s || !P.buf || !P.tick || event_add(P.tick, &tv) || !P.sn)
		_exit(2);
	w->st.conns_target = P.rn;
	size_t jobs = P.rn * (size_t)sb_o.queued;
	P.jobs_left = jobs;
	for (size_t i = 0; i < P.sn; i++) {
		sender *s = &P.s[i];
		s->next_job = jobs * i / P.sn;
		s->end_job = jobs * (i + 1) / P.sn;
		if (sb_conn_start(&s->c, &w->net, (int)(i % (size_t)sb_o.ntargets),
				  &RUN->acc[(size_t)sb_o.users + P.slo + i], sender_cb, s))
			_exit(2);
	}
	if (!jobs)
		setup_done();
}

static void
storm_go(sb_worker *w)
{
	(void)w;
	P.going = true;
	if (!P.rn) {
		finish();
		return;
	}
	connect_more();
}

static void
storm_stop(sb_worker *w)
{
	(void)w;
	finish();
}

int
sb_scen_storm(sb_result *r)
{
	if (sb_o.storm_senders < sb_o.procs)
		sb_o.storm_senders = sb_o.procs;
	size_t have;
	sb_account *acc;
	int rc = sb_accounts_get((size_t)sb_o.users + (size_t)sb_o.storm_senders, &acc, &have);
	if (rc)
		return rc;
	storm_run run = {acc, randombytes_random()};
	sb_scen sc = {"storm", storm_setup, storm_go, storm_stop, &run};
	if (!sb_o.quiet)
		fprintf(stderr, "spbench: queueing %d x %d messages, then %d devices reconnect at once\n", sb_o.users,
			sb_o.queued, sb_o.users);
	rc = sb_procs_run(&sc, sb_o.procs, NULL, NULL, &r->st);
	const sb_stats *s = &r->st;
	r->connections = s->conns_ready;
	/* Drained = the last recipient completed: its last message (or login, if it had none). */
	uint64_t end = s->t_last_delivery > s->t_last_ready ? s->t_last_delivery : s->t_last_ready;
	if (s->t_go && end > s->t_go) {
		r->elapsed_s = (double)(end - s->t_go) / 1e9;
		r->delivered_per_s = (double)s->delivered / r->elapsed_s;
	}
	sb_result_extra(r, "drain_s", r->elapsed_s);
	sb_result_extra(r, "devices_complete", (double)s->drained);
	free(acc);
	return rc;
}
