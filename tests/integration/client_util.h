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

#endif
