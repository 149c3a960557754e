/* The replication log: durability across reopen, log matching, the epoch table and the
 * divergence rule, truncate/trim, torn and corrupt files, the incarnation, concurrent
 * readers, and a seeded model test with crash simulation. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "repl/log.h"
#include "sp_bytes.h"
#include "sp_error.h"
#include "check_run.h"
#include "test_rng.h"

#define PAYLOAD_MAX 300

static char root[64];
static char dir[96];

static void
setup(void)
{
	strcpy(root, "/tmp/repl_log_test.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(root));
	snprintf(dir, sizeof(dir), "%s/log", root);
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void
teardown(void)
{
	nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Payloads are a function of (lsn, salt), so a record rewritten after a truncation
 * differs from the one it replaced. */
static uint32_t
pay_len(uint64_t lsn, uint32_t salt)
{
	return (uint32_t)((lsn * 2654435761u + salt * 40503u) % PAYLOAD_MAX);
}

static void
pay_fill(uint8_t *b, uint64_t lsn, uint32_t salt)
{
	uint32_t n = pay_len(lsn, salt);
	for (uint32_t i = 0; i < n; i++)
		b[i] = (uint8_t)(salt * 131u + lsn * 7u + i);
}

/* Appends records prev+1..prev+n of `epoch` (one batch) after (pe, pl). */
static int
append_n(repl_log *log, uint64_t pe, uint64_t pl, uint64_t epoch, size_t n, uint32_t salt)
{
	repl_log_rec *r = calloc(n, sizeof(*r));
	uint8_t(*b)[PAYLOAD_MAX] = calloc(n, PAYLOAD_MAX);
	ck_assert(r && b);
	for (size_t i = 0; i < n; i++) {
		uint64_t lsn = pl + 1 + i;
		pay_fill(b[i], lsn, salt);
		r[i] = (repl_log_rec){epoch, lsn, b[i], pay_len(lsn, salt)};
	}
	int rc = repl_log_append(log, pe, pl, r, n);
	free(r);
	free(b);
	return rc;
}

/* Appends n more records of `epoch` after the log's end. */
static void
extend(repl_log *log, uint64_t epoch, size_t n, uint32_t salt)
{
	repl_log_pos last = repl_log_last(log);
	ck_assert_int_eq(append_n(log, last.epoch, last.lsn, epoch, n, salt), SP_OK);
}

typedef struct got {
	size_t n, cap;
	repl_log_rec *r;
	uint8_t **data;
	int stop_after; /* 0: never */
} got;

static int
collect(void *arg, const repl_log_rec *rec)
{
	got *g = arg;
	if (g->n == g->cap) {
		g->cap = g->cap ? 2 * g->cap : 64;
		g->r = realloc(g->r, g->cap * sizeof(*g->r));
		g->data = realloc(g->data, g->cap * sizeof(*g->data));
		ck_assert(g->r && g->data);
	}
	g->data[g->n] = malloc(rec->len + 1);
	memcpy(g->data[g->n], rec->data, rec->len);
	g->r[g->n] = *rec;
	g->r[g->n].data = g->data[g->n];
	g->n++;
	return g->stop_after && g->n >= (size_t)g->stop_after ? 7 : 0;
}

static void
got_free(got *g)
{
	for (size_t i = 0; i < g->n; i++)
		free(g->data[i]);
	free(g->data);
	free(g->r);
	memset(g, 0, sizeof(*g));
}

/* Reads [from, upto] in bounded calls; checks order. */
static int
read_all(repl_log *log, uint64_t from, uint64_t upto, got *g)
{
	for (;;) {
		size_t cnt;
		int rc = repl_log_read(log, from, upto, 4096, collect, g, &cnt);
		if (rc != SP_OK)
			return rc;
		if (cnt == 0)
			return SP_OK;
		ck_assert_uint_eq(g->r[g->n - 1].lsn, from + cnt - 1);
		from += cnt;
	}
}

/* Checks that the log holds exactly lsn first..last with these epochs (by callback) and
 * payloads made with `salt`. */
static void
check_range(repl_log *log, uint64_t first, uint64_t last, uint64_t (*epoch_at)(uint64_t), uint32_t salt)
{
	got g = {0};
	ck_assert_int_eq(read_all(log, first, UINT64_MAX, &g), SP_OK);
	ck_assert_uint_eq(g.n, last - first + 1);
	uint8_t b[PAYLOAD_MAX];
	for (size_t i = 0; i < g.n; i++) {
		uint64_t lsn = first + i;
		ck_assert_uint_eq(g.r[i].lsn, lsn);
		ck_assert_uint_eq(g.r[i].epoch, epoch_at(lsn));
		pay_fill(b, lsn, salt);
		ck_assert_uint_eq(g.r[i].len, pay_len(lsn, salt));
		ck_assert(memcmp(g.r[i].data, b, g.r[i].len) == 0);
	}
	got_free(&g);
}

static uint64_t
epochs_1_3(uint64_t lsn)
{
	return lsn <= 50 ? 1 : 3;
}

static repl_log *
open_ok(const repl_log_config *cfg)
{
	repl_log *log;
	int rc = repl_log_open(dir, cfg, &log);
	ck_assert_msg(rc == SP_OK, "open: %s", sp_strerror(rc));
	return log;
}

static const repl_log_config small = {.segment_bytes = 4096};

START_TEST(test_append_sync_reopen)
{
	repl_log *log = open_ok(&small);
	ck_assert(repl_log_fresh(log));
	ck_assert_uint_eq(repl_log_last(log).lsn, 0);
	ck_assert_uint_eq(repl_log_first_lsn(log), 1);
	for (int i = 0; i < 10; i++)
		extend(log, 1, 5, 9);
	ck_assert_uint_eq(repl_log_flushed(log), 0);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	ck_assert_uint_eq(repl_log_flushed(log), 50);
	extend(log, 3, 50, 9);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	ck_assert_uint_eq(repl_log_flushed(log), 100);
	check_range(log, 1, 100, epochs_1_3, 9);
	repl_log_close(log);

	log = open_ok(&small);
	ck_assert(!repl_log_fresh(log));
	repl_log_pos last = repl_log_last(log);
	ck_assert_uint_eq(last.epoch, 3);
	ck_assert_uint_eq(last.lsn, 100);
	ck_assert_uint_eq(repl_log_flushed(log), 100);
	ck_assert_uint_eq(repl_log_committed(log), 0);
	check_range(log, 1, 100, epochs_1_3, 9);
	/* More than one segment was needed. */
	char p[160];
	snprintf(p, sizeof(p), "%s/%020d.log", dir, 1);
	struct stat st;
	ck_assert_int_eq(stat(p, &st), 0);
	ck_assert(st.st_size <= 4096);
	repl_log_close(log);
}
END_TEST

/* A batch of the largest size is more iovecs than one pwritev takes (IOV_MAX): it is
 * written in several. */
START_TEST(test_append_full_batch)
{
	repl_log *log = open_ok(NULL);
	extend(log, 1, REPL_LOG_BATCH_MAX, 5);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	extend(log, 1, REPL_LOG_BATCH_MAX / 2 + 1, 5);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	repl_log_close(log);
	log = open_ok(NULL);
	ck_assert_uint_eq(repl_log_last(log).lsn, REPL_LOG_BATCH_MAX + REPL_LOG_BATCH_MAX / 2 + 1);
	repl_log_close(log);
}
END_TEST

/* Sum of the segment files' sizes. */
static off_t
dir_bytes(void)
{
	off_t total = 0;
	char p[160];
	for (uint64_t first = 1; first < 100000; first++) {
		struct stat st;
		snprintf(p, sizeof(p), "%s/%020" PRIu64 ".log", dir, first);
		if (stat(p, &st) == 0)
			total += st.st_size;
	}
	return total;
}

START_TEST(test_log_matching_refusals)
{
	repl_log *log = open_ok(NULL);
	ck_assert_int_eq(append_n(log, 0, 1, 2, 1, 0), SP_EGAP); /* empty log: prev is (0, 0) */
	ck_assert_int_eq(append_n(log, 0, 0, 2, 5, 0), SP_OK);
	off_t size = dir_bytes();
	uint8_t b[8] = {0};
	repl_log_rec bad_gap[2] = {{2, 6, b, 8}, {2, 8, b, 8}};
	repl_log_rec bad_back[2] = {{3, 6, b, 8}, {2, 7, b, 8}};
	repl_log_rec zero_epoch = {0, 6, b, 8};
	repl_log_rec null_data = {2, 6, NULL, 8};

	ck_assert_int_eq(append_n(log, 2, 4, 2, 1, 0), SP_EGAP); /* prev is not the last */
	ck_assert_int_eq(append_n(log, 1, 5, 2, 1, 0), SP_EGAP); /* prev epoch differs */
	ck_assert_int_eq(append_n(log, 2, 6, 2, 1, 0), SP_EGAP); /* prev beyond the end */
	ck_assert_int_eq(repl_log_append(log, 2, 5, bad_gap, 2), SP_EGAP); /* gap inside */
	ck_assert_int_eq(repl_log_append(log, 2, 5, &bad_gap[1], 1), SP_EGAP); /* gap after prev */
	ck_assert_int_eq(append_n(log, 2, 5, 1, 3, 0), SP_ESTATE); /* epoch went back */
	ck_assert_int_eq(repl_log_append(log, 2, 5, bad_back, 2), SP_ESTATE); /* back inside */
	ck_assert_int_eq(repl_log_append(log, 2, 5, &zero_epoch, 1), SP_EINVAL);
	ck_assert_int_eq(repl_log_append(log, 2, 5, &null_data, 1), SP_EINVAL);
	ck_assert_int_eq(append_n(log, 2, 5, 2, REPL_LOG_BATCH_MAX + 1, 0), SP_ETOOBIG);
	ck_assert_int_eq(dir_bytes(), size);
	ck_assert_uint_eq(repl_log_last(log).lsn, 5);
	repl_log_close(log);

	repl_log_config tiny = {.max_record = 16};
	log = open_ok(&tiny);
	uint8_t big[17] = {0};
	repl_log_rec toobig = {2, 6, big, 17};
	ck_assert_int_eq(repl_log_append(log, 2, 5, &toobig, 1), SP_ETOOBIG);
	ck_assert_int_eq(repl_log_append(log, 2, 5, NULL, 0), SP_OK); /* empty batch: nothing */
	ck_assert_int_eq(dir_bytes(), size);
	ck_assert_uint_eq(repl_log_last(log).lsn, 5);
	toobig.len = 16;
	ck_assert_int_eq(repl_log_append(log, 2, 5, &toobig, 1), SP_OK);
	repl_log_close(log);

	/* A config out of bounds. */
	repl_log_config badcfg = {.segment_bytes = 100};
	ck_assert_int_eq(repl_log_open(dir, &badcfg, &log), SP_EINVAL);
}
END_TEST

static void
expect_end(repl_log *log, uint64_t epoch, uint64_t want_epoch, uint64_t want_lsn)
{
	repl_log_pos p;
	ck_assert_int_eq(repl_log_epoch_end(log, epoch, &p), SP_OK);
	ck_assert_msg(p.epoch == want_epoch && p.lsn == want_lsn,
	    "epoch_end(%" PRIu64 ") = (%" PRIu64 ", %" PRIu64 "), want (%" PRIu64 ", %" PRIu64 ")", epoch,
	    p.epoch, p.lsn, want_epoch, want_lsn);
}

/* Entries in the epochs file (its count field). */
static uint32_t
epoch_file_count(void)
{
	char p[160];
	snprintf(p, sizeof(p), "%s/epochs", dir);
	FILE *f = fopen(p, "rb");
	if (!f)
		return 0;
	uint8_t h[12];
	size_t n = fread(h, 1, sizeof(h), f);
	fclose(f);
	ck_assert_uint_eq(n, 12);
	return sp_be32_get(h + 8);
}

static void
check_epochs_1_2_5(repl_log *log)
{
	expect_end(log, 0, 0, 0);
	expect_end(log, 1, 1, 10);
	expect_end(log, 2, 2, 16);
	expect_end(log, 3, 2, 16);
	expect_end(log, 4, 2, 16);
	expect_end(log, 5, 5, 30);
	expect_end(log, 9, 5, 30);
}

START_TEST(test_epoch_table)
{
	repl_log *log = open_ok(&small);
	repl_log_pos p;
	ck_assert_int_eq(repl_log_epoch_end(log, 7, &p), SP_OK);
	ck_assert(p.epoch == 0 && p.lsn == 0);
	extend(log, 1, 10, 0);
	extend(log, 2, 5, 0);
	/* One batch crossing from epoch 2 into epoch 5. */
	uint8_t b[4] = {1, 2, 3, 4};
	repl_log_rec r[15];
	for (int i = 0; i < 15; i++)
		r[i] = (repl_log_rec){i == 0 ? 2 : 5, 16 + (uint64_t)i, b, 4};
	ck_assert_int_eq(repl_log_append(log, 2, 15, r, 15), SP_OK);
	check_epochs_1_2_5(log);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	/* The table is durable once sync returns. */
	ck_assert_uint_eq(epoch_file_count(), 3);
	repl_log_close(log);

	log = open_ok(&small);
	check_epochs_1_2_5(log);
	repl_log_close(log);

	/* Rebuilt from the records when the file lags them (a crash between the data's
	 * fdatasync and the table's rename). */
	char p2[160];
	snprintf(p2, sizeof(p2), "%s/epochs", dir);
	ck_assert_int_eq(unlink(p2), 0);
	log = open_ok(&small);
	check_epochs_1_2_5(log);
	ck_assert_uint_eq(epoch_file_count(), 3);
	repl_log_close(log);
}
END_TEST

START_TEST(test_divergence_cases)
{
	/* Unacknowledged suffix of an old epoch: the follower got 16..20 of epoch 2 that the
	 * new leader never had; the leader's epoch 2 ends at 15. */
	ck_assert_uint_eq(repl_divergence((repl_log_pos){2, 20}, (repl_log_pos){2, 15}), 15);
	/* Follower ahead in an epoch the leader never had: truncate to the leader's end of
	 * the epochs below, then ask again. */
	ck_assert_uint_eq(repl_divergence((repl_log_pos){3, 25}, (repl_log_pos){2, 15}), 15);
	/* Follower behind in the leader's epoch: keep everything. */
	ck_assert_uint_eq(repl_divergence((repl_log_pos){4, 12}, (repl_log_pos){4, 40}), 12);
	/* Equal. */
	ck_assert_uint_eq(repl_divergence((repl_log_pos){4, 40}, (repl_log_pos){4, 40}), 40);
	/* Empty follower. */
	ck_assert_uint_eq(repl_divergence((repl_log_pos){0, 0}, (repl_log_pos){0, 0}), 0);
}
END_TEST

/* The full exchange with two real logs, KIP-279's case: the follower also holds an epoch
 * the leader lacks below the leader's first answer.
 *   leader:   epoch 1: 1..5,  epoch 3: 6..12
 *   follower: epoch 1: 1..3,  epoch 2: 4..9   (it led epoch 2 and wrote 4..9, unacknowledged)
 * Round 1: leader.epoch_end(2) = (1, 5): truncate the follower to 5; ask with epoch 1:
 * follower.epoch_end(1) = (1, 3), leader.epoch_end(1) = (1, 5): agree at 3. */
START_TEST(test_divergence_two_logs)
{
	char ldir[128];
	snprintf(ldir, sizeof(ldir), "%s/leader", root);
	repl_log *leader, *fol;
	ck_assert_int_eq(repl_log_open(ldir, NULL, &leader), SP_OK);
	fol = open_ok(NULL);
	extend(leader, 1, 5, 1);
	extend(leader, 3, 7, 1);
	extend(fol, 1, 3, 1);
	extend(fol, 2, 6, 2);
	ck_assert_int_eq(repl_log_sync(leader), SP_OK);
	ck_assert_int_eq(repl_log_sync(fol), SP_OK);

	int rounds = 0;
	repl_log_pos f = repl_log_last(fol), a;
	for (;;) {
		rounds++;
		ck_assert_int_eq(repl_log_epoch_end(leader, f.epoch, &a), SP_OK);
		uint64_t cut = repl_divergence(f, a);
		ck_assert_int_eq(repl_log_truncate(fol, cut), SP_OK);
		if (a.epoch == f.epoch)
			break;
		ck_assert_int_eq(repl_log_epoch_end(fol, a.epoch, &f), SP_OK);
	}
	ck_assert_int_eq(rounds, 2);
	repl_log_pos fl = repl_log_last(fol);
	ck_assert_uint_eq(fl.lsn, 3);
	ck_assert_uint_eq(fl.epoch, 1);
	/* The leader ships from there; the follower's log becomes the leader's. */
	got g = {0};
	ck_assert_int_eq(read_all(leader, fl.lsn + 1, UINT64_MAX, &g), SP_OK);
	ck_assert_int_eq(repl_log_append(fol, fl.epoch, fl.lsn, g.r, g.n), SP_OK);
	got_free(&g);
	got x = {0}, y = {0};
	ck_assert_int_eq(read_all(leader, 1, UINT64_MAX, &x), SP_OK);
	ck_assert_int_eq(read_all(fol, 1, UINT64_MAX, &y), SP_OK);
	ck_assert_uint_eq(x.n, 12);
	ck_assert_uint_eq(y.n, 12);
	for (size_t i = 0; i < x.n; i++) {
		ck_assert_uint_eq(x.r[i].epoch, y.r[i].epoch);
		ck_assert_uint_eq(x.r[i].len, y.r[i].len);
		ck_assert(memcmp(x.r[i].data, y.r[i].data, x.r[i].len) == 0);
	}
	got_free(&x);
	got_free(&y);
	repl_log_close(leader);
	repl_log_close(fol);
}
END_TEST

static uint64_t
epochs_1_2_3(uint64_t lsn)
{
	return lsn <= 10 ? 1 : lsn <= 20 ? 2 : 3;
}

START_TEST(test_truncate)
{
	repl_log *log = open_ok(&small);
	extend(log, 1, 10, 4);
	extend(log, 2, 10, 4);
	extend(log, 3, 10, 4);
	ck_assert_int_eq(repl_log_set_committed(log, 31), SP_ERANGE);
	ck_assert_int_eq(repl_log_set_committed(log, 12), SP_OK);
	ck_assert_int_eq(repl_log_set_committed(log, 8), SP_OK); /* lower: ignored */
	ck_assert_uint_eq(repl_log_committed(log), 12);
	ck_assert_int_eq(repl_log_truncate(log, 11), SP_ERANGE);
	ck_assert_int_eq(repl_log_truncate(log, 0), SP_ERANGE);
	ck_assert_int_eq(repl_log_truncate(log, 30), SP_OK); /* at the end: no-op */
	ck_assert_int_eq(repl_log_truncate(log, 99), SP_OK);
	ck_assert_uint_eq(repl_log_last(log).lsn, 30);
	ck_assert_int_eq(repl_log_truncate(log, 12), SP_OK); /* at the commit point: allowed */
	repl_log_pos last = repl_log_last(log);
	ck_assert(last.epoch == 2 && last.lsn == 12);
	ck_assert_uint_eq(repl_log_flushed(log), 12);
	expect_end(log, 3, 2, 12);
	expect_end(log, 1, 1, 10);
	ck_assert_uint_eq(epoch_file_count(), 2);
	check_range(log, 1, 12, epochs_1_2_3, 4);
	ck_assert_int_eq(append_n(log, 3, 30, 4, 1, 4), SP_EGAP);
	ck_assert_int_eq(append_n(log, 2, 12, 4, 3, 4), SP_OK);
	repl_log_close(log);

	log = open_ok(&small);
	last = repl_log_last(log);
	ck_assert(last.epoch == 4 && last.lsn == 15);
	expect_end(log, 3, 2, 12);
	expect_end(log, 4, 4, 15);
	/* After reopen committed is the trim point (0); raise it again. */
	ck_assert_int_eq(repl_log_set_committed(log, 12), SP_OK);
	ck_assert_int_eq(repl_log_truncate(log, 5), SP_ERANGE);
	repl_log_close(log);
}
END_TEST

/* Truncating across many segments, down to an empty log. */
START_TEST(test_truncate_segments)
{
	repl_log *log = open_ok(&small);
	for (int i = 0; i < 20; i++)
		extend(log, 1 + (uint64_t)i / 5, 10, 1);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	ck_assert(dir_bytes() > 4 * 4096);
	ck_assert_int_eq(repl_log_truncate(log, 77), SP_OK);
	ck_assert_uint_eq(repl_log_last(log).lsn, 77);
	repl_log_close(log);
	log = open_ok(&small);
	ck_assert_uint_eq(repl_log_last(log).lsn, 77);
	ck_assert_uint_eq(repl_log_last(log).epoch, 2);
	ck_assert_int_eq(repl_log_truncate(log, 0), SP_OK);
	ck_assert_uint_eq(repl_log_last(log).lsn, 0);
	ck_assert_uint_eq(repl_log_last(log).epoch, 0);
	ck_assert_uint_eq(epoch_file_count(), 0);
	repl_log_close(log);
	log = open_ok(&small);
	ck_assert_uint_eq(repl_log_last(log).lsn, 0);
	extend(log, 9, 3, 1);
	expect_end(log, 8, 0, 0);
	expect_end(log, 9, 9, 3);
	repl_log_close(log);
}
END_TEST

/* Path and size of the last segment file. */
static off_t
last_segment(char *path, size_t cap)
{
	off_t size = -1;
	uint64_t best = 0;
	for (uint64_t first = 1; first < 10000; first++) {
		char p[160];
		struct stat st;
		snprintf(p, sizeof(p), "%s/%020" PRIu64 ".log", dir, first);
		if (stat(p, &st) == 0 && first > best) {
			best = first;
			size = st.st_size;
			snprintf(path, cap, "%s", p);
		}
	}
	return size;
}

static void
flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	uint8_t c;
	ck_assert_int_eq(pread(fd, &c, 1, off), 1);
	c ^= 0x20;
	ck_assert_int_eq(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

static uint64_t
epoch1(uint64_t lsn)
{
	(void)lsn;
	return 1;
}

START_TEST(test_torn_tail)
{
	repl_log *log = open_ok(NULL);
	extend(log, 1, 20, 3);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	repl_log_close(log);
	char p[160];
	off_t size = last_segment(p, sizeof(p));
	uint32_t last_len = pay_len(20, 3);
	/* Cut in the middle of the last record's payload (or header if it is tiny). */
	ck_assert_int_eq(truncate(p, size - (off_t)(last_len / 2) - 3), 0);
	log = open_ok(NULL);
	ck_assert_uint_eq(repl_log_last(log).lsn, 19);
	ck_assert_uint_eq(repl_log_flushed(log), 19);
	check_range(log, 1, 19, epoch1, 3);
	extend(log, 1, 1, 3);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	check_range(log, 1, 20, epoch1, 3);
	repl_log_close(log);
	/* The file is whole again: cut inside the last header now. */
	size = last_segment(p, sizeof(p));
	ck_assert_int_eq(truncate(p, size - (off_t)last_len - 10), 0);
	log = open_ok(NULL);
	ck_assert_uint_eq(repl_log_last(log).lsn, 19);
	repl_log_close(log);
	/* Garbage after the last record (a write whose bytes never made it). */
	size = last_segment(p, sizeof(p));
	FILE *f = fopen(p, "ab");
	ck_assert_ptr_nonnull(f);
	for (int i = 0; i < 100; i++)
		fputc(i * 37 + 11, f);
	fclose(f);
	log = open_ok(NULL);
	ck_assert_uint_eq(repl_log_last(log).lsn, 19);
	repl_log_close(log);
	ck_assert_int_eq(last_segment(p, sizeof(p)), size);
}
END_TEST

START_TEST(test_flipped_byte_tail)
{
	repl_log *log = open_ok(NULL);
	extend(log, 1, 20, 5);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	repl_log_close(log);
	char p[160];
	off_t size = last_segment(p, sizeof(p));
	flip_byte(p, size - 1 - (off_t)pay_len(20, 5) / 2);
	log = open_ok(NULL);
	ck_assert_uint_eq(repl_log_last(log).lsn, 19);
	check_range(log, 1, 19, epoch1, 5);
	repl_log_close(log);
	/* A flipped epoch field in the (new) last header is caught by the checksum too. */
	size = last_segment(p, sizeof(p));
	flip_byte(p, size - (off_t)pay_len(19, 5) - 24 + 6);
	log = open_ok(NULL);
	ck_assert_uint_eq(repl_log_last(log).lsn, 18);
	repl_log_close(log);
}
END_TEST

/* Byte offset of record `lsn` in a one-segment log of records 1.. made with `salt`. */
static off_t
rec_offset(uint64_t lsn, uint32_t salt)
{
	off_t o = 0;
	for (uint64_t l = 1; l < lsn; l++)
		o += REPL_LOG_HEADER_LEN + pay_len(l, salt);
	return o;
}

START_TEST(test_corrupt_middle)
{
	repl_log *log = open_ok(NULL);
	extend(log, 1, 20, 6);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	repl_log_close(log);
	char p[160];
	last_segment(p, sizeof(p));
	/* A payload byte of record 10: records 11..20 after it are valid, so this is no
	 * torn tail. */
	flip_byte(p, rec_offset(10, 6) + REPL_LOG_HEADER_LEN + (off_t)pay_len(10, 6) / 2);
	ck_assert_int_eq(repl_log_open(dir, NULL, &log), SP_ESTORE);
	/* And its length field: the records after it can no longer be found by walking. */
	flip_byte(p, rec_offset(10, 6) + REPL_LOG_HEADER_LEN + (off_t)pay_len(10, 6) / 2);
	flip_byte(p, rec_offset(10, 6) + 3);
	ck_assert_int_eq(repl_log_open(dir, NULL, &log), SP_ESTORE);
	/* The file was left as it was: nothing was cut. */
	flip_byte(p, rec_offset(10, 6) + 3);
	log = open_ok(NULL);
	ck_assert_uint_eq(repl_log_last(log).lsn, 20);
	repl_log_close(log);
}
END_TEST

START_TEST(test_corrupt_earlier_segment)
{
	repl_log *log = open_ok(&small);
	for (int i = 0; i < 10; i++)
		extend(log, 1, 10, 2);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	repl_log_close(log);
	char p[160];
	snprintf(p, sizeof(p), "%s/%020d.log", dir, 1);
	struct stat st;
	ck_assert_int_eq(stat(p, &st), 0);
	/* The first segment's last byte: the tail of a segment that is not the last. */
	flip_byte(p, st.st_size - 1);
	ck_assert_int_eq(repl_log_open(dir, &small, &log), SP_ESTORE);
	flip_byte(p, st.st_size - 1);
	ck_assert_int_eq(truncate(p, st.st_size - 1), 0);
	ck_assert_int_eq(repl_log_open(dir, &small, &log), SP_ESTORE);
}
END_TEST

START_TEST(test_trim_and_range)
{
	repl_log *log = open_ok(&small);
	for (int i = 0; i < 20; i++)
		extend(log, 1 + (uint64_t)i / 4, 10, 8); /* epochs 1..5, 40 records each */
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	ck_assert_int_eq(repl_log_trim(log, 1000), SP_OK); /* committed is 0: nothing goes */
	ck_assert_uint_eq(repl_log_first_lsn(log), 1);
	ck_assert_int_eq(repl_log_set_committed(log, 150), SP_OK);
	ck_assert_int_eq(repl_log_trim(log, 1000), SP_OK);
	uint64_t first = repl_log_first_lsn(log);
	ck_assert_uint_gt(first, 100);
	ck_assert_uint_le(first, 151);
	got g = {0};
	ck_assert_int_eq(repl_log_read(log, 1, UINT64_MAX, 1 << 20, collect, &g, NULL), SP_ERANGE);
	ck_assert_int_eq(repl_log_read(log, first - 1, UINT64_MAX, 1 << 20, collect, &g, NULL), SP_ERANGE);
	ck_assert_uint_eq(g.n, 0);
	ck_assert_int_eq(repl_log_read(log, first, first, 1 << 20, collect, &g, NULL), SP_OK);
	ck_assert_uint_eq(g.n, 1);
	ck_assert_uint_eq(g.r[0].lsn, first);
	got_free(&g);
	/* Epochs wholly trimmed are unknown; the one covering the trim point is kept. */
	repl_log_pos p;
	uint64_t base_epoch = 1 + (first - 2) / 40;
	ck_assert_int_eq(repl_log_epoch_end(log, base_epoch - 1, &p), SP_ERANGE);
	expect_end(log, base_epoch, base_epoch, base_epoch * 40);
	expect_end(log, 5, 5, 200);
	/* Truncation cannot go below the trim point (nor the commit point). */
	ck_assert_int_eq(repl_log_truncate(log, first - 2), SP_ERANGE);
	repl_log_close(log);

	log = open_ok(&small);
	ck_assert_uint_eq(repl_log_first_lsn(log), first);
	ck_assert_uint_eq(repl_log_committed(log), first - 1);
	ck_assert_uint_eq(repl_log_last(log).lsn, 200);
	ck_assert_int_eq(repl_log_epoch_end(log, base_epoch - 1, &p), SP_ERANGE);
	expect_end(log, base_epoch, base_epoch, base_epoch * 40);
	extend(log, 6, 5, 8);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	/* Trim never takes the segment holding the last record. */
	ck_assert_int_eq(repl_log_set_committed(log, 205), SP_OK);
	ck_assert_int_eq(repl_log_trim(log, 205), SP_OK);
	ck_assert_uint_le(repl_log_first_lsn(log), 205);
	ck_assert_uint_eq(repl_log_last(log).lsn, 205);
	repl_log_close(log);
	log = open_ok(&small);
	ck_assert_uint_eq(repl_log_last(log).lsn, 205);
	ck_assert_uint_eq(repl_log_last(log).epoch, 6);
	repl_log_close(log);
}
END_TEST

/* A log made at a snapshot's position: no records, its last position is the base, the
 * base's epoch is known and older ones are not; it survives a reopen. */
START_TEST(test_open_at)
{
	repl_log *log;
	repl_log_pos p;
	uint64_t e;
	ck_assert_int_eq(repl_log_open_at(dir, &small, (repl_log_pos){0, 5}, &log), SP_EINVAL);
	ck_assert_int_eq(repl_log_open_at(dir, &small, (repl_log_pos){4, 0}, &log), SP_EINVAL);
	ck_assert_int_eq(repl_log_open_at(dir, &small, (repl_log_pos){4, 300}, &log), SP_OK);
	ck_assert(repl_log_fresh(log));
	ck_assert_uint_eq(repl_log_last(log).lsn, 300);
	ck_assert_uint_eq(repl_log_last(log).epoch, 4);
	ck_assert_uint_eq(repl_log_first_lsn(log), 301);
	ck_assert_uint_eq(repl_log_committed(log), 300);
	ck_assert_uint_eq(repl_log_flushed(log), 300);
	ck_assert_int_eq(repl_log_epoch_at(log, 300, &e), SP_OK);
	ck_assert_uint_eq(e, 4);
	ck_assert_int_eq(repl_log_epoch_at(log, 299, &e), SP_ERANGE);
	ck_assert_int_eq(repl_log_epoch_at(log, 301, &e), SP_ERANGE);
	ck_assert_int_eq(repl_log_epoch_end(log, 3, &p), SP_ERANGE);
	expect_end(log, 4, 4, 300);
	got g = {0};
	ck_assert_int_eq(repl_log_read(log, 300, UINT64_MAX, 1 << 20, collect, &g, NULL), SP_ERANGE);
	ck_assert_int_eq(append_n(log, 4, 299, 4, 1, 1), SP_EGAP);
	extend(log, 4, 10, 3);
	extend(log, 6, 10, 3);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	ck_assert_int_eq(repl_log_epoch_at(log, 310, &e), SP_OK);
	ck_assert_uint_eq(e, 4);
	ck_assert_int_eq(repl_log_epoch_at(log, 311, &e), SP_OK);
	ck_assert_uint_eq(e, 6);
	repl_log_close(log);
	/* A directory that holds a log is refused. */
	ck_assert_int_eq(repl_log_open_at(dir, &small, (repl_log_pos){4, 300}, &log), SP_EEXIST);

	log = open_ok(&small);
	ck_assert(!repl_log_fresh(log));
	ck_assert_uint_eq(repl_log_first_lsn(log), 301);
	ck_assert_uint_eq(repl_log_last(log).lsn, 320);
	ck_assert_uint_eq(repl_log_committed(log), 300);
	expect_end(log, 4, 4, 310);
	expect_end(log, 5, 4, 310);
	ck_assert_int_eq(repl_log_epoch_end(log, 3, &p), SP_ERANGE);
	ck_assert_int_eq(repl_log_read(log, 301, 320, 1 << 20, collect, &g, NULL), SP_OK);
	ck_assert_uint_eq(g.n, 20);
	ck_assert_uint_eq(g.r[0].lsn, 301);
	got_free(&g);
	repl_log_close(log);
}
END_TEST

/* Retention keeps at least keep_bytes of segments. */
START_TEST(test_retain)
{
	repl_log *log = open_ok(&small);
	for (int i = 0; i < 40; i++)
		extend(log, 1, 10, 8);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	ck_assert_int_eq(repl_log_set_committed(log, 400), SP_OK);
	uint64_t total = repl_log_bytes(log);
	ck_assert_uint_gt(total, 4 * 4096);
	ck_assert_int_eq(repl_log_retain(log, 400, total), SP_OK);
	ck_assert_uint_eq(repl_log_first_lsn(log), 1);
	ck_assert_int_eq(repl_log_retain(log, 400, total / 2), SP_OK);
	uint64_t first = repl_log_first_lsn(log);
	ck_assert_uint_gt(first, 1);
	ck_assert_uint_ge(repl_log_bytes(log), total / 2);
	ck_assert_int_eq(repl_log_retain(log, 400, 0), SP_OK);
	ck_assert_uint_gt(repl_log_first_lsn(log), first);
	ck_assert_uint_lt(repl_log_bytes(log), total / 2);
	repl_log_close(log);
}
END_TEST

START_TEST(test_read_bounds)
{
	repl_log *log = open_ok(NULL);
	extend(log, 1, 50, 1);
	got g = {0};
	size_t cnt;
	/* Unflushed records are readable too. */
	ck_assert_int_eq(repl_log_read(log, 1, 50, 0, collect, &g, &cnt), SP_OK);
	ck_assert_uint_eq(cnt, 1); /* max_bytes 0: still one record */
	ck_assert_int_eq(repl_log_read(log, 2, 50, pay_len(2, 1) + pay_len(3, 1), collect, &g, &cnt), SP_OK);
	ck_assert_uint_eq(cnt, 2);
	ck_assert_int_eq(repl_log_read(log, 4, 10, 1 << 20, collect, &g, &cnt), SP_OK);
	ck_assert_uint_eq(cnt, 7);
	g.stop_after = (int)g.n + 3;
	ck_assert_int_eq(repl_log_read(log, 11, 50, 1 << 20, collect, &g, &cnt), 7);
	ck_assert_uint_eq(cnt, 3);
	ck_assert_uint_eq(g.n, 13);
	for (size_t i = 0; i < g.n; i++)
		ck_assert_uint_eq(g.r[i].lsn, i + 1);
	got_free(&g);
	ck_assert_int_eq(repl_log_read(log, 51, UINT64_MAX, 100, collect, &g, &cnt), SP_OK);
	ck_assert_uint_eq(cnt, 0);
	ck_assert_int_eq(repl_log_read(log, 52, UINT64_MAX, 100, collect, &g, &cnt), SP_ERANGE);
	ck_assert_int_eq(repl_log_read(log, 0, UINT64_MAX, 100, collect, &g, &cnt), SP_EINVAL);
	ck_assert_int_eq(repl_log_read(log, 30, 20, 100, collect, &g, &cnt), SP_OK);
	ck_assert_uint_eq(cnt, 0);
	repl_log_close(log);
}
END_TEST

START_TEST(test_incarnation)
{
	repl_log *log = open_ok(NULL);
	ck_assert(repl_log_fresh(log));
	uint8_t a[16], b[16], c[16];
	repl_log_incarnation(log, a);
	extend(log, 1, 3, 0);
	ck_assert_int_eq(repl_log_sync(log), SP_OK);
	repl_log *again;
	ck_assert_int_eq(repl_log_open(dir, NULL, &again), SP_ESTATE); /* locked */
	repl_log_close(log);

	log = open_ok(NULL);
	ck_assert(!repl_log_fresh(log));
	repl_log_incarnation(log, b);
	ck_assert(memcmp(a, b, 16) == 0);
	repl_log_close(log);

	char other[128];
	snprintf(other, sizeof(other), "%s/other", root);
	ck_assert_int_eq(repl_log_open(other, NULL, &log), SP_OK);
	ck_assert(repl_log_fresh(log));
	repl_log_incarnation(log, c);
	ck_assert(memcmp(a, c, 16) != 0);
	repl_log_close(log);

	/* Segments without an identity: a new incarnation, and fresh. */
	char p[160];
	snprintf(p, sizeof(p), "%s/incarnation", dir);
	ck_assert_int_eq(unlink(p), 0);
	log = open_ok(NULL);
	ck_assert(repl_log_fresh(log));
	repl_log_incarnation(log, c);
	ck_assert(memcmp(a, c, 16) != 0);
	ck_assert_uint_eq(repl_log_last(log).lsn, 3);
	repl_log_close(log);

	/* An identity without segments is a damaged directory. */
	snprintf(p, sizeof(p), "%s/%020d.log", dir, 1);
	ck_assert_int_eq(unlink(p), 0);
	ck_assert_int_eq(repl_log_open(dir, NULL, &log), SP_ESTORE);
	/* A damaged incarnation file too. */
	snprintf(p, sizeof(p), "%s/incarnation", other);
	ck_assert_int_eq(truncate(p, 5), 0);
	ck_assert_int_eq(repl_log_open(other, NULL, &log), SP_ESTORE);
}
END_TEST

/* One writer appends and syncs; two readers read everything as it comes and check it. */
typedef struct rd_arg {
	repl_log *log;
	uint64_t target;
	int errors;
	uint64_t next;
} rd_arg;

static int
rd_check(void *arg, const repl_log_rec *rec)
{
	rd_arg *a = arg;
	uint8_t b[PAYLOAD_MAX];
	pay_fill(b, rec->lsn, 11);
	if (rec->lsn != a->next || rec->len != pay_len(rec->lsn, 11) || memcmp(b, rec->data, rec->len) != 0 ||
	    rec->epoch != 1 + rec->lsn / 1000)
		a->errors++;
	a->next++;
	return 0;
}

static void *
reader(void *arg)
{
	rd_arg *a = arg;
	a->next = 1;
	while (a->next <= a->target && a->errors == 0) {
		int rc = repl_log_read(a->log, a->next, UINT64_MAX, 8192, rd_check, a, NULL);
		if (rc != SP_OK)
			a->errors++;
		repl_log_pos e;
		if (repl_log_epoch_end(a->log, 2, &e) != SP_OK)
			a->errors++;
		(void)repl_log_flushed(a->log);
	}
	return NULL;
}

START_TEST(test_concurrent_readers)
{
	repl_log_config cfg = {.segment_bytes = 64 * 1024};
	repl_log *log = open_ok(&cfg);
	enum { TOTAL = 20000 };
	rd_arg ra[2] = {{log, TOTAL, 0, 0}, {log, TOTAL, 0, 0}};
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, reader, &ra[i]), 0);
	uint64_t lsn = 0, epoch = 0;
	while (lsn < TOTAL) {
		enum { B = 50 };
		repl_log_rec r[B];
		uint8_t b[B][PAYLOAD_MAX];
		for (int i = 0; i < B; i++) {
			uint64_t l = lsn + 1 + (uint64_t)i;
			pay_fill(b[i], l, 11);
			r[i] = (repl_log_rec){1 + l / 1000, l, b[i], pay_len(l, 11)};
		}
		ck_assert_int_eq(repl_log_append(log, epoch, lsn, r, B), SP_OK);
		lsn += B;
		epoch = r[B - 1].epoch;
		if (lsn % 1000 == 0)
			ck_assert_int_eq(repl_log_sync(log), SP_OK);
		ck_assert_int_eq(repl_log_set_committed(log, lsn - B / 2), SP_OK);
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(ra[i].errors, 0);
		ck_assert_uint_eq(ra[i].next, TOTAL + 1);
	}
	repl_log_close(log);
}
END_TEST

/*
 * The model test. The model is the log's whole history (trimmed records included), the
 * number of records known durable, the commit and trim points. Operations: appends
 * (sometimes in a new epoch), refused appends, syncs, truncates (refused below the commit
 * point), commit advances, trims, reads, clean reopens and crashes. A crash keeps what was
 * durable (the files' sizes at the last sync, truncate or trim) plus a random part of what
 * was written after it, maybe followed by garbage; the recovered log must be a prefix of the
 * model's history at least as long as its durable part, and is then adopted.
 */
typedef struct mrec {
	uint64_t epoch;
	uint32_t salt;
} mrec;

typedef struct model {
	mrec *h; /* h[i]: lsn i + 1 */
	size_t n, cap;
	uint64_t synced, committed, base;
	uint32_t salt;
	uint64_t epoch;
	/* The files at the last durable point. */
	uint64_t snap_first[4096];
	off_t snap_size[4096];
	size_t nsnap;
} model;

static uint64_t rng_state;

static uint64_t
rnd(void)
{
	return test_rng_next(&rng_state);
}

static uint64_t
rnd_below(uint64_t n)
{
	return test_rng_below(&rng_state, n);
}

/* Lists segment files (sorted) with their sizes. */
static size_t
list_segments(uint64_t *first, off_t *size, size_t cap)
{
	size_t n = 0;
	char p[512];
	struct dirent **ents;
	int cnt = scandir(dir, &ents, NULL, alphasort);
	ck_assert_int_ge(cnt, 0);
	for (int i = 0; i < cnt; i++) {
		const char *nm = ents[i]->d_name;
		if (strlen(nm) == 24 && strcmp(nm + 20, ".log") == 0 && n < cap) {
			struct stat st;
			snprintf(p, sizeof(p), "%s/%s", dir, nm);
			ck_assert_int_eq(stat(p, &st), 0);
			first[n] = strtoull(nm, NULL, 10);
			size[n] = st.st_size;
			n++;
		}
		free(ents[i]);
	}
	free(ents);
	return n;
}

static void
snapshot(model *m)
{
	m->nsnap = list_segments(m->snap_first, m->snap_size, 4096);
	m->synced = m->n;
}

/* Trim deletes front segments and fsyncs the directory, but syncs no data: every file's
 * name is now durable, its bytes only as far as they were at the last durable point. */
static void
snap_trimmed(model *m)
{
	uint64_t first[4096];
	off_t size[4096];
	size_t n = list_segments(first, size, 4096);
	for (size_t i = 0; i < n; i++) {
		off_t was = 0;
		for (size_t j = 0; j < m->nsnap; j++)
			if (m->snap_first[j] == first[i])
				was = m->snap_size[j];
		size[i] = was;
	}
	memcpy(m->snap_first, first, n * sizeof(*first));
	memcpy(m->snap_size, size, n * sizeof(*size));
	m->nsnap = n;
}

static void
m_check(repl_log *log, model *m, uint64_t seed, int step)
{
	repl_log_pos last = repl_log_last(log);
	ck_assert_msg(last.lsn == m->n, "seed %" PRIu64 " step %d: last %" PRIu64 " model %zu", seed, step,
	    last.lsn, m->n);
	ck_assert_msg(last.epoch == (m->n ? m->h[m->n - 1].epoch : 0), "seed %" PRIu64 " step %d: last epoch",
	    seed, step);
	ck_assert_msg(repl_log_first_lsn(log) == m->base + 1, "seed %" PRIu64 " step %d: first %" PRIu64
	    " model %" PRIu64, seed, step, repl_log_first_lsn(log), m->base + 1);
	/* A random range, compared record by record. */
	if (m->n > m->base) {
		uint64_t from = m->base + 1 + rnd_below(m->n - m->base);
		got g = {0};
		ck_assert_int_eq(read_all(log, from, from + 40, &g), SP_OK);
		uint8_t b[PAYLOAD_MAX];
		for (size_t i = 0; i < g.n; i++) {
			uint64_t lsn = from + i;
			const mrec *r = &m->h[lsn - 1];
			pay_fill(b, lsn, r->salt);
			ck_assert_msg(g.r[i].lsn == lsn && g.r[i].epoch == r->epoch && g.r[i].len == pay_len(lsn, r->salt) &&
				memcmp(g.r[i].data, b, g.r[i].len) == 0,
			    "seed %" PRIu64 " step %d: record %" PRIu64 " differs", seed, step, lsn);
		}
		uint64_t want = from + 40 <= m->n ? 41 : m->n - from + 1;
		ck_assert_uint_eq(g.n, want);
		got_free(&g);
	}
	/* epoch_end for a random epoch against the history. */
	uint64_t q = rnd_below(m->epoch + 2);
	repl_log_pos a;
	int rc = repl_log_epoch_end(log, q, &a);
	uint64_t we = 0, wl = 0;
	for (size_t i = 0; i < m->n; i++)
		if (m->h[i].epoch <= q) {
			we = m->h[i].epoch;
			wl = i + 1;
		}
	if (m->n && q >= m->h[m->n - 1].epoch) {
		we = m->h[m->n - 1].epoch;
		wl = m->n;
	}
	if (rc == SP_ERANGE)
		ck_assert_msg(wl < m->base + 1, "seed %" PRIu64 " step %d: epoch_end(%" PRIu64 ") refused", seed, step, q);
	else
		ck_assert_msg(rc == SP_OK && a.epoch == we && a.lsn == wl,
		    "seed %" PRIu64 " step %d: epoch_end(%" PRIu64 ") = (%" PRIu64 ", %" PRIu64 ") want (%" PRIu64
		    ", %" PRIu64 ")",
		    seed, step, q, a.epoch, a.lsn, we, wl);
}

/*
 * What a crash may leave, given how the log writes: files named at the last durable point
 * survive; newer files survive as a prefix of their creation order (maybe none). Every
 * surviving file but the last is whole (the log fdatasyncs a segment before it starts the
 * next); the last keeps its durable size plus a random part of what was written to it,
 * and sometimes garbage (blocks allocated but never written).
 */
static void
crash_files(model *m)
{
	uint64_t first[4096];
	off_t size[4096];
	size_t n = list_segments(first, size, 4096);
	size_t named = 0; /* files whose names are durable: a prefix */
	while (named < n) {
		bool in = false;
		for (size_t j = 0; j < m->nsnap; j++)
			in |= m->snap_first[j] == first[named];
		if (!in)
			break;
		named++;
	}
	size_t keepn = named + (size_t)rnd_below(n - named + 1);
	if (keepn == 0)
		keepn = 1;
	char p[160];
	for (size_t i = keepn; i < n; i++) {
		snprintf(p, sizeof(p), "%s/%020" PRIu64 ".log", dir, first[i]);
		ck_assert_int_eq(unlink(p), 0);
	}
	size_t t = keepn - 1;
	snprintf(p, sizeof(p), "%s/%020" PRIu64 ".log", dir, first[t]);
	if (t + 1 == n) {
		/* The file being written: durable size plus luck. */
		off_t was = 0;
		for (size_t j = 0; j < m->nsnap; j++)
			if (m->snap_first[j] == first[t])
				was = m->snap_size[j];
		ck_assert_int_ge(size[t], was);
		off_t keep = rnd_below(3) == 0 ? 0 : (off_t)rnd_below((uint64_t)(size[t] - was) + 1);
		ck_assert_int_eq(truncate(p, was + keep), 0);
	}
	if (rnd_below(2)) {
		FILE *f = fopen(p, "ab");
		ck_assert_ptr_nonnull(f);
		uint64_t g = 1 + rnd_below(60);
		for (uint64_t i = 0; i < g; i++)
			fputc((int)(rnd() & 0xff), f);
		fclose(f);
	}
}

static void
model_run(uint64_t seed, int steps)
{
	rng_state = seed * 0x9e3779b97f4a7c15ULL + 1;
	model *m = calloc(1, sizeof(*m));
	ck_assert_ptr_nonnull(m);
	m->epoch = 1;
	repl_log *log = open_ok(&small);
	snapshot(m);
	for (int step = 0; step < steps; step++) {
		uint64_t op = rnd_below(100);
		if (op < 45) {
			/* Append a batch, sometimes into a new epoch. */
			if (rnd_below(10) == 0)
				m->epoch += 1 + rnd_below(3);
			size_t cnt = 1 + rnd_below(8);
			uint64_t pe = m->n ? m->h[m->n - 1].epoch : 0;
			m->salt++;
			ck_assert_int_eq(append_n(log, pe, m->n, m->epoch, cnt, m->salt), SP_OK);
			if (m->n + cnt > m->cap) {
				m->cap = 2 * (m->n + cnt);
				m->h = realloc(m->h, m->cap * sizeof(*m->h));
				ck_assert_ptr_nonnull(m->h);
			}
			for (size_t i = 0; i < cnt; i++)
				m->h[m->n++] = (mrec){m->epoch, m->salt};
		} else if (op < 50) {
			/* A batch that does not follow: refused, nothing written. */
			uint64_t pe = m->n ? m->h[m->n - 1].epoch : 0;
			uint64_t pl = m->n + 1 + rnd_below(3);
			int want = SP_EGAP;
			if (m->n && rnd_below(2)) {
				pl = m->n;
				want = pe > 1 ? SP_ESTATE : SP_OK;
			}
			if (want != SP_OK)
				ck_assert_int_eq(append_n(log, pe, pl, pe > 1 ? pe - 1 : 1, 2, 0), want);
		} else if (op < 62) {
			ck_assert_int_eq(repl_log_sync(log), SP_OK);
			ck_assert_uint_eq(repl_log_flushed(log), m->n);
			snapshot(m);
		} else if (op < 70) {
			/* Commit something durable. */
			uint64_t c = m->committed + rnd_below(m->synced - m->committed + 1);
			ck_assert_int_eq(repl_log_set_committed(log, c), SP_OK);
			m->committed = c;
		} else if (op < 78) {
			/* Truncate a suffix; below the commit point it is refused. */
			uint64_t lo = m->committed > 5 ? m->committed - 5 : 0;
			uint64_t after = lo + rnd_below(m->n - lo + 2);
			int rc = repl_log_truncate(log, after);
			if (after < m->committed) {
				ck_assert_int_eq(rc, SP_ERANGE);
			} else {
				ck_assert_int_eq(rc, SP_OK);
				if (after < m->n) {
					m->n = after;
					ck_assert_uint_eq(repl_log_flushed(log), after);
					snapshot(m);
				}
			}
		} else if (op < 84) {
			uint64_t upto = rnd_below(m->n + 1);
			ck_assert_int_eq(repl_log_trim(log, upto), SP_OK);
			uint64_t first = repl_log_first_lsn(log);
			uint64_t lim = upto < m->committed ? upto : m->committed;
			ck_assert_uint_ge(first, m->base + 1);
			ck_assert_uint_le(first - 1, lim > m->base ? lim : m->base);
			m->base = first - 1;
			snap_trimmed(m);
		} else if (op < 90) {
			/* A clean close and reopen: what the process wrote survives. */
			repl_log_close(log);
			log = open_ok(&small);
			ck_assert(!repl_log_fresh(log));
			ck_assert_uint_eq(repl_log_flushed(log), m->n);
			ck_assert_int_eq(repl_log_set_committed(log, m->committed), SP_OK);
			snapshot(m);
		} else if (op < 96) {
			/* A crash: only durable bytes plus some luck survive. */
			repl_log_close(log);
			crash_files(m);
			log = open_ok(&small);
			repl_log_pos last = repl_log_last(log);
			ck_assert_msg(last.lsn >= m->synced && last.lsn <= m->n,
			    "seed %" PRIu64 " step %d: recovered %" PRIu64 ", durable %" PRIu64 ", written %zu", seed,
			    step, last.lsn, m->synced, m->n);
			m->n = last.lsn;
			ck_assert_uint_ge(m->n, m->committed);
			ck_assert_int_eq(repl_log_set_committed(log, m->committed), SP_OK);
			snapshot(m);
		}
		m_check(log, m, seed, step);
	}
	repl_log_close(log);
	free(m->h);
	free(m);
}

START_TEST(test_model_random)
{
	const char *env = getenv("SP_SEED");
	uint64_t seed = env ? strtoull(env, NULL, 10) : 1000 + (uint64_t)_i;
	model_run(seed, 2500);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("repl_log");
	TCase *tc = tcase_create("log");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, test_append_sync_reopen);
	tcase_add_test(tc, test_append_full_batch);
	tcase_add_test(tc, test_log_matching_refusals);
	tcase_add_test(tc, test_epoch_table);
	tcase_add_test(tc, test_divergence_cases);
	tcase_add_test(tc, test_divergence_two_logs);
	tcase_add_test(tc, test_truncate);
	tcase_add_test(tc, test_truncate_segments);
	tcase_add_test(tc, test_torn_tail);
	tcase_add_test(tc, test_flipped_byte_tail);
	tcase_add_test(tc, test_corrupt_middle);
	tcase_add_test(tc, test_corrupt_earlier_segment);
	tcase_add_test(tc, test_trim_and_range);
	tcase_add_test(tc, test_open_at);
	tcase_add_test(tc, test_retain);
	tcase_add_test(tc, test_read_bounds);
	tcase_add_test(tc, test_incarnation);
	tcase_add_test(tc, test_concurrent_readers);
	tcase_add_loop_test(tc, test_model_random, 0, 4);
	suite_add_tcase(s, tc);
	return check_run(s);
}
