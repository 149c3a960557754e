/*
 * Helpers for the inboxsrv integration tests: a real $SP_BIN/inboxsrv in a fresh temp dir
 * on a free loopback port, NNG calls to it, and a cleanup path that kills and reaps the
 * shard (by PID) and removes the directory however the test ends.
 */
#ifndef INBOX_UTIL_H
#define INBOX_UTIL_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nng/nng.h>

#include "sp_error.h"
#include "sp_frame.h"
#include "sp_nng.h"
#include "sp_time.h"
#include "test_net.h"

typedef struct shard {
	char dir[128];
	char url[64];
	char log[160];
	pid_t pid;
} shard;

static shard *cleanup_shard;

#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);   \
			fprintf(stderr, __VA_ARGS__);                                              \
			fprintf(stderr, "\n");                                                     \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

static void __attribute__((unused))
shard_reap(shard *s, int sig)
{
	if (s->pid > 0) {
		kill(s->pid, sig);
		waitpid(s->pid, NULL, 0);
		s->pid = 0;
	}
}

static void __attribute__((unused))
cleanup(void)
{
	if (!cleanup_shard)
		return;
	shard_reap(cleanup_shard, SIGKILL);
	if (getenv("SP_KEEP_TMP")) {
		fprintf(stderr, "kept %s\n", cleanup_shard->dir);
		return;
	}
	char cmd[200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", cleanup_shard->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", cleanup_shard->dir);
}

static void __attribute__((unused))
on_signal(int sig)
{
	(void)sig;
	exit(3); /* runs cleanup() */
}

static int __attribute__((unused))
free_port(void)
{
	int port = test_free_port();
	CHECK(port > 0, "no free loopback port");
	return port;
}

/* Creates the temp dir and picks the address; registers the cleanup. */
static void __attribute__((unused))
shard_init(shard *s, const char *name)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(s->dir, sizeof(s->dir), "%s/%s.XXXXXX", tmp, name);
	CHECK(mkdtemp(s->dir), "mkdtemp: %s", strerror(errno));
	snprintf(s->log, sizeof(s->log), "%s/inboxsrv.log", s->dir);
	s->pid = 0;
	s->url[0] = 0;
	cleanup_shard = s;
	atexit(cleanup);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGPIPE, SIG_IGN);
}

static const char * __attribute__((unused))
bin_path(const char *prog)
{
	static char p[256];
	snprintf(p, sizeof(p), "%s/%s", getenv("SP_BIN") ? getenv("SP_BIN") : "bin", prog);
	return p;
}

static bool __attribute__((unused))
log_has(const shard *s, const char *text)
{
	FILE *f = fopen(s->log, "r");
	char line[1024];
	bool found = false;
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, text) != NULL;
	fclose(f);
	return found;
}

/* Starts the shard (extra NULL-terminated flags after the standard ones) and waits for
 * its "listening on" line. A new port is chosen on the first start; restarts keep it. */
static void __attribute__((unused))
shard_start(shard *s, ...)
{
	char *argv[64];
	char data[160];
	int n = 0;
	va_list ap;

	if (!s->url[0])
		snprintf(s->url, sizeof(s->url), "tcp://127.0.0.1:%d", free_port());
	snprintf(data, sizeof(data), "%s/data", s->dir);
	argv[n++] = (char *)bin_path("inboxsrv");
	argv[n++] = "--data-dir";
	argv[n++] = data;
	argv[n++] = "--listen";
	argv[n++] = s->url;
	argv[n++] = "--map-size";
	argv[n++] = "256M";
	argv[n++] = "--insecure-internal"; /* plain tcp:// on loopback */
	va_start(ap, s);
	for (char *a; n < 62 && (a = va_arg(ap, char *));)
		argv[n++] = a;
	va_end(ap);
	argv[n] = NULL;
	pid_t pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		/* Every append here is from one synthetic sender, far past a quarter of a
		 * queue: the per-sender share (covered by abuse_itest) is lifted. */
		setenv("SEALPOST_INBOXSRV_QUEUE_SHARE", "100", 0);
		execv(argv[0], argv);
		_exit(127);
	}
	s->pid = pid;
	uint64_t deadline = sp_mono_ns() + 15000000000ULL;
	for (;;) {
		int status;
		CHECK(waitpid(pid, &status, WNOHANG) == 0, "inboxsrv exited at start-up; see %s",
		    s->log);
		if (log_has(s, "listening on"))
			break;
		CHECK(sp_mono_ns() < deadline, "inboxsrv not ready in 15 s; see %s", s->log);
		usleep(20000);
	}
}

/* SIGTERM and wait; returns the exit status. */
static int __attribute__((unused))
shard_stop(shard *s)
{
	int status = -1;
	kill(s->pid, SIGTERM);
	waitpid(s->pid, &status, 0);
	s->pid = 0;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static nng_socket __attribute__((unused))
shard_connect(const shard *s, int timeout_ms)
{
	nng_socket sock;
	int rc
	    = sp_nng_req_open(&sock, s->url, timeout_ms, timeout_ms / 2 > 0 ? timeout_ms / 2 : 1);
	CHECK(rc == SP_OK, "req open %s: %s", s->url, sp_strerror(rc));
	return sock;
}

/* One call; the reply frame goes into *rep (free with call_done). Returns sp_nng_call's
 * result: SP_OK, an ERROR frame's code, or a transport error. */
static int __attribute__((unused))
call(nng_socket sock, const sp_frame *req, sp_frame *rep, nng_msg **m)
{
	*m = NULL;
	int rc = sp_nng_call(sock, req, m, rep);
	if (!*m)
		memset(rep, 0, sizeof(*rep));
	return rc;
}

static void __attribute__((unused))
call_done(sp_frame *rep, nng_msg *m)
{
	if (m) {
		sp_frame_fini(rep);
		nng_msg_free(m);
	}
}

static void __attribute__((unused))
msg_id_of(uint8_t out[16], uint64_t a, uint64_t b)
{
	memcpy(out, &a, 8);
	memcpy(out + 8, &b, 8);
}

static void __attribute__((unused))
append_frame(sp_frame *f, uint64_t device, const uint8_t *msg_id, uint64_t from_device,
    const void *env, size_t len)
{
	sp_frame_init(f, SP_T_APPEND, 1, true);
	sp_frame_set_u64(f, SP_F_DEVICE, device);
	sp_frame_set_bin(f, SP_F_MSG_ID, msg_id, 16);
	sp_frame_set_u64(f, SP_F_FROM_USER, 1);
	sp_frame_set_u64(f, SP_F_FROM_DEVICE, from_device);
	sp_frame_set_u64(f, SP_F_SERVER_TS, sp_time_ms());
	sp_frame_set_u64(f, SP_F_ETYPE, 1);
	sp_frame_set_bin(f, SP_F_ENV, env, len);
}

#endif
