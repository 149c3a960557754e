/* inboxsrv: one durable inbox shard (per-device queues and media blobs in LMDB) serving
 * msgpack frames over NNG req/rep. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commit.h"
#include "dispatch.h"
#include "internal.h"
#include "server.h"
#include "sp_cluster.h"
#include "sp_config.h"
#include "sp_error.h"
#include "sp_frame.h"
#include "sp_log.h"
#include "sp_metrics.h"
#include "sp_nng.h"
#include "sp_shutdown.h"
#include "sp_time.h"
#include "store.h"
#include "repl.h"
#include "repl/opts.h"
#include "sweep.h"

#define DAY_S 86400LL

static char *data_dir, *listen_url, *metrics_addr, *log_level, *name, *router, *router_pub;
static repl_opts ro;
static long long queue_share, upload_ttl;
static long long shard, contexts, msg_ttl, media_ttl, sweep_interval, sweep_batch, metrics_port;
static size_t map_size, max_queue_entries, max_queue_bytes, max_blob_size, disk_reserve,
    dedup_max;
static bool log_json;

static const sp_config_opt tier_opts[] = {
	{ "data-dir", SP_CT_STR, &data_dir, "./inbox-data", "directory of the LMDB environment", 0,
	    0 },
	{ "listen", SP_CT_STR, &listen_url, "tcp://127.0.0.1:7401", "NNG URL of the REP socket", 0,
	    0 },
	{ "shard", SP_CT_INT, &shard, "0", "shard id (reported in STAT)", 0, 1LL << 40 },
	{ "map-size", SP_CT_SIZE, &map_size, "8G", "LMDB map size (sparse file)", 1 << 20,
	    1LL << 44 },
	{ "max-queue-entries", SP_CT_SIZE, &max_queue_entries, "10000",
	    "per-device queue cap, entries (over it: SP_EFULL)", 1, 1LL << 32 },
	{ "max-queue-bytes", SP_CT_SIZE, &max_queue_bytes, "100M",
	    "per-device queue cap, bytes (over it: SP_EFULL)", 1024, 1LL << 40 },
	{ "msg-ttl", SP_CT_INT, &msg_ttl, "2592000", "message TTL and dedup window, seconds", 1,
	    3650 * DAY_S },
	{ "dedup-max", SP_CT_SIZE, &dedup_max, "50M",
	    "dedup records kept in memory (24-48 bytes each); past it the oldest are forgotten "
	    "before msg-ttl; 0: no limit",
	    0, 1LL << 40 },
	{ "queue-share", SP_CT_INT, &queue_share, "25",
	    "percent of a device's queue caps one sender may hold (past it: SP_ELIMIT for that "
	    "sender); 100: off",
	    1, 100 },
	{ "media-ttl", SP_CT_INT, &media_ttl, "1209600", "media blob TTL, seconds", 1,
	    3650 * DAY_S },
	{ "upload-ttl", SP_CT_INT, &upload_ttl, "21600",
	    "an unfinished media upload is deleted this long after it started, seconds", 60,
	    3650 * DAY_S },
	{ "max-blob-size", SP_CT_SIZE, &max_blob_size, "100M", "largest media blob", 1, 1LL << 40 },
	{ "sweep-interval", SP_CT_INT, &sweep_interval, "60", "seconds between TTL sweeps", 1,
	    DAY_S },
	{ "sweep-batch", SP_CT_INT, &sweep_batch, "1000", "records per sweep transaction", 1,
	    1000000 },
	{ "contexts", SP_CT_INT, &contexts, "128", "NNG REP contexts (requests in flight)", 1,
	    4096 },
	{ "disk-reserve", SP_CT_SIZE, &disk_reserve, "64M",
	    "refuse appends and blob chunks (SP_EFULL) below this much free disk; 0 off", 0,
	    1LL << 40 },
	{ "metrics-addr", SP_CT_STR, &metrics_addr, "127.0.0.1", "address of GET /metrics", 0, 0 },
	{ "metrics-port", SP_CT_INT, &metrics_port, "-1", "port of GET /metrics (0: any, -1: off)",
	    -1, 65535 },
	{ "name", SP_CT_STR, &name, NULL, "cluster member name (as in the router's cluster file)",
	    0, 0 },
	{ "router", SP_CT_STR, &router, NULL, "router REP url(s), comma-separated; when set, the shard heartbeats each",
	    0, 0 },
	{ "router-pub", SP_CT_STR, &router_pub, NULL, "router PUB url(s) (with --router)", 0, 0 },
	{ "log-level", SP_CT_STR, &log_level, "info", "debug|info|warn|error", 0, 0 },
	{ "log-json", SP_CT_BOOL, &log_json, "false", "log JSON lines", 0, 0 },
	{ NULL, 0, NULL, NULL, NULL, 0, 0 },
};

int
main(int argc, char **argv)
{
	char err[256];
	inbox_store *store = NULL;
	inbox_commit *commit = NULL;
	inbox_dispatch *disp = NULL;
	sp_cluster *cluster = NULL;
	inbox_server *srv = NULL;
	inbox_sweep *sweep = NULL;
	inbox_repl *repl = NULL;
	sigset_t sigs;
	int rc, sig, status = 1;

	sp_log_init("inboxsrv", SP_LOG_INFO, false);
	sp_config_opt *opts = repl_opts_table(tier_opts, &ro);
	if (!opts) {
		fprintf(stderr, "inboxsrv: out of memory\n");
		return 1;
	}
	rc = sp_config_load("inboxsrv", "durable per-device inbox shard", opts, argc, argv, NULL, 0,
	    NULL, err, sizeof(err));
	if (rc == SP_CONFIG_HELP) {
		sp_config_free(opts);
		free(opts);
		return 0;
	}
	if (rc) {
		fprintf(stderr, "inboxsrv: %s\n", err);
		sp_config_free(opts);
		free(opts);
		return 2;
	}
	int level = sp_log_level_parse(log_level);
	if (level < 0) {
		fprintf(stderr, "inboxsrv: bad log-level '%s'\n", log_level);
		sp_config_free(opts);
		free(opts);
		return 2;
	}
	sp_log_init("inboxsrv", (sp_log_level)level, log_json);

	/* Signals are taken by sigwait below; every thread started from here inherits the mask. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	inbox_metrics_init();

	inbox_store_config scfg = {
		.dir = data_dir,
		.map_size = map_size,
		.max_queue_entries = max_queue_entries,
		.max_queue_bytes = max_queue_bytes,
		.msg_ttl_ms = (uint64_t)msg_ttl * 1000,
		.media_ttl_ms = (uint64_t)media_ttl * 1000,
		.upload_ttl_ms = (uint64_t)upload_ttl * 1000,
		.queue_share_pct = (unsigned)queue_share,
		.max_blob_size = max_blob_size,
		.max_readers = (unsigned)contexts + 64,
		.dedup_max = dedup_max,
		.log_is_durable = repl_opts_on(&ro),
	};
	char group[32];
	snprintf(group, sizeof(group), "inbox-%lld", shard);
	repl_node_config rcfg;
	repl_snap_boot_result boot = { 0 };
	const char *urls[] = { listen_url, router, router_pub, NULL };
	if ((rc = repl_opts_start(&ro, data_dir, name, urls, &rcfg))
	    || (repl_opts_on(&ro)
		&& (rc = repl_opts_bootstrap(&ro, data_dir, group, name, &inbox_repl_files, &boot))))
		goto out;
	uint64_t t0 = sp_mono_ns();
	if ((rc = inbox_store_open(&store, &scfg)))
		goto out;
	MDB_txn *txn;
	inbox_shard_stat st = { 0 };
	if ((rc = inbox_store_read_begin(store, &txn)) == SP_OK) {
		rc = inbox_store_shard_stat(store, txn, &st);
		inbox_store_read_end(txn);
	}
	if (rc)
		goto out;
	sp_info("store %s opened in %.1f ms: %llu entries, %llu dedup records, %llu blobs, lsn %llu",
	    data_dir, (double)(sp_mono_ns() - t0) / 1e6, (unsigned long long)st.entries,
	    (unsigned long long)st.dedup, (unsigned long long)st.blobs,
	    (unsigned long long)st.lsn);

	inbox_commit_config ccfg = { .disk_reserve = disk_reserve };
	inbox_dispatch_config dcfg = { .shard = (uint64_t)shard };
	if (repl_opts_on(&ro)) {
		rcfg.boot = &boot;
		if ((rc = inbox_repl_open(&repl, &rcfg, (uint64_t)shard, store)))
			goto out;
		ccfg.repl = inbox_repl_hooks(repl);
		dcfg.gate = inbox_repl_gate;
		dcfg.gate_arg = repl;
	}
	if ((rc = inbox_commit_start(&commit, store, &ccfg))
	    || (rc = inbox_dispatch_new(&disp, store, commit, &dcfg))
	    || (rc = inbox_sweep_start(
	            &sweep, commit, (uint64_t)sweep_interval * 1000, (uint32_t)sweep_batch)))
		goto out;
	if (metrics_port >= 0) {
		int bound = 0;
		if ((rc = sp_metrics_http_thread(metrics_addr, (int)metrics_port, &bound))) {
			sp_error(
			    "metrics on %s:%lld: %s", metrics_addr, metrics_port, sp_strerror(rc));
			goto out;
		}
		sp_info("metrics on http://%s:%d/metrics", metrics_addr, bound);
	}
	if (repl && (rc = inbox_repl_start(repl, commit)))
		goto out;
	if ((rc = inbox_server_start(&srv, listen_url, (int)contexts, disp)))
		goto out;
	sp_info("shard %lld listening on %s (%lld contexts)", shard, listen_url, contexts);
	/* Heartbeats only make the shard's health visible in the map: serving never waits for
	 * the router. */
	if (router && *router) {
		if (!router_pub || !name) {
			sp_error("--router needs --router-pub and --name");
			rc = SP_ECONFIG;
			goto out;
		}
		if ((rc = sp_cluster_start(router, router_pub, name, SP_ROLE_INBOX, &cluster)))
			goto out;
	}

	while (sigwait(&sigs, &sig) != 0)
		;
	sp_info("signal %d: shutting down", sig);
	/* Ended on our terms before a supervisor's SIGKILL: a restart to install a snapshot
	 * still happens. */
	if (sp_shutdown_bound(SP_SHUTDOWN_MAX_MS, 0, inbox_repl_restart_wanted(repl) ? argv : NULL))
		sp_warn("shutdown: no bound on the teardown");
	status = 0;
out:
	if (rc)
		sp_error("start-up failed: %s", sp_strerror(rc));
	/* Order: stop taking requests, finish queued writes, then free what they reference. */
	sp_cluster_stop(cluster);
	if (srv)
		inbox_server_close(srv);
	/* A clean stop hands the leader key over at once instead of at the lease's end. */
	inbox_repl_stop(repl, true);
	inbox_sweep_stop(sweep);
	inbox_commit_stop(commit);
	inbox_server_free(srv);
	inbox_dispatch_free(disp);
	bool again = inbox_repl_restart_wanted(repl);
	inbox_repl_free(repl);
	inbox_store_close(store);
	sp_nng_tls_fini();
	repl_opts_fini(&ro);
	sp_config_free(opts);
	free(opts);
	if (again) {
		/* The same process (pid, arguments) starts over; its start-up installs the
		 * snapshot the data dir is marked for. Descriptors are all close-on-exec. */
		sp_info("restarting to install a snapshot");
		execv("/proc/self/exe", argv);
		sp_error("exec /proc/self/exe: %s", strerror(errno));
		return 75;
	}
	return status;
}
