/* throughput and latency: P sender/recipient pairs, each pair's two devices on different
 * connsrvs (so every message crosses the cluster: SEND on one, DELIVER pushed over NNG to
 * the other). throughput is a closed loop: each sender keeps `window` messages that its
 * recipient has not received yet in flight. latency is an open loop: sends are scheduled
 * by the clock at a fixed total rate and latency is measured from the scheduled time, so
 * a stall shows up as latency instead of as a slower sender. A message counts as
 * delivered when the recipient has it (and ACKs it, which the connection does for every
 * read burst); lost = SENT but never delivered; duplicated = delivered twice. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/sb.h"
#include "sp_error.h"

#define GRACE_S 15
#define TICK_US 500

typedef struct msg_run {
	const sb_account *acc;
	size_t npairs;
	bool open_loop;
	uint32_t run_id;
} msg_run;

typedef struct pair {
	sb_conn snd, rcv;
	uint32_t next_seq;
	uint64_t inflight; /* sent, not yet received (closed loop) */
	uint64_t unanswered; /* sent, no SENT or ERROR yet */
	sb_track sent, seen;
	sb_crypto_pair *cp;
	int ready; /* 0..4: two logins and two QUEUE_EMPTYs */
} pair;

typedef struct msg_proc {
	pair *p;
	size_t lo, n;
	size_t connecting, next_conn; /* connections started, of 2n */
	int inflight_conns;
	bool running, stopping;
	uint64_t t_stop, scheduled;
	double rate; /* this process's share, msgs/s */
	struct event *tick;
	uint8_t *buf;
} msg_proc;

static msg_proc P;
static const msg_run *RUN;
static sb_worker *W;

static void msg_cb(sb_conn *c, int ev, const sp_frame *f);

static int
send_msg(pair *pr, const sb_msg *m)
{
	uint8_t id[16];
	size_t len = (size_t)sb_o.size;
	uint8_t *ct = P.buf, *enc = NULL;
	size_t ctlen = len;
	sb_payload_make(P.buf, len, m);
	sb_msg_id(id, m);
	if (pr->cp) {
		if (sb_crypto_encrypt(pr->cp, &W->st, P.buf, len, &enc, &ctlen))
			return SP_ECRYPTO;
		ct = enc;
	}
	sp_frame q, item;
	sp_frame_init(&q, SP_T_SEND, m->seq, true);
	sp_frame_set_bin(&q, SP_F_MSG_ID, id, 16);
	sp_frame_set_u64(&q, SP_F_TO_USER, pr->rcv.acct->user);
	sp_frame_init(&item, SP_T_SEND_ITEM, 0, false);
	sp_frame_set_u64(&item, SP_F_DEVICE, pr->rcv.acct->device);
	sp_frame_set_u64(&item, SP_F_ETYPE, pr->cp ? 2 : 1);
	sp_frame_set_bin(&item, SP_F_CT, ct, ctlen);
	sp_frame_set_recs(&q, SP_F_ITEMS, &item, 1);
	int rc = sb_conn_send(&pr->snd, &q);
	free(enc);
	if (rc == SP_OK) {
		W->st.sent++;
		pr->unanswered++;
	}
	return rc;
}

static void
send_new(pair *pr, uint64_t t_ns)
{
	sb_msg m = {RUN->run_id, (uint32_t)(pr - P.p + P.lo), pr->next_seq, t_ns};
	if (send_msg(pr, &m) == SP_OK) {
		pr->next_seq++;
		pr->inflight++;
	}
}

static void
fill_window(pair *pr)
{
	if (RUN->open_loop)
		return; /* sends follow the clock, not the replies */
	while (P.running && !P.stopping && pr->inflight < (uint64_t)sb_o.window && pr->snd.open)
		send_new(pr, sb_now_ns());
}

static bool
all_quiet(void)
{
	for (size_t i = 0; i < P.n; i++) {
		pair *pr = &P.p[i];
		if (pr->unanswered || sb_track_lost(&pr->sent, &pr->seen))
			return false;
	}
	return true;
}

static void
finish(void)
{
	sb_stats *st = &W->st;
	for (size_t i = 0; i < P.n; i++) {
		st->lost += sb_track_lost(&P.p[i].sent, &P.p[i].seen);
		sb_conn_close(&P.p[i].snd);
		sb_conn_close(&P.p[i].rcv);
	}
	event_del(P.tick);
	sb_worker_done(W);
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	uint64_t now = sb_now_ns();
	if (P.running && !P.stopping && now >= P.t_stop)
		P.stopping = true;
	if (P.stopping) {
		if (all_quiet() || now >= P.t_stop + (uint64_t)GRACE_S * 1000000000u)
			finish();
		return;
	}
	if (!P.running || !RUN->open_loop)
		return;
	/* Every send that is due by now goes out now, stamped with when it was due. */
	uint64_t due = (uint64_t)((double)(now - W->st.t_go) * P.rate / 1e9);
	while (P.scheduled < due) {
		pair *pr = &P.p[P.scheduled % P.n];
		uint64_t t = W->st.t_go + (uint64_t)((double)P.scheduled * 1e9 / P.rate);
		P.scheduled++;
		if (pr->snd.open)
			send_new(pr, t);
	}
}

static void
resend_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	uint8_t *id = arg;
	sb_msg m;
	sb_msg_from_id(id, &m);
	free(id);
	m.run = RUN->run_id;
	if (m.stream >= P.lo && m.stream < P.lo + P.n)
		send_msg(&P.p[m.stream - P.lo], &m);
}

static void
on_sender_frame(pair *pr, const sp_frame *f)
{
	sb_stats *st = &W->st;
	if (f->type == SP_T_DELIVER) {
		if (sp_frame_u64(f, SP_F_ETYPE) >= 10)
			st->receipts++;
		return;
	}
	if (f->type != SP_T_SENT && f->type != SP_T_ERROR && f->type != SP_T_MISMATCHED_DEVICES)
		return;
	if (!sp_frame_has(f, SP_F_MSG_ID))
		return;
	sb_msg m;
	sb_msg_from_id(sp_frame_bin(f, SP_F_MSG_ID).p, &m);
	uint64_t now = sb_now_ns();
	pr->unanswered -= pr->unanswered > 0;
	if (f->type == SP_T_SENT) {
		st->sent_ok++;
		st->sent_ok_win += now <= P.t_stop;
		st->t_last_send = now;
		sb_hist_add(&st->lat_sent, (now - m.t_ns) / 1000);
		sb_track_mark(&pr->sent, m.seq);
		return;
	}
	if (f->type == SP_T_ERROR && sp_frame_i64(f, SP_F_CODE) == SP_ERATELIMIT) {
		/* Same msg_id and schedule again later: the delay shows in the latency. */
		st->rate_limited++;
		uint64_t after = sp_frame_has(f, SP_F_RETRY_AFTER) ? sp_frame_u64(f, SP_F_RETRY_AFTER) : 10;
		uint8_t *id = malloc(16);
		struct timeval tv = {(time_t)(after / 1000), (suseconds_t)(after % 1000) * 1000};
		if (id) {
			memcpy(id, sp_frame_bin(f, SP_F_MSG_ID).p, 16);
			event_base_once(W->net.base, -1, EV_TIMEOUT, resend_cb, id, &tv);
		}
		return;
	}
	st->send_err++;
	pr->inflight -= pr->inflight > 0;
	fill_window(pr);
}

static void
on_recipient_frame(pair *pr, const sp_frame *f)
{
	sb_stats *st = &W->st;
	if (f->type != SP_T_DELIVER || sp_frame_u64(f, SP_F_ETYPE) >= 10)
		return;
	sp_bin env = sp_frame_bin(f, SP_F_ENV);
	uint8_t *pt = NULL;
	size_t ptlen = env.len;
	const uint8_t *body = env.p;
	if (pr->cp) {
		if (sb_crypto_decrypt(pr->cp, st, env.p, env.len, &pt, &ptlen)) {
			st->bad_payload++;
			return;
		}
		body = pt;
	}
	sb_msg m;
	bool ok = sb_payload_parse(body, ptlen, &m);
	free(pt);
	if (!ok || m.run != RUN->run_id || m.stream != (uint32_t)(pr - P.p + P.lo)) {
		st->bad_payload += ok && m.run == RUN->run_id;
		return; /* a leftover of an earlier run */
	}
	int fresh = sb_track_mark(&pr->seen, m.seq);
	if (fresh == 0) {
		st->dups++;
		return;
	}
	uint64_t now = sb_now_ns();
	st->delivered++;
	st->delivered_win += now <= P.t_stop;
	st->t_last_delivery = now;
	sb_hist_add(&st->lat_recv, (now - m.t_ns) / 1000);
	pr->inflight -= pr->inflight > 0;
	fill_window(pr);
}

static void
connect_more(void)
{
	while (P.inflight_conns < sb_o.concurrency && P.next_conn < 2 * P.n) {
		size_t k = P.next_conn++;
		pair *pr = &P.p[k / 2];
		size_t gi = k / 2 + P.lo;
		bool snd = k % 2 == 0;
		sb_conn *c = snd ? &pr->snd : &pr->rcv;
		/* Sender and recipient of a pair sit on different connsrvs. */
		int target = (int)((gi + (snd ? 0 : 1)) % (size_t)sb_o.ntargets);
		c->tag = 0;
		if (sb_conn_start(c, &W->net, target, &RUN->acc[2 * gi + (snd ? 0 : 1)], msg_cb, pr) == SP_OK)
			P.inflight_conns++;
	}
}

static void
check_ready(void)
{
	for (size_t i = 0; i < P.n; i++)
		if (P.p[i].ready < 4)
			return;
	sb_worker_ready(W);
}

static void
msg_cb(sb_conn *c, int ev, const sp_frame *f)
{
	pair *pr = c->user;
	bool snd = c == &pr->snd;
	switch (ev) {
	case SB_EV_READY:
		pr->ready++;
		P.inflight_conns--;
		connect_more();
		break;
	case SB_EV_EMPTY:
		pr->ready++;
		if (!P.running)
			check_ready();
		break;
	case SB_EV_CLOSED:
		if (!P.running && !c->tag) {
			/* A connection that cannot log in makes the run meaningless. */
			fprintf(stderr, "spbench: a %s connection failed during setup\n", snd ? "sender" : "recipient");
			P.stopping = true;
			P.running = true;
			P.t_stop = 0;
			if (!c->open)
				P.inflight_conns--;
			finish();
		}
		break;
	case SB_EV_FRAME:
		if (!P.running)
			break; /* the drain of leftovers from earlier runs */
		if (snd)
			on_sender_frame(pr, f);
		else
			on_recipient_frame(pr, f);
		break;
	}
	if (ev == SB_EV_READY)
		c->tag = 1;
}

static void
msg_setup(sb_worker *w)
{
	W = w;
	RUN = w->sc->arg;
	memset(&P, 0, sizeof(P));
	size_t lo, hi;
	sb_worker_slice(w, RUN->npairs, &lo, &hi);
	P.lo = lo;
	P.n = hi - lo;
	P.rate = sb_o.rate / (double)w->nprocs;
	w->st.conns_target = 2 * P.n;
	P.p = calloc(P.n ? P.n : 1, sizeof(pair));
	P.buf = malloc((size_t)sb_o.size);
	P.tick = event_new(w->net.base, -1, EV_PERSIST, on_tick, NULL);
	struct timeval tv = {0, TICK_US};
	if (!P.p || !P.buf || !P.tick || event_add(P.tick, &tv))
		_exit(2);
	for (size_t i = 0; sb_o.crypto && i < P.n; i++) {
		if (sb_crypto_pair_new(&P.p[i].cp)) {
			fprintf(stderr, "spbench: Signal session setup failed\n");
			_exit(2);
		}
	}
	if (!P.n) {
		sb_worker_ready(w);
		return;
	}
	connect_more();
}

static void
msg_go(sb_worker *w)
{
	P.running = true;
	P.t_stop = w->st.t_go + (uint64_t)(sb_o.duration_s * 1e9);
	if (!P.n) {
		finish();
		return;
	}
	if (!RUN->open_loop)
		for (size_t i = 0; i < P.n; i++)
			fill_window(&P.p[i]);
}

static void
msg_stop(sb_worker *w)
{
	(void)w;
	P.running = true;
	P.stopping = true;
	P.t_stop = 0; /* no grace: stop now */
	finish();
}

static int
run_pairs(sb_result *r, bool open_loop)
{
	size_t have;
	sb_account *acc;
	int rc = sb_accounts_get(2 * (size_t)sb_o.pairs, &acc, &have);
	if (rc)
		return rc;
	msg_run run = {acc, (size_t)sb_o.pairs, open_loop, randombytes_random()};
	sb_scen sc = {r->scenario, msg_setup, msg_go, msg_stop, &run};
	rc = sb_procs_run(&sc, sb_o.procs, NULL, NULL, &r->st);
	const sb_stats *s = &r->st;
	r->connections = s->conns_ready;
	/* Rates over the measured duration; the drain afterwards counts for loss and latency only. */
	r->sent_per_s = (double)s->sent_ok_win / sb_o.duration_s;
	r->delivered_per_s = (double)s->delivered_win / sb_o.duration_s;
	r->elapsed_s = s->t_go && s->t_done > s->t_go ? (double)(s->t_done - s->t_go) / 1e9 : 0;
	if (open_loop)
		sb_result_extra(r, "offered_rate", sb_o.rate);
	free(acc);
	return rc;
}

int
sb_scen_throughput(sb_result *r)
{
	return run_pairs(r, false);
}

int
sb_scen_latency(sb_result *r)
{
	return run_pairs(r, true);
}
