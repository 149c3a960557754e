#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#include "internal.h"
#include "sp_log.h"
#include "sp_time.h"

#define DROP_LOG_MS 1000 /* at most one drop log line this often */

inbox_metrics inbox_m;

static const uint32_t batch_le[INBOX_BATCH_BUCKETS] = { 1, 4, 16, 64, 256, UINT32_MAX };

void
inbox_metrics_init(void)
{
	inbox_metrics *m = &inbox_m;
	m->commits = sp_metric_counter("sp_inbox_commits_total",
	    "Durable LMDB commits: each one fdatasync of the data pages and one "
	    "O_DSYNC write of the meta page");
	m->ops = sp_metric_counter("sp_inbox_ops_total", "Write ops applied and committed");
	m->op_errors
	    = sp_metric_counter("sp_inbox_op_errors_total", "Write ops refused with an error");
	m->appends
	    = sp_metric_counter("sp_inbox_appends_total", "Queue entries appended (durable)");
	m->append_dups = sp_metric_counter(
	    "sp_inbox_append_dups_total", "Appends answered from the dedup record");
	m->append_full = sp_metric_counter(
	    "sp_inbox_append_full_total", "Appends refused: device queue over its cap (SP_EFULL)");
	m->store_full = sp_metric_counter("sp_inbox_store_full_total",
	    "Write ops refused: LMDB map full or disk below the reserve");
	m->acks = sp_metric_counter("sp_inbox_acks_total", "ACK requests applied");
	m->acked = sp_metric_counter("sp_inbox_acked_entries_total", "Entries deleted by ACK");
	m->purged = sp_metric_counter("sp_inbox_purged_entries_total", "Entries deleted by PURGE");
	m->fetches = sp_metric_counter("sp_inbox_fetches_total", "FETCH requests served");
	m->fetched
	    = sp_metric_counter("sp_inbox_fetched_entries_total", "Entries returned by FETCH");
	m->stat_reqs = sp_metric_counter("sp_inbox_stats_total", "STAT requests served");
	m->bad_requests = sp_metric_counter("sp_inbox_bad_requests_total",
	    "Requests answered with ERROR before reaching the store");
	m->ttl_expired = sp_metric_counter(
	    "sp_inbox_ttl_expired_total", "Undelivered entries removed at the message TTL");
	m->ttl_dedup = sp_metric_counter(
	    "sp_inbox_ttl_dedup_expired_total", "Dedup records removed at the message TTL");
	m->blob_expired
	    = sp_metric_counter("sp_inbox_blob_expired_total", "Blobs removed at the media TTL");
	m->blob_deleted = sp_metric_counter("sp_inbox_blob_fetched_deleted_total",
	    "Blobs deleted after every listed device fetched them");
	m->blob_puts = sp_metric_counter("sp_inbox_blob_puts_total", "BLOB_PUT chunks applied");
	m->blob_bytes
	    = sp_metric_counter("sp_inbox_blob_put_bytes_total", "BLOB_PUT bytes received");
	m->blob_gets = sp_metric_counter("sp_inbox_blob_gets_total", "BLOB_GET requests served");
	m->commit_seconds = sp_metric_histogram(
	    "sp_inbox_commit_seconds", "Apply + durable commit time of one batch");
	m->sync_seconds = sp_metric_histogram("sp_inbox_commit_sync_seconds",
	    "LMDB commit call of one batch: page writes and fdatasyncs");
	m->request_seconds = sp_metric_histogram(
	    "sp_inbox_request_seconds", "Request received to reply handed to NNG");
	m->batch[0] = sp_metric_counter(
	    "sp_inbox_commit_batches_total{ops=\"1\"}", "Commits by number of ops in the batch");
	m->batch[1] = sp_metric_counter("sp_inbox_commit_batches_total{ops=\"2-4\"}", NULL);
	m->batch[2] = sp_metric_counter("sp_inbox_commit_batches_total{ops=\"5-16\"}", NULL);
	m->batch[3] = sp_metric_counter("sp_inbox_commit_batches_total{ops=\"17-64\"}", NULL);
	m->batch[4] = sp_metric_counter("sp_inbox_commit_batches_total{ops=\"65-256\"}", NULL);
	m->batch[5] = sp_metric_counter("sp_inbox_commit_batches_total{ops=\"257+\"}", NULL);
	m->lsn = sp_metric_gauge("sp_inbox_lsn", "Last applied op sequence number");
	m->entries = sp_metric_gauge("sp_inbox_queue_entries", "Queue entries held by the shard");
	m->blobs = sp_metric_gauge("sp_inbox_blobs", "Media blobs held by the shard");
	m->map_used = sp_metric_gauge("sp_inbox_map_used_bytes", "LMDB map pages in use, bytes");
	m->disk_low
	    = sp_metric_gauge("sp_inbox_disk_low", "1 while free disk is below the reserve");
	m->dedup_entries = sp_metric_gauge(
	    "sp_inbox_dedup_index_records", "Dedup records in the in-memory index");
	m->dedup_bytes = sp_metric_gauge(
	    "sp_inbox_dedup_index_bytes", "Memory held by the in-memory dedup index");
	m->collected = sp_metric_counter("sp_inbox_collected_total",
	    "Log records of acknowledged or purged entries deleted by the collector");
	m->garbage = sp_metric_gauge(
	    "sp_inbox_garbage_entries", "Log records of acknowledged entries not yet collected");
	m->queue_devices
	    = sp_metric_gauge("sp_inbox_queue_index_devices", "Devices in the in-memory queue index");
	m->queue_index_bytes = sp_metric_gauge(
	    "sp_inbox_queue_index_bytes", "Memory held by the in-memory queue index");
	m->dedup_evicted = sp_metric_counter("sp_inbox_dedup_evicted_total",
	    "Dedup records forgotten before the message TTL to stay under dedup-max");
	m->unserved = sp_metric_counter("sp_inbox_unserved_requests_total",
	    "Well-formed frames of a type the shard does not serve, answered ERROR (also in "
	    "sp_inbox_bad_requests_total)");
	m->dropped_requests = sp_metric_counter("sp_inbox_dropped_total{what=\"request\"}",
	    "Requests, replies and ops dropped with nobody told: a failed receive, a reply "
	    "not built or not sent (the requester's resend retries), an op nobody waits for "
	    "that failed or was not queued");
	m->dropped_replies = sp_metric_counter("sp_inbox_dropped_total{what=\"reply\"}", NULL);
	m->dropped_ops = sp_metric_counter("sp_inbox_dropped_total{what=\"op\"}", NULL);
}

void
inbox_metrics_batch(uint32_t ops)
{
	for (int i = 0; i < INBOX_BATCH_BUCKETS; i++) {
		if (ops <= batch_le[i]) {
			sp_metric_inc(inbox_m.batch[i]);
			return;
		}
	}
}

static _Atomic uint64_t drop_logged_ms; /* when the last drop line was written */
static atomic_ulong drop_quiet; /* drops not logged since */

void
inbox_drop(sp_metric *m, const char *fmt, ...)
{
	uint64_t now = sp_time_ms(), last = atomic_load(&drop_logged_ms);
	char what[256];
	va_list ap;

	sp_metric_inc(m);
	if (now - last < DROP_LOG_MS
	    || !atomic_compare_exchange_strong(&drop_logged_ms, &last, now)) {
		atomic_fetch_add(&drop_quiet, 1);
		return;
	}
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	unsigned long quiet = atomic_exchange(&drop_quiet, 0);
	if (quiet)
		sp_warn("dropped: %s (and %lu more not logged)", what, quiet);
	else
		sp_warn("dropped: %s", what);
}
