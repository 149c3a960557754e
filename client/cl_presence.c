/* Presence, privacy settings and the server-side contact set (sealpost.h): PRESENCE_GET,
 * PRESENCE_SUB (sent again on every new connection), PRESENCE_EV events, PRIVACY_SET and
 * CONTACTS_EDIT through connsrv to keysrv. */
#include <stdlib.h>
#include <string.h>

#include "client/cl_internal.h"
#include "sp_error.h"

static void
privacy_of(const sp_frame *r, sealpost_privacy *out)
{
	if (!out)
		return;
	out->last_seen = (int)sp_frame_u64(r, SP_F_PRIV_LAST_SEEN);
	out->online = (int)sp_frame_u64(r, SP_F_PRIV_ONLINE);
	out->group_add = (int)sp_frame_u64(r, SP_F_PRIV_GROUP_ADD);
	out->contacts = sp_frame_u64(r, SP_F_COUNT);
}

static int
setting(sealpost *sp, sp_frame *q, sp_field f, int v, int max)
{
	if (v == SEALPOST_PRIV_KEEP)
		return SP_OK;
	if (v < 0 || v > max)
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "privacy setting out of range");
	sp_frame_set_u64(q, f, (uint64_t)v);
	return SP_OK;
}

int
sealpost_privacy_set(sealpost *sp, int last_seen, int online, int group_add, sealpost_privacy *out)
{
	sp_frame q, r;
	int rc;
	sp_frame_init(&q, SP_T_PRIVACY_SET, 0, false);
	if ((rc = setting(sp, &q, SP_F_PRIV_LAST_SEEN, last_seen, SEALPOST_PRIV_NOBODY)) ||
	    (rc = setting(sp, &q, SP_F_PRIV_ONLINE, online, SEALPOST_PRIV_NOBODY)) ||
	    (rc = setting(sp, &q, SP_F_PRIV_GROUP_ADD, group_add, SEALPOST_PRIV_CONTACTS)) ||
	    (rc = cl_need_account(sp)) || (rc = cl_online(sp, cl_attempts(sp))) ||
	    (rc = cl_call_want(sp, &q, SP_T_PRIVACY, &r)))
		return rc;
	privacy_of(&r, out);
	sp_frame_fini(&r);
	return SP_OK;
}

int
sealpost_contact_share(sealpost *sp, uint64_t user, int add, sealpost_privacy *out)
{
	sp_frame q, r;
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_online(sp, cl_attempts(sp))))
		return rc;
	sp_frame_init(&q, SP_T_CONTACTS_EDIT, 0, false);
	sp_frame_set_u64s(&q, add ? SP_F_CONTACTS_ADD : SP_F_CONTACTS_DEL, &user, 1);
	if ((rc = cl_call_want(sp, &q, SP_T_PRIVACY, &r)))
		return rc;
	privacy_of(&r, out);
	sp_frame_fini(&r);
	return SP_OK;
}

int
sealpost_contact_remove(sealpost *sp, const char *name)
{
	uint64_t user;
	sqlite3_stmt *st;
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_resolve_user(sp, name, &user)) ||
	    (rc = sealpost_contact_share(sp, user, 0, NULL)) ||
	    (rc = cl_prep(sp, &st, "DELETE FROM contacts WHERE user = ?")))
		return rc;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)user);
	return cl_step_done(sp, st);
}

int
sealpost_presence_get(sealpost *sp, const char *who, sealpost_presence *out)
{
	uint64_t user;
	sp_frame q, r;
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_resolve_user(sp, who, &user)) ||
	    (rc = cl_online(sp, cl_attempts(sp))))
		return rc;
	sp_frame_init(&q, SP_T_PRESENCE_GET, 0, false);
	sp_frame_set_u64(&q, SP_F_USER, user);
	if ((rc = cl_call_want(sp, &q, SP_T_PRESENCE_R, &r)))
		return rc;
	out->user = user;
	out->online = sp_frame_has(&r, SP_F_PRES_ONLINE) ? (int)sp_frame_u64(&r, SP_F_PRES_ONLINE) : -1;
	out->last_seen_ms = sp_frame_u64(&r, SP_F_PRES_LAST_SEEN);
	out->recently = (int)sp_frame_u64(&r, SP_F_PRES_RECENT);
	sp_frame_fini(&r);
	return SP_OK;
}

int
cl_presence_resubscribe(sealpost *sp)
{
	if (sp->nwatch == 0 || !sp->logged_in)
		return SP_OK;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_PRESENCE_SUB, 0, false);
	sp_frame_set_u64s(&q, SP_F_PRES_USERS, sp->watch, (uint32_t)sp->nwatch);
	int rc = cl_call_want(sp, &q, SP_T_OK, &r);
	if (rc == SP_OK)
		sp_frame_fini(&r);
	/* Presence is soft: a refusal leaves this connection without updates; a lost
	 * connection (cl_call closed it) is the caller's to handle. */
	return rc && !sp->conn ? rc : SP_OK;
}

int
sealpost_presence_watch(sealpost *sp, const char *const *who, size_t n)
{
	uint64_t users[64];
	int rc;
	if (n > sizeof(users) / sizeof(users[0]))
		return cl_fail(sp, SP_EINVAL, SEALPOST_ERR_USAGE, "at most 64 users can be watched");
	if ((rc = cl_need_account(sp)))
		return rc;
	for (size_t i = 0; i < n; i++)
		if ((rc = cl_resolve_user(sp, who[i], &users[i])))
			return rc;
	memcpy(sp->watch, users, n * sizeof(users[0]));
	sp->nwatch = n;
	if (!sp->conn || !sp->logged_in)
		return SP_OK;
	if (n > 0)
		return cl_presence_resubscribe(sp);
	sp_frame q, r;
	sp_frame_init(&q, SP_T_PRESENCE_SUB, 0, false);
	sp_frame_set_u64s(&q, SP_F_PRES_USERS, users, 0);
	if ((rc = cl_call_want(sp, &q, SP_T_OK, &r)))
		return rc;
	sp_frame_fini(&r);
	return SP_OK;
}

int
cl_presence_deliver(const sp_frame *f, cl_deliver **out)
{
	cl_deliver *d = calloc(1, sizeof(*d));
	if (!d)
		return SP_ENOMEM;
	d->presence = true;
	d->from_user = sp_frame_u64(f, SP_F_USER);
	d->server_ts = sp_frame_u64(f, SP_F_PRES_LAST_SEEN);
	d->pres_online = sp_frame_has(f, SP_F_PRES_ONLINE) ? (int)sp_frame_u64(f, SP_F_PRES_ONLINE) : -1;
	d->pres_recent = (int)sp_frame_u64(f, SP_F_PRES_RECENT);
	*out = d;
	return SP_OK;
}

void
cl_presence_report(sealpost *sp, const cl_deliver *d, sealpost_event_cb cb, void *arg)
{
	if (!cb)
		return;
	char from[40];
	cl_user_display(sp, d->from_user, from, sizeof(from));
	sealpost_event ev = {.type = SEALPOST_EV_PRESENCE,
			     .from = from,
			     .from_user = d->from_user,
			     .online = d->pres_online,
			     .last_seen_ms = d->server_ts,
			     .recently = d->pres_recent};
	cb(&ev, arg);
}
