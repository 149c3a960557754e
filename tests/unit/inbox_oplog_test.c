/* Unit tests of the replication record codec (inboxsrv/oplog.c) with the store it feeds:
 * ops of every kind applied on a primary store are encoded, decoded and replayed in order
 * on an empty replica store, which must end up with the same queues, seqs, dedup records
 * and shard figures; a replica that differs is caught (by apply or by inbox_oplog_check);
 * hostile records (every truncation, bad fields, counts past the limits or the bytes,
 * trailing bytes, the fixtures of tests/fixtures/oplog_malformed/) are refused and leave
 * nothing allocated.
 *
 * SP_OPLOG_WRITE=<repository root> also (re)writes the committed files made from these
 * records: the fuzz seeds in tests/fuzz/corpus/oplog_fuzz/ and the malformed fixtures. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "check_run.h"
#include "inboxsrv/oplog.h"
#include "inboxsrv/store.h"
#include "oplog_cmp.h"
#include "sp_bytes.h"
#include "sp_error.h"
#include "tests/unit/inbox_fixture.h"

#define TTL_MS 10000
#define MEDIA_TTL_MS 5000
#define CAP 4 /* entries per device queue */
#define MAX_RECS 64

typedef struct rec {
	uint8_t *p;
	size_t len;
	const char *name; /* seed file name, or NULL */
} rec;

static char dir_a[64], dir_b[64];
static inbox_store *sa, *sb; /* primary, replica */
static rec recs[MAX_RECS];
static size_t nrecs;

/* Indexes into recs of the scenario's records the replica tests aim at. */
static size_t rec_fill3; /* the third append to device 30 (its cap is CAP) */
static size_t rec_batch; /* the shared batch with a dup and a full target */

static const uint8_t blob1[16] = { 0xb1, 1 }, blob2[16] = { 0xb2, 2 };
static uint8_t blob_data[1500];

static const uint64_t devices[] = { 1, 2, 3, 4, 5, 30, 99 };

static inbox_store *
open_at(const char *dir, uint64_t max_entries)
{
	inbox_store_config cfg = {
		.dir = dir,
		.map_size = 64u << 20,
		.max_queue_entries = max_entries,
		.max_queue_bytes = 1 << 20,
		.msg_ttl_ms = TTL_MS,
		.media_ttl_ms = MEDIA_TTL_MS,
		.max_blob_size = 1u << 20,
		.max_readers = 16,
	};
	inbox_store *s;
	ck_assert_int_eq(inbox_store_open(&s, &cfg), SP_OK);
	return s;
}

static void
setup(void)
{
	strcpy(dir_a, "/tmp/inbox_oplog_a.XXXXXX");
	strcpy(dir_b, "/tmp/inbox_oplog_b.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir_a));
	ck_assert_ptr_nonnull(mkdtemp(dir_b));
	sa = open_at(dir_a, CAP);
	sb = NULL;
	nrecs = 0;
	for (size_t i = 0; i < sizeof(blob_data); i++)
		blob_data[i] = (uint8_t)(i * 13 + 1);
}

static void
teardown(void)
{
	char cmd[256];
	inbox_store_close(sa);
	inbox_store_close(sb);
	sa = sb = NULL;
	for (size_t i = 0; i < nrecs; i++)
		free(recs[i].p);
	nrecs = 0;
	snprintf(cmd, sizeof(cmd), "rm -rf %s %s", dir_a, dir_b);
	ck_assert_int_eq(system(cmd), 0);
}

static void
mid(uint8_t out[16], uint64_t n)
{
	memset(out, 0, 16);
	sp_be64_put(out, n);
}

static uint8_t
outcome_of(const inbox_target *t)
{
	return t->rc != SP_OK ? 2 : t->dup ? 1 : 0;
}

/* Applies `op` on the primary at `now` (it must be applied), encodes it as the next record
 * and checks that the record decodes to the op, its outcomes and seqs. */
static void
primary(inbox_op *op, uint64_t now, const char *name)
{
	inbox_op *ops[1] = { op };
	ck_assert_int_eq(inbox_store_write(sa, ops, 1, now), SP_OK);
	ck_assert_int_eq(op->rc, SP_OK);
	ck_assert_uint_eq(op->lsn, nrecs + 1);
	ck_assert_uint_eq(op->ts, now);
	size_t n = inbox_oplog_size(op);
	ck_assert_uint_gt(n, 18);
	uint8_t *p = malloc(n);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(inbox_oplog_encode(op, p, n - 1), SP_ETOOBIG);
	ck_assert_int_eq(inbox_oplog_encode(op, p, n), (long)n);

	inbox_oplog_rec r;
	ck_assert_int_eq(inbox_oplog_decode(p, n, &r), SP_OK);
	ck_assert(oplog_cmp_op(&r.op, op, false));
	if (op->kind == INBOX_OP_APPEND) {
		for (uint32_t i = 0; i < op->append.ntargets; i++) {
			const inbox_target *t = &op->append.targets[i];
			ck_assert_uint_eq(r.outcome[i], outcome_of(t));
			ck_assert_uint_eq(r.seqs[i], t->seq);
			/* Apply is given only a stored target's seq to check. */
			ck_assert_uint_eq(r.op.append.targets[i].seq, t->dup ? 0 : t->seq);
		}
	}
	inbox_oplog_fini(&r);
	ck_assert_uint_lt(nrecs, MAX_RECS);
	recs[nrecs++] = (rec) { p, n, name };
}

static inbox_target *
app_target(inbox_op *op, inbox_target *t, uint64_t device, const char *ct)
{
	memset(t, 0, sizeof(*t));
	t->device = device;
	if (ct) {
		t->ct = (const uint8_t *)ct;
		t->ct_len = (uint32_t)strlen(ct);
	}
	op->append.targets = t;
	op->append.ntargets = 1;
	return t;
}

static void
app_head(inbox_op *op, uint64_t from_device, uint64_t msg, const char *body, uint64_t now)
{
	memset(op, 0, sizeof(*op));
	op->kind = INBOX_OP_APPEND;
	mid(op->append.msg_id, msg);
	op->append.from_user = 1000 + from_device;
	op->append.from_device = from_device;
	op->append.server_ts = now - 3;
	op->append.etype = 1 + msg % 3;
	op->append.body = (const uint8_t *)body;
	op->append.body_len = (uint32_t)strlen(body);
}

/* One single-target append on the primary; returns the target's seq. */
static uint64_t
app1(uint64_t device, uint64_t from_device, uint64_t msg, const char *body, const char *ct,
    uint64_t now, bool want_dup, const char *name)
{
	inbox_op op;
	inbox_target t;
	app_head(&op, from_device, msg, body, now);
	app_target(&op, &t, device, ct);
	primary(&op, now, name);
	ck_assert_int_eq(t.rc, SP_OK);
	ck_assert(t.dup == want_dup);
	return t.seq;
}

static void
batch(uint64_t msg, uint64_t now, const uint8_t want[5], const char *name)
{
	static const uint64_t devs[5] = { 1, 2, 5, 30, 3 };
	static const char *cts[5] = { "k1", "key-two", NULL, "k30", NULL };
	inbox_target t[5];
	inbox_op op;
	app_head(&op, 7, msg, "group-body", now);
	op.append.shared = true;
	op.append.has_group = true;
	op.append.group = 77;
	for (int i = 0; i < 5; i++)
		app_target(&op, &t[i], devs[i], cts[i]);
	op.append.targets = t;
	op.append.ntargets = 5;
	primary(&op, now, name);
	for (int i = 0; i < 5; i++)
		ck_assert_uint_eq(outcome_of(&t[i]), want[i]);
	bool stored = false;
	for (int i = 0; i < 5; i++)
		stored = stored || want[i] == 0;
	ck_assert(stored ? op.append.body_id != 0 : op.append.body_id == 0);
}

static void
ack(uint64_t device, uint64_t upto, const uint64_t *seqs, uint32_t nseqs, uint64_t now,
    uint32_t want_refs, const char *name)
{
	inbox_op op = { .kind = INBOX_OP_ACK };
	op.ack.device = device;
	op.ack.upto_seq = upto;
	op.ack.seqs = seqs;
	op.ack.nseqs = nseqs;
	primary(&op, now, name);
	ck_assert_uint_eq(op.ack.nrefs, want_refs);
	inbox_op_fini(&op);
}

static void
blob_put(const uint8_t *id, uint64_t off, uint32_t len, uint64_t now, const char *name)
{
	inbox_op op = { .kind = INBOX_OP_BLOB_PUT };
	memcpy(op.blob_put.blob_id, id, 16);
	op.blob_put.offset = off;
	op.blob_put.bytes = blob_data + off;
	op.blob_put.len = len;
	primary(&op, now, name);
}

static void
blob_done(const uint8_t *id, uint64_t size, const uint64_t *devs, uint32_t n, uint64_t now,
    const char *name)
{
	inbox_op op = { .kind = INBOX_OP_BLOB_DONE };
	memcpy(op.blob_done.blob_id, id, 16);
	op.blob_done.size = size;
	crypto_hash_sha256(op.blob_done.sha256, blob_data, size);
	op.blob_done.devices = devs;
	op.blob_done.ndevices = n;
	primary(&op, now, name);
}

static void
blob_fetched(const uint8_t *id, uint64_t device, uint64_t now, bool want_deleted, const char *name)
{
	inbox_op op = { .kind = INBOX_OP_BLOB_FETCHED };
	memcpy(op.blob_fetched.blob_id, id, 16);
	op.blob_fetched.device = device;
	primary(&op, now, name);
	ck_assert(op.blob_fetched.deleted == want_deleted);
}

static void
sweep(uint32_t limit, uint64_t now, bool want_more, const char *name)
{
	inbox_op op = { .kind = INBOX_OP_SWEEP };
	op.sweep.limit = limit;
	primary(&op, now, name);
	ck_assert(op.sweep.more == want_more);
	ck_assert_uint_gt(op.sweep.dedup_gone, 0);
}

static void
purge(uint64_t device, uint64_t now, uint64_t want_removed, const char *name)
{
	inbox_op op = { .kind = INBOX_OP_PURGE };
	op.purge.device = device;
	primary(&op, now, name);
	ck_assert_uint_eq(op.purge.removed, want_removed);
}

/* The primary's history: every op kind, a shared batch with per-device parts, a duplicate
 * and a full target, its retry (nothing stored), ACKs both ways, a purge, TTL sweeps, two
 * blobs (one read to the end by its only device). */
static void
scenario(void)
{
	static const uint8_t first[5] = { 0, 0, 1, 2, 0 }, retry[5] = { 1, 1, 1, 2, 1 };
	static const uint64_t list[] = { 1, 99 }, bdevs[] = { 11, 12 }, bdev2[] = { 13 };

	ck_assert_uint_eq(app1(1, 7, 1, "hello", NULL, 1000, false, "append"), 1);
	ck_assert_uint_eq(app1(2, 7, 2, "to-two", "c2", 1001, false, "append_ct"), 1);
	ck_assert_uint_eq(app1(1, 7, 3, "again", NULL, 1002, false, NULL), 2);
	for (uint64_t i = 0; i < CAP; i++) {
		if (i == 2)
			rec_fill3 = nrecs;
		ck_assert_uint_eq(app1(30, 8, 10 + i, "fill", NULL, 1003, false, NULL), i + 1);
	}
	/* Device 5 already holds message 20 when the batch brings it. */
	ck_assert_uint_eq(app1(5, 7, 20, "group-body", NULL, 1004, false, NULL), 1);
	rec_batch = nrecs;
	batch(20, 1010, first, "append_batch");
	batch(20, 1011, retry, "append_batch_retry");
	ck_assert_uint_eq(app1(1, 7, 1, "hello", NULL, 1012, true, "append_dup"), 1);

	ack(1, 1, NULL, 0, 1100, 1, "ack_upto");
	ack(2, 0, list, 2, 1101, 1, "ack_list");
	purge(3, 1102, 1, "purge");

	/* Entries stored before 1005 expire at 11005: more than one sweep's limit. */
	sweep(3, 11005, true, "sweep");
	sweep(100, 11005, false, NULL);

	blob_put(blob1, 0, 1000, 11100, "blob_put");
	blob_put(blob1, 1000, 500, 11101, NULL);
	blob_put(blob1, 0, 1000, 11102, NULL); /* a retry: applied, stores nothing */
	blob_done(blob1, 1500, bdevs, 2, 11103, "blob_done");
	blob_fetched(blob1, 11, 11104, false, "blob_fetched");
	blob_put(blob2, 0, 100, 11105, NULL);
	blob_done(blob2, 100, bdev2, 1, 11106, NULL);
	blob_fetched(blob2, 13, 11107, true, NULL);

	/* Device 30 has room again after the sweep; seqs go on. */
	ck_assert_uint_eq(app1(30, 8, 40, "late", "c30", 11200, false, NULL), 5);
	ck_assert_uint_eq(app1(4, 9, 41, "four", NULL, 11201, false, NULL), 1);
}

/* Decodes record `r` and applies it on `s` as a replica does, at a clock unlike the
 * primary's (the record's timestamp must win); returns apply's result and check's in
 * *check. */
static int
replay(inbox_store *s, const rec *r, int *check)
{
	inbox_oplog_rec d;
	ck_assert_int_eq(inbox_oplog_decode(r->p, r->len, &d), SP_OK);
	inbox_op *ops[1] = { &d.op };
	ck_assert_int_eq(inbox_store_write(s, ops, 1, 1), SP_OK);
	int rc = d.op.rc;
	*check = inbox_oplog_check(&d);
	inbox_oplog_fini(&d);
	return rc;
}

static void
replay_all(inbox_store *s)
{
	for (size_t i = 0; i < nrecs; i++) {
		int check, rc = replay(s, &recs[i], &check);
		ck_assert_msg(rc == SP_OK && check == SP_OK, "record %zu: apply %s, check %s", i,
		    sp_strerror(rc), sp_strerror(check));
	}
}

static inbox_shard_stat
shard_stat(inbox_store *s)
{
	MDB_txn *txn;
	inbox_shard_stat st;
	ck_assert_int_eq(inbox_store_read_begin(s, &txn), SP_OK);
	ck_assert_int_eq(inbox_store_shard_stat(s, txn, &st), SP_OK);
	inbox_store_read_end(txn);
	return st;
}

static void
same_entry(const inbox_entry *x, const inbox_entry *y)
{
	ck_assert_uint_eq(x->seq, y->seq);
	ck_assert_uint_eq(x->ts, y->ts);
	ck_assert_uint_eq(x->server_ts, y->server_ts);
	ck_assert_uint_eq(x->from_user, y->from_user);
	ck_assert_uint_eq(x->from_device, y->from_device);
	ck_assert_uint_eq(x->etype, y->etype);
	ck_assert_uint_eq(x->group, y->group);
	ck_assert(x->has_group == y->has_group);
	ck_assert_mem_eq(x->msg_id, y->msg_id, INBOX_MSG_ID_LEN);
	ck_assert(oplog_cmp_bytes(x->env, x->env_len, y->env, y->env_len));
	ck_assert(oplog_cmp_bytes(x->ct, x->ct_len, y->ct, y->ct_len));
}

static void
same_blob(const uint8_t *id)
{
	MDB_txn *ta, *tb;
	inbox_blob_info x, y;
	uint8_t bx[2000], by[2000];
	ck_assert_int_eq(inbox_store_read_begin(sa, &ta), SP_OK);
	ck_assert_int_eq(inbox_store_read_begin(sb, &tb), SP_OK);
	int rc = inbox_store_blob_info(sa, ta, id, &x);
	ck_assert_int_eq(inbox_store_blob_info(sb, tb, id, &y), rc);
	if (rc == SP_OK) {
		ck_assert(x.done == y.done);
		ck_assert_uint_eq(x.have, y.have);
		ck_assert_uint_eq(x.size, y.size);
		ck_assert_uint_eq(x.created, y.created);
		ck_assert_mem_eq(x.sha256, y.sha256, INBOX_SHA256_LEN);
		ck_assert_uint_eq(x.ndevices, y.ndevices);
		ck_assert(oplog_cmp_bytes(x.devices, 8 * x.ndevices, y.devices, 8 * y.ndevices));
		long n = inbox_store_blob_read(sa, ta, id, 0, bx, sizeof(bx));
		ck_assert_int_eq(n, (long)x.have);
		ck_assert_int_eq(inbox_store_blob_read(sb, tb, id, 0, by, sizeof(by)), n);
		ck_assert_mem_eq(bx, by, (size_t)n);
	}
	inbox_store_read_end(ta);
	inbox_store_read_end(tb);
}

/* The replica holds what the primary holds: queues, LAST_SEQS, shard figures, blobs. */
static void
same_state(void)
{
	inbox_shard_stat x = shard_stat(sa), y = shard_stat(sb);
	ck_assert_uint_eq(x.lsn, y.lsn);
	ck_assert_uint_eq(x.entries, y.entries);
	ck_assert_uint_eq(x.dedup, y.dedup);
	ck_assert_uint_eq(x.bodies, y.bodies);
	ck_assert_uint_eq(x.blobs, y.blobs);

	/* The queue index's devices and entries (its memory is not replicated state). */
	uint64_t qa[3], qb[3];
	inbox_store_queue_stat(sa, &qa[0], &qa[1], &qa[2]);
	inbox_store_queue_stat(sb, &qb[0], &qb[1], &qb[2]);
	ck_assert_uint_eq(qa[0], qb[0]);
	ck_assert_uint_eq(qa[1], qb[1]);
	ck_assert_uint_eq(qa[1], x.entries);

	for (size_t d = 0; d < sizeof(devices) / sizeof(devices[0]); d++) {
		uint64_t dev = devices[d];
		ck_assert_uint_eq(inbox_store_last_seq(sa, dev), inbox_store_last_seq(sb, dev));
		MDB_txn *ta, *tb;
		inbox_entry ea[16], eb[16];
		inbox_stat sta, stb;
		bool ma, mb;
		ck_assert_int_eq(inbox_store_read_begin(sa, &ta), SP_OK);
		ck_assert_int_eq(inbox_store_read_begin(sb, &tb), SP_OK);
		int n = inbox_store_fetch(sa, ta, dev, 0, 16, 1 << 20, ea, &ma);
		ck_assert_int_ge(n, 0);
		ck_assert_int_eq(inbox_store_fetch(sb, tb, dev, 0, 16, 1 << 20, eb, &mb), n);
		ck_assert(!ma && !mb);
		for (int i = 0; i < n; i++)
			same_entry(&ea[i], &eb[i]);
		ck_assert_int_eq(inbox_store_stat(sa, ta, dev, &sta), SP_OK);
		ck_assert_int_eq(inbox_store_stat(sb, tb, dev, &stb), SP_OK);
		ck_assert_uint_eq(sta.depth, stb.depth);
		ck_assert_uint_eq(sta.bytes, stb.bytes);
		ck_assert_uint_eq(sta.last_seq, stb.last_seq);
		ck_assert_uint_eq(sta.oldest_ts, stb.oldest_ts);
		inbox_store_read_end(ta);
		inbox_store_read_end(tb);
	}
	same_blob(blob1);
	same_blob(blob2);
}

/* A new (primary-style) append of `msg` from `from_device` to `device` on store s. */
static inbox_target
fresh_append(inbox_store *s, uint64_t device, uint64_t from_device, uint64_t msg, const char *body,
    uint64_t now)
{
	inbox_op op;
	inbox_target t;
	app_head(&op, from_device, msg, body, now);
	app_target(&op, &t, device, NULL);
	inbox_op *ops[1] = { &op };
	ck_assert_int_eq(inbox_store_write(s, ops, 1, now), SP_OK);
	ck_assert_int_eq(op.rc, SP_OK);
	return t;
}

/* Writes the scenario's named records as fuzz seeds under $SP_OPLOG_WRITE. */
static void
write_seeds(void)
{
	const char *root = getenv("SP_OPLOG_WRITE");
	char path[1024];
	if (!root)
		return;
	snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/oplog_fuzz", root);
	mkdir(path, 0755);
	for (size_t i = 0; i < nrecs; i++) {
		if (!recs[i].name)
			continue;
		snprintf(
		    path, sizeof(path), "%s/tests/fuzz/corpus/oplog_fuzz/%s", root, recs[i].name);
		FILE *f = fopen(path, "wb");
		ck_assert_ptr_nonnull(f);
		ck_assert_uint_eq(fwrite(recs[i].p, 1, recs[i].len, f), recs[i].len);
		ck_assert_int_eq(fclose(f), 0);
	}
}

START_TEST(round_trip_every_kind)
{
	scenario();
	write_seeds();
	int kinds[INBOX_OP_BLOB_FETCHED + 1] = { 0 };
	for (size_t i = 0; i < nrecs; i++)
		kinds[recs[i].p[1]]++;
	for (int k = INBOX_OP_APPEND; k <= INBOX_OP_BLOB_FETCHED; k++)
		ck_assert_int_gt(kinds[k], 0);

	sb = open_at(dir_b, CAP);
	replay_all(sb);
	same_state();
	ck_assert_uint_eq(shard_stat(sb).lsn, nrecs);
	ck_assert_uint_gt(shard_stat(sb).entries, 0);
	ck_assert_uint_gt(shard_stat(sb).bodies, 0);
	ck_assert_uint_eq(shard_stat(sb).blobs, 1);

	/* Both dedup alike: a later retry of a stored message gets its seq on both ... */
	inbox_target x = fresh_append(sa, 2, 7, 20, "group-body", 11300);
	inbox_target y = fresh_append(sb, 2, 7, 20, "group-body", 11300);
	ck_assert(x.dup && y.dup);
	ck_assert_uint_eq(x.seq, 2);
	ck_assert_uint_eq(y.seq, x.seq);
	x = fresh_append(sa, 4, 9, 41, "four", 11301);
	y = fresh_append(sb, 4, 9, 41, "four", 11301);
	ck_assert(x.dup && y.dup);
	ck_assert_uint_eq(y.seq, x.seq);
	/* ... and one whose dedup record the sweep removed is stored again, at the same seq. */
	x = fresh_append(sa, 1, 7, 3, "again", 11302);
	y = fresh_append(sb, 1, 7, 3, "again", 11302);
	ck_assert(!x.dup && !y.dup);
	ck_assert_uint_eq(x.seq, 4);
	ck_assert_uint_eq(y.seq, x.seq);
	same_state();

	/* The replica's copy is on disk: reopened (indexes rebuilt), it is still the same. */
	inbox_store_close(sb);
	sb = open_at(dir_b, CAP);
	same_state();
}
END_TEST

/* Replays the scenario on sb until a record fails; returns its index (nrecs if none). */
static size_t
replay_until_mismatch(int *apply_rc, int *check_rc)
{
	for (size_t i = 0; i < nrecs; i++) {
		*apply_rc = replay(sb, &recs[i], check_rc);
		if (*apply_rc != SP_OK || *check_rc != SP_OK)
			return i;
	}
	return nrecs;
}

START_TEST(replica_with_smaller_cap_stops)
{
	int rc, check;
	scenario();
	/* A target stored on the primary is full here: apply refuses the single append. */
	sb = open_at(dir_b, 2);
	ck_assert_uint_eq(replay_until_mismatch(&rc, &check), rec_fill3);
	ck_assert_int_eq(rc, SP_EFULL);
	ck_assert_int_eq(check, SP_EMISMATCH);
}
END_TEST

START_TEST(replica_with_larger_cap_stops)
{
	int rc, check;
	scenario();
	/* The batch's target that was full on the primary is stored here: apply succeeds,
	 * the outcome differs. */
	sb = open_at(dir_b, 100);
	ck_assert_uint_eq(replay_until_mismatch(&rc, &check), rec_batch);
	ck_assert_int_eq(rc, SP_OK);
	ck_assert_int_eq(check, SP_EMISMATCH);
}
END_TEST

START_TEST(replica_with_an_extra_op_stops)
{
	int rc, check;
	scenario();
	sb = open_at(dir_b, CAP);
	fresh_append(sb, 1, 7, 500, "extra", 999);
	ck_assert_uint_eq(replay_until_mismatch(&rc, &check), 0);
	ck_assert_int_eq(rc, SP_EMISMATCH); /* the LSN */
	ck_assert_int_eq(check, SP_EMISMATCH);
	ck_assert_uint_eq(shard_stat(sb).lsn, 1);
}
END_TEST

/* Decodes the batch record, lets `tamper` change it, and replays it after the records
 * before it on a faithful replica. */
static void
replay_tampered(void (*tamper)(inbox_oplog_rec *), int want_apply)
{
	scenario();
	sb = open_at(dir_b, CAP);
	for (size_t i = 0; i < rec_batch; i++) {
		int check;
		ck_assert_int_eq(replay(sb, &recs[i], &check), SP_OK);
		ck_assert_int_eq(check, SP_OK);
	}
	inbox_oplog_rec d;
	ck_assert_int_eq(inbox_oplog_decode(recs[rec_batch].p, recs[rec_batch].len, &d), SP_OK);
	tamper(&d);
	inbox_op *ops[1] = { &d.op };
	uint64_t lsn = shard_stat(sb).lsn;
	ck_assert_int_eq(inbox_store_write(sb, ops, 1, 1), SP_OK);
	ck_assert_int_eq(d.op.rc, want_apply);
	ck_assert_int_eq(inbox_oplog_check(&d), SP_EMISMATCH);
	inbox_oplog_fini(&d);
	if (want_apply != SP_OK)
		ck_assert_uint_eq(shard_stat(sb).lsn, lsn);
}

static void
bump_seq(inbox_oplog_rec *d)
{
	d->op.append.targets[0].seq++;
	d->seqs[0]++;
}

static void
bump_body_id(inbox_oplog_rec *d)
{
	d->op.append.body_id++;
}

static void
bump_recorded_dup_seq(inbox_oplog_rec *d)
{
	ck_assert_uint_eq(d->outcome[2], 1);
	d->seqs[2]++;
}

static void
say_stored(inbox_oplog_rec *d)
{
	d->outcome[2] = 0; /* the dup target */
}

START_TEST(replica_refuses_other_seq)
{
	replay_tampered(bump_seq, SP_EMISMATCH);
}
END_TEST

START_TEST(replica_refuses_other_body_id)
{
	replay_tampered(bump_body_id, SP_EMISMATCH);
}
END_TEST

START_TEST(replica_refuses_other_outcome)
{
	replay_tampered(bump_recorded_dup_seq, SP_OK);
	teardown();
	setup();
	replay_tampered(say_stored, SP_OK);
}
END_TEST

/* ---- hostile records ---- */

typedef struct bld {
	uint8_t *p;
	size_t n, cap;
} bld;

static void
b_bytes(bld *b, const void *src, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2;
		b->p = realloc(b->p, b->cap);
		ck_assert_ptr_nonnull(b->p);
	}
	if (n)
		memcpy(b->p + b->n, src, n);
	b->n += n;
}

static void
b_u8(bld *b, uint8_t v)
{
	b_bytes(b, &v, 1);
}

static void
b_u32(bld *b, uint32_t v)
{
	uint8_t x[4];
	sp_be32_put(x, v);
	b_bytes(b, x, 4);
}

static void
b_u64(bld *b, uint64_t v)
{
	uint8_t x[8];
	sp_be64_put(x, v);
	b_bytes(b, x, 8);
}

static void
b_head(bld *b, uint8_t version, uint8_t kind, uint64_t lsn, uint64_t ts)
{
	b->n = 0;
	b_u8(b, version);
	b_u8(b, kind);
	b_u64(b, lsn);
	b_u64(b, ts);
}

/* An APPEND up to its target count: `flags`, body "body" (or body_len claimed). */
static void
b_append(bld *b, uint8_t flags, uint32_t body_len)
{
	static const uint8_t id[16] = { 9 };
	b_head(b, 1, INBOX_OP_APPEND, 1, 1000);
	b_bytes(b, id, 16);
	for (int i = 0; i < 5; i++)
		b_u64(b, (uint64_t)i + 1);
	b_u8(b, flags);
	b_u64(b, flags & 2 ? 1 : 0);
	b_u32(b, body_len);
	b_bytes(b, "body", body_len < 4 ? body_len : 4);
}

static void
b_target(bld *b, uint64_t device, uint64_t seq, uint8_t outcome, const char *ct)
{
	b_u64(b, device);
	b_u64(b, seq);
	b_u8(b, outcome);
	b_u32(b, ct ? (uint32_t)strlen(ct) : 0);
	if (ct)
		b_bytes(b, ct, strlen(ct));
}

/* Decodes n bytes from a heap copy of exactly that size (so ASan sees any overread);
 * returns the result, checking a failed decode left the record empty. */
static int
decode_copy(const uint8_t *p, size_t n)
{
	static const inbox_oplog_rec zero;
	uint8_t *q = malloc(n ? n : 1);
	ck_assert_ptr_nonnull(q);
	if (n)
		memcpy(q, p, n);
	inbox_oplog_rec r;
	memset(&r, 0xa5, sizeof(r));
	int rc = inbox_oplog_decode(q, n, &r);
	if (rc != SP_OK)
		ck_assert(memcmp(&r, &zero, sizeof(r)) == 0);
	inbox_oplog_fini(&r);
	free(q);
	return rc;
}

START_TEST(every_truncation_is_refused)
{
	scenario();
	size_t prefixes = 0;
	for (size_t i = 0; i < nrecs; i++) {
		ck_assert_int_eq(decode_copy(recs[i].p, recs[i].len), SP_OK);
		for (size_t n = 0; n < recs[i].len; n++, prefixes++) {
			int rc = decode_copy(recs[i].p, n);
			ck_assert_msg(rc == SP_ETRUNC, "record %zu (kind %u), %zu of %zu bytes: %s",
			    i, recs[i].p[1], n, recs[i].len, sp_strerror(rc));
		}
	}
	ck_assert_uint_gt(prefixes, 1000);
}
END_TEST

START_TEST(trailing_bytes_are_refused)
{
	scenario();
	for (size_t i = 0; i < nrecs; i++) {
		uint8_t *p = malloc(recs[i].len + 8);
		ck_assert_ptr_nonnull(p);
		memcpy(p, recs[i].p, recs[i].len);
		memset(p + recs[i].len, 0, 8);
		ck_assert_int_eq(decode_copy(p, recs[i].len + 1), SP_EMALFORMED);
		ck_assert_int_eq(decode_copy(p, recs[i].len + 8), SP_EMALFORMED);
		free(p);
	}
}
END_TEST

START_TEST(bad_header_is_refused)
{
	bld b = { 0 };
	static const uint8_t versions[] = { 0, 2, 255 }, kinds[] = { 0, 8, 255 };
	for (size_t i = 0; i < sizeof(versions); i++) {
		b_head(&b, versions[i], INBOX_OP_PURGE, 1, 1);
		b_u64(&b, 5);
		ck_assert_int_eq(decode_copy(b.p, b.n), SP_EMALFORMED);
	}
	for (size_t i = 0; i < sizeof(kinds); i++) {
		b_head(&b, 1, kinds[i], 1, 1);
		b_u64(&b, 5);
		ck_assert_int_eq(decode_copy(b.p, b.n), SP_EMALFORMED);
	}
	b_head(&b, 1, INBOX_OP_PURGE, 0, 1); /* lsn 0 */
	b_u64(&b, 5);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_EMALFORMED);
	b_head(&b, 1, INBOX_OP_PURGE, 1, 0); /* ts 0 */
	b_u64(&b, 5);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_EMALFORMED);
	b_head(&b, 1, INBOX_OP_PURGE, UINT64_MAX, UINT64_MAX);
	b_u64(&b, 5);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_OK);
	free(b.p);
}
END_TEST

START_TEST(bad_append_is_refused)
{
	bld b = { 0 };
	static const uint8_t flags[] = { 4, 8, 0x80, 0xff };
	for (size_t i = 0; i < sizeof(flags); i++) {
		b_append(&b, flags[i], 4);
		b_u32(&b, 1);
		b_target(&b, 1, 1, 0, NULL);
		ck_assert_int_eq(decode_copy(b.p, b.n), SP_EMALFORMED);
	}
	for (uint8_t f = 0; f < 4; f++) { /* every known flag combination */
		b_append(&b, f, 4);
		b_u32(&b, 1);
		b_target(&b, 1, 1, 0, "ct");
		ck_assert_int_eq(decode_copy(b.p, b.n), SP_OK);
	}
	static const uint8_t outcomes[] = { 3, 4, 255 };
	for (size_t i = 0; i < sizeof(outcomes); i++) {
		b_append(&b, 2, 4);
		b_u32(&b, 2);
		b_target(&b, 1, 1, 0, NULL);
		b_target(&b, 2, 1, outcomes[i], NULL);
		ck_assert_int_eq(decode_copy(b.p, b.n), SP_EMALFORMED);
	}
	for (uint8_t f = 0; f < 4; f++) { /* no targets */
		b_append(&b, f, 4);
		b_u32(&b, 0);
		ck_assert_int_eq(decode_copy(b.p, b.n), SP_EMALFORMED);
	}
	for (uint8_t f = 0; f < 2; f++) { /* two targets, not shared */
		b_append(&b, f, 4);
		b_u32(&b, 2);
		b_target(&b, 1, 1, 0, NULL);
		b_target(&b, 2, 1, 0, NULL);
		ck_assert_int_eq(decode_copy(b.p, b.n), SP_EMALFORMED);
	}
	/* Counts past the limit, whatever follows. */
	static const uint32_t over[] = { INBOX_OPLOG_MAX_TARGETS + 1, 65536, 65537, UINT32_MAX };
	for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++) {
		b_append(&b, 2, 4);
		b_u32(&b, over[i]);
		b_target(&b, 1, 1, 0, NULL);
		ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETOOBIG);
	}
	/* Counts and lengths past the bytes present. */
	b_append(&b, 2, 4);
	b_u32(&b, 3);
	b_target(&b, 1, 1, 0, NULL);
	b_target(&b, 2, 1, 0, NULL);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	b_append(&b, 2, 4);
	b_u32(&b, INBOX_OPLOG_MAX_TARGETS);
	b_target(&b, 1, 1, 0, NULL);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	b_append(&b, 0, 100); /* body_len 100: 4 bytes, then a target */
	b_u32(&b, 1);
	b_target(&b, 1, 1, 0, NULL);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	b_append(&b, 0, UINT32_MAX);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	b_append(&b, 0, 4);
	b_u32(&b, 1);
	b_target(&b, 1, 1, 0, "ct");
	sp_be32_put(b.p + b.n - 6, 3); /* ct_len 3, 2 bytes */
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	sp_be32_put(b.p + b.n - 6, UINT32_MAX);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	free(b.p);
}
END_TEST

START_TEST(largest_batch_decodes_and_applies)
{
	/* INBOX_OPLOG_MAX_TARGETS targets: the most the store applies in one op. */
	bld b = { 0 };
	b_append(&b, 2, 4);
	sp_be64_put(b.p + b.n - 16, 0); /* body id: assigned by the replica's apply */
	b_u32(&b, INBOX_OPLOG_MAX_TARGETS);
	for (uint32_t i = 0; i < INBOX_OPLOG_MAX_TARGETS; i++)
		b_target(&b, 100 + i, 1, 0, NULL);
	inbox_oplog_rec d;
	ck_assert_int_eq(inbox_oplog_decode(b.p, b.n, &d), SP_OK);
	ck_assert_uint_eq(d.op.append.ntargets, INBOX_OPLOG_MAX_TARGETS);
	inbox_op *ops[1] = { &d.op };
	ck_assert_int_eq(inbox_store_write(sa, ops, 1, 1), SP_OK);
	ck_assert_int_eq(d.op.rc, SP_OK);
	ck_assert_int_eq(inbox_oplog_check(&d), SP_OK);
	inbox_oplog_fini(&d);
	ck_assert_uint_eq(shard_stat(sa).entries, INBOX_OPLOG_MAX_TARGETS);
	free(b.p);
}
END_TEST

START_TEST(bad_lists_are_refused)
{
	bld b = { 0 };
	static const uint8_t blob[16] = { 1 }, sha[32] = { 2 };

	/* ACK: seqs past the limit, past the bytes; none but a seq follows. */
	b_head(&b, 1, INBOX_OP_ACK, 1, 1);
	b_u64(&b, 1);
	b_u64(&b, 0);
	size_t at = b.n;
	b_u32(&b, INBOX_OPLOG_MAX_LIST + 1);
	b_u64(&b, 1);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETOOBIG);
	sp_be32_put(b.p + at, UINT32_MAX);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETOOBIG);
	sp_be32_put(b.p + at, 2);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	sp_be32_put(b.p + at, INBOX_OPLOG_MAX_LIST);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	sp_be32_put(b.p + at, 0);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_EMALFORMED);
	sp_be32_put(b.p + at, 1);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_OK);
	/* The longest list decodes. */
	b.n = at;
	b_u32(&b, INBOX_OPLOG_MAX_LIST);
	for (uint32_t i = 0; i < INBOX_OPLOG_MAX_LIST; i++)
		b_u64(&b, i + 1);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_OK);

	/* BLOB_DONE: the same for its device list. */
	b_head(&b, 1, INBOX_OP_BLOB_DONE, 1, 1);
	b_bytes(&b, blob, 16);
	b_u64(&b, 10);
	b_bytes(&b, sha, 32);
	at = b.n;
	b_u32(&b, INBOX_OPLOG_MAX_LIST + 1);
	for (int i = 0; i < 4; i++)
		b_u64(&b, 11);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETOOBIG);
	sp_be32_put(b.p + at, 5);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	sp_be32_put(b.p + at, 3);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_EMALFORMED);
	sp_be32_put(b.p + at, 4);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_OK);
	b.n = at;
	b_u32(&b, 0);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_OK);

	/* BLOB_PUT: a length past the bytes. */
	b_head(&b, 1, INBOX_OP_BLOB_PUT, 1, 1);
	b_bytes(&b, blob, 16);
	b_u64(&b, 0);
	at = b.n;
	b_u32(&b, 4);
	b_bytes(&b, "abc", 3);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	sp_be32_put(b.p + at, UINT32_MAX);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_ETRUNC);
	sp_be32_put(b.p + at, 3);
	ck_assert_int_eq(decode_copy(b.p, b.n), SP_OK);
	free(b.p);
}
END_TEST

/* ---- the committed fixtures ---- */

typedef struct fixture {
	const char *name;
	int want;
	void (*build)(bld *b);
} fixture;

static void
fx_bad_version(bld *b)
{
	b_head(b, 2, INBOX_OP_PURGE, 1, 1000);
	b_u64(b, 5);
}

static void
fx_unknown_kind(bld *b)
{
	b_head(b, 1, 8, 1, 1000);
	b_u64(b, 5);
}

static void
fx_lsn_zero(bld *b)
{
	b_head(b, 1, INBOX_OP_PURGE, 0, 1000);
	b_u64(b, 5);
}

static void
fx_ts_zero(bld *b)
{
	b_head(b, 1, INBOX_OP_PURGE, 1, 0);
	b_u64(b, 5);
}

static void
fx_append_unknown_flag(bld *b)
{
	b_append(b, 4, 4);
	b_u32(b, 1);
	b_target(b, 1, 1, 0, NULL);
}

static void
fx_append_outcome_3(bld *b)
{
	b_append(b, 2, 4);
	b_u32(b, 2);
	b_target(b, 1, 1, 0, NULL);
	b_target(b, 2, 0, 3, NULL);
}

static void
fx_append_no_targets(bld *b)
{
	b_append(b, 2, 4);
	b_u32(b, 0);
}

static void
fx_append_two_targets_unshared(bld *b)
{
	b_append(b, 0, 4);
	b_u32(b, 2);
	b_target(b, 1, 1, 0, NULL);
	b_target(b, 2, 1, 0, NULL);
}

static void
fx_append_targets_over_limit(bld *b)
{
	b_append(b, 2, 4);
	b_u32(b, INBOX_OPLOG_MAX_TARGETS + 1);
	b_target(b, 1, 1, 0, NULL);
}

static void
fx_append_ct_past_end(bld *b)
{
	b_append(b, 0, 4);
	b_u32(b, 1);
	b_target(b, 1, 1, 0, "ct");
	sp_be32_put(b->p + b->n - 6, 1000);
}

static void
fx_ack_count_past_end(bld *b)
{
	b_head(b, 1, INBOX_OP_ACK, 1, 1000);
	b_u64(b, 1);
	b_u64(b, 0);
	b_u32(b, 1000);
	b_u64(b, 1);
}

static void
fx_blob_done_list_over_limit(bld *b)
{
	static const uint8_t blob[16] = { 1 }, sha[32] = { 2 };
	b_head(b, 1, INBOX_OP_BLOB_DONE, 1, 1000);
	b_bytes(b, blob, 16);
	b_u64(b, 10);
	b_bytes(b, sha, 32);
	b_u32(b, INBOX_OPLOG_MAX_LIST + 1);
	b_u64(b, 11);
}

static void
fx_trailing_byte(bld *b)
{
	b_head(b, 1, INBOX_OP_PURGE, 1, 1000);
	b_u64(b, 5);
	b_u8(b, 0);
}

static const fixture fixtures[] = {
	{ "bad_version.bin", SP_EMALFORMED, fx_bad_version },
	{ "unknown_kind.bin", SP_EMALFORMED, fx_unknown_kind },
	{ "lsn_zero.bin", SP_EMALFORMED, fx_lsn_zero },
	{ "ts_zero.bin", SP_EMALFORMED, fx_ts_zero },
	{ "append_unknown_flag.bin", SP_EMALFORMED, fx_append_unknown_flag },
	{ "append_outcome_3.bin", SP_EMALFORMED, fx_append_outcome_3 },
	{ "append_no_targets.bin", SP_EMALFORMED, fx_append_no_targets },
	{ "append_two_targets_unshared.bin", SP_EMALFORMED, fx_append_two_targets_unshared },
	{ "append_targets_over_limit.bin", SP_ETOOBIG, fx_append_targets_over_limit },
	{ "append_ct_past_end.bin", SP_ETRUNC, fx_append_ct_past_end },
	{ "ack_count_past_end.bin", SP_ETRUNC, fx_ack_count_past_end },
	{ "blob_done_list_over_limit.bin", SP_ETOOBIG, fx_blob_done_list_over_limit },
	{ "trailing_byte.bin", SP_EMALFORMED, fx_trailing_byte },
};

START_TEST(malformed_fixtures_are_refused)
{
	const char *root = getenv("SP_OPLOG_WRITE");
	char path[1024];
	if (root) {
		snprintf(path, sizeof(path), "%s/tests/fixtures/oplog_malformed", root);
		mkdir(path, 0755);
	}
	for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++) {
		bld b = { 0 };
		fixtures[i].build(&b);
		if (root) {
			snprintf(path, sizeof(path), "%s/tests/fixtures/oplog_malformed/%s", root,
			    fixtures[i].name);
			FILE *f = fopen(path, "wb");
			ck_assert_ptr_nonnull(f);
			ck_assert_uint_eq(fwrite(b.p, 1, b.n, f), b.n);
			ck_assert_int_eq(fclose(f), 0);
		}
		free(b.p);
		char name[128];
		snprintf(name, sizeof(name), "oplog_malformed/%s", fixtures[i].name);
		size_t len;
		uint8_t *p = fixture_read(name, &len);
		int rc = decode_copy(p, len);
		ck_assert_msg(rc == fixtures[i].want, "%s: %s, want %s", fixtures[i].name,
		    sp_strerror(rc), sp_strerror(fixtures[i].want));
		free(p);
	}
}
END_TEST

START_TEST(encode_refuses_what_it_cannot_write)
{
	inbox_target t = { .device = 1 };
	inbox_op op = { .kind = INBOX_OP_APPEND, .ts = 1 };
	uint8_t buf[256];
	op.append.targets = &t;
	op.append.ntargets = 1;
	ck_assert_int_eq(inbox_oplog_encode(&op, buf, sizeof(buf)), SP_EINVAL); /* lsn 0 */
	op.lsn = 1;
	ck_assert_int_gt(inbox_oplog_encode(&op, buf, sizeof(buf)), 0);
	op.append.ntargets = 0;
	ck_assert_uint_eq(inbox_oplog_size(&op), 0);
	ck_assert_int_eq(inbox_oplog_encode(&op, buf, sizeof(buf)), SP_EINVAL);
	op.append.ntargets = INBOX_OPLOG_MAX_TARGETS + 1;
	ck_assert_int_eq(inbox_oplog_encode(&op, buf, sizeof(buf)), SP_EINVAL);
	inbox_op a = { .kind = INBOX_OP_ACK, .lsn = 1, .ts = 1 };
	a.ack.nseqs = INBOX_OPLOG_MAX_LIST + 1;
	ck_assert_int_eq(inbox_oplog_encode(&a, buf, sizeof(buf)), SP_EINVAL);
	inbox_op k = { .kind = 99, .lsn = 1, .ts = 1 };
	ck_assert_int_eq(inbox_oplog_encode(&k, buf, sizeof(buf)), SP_EINVAL);
	inbox_oplog_fini(NULL);
}
END_TEST

static Suite *
suite(void)
{
	Suite *s = suite_create("inbox_oplog");
	TCase *tc = tcase_create("oplog");
	tcase_add_checked_fixture(tc, setup, teardown);
	/* Each test commits a few dozen synchronous transactions; slow under valgrind. */
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, round_trip_every_kind);
	tcase_add_test(tc, replica_with_smaller_cap_stops);
	tcase_add_test(tc, replica_with_larger_cap_stops);
	tcase_add_test(tc, replica_with_an_extra_op_stops);
	tcase_add_test(tc, replica_refuses_other_seq);
	tcase_add_test(tc, replica_refuses_other_body_id);
	tcase_add_test(tc, replica_refuses_other_outcome);
	tcase_add_test(tc, every_truncation_is_refused);
	tcase_add_test(tc, trailing_bytes_are_refused);
	tcase_add_test(tc, bad_header_is_refused);
	tcase_add_test(tc, bad_append_is_refused);
	tcase_add_test(tc, largest_batch_decodes_and_applies);
	tcase_add_test(tc, bad_lists_are_refused);
	tcase_add_test(tc, malformed_fixtures_are_refused);
	tcase_add_test(tc, encode_refuses_what_it_cannot_write);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
