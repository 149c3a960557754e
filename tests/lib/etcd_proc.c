#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
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
#include "test_proc.h"

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
	char cmd[768];
	if (p->tls)
		snprintf(cmd, sizeof(cmd),
			 "curl -sf -m 1 --cacert %s --cert %s --key %s %s/health 2>/dev/null | "
			 "grep -q '\"true\"'",
			 p->ca, p->client_cert, p->client_key, p->endpoint);
	else
		snprintf(cmd, sizeof(cmd), "curl -sf -m 1 %s/health 2>/dev/null | grep -q '\"true\"'",
			 p->endpoint);
	return system(cmd) == 0;
}

/* Forks and execs etcd on p's data dir, host and ports (its stderr appended to etcd.log). */
static int
spawn(etcd_proc *p)
{
	char data[160], client[80], peer[80], cluster[96], log[160], cert[160], key[160];
	snprintf(data, sizeof(data), "%s/data", p->dir);
	snprintf(client, sizeof(client), "%s://%s:%d", p->tls ? "https" : "http", p->host,
		 p->client_port);
	snprintf(cert, sizeof(cert), "%s/etcd.pem", p->dir);
	snprintf(key, sizeof(key), "%s/etcd.key", p->dir);
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
		/* One member hears no peers' heartbeats: a short election timeout only makes a
		 * restarted etcd elect itself sooner (~0.5 s to serve instead of ~1.5 s). */
		char *args[] = { "etcd", "--data-dir", data, "--listen-client-urls", client,
			"--advertise-client-urls", client, "--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer, "--initial-cluster", cluster,
			"--heartbeat-interval", "50", "--election-timeout", "250", "--log-level",
			"warn" };
		char *tls_args[] = { "--cert-file", cert, "--key-file", key, "--trusted-ca-file",
			p->ca, "--client-cert-auth" };
		char *argv[sizeof(args) / sizeof(args[0]) + sizeof(tls_args) / sizeof(tls_args[0]) + 1];
		size_t n = 0;
		for (size_t i = 0; i < sizeof(args) / sizeof(args[0]); i++)
			argv[n++] = args[i];
		for (size_t i = 0; p->tls && i < sizeof(tls_args) / sizeof(tls_args[0]); i++)
			argv[n++] = tls_args[i];
		argv[n] = NULL;
		execvp("etcd", argv);
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
etcd_proc_make_certs(const char *dir, const char *const *names)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd),
		 "cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
		 "-days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem >/dev/null 2>&1 && printf "
		 "'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth,"
		 "clientAuth\\n' > san.ext",
		 dir);
	if (system(cmd) != 0)
		return -1;
	for (const char *const *n = names; *n; n++) {
		snprintf(cmd, sizeof(cmd),
			 "cd '%s' && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
			 "-subj /CN=%s -keyout %s.key -out %s.csr >/dev/null 2>&1 && openssl x509 -req "
			 "-in %s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext "
			 "-out %s.pem >/dev/null 2>&1",
			 dir, *n, *n, *n, *n, *n);
		if (system(cmd) != 0)
			return -1;
	}
	return 0;
}

static int
start(etcd_proc *p, const char *host, bool tls)
{
	memset(p, 0, sizeof(*p));
	snprintf(p->host, sizeof(p->host), "%s", host);
	snprintf(p->dir, sizeof(p->dir), "/tmp/sp-etcd-XXXXXX");
	if (!mkdtemp(p->dir)) {
		fprintf(stderr, "etcd_proc: mkdtemp: %s\n", strerror(errno));
		p->dir[0] = '\0';
		return -1;
	}
	if (tls) {
		static const char *const names[] = { "etcd", "client", NULL };
		p->tls = true;
		snprintf(p->ca, sizeof(p->ca), "%s/ca.pem", p->dir);
		snprintf(p->client_cert, sizeof(p->client_cert), "%s/client.pem", p->dir);
		snprintf(p->client_key, sizeof(p->client_key), "%s/client.key", p->dir);
		if (etcd_proc_make_certs(p->dir, names) != 0) {
			fprintf(stderr, "etcd_proc: could not make certificates in %s\n", p->dir);
			return -1;
		}
	}
	p->client_port = test_free_port();
	p->peer_port = test_free_port();
	if (p->client_port < 0 || p->peer_port < 0 || p->client_port == p->peer_port) {
		fprintf(stderr, "etcd_proc: no free port\n");
		return -1;
	}
	snprintf(p->endpoint, sizeof(p->endpoint), "%s://%s:%d", tls ? "https" : "http", p->host,
		 p->client_port);
	if (spawn(p))
		return -1;
	if (wait_healthy(p) == 0)
		return 0;
	etcd_proc_stop(p);
	return -1;
}

int
etcd_proc_start_on(etcd_proc *p, const char *host)
{
	return start(p, host, false);
}

int
etcd_proc_start_tls(etcd_proc *p)
{
	return start(p, "127.0.0.1", true);
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

/* Whether every thread of pid is stopped (state T in /proc/<pid>/task/<tid>/stat). */
static bool
all_stopped(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return true; /* gone: nothing runs */
	bool stopped = true;
	struct dirent *de;
	while (stopped && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char stat[128];
		snprintf(stat, sizeof(stat), "%s/%.20s/stat", path, de->d_name);
		char state = test_proc_state(stat);
		if (state == '\0')
			continue;
		stopped = state == 'T' || state == 't';
	}
	closedir(d);
	return stopped;
}

void
etcd_proc_signal(etcd_proc *p, int sig)
{
	if (p->pid <= 0)
		return;
	kill(p->pid, sig);
	/* A stop is not immediate for every thread of a busy process: wait until it is (at
	 * most 2 s), so that a test's next call meets a stalled etcd, not a slow one. */
	for (int i = 0; sig == SIGSTOP && i < 200 && !all_stopped(p->pid); i++)
		sleep_ms(10);
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
