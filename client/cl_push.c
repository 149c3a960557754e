/* Push wake-ups: registering this device's push token (docs/PUSH.md). */
#include <string.h>

#include "client/cl_internal.h"
#include "sp_error.h"

int
sealpost_push_register(sealpost *sp, const char *platform, const char *token)
{
	int rc;
	if ((platform == NULL) != (token == NULL))
		return SP_EINVAL;
	if (platform && strcmp(platform, "fcm") != 0 && strcmp(platform, "apns") != 0)
		return SP_EINVAL;
	if ((rc = cl_need_account(sp)) || (rc = cl_online(sp, cl_attempts(sp))))
		return rc;
	sp_frame q, r;
	sp_frame_init(&q, SP_T_PUSH_REGISTER, 0, false);
	if (platform) {
		sp_frame_set_str(&q, SP_F_PUSH_PLATFORM, platform);
		sp_frame_set_str(&q, SP_F_PUSH_TOKEN, token);
	}
	if ((rc = cl_call_want(sp, &q, SP_T_OK, &r)))
		return rc;
	sp_frame_fini(&r);
	return SP_OK;
}
