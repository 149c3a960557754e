/* Worker processes. The parent forks one process per --procs, each with its own event
 * loop and share of the work, and coordinates them through two pipes per process: the
 * worker reports (progress, ready, done + its stats), the parent commands ('g' go, 'q'
 * stop). Progress reports are small (atomic pipe writes) and skipped when the pipe is
 * full, so a parent that is busy measuring never blocks a worker. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/sb.h"
#include "sp_error.h"

enum { MSG_PROGRESS = 1, MSG_READY, MSG_DONE };

typedef struct msg_hdr {
	uint32_t kind, len;
} msg_hdr;

#define PROGRESS_LEN offsetof(sb_stats, lat_sent)

static int
write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n) {
		ssize_t w = write(fd, b, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			struct pollfd pf = {fd, POLLOUT, 0};
			poll(&pf, 1, 1000);
			continue;
		}
		if (w <= 0)
			return SP_EIO;
		b += w;
		n -= (size_t)w;
	}
	return SP_OK;
}

static int
read_all(int fd, void *p, size_t n)
{
	uint8_t *b = p;
	while (n) {
		ssize_t r = read(fd, b, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return SP_ECLOSED;
		b += r;
		n -= (size_t)r;
	}
	return SP_OK;
}

static void
report(sb_worker *w, uint32_t kind)
{
	size_t len = kind == MSG_PROGRESS ? PROGRESS_LEN : sizeof(sb_stats);
	uint8_t buf[sizeof(msg_hdr) + PROGRESS_LEN];
	msg_hdr h = {kind, (uint32_t)len};
	if (kind == MSG_PROGRESS) {
		/* One write below PIPE_BUF: all or nothing; dropped if the pipe is full. */
		memcpy(buf, &h, sizeof(h));
		memcpy(buf + sizeof(h), &w->st, len);
		if (write(w->rep_fd, buf, sizeof(buf)) < 0 && errno != EAGAIN)
			_exit(3);
		return;
	}
	if (write_all(w->rep_fd, &h, sizeof(h)) || write_all(w->rep_fd, &w->st, len))
		_exit(3);
}

void
sb_worker_ready(sb_worker *w)
{
	if (w->ready_sent)
		return;
	w->ready_sent = true;
	report(w, MSG_READY);
}

void
sb_worker_done(sb_worker *w)
{
	if (w->done_sent)
		return;
	w->done_sent = true;
	w->st.t_done = sb_now_ns();
	report(w, MSG_DONE);
	event_base_loopexit(w->net.base, NULL);
}

void
sb_worker_slice(const sb_worker *w, size_t n, size_t *lo, size_t *hi)
{
	*lo = n * (size_t)w->idx / (size_t)w->nprocs;
	*hi = n * (size_t)(w->idx + 1) / (size_t)w->nprocs;
}

static void
on_ctl(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	sb_worker *w = arg;
	char c;
	ssize_t r = read(fd, &c, 1);
	if (r <= 0) /* the parent is gone */
		_exit(4);
	if (c == 'g') {
		w->st.t_go = sb_now_ns();
		w->sc->go(w);
	} else if (c == 'q') {
		w->sc->stop(w);
	}
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	report(arg, MSG_PROGRESS);
}

static void
child_main(const sb_scen *sc, int idx, int n, int ctl, int rep)
{
	static sb_worker w;
	memset(&w, 0, sizeof(w));
	w.sc = sc;
	w.idx = idx;
	w.nprocs = n;
	w.ctl_fd = ctl;
	w.rep_fd = rep;
	signal(SIGPIPE, SIG_IGN);
	fcntl(rep, F_SETFL, fcntl(rep, F_GETFL) | O_NONBLOCK);
	if (sb_net_init(&w.net, &w.st))
		_exit(2);
	w.ctl_ev = event_new(w.net.base, ctl, EV_READ | EV_PERSIST, on_ctl, &w);
	w.tick_ev = event_new(w.net.base, -1, EV_PERSIST, on_tick, &w);
	struct timeval tv = {0, 500 * 1000};
	if (!w.ctl_ev || !w.tick_ev || event_add(w.ctl_ev, NULL) || event_add(w.tick_ev, &tv))
		_exit(2);
	sc->setup(&w);
	event_base_dispatch(w.net.base);
	/* Sockets and memory go with the process; nothing else to release. */
	_exit(w.done_sent ? 0 : 5);
}

typedef struct child {
	pid_t pid;
	int ctl, rep;
	bool ready, done, dead;
	sb_stats st;
} child;

static void
command(child *ch, int n, char c)
{
	for (int i = 0; i < n; i++)
		if (!ch[i].dead && write(ch[i].ctl, &c, 1) != 1)
			ch[i].dead = true;
}

int
sb_procs_run(const sb_scen *sc, int nprocs, sb_ready_fn on_ready, void *arg, sb_stats *total)
{
	child *ch = calloc((size_t)nprocs, sizeof(child));
	struct pollfd *pf = calloc((size_t)nprocs, sizeof(struct pollfd));
	if (!ch || !pf) {
		free(ch);
		free(pf);
		return SP_ENOMEM;
	}
	fflush(NULL);
	int started = 0, rc = SP_OK;
	for (int i = 0; i < nprocs; i++) {
		int c[2], r[2];
		if (pipe2(c, O_CLOEXEC) || pipe2(r, O_CLOEXEC)) {
			rc = SP_EIO;
			break;
		}
		pid_t pid = fork();
		if (pid < 0) {
			rc = SP_EIO;
			break;
		}
		if (pid == 0) {
			close(c[1]);
			close(r[0]);
			for (int k = 0; k < i; k++) {
				close(ch[k].ctl);
				close(ch[k].rep);
			}
			child_main(sc, i, nprocs, c[0], r[1]);
		}
		close(c[0]);
		close(r[1]);
		ch[i].pid = pid;
		ch[i].ctl = c[1];
		ch[i].rep = r[0];
		started++;
	}
	if (rc)
		command(ch, started, 'q');
	uint64_t t0 = sb_now_ns(), last_print = t0, deadline = t0 + (uint64_t)sb_o.timeout_s * 1000000000u;
	bool go_sent = false, stop_sent = rc != SP_OK;
	for (;;) {
		int live = 0, ready = 0, dead = 0;
		for (int i = 0; i < started; i++) {
			pf[i].fd = ch[i].dead || ch[i].done ? -1 : ch[i].rep;
			pf[i].events = POLLIN;
			live += pf[i].fd >= 0;
			ready += ch[i].ready || ch[i].done;
			dead += ch[i].dead;
		}
		if (dead && !stop_sent) {
			/* One worker failed: the others stop too rather than wait for it. */
			stop_sent = true;
			command(ch, started, 'q');
		}
		memset(total, 0, sizeof(*total));
		for (int i = 0; i < started; i++)
			sb_stats_merge(total, &ch[i].st);
		if (!live)
			break;
		if (!go_sent && !stop_sent && ready == started) {
			go_sent = true;
			bool go = on_ready ? on_ready(total, arg) : true;
			command(ch, started, go ? 'g' : 'q');
			continue;
		}
		uint64_t now = sb_now_ns();
		if (now - last_print >= 1000000000u) {
			last_print = now;
			sb_progress(go_sent ? "run" : "setup", total, (double)(now - t0) / 1e9);
		}
		if (now > deadline && !stop_sent) {
			fprintf(stderr, "spbench: --timeout %d s reached; stopping\n", sb_o.timeout_s);
			stop_sent = true;
			command(ch, started, 'q');
		}
		if (now > deadline + 30000000000u) {
			for (int i = 0; i < started; i++)
				if (!ch[i].done && !ch[i].dead)
					kill(ch[i].pid, SIGKILL);
			rc = SP_ETIMEDOUT;
			break;
		}
		if (poll(pf, (nfds_t)started, 200) <= 0)
			continue;
		for (int i = 0; i < started; i++) {
			if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			msg_hdr h;
			if (read_all(ch[i].rep, &h, sizeof(h)) || h.len > sizeof(sb_stats) ||
			    read_all(ch[i].rep, &ch[i].st, h.len)) {
				ch[i].dead = true;
				continue;
			}
			if (h.kind == MSG_READY)
				ch[i].ready = true;
			if (h.kind == MSG_DONE)
				ch[i].done = true;
		}
	}
	for (int i = 0; i < started; i++) {
		int status;
		while (waitpid(ch[i].pid, &status, 0) < 0 && errno == EINTR)
			;
		if (!ch[i].done || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "spbench: worker %d (pid %d) did not finish cleanly\n", i, (int)ch[i].pid);
			rc = rc ? rc : SP_EIO;
		}
		close(ch[i].ctl);
		close(ch[i].rep);
	}
	memset(total, 0, sizeof(*total));
	for (int i = 0; i < started; i++)
		sb_stats_merge(total, &ch[i].st);
	free(ch);
	free(pf);
	return rc;
}

void
sb_progress(const char *phase, const sb_stats *s, double elapsed_s)
{
	if (sb_o.quiet)
		return;
	fprintf(stderr,
		"[%7.1fs] %-5s conns %llu/%llu ready %llu fail %llu | sent %llu SENT %llu delivered %llu "
		"receipts %llu ratelimited %llu | dup %llu\n",
		elapsed_s, phase, (unsigned long long)s->conns_tls, (unsigned long long)s->conns_target,
		(unsigned long long)s->conns_ready,
		(unsigned long long)(s->conn_fail + s->login_fail + s->closed), (unsigned long long)s->sent,
		(unsigned long long)s->sent_ok, (unsigned long long)s->delivered,
		(unsigned long long)s->receipts, (unsigned long long)s->rate_limited,
		(unsigned long long)s->dups);
}
