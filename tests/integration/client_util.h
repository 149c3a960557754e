/*
 * Shared by the client integration tests: a private cluster (torn down at exit, even
 * when a check fails), running bin/sealpost with a home per test user, and reading its
 * JSON lines.
 */
#ifndef CLIENT_UTIL_H
#define CLIENT_UTIL_H

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "itest.h"

static itest_cluster ct_cluster;
static int ct_up, ct_failures;
static void
ct_down(void)
{
	if (!ct_up)
		return;
	ct_up = 0;
	itest_cluster_down(&ct_cluster);
}

static void
ct_start(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	atexit(ct_down);
	itest_cluster_up(&ct_cluster);
	ct_up = 1;
}

#define CHECK(cond)                                                                         \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
			ct_failures++;                                                      \
			exit(1);                                                            \
		}                                                                           \
	} while (0)

/* Runs `sealpost --home /tmp/<dir>/<home> ARGS` with the cluster's env; stdout into out
 * (NUL-terminated). Returns the exit code. */
static int __attribute__((format(printf, 4, 5)))
ct_run(const char *home, char *out, size_t cap, const char *fmt, ...)
{
	char args[2048], cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	const char *bin = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	snprintf(cmd, sizeof(cmd), ". %s/env; SEALPOST_GAP_HOLD_MS=300 %s/sealpost --home %s/home-%s %s",
		 ct_cluster.dir, bin, ct_cluster.dir, home, args);
	FILE *p = popen(cmd, "r");
	CHECK(p != NULL);
	size_t n = 0, r;
	while (n + 1 < cap && (r = fread(out + n, 1, cap - 1 - n, p)) > 0)
		n += r;
	out[n] = '\0';
	int st = pclose(p);
	int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
	printf("$ sealpost[%s] %s -> %d\n%s", home, args, code, out);
	return code;
}

/* The i-th JSON line of out (caller json_decref), or NULL. */
static json_t *
ct_line(const char *out, int i)
{
	const char *p = out;
	for (int k = 0; k < i && p; k++) {
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	if (!p || !*p)
		return NULL;
	const char *e = strchr(p, '\n');
	return json_loadb(p, e ? (size_t)(e - p) : strlen(p), 0, NULL);
}

static int
ct_nlines(const char *out)
{
	int n = 0;
	for (const char *p = out; *p; p++)
		n += *p == '\n';
	return n;
}

/* String field of the i-th line ("" when absent). */
static const char *
ct_str(const char *out, int i, const char *key, char *buf, size_t cap)
{
	json_t *j = ct_line(out, i);
	const char *s = j ? json_string_value(json_object_get(j, key)) : NULL;
	snprintf(buf, cap, "%s", s ? s : "");
	json_decref(j);
	return buf;
}

/* Registers a CLI user: register, code from the dev OTP sender, verify. */
static void
ct_register(const char *home, const char *phone, char *user, size_t cap)
{
	char out[4096], path[400], code[32] = "";
	CHECK(ct_run(home, out, sizeof(out), "register %s", phone) == 0);
	snprintf(path, sizeof(path), "%s/%s", ct_cluster.otp_dir, phone);
	FILE *f = fopen(path, "r");
	CHECK(f && fgets(code, sizeof(code), f));
	fclose(f);
	code[strcspn(code, "\r\n")] = '\0';
	CHECK(ct_run(home, out, sizeof(out), "verify %s %s", phone, code) == 0);
	ct_str(out, 0, "user", user, cap);
	CHECK(user[0] != '\0');
}

/* Processes ct_spawn started and ct_stop has not stopped yet: stopped at exit, so a
 * failed check leaves no client running. */
static pid_t ct_spawned[16];
static int ct_nspawned;

/* Stops a process ct_spawn started (by its pid) and reaps it. */
static __attribute__((unused)) void
ct_stop(pid_t pid)
{
	for (int i = 0; i < ct_nspawned; i++)
		if (ct_spawned[i] == pid)
			ct_spawned[i] = ct_spawned[--ct_nspawned];
	kill(pid, SIGTERM);
	for (int i = 0; i < 100; i++) {
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return;
		usleep(20000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

static void
ct_stop_spawned(void)
{
	while (ct_nspawned > 0)
		ct_stop(ct_spawned[ct_nspawned - 1]);
}

/* Starts `ENV sealpost --home <dir>/home-<home> ARGS` in a process of its own (stdout
 * into <dir>/<outname>, stderr into <outname>.err). ENV is shell assignments ("" for
 * none). Returns its pid (stop it with ct_stop; at exit it is stopped anyway). */
static __attribute__((unused)) pid_t
ct_spawn(const char *home, const char *outname, const char *env, const char *args)
{
	char cmd[4096];
	const char *bin = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	CHECK(ct_nspawned < (int)(sizeof(ct_spawned) / sizeof(ct_spawned[0])));
	if (ct_nspawned == 0)
		atexit(ct_stop_spawned); /* registered after ct_start's, so it runs before */
	snprintf(cmd, sizeof(cmd), ". %s/env; %s exec %s/sealpost --home %s/home-%s %s >%s/%s 2>%s/%s.err",
		 ct_cluster.dir, env, bin, ct_cluster.dir, home, args, ct_cluster.dir, outname, ct_cluster.dir,
		 outname);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	ct_spawned[ct_nspawned++] = pid;
	return pid;
}

/* The complete lines written so far to <dir>/<outname> (a partial last line is left
 * out); NUL-terminated. */
static __attribute__((unused)) void
ct_read_out(const char *outname, char *out, size_t cap)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", ct_cluster.dir, outname);
	out[0] = '\0';
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	size_t n = fread(out, 1, cap - 1, f);
	fclose(f);
	while (n > 0 && out[n - 1] != '\n')
		n--;
	out[n] = '\0';
}

/* GET http://127.0.0.1:<cluster base + off><path> into out (NUL-terminated); curl's exit
 * code. */
static __attribute__((unused)) int
ct_http_get(int off, const char *path, char *out, size_t cap)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "curl -sf --max-time 3 http://127.0.0.1:%d%s",
		 ct_cluster.base + off, path);
	FILE *p = popen(cmd, "r");
	CHECK(p != NULL);
	size_t n = fread(out, 1, cap - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* How many lines of out have a "text" starting with `prefix`. */
static __attribute__((unused)) int
ct_count_text(const char *out, const char *prefix)
{
	int n = 0;
	char t[128];
	for (int i = 0; i < ct_nlines(out); i++)
		n += strncmp(ct_str(out, i, "text", t, sizeof(t)), prefix, strlen(prefix)) == 0;
	return n;
}

/* How many lines of out have `key` equal to `val`. */
static __attribute__((unused)) int
ct_count(const char *out, const char *key, const char *val)
{
	char b[256];
	int n = 0;
	for (int i = 0; i < ct_nlines(out); i++)
		n += strcmp(ct_str(out, i, key, b, sizeof(b)), val) == 0;
	return n;
}

/* Links a new device `home` to the account of `primary` (`link` on the new device, then
 * `link-confirm CODE` on the primary) and waits until `link` has exited 0. */
static __attribute__((unused)) void
ct_link(const char *primary, const char *home)
{
	char out[16384], code[16] = "", outname[128];
	snprintf(outname, sizeof(outname), "%s.link", home);
	pid_t pid = ct_spawn(home, outname, "", "link --wait 60");
	for (int i = 0; i < 200 && !code[0]; i++) {
		ct_read_out(outname, out, sizeof(out));
		ct_str(out, 0, "link_code", code, sizeof(code));
		if (!code[0])
			usleep(100000);
	}
	if (strlen(code) != 8)
		ct_stop(pid);
	CHECK(strlen(code) == 8);
	CHECK(ct_run(primary, out, sizeof(out), "link-confirm %s", code) == 0);
	int st = 0;
	pid_t w = 0;
	for (int i = 0; i < 600 && w == 0; i++) {
		w = waitpid(pid, &st, WNOHANG);
		if (w == 0)
			usleep(100000);
	}
	for (int i = 0; i < ct_nspawned; i++)
		if (ct_spawned[i] == pid)
			ct_spawned[i] = ct_spawned[--ct_nspawned];
	if (w == 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	CHECK(w == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

#endif
