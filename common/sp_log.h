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

#endif
