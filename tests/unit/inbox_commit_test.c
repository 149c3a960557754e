/* The group-commit writer's batches: media chunks go in their own lane (rule 7 of
 * docs/REPLICATION.md), so an append queued behind several big chunks is committed in the
 * next batch with at most one lane's worth of them; chunks keep their order. The writer is
 * held inside its first batch by the replication hook while the queue builds up. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_run.h"
#include "inboxsrv/commit.h"
#include "inboxsrv/store.h"
#include "sp_error.h"

#define CHUNK (512u << 10)
#define NCHUNKS 6
#define MAX_BATCHES 16

static char dir[64];
static inbox_store *st;
static inbox_commit *cm;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static bool held, release;
/* Per batch the replication hook saw: its ops' kinds ('A' append, 'P' chunk, 'D' done). */
static char batches[MAX_BATCHES][NCHUNKS + 8];
static int nbatches, done_count;
static uint64_t chunk_order[NCHUNKS + 4];
static int nchunk_order;

static int
admit(void *arg)
{
	(void)arg;
	return SP_OK;
}

static int
replicate(void *arg, inbox_req *batch)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	ck_assert_int_lt(nbatches, MAX_BATCHES);
	char *k = batches[nbatches++];
	for (inbox_req *r = batch; r; r = r->next) {
		*k++ = r->op.kind == INBOX_OP_APPEND ? 'A' : r->op.kind == INBOX_OP_BLOB_PUT ? 'P' : 'D';
		if (r->op.kind == INBOX_OP_BLOB_PUT)
			chunk_order[nchunk_order++] = r->op.blob_put.offset;
	}
	*k = '\0';
	if (nbatches == 1) {
		held = true;
		pthread_cond_broadcast(&cv);
		while (!release)
			pthread_cond_wait(&cv, &mu);
	}
	pthread_mutex_unlock(&mu);
	return SP_OK;
}

static void
on_done(inbox_req *r)
{
	ck_assert_msg(r->op.rc == SP_OK, "op kind %d: %s", r->op.kind, sp_strerror(r->op.rc));
	pthread_mutex_lock(&mu);
	done_count++;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static const inbox_commit_repl hooks = { admit, replicate, NULL };

static void
setup(void)
{
	strcpy(dir, "/tmp/inbox_commit_test.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	inbox_store_config cfg = { .dir = dir,
		.map_size = 256u << 20,
		.max_queue_entries = 100,
		.max_queue_bytes = 64 << 20,
		.msg_ttl_ms = 60000,
		.media_ttl_ms = 60000,
		.max_blob_size = 64u << 20,
		.max_readers = 16 };
	inbox_commit_config ccfg = { .repl = &hooks };
	ck_assert_int_eq(inbox_store_open(&st, &cfg), SP_OK);
	ck_assert_int_eq(inbox_commit_start(&cm, st, &ccfg), SP_OK);
}

static void
teardown(void)
{
	char cmd[128];
	inbox_commit_stop(cm);
	inbox_store_close(st);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}

static void
append_req(inbox_req *r, inbox_target *t, uint8_t n, const uint8_t *env)
{
	memset(r, 0, sizeof(*r));
	memset(t, 0, sizeof(*t));
	t->device = 7;
	r->op.kind = INBOX_OP_APPEND;
	memset(r->op.append.msg_id, n, INBOX_MSG_ID_LEN);
	r->op.append.from_user = 1;
	r->op.append.from_device = 2;
	r->op.append.body = env;
	r->op.append.body_len = 16;
	r->op.append.targets = t;
	r->op.append.ntargets = 1;
	r->cost = 16 + 128;
	r->done = on_done;
}

START_TEST(appends_pass_queued_chunks)
{
	static uint8_t data[CHUNK];
	uint8_t env[16] = { 1 };
	inbox_req first, last, puts[NCHUNKS], fin;
	inbox_target t1, t2;
	uint64_t devices[1] = { 7 };

	append_req(&first, &t1, 1, env);
	inbox_commit_submit(cm, &first);
	pthread_mutex_lock(&mu);
	while (!held)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);

	/* Queued while the writer is held: six chunks of one blob, its DONE, an append. */
	for (int i = 0; i < NCHUNKS; i++) {
		memset(&puts[i], 0, sizeof(puts[i]));
		puts[i].op.kind = INBOX_OP_BLOB_PUT;
		memset(puts[i].op.blob_put.blob_id, 9, INBOX_BLOB_ID_LEN);
		puts[i].op.blob_put.offset = (uint64_t)i * CHUNK;
		puts[i].op.blob_put.bytes = data;
		puts[i].op.blob_put.len = CHUNK;
		puts[i].cost = CHUNK + 128;
		puts[i].done = on_done;
		inbox_commit_submit(cm, &puts[i]);
	}
	memset(&fin, 0, sizeof(fin));
	fin.op.kind = INBOX_OP_BLOB_DONE;
	memset(fin.op.blob_done.blob_id, 9, INBOX_BLOB_ID_LEN);
	fin.op.blob_done.size = (uint64_t)NCHUNKS * CHUNK;
	fin.op.blob_done.devices = devices;
	fin.op.blob_done.ndevices = 1;
	fin.cost = 128;
	fin.done = on_done;
	inbox_commit_submit(cm, &fin);
	append_req(&last, &t2, 2, env);
	inbox_commit_submit(cm, &last);

	pthread_mutex_lock(&mu);
	release = true;
	pthread_cond_broadcast(&cv);
	while (done_count < NCHUNKS + 3)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);

	ck_assert_str_eq(batches[0], "A");
	/* The append is in the next batch, with one lane of chunks (1 MiB: two of 512 KiB
	 * fill it, the cost of each being a little more than its bytes, so one). */
	ck_assert_msg(strchr(batches[1], 'A') != NULL, "batch 2 is %s", batches[1]);
	ck_assert_uint_le(strlen(batches[1]) - 1, (INBOX_MEDIA_LANE_BYTES / CHUNK));
	/* Chunks in order, DONE after the last of them. */
	ck_assert_int_eq(nchunk_order, NCHUNKS);
	for (int i = 0; i < NCHUNKS; i++)
		ck_assert_uint_eq(chunk_order[i], (uint64_t)i * CHUNK);
	char all[MAX_BATCHES * (NCHUNKS + 8)] = "";
	for (int b = 1; b < nbatches; b++)
		strcat(all, batches[b]);
	const char *d = strchr(all, 'D');
	ck_assert_ptr_nonnull(d);
	ck_assert_ptr_null(strchr(d, 'P'));
	ck_assert_uint_eq(last.op.append.targets[0].seq, 2);
	ck_assert_int_eq(fin.op.rc, SP_OK);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("inbox_commit");
	TCase *tc = tcase_create("lanes");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, appends_pass_queued_chunks);
	suite_add_tcase(s, tc);
	return check_run(s);
}
