/* Fuzzes the inbox request dispatcher end to end (decode, validation, store, group-commit
 * writer) with arbitrary request bytes. Every input must get exactly one reply and leave
 * the shard usable; sanitizers catch the rest. The store lives in a temp dir removed at
 * exit. */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "inboxsrv/commit.h"
#include "inboxsrv/dispatch.h"
#include "inboxsrv/store.h"
#include "sp_error.h"
#include "sp_frame.h"

static char dir[64];
static inbox_store *st;
static inbox_commit *cm;
static inbox_dispatch *dp;

typedef struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int calls;
} waiter;

static void
on_reply(void *arg, nng_msg *m)
{
	waiter *w = arg;
	if (m)
		nng_msg_free(m);
	pthread_mutex_lock(&w->lock);
	w->calls++;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static void
remove_dir(void)
{
	char cmd[128];
	inbox_commit_stop(cm);
	inbox_dispatch_free(dp);
	inbox_store_close(st);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

static void
init(void)
{
	inbox_store_config cfg = { .map_size = 256u << 20,
		.max_queue_entries = 64,
		.max_queue_bytes = 1 << 20,
		.msg_ttl_ms = 60000,
		.media_ttl_ms = 60000,
		.max_blob_size = 1 << 20,
		.max_readers = 16 };
	inbox_commit_config ccfg = { 0 };
	inbox_dispatch_config dcfg = { 0 };
	strcpy(dir, "/tmp/inbox_fuzz.XXXXXX");
	if (!mkdtemp(dir))
		abort();
	cfg.dir = dir;
	if (inbox_store_open(&st, &cfg) || inbox_commit_start(&cm, st, &ccfg)
	    || inbox_dispatch_new(&dp, st, cm, &dcfg))
		abort();
	atexit(remove_dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	nng_msg *m;

	if (!dp)
		init();
	if (nng_msg_alloc(&m, 0) != 0 || nng_msg_append(m, data, size) != 0)
		abort();
	inbox_dispatch_handle(dp, m, on_reply, &w);
	pthread_mutex_lock(&w.lock);
	while (w.calls == 0)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);
	if (w.calls != 1)
		abort();
	return 0;
}
