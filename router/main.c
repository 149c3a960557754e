/* router: the cluster's control plane (docs/ROUTER.md). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"
#include "sp_config.h"
#include "sp_error.h"
#include "sp_internal.h"
#include "sp_log.h"
#include "sp_secret.h"

#include <sodium.h>

int
main(int argc, char **argv)
{
	char *cluster_file, *state_file, *listen_url, *publish_url, *http_addr, *log_level;
	char *etcd, *etcd_cluster, *etcd_ca, *etcd_cert, *etcd_key, *admin_addr, *admin_token_file;
	char *etcd_user, *etcd_password_file;
	long long http_port, admin_port, timeout;
	bool log_json, admin_no_token, public_map;
	sp_internal_opts internal;
	char err[512];
	const sp_config_opt opts[] = {
		{"cluster-file", SP_CT_STR, &cluster_file, NULL,
		 "INI file with one [name] section per member (role, addr, client, shard)", 0, 0},
		{"state-file", SP_CT_STR, &state_file, NULL,
		 "where the epoch and draining names persist (default: CLUSTER-FILE.state)", 0, 0},
		{"listen", SP_CT_STR, &listen_url, "tcp://127.0.0.1:7201",
		 "NNG REP address for MAP_GET and HEARTBEAT", 0, 0},
		{"publish", SP_CT_STR, &publish_url, "tcp://127.0.0.1:7202",
		 "NNG PUB address for map changes", 0, 0},
		{"http-addr", SP_CT_STR, &http_addr, "127.0.0.1",
		 "public HTTP address for /where, /health, /metrics (and /map, see public-map)", 0, 0},
		{"http-port", SP_CT_INT, &http_port, "7200", "HTTP port (0: any free port)", 0, 65535},
		{"public-map", SP_CT_BOOL, &public_map, "true",
		 "serve GET /map on the public listener too (it lists every member's internal "
		 "address); false: on the admin listener only", 0, 0},
		{"admin-addr", SP_CT_STR, &admin_addr, "127.0.0.1",
		 "admin HTTP address for POST /drain, /undrain and GET /map, /health (operator "
		 "token required)", 0, 0},
		{"admin-port", SP_CT_INT, &admin_port, "7203",
		 "admin HTTP port (0: any free port, -1: no admin listener)", -1, 65535},
		{"admin-token-file", SP_CT_STR, &admin_token_file, NULL,
		 "file holding the operator token (mode 0600 or stricter; without it and without "
		 "admin-no-token there is no admin listener)", 0, 0},
		{"admin-no-token", SP_CT_BOOL, &admin_no_token, "false",
		 "run the admin listener without a token (only on a loopback admin-addr)", 0, 0},
		{"heartbeat-timeout", SP_CT_INT, &timeout, "3000",
		 "ms without a heartbeat before a member is unhealthy (members beat every 1000)", 1500,
		 3600000},
		{"etcd", SP_CT_STR, &etcd, NULL,
		 "etcd endpoints (http://host:port,...) to mirror each inbox shard's primary, sync "
		 "set and epoch from; without it every copy's role is unknown", 0, 0},
		{"etcd-ca", SP_CT_STR, &etcd_ca, NULL,
		 "PEM file of the CA that signs etcd's certificate (https:// endpoints)", 0, 0},
		{"etcd-cert", SP_CT_STR, &etcd_cert, NULL,
		 "PEM client certificate presented to etcd (etcd --client-cert-auth)", 0, 0},
		{"etcd-key", SP_CT_STR, &etcd_key, NULL, "PEM key of --etcd-cert", 0, 0},
		{"etcd-user", SP_CT_STR, &etcd_user, NULL,
		 "etcd user (etcd with auth enabled, docs/SECURITY.md); needs --etcd-password-file",
		 0, 0},
		{"etcd-password-file", SP_CT_STR, &etcd_password_file, NULL,
		 "file holding --etcd-user's password (mode 0600)", 0, 0},
		{"etcd-cluster", SP_CT_STR, &etcd_cluster, "sealpost",
		 "the cluster's name in etcd keys (/sealpost/<name>/inbox-<shard>/...)", 0, 0},
		{"log-level", SP_CT_STR, &log_level, "info", "debug, info, warn or error", 0, 0},
		{"log-json", SP_CT_BOOL, &log_json, "false", "log JSON lines", 0, 0},
		SP_INTERNAL_OPTS(&internal),
		{NULL, 0, NULL, NULL, NULL, 0, 0},
	};

	sp_log_init("router", SP_LOG_INFO, false);
	int rc = sp_config_load("router", "Sealpost router: cluster map, health, client bootstrap.",
				opts, argc, argv, NULL, 0, NULL, err, sizeof(err));
	if (rc == SP_CONFIG_HELP)
		return 0;
	if (rc) {
		fprintf(stderr, "router: %s\n", err);
		return 2;
	}
	int level = sp_log_level_parse(log_level);
	if (level < 0 || !cluster_file) {
		fprintf(stderr, "router: %s\n",
			level < 0 ? "log-level: expected debug, info, warn or error"
				  : "cluster-file is required (see --help)");
		sp_config_free(opts);
		return 2;
	}
	sp_log_init("router", (sp_log_level)level, log_json);
	signal(SIGPIPE, SIG_IGN);
	/* Members heartbeat --listen and subscribe to --publish. */
	const char *urls[] = {listen_url, publish_url};
	if ((rc = sp_internal_start(&internal, urls, 2))) {
		sp_config_free(opts);
		return rc == SP_ECONFIG ? 2 : 1;
	}

	char etcd_password[256] = "";
	if ((etcd_user != NULL) != (etcd_password_file != NULL)) {
		fprintf(stderr, "router: --etcd-user and --etcd-password-file go together\n");
		sp_internal_stop();
		sp_config_free(opts);
		return 2;
	}
	if (etcd_password_file) {
		size_t len;
		if (sp_secret_read("--etcd-password-file", etcd_password_file, etcd_password,
				   sizeof(etcd_password), &len, err, sizeof(err))) {
			fprintf(stderr, "router: %s\n", err);
			sp_internal_stop();
			sp_config_free(opts);
			return 2;
		}
	}
	router_config cfg = {
		.cluster_file = cluster_file,
		.state_file = state_file,
		.listen_url = listen_url,
		.publish_url = publish_url,
		.http_addr = http_addr,
		.http_port = (int)http_port,
		.admin_addr = admin_addr,
		.admin_port = (int)admin_port,
		.admin_token_file = admin_token_file && admin_token_file[0] ? admin_token_file : NULL,
		.admin_no_token = admin_no_token,
		.public_map = public_map,
		.heartbeat_timeout_ms = (uint64_t)timeout,
		.etcd_endpoints = etcd && etcd[0] ? etcd : NULL,
		.etcd_cluster = etcd_cluster,
		.etcd_ca = etcd_ca,
		.etcd_cert = etcd_cert,
		.etcd_key = etcd_key,
		.etcd_user = etcd_user,
		.etcd_password = etcd_password_file ? etcd_password : NULL,
	};
	router *r;
	if ((rc = router_new(&cfg, &r, err, sizeof(err)))) {
		sodium_memzero(etcd_password, sizeof(etcd_password));
		sp_error("%s", err[0] ? err : sp_strerror(rc));
		sp_internal_stop();
		sp_config_free(opts);
		return rc == SP_ECONFIG ? 2 : 1;
	}
	rc = router_run(r);
	router_free(r);
	sodium_memzero(etcd_password, sizeof(etcd_password));
	sp_internal_stop();
	sp_config_free(opts);
	return rc ? 1 : 0;
}
