/* Logging to stderr: levels, plain text or JSON lines. Thread-safe (one write per line). */
#ifndef SP_LOG_H
#define SP_LOG_H

#include <stdbool.h>

typedef enum { SP_LOG_DEBUG, SP_LOG_INFO, SP_LOG_WARN, SP_LOG_ERROR } sp_log_level;

/* `prog` is copied. Safe to call again (e.g. after config is loaded). */
void sp_log_init(const char *prog, sp_log_level level, bool json);

/* Parses "debug|info|warn|error"; returns -1 for anything else. */
int sp_log_level_parse(const char *s);

void sp_log(sp_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sp_debug(...) sp_log(SP_LOG_DEBUG, __VA_ARGS__)
#define sp_info(...) sp_log(SP_LOG_INFO, __VA_ARGS__)
#define sp_warn(...) sp_log(SP_LOG_WARN, __VA_ARGS__)
#define sp_error(...) sp_log(SP_LOG_ERROR, __VA_ARGS__)

/* A warning at most once per second per call site, with how many were suppressed: for
 * events that come in floods (dropped receipts, failed pushes), which are also counted. */
#define sp_warn_rl(...)                                                         \
	do {                                                                    \
		static sp_log_limit lim_;                                       \
		sp_log_limited(&lim_, SP_LOG_WARN, __VA_ARGS__);               \
	} while (0)

typedef struct sp_log_limit {
	_Atomic unsigned long long next_ms; /* when the next line may be written */
	_Atomic unsigned long long suppressed;
} sp_log_limit;

void sp_log_limited(sp_log_limit *lim, sp_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Invariant check, always on (as Redis's serverAssert): logs the failed condition and
 * aborts, so a broken invariant stops the process with a core instead of corrupting data. */
#define SP_ASSERT(cond) ((cond) ? (void)0 : sp_assert_fail(#cond, __FILE__, __LINE__))
_Noreturn void sp_assert_fail(const char *expr, const char *file, int line);

#endif
