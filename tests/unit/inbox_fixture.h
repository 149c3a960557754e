/* Shared by the inbox unit tests: binary fixtures of tests/fixtures/ (its README.md says
 * what each one is and how it was made; paths are relative to the repository root:
 * $SP_ROOT, set by tests/run.sh, else the current directory) and a store in a temporary
 * directory driven with an explicit clock. */
#ifndef INBOX_FIXTURE_H
#define INBOX_FIXTURE_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "inboxsrv/store.h"
#include "sp_error.h"

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

/* A fresh directory /tmp/<name>.XXXXXX into dir (at least 64 bytes). */
static inline void
fixture_tmpdir(char *dir, const char *name)
{
	snprintf(dir, 64, "/tmp/%s.XXXXXX", name);
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

/* Closes *st (set to NULL) and deletes its directory. */
static inline void
fixture_store_drop(inbox_store **st, const char *dir)
{
	char cmd[128];
	inbox_store_close(*st);
	*st = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Applies one op in its own committed transaction at `now`; returns the op's result. */
static inline int
fixture_apply1(inbox_store *st, inbox_op *op, uint64_t now)
{
	inbox_op *ops[1] = { op };
	ck_assert_int_eq(inbox_store_write(st, ops, 1, now), SP_OK);
	return op->rc;
}

#endif
