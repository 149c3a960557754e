/* The one main() of the Check unit tests: runs a suite, prints the summary line that
 * tests/run.sh reads, and gives the process's exit code. */
#ifndef CHECK_RUN_H
#define CHECK_RUN_H

#include <check.h>

/* Runs `s` (taking ownership of it); returns 0 when every test passed, else 1. */
int check_run(Suite *s);

#endif
