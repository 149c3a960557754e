/*
 * pushsrv: sends push wake-ups (docs/PUSH.md). Pops the wake-ups connsrv made due in Redis
 * (several pushsrv may share the set: the pop is atomic), and for each one not cancelled
 * by a login asks the device's platform gateway, over https, to wake the device. Follows
 * the cluster map as an observer (no heartbeat) to find the key store primary.
 * One thread, one wake-up at a time.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "pushsrv/sender.h"
#include "sp_cluster.h"
#include "sp_config.h"
#include "sp_error.h"
#include "sp_internal.h"
#include "sp_log.h"
#include "sp_metrics.h"
#include "sp_secret.h"
#include "sp_time.h"

#define BATCH_MAX 256

static char *router, *router_pub, *redis, *redis_user, *redis_password_file, *fcm_url,
	*apns_url, *keysrv_push, *gateway_ca, *gateway_token_file, *metrics_addr, *log_level;
static long long period_ms, retry_base_ms, retry_max_ms, attempts, poll_ms, batch,
	gateway_timeout_ms, keysrv_timeout_ms, metrics_port;
static bool log_json;
static sp_internal_opts internal;

static const sp_config_opt opts[] = {
	{"router", SP_CT_STR, &router, "tcp://127.0.0.1:7201", "router REP url(s), comma-separated (the map is polled as an observer)", 0, 0},
	{"router-pub", SP_CT_STR, &router_pub, "tcp://127.0.0.1:7202", "router PUB url(s), comma-separated", 0, 0},
	{"redis", SP_CT_STR, &redis, "127.0.0.1:6379", "Redis host:port (the due set connsrv writes)", 0, 0},
	{"redis-user", SP_CT_STR, &redis_user, NULL, "Redis ACL user (with --redis-password-file)", 0, 0},
	{"redis-password-file", SP_CT_STR, &redis_password_file, NULL, "file holding the Redis password (mode 0600)", 0, 0},
	{"fcm-url", SP_CT_STR, &fcm_url, NULL, "https URL wake-ups of fcm tokens are POSTed to (FCM v1 shape; unset: fcm tokens get none)", 0, 0},
	{"apns-url", SP_CT_STR, &apns_url, NULL, "https base URL of the APNs-shaped gateway (POST <url>/3/device/<token>; unset: apns tokens get none)", 0, 0},
	{"gateway-ca", SP_CT_STR, &gateway_ca, NULL, "PEM bundle the gateways' certificates must chain to (default: the system's CAs)", 0, 0},
	{"gateway-token-file", SP_CT_STR, &gateway_token_file, NULL, "file (mode 0600) holding a bearer token sent to the gateways", 0, 0},
	{"gateway-timeout", SP_CT_INT, &gateway_timeout_ms, "10000", "ms one gateway POST may take", 100, 600000},
	{"period", SP_CT_INT, &period_ms, "60000", "ms: at most one wake-up per device per period", 1000, 86400000},
	{"retry-base", SP_CT_INT, &retry_base_ms, "1000", "ms before the first retry of a wake-up (doubling)", 10, 3600000},
	{"retry-max", SP_CT_INT, &retry_max_ms, "300000", "ms: the longest wait between retries", 10, 86400000},
	{"attempts", SP_CT_INT, &attempts, "6", "tries of one wake-up before it is given up", 1, 100},
	{"poll", SP_CT_INT, &poll_ms, "500", "ms between looks at the due set when nothing was due", 10, 60000},
	{"batch", SP_CT_INT, &batch, "64", "due wake-ups popped at once", 1, BATCH_MAX},
	{"keysrv-push", SP_CT_STR, &keysrv_push, NULL, "NAME=URL[,...]: each key store copy's push listener (keysrv --push-listen), by member name; unset: dial the copies' member addresses (docs/PUSH.md)", 0, 0},
	{"keysrv-timeout", SP_CT_INT, &keysrv_timeout_ms, "3000", "ms a key store call may take", 100, 600000},
	{"metrics-addr", SP_CT_STR, &metrics_addr, "127.0.0.1", "metrics HTTP address", 0, 0},
	{"metrics-port", SP_CT_INT, &metrics_port, "0", "metrics HTTP port (0: any free port, -1: off)", -1, 65535},
	{"log-level", SP_CT_STR, &log_level, "info", "debug|info|warn|error", 0, 0},
	{"log-json", SP_CT_BOOL, &log_json, "false", "log JSON lines", 0, 0},
	SP_INTERNAL_OPTS(&internal),
	{NULL, 0, NULL, NULL, NULL, 0, 0},
};

static bool
https_url(const char *u)
{
	return u == NULL || strncmp(u, "https://", 8) == 0;
}

/* Reads a 0600 secret file into buf; 0 or 2 (a message printed). */
static int
secret(const char *what, const char *path, char *buf, size_t cap)
{
	char err[512];
	size_t len;
	if (path && sp_secret_read(what, path, buf, cap, &len, err, sizeof(err))) {
		fprintf(stderr, "pushsrv: %s\n", err);
		return 2;
	}
	return 0;
}

/* Whether SIGTERM or SIGINT came, waiting up to `ms` for one. */
static bool
stop_signal(const sigset_t *sigs, long long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	int sig = sigtimedwait(sigs, NULL, &ts);
	if (sig == SIGTERM || sig == SIGINT) {
		sp_info("pushsrv: signal %d, shutting down", sig);
		return true;
	}
	return false;
}

static int
run(const sigset_t *sigs, char *redis_pw, char *bearer)
{
	sp_cluster *cluster = NULL;
	ps_queue *q = NULL;
	ps_keys *k = NULL;
	ps_http *h = NULL;
	ps_sender *s = NULL;
	int rc, mport = -1;
	ps_sender_cfg cfg = {
		.url = {fcm_url, apns_url},
		.period_ms = (int)period_ms,
		.retry_base_ms = (int)retry_base_ms,
		.retry_max_ms = (int)retry_max_ms,
		.attempts = (int)attempts,
	};

	if ((rc = ps_queue_new(redis, redis_user, redis_pw, 2000, &q)) ||
	    (rc = ps_http_new(gateway_ca, bearer[0] ? bearer : NULL, (int)gateway_timeout_ms, &h)))
		goto out;
	if ((rc = sp_cluster_start(router, router_pub, NULL, 0, &cluster)) ||
	    (rc = ps_keys_new(cluster, keysrv_push, (int)keysrv_timeout_ms, &k)) ||
	    (rc = ps_sender_new(&cfg, q, k, h, &s)))
		goto out;
	if (metrics_port >= 0 &&
	    (rc = sp_metrics_http_thread(metrics_addr, (int)metrics_port, &mport)))
		goto out;
	sp_metric *m_bad = sp_metric_counter("pushsrv_bad_entries_total", "due-set members that were not a device id (removed)");
	sp_info("pushsrv ready fcm=%s apns=%s period=%lldms metrics-port=%d", fcm_url ? "on" : "off",
		apns_url ? "on" : "off", period_ms, mport);
	for (bool stop = false; !stop;) {
		uint64_t devices[BATCH_MAX];
		size_t n = 0, bad = 0, i;
		int prc = ps_queue_pop(q, sp_time_ms(), devices, (size_t)batch, &n, &bad);
		if (bad) {
			sp_metric_add(m_bad, bad);
			sp_warn_rl("%zu entries of the due set were not device ids (removed)", bad);
		}
		for (i = 0; i < n && !(stop = stop_signal(sigs, 0)); i++)
			if (ps_sender_handle(s, devices[i], sp_time_ms()) == SP_EREDIS)
				prc = SP_EREDIS;
		/* Popped and not handled (a signal came): due again at once, for another copy. */
		for (; i < n; i++)
			ps_queue_schedule(q, devices[i], sp_time_ms());
		/* Busy: pop again at once; idle or Redis down: wait (and look for a signal). */
		if (!stop)
			stop = stop_signal(sigs, prc ? 1000 : n < (size_t)batch ? poll_ms : 0);
	}
	rc = SP_OK;
out:
	if (rc)
		sp_error("pushsrv: %s", sp_strerror(rc));
	ps_sender_free(s);
	ps_keys_free(k);
	sp_cluster_stop(cluster);
	ps_http_free(h);
	ps_queue_free(q);
	return rc ? 1 : 0;
}

int
main(int argc, char **argv)
{
	char err[512], redis_pw[256] = "", bearer[4096] = "";
	sp_log_init("pushsrv", SP_LOG_INFO, false);
	int rc = sp_config_load("pushsrv", "Sealpost push wake-up sender.", opts, argc, argv, NULL, 0,
				NULL, err, sizeof(err));
	if (rc == SP_CONFIG_HELP)
		return 0;
	if (rc) {
		fprintf(stderr, "pushsrv: %s\n", err);
		return 2;
	}
	int level = sp_log_level_parse(log_level);
	const char *bad = level < 0 ? "--log-level must be debug, info, warn or error"
		: !https_url(fcm_url) || !https_url(apns_url) ? "gateway URLs must be https://"
		: redis_user && !redis_password_file ? "--redis-user needs --redis-password-file"
		: retry_max_ms < retry_base_ms ? "--retry-max must be at least --retry-base"
		: NULL;
	if (bad) {
		fprintf(stderr, "pushsrv: %s\n", bad);
		sp_config_free(opts);
		return 2;
	}
	sp_log_init("pushsrv", (sp_log_level)level, log_json);
	if (sodium_init() < 0 ||
	    (rc = secret("redis-password-file", redis_password_file, redis_pw, sizeof(redis_pw))) ||
	    (rc = secret("gateway-token-file", gateway_token_file, bearer, sizeof(bearer)))) {
		sp_config_free(opts);
		return rc ? rc : 1;
	}
	if (!fcm_url && !apns_url)
		sp_warn("pushsrv: neither --fcm-url nor --apns-url: push is off (due wake-ups are "
			"counted as no_token and dropped)");
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	const char *urls[] = {router, router_pub};
	if ((rc = sp_internal_start(&internal, urls, 2))) {
		sp_config_free(opts);
		return rc == SP_ECONFIG ? 2 : 1;
	}
	rc = run(&sigs, redis_pw, bearer);
	sodium_memzero(redis_pw, sizeof(redis_pw));
	sodium_memzero(bearer, sizeof(bearer));
	sp_internal_stop();
	sp_config_free(opts);
	return rc;
}
