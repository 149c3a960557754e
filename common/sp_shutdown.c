#include "sp_shutdown.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sp_error.h"
#include "sp_log.h"

/* One per process: static, so nothing is left to free when the process ends first. */
static struct {
	long ms;
	int code;
	char *const *argv;
} bound;
static atomic_bool started;

static void *
bound_main(void *arg)
{
	(void)arg;
	struct timespec ts = { bound.ms / 1000, (bound.ms % 1000) * 1000000L };
	while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR)
		;
	if (bound.argv) {
		sp_error("shutdown: teardown still running after %ld ms; restarting without it",
			 bound.ms);
		execv("/proc/self/exe", bound.argv);
		sp_error("shutdown: exec /proc/self/exe: %s", strerror(errno));
		_exit(75);
	}
	sp_error("shutdown: teardown still running after %ld ms; exiting without it", bound.ms);
	_exit(bound.code);
}

int
sp_shutdown_bound(long ms, int code, char *const reexec_argv[])
{
	if (ms <= 0 || atomic_exchange(&started, true))
		return SP_EINVAL;
	bound.ms = ms;
	bound.code = code;
	bound.argv = reexec_argv;
	pthread_attr_t attr;
	pthread_t th;
	if (pthread_attr_init(&attr) != 0)
		return SP_ENOMEM;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	int rc = pthread_create(&th, &attr, bound_main, NULL);
	pthread_attr_destroy(&attr);
	return rc == 0 ? SP_OK : SP_ENOMEM;
}
