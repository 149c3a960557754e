/* connections: N idle logged-in TLS connections, opened with a bounded number of
 * handshakes in flight per process and held; the parent measures connsrv's RSS and the
 * kernel's TCP memory before and while they are held. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/sb.h"
#include "sp_error.h"

typedef struct conn_run {
	const sb_account *acc;
	size_t n;
} conn_run;

typedef struct conn_proc {
	sb_conn *c;
	size_t lo, hi, next, settled;
	int inflight;
	bool stopping;
} conn_proc;

static void conn_cb(sb_conn *c, int ev, const sp_frame *f);

static void
open_more(sb_worker *w)
{
	conn_proc *p = w->priv;
	const conn_run *run = w->sc->arg;
	while (!p->stopping && p->inflight < sb_o.concurrency && p->next < p->hi) {
		size_t i = p->next++;
		sb_conn *c = &p->c[i - p->lo];
		c->idx = i;
		if (sb_conn_start(c, &w->net, (int)(i % (size_t)sb_o.ntargets), &run->acc[i], conn_cb, w)) {
			p->settled++;
			continue;
		}
		p->inflight++;
	}
	if (p->settled == p->hi - p->lo)
		sb_worker_ready(w);
}

static void
conn_cb(sb_conn *c, int ev, const sp_frame *f)
{
	(void)f;
	sb_worker *w = c->user;
	conn_proc *p = w->priv;
	/* tag: 1 once the connection's fate (logged in, or failed) has been counted. */
	if ((ev != SB_EV_READY && ev != SB_EV_CLOSED) || c->tag)
		return;
	c->tag = 1;
	p->inflight--;
	p->settled++;
	open_more(w);
}

static void
conn_setup(sb_worker *w)
{
	const conn_run *run = w->sc->arg;
	conn_proc *p = calloc(1, sizeof(*p));
	if (!p)
		_exit(2);
	w->priv = p;
	sb_worker_slice(w, run->n, &p->lo, &p->hi);
	p->next = p->lo;
	w->st.conns_target = p->hi - p->lo;
	if (!(p->c = calloc(p->hi - p->lo + 1, sizeof(sb_conn))))
		_exit(2);
	open_more(w);
}

static void
conn_go(sb_worker *w)
{
	(void)w;
}

static void
conn_stop(sb_worker *w)
{
	conn_proc *p = w->priv;
	p->stopping = true;
	for (size_t i = 0; i < p->hi - p->lo; i++)
		sb_conn_close(&p->c[i]);
	sb_worker_done(w);
}

typedef struct hold_ctx {
	uint64_t rss0, kmem0, rss1, kmem1, slab0, slab1;
	int nproc;
	uint64_t ready;
} hold_ctx;

static bool
on_all_ready(const sb_stats *total, void *arg)
{
	hold_ctx *h = arg;
	sb_progress("held", total, 0);
	/* Let the last logins' side effects (route writes, TLS buffers) settle. */
	sleep(2);
	h->rss1 = sb_connsrv_rss(&h->nproc);
	h->kmem1 = sb_kernel_tcp_mem();
	h->slab1 = sb_kernel_slab();
	h->ready = total->conns_ready;
	if (!sb_o.quiet)
		fprintf(stderr, "spbench: %llu connections up; holding %d s (connsrv RSS %.1f MiB in %d processes)\n",
			(unsigned long long)total->conns_ready, sb_o.hold_s, (double)h->rss1 / 1048576.0, h->nproc);
	for (int i = 0; i < sb_o.hold_s; i++) {
		sleep(1);
		int np;
		uint64_t rss = sb_connsrv_rss(&np), kmem = sb_kernel_tcp_mem();
		if (rss > h->rss1)
			h->rss1 = rss;
		if (kmem > h->kmem1)
			h->kmem1 = kmem;
	}
	return false;
}

int
sb_scen_connections(sb_result *r)
{
	conn_run run = {0};
	size_t have;
	sb_account *acc;
	int rc = sb_accounts_get((size_t)sb_o.conns, &acc, &have);
	if (rc)
		return rc;
	run.acc = acc;
	run.n = (size_t)sb_o.conns;
	hold_ctx h = {0};
	h.rss0 = sb_connsrv_rss(&h.nproc);
	h.kmem0 = sb_kernel_tcp_mem();
	h.slab0 = sb_kernel_slab();
	if (!h.nproc)
		fprintf(stderr, "spbench: no connsrv process found (--connsrv-pids); RSS not measured\n");
	sb_scen sc = {"connections", conn_setup, conn_go, conn_stop, &run};
	rc = sb_procs_run(&sc, sb_o.procs, on_all_ready, &h, &r->st);
	r->connections = h.ready;
	if (r->st.t_last_ready > r->st.t_first_connect)
		r->login_per_s = (double)r->st.conns_ready / ((double)(r->st.t_last_ready - r->st.t_first_connect) / 1e9);
	r->elapsed_s = (double)(r->st.t_last_ready - r->st.t_first_connect) / 1e9;
	if (h.ready && h.nproc) {
		r->rss_total = (double)h.rss1;
		r->rss_per_conn = ((double)h.rss1 - (double)h.rss0) / (double)h.ready;
		r->kernel_mem_per_conn = ((double)h.kmem1 - (double)h.kmem0) / (double)h.ready;
		/* Both ends of each loopback connection are on this machine. */
		r->kernel_slab_per_conn = ((double)h.slab1 - (double)h.slab0) / (double)h.ready;
		r->connsrv_procs = h.nproc;
		sb_result_extra(r, "connsrv_rss_before_bytes", (double)h.rss0);
		/* Upper bound: the whole RSS (baseline included) divided by the connections. */
		sb_result_extra(r, "connsrv_rss_total_per_conn_bytes", (double)h.rss1 / (double)h.ready);
		sb_result_extra(r, "kernel_tcp_mem_bytes", (double)h.kmem1);
	}
	free(acc);
	return rc;
}
