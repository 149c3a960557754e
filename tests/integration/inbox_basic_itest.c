/*
 * inboxsrv over NNG, black box: --help, malformed and oversize frames get ERROR replies
 * while the shard keeps serving and other devices' data stays intact, the whole request
 * set (append, batch, multi, fetch, ack, stat, purge, blobs) works, and SIGTERM exits
 * cleanly.
 */
#include <pthread.h>
#include <sodium.h>

#include "tests/integration/inbox_util.h"

static shard S;

/* Sends raw bytes as one request; returns the ERROR code of the reply (0 if not ERROR). */
static int
raw_call(nng_socket sock, const void *p, size_t len)
{
	nng_ctx ctx;
	nng_aio *aio;
	nng_msg *m;
	sp_frame f;
	int code;

	CHECK(nng_aio_alloc(&aio, NULL, NULL) == 0, "aio");
	CHECK(nng_ctx_open(&ctx, sock) == 0, "ctx");
	nng_aio_set_timeout(aio, 5000);
	CHECK(nng_msg_alloc(&m, 0) == 0 && nng_msg_append(m, p, len) == 0, "msg");
	nng_aio_set_msg(aio, m);
	nng_ctx_send(ctx, aio);
	nng_aio_wait(aio);
	CHECK(nng_aio_result(aio) == 0, "send: %s", nng_strerror(nng_aio_result(aio)));
	nng_ctx_recv(ctx, aio);
	nng_aio_wait(aio);
	CHECK(nng_aio_result(aio) == 0, "no reply to a malformed request: %s",
	    nng_strerror(nng_aio_result(aio)));
	m = nng_aio_get_msg(aio);
	CHECK(sp_nng_msg_decode(m, &f) == SP_OK, "undecodable reply");
	code = f.type == SP_T_ERROR ? (int)sp_frame_i64(&f, SP_F_CODE) : 0;
	sp_frame_fini(&f);
	nng_msg_free(m);
	nng_ctx_close(ctx);
	nng_aio_free(aio);
	return code;
}

static uint64_t
append(nng_socket sock, uint64_t device, uint64_t msg, const char *env, bool *dup)
{
	uint8_t id[16];
	sp_frame f, rep;
	nng_msg *m;
	msg_id_of(id, 0xabc, msg);
	append_frame(&f, device, id, 5, env, strlen(env));
	int rc = call(sock, &f, &rep, &m);
	CHECK(rc == SP_OK && rep.type == SP_T_APPENDED, "append: %s", sp_strerror(rc));
	uint64_t seq = sp_frame_u64(&rep, SP_F_SEQ);
	if (dup)
		*dup = sp_frame_has(&rep, SP_F_DUP) && sp_frame_u64(&rep, SP_F_DUP);
	call_done(&rep, m);
	return seq;
}

static uint64_t
depth(nng_socket sock, uint64_t device)
{
	sp_frame f, rep;
	nng_msg *m;
	sp_frame_init(&f, SP_T_STAT, 2, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, device);
	int rc = call(sock, &f, &rep, &m);
	CHECK(rc == SP_OK && rep.type == SP_T_STAT_R, "stat: %s", sp_strerror(rc));
	uint64_t d = sp_frame_u64(&rep, SP_F_DEPTH);
	call_done(&rep, m);
	return d;
}

static void
malformed(nng_socket sock)
{
	static const uint8_t junk[] = { 0xc1, 0xc1, 0xc1 };
	static const uint8_t not_map[] = { 0x93, 0x01, 0x02, 0x03 };
	static const uint8_t unknown_type[] = { 0x81, 0xa1, 't', 0xcc, 0xfe };
	static const uint8_t append_no_fields[] = { 0x81, 0xa1, 't', 0x64 };
	static const uint8_t fetch_neg_device[] = { 0x83, 0xa1, 't', 0x68, 0xa6, 'd', 'e', 'v', 'i',
		'c', 'e', 0xff, 0xa9, 'a', 'f', 't', 'e', 'r', '_', 's', 'e', 'q', 0x00 };
	uint8_t *big;
	size_t big_len = 70000;

	CHECK(raw_call(sock, junk, sizeof(junk)) == SP_EMALFORMED, "junk");
	CHECK(raw_call(sock, junk, 0) == SP_ETRUNC, "empty message");
	CHECK(raw_call(sock, not_map, sizeof(not_map)) != 0, "array instead of map");
	CHECK(raw_call(sock, unknown_type, sizeof(unknown_type)) == SP_EBADTYPE, "unknown type");
	CHECK(raw_call(sock, append_no_fields, sizeof(append_no_fields)) == SP_EMISSING, "missing");
	CHECK(raw_call(sock, fetch_neg_device, sizeof(fetch_neg_device)) == SP_EFIELDTYPE,
	    "negative device");
	/* An APPEND whose envelope is over the 64 KiB field bound. */
	big = calloc(1, big_len + 200);
	CHECK(big, "oom");
	{
		msgpack_sbuffer sb;
		msgpack_packer pk;
		msgpack_sbuffer_init(&sb);
		msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
		static const char *keys[]
		    = { "t", "device", "from_user", "from_device", "server_ts", "etype" };
		msgpack_pack_map(&pk, 8);
		for (int i = 0; i < 6; i++) {
			msgpack_pack_str(&pk, strlen(keys[i]));
			msgpack_pack_str_body(&pk, keys[i], strlen(keys[i]));
			msgpack_pack_uint64(&pk, i == 0 ? SP_T_APPEND : 1);
		}
		msgpack_pack_str(&pk, 6);
		msgpack_pack_str_body(&pk, "msg_id", 6);
		msgpack_pack_bin(&pk, 16);
		msgpack_pack_bin_body(&pk, big, 16);
		msgpack_pack_str(&pk, 3);
		msgpack_pack_str_body(&pk, "env", 3);
		msgpack_pack_bin(&pk, big_len);
		msgpack_pack_bin_body(&pk, big, big_len);
		CHECK(raw_call(sock, sb.data, sb.size) == SP_EFIELDLEN, "oversize env");
		msgpack_sbuffer_destroy(&sb);
	}
	/* Random bytes: every one answered, none crashes the shard. */
	for (int i = 0; i < 300; i++) {
		size_t n = 1 + randombytes_uniform(200);
		randombytes_buf(big, n);
		if (i % 3 == 0)
			big[0] = 0x80 | (uint8_t)randombytes_uniform(16); /* a map header */
		raw_call(sock, big, n);
	}
	free(big);
}

static void
blobs(nng_socket sock)
{
	uint8_t id[16] = { 0xb1 }, data[300000], sha[32];
	uint64_t devs[] = { 21 };
	sp_frame f, rep;
	nng_msg *m;
	int rc;

	randombytes_buf(data, sizeof(data));
	crypto_hash_sha256(sha, data, sizeof(data));
	for (uint64_t off = 0; off < sizeof(data); off += 100000) {
		for (int again = 0; again < 2; again++) { /* each chunk twice: a retry */
			sp_frame_init(&f, SP_T_BLOB_PUT, 3, true);
			sp_frame_set_bin(&f, SP_F_BLOB_ID, id, 16);
			sp_frame_set_u64(&f, SP_F_OFFSET, off);
			sp_frame_set_bin(&f, SP_F_BYTES, data + off, 100000);
			rc = call(sock, &f, &rep, &m);
			CHECK(rc == SP_OK && rep.type == SP_T_BLOB_STORED, "put: %s",
			    sp_strerror(rc));
			CHECK(sp_frame_u64(&rep, SP_F_SIZE) == off + 100000, "stored size");
			call_done(&rep, m);
		}
	}
	sp_frame_init(&f, SP_T_BLOB_DONE, 4, true);
	sp_frame_set_bin(&f, SP_F_BLOB_ID, id, 16);
	sp_frame_set_u64(&f, SP_F_SIZE, sizeof(data));
	sp_frame_set_bin(&f, SP_F_SHA256, sha, 32);
	sp_frame_set_u64s(&f, SP_F_DEVICES, devs, 1);
	rc = call(sock, &f, &rep, &m);
	CHECK(rc == SP_OK && rep.type == SP_T_OK, "done: %s", sp_strerror(rc));
	call_done(&rep, m);

	uint8_t *got = malloc(sizeof(data));
	uint64_t off = 0;
	CHECK(got, "oom");
	while (off < sizeof(data)) {
		sp_frame_init(&f, SP_T_BLOB_GET, 5, true);
		sp_frame_set_bin(&f, SP_F_BLOB_ID, id, 16);
		sp_frame_set_u64(&f, SP_F_DEVICE, 21);
		sp_frame_set_u64(&f, SP_F_OFFSET, off);
		sp_frame_set_u64(&f, SP_F_LEN, 70000);
		rc = call(sock, &f, &rep, &m);
		CHECK(rc == SP_OK && rep.type == SP_T_BLOB_DATA, "get: %s", sp_strerror(rc));
		sp_bin b = sp_frame_bin(&rep, SP_F_BYTES);
		CHECK(b.len > 0 && off + b.len <= sizeof(data), "chunk length %u", b.len);
		memcpy(got + off, b.p, b.len);
		off += b.len;
		call_done(&rep, m);
	}
	CHECK(memcmp(got, data, sizeof(data)) == 0, "blob content differs");
	free(got);
	/* Device 21 read it to the end: it is deleted soon after. */
	for (int i = 0;; i++) {
		sp_frame_init(&f, SP_T_BLOB_GET, 6, true);
		sp_frame_set_bin(&f, SP_F_BLOB_ID, id, 16);
		sp_frame_set_u64(&f, SP_F_OFFSET, 0);
		sp_frame_set_u64(&f, SP_F_LEN, 1);
		rc = call(sock, &f, &rep, &m);
		call_done(&rep, m);
		if (rc == SP_ENOTFOUND)
			break;
		CHECK(i < 200, "blob still there after every device fetched it");
		usleep(10000);
	}
}

/* APPEND_MULTI from concurrent threads: MULTI_THREADS threads each send MULTI_REQS
 * requests of MULTI_ITEMS items (item k of a thread to device MULTI_DEV0 + k % MULTI_DEVS,
 * from sender device 100 + thread, msg id (thread, k)), one of them twice (a resend). */
#define MULTI_THREADS 4
#define MULTI_REQS 8
#define MULTI_ITEMS 16
#define MULTI_DEVS 16
#define MULTI_DEV0 1000
#define MULTI_PER_THREAD (MULTI_REQS * MULTI_ITEMS)

typedef struct multi_thread {
	nng_socket sock;
	uint64_t t;
	uint64_t seq[MULTI_PER_THREAD]; /* acknowledged seq of item k */
	char err[160];
} multi_thread;

static void
multi_env(char *buf, size_t cap, uint64_t t, uint64_t k)
{
	snprintf(buf, cap, "multi-%llu-%llu", (unsigned long long)t, (unsigned long long)k);
}

/* Sends request r of thread mt; fills mt->seq. Returns false (with mt->err) on failure. */
static bool
multi_send(multi_thread *mt, int r, bool resend)
{
	static _Thread_local uint8_t ids[MULTI_ITEMS][16];
	static _Thread_local char envs[MULTI_ITEMS][32];
	sp_frame items[MULTI_ITEMS], f, rep;
	nng_msg *m;
	bool ok = true;

	for (int i = 0; i < MULTI_ITEMS; i++) {
		uint64_t k = (uint64_t)r * MULTI_ITEMS + (uint64_t)i;
		msg_id_of(ids[i], 0x3000 + mt->t, k);
		multi_env(envs[i], sizeof(envs[i]), mt->t, k);
		sp_frame_init(&items[i], SP_T_APPEND_ITEM, 0, false);
		sp_frame_set_u64(&items[i], SP_F_DEVICE, MULTI_DEV0 + k % MULTI_DEVS);
		sp_frame_set_bin(&items[i], SP_F_MSG_ID, ids[i], 16);
		sp_frame_set_u64(&items[i], SP_F_FROM_USER, 1);
		sp_frame_set_u64(&items[i], SP_F_FROM_DEVICE, 100 + mt->t);
		sp_frame_set_u64(&items[i], SP_F_SERVER_TS, sp_time_ms());
		sp_frame_set_u64(&items[i], SP_F_ETYPE, 1);
		sp_frame_set_bin(&items[i], SP_F_ENV, envs[i], strlen(envs[i]));
	}
	sp_frame_init(&f, SP_T_APPEND_MULTI, (uint64_t)r, true);
	sp_frame_set_recs(&f, SP_F_APPEND_ITEMS, items, MULTI_ITEMS);
	int rc = call(mt->sock, &f, &rep, &m);
	const sp_val *v = rc == SP_OK ? sp_frame_get(&rep, SP_F_RESULTS) : NULL;
	if (rc != SP_OK || rep.type != SP_T_APPENDED_MULTI || v->rs.n != MULTI_ITEMS) {
		snprintf(mt->err, sizeof(mt->err), "request %d: %s", r, sp_strerror(rc));
		call_done(&rep, m);
		return false;
	}
	for (int i = 0; ok && i < MULTI_ITEMS; i++) {
		const sp_frame *res = &v->rs.v[i];
		uint64_t k = (uint64_t)r * MULTI_ITEMS + (uint64_t)i;
		uint64_t seq = sp_frame_u64(res, SP_F_SEQ);
		bool dup = sp_frame_has(res, SP_F_DUP) && sp_frame_u64(res, SP_F_DUP);
		if (sp_frame_has(res, SP_F_CODE) || seq == 0) {
			snprintf(mt->err, sizeof(mt->err), "request %d item %d refused: %s", r, i,
			    sp_strerror((int)sp_frame_i64(res, SP_F_CODE)));
			ok = false;
		} else if (resend && (!dup || seq != mt->seq[k])) {
			snprintf(mt->err, sizeof(mt->err),
			    "resent request %d item %d: seq %llu dup %d, first seq %llu", r, i,
			    (unsigned long long)seq, dup, (unsigned long long)mt->seq[k]);
			ok = false;
		} else if (!resend && dup) {
			snprintf(mt->err, sizeof(mt->err), "request %d item %d: dup on first send",
			    r, i);
			ok = false;
		}
		mt->seq[k] = seq;
	}
	call_done(&rep, m);
	return ok;
}

static void *
multi_main(void *arg)
{
	multi_thread *mt = arg;
	for (int r = 0; r < MULTI_REQS; r++) {
		if (!multi_send(mt, r, false))
			return NULL;
		if (r == (int)mt->t && !multi_send(mt, r, true))
			return NULL;
	}
	return NULL;
}

static void
multi_concurrent(nng_socket sock)
{
	static multi_thread mt[MULTI_THREADS];
	pthread_t th[MULTI_THREADS];

	for (int t = 0; t < MULTI_THREADS; t++) {
		mt[t].sock = sock;
		mt[t].t = (uint64_t)t;
		CHECK(pthread_create(&th[t], NULL, multi_main, &mt[t]) == 0, "pthread_create");
	}
	for (int t = 0; t < MULTI_THREADS; t++) {
		pthread_join(th[t], NULL);
		CHECK(!mt[t].err[0], "thread %d: %s", t, mt[t].err);
	}
	/* Each device holds exactly the items acknowledged for it, once each, with the seqs
	 * the replies gave, in seq order; a sender's items in the order it sent them. */
	for (uint64_t dev = MULTI_DEV0; dev < MULTI_DEV0 + MULTI_DEVS; dev++) {
		sp_frame f, rep;
		nng_msg *m;
		uint64_t last_k[MULTI_THREADS];
		bool seen[MULTI_THREADS][MULTI_PER_THREAD] = { { false } };
		char env[32];

		memset(last_k, 0xff, sizeof(last_k));
		sp_frame_init(&f, SP_T_FETCH, 10, true);
		sp_frame_set_u64(&f, SP_F_DEVICE, dev);
		sp_frame_set_u64(&f, SP_F_AFTER_SEQ, 0);
		sp_frame_set_u64(&f, SP_F_MAX_COUNT, 4096);
		int rc = call(sock, &f, &rep, &m);
		CHECK(rc == SP_OK && rep.type == SP_T_ENTRIES_R, "fetch: %s", sp_strerror(rc));
		CHECK(!sp_frame_u64(&rep, SP_F_MORE), "device %llu: more than one page",
		    (unsigned long long)dev);
		const sp_val *v = sp_frame_get(&rep, SP_F_ENTRIES);
		uint32_t want = MULTI_THREADS * MULTI_PER_THREAD / MULTI_DEVS;
		CHECK(v->rs.n == want, "device %llu holds %u entries, %u acknowledged",
		    (unsigned long long)dev, v->rs.n, want);
		for (uint32_t i = 0; i < v->rs.n; i++) {
			const sp_frame *e = &v->rs.v[i];
			uint64_t seq = sp_frame_u64(e, SP_F_SEQ);
			uint64_t t = sp_frame_u64(e, SP_F_FROM_DEVICE) - 100, a, k;
			sp_bin id = sp_frame_bin(e, SP_F_MSG_ID), b = sp_frame_bin(e, SP_F_ENV);
			memcpy(&a, id.p, 8);
			memcpy(&k, id.p + 8, 8);
			CHECK(seq == i + 1, "device %llu: entry %u has seq %llu",
			    (unsigned long long)dev, i, (unsigned long long)seq);
			CHECK(t < MULTI_THREADS && a == 0x3000 + t && k < MULTI_PER_THREAD
				&& MULTI_DEV0 + k % MULTI_DEVS == dev,
			    "device %llu: entry %u was never sent", (unsigned long long)dev, i);
			CHECK(!seen[t][k], "device %llu: item %llu/%llu stored twice",
			    (unsigned long long)dev, (unsigned long long)t, (unsigned long long)k);
			seen[t][k] = true;
			CHECK(mt[t].seq[k] == seq, "item %llu/%llu acknowledged as seq %llu, stored as %llu",
			    (unsigned long long)t, (unsigned long long)k,
			    (unsigned long long)mt[t].seq[k], (unsigned long long)seq);
			CHECK(last_k[t] == UINT64_MAX || k > last_k[t], "sender %llu out of order",
			    (unsigned long long)t);
			last_k[t] = k;
			multi_env(env, sizeof(env), t, k);
			CHECK(b.len == strlen(env) && memcmp(b.p, env, b.len) == 0, "envelope differs");
		}
		call_done(&rep, m);
	}
}

int
main(void)
{
	sp_frame f, rep;
	nng_msg *m;
	bool dup;
	int rc;

	CHECK(sodium_init() >= 0, "sodium");
	shard_init(&S, "inbox_basic");
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "%s --help | grep -q max-queue-entries", bin_path("inboxsrv"));
	CHECK(system(cmd) == 0, "--help");

	shard_start(&S, "--max-queue-entries", "50", NULL);
	nng_socket sock = shard_connect(&S, 5000);

	/* A second shard on the same data dir refuses to start. */
	snprintf(cmd, sizeof(cmd), "%s --data-dir %s/data --listen tcp://127.0.0.1:%d --insecure-internal 2>/dev/null",
	    bin_path("inboxsrv"), S.dir, free_port());
	int st = system(cmd);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 0, "second shard on the same data started");

	CHECK(append(sock, 1, 1, "first", &dup) == 1 && !dup, "first append");
	CHECK(append(sock, 2, 1, "other device", NULL) == 1, "other device");
	malformed(sock);
	printf("malformed frames answered\n");
	CHECK(append(sock, 1, 1, "first", &dup) == 1 && dup, "retry is a dup");
	CHECK(append(sock, 1, 2, "second", NULL) == 2, "second append");
	CHECK(depth(sock, 1) == 2 && depth(sock, 2) == 1, "data intact after bad input");

	/* Cap: 50 entries, then SP_EFULL; the first 50 are all still there. */
	for (uint64_t i = 3; i <= 50; i++)
		append(sock, 1, i, "fill", NULL);
	uint8_t id[16];
	msg_id_of(id, 0xabc, 51);
	append_frame(&f, 1, id, 5, "over", 4);
	rc = call(sock, &f, &rep, &m);
	CHECK(rc == SP_EFULL, "over the cap: %s", sp_strerror(rc));
	call_done(&rep, m);
	CHECK(depth(sock, 1) == 50, "nothing dropped at the cap");

	/* Fetch in pages, then ACK and PURGE. */
	uint64_t after = 0, seen = 0;
	for (;;) {
		sp_frame_init(&f, SP_T_FETCH, 7, true);
		sp_frame_set_u64(&f, SP_F_DEVICE, 1);
		sp_frame_set_u64(&f, SP_F_AFTER_SEQ, after);
		sp_frame_set_u64(&f, SP_F_MAX_COUNT, 7);
		rc = call(sock, &f, &rep, &m);
		CHECK(rc == SP_OK && rep.type == SP_T_ENTRIES_R, "fetch: %s", sp_strerror(rc));
		const sp_val *v = sp_frame_get(&rep, SP_F_ENTRIES);
		for (uint32_t i = 0; i < v->rs.n; i++)
			CHECK(sp_frame_u64(&v->rs.v[i], SP_F_SEQ) == ++seen, "order at %llu",
			    (unsigned long long)seen);
		bool more = sp_frame_u64(&rep, SP_F_MORE);
		if (v->rs.n)
			after = sp_frame_u64(&rep, SP_F_LAST_SEQ);
		call_done(&rep, m);
		if (!more)
			break;
	}
	CHECK(seen == 50, "fetched %llu", (unsigned long long)seen);
	sp_frame_init(&f, SP_T_INBOX_ACK, 8, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, 1);
	sp_frame_set_u64(&f, SP_F_UPTO_SEQ, 40);
	rc = call(sock, &f, &rep, &m);
	CHECK(rc == SP_OK && sp_frame_get(&rep, SP_F_DELIVERED)->rs.n == 40, "ack");
	call_done(&rep, m);
	CHECK(depth(sock, 1) == 10, "depth after ack");
	sp_frame_init(&f, SP_T_PURGE, 9, true);
	sp_frame_set_u64(&f, SP_F_DEVICE, 1);
	rc = call(sock, &f, &rep, &m);
	CHECK(rc == SP_OK && sp_frame_u64(&rep, SP_F_COUNT) == 10, "purge");
	call_done(&rep, m);
	CHECK(depth(sock, 1) == 0 && depth(sock, 2) == 1, "purge hit only device 1");

	blobs(sock);
	printf("blobs ok\n");
	multi_concurrent(sock);
	printf("concurrent APPEND_MULTI ok\n");
	nng_close(sock);

	CHECK(shard_stop(&S) == 0, "SIGTERM exit status");
	CHECK(log_has(&S, "shutting down"), "no shutdown line");
	/* Restart: everything is still there. */
	shard_start(&S, NULL);
	sock = shard_connect(&S, 5000);
	CHECK(depth(sock, 2) == 1, "after restart");
	CHECK(append(sock, 1, 60, "after restart", NULL) == 51, "seq continues after restart");
	nng_close(sock);
	CHECK(shard_stop(&S) == 0, "SIGTERM exit status");
	printf("1 passed, 0 failed\n");
	return 0;
}
