/* Gateway request bodies and answers (see gateway.h). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "pushsrv/gateway.h"
#include "sp_error.h"

static const char *const names[PS_GW_NPLATFORMS] = {"fcm", "apns"};

int
ps_gw_platform_parse(const char *name, ps_gw_platform *out)
{
	for (int i = 0; i < PS_GW_NPLATFORMS; i++)
		if (name && strcmp(name, names[i]) == 0) {
			*out = (ps_gw_platform)i;
			return SP_OK;
		}
	return SP_EINVAL;
}

const char *
ps_gw_platform_name(ps_gw_platform p)
{
	return p < PS_GW_NPLATFORMS ? names[p] : "?";
}

const char *
ps_gw_verdict_name(ps_gw_verdict v)
{
	switch (v) {
	case PS_GW_SENT: return "sent";
	case PS_GW_RETRY: return "retry";
	case PS_GW_DEAD: return "dead";
	case PS_GW_FAILED: return "failed";
	}
	return "?";
}

static const char *const fcm_headers[] = {"Content-Type: application/json", NULL};
static const char *const apns_headers[] = {"Content-Type: application/json",
					   "apns-push-type: background", "apns-priority: 5", NULL};

const char *const *
ps_gw_headers(ps_gw_platform p)
{
	return p == PS_GW_APNS ? apns_headers : fcm_headers;
}

int
ps_gw_request(ps_gw_platform p, const char *base_url, const char *token, char **url, char **body)
{
	json_t *j;
	*url = *body = NULL;
	if (!token || !*token || p >= PS_GW_NPLATFORMS)
		return SP_EINVAL;
	if (p == PS_GW_FCM) {
		j = json_pack("{s:{s:s, s:{s:s}, s:{s:s}}}", "message", "token", token, "android",
			      "priority", "high", "data", "type", "wake");
		*url = strdup(base_url);
	} else {
		j = json_pack("{s:{s:i}}", "aps", "content-available", 1);
		size_t n = strlen(base_url) + strlen("/3/device/") + strlen(token) + 1;
		if ((*url = malloc(n)))
			snprintf(*url, n, "%s/3/device/%s", base_url, token);
	}
	if (j && *url)
		*body = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	if (!*body) {
		free(*url);
		*url = NULL;
		return SP_ENOMEM;
	}
	return SP_OK;
}

static bool
str_is(json_t *v, const char *s)
{
	return json_is_string(v) && strcmp(json_string_value(v), s) == 0;
}

/* FCM v1 {"error":{"status":..., "details":[{"errorCode":...}]}} or the legacy
 * {"results":[{"error":"NotRegistered"}]}. */
static bool
fcm_dead(json_t *root)
{
	json_t *err = json_object_get(root, "error"), *v;
	size_t i;
	if (json_is_object(err)) {
		if (str_is(json_object_get(err, "status"), "UNREGISTERED"))
			return true;
		json_array_foreach(json_object_get(err, "details"), i, v)
			if (str_is(json_object_get(v, "errorCode"), "UNREGISTERED"))
				return true;
	}
	json_array_foreach(json_object_get(root, "results"), i, v)
		if (str_is(json_object_get(v, "error"), "NotRegistered"))
			return true;
	return false;
}

static bool
apns_dead(json_t *root)
{
	json_t *r = json_object_get(root, "reason");
	return str_is(r, "Unregistered") || str_is(r, "BadDeviceToken");
}

ps_gw_verdict
ps_gw_classify(ps_gw_platform p, long status, const char *body, size_t len)
{
	if (status == 404 || status == 410)
		return PS_GW_DEAD;
	json_t *root = NULL;
	if (body && len && len <= PS_GW_BODY_MAX)
		root = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
	bool dead = json_is_object(root) && (p == PS_GW_APNS ? apns_dead(root) : fcm_dead(root));
	json_decref(root);
	if (dead)
		return PS_GW_DEAD;
	if (status >= 200 && status < 300)
		return PS_GW_SENT;
	if (status == 0 || status == 429 || (status >= 500 && status < 600))
		return PS_GW_RETRY;
	return PS_GW_FAILED;
}
