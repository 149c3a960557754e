/*
 * Push gateway shapes (docs/PUSH.md): the request one wake-up makes for a platform, and
 * what the gateway's answer means. Pure functions (no I/O), shared by the sender and the
 * tests; the answer is hostile input, bounded by the caller (PS_GW_BODY_MAX).
 *
 *   fcm:  POST <fcm-url>, {"message":{"token":T,"android":{"priority":"high"},
 *         "data":{"type":"wake"}}}, the FCM HTTP v1 shape.
 *   apns: POST <apns-url>/3/device/<T>, {"aps":{"content-available":1}} with
 *         apns-push-type: background and apns-priority: 5, the APNs shape.
 *
 * A wake-up carries no message content: the device connects and fetches its queue.
 */
#ifndef PS_GATEWAY_H
#define PS_GATEWAY_H

#include <stddef.h>

/* Longest gateway answer read; the rest is not looked at. */
#define PS_GW_BODY_MAX 16384

typedef enum { PS_GW_FCM, PS_GW_APNS, PS_GW_NPLATFORMS } ps_gw_platform;

/* "fcm" / "apns" -> platform: SP_OK, or SP_EINVAL. */
int ps_gw_platform_parse(const char *name, ps_gw_platform *out);
const char *ps_gw_platform_name(ps_gw_platform p);

/* The URL and JSON body of one wake-up to `token` (a token keysrv accepted: printable, no
 * quote, backslash or slash) at the gateway `base_url`. On SP_OK the caller frees *url and
 * *body. SP_EINVAL for an empty token, SP_ENOMEM. */
int ps_gw_request(ps_gw_platform p, const char *base_url, const char *token, char **url,
		  char **body);

/* Extra request headers of a platform (NULL-terminated, static). */
const char *const *ps_gw_headers(ps_gw_platform p);

typedef enum {
	PS_GW_SENT,   /* accepted */
	PS_GW_RETRY,  /* try again later: no answer (status 0), 429, 5xx */
	PS_GW_DEAD,   /* the token is dead: 404, 410, or a body saying so */
	PS_GW_FAILED, /* refused for another reason: not retried */
} ps_gw_verdict;

const char *ps_gw_verdict_name(ps_gw_verdict v);

/* What an answer (HTTP status, 0 when none came; body of `len` bytes, not NUL-terminated,
 * may be anything) means. A dead token: 404 or 410; FCM: an error whose status or a
 * detail's errorCode is UNREGISTERED, or a legacy result error NotRegistered; APNs: reason
 * Unregistered or BadDeviceToken. */
ps_gw_verdict ps_gw_classify(ps_gw_platform p, long status, const char *body, size_t len);

#endif
