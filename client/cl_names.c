/*
 * Names and ids as text: "+phone" and "#user" (contacts, resolved through keysrv when
 * unknown), "@group", conversation keys and their display names, hex.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cl_internal.h"
#include "sp_error.h"

void
cl_hex(const uint8_t *p, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[p[i] >> 4];
		out[2 * i + 1] = d[p[i] & 15];
	}
	out[2 * n] = '\0';
}

int
cl_unhex(const char *s, uint8_t *out, size_t n)
{
	if (strlen(s) != 2 * n)
		return SP_EINVAL;
	for (size_t i = 0; i < n; i++) {
		int v = 0;
		for (int k = 0; k < 2; k++) {
			char c = (char)tolower((unsigned char)s[2 * i + k]);
			if (c >= '0' && c <= '9')
				v = v * 16 + (c - '0');
			else if (c >= 'a' && c <= 'f')
				v = v * 16 + (c - 'a' + 10);
			else
				return SP_EINVAL;
		}
		out[i] = (uint8_t)v;
	}
	return SP_OK;
}

void
cl_peer_name(uint64_t user, uint64_t device, char out[48])
{
	snprintf(out, 48, "%" PRIu64 ".%" PRIu64, user, device);
}

static int
parse_u64(const char *s, uint64_t *v)
{
	char *end;
	if (!*s || !isdigit((unsigned char)*s))
		return SP_EINVAL;
	errno = 0;
	unsigned long long x = strtoull(s, &end, 10);
	if (errno || *end || x == 0)
		return SP_EINVAL;
	*v = x;
	return SP_OK;
}

int
cl_resolve_user(sealpost *sp, const char *name, uint64_t *user)
{
	if (name[0] == '#') {
		if (parse_u64(name + 1, user))
			return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "bad user id '%s'", name);
		return SP_OK;
	}
	if (name[0] != '+')
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE,
			       "'%s' is not a phone (+E.164), a #user id or an @group", name);
	if (sp->user && strcmp(name, sp->phone) == 0) {
		*user = sp->user;
		return SP_OK;
	}
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "SELECT user FROM contacts WHERE phone = ?");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = SP_ENOTFOUND;
	if (sqlite3_step(st) == SQLITE_ROW) {
		*user = (uint64_t)sqlite3_column_int64(st, 0);
		rc = SP_OK;
	}
	sqlite3_finalize(st);
	if (rc == SP_OK)
		return SP_OK;
	/* Not a known contact: ask keysrv who has that number, and remember the answer. */
	if (!sp->conn && (rc = cl_connect(sp, 1)))
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_USER_LOOKUP, 0, false);
	sp_frame_set_str(&q, SP_F_PHONE, name);
	if ((rc = cl_call_want(sp, &q, SP_T_USER_FOUND, &r)))
		return rc == SP_ENOTFOUND ? cl_fail(sp, rc, SEALPOST_ERR_SERVER, "%s is not on Sealpost", name)
					  : rc;
	*user = sp_frame_u64(&r, SP_F_USER);
	sp_frame_fini(&r);
	return sealpost_contact_add(sp, name, *user);
}

int
cl_resolve_group(sealpost *sp, const char *name, uint64_t *gid)
{
	if (name[0] != '@' || !name[1])
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "'%s' is not a group (@NAME or @ID)", name);
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "SELECT gid FROM groups WHERE name = ?1 OR CAST(gid AS TEXT) = ?1"
				  " ORDER BY active DESC, gid LIMIT 1");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, name + 1, -1, SQLITE_STATIC);
	rc = SP_ENOTFOUND;
	if (sqlite3_step(st) == SQLITE_ROW) {
		*gid = (uint64_t)sqlite3_column_int64(st, 0);
		rc = SP_OK;
	}
	sqlite3_finalize(st);
	if (rc == SP_ENOTFOUND && parse_u64(name + 1, gid) == SP_OK)
		return SP_OK; /* a group id we have not seen yet: keysrv decides */
	if (rc)
		return cl_fail(sp, rc, SEALPOST_ERR_USAGE, "unknown group %s", name);
	return SP_OK;
}

void
cl_user_display(sealpost *sp, uint64_t user, char *out, size_t cap)
{
	if (user == sp->user && sp->phone[0]) {
		snprintf(out, cap, "%s", sp->phone);
		return;
	}
	sqlite3_stmt *st;
	snprintf(out, cap, "#%" PRIu64, user);
	if (cl_prep(sp, &st, "SELECT phone FROM contacts WHERE user = ? LIMIT 1"))
		return;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)user);
	if (sqlite3_step(st) == SQLITE_ROW)
		snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
}

void
cl_conv_key(char *out, size_t cap, bool group, uint64_t id)
{
	snprintf(out, cap, "%c:%" PRIu64, group ? 'g' : 'u', id);
}

void
cl_conv_display(sealpost *sp, const char *key, char *out, size_t cap)
{
	uint64_t id = strtoull(key + 2, NULL, 10);
	if (key[0] == 'u') {
		cl_user_display(sp, id, out, cap);
		return;
	}
	sqlite3_stmt *st;
	snprintf(out, cap, "@%" PRIu64, id);
	if (cl_prep(sp, &st, "SELECT name FROM groups WHERE gid = ?"))
		return;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
		snprintf(out, cap, "@%s", (const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
}

int
sealpost_contact_add(sealpost *sp, const char *phone, uint64_t user)
{
	if (phone[0] != '+' || strlen(phone) > 32 || !user)
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "contact add needs +PHONE and a user id");
	sqlite3_stmt *st;
	int rc = cl_prep(sp, &st, "INSERT OR REPLACE INTO contacts(phone, user) VALUES(?, ?)");
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, phone, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)user);
	return cl_step_done(sp, st);
}
