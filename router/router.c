/* The router process around its map: setup, the health tick, change handling, metrics. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "internal.h"
#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_time.h"

uint64_t
router_now_ms(void)
{
	return sp_mono_ns() / 1000000;
}

static void
update_gauges(router *r)
{
	int64_t counts[4][2] = {{0}};
	int64_t draining = 0;
	for (size_t i = 0; i < router_map_count(r->map); i++) {
		const router_member *mb = router_map_member(r->map, i);
		counts[mb->role][mb->healthy]++;
		draining += mb->draining;
	}
	for (int role = SP_ROLE_CONNSRV; role <= SP_ROLE_KEYSRV; role++)
		for (int h = 0; h < 2; h++)
			sp_metric_set(r->m_members[role][h], counts[role][h]);
	sp_metric_set(r->m_draining, draining);
	uint64_t epoch = router_map_epoch(r->map);
	if (r->store && !router_store_map(r->store, &epoch, NULL))
		epoch = 0;
	sp_metric_set(r->m_epoch, (int64_t)epoch);
}

#define STATUS_REPUBLISH_MS 1000

void
router_changed(router *r)
{
	/* This publication carries every pending LSN. */
	r->last_publish_ms = router_now_ms();
	if (r->status_pending) {
		r->status_pending = false;
		event_del(r->status_timer);
	}
	int rc = router_map_state_save(r->map, r->state_path);
	if (rc)
		sp_error("cannot save %s: %s (a restart may reuse epochs up to %llu)", r->state_path,
			 sp_strerror(rc), (unsigned long long)router_map_epoch(r->map));
	if (r->store) {
		/* Published once etcd holds it (router_published). */
		router_store_offer(r->store, r->map);
		update_gauges(r);
		return;
	}
	if ((rc = router_server_publish(r->server, r->map)))
		sp_warn("cannot publish map epoch %llu: %s (members catch up on their next heartbeat)",
			(unsigned long long)router_map_epoch(r->map), sp_strerror(rc));
	else
		sp_metric_inc(r->m_publishes);
	update_gauges(r);
}

void
router_published(router *r)
{
	uint64_t epoch = 0;
	const sp_frame *f = router_store_map(r->store, &epoch, NULL);
	int rc = f ? router_server_publish_frame(r->server, f) : SP_ENOTFOUND;
	if (rc)
		sp_warn("cannot publish map epoch %llu: %s (members catch up on their next heartbeat)",
			(unsigned long long)epoch, sp_strerror(rc));
	else
		sp_metric_inc(r->m_publishes);
	update_gauges(r);
}

static void
publish_status(router *r)
{
	router_map_bump(r->map);
	router_changed(r);
}

static void
on_status_timer(evutil_socket_t fd, short what, void *arg)
{
	router *r = arg;
	(void)fd;
	(void)what;
	if (r->status_pending)
		publish_status(r);
}

void
router_status_changed(router *r)
{
	if (r->status_pending)
		return; /* the timer will carry this one too */
	uint64_t now = router_now_ms(), due = r->last_publish_ms + STATUS_REPUBLISH_MS;
	if (now >= due) {
		publish_status(r);
		return;
	}
	uint64_t wait = due - now;
	struct timeval tv = {(time_t)(wait / 1000), (suseconds_t)(wait % 1000) * 1000};
	if (event_add(r->status_timer, &tv) == 0)
		r->status_pending = true;
	else
		publish_status(r); /* cannot wait: publish now rather than never */
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	router *r = arg;
	(void)fd;
	(void)what;
	uint64_t now = router_now_ms();
	/* Names of members about to turn unhealthy, for the log. */
	for (size_t i = 0; i < router_map_count(r->map); i++) {
		const router_member *mb = router_map_member(r->map, i);
		if (mb->healthy && now >= mb->last_hb + r->timeout_ms)
			sp_warn("%s missed heartbeats for %llu ms: unhealthy", mb->name,
				(unsigned long long)(now - mb->last_hb));
	}
	if (router_map_tick(r->map, now))
		router_changed(r);
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
	router *r = arg;
	(void)what;
	sp_info("signal %d: stopping", (int)sig);
	event_base_loopbreak(r->base);
}

static void
register_metrics(router *r)
{
	char name[128];
	for (int role = SP_ROLE_CONNSRV; role <= SP_ROLE_KEYSRV; role++)
		for (int h = 0; h < 2; h++) {
			snprintf(name, sizeof(name), "sp_router_members{role=\"%s\",state=\"%s\"}",
				 sp_cluster_role_name(role), h ? "healthy" : "unhealthy");
			r->m_members[role][h] = sp_metric_gauge(name, "Cluster members by role and health");
		}
	r->m_draining = sp_metric_gauge("sp_router_draining", "Connection servers marked draining");
	r->m_epoch = sp_metric_gauge("sp_router_map_epoch", "Epoch of the current cluster map");
	r->m_heartbeats = sp_metric_counter("sp_router_heartbeats_total", "Heartbeats received");
	r->m_publishes = sp_metric_counter("sp_router_map_publishes_total", "Maps published");
	r->m_where_ok = sp_metric_counter("sp_router_where_total{result=\"ok\"}",
					  "Client bootstrap answers");
	r->m_where_none = sp_metric_counter("sp_router_where_total{result=\"none\"}",
					    "Client bootstrap answers");
	static const char *const refusals[ROUTER_ADMIN_REFUSED_N] = {
		[ROUTER_ADMIN_REFUSED_NO_TOKEN] = "no_token",
		[ROUTER_ADMIN_REFUSED_BAD_TOKEN] = "bad_token",
		[ROUTER_ADMIN_REFUSED_PUBLIC] = "public_listener",
	};
	for (int i = 0; i < ROUTER_ADMIN_REFUSED_N; i++) {
		snprintf(name, sizeof(name), "sp_router_admin_refused_total{reason=\"%s\"}",
			 refusals[i]);
		r->m_admin_refused[i] = sp_metric_counter(
			name, "Admin requests refused: no or a wrong operator token, or asked on the "
			      "public listener");
	}
}

int
router_new(const router_config *cfg, router **out, char *err, size_t errlen)
{
	int rc;
	router *r = calloc(1, sizeof(*r));
	if (errlen)
		err[0] = '\0';
	if (!r)
		return SP_ENOMEM;
	if ((rc = router_map_load(cfg->cluster_file, &r->map, err, errlen)))
		goto fail;
	r->timeout_ms = cfg->heartbeat_timeout_ms;
	router_map_set_timeout(r->map, cfg->heartbeat_timeout_ms);
	if (cfg->state_file)
		r->state_path = strdup(cfg->state_file);
	else if (asprintf(&r->state_path, "%s.state", cfg->cluster_file) < 0)
		r->state_path = NULL;
	rc = SP_ENOMEM;
	if (!r->state_path)
		goto fail;
	if ((rc = router_map_state_load(r->map, r->state_path, err, errlen)))
		goto fail;
	/* The start-up epoch is durable before any member can see it. */
	if ((rc = router_map_state_save(r->map, r->state_path))) {
		snprintf(err, errlen, "%s: cannot write: %s", r->state_path, sp_strerror(rc));
		rc = SP_ECONFIG;
		goto fail;
	}
	register_metrics(r);
	update_gauges(r);
	rc = SP_ENOMEM;
	if (!(r->base = event_base_new()))
		goto fail;
	if ((rc = router_server_start(r, cfg->listen_url, cfg->publish_url, &r->server))) {
		snprintf(err, errlen, "cannot listen on %s / %s: %s", cfg->listen_url,
			 cfg->publish_url, sp_strerror(rc));
		goto fail;
	}
	if ((rc = router_http_start(r, cfg, &r->http, err, errlen)))
		goto fail;
	/* A quarter of the timeout: a silent member is noticed within 1.25 timeouts. */
	struct timeval tv = {0, 0};
	uint64_t period = cfg->heartbeat_timeout_ms / 4 ? cfg->heartbeat_timeout_ms / 4 : 1;
	tv.tv_sec = (time_t)(period / 1000);
	tv.tv_usec = (suseconds_t)(period % 1000) * 1000;
	rc = SP_ENOMEM;
	r->tick = event_new(r->base, -1, EV_PERSIST, on_tick, r);
	r->sigint = evsignal_new(r->base, SIGINT, on_signal, r);
	r->sigterm = evsignal_new(r->base, SIGTERM, on_signal, r);
	r->status_timer = evtimer_new(r->base, on_status_timer, r);
	if (!r->tick || !r->sigint || !r->sigterm || !r->status_timer || event_add(r->tick, &tv) ||
	    event_add(r->sigint, NULL) || event_add(r->sigterm, NULL))
		goto fail;
	sp_etcd_cfg ecfg = { .endpoints = cfg->etcd_endpoints, .ca = cfg->etcd_ca,
		.cert = cfg->etcd_cert, .key = cfg->etcd_key, .user = cfg->etcd_user,
		.password = cfg->etcd_password };
	if (cfg->etcd_endpoints &&
	    (rc = router_etcd_start(r, &ecfg,
				    cfg->etcd_cluster ? cfg->etcd_cluster : "sealpost", &r->etcd, err,
				    errlen)))
		goto fail;
	if (cfg->etcd_endpoints &&
	    (rc = router_store_start(r, &ecfg,
				     cfg->etcd_cluster ? cfg->etcd_cluster : "sealpost", cfg->listen_url,
				     &r->store, err, errlen)))
		goto fail;
	if (r->store)
		router_store_offer(r->store, r->map);
	*out = r;
	return SP_OK;
fail:
	if (rc == SP_ENOMEM && !err[0])
		snprintf(err, errlen, "out of memory");
	router_free(r);
	return rc;
}

int
router_run(router *r)
{
	sp_info("router up: %zu members, epoch %llu, HTTP port %d, admin port %d",
		router_map_count(r->map), (unsigned long long)router_map_epoch(r->map), r->http_port,
		r->admin_port);
	return event_base_dispatch(r->base) < 0 ? SP_EIO : SP_OK;
}

void
router_free(router *r)
{
	if (!r)
		return;
	/* First: their threads write into what the rest below frees. */
	router_store_free(r->store);
	router_etcd_free(r->etcd);
	if (r->status_timer)
		event_free(r->status_timer);
	if (r->tick)
		event_free(r->tick);
	if (r->sigint)
		event_free(r->sigint);
	if (r->sigterm)
		event_free(r->sigterm);
	router_http_free(r->http);
	router_server_free(r->server);
	if (r->base)
		event_base_free(r->base);
	router_map_free(r->map);
	free(r->state_path);
	free(r);
}
