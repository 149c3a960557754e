/* Due and cancelled push wake-ups in Redis (see push.h). */
#include <stdio.h>
#include <string.h>

#include "connsrv/push.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_metrics.h"
#include "sp_time.h"

static int delay_ms;
static sp_metric *m_due, *m_cancel, *m_errors;

void
cs_push_init(int delay)
{
	delay_ms = delay;
	m_due = sp_metric_counter("sp_connsrv_push_due_total", "push wake-ups made due for offline devices (ZADD NX: one pending per device)");
	m_cancel = sp_metric_counter("sp_connsrv_push_cancelled_total", "logins that dropped the device's pending push wake-up, if any (ZREM sent)");
	m_errors = sp_metric_counter("sp_connsrv_push_errors_total", "push wake-up commands Redis did not take (a wake-up is missed or sent needlessly)");
}

static void
on_done(void *arg, int rc)
{
	(void)arg;
	if (rc) {
		sp_metric_inc(m_errors);
		sp_warn_rl("push wake-up command failed: %s", sp_strerror(rc));
	}
}

static void
run(cs_server *srv, int argc, const char **argv)
{
	size_t lens[5];
	for (int i = 0; i < argc; i++)
		lens[i] = strlen(argv[i]);
	int rc = cs_routes_command(srv->routes, argc, argv, lens, on_done, NULL);
	if (rc)
		on_done(NULL, rc);
}

void
cs_push_due(cs_server *srv, uint64_t device)
{
	char score[24], member[24];
	if (delay_ms <= 0)
		return;
	snprintf(score, sizeof(score), "%llu", (unsigned long long)(sp_time_ms() + (uint64_t)delay_ms));
	snprintf(member, sizeof(member), "%llu", (unsigned long long)device);
	const char *argv[] = {"ZADD", CS_PUSH_DUE_KEY, "NX", score, member};
	sp_metric_inc(m_due);
	run(srv, 5, argv);
}

void
cs_push_cancel(cs_server *srv, uint64_t device)
{
	char member[24];
	if (delay_ms <= 0)
		return;
	snprintf(member, sizeof(member), "%llu", (unsigned long long)device);
	const char *argv[] = {"ZREM", CS_PUSH_DUE_KEY, member};
	sp_metric_inc(m_cancel);
	run(srv, 3, argv);
}
