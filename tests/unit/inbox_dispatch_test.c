/* Unit tests of the inbox request dispatcher with a real store and group-commit writer,
 * no sockets: malformed and out-of-range requests get ERROR{code} and leave data alone;
 * well-formed requests get their replies. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <msgpack.h>
#include <sodium.h>

#include "inboxsrv/commit.h"
#include "inboxsrv/dispatch.h"
#include "inboxsrv/repl.h"
#include "inboxsrv/store.h"
#include "sp_error.h"
#include "sp_frame.h"
#include "sp_nng.h"
#include "tests/unit/inbox_fixture.h"
#include "check_run.h"

static char dir[64];
static inbox_store *st;
static inbox_commit *cm;
static inbox_dispatch *dp;

typedef struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	nng_msg *reply;
	int calls;
} waiter;

static void
on_reply(void *arg, nng_msg *m)
{
	waiter *w = arg;
	pthread_mutex_lock(&w->lock);
	w->reply = m;
	w->calls++;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

/* Sends raw bytes; returns the reply message (caller frees) after exactly one reply. */
static nng_msg *
call_raw(const void *p, size_t len)
{
	waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0 };
	nng_msg *m;
	ck_assert_int_eq(nng_msg_alloc(&m, 0), 0);
	ck_assert_int_eq(nng_msg_append(m, p, len), 0);
	inbox_dispatch_handle(dp, m, on_reply, &w);
	pthread_mutex_lock(&w.lock);
	while (w.calls == 0)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);
	usleep(1000);
	ck_assert_int_eq(w.calls, 1);
	ck_assert_ptr_nonnull(w.reply);
	return w.reply;
}

static nng_msg *
call(const sp_frame *f, sp_frame *rep)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	ck_assert_int_eq(sp_frame_pack(f, &sb), SP_OK);
	nng_msg *m = call_raw(sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
	ck_assert_int_eq(sp_nng_msg_decode(m, rep), SP_OK);
	return m;
}

/* The ERROR code of a reply, or 0 if it is not an ERROR. */
static int
err_code(nng_msg *m)
{
	sp_frame f;
	ck_assert_int_eq(sp_nng_msg_decode(m, &f), SP_OK);
	int code = f.type == SP_T_ERROR ? (int)sp_frame_i64(&f, SP_F_CODE) : 0;
	sp_frame_fini(&f);
	nng_msg_free(m);
	return code;
}

/* The ERROR code of the reply to `f` (0 if it is not an ERROR). */
static int
call_code(const sp_frame *f)
{
	sp_frame rep;
	nng_msg *m = call(f, &rep);
	sp_frame_fini(&rep);
	return err_code(m);
}

static int
raw_err(const void *p, size_t len)
{
	return err_code(call_raw(p, len));
}

/* Malformed requests as they arrive on the wire, in tests/fixtures/inbox_malformed/, and
 * the ERROR code each one gets. Cases whose point is their size (over a length or count
 * bound, over the frame limit) stay built in code below: as files they are 46 KB and up
 * of filler. */
typedef struct malformed_case {
	const char *file;
	int code;
} malformed_case;

/* The ERROR code of the reply to the request in fixture `file`. */
static int
fixture_err(const char *file)
{
	char name[128];
	size_t len;
	snprintf(name, sizeof(name), "inbox_malformed/%s", file);
	uint8_t *p = fixture_read(name, &len);
	int code = raw_err(p, len);
	free(p);
	return code;
}

static void
expect_fixture_errs(const malformed_case *cases, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(fixture_err(cases[i].file) == cases[i].code, "%s: want %s",
		    cases[i].file, sp_strerror(cases[i].code));
}

/* Packs a map by hand (for frames the encoder would refuse to build). */
static int
map_err(void (*build)(msgpack_packer *))
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	build(&pk);
	int code = raw_err(sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
	return code;
}

static void
key(msgpack_packer *pk, const char *k)
{
	msgpack_pack_str(pk, strlen(k));
	msgpack_pack_str_body(pk, k, strlen(k));
}

static uint64_t cap_entries = 5;
static uint64_t disk_reserve;

static void
setup(void)
{
	strcpy(dir, "/tmp/inbox_dispatch_test.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	inbox_store_config cfg = { .dir = dir,
		.map_size = 64u << 20,
		.max_queue_entries = cap_entries,
		.max_queue_bytes = 64 << 20,
		.msg_ttl_ms = 60000,
		.media_ttl_ms = 60000,
		.max_blob_size = 4096,
		.max_readers = 16 };
	inbox_commit_config ccfg = { .disk_reserve = disk_reserve };
	inbox_dispatch_config dcfg = { .shard = 3 };
	ck_assert_int_eq(inbox_store_open(&st, &cfg), SP_OK);
	ck_assert_int_eq(inbox_commit_start(&cm, st, &ccfg), SP_OK);
	ck_assert_int_eq(inbox_dispatch_new(&dp, st, cm, &dcfg), SP_OK);
}

static void
teardown(void)
{
	char cmd[128];
	inbox_commit_stop(cm);
	inbox_dispatch_free(dp);
	inbox_store_close(st);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static void
append_frame(sp_frame *f, uint64_t device, uint8_t msg, const void *env, size_t len)
{
	static uint8_t ids[256][16];
	memset(ids[msg], msg, 16);
	sp_frame_init(f, SP_T_APPEND, 1000 + msg, true);
	sp_frame_set_u64(f, SP_F_DEVICE, device);
	sp_frame_set_bin(f, SP_F_MSG_ID, ids[msg], 16);
	sp_frame_set_u64(f, SP_F_FROM_USER, 9);
	sp_frame_set_u64(f, SP_F_FROM_DEVICE, 90);
	sp_frame_set_u64(f, SP_F_SERVER_TS, 123);
	sp_frame_set_u64(f, SP_F_ETYPE, 2);
	sp_frame_set_bin(f, SP_F_ENV, env, len);
}

static uint64_t
append_ok(uint64_t device, uint8_t msg)
{
	sp_frame f, rep;
	append_frame(&f, device, msg, "hello", 5);
	nng_msg *m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_APPENDED);
	ck_assert(rep.has_id);
	ck_assert_uint_eq(rep.id, 1000 + msg);
	uint64_t seq = sp_frame_u64(&rep, SP_F_SEQ);
	sp_frame_fini(&rep);
	nng_msg_free(m);
	return seq;
}

static uint64_t
depth(uint64_t device)
{
	sp_frame f, rep;
	sp_frame_init(&f, SP_T_STAT, 1, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, device);
	nng_msg *m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_STAT_R);
	ck_assert_uint_eq(sp_frame_u64(&rep, SP_F_SHARD), 3);
	uint64_t d = sp_frame_u64(&rep, SP_F_DEPTH);
	sp_frame_fini(&rep);
	nng_msg_free(m);
	return d;
}

/* Entries in the whole shard (STAT without a device). */
static uint64_t
shard_entries(void)
{
	sp_frame f, rep;
	sp_frame_init(&f, SP_T_STAT, 1, true);
	nng_msg *m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_STAT_R);
	uint64_t d = sp_frame_u64(&rep, SP_F_SHARD_DEPTH);
	sp_frame_fini(&rep);
	nng_msg_free(m);
	return d;
}

START_TEST(garbage_gets_error_codes)
{
	static const malformed_case cases[] = {
		{ "junk.bin", SP_EMALFORMED },
		{ "empty.bin", SP_ETRUNC },
		{ "empty_map.bin", SP_EMISSING },
		{ "no_type.bin", SP_EMISSING },
		{ "unused_type.bin", SP_EBADTYPE },
		{ "record_type.bin", SP_EBADTYPE },
		{ "trailing_byte.bin", SP_ETRAILING },
		{ "client_type.bin", SP_EBADTYPE },
	};
	expect_fixture_errs(cases, sizeof(cases) / sizeof(cases[0]));
	uint8_t *huge = calloc(1, sp_frame_limit_large() + 1);
	ck_assert_int_eq(raw_err(huge, sp_frame_limit_large() + 1), SP_ETOOBIG);
	free(huge);
	ck_assert_uint_eq(depth(1), 0);
}
END_TEST

/* The dispatch table serves exactly the requests of frames_inbox.def plus PING; every
 * served type is a top-level frame of the catalogue. */
START_TEST(table_serves_the_inbox_requests)
{
	static const unsigned want[] = { SP_T_APPEND, SP_T_APPEND_BATCH, SP_T_APPEND_MULTI,
		SP_T_FETCH, SP_T_INBOX_ACK, SP_T_STAT, SP_T_PURGE, SP_T_BLOB_PUT, SP_T_BLOB_DONE,
		SP_T_BLOB_GET, SP_T_LAST_SEQS, SP_T_PING };
	unsigned served = 0;
	for (unsigned t = 0; t < 300; t++) {
		bool expected = false;
		for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
			expected = expected || want[i] == t;
		ck_assert_msg(
		    inbox_dispatch_serves(t) == expected, "type %u (%s)", t, sp_frame_type_name(t));
		if (!expected)
			continue;
		const sp_frame_def *def = sp_frame_def_get(t);
		ck_assert_ptr_nonnull(def);
		ck_assert(!(def->flags & SP_FL_RECORD));
		/* The catalogue's serve column names the shard (PING: every tier answers it). */
		ck_assert_msg(def->tier == SP_TIER_INBOX || t == SP_T_PING, "%s", def->name);
		served++;
	}
	ck_assert_uint_eq(served, sizeof(want) / sizeof(want[0]));
	for (unsigned t = 0; t < 256; t++) {
		const sp_frame_def *def = sp_frame_def_get(t);
		if (def && def->tier == SP_TIER_INBOX)
			ck_assert_msg(inbox_dispatch_serves(t), "%s has no handler", def->name);
		/* The replication endpoint serves exactly the catalogue's REPL frames. */
		ck_assert_msg(inbox_repl_serves(t) == (def && def->tier == SP_TIER_REPL), "type %u", t);
	}

	/* A well-formed frame the shard does not serve (a reply type) is an ERROR. */
	sp_frame f;
	sp_frame_init(&f, SP_T_APPENDED, 1, true);
	sp_frame_set_u64(&f, SP_F_SEQ, 1);
	ck_assert_int_eq(call_code(&f), SP_EBADTYPE);
	sp_frame_init(&f, SP_T_PING, 2, true);
	ck_assert_int_eq(call_code(&f), 0);
}
END_TEST

/* The seven APPEND fields before env, without the map header. */
static void
append_head(msgpack_packer *pk)
{
	static const uint8_t id[16];
	key(pk, "t");
	msgpack_pack_uint64(pk, SP_T_APPEND);
	key(pk, "device");
	msgpack_pack_uint64(pk, 1);
	key(pk, "msg_id");
	msgpack_pack_bin(pk, 16);
	msgpack_pack_bin_body(pk, id, 16);
	key(pk, "from_user");
	msgpack_pack_uint64(pk, 1);
	key(pk, "from_device");
	msgpack_pack_uint64(pk, 1);
	key(pk, "server_ts");
	msgpack_pack_uint64(pk, 1);
	key(pk, "etype");
	msgpack_pack_uint64(pk, 1);
}

static void
append_valid_by_hand(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 8);
	append_head(pk);
	key(pk, "env");
	msgpack_pack_bin(pk, 1);
	msgpack_pack_bin_body(pk, "e", 1);
}

static void
append_oversize_env(msgpack_packer *pk)
{
	static uint8_t env[65537];
	msgpack_pack_map(pk, 8);
	append_head(pk);
	key(pk, "env");
	msgpack_pack_bin(pk, sizeof(env));
	msgpack_pack_bin_body(pk, env, sizeof(env));
}

static void
batch_too_many_targets(msgpack_packer *pk)
{
	static const uint8_t id[16];
	msgpack_pack_map(pk, 8);
	key(pk, "t");
	msgpack_pack_uint64(pk, SP_T_APPEND_BATCH);
	key(pk, "msg_id");
	msgpack_pack_bin(pk, 16);
	msgpack_pack_bin_body(pk, id, 16);
	key(pk, "from_user");
	msgpack_pack_uint64(pk, 1);
	key(pk, "from_device");
	msgpack_pack_uint64(pk, 1);
	key(pk, "server_ts");
	msgpack_pack_uint64(pk, 1);
	key(pk, "etype");
	msgpack_pack_uint64(pk, 1);
	key(pk, "body");
	msgpack_pack_bin(pk, 1);
	msgpack_pack_bin_body(pk, "b", 1);
	key(pk, "targets");
	msgpack_pack_array(pk, 5121);
	for (int i = 0; i < 5121; i++) {
		msgpack_pack_map(pk, 1);
		key(pk, "device");
		msgpack_pack_uint64(pk, 1);
	}
}

START_TEST(bad_fields_get_error_codes)
{
	static const malformed_case cases[] = {
		{ "append_missing_env.bin", SP_EMISSING },
		{ "append_short_msg_id.bin", SP_EFIELDLEN },
		{ "fetch_string_device.bin", SP_EFIELDTYPE },
		{ "fetch_unknown_field.bin", SP_EUNKNOWNFIELD },
	};
	expect_fixture_errs(cases, sizeof(cases) / sizeof(cases[0]));
	ck_assert_int_eq(map_err(append_oversize_env), SP_EFIELDLEN);
	ck_assert_int_eq(map_err(batch_too_many_targets), SP_EFIELDLEN);
	ck_assert_uint_eq(depth(1), 0);
	/* A well-formed append still works afterwards. */
	ck_assert_uint_eq(map_err(append_valid_by_hand), 0);
	ck_assert_uint_eq(depth(1), 1);
}
END_TEST

START_TEST(semantic_errors)
{
	sp_frame f, rep;
	nng_msg *m;
	uint8_t id[16] = { 7 }, sha[32] = { 0 };

	/* ACK needs exactly one of upto_seq and seqs. */
	sp_frame_init(&f, SP_T_INBOX_ACK, 1, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, 1);
	ck_assert_int_eq(call_code(&f), SP_EMISSING);
	uint64_t seqs[] = { 1 };
	sp_frame_set_u64(&f, SP_F_UPTO_SEQ, 1);
	sp_frame_set_u64s(&f, SP_F_SEQS, seqs, 1);
	ck_assert_int_eq(call_code(&f), SP_EINVAL);

	/* Blobs: a gap, over the size limit, unknown, not complete, bad digest. */
	sp_frame_init(&f, SP_T_BLOB_PUT, 2, true);
	sp_frame_set_bin(&f, SP_F_BLOB_ID, id, 16);
	sp_frame_set_u64(&f, SP_F_OFFSET, 10);
	sp_frame_set_bin(&f, SP_F_BYTES, "abc", 3);
	ck_assert_int_eq(call_code(&f), SP_EGAP);
	sp_frame_set_u64(&f, SP_F_OFFSET, 4095);
	ck_assert_int_eq(call_code(&f), SP_ETOOBIG);
	sp_frame_set_u64(&f, SP_F_OFFSET, 0);
	m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_BLOB_STORED);
	ck_assert_uint_eq(sp_frame_u64(&rep, SP_F_SIZE), 3);
	sp_frame_fini(&rep);
	nng_msg_free(m);

	sp_frame_init(&f, SP_T_BLOB_GET, 3, true);
	sp_frame_set_bin(&f, SP_F_BLOB_ID, id, 16);
	sp_frame_set_u64(&f, SP_F_OFFSET, 0);
	sp_frame_set_u64(&f, SP_F_LEN, 3);
	ck_assert_int_eq(call_code(&f), SP_ESTATE);

	uint64_t devs[] = { 5 };
	sp_frame_init(&f, SP_T_BLOB_DONE, 4, true);
	sp_frame_set_bin(&f, SP_F_BLOB_ID, id, 16);
	sp_frame_set_u64(&f, SP_F_SIZE, 3);
	sp_frame_set_bin(&f, SP_F_SHA256, sha, 32);
	sp_frame_set_u64s(&f, SP_F_DEVICES, devs, 1);
	ck_assert_int_eq(call_code(&f), SP_EDIGEST);
	crypto_hash_sha256(sha, (const uint8_t *)"abc", 3);
	sp_frame_set_u64(&f, SP_F_SIZE, 4);
	ck_assert_int_eq(call_code(&f), SP_EGAP);
	sp_frame_set_u64(&f, SP_F_SIZE, 3);
	m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_OK);
	sp_frame_fini(&rep);
	nng_msg_free(m);

	/* Device 5 reads it to the end: then it is gone. */
	sp_frame_init(&f, SP_T_BLOB_GET, 5, true);
	sp_frame_set_bin(&f, SP_F_BLOB_ID, id, 16);
	sp_frame_set_u64(&f, SP_F_DEVICE, 5);
	sp_frame_set_u64(&f, SP_F_OFFSET, 1);
	sp_frame_set_u64(&f, SP_F_LEN, 100);
	m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_BLOB_DATA);
	sp_bin b = sp_frame_bin(&rep, SP_F_BYTES);
	ck_assert_uint_eq(b.len, 2);
	ck_assert_mem_eq(b.p, "bc", 2);
	ck_assert_uint_eq(sp_frame_u64(&rep, SP_F_SIZE), 3);
	sp_frame_fini(&rep);
	nng_msg_free(m);
	for (int i = 0; i < 200; i++) {
		m = call(&f, &rep);
		int type = rep.type;
		sp_frame_fini(&rep);
		if (type == SP_T_ERROR) {
			ck_assert_int_eq(err_code(m), SP_ENOTFOUND);
			break;
		}
		nng_msg_free(m);
		ck_assert_int_lt(i, 199);
		usleep(5000);
	}
}
END_TEST

START_TEST(append_fetch_ack_roundtrip)
{
	sp_frame f, rep;
	nng_msg *m;

	for (uint8_t i = 1; i <= 5; i++)
		ck_assert_uint_eq(append_ok(1, i), i);
	ck_assert_uint_eq(append_ok(1, 3), 3); /* retry: same seq */
	/* Over the cap (5): SP_EFULL with the msg_id, and nothing dropped. */
	append_frame(&f, 1, 6, "x", 1);
	m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_ERROR);
	ck_assert_int_eq(sp_frame_i64(&rep, SP_F_CODE), SP_EFULL);
	ck_assert(sp_frame_has(&rep, SP_F_MSG_ID));
	sp_frame_fini(&rep);
	nng_msg_free(m);
	ck_assert_uint_eq(depth(1), 5);

	sp_frame_init(&f, SP_T_FETCH, 7, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, 1);
	sp_frame_set_u64(&f, SP_F_AFTER_SEQ, 1);
	sp_frame_set_u64(&f, SP_F_MAX_COUNT, 3);
	m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_ENTRIES_R);
	const sp_val *v = sp_frame_get(&rep, SP_F_ENTRIES);
	ck_assert_uint_eq(v->rs.n, 3);
	for (uint32_t i = 0; i < 3; i++) {
		ck_assert_uint_eq(sp_frame_u64(&v->rs.v[i], SP_F_SEQ), 2 + i);
		ck_assert_uint_eq(sp_frame_u64(&v->rs.v[i], SP_F_FROM_DEVICE), 90);
		sp_bin env = sp_frame_bin(&v->rs.v[i], SP_F_ENV);
		ck_assert_mem_eq(env.p, "hello", 5);
	}
	ck_assert(sp_frame_u64(&rep, SP_F_MORE));
	ck_assert_uint_eq(sp_frame_u64(&rep, SP_F_LAST_SEQ), 4);
	sp_frame_fini(&rep);
	nng_msg_free(m);

	sp_frame_init(&f, SP_T_INBOX_ACK, 8, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, 1);
	sp_frame_set_u64(&f, SP_F_UPTO_SEQ, 4);
	m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_ACKED);
	ck_assert_uint_eq(sp_frame_get(&rep, SP_F_DELIVERED)->rs.n, 4);
	sp_frame_fini(&rep);
	nng_msg_free(m);
	m = call(&f, &rep); /* again: harmless, nothing newly delivered */
	ck_assert_int_eq(rep.type, SP_T_ACKED);
	ck_assert_uint_eq(sp_frame_get(&rep, SP_F_DELIVERED)->rs.n, 0);
	sp_frame_fini(&rep);
	nng_msg_free(m);
	ck_assert_uint_eq(depth(1), 1);

	/* Group batch: one body, per-device seqs, refusal only where full. */
	static const uint8_t gid[16] = { 0x99 };
	sp_frame t[3];
	uint64_t devs[3] = { 1, 2, 3 };
	for (int i = 0; i < 3; i++) {
		sp_frame_init(&t[i], SP_T_APPEND_TARGET, 0, false);
		sp_frame_set_u64(&t[i], SP_F_DEVICE, devs[i]);
	}
	sp_frame_init(&f, SP_T_APPEND_BATCH, 9, true);
	sp_frame_set_bin(&f, SP_F_MSG_ID, gid, 16);
	sp_frame_set_u64(&f, SP_F_FROM_USER, 9);
	sp_frame_set_u64(&f, SP_F_FROM_DEVICE, 90);
	sp_frame_set_u64(&f, SP_F_SERVER_TS, 1);
	sp_frame_set_u64(&f, SP_F_ETYPE, 3);
	sp_frame_set_bin(&f, SP_F_BODY, "group", 5);
	sp_frame_set_u64(&f, SP_F_GROUP, 44);
	sp_frame_set_recs(&f, SP_F_TARGETS, t, 3);
	m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_APPENDED_BATCH);
	v = sp_frame_get(&rep, SP_F_SEQ_LIST);
	ck_assert_uint_eq(v->us.n, 3);
	ck_assert_uint_eq(v->us.v[0], 6);
	ck_assert_uint_eq(v->us.v[1], 1);
	ck_assert_uint_eq(v->us.v[2], 1);
	sp_frame_fini(&rep);
	nng_msg_free(m);

	sp_frame_init(&f, SP_T_PURGE, 10, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, 1);
	m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_PURGED);
	ck_assert_uint_eq(sp_frame_u64(&rep, SP_F_COUNT), 2);
	sp_frame_fini(&rep);
	nng_msg_free(m);
	ck_assert_uint_eq(depth(1), 0);
	ck_assert_uint_eq(depth(2), 1);
}
END_TEST

/* ---- APPEND_MULTI ---- */

/* One APPEND_MULTI item from sender device 90: msg id all bytes `msg`, envelope
 * "env-<device>-<msg>" (the buffers live until the next call with the same slot). */
static void
multi_item(sp_frame *it, uint32_t slot, uint64_t device, uint8_t msg)
{
	static uint8_t ids[64][16];
	static char envs[64][32];
	memset(ids[slot], msg, 16);
	snprintf(envs[slot], sizeof(envs[slot]), "env-%llu-%u", (unsigned long long)device, msg);
	sp_frame_init(it, SP_T_APPEND_ITEM, 0, false);
	sp_frame_set_u64(it, SP_F_DEVICE, device);
	sp_frame_set_bin(it, SP_F_MSG_ID, ids[slot], 16);
	sp_frame_set_u64(it, SP_F_FROM_USER, 9);
	sp_frame_set_u64(it, SP_F_FROM_DEVICE, 90);
	sp_frame_set_u64(it, SP_F_SERVER_TS, 123);
	sp_frame_set_u64(it, SP_F_ETYPE, 2);
	sp_frame_set_bin(it, SP_F_ENV, envs[slot], strlen(envs[slot]));
}

typedef struct multi_res {
	uint64_t seq;
	bool dup;
	int code;
} multi_res;

/* Sends APPEND_MULTI {items (device[i], msg[i])}; checks the reply is APPENDED_MULTI with
 * one result per item and copies them into res. */
static void
multi_call(const uint64_t *devs, const uint8_t *msgs, uint32_t n, multi_res *res)
{
	sp_frame items[64], f, rep;
	ck_assert_uint_le(n, 64);
	for (uint32_t i = 0; i < n; i++)
		multi_item(&items[i], i, devs[i], msgs[i]);
	sp_frame_init(&f, SP_T_APPEND_MULTI, 77, true);
	sp_frame_set_recs(&f, SP_F_APPEND_ITEMS, items, n);
	nng_msg *m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_APPENDED_MULTI);
	ck_assert(rep.has_id);
	ck_assert_uint_eq(rep.id, 77);
	const sp_val *v = sp_frame_get(&rep, SP_F_RESULTS);
	ck_assert_uint_eq(v->rs.n, n);
	for (uint32_t i = 0; i < n; i++) {
		const sp_frame *r = &v->rs.v[i];
		res[i].seq = sp_frame_u64(r, SP_F_SEQ);
		res[i].dup = sp_frame_has(r, SP_F_DUP) && sp_frame_u64(r, SP_F_DUP);
		res[i].code = sp_frame_has(r, SP_F_CODE) ? (int)sp_frame_i64(r, SP_F_CODE) : 0;
	}
	sp_frame_fini(&rep);
	nng_msg_free(m);
}

/* One well-formed item of a hand-packed APPEND_MULTI (spoiled items are fixtures:
 * tests/fixtures/inbox_malformed/multi_*.bin). */
static void
pack_item(msgpack_packer *pk, uint64_t device, uint8_t msg)
{
	uint8_t id[16];
	memset(id, msg, 16);
	msgpack_pack_map(pk, 7);
	key(pk, "device");
	msgpack_pack_uint64(pk, device);
	key(pk, "msg_id");
	msgpack_pack_bin(pk, 16);
	msgpack_pack_bin_body(pk, id, 16);
	key(pk, "from_user");
	msgpack_pack_uint64(pk, 9);
	key(pk, "from_device");
	msgpack_pack_uint64(pk, 90);
	key(pk, "server_ts");
	msgpack_pack_uint64(pk, 1);
	key(pk, "etype");
	msgpack_pack_uint64(pk, 1);
	key(pk, "env");
	msgpack_pack_bin(pk, 1);
	msgpack_pack_bin_body(pk, "e", 1);
}

/* An APPEND_MULTI of n items, item i to device 100 + i; the ERROR code of the reply (0 if
 * it is not an ERROR). */
static int
multi_raw_err(uint32_t n)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	key(&pk, "t");
	msgpack_pack_uint64(&pk, SP_T_APPEND_MULTI);
	key(&pk, "items");
	msgpack_pack_array(&pk, n);
	for (uint32_t i = 0; i < n; i++)
		pack_item(&pk, 100 + i, 1);
	int code = raw_err(sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
	return code;
}

/* Fetches a device's whole queue and checks it holds exactly the messages msgs[0..n) of
 * sender device 90, with seqs 1..n, in that order. */
static void
expect_queue(uint64_t device, const uint8_t *msgs, uint32_t n)
{
	sp_frame f, rep;
	char env[32];
	sp_frame_init(&f, SP_T_FETCH, 5, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, device);
	sp_frame_set_u64(&f, SP_F_AFTER_SEQ, 0);
	sp_frame_set_u64(&f, SP_F_MAX_COUNT, 100);
	nng_msg *m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_ENTRIES_R);
	const sp_val *v = sp_frame_get(&rep, SP_F_ENTRIES);
	ck_assert_uint_eq(v->rs.n, n);
	ck_assert(!sp_frame_u64(&rep, SP_F_MORE));
	for (uint32_t i = 0; i < n; i++) {
		const sp_frame *e = &v->rs.v[i];
		uint8_t id[16];
		memset(id, msgs[i], 16);
		ck_assert_uint_eq(sp_frame_u64(e, SP_F_SEQ), i + 1);
		ck_assert_uint_eq(sp_frame_u64(e, SP_F_FROM_DEVICE), 90);
		ck_assert_mem_eq(sp_frame_bin(e, SP_F_MSG_ID).p, id, 16);
		snprintf(env, sizeof(env), "env-%llu-%u", (unsigned long long)device, msgs[i]);
		sp_bin b = sp_frame_bin(e, SP_F_ENV);
		ck_assert_uint_eq(b.len, strlen(env));
		ck_assert_mem_eq(b.p, env, b.len);
	}
	sp_frame_fini(&rep);
	nng_msg_free(m);
}

START_TEST(append_multi_roundtrip)
{
	multi_res res[8];

	/* Interleaved devices: each device's items get its next seqs, in item order. */
	static const uint64_t devs1[] = { 11, 12, 11, 12, 11 };
	static const uint8_t msgs1[] = { 1, 1, 2, 2, 3 };
	static const uint64_t want1[] = { 1, 1, 2, 2, 3 };
	multi_call(devs1, msgs1, 5, res);
	for (int i = 0; i < 5; i++) {
		ck_assert_uint_eq(res[i].seq, want1[i]);
		ck_assert(!res[i].dup);
		ck_assert_int_eq(res[i].code, 0);
	}
	/* The same request again (a resend): the same seqs, each a dup, nothing stored. */
	multi_call(devs1, msgs1, 5, res);
	for (int i = 0; i < 5; i++) {
		ck_assert_uint_eq(res[i].seq, want1[i]);
		ck_assert(res[i].dup);
		ck_assert_int_eq(res[i].code, 0);
	}
	ck_assert_uint_eq(depth(11), 3);
	ck_assert_uint_eq(depth(12), 2);

	/* Device 13 at its cap (5): its item is refused with SP_EFULL and seq 0; the others
	 * of the same request are stored. */
	for (uint8_t i = 1; i <= 5; i++)
		ck_assert_uint_eq(append_ok(13, i), i);
	static const uint64_t devs2[] = { 11, 13, 12 };
	static const uint8_t msgs2[] = { 4, 6, 3 };
	multi_call(devs2, msgs2, 3, res);
	ck_assert_uint_eq(res[0].seq, 4);
	ck_assert_int_eq(res[0].code, 0);
	ck_assert_uint_eq(res[1].seq, 0);
	ck_assert_int_eq(res[1].code, SP_EFULL);
	ck_assert(!res[1].dup);
	ck_assert_uint_eq(res[2].seq, 3);
	ck_assert_int_eq(res[2].code, 0);
	ck_assert_uint_eq(depth(13), 5);

	/* Malformed requests: one ERROR each, none of their (otherwise valid) items stored. */
	sp_frame f;
	sp_frame_init(&f, SP_T_APPEND_MULTI, 78, true);
	sp_frame_set_recs(&f, SP_F_APPEND_ITEMS, NULL, 0);
	ck_assert_int_eq(call_code(&f), SP_EMISSING);
	static const malformed_case cases[] = {
		{ "multi_no_items.bin", SP_EMISSING },
		{ "multi_item_no_env.bin", SP_EMISSING },
		{ "multi_item_str_device.bin", SP_EFIELDTYPE },
	};
	expect_fixture_errs(cases, sizeof(cases) / sizeof(cases[0]));
	ck_assert_int_eq(multi_raw_err(257), SP_EFIELDLEN);
	ck_assert_uint_eq(shard_entries(), 3 + 2 + 5 + 2);
	/* The same packing (tests/fixtures/gen_inbox_fixtures.c packs items alike), well formed
	 * and at the 256-item bound, is stored: the refusals above were the spoiled items'
	 * doing. */
	ck_assert_int_eq(multi_raw_err(256), 0);
	ck_assert_uint_eq(shard_entries(), 3 + 2 + 5 + 2 + 256);
	ck_assert_uint_eq(depth(100), 1);
	ck_assert_uint_eq(depth(355), 1);

	static const uint8_t q11[] = { 1, 2, 3, 4 }, q12[] = { 1, 2, 3 };
	expect_queue(11, q11, 4);
	expect_queue(12, q12, 3);
}
END_TEST

/* Pages of big entries stay under the frame limit however large max_bytes is asked. */
START_TEST(fetch_pages_fit_the_frame_limit)
{
	static uint8_t env[65536];
	sp_frame f, rep;
	nng_msg *m;
	uint64_t after = 0, seen = 0;

	memset(env, 'E', sizeof(env));
	for (uint8_t i = 1; i <= 40; i++) {
		append_frame(&f, 4, i, env, sizeof(env) - i);
		m = call(&f, &rep);
		ck_assert_int_eq(rep.type, SP_T_APPENDED);
		sp_frame_fini(&rep);
		nng_msg_free(m);
	}
	for (int pages = 0;; pages++) {
		sp_frame_init(&f, SP_T_FETCH, 1, true);
		sp_frame_set_u64(&f, SP_F_DEVICE, 4);
		sp_frame_set_u64(&f, SP_F_AFTER_SEQ, after);
		sp_frame_set_u64(&f, SP_F_MAX_COUNT, 4096);
		sp_frame_set_u64(&f, SP_F_MAX_BYTES, UINT64_MAX);
		m = call(&f, &rep);
		ck_assert_int_eq(rep.type, SP_T_ENTRIES_R);
		ck_assert_uint_le(nng_msg_len(m), sp_frame_limit_large());
		const sp_val *v = sp_frame_get(&rep, SP_F_ENTRIES);
		for (uint32_t i = 0; i < v->rs.n; i++) {
			ck_assert_uint_eq(sp_frame_u64(&v->rs.v[i], SP_F_SEQ), ++seen);
			ck_assert_uint_eq(
			    sp_frame_bin(&v->rs.v[i], SP_F_ENV).len, sizeof(env) - seen);
		}
		bool more = sp_frame_u64(&rep, SP_F_MORE);
		if (v->rs.n)
			after = sp_frame_u64(&rep, SP_F_LAST_SEQ);
		sp_frame_fini(&rep);
		nng_msg_free(m);
		ck_assert_int_lt(pages, 40);
		if (!more)
			break;
	}
	ck_assert_uint_eq(seen, 40);
}
END_TEST

static void
setup_big(void)
{
	cap_entries = 100;
	setup();
}

/* Free disk below the reserve: appends and blob chunks are refused (SP_EFULL) before the
 * disk fills; deletions still work. */
START_TEST(low_disk_refuses_growth)
{
	sp_frame f, rep;
	nng_msg *m;
	uint8_t id[16] = { 3 };

	append_frame(&f, 1, 1, "x", 1);
	ck_assert_int_eq(call_code(&f), SP_EFULL);
	sp_frame_init(&f, SP_T_BLOB_PUT, 2, true);
	sp_frame_set_bin(&f, SP_F_BLOB_ID, id, 16);
	sp_frame_set_u64(&f, SP_F_OFFSET, 0);
	sp_frame_set_bin(&f, SP_F_BYTES, "abc", 3);
	ck_assert_int_eq(call_code(&f), SP_EFULL);
	ck_assert_uint_eq(depth(1), 0);
	sp_frame_init(&f, SP_T_PURGE, 3, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, 1);
	m = call(&f, &rep);
	ck_assert_int_eq(rep.type, SP_T_PURGED);
	sp_frame_fini(&rep);
	nng_msg_free(m);
}
END_TEST

static void
setup_low_disk(void)
{
	disk_reserve = UINT64_MAX / 2;
	setup();
}

static void
teardown_low_disk(void)
{
	teardown();
	disk_reserve = 0;
}

static Suite *
suite(void)
{
	Suite *s = suite_create("inbox_dispatch");
	TCase *tc = tcase_create("dispatch");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, garbage_gets_error_codes);
	tcase_add_test(tc, table_serves_the_inbox_requests);
	tcase_add_test(tc, bad_fields_get_error_codes);
	tcase_add_test(tc, semantic_errors);
	tcase_add_test(tc, append_fetch_ack_roundtrip);
	tcase_add_test(tc, append_multi_roundtrip);
	suite_add_tcase(s, tc);
	tc = tcase_create("big");
	tcase_add_checked_fixture(tc, setup_big, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, fetch_pages_fit_the_frame_limit);
	suite_add_tcase(s, tc);
	tc = tcase_create("low_disk");
	tcase_add_checked_fixture(tc, setup_low_disk, teardown_low_disk);
	tcase_add_test(tc, low_disk_refuses_growth);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	return check_run(suite());
}
