/* One wake-up at a time (see sender.h). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "pushsrv/sender.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_metrics.h"
#include "sp_time.h"

typedef enum {
	O_SENT,
	O_ONLINE,
	O_DEFERRED,
	O_NO_TOKEN,
	O_NO_DEVICE,
	O_DEAD,
	O_RETRY,
	O_GAVE_UP,
	O_FAILED,
	O_REDIS,
	O_N
} outcome;

static const char *const outcome_names[O_N] = {
	"sent", "online", "deferred", "no_token", "no_device", "dead", "retry", "gave_up",
	"failed", "redis_error",
};

struct ps_sender {
	ps_sender_cfg cfg;
	ps_queue *q;
	ps_keys *k;
	ps_http *h;
	sp_metric *m[O_N];
	sp_metric *m_latency, *m_drop_failed;
};

int
ps_sender_new(const ps_sender_cfg *cfg, ps_queue *q, ps_keys *k, ps_http *h, ps_sender **out)
{
	ps_sender *s = calloc(1, sizeof(*s));
	if (!s)
		return SP_ENOMEM;
	s->cfg = *cfg;
	s->q = q;
	s->k = k;
	s->h = h;
	for (int i = 0; i < O_N; i++) {
		char name[96];
		snprintf(name, sizeof(name), "pushsrv_wakeups_total{outcome=\"%s\"}", outcome_names[i]);
		s->m[i] = sp_metric_counter(name, "due wake-ups by outcome (docs/PUSH.md)");
	}
	s->m_latency = sp_metric_histogram("pushsrv_gateway_seconds", "gateway POST, request to answer");
	s->m_drop_failed = sp_metric_counter("pushsrv_token_drop_failures_total", "dead tokens the key store did not drop (the next wake-up tries again)");
	*out = s;
	return SP_OK;
}

void
ps_sender_free(ps_sender *s)
{
	free(s);
}

uint64_t
ps_sender_backoff_ms(const ps_sender_cfg *cfg, int attempt)
{
	uint64_t d = (uint64_t)cfg->retry_base_ms;
	for (int i = 1; i < attempt && d < (uint64_t)cfg->retry_max_ms; i++)
		d *= 2;
	if (d > (uint64_t)cfg->retry_max_ms)
		d = (uint64_t)cfg->retry_max_ms;
	/* +-20%: the retries of one gateway outage do not come back in step. */
	uint64_t span = d * 2 / 5;
	return d - d / 5 + (span ? randombytes_uniform((uint32_t)(span > UINT32_MAX ? UINT32_MAX : span)) : 0);
}

static int
count(ps_sender *s, outcome o, uint64_t device, int rc)
{
	sp_metric_inc(s->m[o]);
	sp_debug("wake-up for device %llu: %s", (unsigned long long)device, outcome_names[o]);
	return rc;
}

/* A wake-up that did not go out for a transient reason: its period ends, and it is tried
 * again after a backoff, or given up after cfg.attempts tries. */
static int
retry(ps_sender *s, uint64_t device, uint64_t now_ms)
{
	int attempt = 0, rc;
	if ((rc = ps_queue_unclaim(s->q, device)) || (rc = ps_queue_failed_attempt(s->q, device, &attempt)))
		return count(s, O_REDIS, device, rc);
	if (attempt >= s->cfg.attempts) {
		sp_warn_rl("wake-up for device %llu given up after %d attempts",
			   (unsigned long long)device, attempt);
		ps_queue_forget(s->q, device);
		return count(s, O_GAVE_UP, device, SP_OK);
	}
	if ((rc = ps_queue_schedule(s->q, device, now_ms + ps_sender_backoff_ms(&s->cfg, attempt))))
		return count(s, O_REDIS, device, rc);
	return count(s, O_RETRY, device, SP_OK);
}

int
ps_sender_handle(ps_sender *s, uint64_t device, uint64_t now_ms)
{
	char platform[PS_KEYS_PLATFORM_MAX], token[PS_KEYS_TOKEN_MAX];
	bool online, claimed;
	int64_t left;
	ps_gw_platform p;
	int rc;

	if ((rc = ps_queue_online(s->q, device, &online)))
		return count(s, O_REDIS, device, rc);
	if (online) {
		ps_queue_forget(s->q, device);
		return count(s, O_ONLINE, device, SP_OK);
	}
	if ((rc = ps_queue_claim(s->q, device, s->cfg.period_ms, &claimed, &left)))
		return count(s, O_REDIS, device, rc);
	if (!claimed) {
		if ((rc = ps_queue_schedule(s->q, device, now_ms + (uint64_t)left)))
			return count(s, O_REDIS, device, rc);
		return count(s, O_DEFERRED, device, SP_OK);
	}
	rc = ps_keys_token(s->k, device, platform, token);
	if (rc == SP_ENOTFOUND) {
		ps_queue_forget(s->q, device);
		return count(s, O_NO_DEVICE, device, SP_OK);
	}
	if (rc) {
		sp_warn_rl("wake-up for device %llu: key store: %s", (unsigned long long)device,
			   sp_strerror(rc));
		return retry(s, device, now_ms);
	}
	if (!token[0] || ps_gw_platform_parse(platform, &p) || !s->cfg.url[p]) {
		ps_queue_forget(s->q, device);
		return count(s, O_NO_TOKEN, device, SP_OK);
	}
	char *url, *body;
	if ((rc = ps_gw_request(p, s->cfg.url[p], token, &url, &body))) {
		sodium_memzero(token, sizeof(token));
		return count(s, O_FAILED, device, SP_OK);
	}
	char resp[PS_GW_BODY_MAX];
	size_t len = 0;
	long status = 0;
	const char *err = NULL;
	uint64_t t0 = sp_mono_ns();
	rc = ps_http_post(s->h, url, ps_gw_headers(p), body, &status, resp, sizeof(resp), &len, &err);
	sp_metric_observe(s->m_latency, (double)(sp_mono_ns() - t0) / 1e9);
	free(url);
	free(body);
	ps_gw_verdict v = rc == SP_ENOMEM ? PS_GW_RETRY : ps_gw_classify(p, status, resp, len);
	if (v != PS_GW_SENT)
		sp_warn_rl("wake-up for device %llu (%s): %s (HTTP %ld%s%s)", (unsigned long long)device,
			   platform, ps_gw_verdict_name(v), status, err ? ", " : "", err ? err : "");
	switch (v) {
	case PS_GW_SENT:
		ps_queue_forget(s->q, device);
		rc = count(s, O_SENT, device, SP_OK);
		break;
	case PS_GW_DEAD:
		if (ps_keys_drop(s->k, device, platform, token) != SP_OK)
			sp_metric_inc(s->m_drop_failed);
		ps_queue_forget(s->q, device);
		rc = count(s, O_DEAD, device, SP_OK);
		break;
	case PS_GW_RETRY:
		rc = retry(s, device, now_ms);
		break;
	case PS_GW_FAILED:
		ps_queue_forget(s->q, device);
		rc = count(s, O_FAILED, device, SP_OK);
		break;
	}
	sodium_memzero(token, sizeof(token));
	return rc;
}
