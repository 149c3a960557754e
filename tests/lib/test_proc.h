/* Process state from /proc, for tests that signal the processes they started. */
#ifndef TEST_PROC_H
#define TEST_PROC_H

/* The state letter of a /proc/<pid>[/task/<tid>]/stat file ('R', 'S', 'T', 'Z', ...):
 * '\0' when it cannot be read (the process is gone), '?' when it cannot be parsed. */
char test_proc_state(const char *stat_path);

#endif
