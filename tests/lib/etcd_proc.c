#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "etcd_proc.h"
#include "test_net.h"

static void
sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* etcd serves once a plain GET of /health says so. */
static int
healthy(const etcd_proc *p)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "curl -sf -m 1 %s/health 2>/dev/null | grep -q '\"true\"'",
		 p->endpoint);
	return system(cmd) == 0;
}

/* Forks and execs etcd on p's data dir, host and ports (its stderr appended to etcd.log). */
static int
spawn(etcd_proc *p)
{
	char data[160], client[80], peer[80], cluster[96], log[160];
	snprintf(data, sizeof(data), "%s/data", p->dir);
	snprintf(client, sizeof(client), "http://%s:%d", p->host, p->client_port);
	snprintf(peer, sizeof(peer), "http://%s:%d", p->host, p->peer_port);
	snprintf(cluster, sizeof(cluster), "default=%s", peer);
	snprintf(log, sizeof(log), "%s/etcd.log", p->dir);
	pid_t parent = getpid();
	p->pid = fork();
	if (p->pid < 0) {
		p->pid = 0;
		return -1;
	}
	if (p->pid == 0) {
		/* A test that dies without its cleanup (SIGKILL) takes its etcd with it. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		FILE *out = freopen(log, "a", stderr);
		(void)out;
		execlp("etcd", "etcd", "--data-dir", data, "--listen-client-urls", client,
		       "--advertise-client-urls", client, "--listen-peer-urls", peer,
		       "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster,
		       "--log-level", "warn", (char *)NULL);
		_exit(127);
	}
	return 0;
}

/* Waits up to 15 s until the spawned etcd serves. */
static int
wait_healthy(etcd_proc *p)
{
	for (int i = 0; i < 150; i++) {
		int status;
		if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
			fprintf(stderr, "etcd_proc: etcd exited at start (see %s/etcd.log)\n", p->dir);
			p->pid = 0;
			return -1;
		}
		if (healthy(p))
			return 0;
		sleep_ms(100);
	}
	fprintf(stderr, "etcd_proc: etcd did not become healthy (see %s/etcd.log)\n", p->dir);
	return -1;
}

int
etcd_proc_start(etcd_proc *p)
{
	return etcd_proc_start_on(p, "127.0.0.1");
}

int
etcd_proc_start_on(etcd_proc *p, const char *host)
{
	memset(p, 0, sizeof(*p));
	snprintf(p->host, sizeof(p->host), "%s", host);
	snprintf(p->dir, sizeof(p->dir), "/tmp/sp-etcd-XXXXXX");
	if (!mkdtemp(p->dir)) {
		fprintf(stderr, "etcd_proc: mkdtemp: %s\n", strerror(errno));
		p->dir[0] = '\0';
		return -1;
	}
	p->client_port = test_free_port();
	p->peer_port = test_free_port();
	if (p->client_port < 0 || p->peer_port < 0 || p->client_port == p->peer_port) {
		fprintf(stderr, "etcd_proc: no free port\n");
		return -1;
	}
	snprintf(p->endpoint, sizeof(p->endpoint), "http://%s:%d", p->host, p->client_port);
	if (spawn(p))
		return -1;
	if (wait_healthy(p) == 0)
		return 0;
	etcd_proc_stop(p);
	return -1;
}

int
etcd_proc_restart(etcd_proc *p, long *down_ms)
{
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (p->pid > 0) {
		kill(p->pid, SIGKILL);
		waitpid(p->pid, NULL, 0);
		p->pid = 0;
	}
	if (spawn(p))
		return -1;
	int rc = wait_healthy(p);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (down_ms)
		*down_ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	return rc;
}

void
etcd_proc_signal(etcd_proc *p, int sig)
{
	if (p->pid > 0)
		kill(p->pid, sig);
}

void
etcd_proc_stop(etcd_proc *p)
{
	if (p->pid > 0) {
		kill(p->pid, SIGCONT);
		kill(p->pid, SIGTERM);
		int status;
		for (int i = 0; i < 50 && waitpid(p->pid, &status, WNOHANG) != p->pid; i++)
			sleep_ms(100);
		if (kill(p->pid, 0) == 0) {
			kill(p->pid, SIGKILL);
			waitpid(p->pid, &status, 0);
		}
		p->pid = 0;
	}
	if (p->dir[0]) {
		char cmd[192];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "etcd_proc: could not remove %s\n", p->dir);
		p->dir[0] = '\0';
	}
}
