/* keysrv: accounts, devices, prekeys and groups over NNG req/rep (see docs/KEYSRV.md). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keysrv/repl.h"
#include "keysrv/server.h"
#include "repl/opts.h"
#include "sp_cluster.h"
#include "sp_config.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_metrics.h"
#include "sp_nng.h"
#include "sp_shutdown.h"
#include "sp_time.h"

#define SWEEP_INTERVAL_S 60
#define SWEEP_MAX 10000

static long long stale_read_ms;

static int
gate(void *arg, bool stale_ok, char *primary, size_t cap)
{
	return keys_repl_gate(arg, stale_ok ? (uint64_t)stale_read_ms : 0, primary, cap);
}

static const char summary[] =
    "Sealpost key server: accounts, devices, prekeys and groups (NNG req/rep).";

int
main(int argc, char **argv)
{
	char *data_dir, *listen, *otp_sender, *otp_dir, *webhook_url, *metrics_addr, *log_level;
	char *name, *router, *router_pub, *push_listen, *push_client_ca;
	size_t map_size;
	long long workers, otp_ttl, otp_attempts, link_ttl, low_water, metrics_port, webhook_timeout;
	long long rp_burst, rp_rate, rs_burst, rs_rate, rb_burst, rb_rate, rl_burst, rl_rate, rl_keys;
	long long ph_sends, ph_verify, ph_pin, webhook_retries, webhook_backoff;
	char *webhook_ca;
	bool log_json, production, webhook_insecure;
	const sp_config_opt tier_opts[] = {
		{"data-dir", SP_CT_STR, &data_dir, "keysrv-data", "LMDB directory (created if missing)", 0, 0},
		{"listen", SP_CT_STR, &listen, "tcp://127.0.0.1:7301", "NNG URL to serve requests on", 0, 0},
		{"push-listen", SP_CT_STR, &push_listen, NULL,
		    "NNG URL of the push listener: PUSH_TOKEN_GET and PUSH_DROP only, for pushsrv "
		    "(docs/PUSH.md; unset: none)", 0, 0},
		{"push-client-ca", SP_CT_STR, &push_client_ca, NULL,
		    "PEM bundle of the role CAs that may connect to --push-listen (the push role's; "
		    "required with a tls+tcp:// --push-listen)", 0, 0},
		{"map-size", SP_CT_SIZE, &map_size, "1G", "LMDB map size (the store's maximum size)", 1 << 20,
		    1LL << 40},
		{"workers", SP_CT_INT, &workers, "4", "request worker threads", 1, 64},
		{"otp-sender", SP_CT_STR, &otp_sender, "dev", "how codes are sent: dev or webhook", 0, 0},
		{"otp-dir", SP_CT_STR, &otp_dir, NULL,
		    "dev sender: directory of <phone> code files [default: DATA-DIR/otp]", 0, 0},
		{"otp-webhook-url", SP_CT_STR, &webhook_url, NULL,
		    "webhook sender: https:// URL that receives {\"phone\",\"code\"} as JSON", 0, 0},
		{"otp-webhook-ca", SP_CT_STR, &webhook_ca, NULL,
		    "webhook sender: PEM CA file the receiver's certificate must chain to [default: system CAs]",
		    0, 0},
		{"otp-webhook-insecure-http", SP_CT_BOOL, &webhook_insecure, NULL,
		    "webhook sender: also accept an http:// URL (codes in clear text; tests only)", 0, 0},
		{"otp-webhook-timeout-ms", SP_CT_INT, &webhook_timeout, "5000", "webhook request timeout",
		    100, 60000},
		{"otp-webhook-retries", SP_CT_INT, &webhook_retries, "3",
		    "webhook sender: tries after the first on no answer, 5xx or 429", 0, 10},
		{"otp-webhook-backoff-ms", SP_CT_INT, &webhook_backoff, "500",
		    "webhook sender: first retry delay, doubled each retry", 10, 60000},
		{"production", SP_CT_BOOL, &production, NULL,
		    "refuse settings meant for development only (the dev OTP sender)", 0, 0},
		{"otp-ttl", SP_CT_INT, &otp_ttl, "600", "seconds a registration code stays valid", 1, 86400},
		{"otp-attempts", SP_CT_INT, &otp_attempts, "5", "wrong guesses allowed per code", 1, 20},
		{"phone-max-codes", SP_CT_INT, &ph_sends, "10",
		    "codes sent (REGISTER) per phone number per 24 hours, kept across restarts", 1, 1000000},
		{"phone-max-wrong-codes", SP_CT_INT, &ph_verify, "10",
		    "wrong codes (VERIFY) per phone number per 24 hours, across codes and restarts", 1,
		    1000000},
		{"phone-max-wrong-pins", SP_CT_INT, &ph_pin, "5",
		    "wrong registration-lock PINs per phone number per 24 hours", 1, 1000000},
		{"link-ttl", SP_CT_INT, &link_ttl, "600", "seconds a device-link code stays valid", 1, 86400},
		{"prekey-low-water", SP_CT_INT, &low_water, "20",
		    "devices with fewer one-time prekeys are told to refill", 0, 1000},
		{"rate-phone-burst", SP_CT_INT, &rp_burst, "3", "REGISTER per phone: burst", 1, 1000000},
		{"rate-phone-per-min", SP_CT_INT, &rp_rate, "1", "REGISTER per phone: refill per minute", 1,
		    1000000},
		{"rate-source-burst", SP_CT_INT, &rs_burst, "30",
		    "unauthenticated requests per client address: burst", 1, 1000000},
		{"rate-source-per-min", SP_CT_INT, &rs_rate, "30",
		    "unauthenticated requests per client address: refill per minute", 1, 1000000},
		{"rate-bundle-burst", SP_CT_INT, &rb_burst, "300", "BUNDLE_GET per user: burst", 1, 1000000},
		{"rate-bundle-per-min", SP_CT_INT, &rb_rate, "600", "BUNDLE_GET per user: refill per minute",
		    1, 1000000},
		{"rate-link-burst", SP_CT_INT, &rl_burst, "10", "LINK_LOOKUP/CONFIRM per user: burst", 1,
		    1000000},
		{"rate-link-per-min", SP_CT_INT, &rl_rate, "10",
		    "LINK_LOOKUP/CONFIRM per user: refill per minute", 1, 1000000},
		{"stale-read-ms", SP_CT_INT, &stale_read_ms, "10000",
		    "replicated: a replica serves AUTH_KEY_GET and DEVICES_GET while its store holds what "
		    "the primary had acknowledged this many ms ago (the revocation bound; 0: primary only)",
		    0, 600000},
		{"rate-max-keys", SP_CT_INT, &rl_keys, "100000", "rate-limit buckets kept per limit", 16,
		    10000000},
		{"metrics-addr", SP_CT_STR, &metrics_addr, "127.0.0.1", "address of the /metrics endpoint", 0,
		    0},
		{"metrics-port", SP_CT_INT, &metrics_port, "0", "port of /metrics (0: any free port, -1: off)",
		    -1, 65535},
		{"name", SP_CT_STR, &name, "keysrv", "cluster member name (as in the router's cluster file)",
		    0, 0},
		{"router", SP_CT_STR, &router, NULL,
		    "router REP url(s), comma-separated; when set, keysrv heartbeats each as a cluster member", 0, 0},
		{"router-pub", SP_CT_STR, &router_pub, NULL, "router PUB url(s) (with --router)", 0, 0},
		{"log-level", SP_CT_STR, &log_level, "info", "debug, info, warn or error", 0, 0},
		{"log-json", SP_CT_BOOL, &log_json, NULL, "log JSON lines", 0, 0},
		{NULL, 0, NULL, NULL, NULL, 0, 0},
	};
	char err[512], otp_default[4096];
	keys_ctx *ctx = NULL;
	keys_server *srv = NULL, *push_srv = NULL;
	sp_cluster *cluster = NULL;
	int status = 1, rc;

	sp_log_init("keysrv", SP_LOG_INFO, false);
	repl_opts ro = { 0 };
	keys_repl *repl = NULL;
	sp_config_opt *opts = repl_opts_table(tier_opts, &ro);
	if (!opts) {
		fprintf(stderr, "keysrv: out of memory\n");
		return 1;
	}
	rc = sp_config_load("keysrv", summary, opts, argc, argv, NULL, 0, NULL, err, sizeof(err));
	if (rc == SP_CONFIG_HELP) {
		sp_config_free(opts);
		free(opts);
		return 0;
	}
	if (rc) {
		fprintf(stderr, "keysrv: %s\n", err);
		sp_config_free(opts);
		free(opts);
		return 2;
	}
	int level = sp_log_level_parse(log_level);
	if (level < 0) {
		fprintf(stderr, "keysrv: log-level: expected debug, info, warn or error\n");
		sp_config_free(opts);
		free(opts);
		return 2;
	}
	sp_log_init("keysrv", (sp_log_level)level, log_json);
	/* The dev sender logs codes and writes them to files, and an insecure webhook posts
	 * them in clear text: never in production. */
	if (production && (strcmp(otp_sender, "dev") == 0 || webhook_insecure)) {
		sp_error("keysrv: --production refuses %s; use otp-sender=webhook with an https:// "
			 "otp-webhook-url",
		    webhook_insecure ? "otp-webhook-insecure-http" : "otp-sender=dev (it logs the codes)");
		sp_config_free(opts);
		free(opts);
		return 2;
	}
	snprintf(otp_default, sizeof(otp_default), "%s/otp", data_dir);

	/* Signals are taken synchronously by the main thread; every other thread inherits
	 * the blocked mask. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	keys_ctx_cfg cfg = {
		.data_dir = data_dir,
		.map_size = map_size,
		.otp = {otp_sender, otp_dir ? otp_dir : otp_default, webhook_url, (int)webhook_timeout, 1024,
		    webhook_ca, webhook_insecure, (unsigned)webhook_retries, (unsigned)webhook_backoff},
		.keys = {(uint64_t)otp_ttl * 1000, (unsigned)otp_attempts, (uint64_t)link_ttl * 1000,
		    (unsigned)low_water, (unsigned)ph_sends, (unsigned)ph_verify, (unsigned)ph_pin, 0, 0},
		.rate_phone = {(unsigned)rp_burst, (unsigned)rp_rate},
		.rate_source = {(unsigned)rs_burst, (unsigned)rs_rate},
		.rate_bundle = {(unsigned)rb_burst, (unsigned)rb_rate},
		.rate_link = {(unsigned)rl_burst, (unsigned)rl_rate},
		.rate_max_keys = (size_t)rl_keys,
		.replicated = repl_opts_on(&ro),
	};
	repl_node_config rcfg;
	repl_snap_boot_result boot = { 0 };
	/* NULL-terminated: router (and router-pub) may be unset. */
	const char *urls[] = { listen, push_listen ? push_listen : listen, router, router_pub, NULL };
	/* The push listener must not fall back to --internal-client-ca: that is what lets
	 * connsrv in, and pushsrv's role must not get past PUSH_TOKEN_GET/PUSH_DROP. */
	if (push_listen && sp_nng_url_tls(push_listen) && !push_client_ca) {
		sp_error("keysrv: a tls+tcp:// --push-listen needs --push-client-ca (the push role's CA)");
		sp_config_free(opts);
		free(opts);
		return 2;
	}
	if ((rc = repl_opts_start(&ro, data_dir, name, urls, &rcfg))
	    || (repl_opts_on(&ro)
		&& (rc = repl_opts_bootstrap(&ro, data_dir, KEYS_REPL_GROUP, name, &keys_repl_files,
			&boot))))
		goto out;
	if ((rc = keys_ctx_open(&ctx, &cfg))) {
		sp_error("keysrv: start-up failed: %s", sp_strerror(rc));
		goto out;
	}
	if (repl_opts_on(&ro)) {
		rcfg.boot = &boot;
		if ((rc = keys_repl_open(&repl, &rcfg, ctx->store)))
			goto out;
		ctx->gate = gate;
		ctx->gate_arg = repl;
		if ((rc = keys_repl_start(repl)))
			goto out;
	}
	int mport = -1;
	if (metrics_port >= 0 &&
	    (rc = sp_metrics_http_thread(metrics_addr, (int)metrics_port, &mport))) {
		sp_error("keysrv: metrics on %s:%lld: %s", metrics_addr, metrics_port, sp_strerror(rc));
		goto out;
	}
	if ((rc = keys_server_start(&srv, ctx, listen, (unsigned)workers)))
		goto out;
	if (push_listen && (rc = keys_server_start_push(&push_srv, ctx, push_listen, push_client_ca, 1)))
		goto out;
	/* Optional: keysrv serves without the router; heartbeats only make its health
	 * visible in the cluster map. */
	if (router && *router) {
		if (!router_pub || !*router_pub) {
			sp_error("keysrv: --router needs --router-pub");
			goto out;
		}
		if ((rc = sp_cluster_start(router, router_pub, name, SP_ROLE_KEYSRV, &cluster))) {
			sp_error("keysrv: cluster membership: %s", sp_strerror(rc));
			goto out;
		}
	}
	sp_info("keysrv ready listen=%s push-listen=%s data-dir=%s otp-sender=%s%s metrics-port=%d "
		"workers=%lld",
	    listen, push_listen ? push_listen : "-", data_dir, otp_sender,
	    production ? " production" : "", mport, workers);

	uint64_t next_sweep = sp_mono_ns() / 1000000000ULL;
	for (;;) {
		struct timespec ts = {1, 0};
		int sig = sigtimedwait(&sigs, NULL, &ts);
		if (sig == SIGTERM || sig == SIGINT) {
			sp_info("keysrv: signal %d, shutting down", sig);
			/* Ended on our terms before a supervisor's SIGKILL: a restart to
			 * install a snapshot still happens. */
			if (sp_shutdown_bound(SP_SHUTDOWN_MAX_MS, 0,
				keys_repl_restart_wanted(repl) ? argv : NULL))
				sp_warn("keysrv: no bound on the teardown");
			break;
		}
		uint64_t now = sp_mono_ns() / 1000000000ULL;
		if (now >= next_sweep && (!repl || keys_repl_gate(repl, 0, NULL, 0) == SP_OK)) {
			unsigned n = 0;
			if (keys_store_sweep(ctx->store, sp_time_ms(), SWEEP_MAX, &n) == SP_OK && n)
				sp_debug("keysrv: swept %u expired codes", n);
			next_sweep = now + SWEEP_INTERVAL_S;
		}
	}
	status = 0;
out:
	sp_cluster_stop(cluster);
	/* A clean stop hands the leader key over at once. */
	keys_repl_stop(repl, true);
	keys_server_stop(push_srv);
	keys_server_stop(srv);
	bool again = keys_repl_restart_wanted(repl);
	keys_repl_free(repl);
	keys_ctx_close(ctx);
	sp_nng_tls_fini();
	repl_opts_fini(&ro);
	sp_config_free(opts);
	free(opts);
	if (again) {
		/* Same pid and arguments; the start-up installs the snapshot it is marked for. */
		sp_info("keysrv: restarting to install a snapshot");
		execv("/proc/self/exe", argv);
		sp_error("keysrv: exec /proc/self/exe: %s", strerror(errno));
		return 75;
	}
	return status;
}
