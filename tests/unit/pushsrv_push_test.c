/* pushsrv's gateway shapes (docs/PUSH.md): the FCM and APNs requests of one wake-up carry
 * the token and nothing else, and the gateway's answers map to sent / retry / dead /
 * failed; the retry backoff doubles, is capped and jittered. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "check_run.h"
#include "pushsrv/gateway.h"
#include "pushsrv/sender.h"
#include "sp_error.h"

START_TEST(fcm_request)
{
	char *url, *body;
	ps_gw_platform p;
	ck_assert_int_eq(ps_gw_platform_parse("fcm", &p), SP_OK);
	ck_assert_int_eq(p, PS_GW_FCM);
	ck_assert_int_eq(ps_gw_request(p, "https://gw/v1/send", "tok:1", &url, &body), SP_OK);
	ck_assert_str_eq(url, "https://gw/v1/send");
	json_t *j = json_loads(body, 0, NULL);
	ck_assert_ptr_nonnull(j);
	json_t *m = json_object_get(j, "message");
	ck_assert_int_eq(json_object_size(j), 1);
	ck_assert_int_eq(json_object_size(m), 3);
	ck_assert_str_eq(json_string_value(json_object_get(m, "token")), "tok:1");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(m, "android"), "priority")), "high");
	json_t *data = json_object_get(m, "data");
	ck_assert_int_eq(json_object_size(data), 1);
	ck_assert_str_eq(json_string_value(json_object_get(data, "type")), "wake");
	json_decref(j);
	free(url);
	free(body);
	ck_assert_int_eq(ps_gw_request(p, "https://gw", "", &url, &body), SP_EINVAL);
	ck_assert_ptr_null(url);
	ck_assert_ptr_null(body);
}
END_TEST

START_TEST(apns_request)
{
	char *url, *body;
	ps_gw_platform p;
	ck_assert_int_eq(ps_gw_platform_parse("apns", &p), SP_OK);
	ck_assert_int_eq(ps_gw_platform_parse("gcm", &p), SP_EINVAL);
	ck_assert_int_eq(ps_gw_platform_parse(NULL, &p), SP_EINVAL);
	ck_assert_int_eq(ps_gw_request(PS_GW_APNS, "https://gw", "abc123", &url, &body), SP_OK);
	ck_assert_str_eq(url, "https://gw/3/device/abc123");
	ck_assert_str_eq(body, "{\"aps\":{\"content-available\":1}}");
	free(url);
	free(body);
	const char *const *h = ps_gw_headers(PS_GW_APNS);
	bool background = false;
	for (; *h; h++)
		background |= strcmp(*h, "apns-push-type: background") == 0;
	ck_assert(background);
}
END_TEST

static ps_gw_verdict
cls(ps_gw_platform p, long status, const char *body)
{
	return ps_gw_classify(p, status, body, body ? strlen(body) : 0);
}

START_TEST(classify)
{
	ck_assert_int_eq(cls(PS_GW_FCM, 200, "{\"name\":\"x\"}"), PS_GW_SENT);
	ck_assert_int_eq(cls(PS_GW_APNS, 200, ""), PS_GW_SENT);
	ck_assert_int_eq(cls(PS_GW_FCM, 0, NULL), PS_GW_RETRY);
	ck_assert_int_eq(cls(PS_GW_FCM, 500, "{}"), PS_GW_RETRY);
	ck_assert_int_eq(cls(PS_GW_FCM, 503, "not json"), PS_GW_RETRY);
	ck_assert_int_eq(cls(PS_GW_APNS, 429, "{\"reason\":\"TooManyRequests\"}"), PS_GW_RETRY);
	ck_assert_int_eq(cls(PS_GW_FCM, 404, NULL), PS_GW_DEAD);
	ck_assert_int_eq(cls(PS_GW_APNS, 410, "{\"reason\":\"Unregistered\"}"), PS_GW_DEAD);
	ck_assert_int_eq(cls(PS_GW_APNS, 400, "{\"reason\":\"BadDeviceToken\"}"), PS_GW_DEAD);
	ck_assert_int_eq(cls(PS_GW_APNS, 400, "{\"reason\":\"BadTopic\"}"), PS_GW_FAILED);
	ck_assert_int_eq(cls(PS_GW_FCM, 400,
			     "{\"error\":{\"status\":\"INVALID_ARGUMENT\",\"details\":[{\"errorCode\":\"UNREGISTERED\"}]}}"),
			 PS_GW_DEAD);
	ck_assert_int_eq(cls(PS_GW_FCM, 400, "{\"error\":{\"status\":\"UNREGISTERED\"}}"), PS_GW_DEAD);
	ck_assert_int_eq(cls(PS_GW_FCM, 200, "{\"failure\":1,\"results\":[{\"error\":\"NotRegistered\"}]}"),
			 PS_GW_DEAD);
	ck_assert_int_eq(cls(PS_GW_FCM, 400, "{\"error\":{\"status\":\"INVALID_ARGUMENT\"}}"), PS_GW_FAILED);
	ck_assert_int_eq(cls(PS_GW_FCM, 401, NULL), PS_GW_FAILED);
	/* Shapes that are not what they should be are not a dead token. */
	ck_assert_int_eq(cls(PS_GW_FCM, 400, "{\"error\":\"UNREGISTERED\"}"), PS_GW_FAILED);
	ck_assert_int_eq(cls(PS_GW_FCM, 400, "{\"error\":{\"details\":{\"errorCode\":\"UNREGISTERED\"}}}"), PS_GW_FAILED);
	ck_assert_int_eq(cls(PS_GW_FCM, 400, "[\"UNREGISTERED\"]"), PS_GW_FAILED);
	/* The APNs words mean nothing to FCM and the reverse. */
	ck_assert_int_eq(cls(PS_GW_FCM, 400, "{\"reason\":\"Unregistered\"}"), PS_GW_FAILED);
	ck_assert_int_eq(cls(PS_GW_APNS, 400, "{\"error\":{\"status\":\"UNREGISTERED\"}}"), PS_GW_FAILED);
}
END_TEST

START_TEST(backoff)
{
	ps_sender_cfg cfg = {.retry_base_ms = 1000, .retry_max_ms = 8000};
	for (int i = 0; i < 50; i++) {
		uint64_t a = ps_sender_backoff_ms(&cfg, 1), b = ps_sender_backoff_ms(&cfg, 3),
			 c = ps_sender_backoff_ms(&cfg, 20);
		ck_assert_uint_ge(a, 800);
		ck_assert_uint_le(a, 1200);
		ck_assert_uint_ge(b, 3200);
		ck_assert_uint_le(b, 4800);
		ck_assert_uint_ge(c, 6400);
		ck_assert_uint_le(c, 9600);
	}
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("pushsrv_push");
	TCase *tc = tcase_create("gateway");
	tcase_add_test(tc, fcm_request);
	tcase_add_test(tc, apns_request);
	tcase_add_test(tc, classify);
	tcase_add_test(tc, backoff);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
