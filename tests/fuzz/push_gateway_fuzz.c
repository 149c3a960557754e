/* libFuzzer target for pushsrv's reading of gateway answers (pushsrv/gateway.h): any body,
 * with any status and either platform, yields one of the four verdicts, and a 2xx answer is
 * never read as a retry. */
#include <stdint.h>
#include <stdlib.h>

#include "pushsrv/gateway.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const long statuses[] = {0, 200, 400, 404, 410, 429, 500};
	if (size < 1)
		return 0;
	ps_gw_platform p = data[0] & 1 ? PS_GW_APNS : PS_GW_FCM;
	long status = statuses[(data[0] >> 1) % (sizeof(statuses) / sizeof(statuses[0]))];
	ps_gw_verdict v = ps_gw_classify(p, status, (const char *)data + 1, size - 1);
	if (v != PS_GW_SENT && v != PS_GW_RETRY && v != PS_GW_DEAD && v != PS_GW_FAILED)
		abort();
	if (status == 200 && v == PS_GW_RETRY)
		abort();
	if ((status == 404 || status == 410) && v != PS_GW_DEAD)
		abort();
	return 0;
}
