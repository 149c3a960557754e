/*
 * One wake-up, from a popped due entry to the gateway's verdict (docs/PUSH.md): skip a
 * device that is online now, keep to one wake-up per device per period (a wake-up inside
 * the period is made due at its end), fetch the token, POST, then count the outcome: sent;
 * token dead (dropped in keysrv); retry later with backoff (5xx, 429, no answer, key store
 * unavailable) up to `attempts`; or failed. Every outcome has a counter
 * (pushsrv_wakeups_total{outcome=...}); logs name the device, never the token.
 */
#ifndef PS_SENDER_H
#define PS_SENDER_H

#include <stdint.h>

#include "pushsrv/gateway.h"
#include "pushsrv/http.h"
#include "pushsrv/keys.h"
#include "pushsrv/queue.h"

typedef struct ps_sender_cfg {
	const char *url[PS_GW_NPLATFORMS]; /* gateway base URL per platform (NULL: none) */
	int period_ms;                     /* at most one wake-up per device per period */
	int retry_base_ms, retry_max_ms;   /* backoff: base doubling up to max, +-20% jitter */
	int attempts;                      /* tries of one wake-up before it is given up */
} ps_sender_cfg;

typedef struct ps_sender ps_sender;

/* Borrows everything (they outlive the sender); registers the metrics. */
int ps_sender_new(const ps_sender_cfg *cfg, ps_queue *q, ps_keys *k, ps_http *h,
		  ps_sender **out);
void ps_sender_free(ps_sender *s);

/* Handles one due device at now_ms. SP_OK, or SP_EREDIS when Redis failed midway (the
 * wake-up is lost, counted; the caller waits before popping again). */
int ps_sender_handle(ps_sender *s, uint64_t device, uint64_t now_ms);

/* The delay before retry `attempt` (1: the first retry), with jitter. */
uint64_t ps_sender_backoff_ms(const ps_sender_cfg *cfg, int attempt);

#endif
