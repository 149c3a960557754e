#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "sp_log.h"

static char log_prog[32] = "sealpost";
static sp_log_level log_level = SP_LOG_INFO;
static bool log_json;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void
sp_log_init(const char *prog, sp_log_level level, bool json)
{
	snprintf(log_prog, sizeof(log_prog), "%s", prog);
	log_level = level;
	log_json = json;
}

int
sp_log_level_parse(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (strcmp(s, level_names[i]) == 0)
			return i;
	return -1;
}

/* Appends `s` to out as a JSON string body (without quotes), truncating at `cap`. */
static size_t
json_escape(char *out, size_t cap, const char *s)
{
	size_t n = 0;
	for (; *s && n + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			out[n++] = '\\';
			out[n++] = (char)c;
		} else if (c < 0x20) {
			n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
		} else {
			out[n++] = (char)c;
		}
	}
	out[n] = '\0';
	return n;
}

static void
log_line(sp_log_level level, const char *msg)
{
	char line[2304], ts[40];
	struct timeval tv;
	struct tm tm;

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	size_t k = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + k, sizeof(ts) - k, ".%03ldZ", (long)(tv.tv_usec / 1000));
	int n;
	if (log_json) {
		char esc[2100];
		json_escape(esc, sizeof(esc), msg);
		n = snprintf(line, sizeof(line),
			     "{\"ts\":\"%s\",\"level\":\"%s\",\"prog\":\"%s\",\"pid\":%d,\"msg\":\"%s\"}\n", ts,
			     level_names[level], log_prog, (int)getpid(), esc);
	} else {
		n = snprintf(line, sizeof(line), "%s %s[%d] %s: %s\n", ts, log_prog, (int)getpid(),
			     level_names[level], msg);
	}
	if (n > (int)sizeof(line) - 1)
		n = (int)sizeof(line) - 1;
	/* One write per line keeps lines whole when several threads log. */
	ssize_t w = write(STDERR_FILENO, line, (size_t)n);
	(void)w;
}

void
sp_log(sp_log_level level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	if (level < log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_line(level, msg);
}

void
sp_log_limited(sp_log_limit *lim, sp_log_level level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	struct timespec now;

	if (level < log_level)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	unsigned long long ms = (unsigned long long)now.tv_sec * 1000 + (unsigned long long)now.tv_nsec / 1000000;
	unsigned long long next = atomic_load(&lim->next_ms);
	if (ms < next || !atomic_compare_exchange_strong(&lim->next_ms, &next, ms + 1000)) {
		atomic_fetch_add(&lim->suppressed, 1);
		return;
	}
	va_start(ap, fmt);
	int k = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	unsigned long long skipped = atomic_exchange(&lim->suppressed, 0);
	if (skipped && k >= 0 && (size_t)k < sizeof(msg))
		snprintf(msg + k, sizeof(msg) - (size_t)k, " (%llu more like this suppressed)", skipped);
	log_line(level, msg);
}

void
sp_assert_fail(const char *expr, const char *file, int line)
{
	sp_log(SP_LOG_ERROR, "assertion failed: %s (%s:%d)", expr, file, line);
	abort();
}
