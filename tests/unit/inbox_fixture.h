/* Binary fixtures of tests/fixtures/ (its README.md says what each one is and how it was
 * made). Paths are relative to the repository root: $SP_ROOT (set by tests/run.sh), else
 * the current directory. */
#ifndef INBOX_FIXTURE_H
#define INBOX_FIXTURE_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The whole of fixture `name` (e.g. "inbox_malformed/junk.bin"), malloc'd (at least one
 * byte, so an empty fixture is not NULL); its length in *len. Fails the test if unreadable. */
static inline uint8_t *
fixture_read(const char *name, size_t *len)
{
	const char *root = getenv("SP_ROOT");
	char path[1024];
	snprintf(path, sizeof(path), "%s/tests/fixtures/%s", root ? root : ".", name);
	FILE *f = fopen(path, "rb");
	ck_assert_msg(f != NULL, "fixture %s missing", path);
	ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
	long n = ftell(f);
	ck_assert_int_ge(n, 0);
	rewind(f);
	uint8_t *p = malloc((size_t)n + 1);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(fread(p, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return p;
}

#endif
