/*
 * Configuration: defaults, then an INI file (--config FILE; parsed by inih), then the
 * environment (SEALPOST_<PROG>_<KEY>, upper-case, '-' as '_'), then command-line flags
 * (--key VALUE or --key=VALUE; booleans also as bare --key). Later sources win.
 * Unknown keys in any source are errors naming the key and where it came from.
 * INI keys may sit at the top or in a section named after the program.
 */
#ifndef SP_CONFIG_H
#define SP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
	SP_CT_STR,  /* char **: heap copy, freed by sp_config_free */
	SP_CT_INT,  /* long long * */
	SP_CT_SIZE, /* size_t *: accepts K, M, G suffixes (powers of 1024) */
	SP_CT_BOOL, /* bool *: true/false/yes/no/1/0/on/off */
} sp_config_type;

typedef struct sp_config_opt {
	const char *key; /* "listen", "map-size" */
	sp_config_type type;
	void *dst;
	const char *def; /* default as text; NULL: string default NULL / number 0 */
	const char *help;
	long long min, max; /* bounds for INT and SIZE (ignored when both are 0) */
} sp_config_opt;

/* Returned (positive) when --help was asked for and usage was printed. */
#define SP_CONFIG_HELP 1

/* Loads options for `prog` (the table ends with a {NULL} entry). Returns SP_OK,
 * SP_CONFIG_HELP, or SP_ECONFIG with a one-line message in err. Positional arguments are
 * errors unless `positional` is non-NULL: then they are collected there (pointers into
 * argv, at most `max_positional`) and counted in *npositional. */
int sp_config_load(const char *prog, const char *summary, const sp_config_opt *opts, int argc,
		   char **argv, char **positional, int max_positional, int *npositional, char *err,
		   size_t errlen);

/* On any result but SP_OK (an error, or SP_CONFIG_HELP) the strings are already freed
 * (and NULL). */

/* Frees the strings the options hold. */
void sp_config_free(const sp_config_opt *opts);

/* Prints usage for `prog` to stdout. */
void sp_config_usage(const char *prog, const char *summary, const sp_config_opt *opts);

#endif
