/*
 * spbench: drives a running Sealpost cluster through the real client protocol and
 * reports throughput, latency, memory per connection and loss.
 *
 *   bin/spbench SCENARIO [options] [--json]
 *   SCENARIO: connections | throughput | latency | storm | group
 *
 * The cluster comes from SEALPOST_ROUTER (router HTTP host:port; /map lists the connsrvs)
 * and SEALPOST_CA, as for the CLI. See docs/BENCH.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <jansson.h>
#include <signal.h>

#include "bench/sb.h"
#include "client/spc_conn.h"
#include "sp_config.h"
#include "sp_error.h"

sb_opts sb_o;

static char *o_router, *o_ca, *o_accounts, *o_group_sizes, *o_inbox_metrics, *o_connsrv_pids;
static bool o_json, o_crypto, o_quiet;
static long long o_procs, o_conns, o_hold, o_conc, o_sources, o_pairs, o_window, o_duration, o_rate,
	o_size, o_users, o_queued, o_storm_senders, o_group_msgs, o_timeout;

static const sp_config_opt opts[] = {
	{"router", SP_CT_STR, &o_router, NULL, "router HTTP host:port, or several comma-separated (the first that answers; default $SEALPOST_ROUTER)", 0, 0},
	{"ca", SP_CT_STR, &o_ca, NULL, "CA file the connsrv certificates chain to (default $SEALPOST_CA)", 0, 0},
	{"accounts", SP_CT_STR, &o_accounts, NULL,
	 "account cache (default $SEALPOST_DEVCLUSTER/spbench-accounts.txt)", 0, 0},
	{"json", SP_CT_BOOL, &o_json, "false", "print one JSON object with the results on stdout", 0, 0},
	{"crypto", SP_CT_BOOL, &o_crypto, "false",
	 "throughput/latency: Signal-protocol encrypt/decrypt every message (client library)", 0, 0},
	{"quiet", SP_CT_BOOL, &o_quiet, "false", "no progress lines", 0, 0},
	{"procs", SP_CT_INT, &o_procs, "0", "load generator processes (0: per scenario)", 0, 64},
	{"conns", SP_CT_INT, &o_conns, "1000", "connections: idle logged-in connections to open", 1, 2000000},
	{"hold", SP_CT_INT, &o_hold, "10", "connections: seconds to hold them once all are up", 0, 3600},
	{"concurrency", SP_CT_INT, &o_conc, "256", "handshakes+logins in flight per process", 1, 100000},
	{"sources", SP_CT_INT, &o_sources, "32", "127.0.0.x source addresses (0: let the kernel pick)", 0, 240},
	{"pairs", SP_CT_INT, &o_pairs, "64", "throughput/latency: sender/recipient pairs", 1, 100000},
	{"window", SP_CT_INT, &o_window, "16", "throughput/group: messages in flight per sender", 1, 4096},
	{"duration", SP_CT_INT, &o_duration, "10", "throughput/latency/group: seconds of measured load", 1, 3600},
	{"rate", SP_CT_INT, &o_rate, "1000", "latency: messages per second, all pairs together", 1, 10000000},
	{"size", SP_CT_INT, &o_size, "128", "payload bytes", SB_PAYLOAD_MIN, 60000},
	{"users", SP_CT_INT, &o_users, "1000", "storm: recipient devices", 1, 1000000},
	{"queued", SP_CT_INT, &o_queued, "50", "storm: messages queued for each device", 1, 10000},
	{"storm-senders", SP_CT_INT, &o_storm_senders, "32", "storm: devices that queue the messages", 1, 10000},
	{"group-sizes", SP_CT_STR, &o_group_sizes, "10,256,1024", "group: member counts (besides the sender)", 0, 0},
	{"group-msgs", SP_CT_INT, &o_group_msgs, "100", "group: messages per group size in the storage phase", 1, 1000000},
	{"timeout", SP_CT_INT, &o_timeout, "900", "seconds the whole run may take", 10, 86400},
	{"inbox-metrics", SP_CT_STR, &o_inbox_metrics, NULL,
	 "shard metrics host:port,... (default: the dev cluster's, from $SEALPOST_REDIS)", 0, 0},
	{"connsrv-pids", SP_CT_STR, &o_connsrv_pids, NULL,
	 "connsrv pid,... for RSS (default: $SEALPOST_DEVCLUSTER/pids)", 0, 0},
	{NULL, 0, NULL, NULL, NULL, 0, 0},
};

static const struct {
	const char *name;
	int (*run)(sb_result *r);
	int procs; /* default process count */
} scenarios[] = {
	{"connections", sb_scen_connections, 0},
	{"throughput", sb_scen_throughput, 1},
	{"latency", sb_scen_latency, 1},
	{"storm", sb_scen_storm, 1},
	{"group", sb_scen_group, 1},
};

void
sb_result_extra(sb_result *r, const char *name, double v)
{
	if (r->nextra < 16) {
		r->extra_names[r->nextra] = name;
		r->extra[r->nextra++] = v;
	}
}

static json_t *
result_json(const sb_result *r)
{
	const sb_stats *s = &r->st;
	json_t *j = json_object();
	json_object_set_new(j, "scenario", json_string(r->scenario));
	json_t *p = json_object();
	json_object_set_new(p, "procs", json_integer(sb_o.procs));
	json_object_set_new(p, "size", json_integer(sb_o.size));
	json_object_set_new(p, "crypto", json_boolean(sb_o.crypto));
	if (!strcmp(r->scenario, "connections")) {
		json_object_set_new(p, "conns", json_integer(sb_o.conns));
		json_object_set_new(p, "hold_s", json_integer(sb_o.hold_s));
	} else if (!strcmp(r->scenario, "throughput") || !strcmp(r->scenario, "latency")) {
		json_object_set_new(p, "pairs", json_integer(sb_o.pairs));
		json_object_set_new(p, "duration_s", json_real(sb_o.duration_s));
		if (!strcmp(r->scenario, "latency"))
			json_object_set_new(p, "rate", json_real(sb_o.rate));
		else
			json_object_set_new(p, "window", json_integer(sb_o.window));
	} else if (!strcmp(r->scenario, "storm")) {
		json_object_set_new(p, "users", json_integer(sb_o.users));
		json_object_set_new(p, "queued", json_integer(sb_o.queued));
	} else if (!strcmp(r->scenario, "group")) {
		json_object_set_new(p, "group_sizes", json_string(sb_o.group_sizes));
		json_object_set_new(p, "group_msgs", json_integer(sb_o.group_msgs));
	}
	json_object_set_new(j, "params", p);
	json_object_set_new(j, "elapsed_s", json_real(r->elapsed_s));
	json_object_set_new(j, "connections", json_integer((json_int_t)r->connections));
	json_object_set_new(j, "connect_failures", json_integer((json_int_t)(s->conn_fail + s->login_fail)));
	json_object_set_new(j, "closed_by_server", json_integer((json_int_t)s->closed));
	json_object_set_new(j, "sent", json_integer((json_int_t)s->sent));
	json_object_set_new(j, "sent_ok", json_integer((json_int_t)s->sent_ok));
	json_object_set_new(j, "delivered", json_integer((json_int_t)s->delivered));
	json_object_set_new(j, "receipts", json_integer((json_int_t)s->receipts));
	json_object_set_new(j, "sent_per_s", json_real(r->sent_per_s));
	json_object_set_new(j, "delivered_per_s", json_real(r->delivered_per_s));
	/* p*_ms: send -> recipient receipt (scheduled send time for latency); sent_p*_ms: send -> SENT. */
	const sb_hist *h = s->lat_recv.n ? &s->lat_recv : &s->lat_login;
	json_object_set_new(j, "latency_of", json_string(s->lat_recv.n ? "send_to_receipt" : "login"));
	json_object_set_new(j, "p50_ms", json_real(sb_hist_pct_ms(h, 50)));
	json_object_set_new(j, "p90_ms", json_real(sb_hist_pct_ms(h, 90)));
	json_object_set_new(j, "p99_ms", json_real(sb_hist_pct_ms(h, 99)));
	json_object_set_new(j, "p999_ms", json_real(sb_hist_pct_ms(h, 99.9)));
	json_object_set_new(j, "max_ms", json_real((double)h->max_us / 1000.0));
	if (s->lat_sent.n) {
		json_object_set_new(j, "sent_p50_ms", json_real(sb_hist_pct_ms(&s->lat_sent, 50)));
		json_object_set_new(j, "sent_p90_ms", json_real(sb_hist_pct_ms(&s->lat_sent, 90)));
		json_object_set_new(j, "sent_p99_ms", json_real(sb_hist_pct_ms(&s->lat_sent, 99)));
		json_object_set_new(j, "sent_p999_ms", json_real(sb_hist_pct_ms(&s->lat_sent, 99.9)));
		json_object_set_new(j, "sent_max_ms", json_real((double)s->lat_sent.max_us / 1000.0));
	}
	json_object_set_new(j, "lost", json_integer((json_int_t)s->lost));
	json_object_set_new(j, "duplicated", json_integer((json_int_t)s->dups));
	json_object_set_new(j, "bad_payload", json_integer((json_int_t)s->bad_payload));
	json_object_set_new(j, "rate_limited", json_integer((json_int_t)s->rate_limited));
	json_object_set_new(j, "send_errors", json_integer((json_int_t)s->send_err));
	if (r->login_per_s > 0)
		json_object_set_new(j, "login_per_s", json_real(r->login_per_s));
	if (r->rss_per_conn > 0) {
		json_object_set_new(j, "connsrv_rss_per_conn_bytes", json_real(r->rss_per_conn));
		json_object_set_new(j, "kernel_tcp_buffers_per_conn_bytes", json_real(r->kernel_mem_per_conn));
		json_object_set_new(j, "kernel_slab_per_conn_bytes_both_ends", json_real(r->kernel_slab_per_conn));
		json_object_set_new(j, "connsrv_rss_bytes", json_real(r->rss_total));
		json_object_set_new(j, "connsrv_processes", json_integer(r->connsrv_procs));
	}
	if (s->crypto_enc) {
		json_object_set_new(j, "crypto_encrypt_us", json_real((double)s->crypto_enc_ns / 1e3 / (double)s->crypto_enc));
		json_object_set_new(j, "crypto_decrypt_us",
				    json_real(s->crypto_dec ? (double)s->crypto_dec_ns / 1e3 / (double)s->crypto_dec : 0));
		json_object_set_new(j, "crypto_failures", json_integer((json_int_t)s->crypto_fail));
	}
	for (int i = 0; i < r->nextra; i++)
		json_object_set_new(j, r->extra_names[i], json_real(r->extra[i]));
	if (r->json_extra)
		json_object_update(j, (json_t *)r->json_extra);
	return j;
}

static void
print_table(FILE *out, const sb_result *r)
{
	const sb_stats *s = &r->st;
	fprintf(out, "\n== spbench %s ==\n", r->scenario);
	fprintf(out, "  %-34s %12.2f\n", "elapsed (s)", r->elapsed_s);
	if (r->connections)
		fprintf(out, "  %-34s %12llu\n", "connections", (unsigned long long)r->connections);
	if (r->login_per_s > 0)
		fprintf(out, "  %-34s %12.0f\n", "logins/s", r->login_per_s);
	if (r->rss_per_conn > 0) {
		fprintf(out, "  %-34s %12.0f\n", "connsrv RSS per connection (B)", r->rss_per_conn);
		fprintf(out, "  %-34s %12.0f\n", "kernel TCP buffers per conn (B)", r->kernel_mem_per_conn);
		fprintf(out, "  %-34s %12.0f\n", "kernel slab per conn, 2 ends (B)", r->kernel_slab_per_conn);
	}
	if (s->sent || s->delivered) {
		fprintf(out, "  %-34s %12llu / %llu\n", "sent / SENT", (unsigned long long)s->sent,
			(unsigned long long)s->sent_ok);
		fprintf(out, "  %-34s %12llu\n", "delivered (ACKed)", (unsigned long long)s->delivered);
		fprintf(out, "  %-34s %12.0f\n", "SENT/s (durable)", r->sent_per_s);
		fprintf(out, "  %-34s %12.0f\n", "delivered msgs/s", r->delivered_per_s);
	}
	if (s->lat_sent.n)
		fprintf(out, "  %-34s %7.2f %7.2f %7.2f %7.2f %7.2f\n", "send->SENT ms p50/90/99/99.9/max",
			sb_hist_pct_ms(&s->lat_sent, 50), sb_hist_pct_ms(&s->lat_sent, 90),
			sb_hist_pct_ms(&s->lat_sent, 99), sb_hist_pct_ms(&s->lat_sent, 99.9),
			(double)s->lat_sent.max_us / 1e3);
	if (s->lat_recv.n)
		fprintf(out, "  %-34s %7.2f %7.2f %7.2f %7.2f %7.2f\n", "send->receipt ms p50/90/99/99.9/max",
			sb_hist_pct_ms(&s->lat_recv, 50), sb_hist_pct_ms(&s->lat_recv, 90),
			sb_hist_pct_ms(&s->lat_recv, 99), sb_hist_pct_ms(&s->lat_recv, 99.9),
			(double)s->lat_recv.max_us / 1e3);
	if (s->lat_login.n)
		fprintf(out, "  %-34s %7.2f %7.2f %7.2f %7.2f %7.2f\n", "connect->login ms p50/90/99/99.9/max",
			sb_hist_pct_ms(&s->lat_login, 50), sb_hist_pct_ms(&s->lat_login, 90),
			sb_hist_pct_ms(&s->lat_login, 99), sb_hist_pct_ms(&s->lat_login, 99.9),
			(double)s->lat_login.max_us / 1e3);
	for (int i = 0; i < r->nextra; i++)
		fprintf(out, "  %-34s %12.2f\n", r->extra_names[i], r->extra[i]);
	if (s->crypto_enc)
		fprintf(out, "  %-34s %7.1f / %.1f\n", "Signal encrypt / decrypt (us)",
			(double)s->crypto_enc_ns / 1e3 / (double)s->crypto_enc,
			s->crypto_dec ? (double)s->crypto_dec_ns / 1e3 / (double)s->crypto_dec : 0);
	fprintf(out, "  %-34s %12llu\n", "lost", (unsigned long long)s->lost);
	fprintf(out, "  %-34s %12llu\n", "duplicated", (unsigned long long)s->dups);
	fprintf(out, "  %-34s %12llu\n", "failed connects/logins, closed",
		(unsigned long long)(s->conn_fail + s->login_fail + s->closed));
	if (s->rate_limited || s->send_err)
		fprintf(out, "  %-34s %12llu / %llu\n", "rate limited / send errors",
			(unsigned long long)s->rate_limited, (unsigned long long)s->send_err);
}

/* Dev cluster defaults: state dir, account cache, shard metrics ports (base + 30 + i). */
static void
defaults(void)
{
	static char acc[600], metrics[512];
	sb_o.state_dir = getenv("SEALPOST_DEVCLUSTER");
	if (!sb_o.state_dir)
		sb_o.state_dir = ".devcluster";
	if (!sb_o.accounts) {
		snprintf(acc, sizeof(acc), "%s/spbench-accounts.txt", sb_o.state_dir);
		sb_o.accounts = acc;
	}
	const char *redis = getenv("SEALPOST_REDIS");
	const char *colon = redis ? strrchr(redis, ':') : NULL;
	if (!sb_o.inbox_metrics[0] && colon) {
		int base = atoi(colon + 1);
		snprintf(metrics, sizeof(metrics), "127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d", base + 30, base + 31,
			 base + 32);
		snprintf(sb_o.inbox_metrics, sizeof(sb_o.inbox_metrics), "%s", metrics);
	}
}

int
main(int argc, char **argv)
{
	char err[512], *pos[2];
	int npos = 0;
	int rc = sp_config_load("spbench",
				"Sealpost load generator. Usage: spbench connections|throughput|latency|storm|group "
				"[options]",
				opts, argc, argv, pos, 2, &npos, err, sizeof(err));
	if (rc == SP_CONFIG_HELP)
		return 0;
	if (rc || npos != 1) {
		fprintf(stderr, "spbench: %s\n", rc ? err : "one scenario expected: connections|throughput|latency|storm|group");
		return 2;
	}
	int which = -1;
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
		if (!strcmp(pos[0], scenarios[i].name))
			which = (int)i;
	if (which < 0) {
		fprintf(stderr, "spbench: unknown scenario '%s'\n", pos[0]);
		return 2;
	}
	sb_o.scenario = scenarios[which].name;
	sb_o.router = o_router ? o_router : getenv("SEALPOST_ROUTER");
	sb_o.ca = o_ca ? o_ca : getenv("SEALPOST_CA");
	sb_o.accounts = o_accounts;
	sb_o.json = o_json;
	sb_o.crypto = o_crypto;
	sb_o.quiet = o_quiet;
	sb_o.conns = (int)o_conns;
	sb_o.hold_s = (int)o_hold;
	sb_o.concurrency = (int)o_conc;
	sb_o.sources = (int)o_sources;
	sb_o.pairs = (int)o_pairs;
	sb_o.window = (int)o_window;
	sb_o.duration_s = (double)o_duration;
	sb_o.rate = (double)o_rate;
	sb_o.size = (int)o_size;
	sb_o.users = (int)o_users;
	sb_o.queued = (int)o_queued;
	sb_o.storm_senders = (int)o_storm_senders;
	sb_o.group_msgs = (int)o_group_msgs;
	sb_o.timeout_s = (int)o_timeout;
	snprintf(sb_o.group_sizes, sizeof(sb_o.group_sizes), "%s", o_group_sizes ? o_group_sizes : "");
	if (o_inbox_metrics)
		snprintf(sb_o.inbox_metrics, sizeof(sb_o.inbox_metrics), "%s", o_inbox_metrics);
	if (o_connsrv_pids)
		snprintf(sb_o.connsrv_pids, sizeof(sb_o.connsrv_pids), "%s", o_connsrv_pids);
	defaults();
	if (!sb_o.router || !sb_o.ca) {
		fprintf(stderr, "spbench: set SEALPOST_ROUTER and SEALPOST_CA (. .devcluster/env) or --router/--ca\n");
		return 2;
	}
	/* A list of routers: the first that answers, found as the CLI finds it. */
	static char picked[300];
	if (strchr(sb_o.router, ',')) {
		spc_server sv[1];
		size_t nsv;
		char err[512];
		if (spc_bootstrap_list(sb_o.router, sv, 1, &nsv, picked, sizeof(picked), err, sizeof(err))) {
			fprintf(stderr, "spbench: %s\n", err);
			return 1;
		}
		sb_o.router = picked;
	}
	/* Processes: as asked, else what the scenario needs (connections: ~15,000 per
	 * process under the 20,000-file cap). */
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	long per_proc = (long)rl.rlim_cur - 1000;
	if (per_proc < 100)
		per_proc = 100;
	sb_o.procs = (int)o_procs;
	if (!sb_o.procs)
		sb_o.procs = scenarios[which].procs ? scenarios[which].procs
						    : (int)((sb_o.conns + per_proc * 3 / 4 - 1) / (per_proc * 3 / 4));
	if (sodium_init() < 0)
		return 1;
	signal(SIGPIPE, SIG_IGN);
	if ((rc = sb_discover()))
		return 1;
	sb_result r;
	memset(&r, 0, sizeof(r));
	r.scenario = sb_o.scenario;
	rc = scenarios[which].run(&r);
	if (rc && rc != SP_EIO) {
		fprintf(stderr, "spbench: %s: %s\n", sb_o.scenario, sp_strerror(rc));
		sp_config_free(opts);
		return 1;
	}
	print_table(sb_o.json ? stderr : stdout, &r);
	if (sb_o.json) {
		json_t *j = result_json(&r);
		json_dumpf(j, stdout, JSON_COMPACT);
		fputc('\n', stdout);
		json_decref(j);
	}
	json_decref((json_t *)r.json_extra);
	sp_config_free(opts);
	/* A run that lost or duplicated anything fails, so scripts notice. */
	return rc || r.st.lost || r.st.dups ? 1 : 0;
}
