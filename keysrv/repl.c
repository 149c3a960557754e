/* keysrv on the replication mechanism (repl.h). */
#include "keysrv/repl.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sp_error.h"
#include "sp_log.h"

const repl_snap_files keys_repl_files = { "data.mdb", "lock.mdb" };

struct keys_repl {
	repl_node *node;
	keys_store *store;
};

static int
sm_store_lsn(void *arg, uint64_t *lsn)
{
	keys_repl *r = arg;
	return keys_store_lsn(r->store, lsn);
}

static int
sm_store_sync(void *arg)
{
	keys_repl *r = arg;
	return keys_store_sync(r->store);
}

/* Applied in order, each in its own transaction, before the next fetch. */
static int
sm_apply(void *arg, repl_node *node, const repl_log_rec *recs, size_t n)
{
	keys_repl *r = arg;
	for (size_t i = 0; i < n; i++) {
		int rc = keys_store_apply(r->store, recs[i].lsn, recs[i].data, recs[i].len);
		if (rc)
			return rc;
		repl_node_applied(node, recs[i].lsn);
	}
	return SP_OK;
}

static int
sm_snapshot_copy(void *arg, int fd, const char *path, uint64_t *lsn)
{
	keys_repl *r = arg;
	return keys_store_copy(r->store, fd, path, lsn);
}

/* The store's commit hook: the transaction's effects as the next record. */
static int
on_commit(void *arg, uint64_t lsn, const uint8_t *rec, size_t len)
{
	keys_repl *r = arg;
	int rc = repl_node_admit(r->node);
	if (rc)
		return rc;
	repl_log_rec lr = { 0, lsn, rec, (uint32_t)len };
	return repl_node_replicate(r->node, &lr, 1);
}

int
keys_repl_open(keys_repl **out, const repl_node_config *cfg, keys_store *store)
{
	keys_repl *r = calloc(1, sizeof(*r));
	if (!r)
		return SP_ENOMEM;
	r->store = store;
	repl_node_config nc = *cfg;
	nc.group = KEYS_REPL_GROUP;
	nc.metric_prefix = "keysrv_repl";
	nc.files = &keys_repl_files;
	repl_node_sm sm = {
		.arg = r,
		.store_lsn = sm_store_lsn,
		.store_sync = sm_store_sync,
		.apply = sm_apply,
		.snapshot_copy = sm_snapshot_copy,
	};
	int rc = repl_node_open(&r->node, &nc, &sm);
	if (rc) {
		free(r);
		return rc;
	}
	keys_store_set_repl(store, on_commit, r);
	*out = r;
	return SP_OK;
}

int
keys_repl_start(keys_repl *r)
{
	return repl_node_start(r->node);
}

int
keys_repl_gate(keys_repl *r, uint64_t stale_ms, char *primary, size_t cap)
{
	int rc = repl_node_gate(r->node, false);
	if (rc == SP_OK)
		rc = keys_store_ensure_secret(r->store);
	else if (stale_ms && repl_node_read_fresh(r->node, stale_ms) == SP_OK)
		return SP_OK;
	if (rc && primary)
		repl_node_primary_name(r->node, primary, cap);
	return rc;
}

bool
keys_repl_restart_wanted(keys_repl *r)
{
	return r && repl_node_restart_wanted(r->node);
}

void
keys_repl_stop(keys_repl *r, bool resign)
{
	if (r)
		repl_node_stop(r->node, resign);
}

void
keys_repl_free(keys_repl *r)
{
	if (!r)
		return;
	keys_store_set_repl(r->store, NULL, NULL);
	repl_node_free(r->node);
	free(r);
}
