/*
 * connsrv: the edge. Holds client TLS connections, logs devices in, writes sends to the
 * inbox shards, delivers, relays ACKs and receipts, proxies key and media frames. With
 * --workers N it forks N processes that share the listening port (SO_REUSEPORT); worker i
 * takes the pull port + i and the metrics port + i.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <sodium.h>

#include "connsrv/deliver.h"
#include "connsrv/internal.h"
#include "connsrv/notify.h"
#include "connsrv/peer.h"
#include "connsrv/presence.h"
#include "connsrv/push.h"
#include "connsrv/receipts.h"
#include "sp_config.h"
#include "sp_error.h"
#include "sp_internal.h"
#include "sp_log.h"
#include "sp_secret.h"
#include "sp_time.h"
#include "sp_tls.h"

static char *log_level;
static bool log_json;

static cs_cfg cfg;
/* From --redis-password-file (empty: no AUTH). */
static char redis_password[256];
static sp_internal_opts internal;
static long long push_delay_ms;

/* The concerns' links to each other (see cs_ops). */
static const cs_ops ops = {
	.push = cs_deliver_push,
	.notify = cs_notify_appended,
	.acked = cs_receipts_acked,
};

/* Abuse limits (limits.h): the settings as written, parsed into limits_cfg at start. */
static char *lim_spec[CS_LIM__N][CS_SCOPE__N];
static long long lim_table;
static cs_limits_cfg limits_cfg;

static const sp_config_opt opts[] = {
	{"name", SP_CT_STR, &cfg.name, "connsrv-0", "cluster member name (as in the router's cluster file)", 0, 0},
	{"listen", SP_CT_STR, &cfg.listen, "127.0.0.1:7443", "client TLS listener host:port", 0, 0},
	{"cert", SP_CT_STR, &cfg.cert, NULL, "TLS certificate chain (PEM)", 0, 0},
	{"key", SP_CT_STR, &cfg.key, NULL, "TLS private key (PEM)", 0, 0},
	{"tls12", SP_CT_BOOL, &cfg.tls12, "false", "also accept TLS 1.2", 0, 0},
	{"pull", SP_CT_STR, &cfg.pull, "tcp://127.0.0.1:7501", "NNG url peers push DELIVER/KICK to (worker i: port + i)", 0, 0},
	{"advertise", SP_CT_STR, &cfg.advertise, NULL, "NNG url peers dial to reach --pull (default: --pull)", 0, 0},
	{"router", SP_CT_STR, &cfg.router, "tcp://127.0.0.1:7201", "router REP url(s), comma-separated (heartbeats go to each)", 0, 0},
	{"router-pub", SP_CT_STR, &cfg.router_pub, "tcp://127.0.0.1:7202", "router PUB url(s), comma-separated", 0, 0},
	{"redis", SP_CT_STR, &cfg.redis, "127.0.0.1:6379", "Redis host:port (routes)", 0, 0},
	{"redis-user", SP_CT_STR, &cfg.redis_user, NULL, "Redis ACL user (with --redis-password-file; default: Redis's default user)", 0, 0},
	{"redis-password-file", SP_CT_STR, &cfg.redis_password_file, NULL, "file holding the Redis password (mode 0600); every connection AUTHs with it", 0, 0},
	{"workers", SP_CT_INT, &cfg.workers, "1", "worker processes sharing the port", 1, 64},
	{"max-conns", SP_CT_INT, &cfg.max_conns, "200000", "connections per worker", 1, 10000000},
	{"idle-timeout", SP_CT_INT, &cfg.idle_timeout_ms, "180000", "ms without a frame before a connection is closed", 1000, 86400000},
	{"expire-after", SP_CT_INT, &cfg.expire_after_s, "2595600", "seconds after its send time that a message no device of a recipient received shows `expired` at its sender (AUTH_OK exp_after): the inbox shards' --msg-ttl plus their --sweep-interval plus clock skew", 1, 315360000},
	{"rpc-timeout", SP_CT_INT, &cfg.rpc_timeout_ms, "5000", "ms a call to a shard or keysrv may take", 100, 600000},
	{"shard-retry-ms", SP_CT_INT, &cfg.shard_retry_ms, "10000", "ms an inbox or keysrv call is retried on the (new) primary after a failover-like failure before the client is told to retry (0: never)", 0, 600000},
	{"window", SP_CT_INT, &cfg.window, "256", "DELIVERs written and not yet ACKed per connection", 1, 4096},
	{"out-pause-bytes", SP_CT_SIZE, &cfg.out_pause_bytes, "256K", "stop delivering while a socket holds this much", 4096, 1 << 30},
	{"out-max-bytes", SP_CT_SIZE, &cfg.out_max_bytes, "4M", "disconnect a client whose unread output exceeds this", 65536, 1 << 30},
	{"send-rate", SP_CT_INT, &cfg.send_rate, "200", "sends per second per device (token bucket)", 1, 1000000},
	{"send-burst", SP_CT_INT, &cfg.send_burst, "400", "token bucket size", 1, 1000000},
	{"limit-send", SP_CT_STR, &lim_spec[CS_LIM_SEND][CS_SCOPE_USER], "200/s,2000", "SEND and SEND_GROUP per user, in Redis: <n>/<s|min|h|day>[,<burst>] or off (docs/CONNSRV.md, Abuse limits)", 0, 0},
	{"limit-send-source", SP_CT_STR, &lim_spec[CS_LIM_SEND][CS_SCOPE_SOURCE], "2000/s,20000", "SEND and SEND_GROUP per source address", 0, 0},
	{"limit-receipt", SP_CT_STR, &lim_spec[CS_LIM_RECEIPT][CS_SCOPE_USER], "100/s,1000", "READ receipts per user", 0, 0},
	{"media-quota", SP_CT_STR, &lim_spec[CS_LIM_MEDIA_BYTES][CS_SCOPE_USER], "2G/day", "MEDIA_PUT bytes per user", 0, 0},
	{"limit-media-blob", SP_CT_STR, &lim_spec[CS_LIM_MEDIA_BLOB][CS_SCOPE_USER], "500/h,200", "MEDIA_DONE (blobs) per user", 0, 0},
	{"limit-group", SP_CT_STR, &lim_spec[CS_LIM_GROUP][CS_SCOPE_USER], "600/h,1100", "group members added per user (GROUP_CREATE: 1 + users listed, GROUP_ADD: users listed)", 0, 0},
	{"limit-group-source", SP_CT_STR, &lim_spec[CS_LIM_GROUP][CS_SCOPE_SOURCE], "6000/h,11000", "group members added per source address", 0, 0},
	{"limit-bundle", SP_CT_STR, &lim_spec[CS_LIM_BUNDLE][CS_SCOPE_USER], "20/s,500", "BUNDLE_GET per requesting user", 0, 0},
	{"limit-bundle-source", SP_CT_STR, &lim_spec[CS_LIM_BUNDLE][CS_SCOPE_SOURCE], "200/s,5000", "BUNDLE_GET per source address", 0, 0},
	{"limit-bundle-target", SP_CT_STR, &lim_spec[CS_LIM_BUNDLE_TARGET][CS_SCOPE_TARGET], "60/h,60", "BUNDLE_GET per target device (per target user when no device is named): bounds how fast one-time prekeys can be drained", 0, 0},
	{"limit-lookup", SP_CT_STR, &lim_spec[CS_LIM_LOOKUP][CS_SCOPE_USER], "10/s,200", "USER_LOOKUP per user", 0, 0},
	{"limit-lookup-source", SP_CT_STR, &lim_spec[CS_LIM_LOOKUP][CS_SCOPE_SOURCE], "100/s,2000", "USER_LOOKUP per source address", 0, 0},
	{"limit-push-register", SP_CT_STR, &lim_spec[CS_LIM_PUSH_REGISTER][CS_SCOPE_USER], "120/h,60", "PUSH_REGISTER per user", 0, 0},
	{"limit-push-register-source", SP_CT_STR, &lim_spec[CS_LIM_PUSH_REGISTER][CS_SCOPE_SOURCE], "1200/h,600", "PUSH_REGISTER per source address", 0, 0},
	{"limit-presence", SP_CT_STR, &lim_spec[CS_LIM_PRESENCE][CS_SCOPE_USER], "2/s,120", "PRESENCE_SUB and PRESENCE_GET per user", 0, 0},
	{"limit-presence-source", SP_CT_STR, &lim_spec[CS_LIM_PRESENCE][CS_SCOPE_SOURCE], "20/s,1200", "PRESENCE_SUB and PRESENCE_GET per source address", 0, 0},
	{"limit-table-size", SP_CT_INT, &lim_table, "100000", "subjects (users, sources, targets) a worker tracks for the abuse limits", 16, 100000000},
	{"prelogin-max-frame", SP_CT_SIZE, &cfg.prelogin_frame_max, "4K", "largest frame a connection may send before it has logged in (HELLO, AUTH, REGISTER, VERIFY, LINK_* are under 1 KiB)", 512, 1 << 20},
	{"login-timeout", SP_CT_INT, &cfg.login_timeout_ms, "10000", "ms a connection has to log in (restarted by REGISTER/VERIFY/LINK_* frames, not by PING)", 1000, 600000},
	{"prelogin-per-source", SP_CT_INT, &cfg.prelogin_per_source, "64", "connections not yet logged in per source address (IPv6: per /64)", 1, 1000000},
	{"handshake-rate", SP_CT_INT, &cfg.handshake_rate, "50", "new connections (TLS handshakes) per second per source address", 1, 1000000},
	{"handshake-burst", SP_CT_INT, &cfg.handshake_burst, "200", "burst of new connections per source address", 1, 1000000},
	{"source-table-size", SP_CT_INT, &cfg.source_table_size, "65536", "source addresses tracked for the per-source limits (idle ones evicted oldest first)", 16, 10000000},
	{"route-ttl", SP_CT_INT, &cfg.route_ttl_s, "90", "seconds a route lives in Redis without refresh", 3, 86400},
	{"check-interval", SP_CT_INT, &cfg.check_interval_ms, "2000", "ms between lost-delivery checks", 100, 600000},
	{"check-per-tick", SP_CT_INT, &cfg.check_per_tick, "200000", "connections checked per interval (one call per shard per 1024)", 1, 10000000},
	{"devcache-ms", SP_CT_INT, &cfg.devcache_ms, "10000", "ms a user's device list is cached", 0, 3600000},
	{"push-delay", SP_CT_INT, &push_delay_ms, "60000", "ms after an entry is stored for an offline device before pushsrv sends it a wake-up (0: no wake-ups recorded; docs/PUSH.md)", 0, 86400000},
	{"metrics-addr", SP_CT_STR, &cfg.metrics_addr, "127.0.0.1", "metrics HTTP address", 0, 0},
	{"metrics-port", SP_CT_INT, &cfg.metrics_port, "0", "metrics HTTP port (0: off; worker i: port + i)", 0, 65535},
	{"drain-timeout", SP_CT_INT, &cfg.drain_timeout_ms, "5000", "ms SIGTERM waits for calls in flight", 0, 600000},
	{"log-level", SP_CT_STR, &log_level, "info", "debug|info|warn|error", 0, 0},
	{"log-json", SP_CT_BOOL, &log_json, "false", "log JSON lines", 0, 0},
	SP_INTERNAL_OPTS(&internal),
	{NULL, 0, NULL, NULL, NULL, 0, 0},
};

static void
register_metrics(cs_server *srv)
{
	srv->m.conns = sp_metric_gauge("sp_connsrv_connections", "open client connections");
	srv->m.accepts = sp_metric_counter("sp_connsrv_accepts_total", "connections accepted");
	srv->m.rejects = sp_metric_counter("sp_connsrv_rejects_total", "connections refused (limit, drain)");
	srv->m.logins = sp_metric_counter("sp_connsrv_logins_total", "successful logins");
	srv->m.login_fail = sp_metric_counter("sp_connsrv_login_failures_total", "failed logins");
	srv->m.kicks = sp_metric_counter("sp_connsrv_kicks_total", "sessions closed by a KICK (a newer login of the device, or the device removed)");
	srv->m.typing_sent = sp_metric_counter("sp_connsrv_typing_sent_total", "typing indicators written to a recipient's device");
	srv->m.typing_dropped = sp_metric_counter("sp_connsrv_typing_dropped_total", "typing indicators dropped: recipient offline, over the per-session rate, or malformed");
	srv->m.revoked = sp_metric_counter("sp_connsrv_revoked_sessions_total", "sessions closed because their device left its user's device list");
	srv->m.frames_in = sp_metric_counter("sp_connsrv_frames_in_total", "frames from clients");
	srv->m.frames_out = sp_metric_counter("sp_connsrv_frames_out_total", "frames to clients");
	srv->m.sends = sp_metric_counter("sp_connsrv_sends_total", "messages answered SENT");
	srv->m.sent_latency = sp_metric_histogram("sp_connsrv_send_seconds", "SEND to SENT");
	srv->m.deliveries = sp_metric_counter("sp_connsrv_deliveries_total", "DELIVER frames written");
	srv->m.delivered_rt = sp_metric_counter("sp_connsrv_deliveries_realtime_total", "DELIVERs written straight from a push");
	srv->m.drains = sp_metric_counter("sp_connsrv_queue_drains_total", "inbox drains finished (QUEUE_EMPTY)");
	srv->m.gap_fetches = sp_metric_counter("sp_connsrv_fetches_total", "inbox fetches");
	srv->m.checks = sp_metric_counter("sp_connsrv_check_repairs_total", "periodic checks that found undelivered entries");
	srv->m.errors = sp_metric_counter("sp_connsrv_errors_total", "ERROR frames sent");
	srv->m.acks = sp_metric_counter("sp_connsrv_acks_total", "ACK frames");
	srv->m.receipts = sp_metric_counter("sp_connsrv_receipts_total", "receipt envelopes stored");
	srv->m.rpc_latency = sp_metric_histogram("sp_connsrv_keysrv_login_seconds", "auth key lookup latency");
	srv->m.rate_limited = sp_metric_counter("sp_connsrv_rate_limited_total", "sends refused by the rate limit");
	srv->m.malformed = sp_metric_counter("sp_connsrv_malformed_total", "malformed frames (connection closed)");
	srv->m.receipts_dropped = sp_metric_counter("sp_connsrv_receipts_dropped_total", "receipts not stored (per recipient device, or whole when the device list failed)");
	srv->m.fetches_dropped = sp_metric_counter("sp_connsrv_fetches_dropped_total", "inbox fetches not made or failed (the check retries)");
	srv->m.acks_dropped = sp_metric_counter("sp_connsrv_acks_dropped_total", "ACKs not applied on the shard (entries come again)");
	srv->m.acks_merged = sp_metric_counter("sp_connsrv_acks_merged_total", "cumulative ACKs sent to the shard inside a later one (one INBOX_ACK in flight per session)");
	srv->m.checks_failed = sp_metric_counter("sp_connsrv_checks_failed_total", "lost-push checks (LAST_SEQS) that failed (the next tick retries)");
	srv->m.pushes_dropped = sp_metric_counter("sp_connsrv_pushes_dropped_total", "DELIVER hints (the check repairs) and KICKs not sent to peers");
	srv->m.pushes_stale = sp_metric_counter("sp_connsrv_pushes_stale_total", "DELIVER hints for a device no longer here (stale route)");
	srv->m.acks_refused = sp_metric_counter("sp_connsrv_acks_refused_total", "ACKs naming entries beyond what was delivered (ERROR, nothing deleted)");
	srv->m.acks_clamped = sp_metric_counter("sp_connsrv_acks_clamped_total", "ACKs cut to what this session delivered (a re-ACK of AUTH's last_seq)");
	for (int v = CS_ADMIT_UNAUTH; v <= CS_ADMIT_TABLE; v++) {
		char name[96];
		snprintf(name, sizeof(name), "sp_connsrv_prelogin_refused_total{reason=\"%s\"}",
			 cs_admit_verdict_name((cs_admit_verdict)v));
		srv->m.prelogin_refused[v] = sp_metric_counter(name, "connections refused before login, by reason");
	}
	srv->m.prelogin_frame = sp_metric_counter("sp_connsrv_prelogin_refused_total{reason=\"frame_size\"}", "connections refused before login, by reason");
	srv->m.prelogin_timeout = sp_metric_counter("sp_connsrv_prelogin_refused_total{reason=\"login_timeout\"}", "connections refused before login, by reason");
	cs_push_init((int)push_delay_ms);
	srv->m.peer_dropped = sp_metric_counter("sp_connsrv_peer_frames_dropped_total", "frames on the pull socket not acted on");
}

static void
on_sighup(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_server *srv = arg;
	char err[512];
	if (sp_tls_server_reload(srv->tls, srv->cfg.cert, srv->cfg.key, err, sizeof(err)) == SP_OK)
		sp_info("TLS certificate reloaded from %s", srv->cfg.cert);
	else
		sp_error("TLS reload failed, keeping the old certificate: %s", err);
}

/* Tells every client to reconnect elsewhere and stops taking new ones. */
static void
start_drain(cs_server *srv, const char *why)
{
	if (srv->draining)
		return;
	srv->draining = true;
	sp_info("draining (%s): %llu connections", why, (unsigned long long)srv->nconns);
	evconnlistener_disable(srv->listener);
	for (cs_session *s = srv->sessions, *next; s; s = next) {
		next = s->next;
		sp_frame d;
		sp_frame_init(&d, SP_T_DRAIN, 0, false);
		sp_frame_set_str(&d, SP_F_REASON, why);
		cs_session_send(s, &d);
		cs_session_close(s, true);
	}
}

static void
on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_server *srv = arg;
	/* Appends queued, sent or waiting to be sent again are finished (their SENT is
	 * written), and the DRAINs are on the wire, before exit. */
	if ((cs_rpc_inflight(srv->rpc) == 0 && cs_shardcall_waiting(srv->shards) == 0 &&
	     cs_appendq_queued(srv->appendq) == 0 && srv->nflushing == 0) ||
	    sp_time_ms() >= srv->drain_deadline_ms) {
		sp_info("drained; exiting");
		event_base_loopexit(srv->base, NULL);
		return;
	}
	struct timeval tv = {0, 50 * 1000};
	evtimer_add(srv->drain_ev, &tv);
}

static void
on_sigterm(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_server *srv = arg;
	start_drain(srv, "server shutting down");
	srv->drain_deadline_ms = sp_time_ms() + (uint64_t)srv->cfg.drain_timeout_ms;
	on_drain_tick(-1, 0, srv);
}

/* A new map: shard calls in flight to a copy it no longer names go to the new primary, and
 * the router may say this connsrv drains (or no longer). Runs on the loop. */
static struct event *map_ev;

static void
on_map_change(void *arg)
{
	(void)arg;
	event_active(map_ev, EV_READ, 0);
}

static void
on_map_loop(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	cs_server *srv = arg;
	sp_cluster_map *m = sp_cluster_map_get(srv->cluster);
	if (!m)
		return;
	cs_shardcall_map_changed(srv->shards);
	const sp_cluster_member *me = sp_cluster_map_find(m, srv->cfg.name);
	if (me && me->draining && !srv->draining) {
		start_drain(srv, "drained by the router");
	} else if (me && !me->draining && srv->draining && srv->drain_deadline_ms == 0) {
		srv->draining = false;
		evconnlistener_enable(srv->listener);
		sp_info("undrained: accepting connections again");
	}
	sp_cluster_map_put(m);
}

static int
worker_url(const char *base, long long idx, char *out, size_t cap)
{
	const char *colon = strrchr(base, ':');
	if (!colon)
		return SP_ECONFIG;
	long port = strtol(colon + 1, NULL, 10) + idx;
	if (port <= 0 || port > 65535)
		return SP_ECONFIG;
	snprintf(out, cap, "%.*s:%ld", (int)(colon - base), base, port);
	return SP_OK;
}

static int
run_worker(void)
{
	cs_server srv;
	memset(&srv, 0, sizeof(srv));
	srv.cfg = cfg;
	srv.ops = &ops;
	char err[512];
	int rc = SP_OK;

	if (worker_url(cfg.pull, cfg.worker, srv.pull_listen, sizeof(srv.pull_listen)) ||
	    worker_url(cfg.advertise ? cfg.advertise : cfg.pull, cfg.worker, srv.pull_url,
		       sizeof(srv.pull_url))) {
		sp_error("bad --pull or --advertise url");
		return 2;
	}
	/* Every frame the catalogue says connsrv serves has its handler, and no other. */
	SP_ASSERT(cs_session_dispatch_mismatch() < 0);
	register_metrics(&srv);
	evthread_use_pthreads();
	srv.base = event_base_new();
	if (!srv.base)
		return 1;
	srv.tls = sp_tls_server_ctx(cfg.cert, cfg.key, cfg.tls12, err, sizeof(err));
	if (!srv.tls) {
		sp_error("%s", err);
		event_base_free(srv.base);
		return 2;
	}
	if ((rc = cs_rpc_new(srv.base, (int)cfg.rpc_timeout_ms, &srv.rpc)) ||
	    (rc = cs_routes_new(srv.base, cfg.redis, cfg.redis_user, redis_password,
				(int)cfg.route_ttl_s, &srv.routes)) ||
	    (rc = cs_limits_new(srv.base, srv.routes, &limits_cfg, &srv.limits)) ||
	    (rc = cs_devcache_new(&srv, &srv.devcache)) || (rc = cs_presence_new(&srv)) ||
	    (rc = sp_cluster_start(cfg.router, cfg.router_pub, cfg.worker == 0 ? cfg.name : NULL,
				   SP_ROLE_CONNSRV, &srv.cluster)) ||
	    (rc = cs_shardcall_new(srv.base, srv.rpc, srv.cluster, (int)cfg.shard_retry_ms,
				   &srv.shards)) ||
	    (rc = cs_appendq_new(srv.base, srv.shards, &srv.appendq))) {
		sp_error("start-up failed: %s", sp_strerror(rc));
		goto out;
	}
	if (sp_cluster_wait_map(srv.cluster, 30000) != SP_OK)
		sp_warn("no cluster map from %s yet; requests fail until it comes", cfg.router);
	if ((rc = cs_session_start(&srv)) || (rc = cs_peer_start(&srv)) ||
	    (rc = cs_deliver_start(&srv)))
		goto out;
	if ((rc = cs_server_accept_start(&srv))) {
		sp_error("cannot listen on %s: %s", cfg.listen, strerror(errno));
		goto out;
	}
	if (cfg.metrics_port) {
		int port = (int)(cfg.metrics_port + cfg.worker), bound;
		if ((rc = sp_metrics_http_start(srv.base, cfg.metrics_addr, port, &bound, &srv.metrics_http))) {
			sp_error("cannot serve metrics on %s:%d", cfg.metrics_addr, port);
			goto out;
		}
	}
	map_ev = event_new(srv.base, -1, 0, on_map_loop, &srv);
	srv.sig_hup = evsignal_new(srv.base, SIGHUP, on_sighup, &srv);
	srv.sig_term = evsignal_new(srv.base, SIGTERM, on_sigterm, &srv);
	srv.sig_int = evsignal_new(srv.base, SIGINT, on_sigterm, &srv);
	srv.drain_ev = evtimer_new(srv.base, on_drain_tick, &srv);
	if (!map_ev || !srv.sig_hup || !srv.sig_term || !srv.sig_int || !srv.drain_ev) {
		rc = SP_ENOMEM;
		goto out;
	}
	evsignal_add(srv.sig_hup, NULL);
	evsignal_add(srv.sig_term, NULL);
	evsignal_add(srv.sig_int, NULL);
	sp_cluster_on_change(srv.cluster, on_map_change, NULL);
	on_map_loop(-1, 0, &srv);
	sp_info("worker %lld listening on %s (TLS), deliveries on %s", cfg.worker, cfg.listen, srv.pull_url);
	event_base_dispatch(srv.base);
out:
	if (srv.cluster)
		sp_cluster_on_change(srv.cluster, NULL, NULL);
	for (cs_session *s = srv.sessions, *next; s; s = next) {
		next = s->next;
		cs_session_close(s, false);
	}
	for (cs_session *s = srv.closed, *next; s; s = next) {
		next = s->next;
		cs_session_close(s, false); /* ends a flush */
	}
	if (srv.listener)
		evconnlistener_free(srv.listener);
	cs_peer_stop(&srv);
	cs_deliver_stop(&srv);
	cs_rpc_free(srv.rpc); /* runs outstanding callbacks: sessions are released */
	cs_shardcall_free(srv.shards); /* after: calls waiting for a retry are completed */
	cs_appendq_free(srv.appendq); /* after both: appends their callbacks queued are failed */
	cs_routes_free(srv.routes); /* first: ends the limits' calls on its connection */
	cs_limits_free(srv.limits);
	sp_cluster_stop(srv.cluster);
	cs_devcache_free(srv.devcache);
	cs_presence_free(&srv); /* after the Redis and device-list callbacks it may get */
	cs_session_stop(&srv);
	if (srv.metrics_http)
		evhttp_free(srv.metrics_http);
	struct event *evs[] = {map_ev, srv.sig_hup, srv.sig_term, srv.sig_int, srv.drain_ev};
	for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
		if (evs[i])
			event_free(evs[i]);
	SSL_CTX_free(srv.tls);
	event_base_free(srv.base);
	return rc ? 1 : 0;
}

static volatile sig_atomic_t got_signal;

static void
forward_signal(int sig)
{
	got_signal = sig;
}

/* Master of several workers: forks them, forwards TERM/INT/HUP, exits when all have. */
static int
run_master(void)
{
	pid_t pids[64];
	int n = (int)cfg.workers;
	signal(SIGTERM, forward_signal);
	signal(SIGINT, forward_signal);
	signal(SIGHUP, forward_signal);
	for (int i = 0; i < n; i++) {
		pid_t p = fork();
		if (p < 0) {
			sp_error("fork: %s", strerror(errno));
			n = i;
			got_signal = SIGTERM;
			break;
		}
		if (p == 0) {
			signal(SIGTERM, SIG_DFL);
			signal(SIGINT, SIG_DFL);
			signal(SIGHUP, SIG_DFL);
			cfg.worker = i;
			_exit(run_worker());
		}
		pids[i] = p;
	}
	int alive = n, status, rc = 0;
	while (alive > 0) {
		pid_t p = waitpid(-1, &status, 0);
		if (p < 0 && errno == EINTR) {
			int sig = got_signal;
			got_signal = 0;
			for (int i = 0; sig && i < n; i++)
				if (pids[i] > 0)
					kill(pids[i], sig);
			continue;
		}
		if (p < 0)
			break;
		for (int i = 0; i < n; i++) {
			if (pids[i] == p) {
				pids[i] = -1;
				alive--;
				if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
					sp_error("worker %d (pid %d) ended abnormally", i, (int)p);
					rc = 1;
				}
			}
		}
	}
	return rc;
}

int
main(int argc, char **argv)
{
	char err[512];
	sp_log_init("connsrv", SP_LOG_INFO, false);
	int rc = sp_config_load("connsrv", "Sealpost connection server: client TLS edge.", opts, argc, argv,
				NULL, 0, NULL, err, sizeof(err));
	if (rc == SP_CONFIG_HELP)
		return 0;
	if (rc) {
		fprintf(stderr, "connsrv: %s\n", err);
		return 2;
	}
	int level = sp_log_level_parse(log_level);
	if (level < 0 || !cfg.cert || !cfg.key) {
		fprintf(stderr, "connsrv: %s\n", level < 0 ? "--log-level must be debug, info, warn or error"
							   : "--cert and --key are required");
		sp_config_free(opts);
		return 2;
	}
	sp_log_init("connsrv", (sp_log_level)level, log_json);
	if (sodium_init() < 0)
		return 1;
	size_t plen;
	if (cfg.redis_user && !cfg.redis_password_file) {
		fprintf(stderr, "connsrv: --redis-user needs --redis-password-file\n");
		sp_config_free(opts);
		return 2;
	}
	if (cfg.redis_password_file &&
	    sp_secret_read("redis-password-file", cfg.redis_password_file, redis_password,
			   sizeof(redis_password), &plen, err, sizeof(err))) {
		fprintf(stderr, "connsrv: %s\n", err);
		sp_config_free(opts);
		return 2;
	}
	for (int k = 0; k < CS_LIM__N; k++)
		for (int sc = 0; sc < CS_SCOPE__N; sc++)
			if (cs_limit_parse(lim_spec[k][sc], &limits_cfg.rate[k][sc]) != SP_OK) {
				fprintf(stderr, "connsrv: bad limit for %s: '%s' (want <n>/<s|min|h|day>[,<burst>] or off)\n",
					cs_limit_kind_name((cs_limit_kind)k), lim_spec[k][sc]);
				sp_config_free(opts);
				return 2;
			}
	limits_cfg.max_entries = (size_t)lim_table;
	if (!cfg.redis_password_file)
		sp_warn("Redis without a password (--redis-password-file): anyone who reaches it can "
			"read and change routes");
	signal(SIGPIPE, SIG_IGN);
	/* Before the fork: the workers inherit the identity and the check. */
	const char *urls[] = {cfg.pull, cfg.advertise, cfg.router, cfg.router_pub};
	if ((rc = sp_internal_start(&internal, urls, 4))) {
		sp_config_free(opts);
		return rc == SP_ECONFIG ? 2 : 1;
	}
	rc = cfg.workers > 1 ? run_master() : run_worker();
	sodium_memzero(redis_password, sizeof(redis_password));
	sp_internal_stop();
	sp_config_free(opts);
	return rc;
}
