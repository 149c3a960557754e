/* Config: defaults < file < environment < flags; unknown keys and bad values rejected. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sp_config.h"
#include "sp_error.h"
#include "check_run.h"

static char *listen_addr;
static long long workers;
static size_t map_size;
static bool verbose;

static const sp_config_opt opts[] = {
	{"listen", SP_CT_STR, &listen_addr, "tcp://127.0.0.1:1", "where to listen", 0, 0},
	{"workers", SP_CT_INT, &workers, "1", "worker processes", 1, 64},
	{"map-size", SP_CT_SIZE, &map_size, "1G", "LMDB map size", 0, 0},
	{"verbose", SP_CT_BOOL, &verbose, "false", "chatty", 0, 0},
	{NULL, 0, NULL, NULL, NULL, 0, 0},
};

static char err[256];

static int
load(int argc, char **argv)
{
	err[0] = '\0';
	return sp_config_load("testprog", "test", opts, argc, argv, NULL, 0, NULL, err, sizeof(err));
}

static char *
write_file(const char *text)
{
	static char path[64];
	strcpy(path, "/tmp/spcfgXXXXXX");
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (int)strlen(text));
	close(fd);
	return path;
}

START_TEST(test_defaults)
{
	char *argv[] = {"p"};
	ck_assert_int_eq(load(1, argv), SP_OK);
	ck_assert_str_eq(listen_addr, "tcp://127.0.0.1:1");
	ck_assert_int_eq(workers, 1);
	ck_assert_uint_eq(map_size, 1ULL << 30);
	ck_assert(!verbose);
	sp_config_free(opts);
}
END_TEST

START_TEST(test_precedence)
{
	char *path = write_file("# comment\nworkers = 3\n[testprog]\nmap-size = 64M\nlisten = tcp://file\n");
	setenv("SEALPOST_TESTPROG_LISTEN", "tcp://env", 1);
	setenv("SEALPOST_TESTPROG_WORKERS", "5", 1);
	char *argv[] = {"p", "--config", path, "--workers=7", "--verbose"};
	ck_assert_int_eq(load(5, argv), SP_OK);
	ck_assert_str_eq(listen_addr, "tcp://env"); /* env over file */
	ck_assert_int_eq(workers, 7);               /* flag over env */
	ck_assert_uint_eq(map_size, 64ULL << 20);   /* file over default */
	ck_assert(verbose);
	unsetenv("SEALPOST_TESTPROG_LISTEN");
	unsetenv("SEALPOST_TESTPROG_WORKERS");
	unlink(path);
	sp_config_free(opts);
}
END_TEST

START_TEST(test_errors)
{
	char *a1[] = {"p", "--nope", "1"};
	ck_assert_int_eq(load(3, a1), SP_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err, "unknown option '--nope'"));
	sp_config_free(opts);

	char *a2[] = {"p", "--workers", "0"};
	ck_assert_int_eq(load(3, a2), SP_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err, "outside [1, 64]"));
	sp_config_free(opts);

	char *a3[] = {"p", "--workers", "3x"};
	ck_assert_int_eq(load(3, a3), SP_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err, "trailing"));
	sp_config_free(opts);

	char *a4[] = {"p", "--verbose=maybe"};
	ck_assert_int_eq(load(2, a4), SP_ECONFIG);
	sp_config_free(opts);

	char *a5[] = {"p", "--listen"};
	ck_assert_int_eq(load(2, a5), SP_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err, "needs a value"));
	sp_config_free(opts);

	char *a6[] = {"p", "stray"};
	ck_assert_int_eq(load(2, a6), SP_ECONFIG);
	sp_config_free(opts);

	char *path = write_file("listen = x\nbogus = 1\n");
	char *a7[] = {"p", "--config", path};
	ck_assert_int_eq(load(3, a7), SP_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err, "unknown key 'bogus'"));
	unlink(path);
	sp_config_free(opts);

	path = write_file("[otherprog]\nlisten = x\n");
	char *a8[] = {"p", "--config", path};
	ck_assert_int_eq(load(3, a8), SP_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err, "unknown section"));
	unlink(path);
	sp_config_free(opts);

	path = write_file("this line has no equals sign\n");
	char *a9[] = {"p", "--config", path};
	ck_assert_int_eq(load(3, a9), SP_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err, "syntax error"));
	unlink(path);
	sp_config_free(opts);

	char *a10[] = {"p", "--config", "/nonexistent/sp.ini"};
	ck_assert_int_eq(load(3, a10), SP_ECONFIG);
	ck_assert_ptr_nonnull(strstr(err, "cannot open"));
	sp_config_free(opts);

	setenv("SEALPOST_TESTPROG_MAP_SIZE", "-5", 1);
	char *a11[] = {"p"};
	ck_assert_int_eq(load(1, a11), SP_ECONFIG);
	unsetenv("SEALPOST_TESTPROG_MAP_SIZE");
	sp_config_free(opts);
}
END_TEST

START_TEST(test_help_and_positional)
{
	char *a1[] = {"p", "--help"};
	ck_assert_int_eq(load(2, a1), SP_CONFIG_HELP);
	sp_config_free(opts);

	char *pos[2];
	int npos;
	char *a2[] = {"p", "one", "--workers", "2", "two"};
	ck_assert_int_eq(sp_config_load("testprog", NULL, opts, 5, a2, pos, 2, &npos, err, sizeof(err)),
			 SP_OK);
	ck_assert_int_eq(npos, 2);
	ck_assert_str_eq(pos[0], "one");
	ck_assert_str_eq(pos[1], "two");
	sp_config_free(opts);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("config");
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_precedence);
	tcase_add_test(tc, test_errors);
	tcase_add_test(tc, test_help_and_positional);
	suite_add_tcase(s, tc);
	return check_run(s);
}
