#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "sp_config.h"
#include "sp_error.h"

typedef struct load_ctx {
	const char *prog;
	const sp_config_opt *opts;
	char *err;
	size_t errlen;
	const char *file;
	int failed;
} load_ctx;

static const sp_config_opt *
find_opt(const sp_config_opt *opts, const char *key, size_t keylen)
{
	for (const sp_config_opt *o = opts; o->key; o++)
		if (strlen(o->key) == keylen && strncmp(o->key, key, keylen) == 0)
			return o;
	return NULL;
}

static int
parse_bool(const char *v, bool *out)
{
	static const char *const yes[] = {"1", "true", "yes", "on"};
	static const char *const no[] = {"0", "false", "no", "off"};
	for (int i = 0; i < 4; i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -1;
}

/* Sets one option from text; `src` names the source for the error message. */
static int
set_opt(const sp_config_opt *o, const char *v, const char *src, char *err, size_t errlen)
{
	char *end;
	switch (o->type) {
	case SP_CT_STR: {
		char *copy = strdup(v);
		if (!copy) {
			snprintf(err, errlen, "out of memory");
			return SP_ENOMEM;
		}
		free(*(char **)o->dst);
		*(char **)o->dst = copy;
		return SP_OK;
	}
	case SP_CT_BOOL:
		if (parse_bool(v, (bool *)o->dst)) {
			snprintf(err, errlen, "%s: %s: expected true or false, got '%s'", src, o->key, v);
			return SP_ECONFIG;
		}
		return SP_OK;
	case SP_CT_INT:
	case SP_CT_SIZE: {
		errno = 0;
		long long n = strtoll(v, &end, 10);
		if (end == v || errno) {
			snprintf(err, errlen, "%s: %s: expected a number, got '%s'", src, o->key, v);
			return SP_ECONFIG;
		}
		if (o->type == SP_CT_SIZE && *end) {
			int shift = 0;
			switch (toupper((unsigned char)*end)) {
			case 'K': shift = 10; break;
			case 'M': shift = 20; break;
			case 'G': shift = 30; break;
			}
			if (shift && (end[1] == '\0' || (toupper((unsigned char)end[1]) == 'B' && !end[2])) &&
			    n >= 0 && n < (1LL << (62 - shift))) {
				n <<= shift;
				end += strlen(end);
			}
		}
		if (*end) {
			snprintf(err, errlen, "%s: %s: trailing characters in '%s'", src, o->key, v);
			return SP_ECONFIG;
		}
		if ((o->min || o->max) && (n < o->min || n > o->max)) {
			snprintf(err, errlen, "%s: %s: %lld is outside [%lld, %lld]", src, o->key, n, o->min,
				 o->max);
			return SP_ECONFIG;
		}
		if (o->type == SP_CT_SIZE) {
			if (n < 0) {
				snprintf(err, errlen, "%s: %s: size must not be negative", src, o->key);
				return SP_ECONFIG;
			}
			*(size_t *)o->dst = (size_t)n;
		} else {
			*(long long *)o->dst = n;
		}
		return SP_OK;
	}
	}
	return SP_EINVAL;
}

static int
on_ini_entry(void *user, const char *section, const char *name, const char *value)
{
	load_ctx *c = user;
	char src[300];
	if (c->failed)
		return 0;
	if (section[0] && strcmp(section, c->prog) != 0) {
		snprintf(c->err, c->errlen, "%s: unknown section [%s] (expected [%s] or none)", c->file,
			 section, c->prog);
		c->failed = 1;
		return 0;
	}
	const sp_config_opt *o = find_opt(c->opts, name, strlen(name));
	if (!o) {
		snprintf(c->err, c->errlen, "%s: unknown key '%s'", c->file, name);
		c->failed = 1;
		return 0;
	}
	snprintf(src, sizeof(src), "%s", c->file);
	if (set_opt(o, value, src, c->err, c->errlen)) {
		c->failed = 1;
		return 0;
	}
	return 1;
}

static void
env_name(char *out, size_t cap, const char *prog, const char *key)
{
	size_t n = (size_t)snprintf(out, cap, "SEALPOST_%s_%s", prog, key);
	for (size_t i = 0; i < n && i < cap; i++)
		out[i] = out[i] == '-' ? '_' : (char)toupper((unsigned char)out[i]);
}

void
sp_config_usage(const char *prog, const char *summary, const sp_config_opt *opts)
{
	char env[160];
	env_name(env, sizeof(env), prog, "KEY");
	printf("Usage: %s [--config FILE] [--KEY VALUE ...]\n%s\n\nOptions (also INI keys in FILE, "
	       "and environment %s):\n",
	       prog, summary ? summary : "", env);
	for (const sp_config_opt *o = opts; o->key; o++)
		printf("  --%-22s %s%s%s%s\n", o->key, o->help ? o->help : "", o->def ? " [default: " : "",
		       o->def ? o->def : "", o->def ? "]" : "");
	printf("  --%-22s %s\n  --%-22s %s\n", "config FILE", "read options from an INI file", "help",
	       "print this help");
}

void
sp_config_free(const sp_config_opt *opts)
{
	for (const sp_config_opt *o = opts; o->key; o++) {
		if (o->type == SP_CT_STR) {
			free(*(char **)o->dst);
			*(char **)o->dst = NULL;
		}
	}
}

static int load(const char *prog, const char *summary, const sp_config_opt *opts, int argc,
		char **argv, char **positional, int max_positional, int *npositional, char *err,
		size_t errlen);

int
sp_config_load(const char *prog, const char *summary, const sp_config_opt *opts, int argc,
	       char **argv, char **positional, int max_positional, int *npositional, char *err,
	       size_t errlen)
{
	/* Every string starts NULL, so that a failed load can free what it set. */
	for (const sp_config_opt *o = opts; o->key; o++)
		if (o->type == SP_CT_STR)
			*(char **)o->dst = NULL;
	int rc = load(prog, summary, opts, argc, argv, positional, max_positional, npositional,
		      err, errlen);
	if (rc)
		sp_config_free(opts); /* an error or --help: the caller stops here */
	return rc;
}

static int
load(const char *prog, const char *summary, const sp_config_opt *opts, int argc, char **argv,
     char **positional, int max_positional, int *npositional, char *err, size_t errlen)
{
	const char *file = NULL;
	char name[160];
	int rc;

	if (npositional)
		*npositional = 0;
	/* Defaults. */
	for (const sp_config_opt *o = opts; o->key; o++) {
		if (o->def && (rc = set_opt(o, o->def, "default", err, errlen)))
			return rc;
		if (!o->def && o->type == SP_CT_BOOL)
			*(bool *)o->dst = false;
	}
	/* Find --config and --help first: the file sits under the flags. */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			sp_config_usage(prog, summary, opts);
			return SP_CONFIG_HELP;
		}
		if (strcmp(argv[i], "--config") == 0) {
			if (i + 1 >= argc) {
				snprintf(err, errlen, "--config needs a file name");
				return SP_ECONFIG;
			}
			file = argv[++i];
		} else if (strncmp(argv[i], "--config=", 9) == 0) {
			file = argv[i] + 9;
		}
	}
	if (file) {
		load_ctx c = {prog, opts, err, errlen, file, 0};
		int r = ini_parse(file, on_ini_entry, &c);
		if (r < 0) {
			snprintf(err, errlen, "%s: cannot open: %s", file, strerror(errno));
			return SP_ECONFIG;
		}
		if (c.failed)
			return SP_ECONFIG;
		if (r > 0) {
			snprintf(err, errlen, "%s:%d: syntax error", file, r);
			return SP_ECONFIG;
		}
	}
	/* Environment. */
	for (const sp_config_opt *o = opts; o->key; o++) {
		env_name(name, sizeof(name), prog, o->key);
		const char *v = getenv(name);
		if (v && (rc = set_opt(o, v, name, err, errlen)))
			return rc;
	}
	/* Flags. */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
			if (positional && *npositional < max_positional) {
				positional[(*npositional)++] = argv[i];
				continue;
			}
			snprintf(err, errlen, "unexpected argument '%s' (see --help)", a);
			return SP_ECONFIG;
		}
		a += 2;
		const char *eq = strchr(a, '=');
		size_t klen = eq ? (size_t)(eq - a) : strlen(a);
		if (klen == 6 && strncmp(a, "config", 6) == 0) {
			if (!eq)
				i++;
			continue;
		}
		const sp_config_opt *o = find_opt(opts, a, klen);
		if (!o) {
			snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)klen, a);
			return SP_ECONFIG;
		}
		const char *v;
		if (eq) {
			v = eq + 1;
		} else if (o->type == SP_CT_BOOL &&
			   (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)) {
			v = "true";
		} else if (i + 1 < argc) {
			v = argv[++i];
		} else {
			snprintf(err, errlen, "option '--%s' needs a value", o->key);
			return SP_ECONFIG;
		}
		snprintf(name, sizeof(name), "--%s", o->key);
		if ((rc = set_opt(o, v, name, err, errlen)))
			return rc;
	}
	return SP_OK;
}
