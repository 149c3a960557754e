/* sp_shutdown_bound: a teardown that hangs ends at the bound, with the given exit code,
 * or as the restart it was for (the same binary run again with the given argv). */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check_run.h"
#include "sp_error.h"
#include "sp_shutdown.h"
#include "sp_time.h"

#define REEXEC_FLAG "--as-restarted"

/* Forks a child that arms the bound and then hangs; returns its wait status and how long
 * it lived. */
static int
run_hanging_child(long ms, int code, char *const *argv, long *lived_ms)
{
	uint64_t t0 = sp_mono_ms();
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		if (sp_shutdown_bound(ms, code, argv) != SP_OK)
			_exit(100);
		if (sp_shutdown_bound(ms, code, argv) != SP_EINVAL) /* once per process */
			_exit(101);
		for (;;)
			pause(); /* the teardown that never ends */
	}
	int st = 0;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	*lived_ms = (long)(sp_mono_ms() - t0);
	return st;
}

START_TEST(test_exit_at_the_bound)
{
	long lived = 0;
	int st = run_hanging_child(300, 7, NULL, &lived);
	ck_assert(WIFEXITED(st));
	ck_assert_int_eq(WEXITSTATUS(st), 7);
	ck_assert_int_ge(lived, 300);
	ck_assert_int_lt(lived, 10000);
}
END_TEST

START_TEST(test_restart_at_the_bound)
{
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	ck_assert_int_gt(n, 0);
	self[n] = '\0';
	char *argv[] = { self, REEXEC_FLAG, NULL };
	long lived = 0;
	int st = run_hanging_child(300, 7, argv, &lived);
	ck_assert(WIFEXITED(st));
	ck_assert_int_eq(WEXITSTATUS(st), 42); /* main() below, run again */
	ck_assert_int_ge(lived, 300);
}
END_TEST

START_TEST(test_bad_bound)
{
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		_exit(sp_shutdown_bound(0, 0, NULL) == SP_EINVAL &&
			      sp_shutdown_bound(-5, 0, NULL) == SP_EINVAL
			  ? 0
			  : 1);
	int st = 0;
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}
END_TEST

int
main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], REEXEC_FLAG) == 0)
		return 42;
	Suite *s = suite_create("shutdown");
	TCase *tc = tcase_create("shutdown");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_exit_at_the_bound);
	tcase_add_test(tc, test_restart_at_the_bound);
	tcase_add_test(tc, test_bad_bound);
	suite_add_tcase(s, tc);
	return check_run(s);
}
