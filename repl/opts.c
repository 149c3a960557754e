/* The options of a replicated tier (opts.h). */
#include "opts.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"
#include "sp_secret.h"

#include <sodium.h>

/* Its own entries, then the internal-link ones. */
#define NOPTS (16 + SP_INTERNAL_NOPTS)

sp_config_opt *
repl_opts_table(const sp_config_opt *tier, repl_opts *o)
{
	const sp_config_opt mine[NOPTS] = {
		{ "etcd", SP_CT_STR, &o->etcd, NULL,
		    "etcd endpoints (comma-separated http(s)://host:port); when set, this process is "
		    "one copy of a replicated group (docs/REPLICATION.md) and needs --name and "
		    "--repl-listen",
		    0, 0 },
		{ "etcd-cluster", SP_CT_STR, &o->etcd_cluster, "sealpost",
		    "cluster name: the etcd keys live under /sealpost/<it>/<group>/", 0, 0 },
		{ "etcd-ca", SP_CT_STR, &o->etcd_ca, NULL,
		    "PEM file of the CA that signs etcd's certificate (https:// endpoints)", 0, 0 },
		{ "etcd-cert", SP_CT_STR, &o->etcd_cert, NULL,
		    "PEM client certificate presented to etcd (etcd --client-cert-auth)", 0, 0 },
		{ "etcd-key", SP_CT_STR, &o->etcd_key, NULL, "PEM key of --etcd-cert", 0, 0 },
		{ "etcd-user", SP_CT_STR, &o->etcd_user, NULL,
		    "etcd user (etcd with auth enabled: each role may write only its own group's "
		    "keys, docs/SECURITY.md); needs --etcd-password-file",
		    0, 0 },
		{ "etcd-password-file", SP_CT_STR, &o->etcd_password_file, NULL,
		    "file holding --etcd-user's password (mode 0600)", 0, 0 },
		SP_INTERNAL_OPTS(&o->internal),
		{ "repl-listen", SP_CT_STR, &o->listen, NULL,
		    "NNG URL the group's replicas fetch the log from while this copy is primary", 0, 0 },
		{ "repl-advertise", SP_CT_STR, &o->advertise, NULL,
		    "URL other copies dial for --repl-listen (default: --repl-listen)", 0, 0 },
		{ "repl-peer-ca", SP_CT_STR, &o->peer_ca, NULL,
		    "PEM bundle of the CAs a copy connecting to --repl-listen must chain to (default "
		    "--internal-ca; give the group's role CA alone so that only copies can fetch)",
		    0, 0 },
		{ "min-copies", SP_CT_INT, &o->min_copies, "2",
		    "fsynced copies (this one included) a write needs before it is acknowledged", 1, 16 },
		{ "lease-ttl", SP_CT_INT, &o->lease_ttl, "5",
		    "seconds of the primary's etcd lease: a dead primary is replaced after about this", 3,
		    60 },
		{ "repl-lag-ms", SP_CT_INT, &o->lag_ms, "1000",
		    "a sync-set copy that has not acknowledged for this long is dropped from the sync set",
		    100, 600000 },
		{ "repl-segment", SP_CT_SIZE, &o->segment, "64M",
		    "replication log segment size (retention deletes whole segments)", 64 << 10, 1 << 30 },
		{ "repl-retain", SP_CT_SIZE, &o->retain, "256M",
		    "replication log kept beyond what every sync-set copy holds, so a copy that was away "
		    "catches up from the log instead of by snapshot",
		    0, 1LL << 40 },
		{ "snapshot-rate", SP_CT_SIZE, &o->snapshot_rate, "0",
		    "bytes per second a primary sends a snapshot at (0: no limit)", 0, 1LL << 40 },
	};
	size_t n = 0;
	while (tier[n].key)
		n++;
	sp_config_opt *t = calloc(n + NOPTS + 1, sizeof(*t));
	if (!t)
		return NULL;
	memcpy(t, tier, n * sizeof(*t));
	memcpy(t + n, mine, sizeof(mine));
	return t;
}

bool
repl_opts_on(const repl_opts *o)
{
	return o->etcd && *o->etcd;
}

/* Reads --etcd-password-file once. */
static int
load_password(repl_opts *o)
{
	if (o->etcd_password || (!o->etcd_user && !o->etcd_password_file))
		return SP_OK;
	if (!o->etcd_user || !o->etcd_password_file) {
		sp_error("--etcd-user and --etcd-password-file go together");
		return SP_ECONFIG;
	}
	char buf[256], err[300];
	size_t len;
	int rc = sp_secret_read("--etcd-password-file", o->etcd_password_file, buf, sizeof(buf), &len,
	    err, sizeof(err));
	if (rc) {
		sp_error("%s", err);
		return rc;
	}
	o->etcd_password = strdup(buf);
	sodium_memzero(buf, sizeof(buf));
	return o->etcd_password ? SP_OK : SP_ENOMEM;
}

void
repl_opts_fini(repl_opts *o)
{
	if (o->etcd_password) {
		sodium_memzero(o->etcd_password, strlen(o->etcd_password));
		free(o->etcd_password);
		o->etcd_password = NULL;
	}
}

int
repl_opts_start(repl_opts *o, const char *data_dir, const char *name,
    const char *const *tier_urls, repl_node_config *cfg)
{
	const char *urls[16];
	size_t n = 0;
	for (; tier_urls && tier_urls[n]; n++) {
		SP_ASSERT(n < 14); /* room for the two replication URLs */
		urls[n] = tier_urls[n];
	}
	urls[n++] = o->listen;
	urls[n++] = o->advertise;
	int rc = sp_internal_start(&o->internal, urls, n);
	if (rc)
		return rc;
	if (!repl_opts_on(o))
		return SP_OK;
	if (!name || !o->listen) {
		sp_error("--etcd needs --name and --repl-listen");
		return SP_ECONFIG;
	}
	if ((rc = load_password(o)))
		return rc;
	*cfg = (repl_node_config) {
		.data_dir = data_dir,
		.etcd = o->etcd,
		.etcd_ca = o->etcd_ca,
		.etcd_cert = o->etcd_cert,
		.etcd_key = o->etcd_key,
		.etcd_user = o->etcd_user,
		.etcd_password = o->etcd_password,
		.cluster = o->etcd_cluster,
		.name = name,
		.listen = o->listen,
		.advertise = o->advertise,
		/* Not --internal-client-ca: the tier's clients must not read the log. */
		.peer_ca = o->peer_ca ? o->peer_ca : o->internal.ca,
		.min_copies = (unsigned)o->min_copies,
		.lease_ttl_s = o->lease_ttl,
		.lag_ms = (uint64_t)o->lag_ms,
		.segment_bytes = (uint32_t)o->segment,
		.retain_bytes = o->retain,
		.snapshot_rate = o->snapshot_rate,
	};
	return SP_OK;
}

/* Whether SIGTERM or SIGINT (blocked, taken by sigwait) is pending. */
static bool
stop_pending(void *arg)
{
	sigset_t pending;
	(void)arg;
	return sigpending(&pending) == 0
	    && (sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1);
}

int
repl_opts_bootstrap(repl_opts *o, const char *data_dir, const char *group, const char *name,
    const repl_snap_files *files, repl_snap_boot_result *result)
{
	int rc = load_password(o);
	if (rc)
		return rc;
	sp_etcd_cfg ecfg = { .endpoints = o->etcd, .ca = o->etcd_ca, .cert = o->etcd_cert,
		.key = o->etcd_key, .user = o->etcd_user, .password = o->etcd_password };
	repl_snap_boot_cfg bcfg = {
		.data_dir = data_dir,
		.files = files,
		.etcd = &ecfg,
		.cluster = o->etcd_cluster,
		.group = group,
		.name = name,
		.stop = stop_pending,
	};
	return repl_snap_bootstrap(&bcfg, result);
}
