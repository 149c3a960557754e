#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int
etcd_proc_start(etcd_proc *p)
{
	memset(p, 0, sizeof(*p));
	snprintf(p->dir, sizeof(p->dir), "/tmp/sp-etcd-XXXXXX");
	if (!mkdtemp(p->dir)) {
		fprintf(stderr, "etcd_proc: mkdtemp: %s\n", strerror(errno));
		return -1;
	}
	p->client_port = test_free_port();
	p->peer_port = test_free_port();
	if (p->client_port < 0 || p->peer_port < 0 || p->client_port == p->peer_port) {
		fprintf(stderr, "etcd_proc: no free port\n");
		return -1;
	}
	snprintf(p->endpoint, sizeof(p->endpoint), "http://127.0.0.1:%d", p->client_port);
	char data[160], client[64], peer[64], cluster[96], log[160];
	snprintf(data, sizeof(data), "%s/data", p->dir);
	snprintf(client, sizeof(client), "http://127.0.0.1:%d", p->client_port);
	snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", p->peer_port);
	snprintf(cluster, sizeof(cluster), "default=%s", peer);
	snprintf(log, sizeof(log), "%s/etcd.log", p->dir);
	p->pid = fork();
	if (p->pid < 0)
		return -1;
	if (p->pid == 0) {
		FILE *out = freopen(log, "w", stderr);
		(void)out;
		execlp("etcd", "etcd", "--data-dir", data, "--listen-client-urls", client,
		       "--advertise-client-urls", client, "--listen-peer-urls", peer,
		       "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster,
		       "--log-level", "warn", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 150; i++) {
		int status;
		if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
			fprintf(stderr, "etcd_proc: etcd exited at start (see %s)\n", log);
			p->pid = 0;
			return -1;
		}
		if (healthy(p))
			return 0;
		sleep_ms(100);
	}
	fprintf(stderr, "etcd_proc: etcd did not become healthy (see %s)\n", log);
	etcd_proc_stop(p);
	return -1;
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
