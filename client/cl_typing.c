/* Typing indicators: sent as TYPING, received as TYPING_EV (never stored). */
#include "client/cl_internal.h"
#include "sp_error.h"

int
sealpost_typing(sealpost *sp, const char *to, int typing)
{
	uint64_t user;
	int rc;
	if ((rc = cl_need_account(sp)) || (rc = cl_resolve_user(sp, to, &user)) ||
	    (rc = cl_online(sp, cl_attempts(sp))))
		return rc;
	sp_frame q;
	sp_frame_init(&q, SP_T_TYPING, 0, false);
	sp_frame_set_u64(&q, SP_F_TO_USER, user);
	sp_frame_set_u64(&q, SP_F_KIND, typing ? 1 : 0);
	return cl_post(sp, &q);
}

void
cl_typing_report(sealpost *sp, const cl_deliver *d, sealpost_event_cb cb, void *arg)
{
	if (!cb || d->etype > 1)
		return;
	char from[40];
	cl_user_display(sp, d->from_user, from, sizeof(from));
	sealpost_event ev = {.type = SEALPOST_EV_TYPING,
			     .from = from,
			     .from_user = d->from_user,
			     .from_device = d->from_device,
			     .typing = (int)d->etype};
	cb(&ev, arg);
}
