/* Snapshots: made and served by the primary, downloaded and installed by a new copy. */
#include "snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "repl/ha.h"
#include "sp_error.h"
#include "sp_io.h"
#include "sp_log.h"
#include "sp_nng.h"
#include "sp_time.h"

#define SERVE_FILE "snapshot-serve.mdb"
#define PARTIAL_FILE "snapshot.partial"
#define READY_PREFIX "snapshot-" /* snapshot-<epoch>-<lsn>.mdb: downloaded, not installed */
#define READY_SUFFIX ".mdb"
#define LOG_DIR "repl"
#define SNAP_MAX_SIZE (1ULL << 46) /* bytes: far above any map size we configure */
#define POS_MAX (1ULL << 62)
#define BUSY_REUSE_MS 10000 /* a snapshot fetched from this recently is not replaced */
#define MAKING_RETRY_MS 500
#define CALL_TIMEOUT_MS 3000

/* ---- the primary's side ---- */

typedef enum { SNAP_NONE, SNAP_MAKING, SNAP_READY } snap_state;

struct repl_snap_src {
	char dir[PATH_MAX];
	char path[PATH_MAX];
	repl_snap_copy_fn copy;
	void *copy_arg;
	repl_log *log;
	uint64_t rate;
	sp_metric *m_made, *m_sent;

	pthread_mutex_t mu; /* guards everything below */
	pthread_cond_t cv; /* busy dropped to 0, a snapshot got made */
	snap_state state;
	pthread_t th;
	bool th_joinable;
	uint8_t id[16];
	int fd;
	uint64_t size, lsn, epoch, pin;
	uint8_t sha[crypto_hash_sha256_BYTES];
	uint64_t made_ms, used_ms;
	unsigned busy; /* chunk reads in progress on fd */
	/* The copies that started downloading it, and which of them have since fetched the
	 * log from its LSN on: when all have, it stops pinning the log (and is not reused:
	 * the records after it may go). */
	char who[REPL_HA_MAX_COPIES][REPL_HA_NAME_MAX + 1];
	bool who_done[REPL_HA_MAX_COPIES];
	size_t nwho;
	bool released;
};

static int
file_sha256(int fd, uint64_t size, uint8_t out[crypto_hash_sha256_BYTES])
{
	crypto_hash_sha256_state h;
	uint8_t *buf = malloc(1u << 20);
	if (!buf)
		return SP_ENOMEM;
	crypto_hash_sha256_init(&h);
	uint64_t off = 0;
	int rc = SP_OK;
	while (off < size) {
		ssize_t n = pread(fd, buf, 1u << 20, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = SP_EIO;
			break;
		}
		crypto_hash_sha256_update(&h, buf, (unsigned long long)n);
		off += (uint64_t)n;
	}
	free(buf);
	if (rc == SP_OK)
		crypto_hash_sha256_final(&h, out);
	return rc;
}

/* Drops the snapshot (lock held, no reader busy). */
static void
snap_drop(repl_snap_src *s)
{
	if (s->state != SNAP_READY)
		return;
	close(s->fd);
	s->fd = -1;
	unlink(s->path);
	s->state = SNAP_NONE;
	s->pin = UINT64_MAX;
	s->nwho = 0;
	s->released = false;
}

static void *
make_main(void *arg)
{
	repl_snap_src *s = arg;
	uint64_t t0 = sp_mono_ms(), lsn = 0, epoch = 0, size = 0;
	uint8_t sha[crypto_hash_sha256_BYTES];
	struct stat stt;
	int rc = SP_EIO;
	int fd = open(s->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0 && (rc = s->copy(s->copy_arg, fd, s->path, &lsn)) == SP_OK) {
		rc = SP_EIO;
		if (fstat(fd, &stt) == 0) {
			size = (uint64_t)stt.st_size;
			if ((rc = repl_log_epoch_at(s->log, lsn, &epoch)) == SP_OK)
				rc = file_sha256(fd, size, sha);
		}
	}
	pthread_mutex_lock(&s->mu);
	if (rc == SP_OK) {
		s->fd = fd;
		s->size = size;
		s->lsn = lsn;
		s->epoch = epoch;
		s->pin = lsn;
		memcpy(s->sha, sha, sizeof(sha));
		randombytes_buf(s->id, sizeof(s->id));
		s->made_ms = s->used_ms = sp_mono_ms();
		s->state = SNAP_READY;
		sp_metric_inc(s->m_made);
		sp_info("snapshot: made at (%" PRIu64 ", %" PRIu64 "), %" PRIu64 " bytes in %" PRIu64
			" ms",
		    epoch, lsn, size, sp_mono_ms() - t0);
	} else {
		sp_error("snapshot: cannot make one in %s: %s", s->path, sp_strerror(rc));
		if (fd >= 0)
			close(fd);
		unlink(s->path);
		s->state = SNAP_NONE;
		s->pin = UINT64_MAX;
	}
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

int
repl_snap_src_new(repl_snap_src **out, const char *data_dir, repl_snap_copy_fn copy,
    void *copy_arg, repl_log *log, uint64_t rate_bytes, sp_metric *made, sp_metric *sent)
{
	repl_snap_src *s = calloc(1, sizeof(*s));
	if (!s)
		return SP_ENOMEM;
	if ((size_t)snprintf(s->dir, sizeof(s->dir), "%s", data_dir) >= sizeof(s->dir)
	    || (size_t)snprintf(s->path, sizeof(s->path), "%s/" SERVE_FILE, data_dir)
		>= sizeof(s->path)) {
		free(s);
		return SP_EINVAL;
	}
	s->copy = copy;
	s->copy_arg = copy_arg;
	s->m_made = made;
	s->m_sent = sent;
	s->log = log;
	s->rate = rate_bytes;
	s->fd = -1;
	s->pin = UINT64_MAX;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	unlink(s->path); /* a crashed process's */
	*out = s;
	return SP_OK;
}

void
repl_snap_src_free(repl_snap_src *s)
{
	if (!s)
		return;
	repl_snap_expire(s, 0, true);
	if (s->th_joinable)
		pthread_join(s->th, NULL);
	pthread_mutex_lock(&s->mu);
	while (s->busy)
		pthread_cond_wait(&s->cv, &s->mu);
	snap_drop(s);
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s);
}

void
repl_snap_fetched(repl_snap_src *s, const char *name, uint64_t last_lsn)
{
	pthread_mutex_lock(&s->mu);
	if (s->state == SNAP_READY && !s->released && last_lsn >= s->lsn) {
		bool all = s->nwho > 0;
		for (size_t k = 0; k < s->nwho; k++) {
			if (strcmp(s->who[k], name) == 0)
				s->who_done[k] = true;
			all = all && s->who_done[k];
		}
		if (all) {
			s->released = true;
			s->pin = UINT64_MAX;
			sp_info("snapshot: at %" PRIu64 ": every copy that took it fetches the log "
				"after it; the log is no longer pinned",
			    s->lsn);
		}
	}
	pthread_mutex_unlock(&s->mu);
}

uint64_t
repl_snap_pin(repl_snap_src *s)
{
	pthread_mutex_lock(&s->mu);
	uint64_t pin = s->pin;
	pthread_mutex_unlock(&s->mu);
	return pin;
}

void
repl_snap_expire(repl_snap_src *s, uint64_t now_ms, bool all)
{
	pthread_mutex_lock(&s->mu);
	if (all)
		while (s->state == SNAP_MAKING)
			pthread_cond_wait(&s->cv, &s->mu);
	if (s->state == SNAP_READY && s->busy == 0
	    && (all || now_ms - s->used_ms > REPL_SNAP_KEEP_MS)) {
		sp_info("snapshot: at %" PRIu64 " deleted (%s)", s->lsn, all ? "stopping" : "unused");
		snap_drop(s);
	}
	pthread_mutex_unlock(&s->mu);
}

static nng_msg *
error_msg(const sp_frame *req, int code, const char *reason, uint64_t retry_after_ms)
{
	sp_frame f;
	nng_msg *m;
	sp_frame_init(&f, SP_T_ERROR, req->id, req->has_id);
	sp_frame_set_i64(&f, SP_F_CODE, code);
	if (reason)
		sp_frame_set_str(&f, SP_F_REASON, reason);
	if (retry_after_ms)
		sp_frame_set_u64(&f, SP_F_RETRY_AFTER, retry_after_ms);
	return sp_nng_msg_from_frame(&f, &m) ? NULL : m;
}

/* Starts making a snapshot (lock held, state NONE). */
static int
start_making(repl_snap_src *s)
{
	if (s->th_joinable) {
		pthread_join(s->th, NULL); /* the last maker, long finished */
		s->th_joinable = false;
	}
	/* Nothing more is trimmed while the copy is made: whatever LSN it holds, the log
	 * keeps the records after it. */
	s->pin = repl_log_first_lsn(s->log) - 1;
	s->nwho = 0;
	s->released = false;
	s->state = SNAP_MAKING;
	if (pthread_create(&s->th, NULL, make_main, s)) {
		s->state = SNAP_NONE;
		s->pin = UINT64_MAX;
		return SP_ENOMEM;
	}
	s->th_joinable = true;
	return SP_OK;
}


nng_msg *
repl_snap_serve(repl_snap_src *s, const sp_frame *req)
{
	char name[REPL_HA_NAME_MAX + 1];
	uint64_t offset = sp_frame_u64(req, SP_F_OFFSET);
	bool has_id = sp_frame_has(req, SP_F_SNAP_ID);
	sp_bin id = sp_frame_bin(req, SP_F_SNAP_ID);
	if (sp_frame_str(req, SP_F_NAME, name, sizeof(name)))
		return error_msg(req, SP_ERANGE, "name out of range", 0);

	pthread_mutex_lock(&s->mu);
	uint64_t now = sp_mono_ms();
	if (!has_id) {
		bool reuse = s->state == SNAP_READY && !s->released
		    && (now - s->made_ms < REPL_SNAP_REUSE_MS || now - s->used_ms < BUSY_REUSE_MS);
		if (!reuse && s->state != SNAP_MAKING) {
			while (s->busy)
				pthread_cond_wait(&s->cv, &s->mu);
			snap_drop(s);
			int rc = start_making(s);
			if (rc) {
				pthread_mutex_unlock(&s->mu);
				return error_msg(req, rc, "cannot make a snapshot", 0);
			}
			sp_info("snapshot: %s asked for one; making it", name);
		}
		if (s->state == SNAP_MAKING) {
			pthread_mutex_unlock(&s->mu);
			return error_msg(req, SP_EUNAVAIL, "making the snapshot", MAKING_RETRY_MS);
		}
	} else if (s->state != SNAP_READY || memcmp(id.p, s->id, sizeof(s->id)) != 0) {
		pthread_mutex_unlock(&s->mu);
		return error_msg(req, SP_ESTATE, "that snapshot is no longer served: start again", 0);
	}
	if (offset > s->size) {
		pthread_mutex_unlock(&s->mu);
		return error_msg(req, SP_ERANGE, "offset past the snapshot's end", 0);
	}
	if (offset == 0) {
		size_t k = 0;
		while (k < s->nwho && strcmp(s->who[k], name) != 0)
			k++;
		if (k == s->nwho && k < REPL_HA_MAX_COPIES)
			snprintf(s->who[s->nwho++], sizeof(s->who[0]), "%s", name);
		if (k < s->nwho)
			s->who_done[k] = false;
	}
	s->used_ms = now;
	s->busy++;
	int fd = s->fd;
	uint64_t size = s->size, lsn = s->lsn, epoch = s->epoch;
	uint8_t sid[16], sha[crypto_hash_sha256_BYTES];
	memcpy(sid, s->id, sizeof(sid));
	memcpy(sha, s->sha, sizeof(sha));
	pthread_mutex_unlock(&s->mu);

	/* Throttled, a chunk is a quarter second's worth: the asker's call never waits long. */
	size_t cap = REPL_SNAP_CHUNK;
	if (s->rate && s->rate / 4 < cap)
		cap = s->rate / 4 < 4096 ? 4096 : (size_t)(s->rate / 4);
	size_t n = size - offset < cap ? (size_t)(size - offset) : cap;
	uint8_t *buf = n ? malloc(n) : NULL;
	int rc = n && !buf ? SP_ENOMEM : n ? sp_pread_all(fd, buf, n, offset) : SP_OK;

	pthread_mutex_lock(&s->mu);
	s->busy--;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);

	nng_msg *m = NULL;
	if (rc == SP_OK) {
		sp_frame f;
		sp_frame_init(&f, SP_T_REPL_SNAP_CHUNK, req->id, req->has_id);
		sp_frame_set_bin(&f, SP_F_SNAP_ID, sid, sizeof(sid));
		sp_frame_set_u64(&f, SP_F_EPOCH, epoch);
		sp_frame_set_u64(&f, SP_F_LSN, lsn);
		sp_frame_set_u64(&f, SP_F_SIZE, size);
		sp_frame_set_bin(&f, SP_F_SHA256, sha, sizeof(sha));
		sp_frame_set_u64(&f, SP_F_OFFSET, offset);
		if (n)
			sp_frame_set_bin(&f, SP_F_REPL_DATA, buf, (uint32_t)n);
		if (sp_nng_msg_from_frame(&f, &m))
			m = NULL;
	}
	free(buf);
	if (!m)
		return error_msg(req, rc ? rc : SP_ENOMEM, "cannot read the snapshot", 0);
	sp_metric_add(s->m_sent, n);
	if (s->rate && n) {
		/* The throttle (like pg_basebackup --max-rate): this chunk's share of a second. */
		uint64_t us = (uint64_t)n * 1000000 / s->rate;
		struct timespec ts = { (time_t)(us / 1000000), (long)(us % 1000000) * 1000 };
		nanosleep(&ts, NULL);
	}
	return m;
}

/* ---- the new copy's side ---- */

static int
path_in(char *out, size_t cap, const char *dir, const char *name)
{
	return (size_t)snprintf(out, cap, "%s/%s", dir, name) >= cap ? SP_EINVAL : SP_OK;
}

static bool
exists_in(const char *dir, const char *name)
{
	char p[PATH_MAX];
	return path_in(p, sizeof(p), dir, name) == SP_OK && access(p, F_OK) == 0;
}

static int
fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return SP_EIO;
	int rc = fsync(fd) == 0 ? SP_OK : SP_EIO;
	close(fd);
	return rc;
}

static int
unlink_in(const char *dir, const char *name)
{
	char p[PATH_MAX];
	if (path_in(p, sizeof(p), dir, name))
		return SP_EINVAL;
	return unlink(p) == 0 || errno == ENOENT ? SP_OK : SP_EIO;
}

/* Removes the log directory (it holds only files). */
static int
remove_log_dir(const char *dir)
{
	char p[PATH_MAX], f[PATH_MAX];
	if (path_in(p, sizeof(p), dir, LOG_DIR))
		return SP_EINVAL;
	DIR *d = opendir(p);
	if (!d)
		return errno == ENOENT ? SP_OK : SP_EIO;
	struct dirent *e;
	int rc = SP_OK;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (path_in(f, sizeof(f), p, e->d_name) || unlink(f) != 0) {
			rc = SP_EIO;
			break;
		}
	}
	closedir(d);
	if (rc == SP_OK && rmdir(p) != 0)
		rc = SP_EIO;
	return rc;
}

/* A downloaded snapshot not yet installed: snapshot-<epoch>-<lsn>.mdb. */
static bool
find_ready(const char *dir, char *name, size_t cap, repl_log_pos *pos)
{
	DIR *d = opendir(dir);
	if (!d)
		return false;
	struct dirent *e;
	bool found = false;
	while (!found && (e = readdir(d))) {
		unsigned long long ep, ls;
		int used = 0;
		if (sscanf(e->d_name, READY_PREFIX "%llu-%llu" READY_SUFFIX "%n", &ep, &ls, &used) == 2
		    && used > 0 && e->d_name[used] == '\0' && strcmp(e->d_name, SERVE_FILE) != 0) {
			snprintf(name, cap, "%.*s", (int)(cap - 1), e->d_name);
			*pos = (repl_log_pos) { ep, ls };
			found = true;
		}
	}
	closedir(d);
	return found;
}

/* Replaces the log and the store with a downloaded snapshot. Redone from the start after a
 * crash: the snapshot file is renamed onto the store last, and until then it is found
 * again at start-up. */
static int
install(const char *dir, const repl_snap_files *files, const char *file, repl_log_pos pos)
{
	char from[PATH_MAX], to[PATH_MAX], logdir[PATH_MAX];
	int rc;
	if ((rc = path_in(from, sizeof(from), dir, file)) || (rc = path_in(to, sizeof(to), dir, files->store))
	    || (rc = path_in(logdir, sizeof(logdir), dir, LOG_DIR)))
		return rc;
	if ((rc = remove_log_dir(dir)) || (rc = unlink_in(dir, files->store))
	    || (files->store_lock && (rc = unlink_in(dir, files->store_lock)))
	    || (rc = fsync_dir(dir))) {
		sp_error("snapshot: cannot clear %s for the snapshot: %s", dir, sp_strerror(rc));
		return rc;
	}
	if (pos.lsn > 0) {
		repl_log *log;
		if ((rc = repl_log_open_at(logdir, NULL, pos, &log))) {
			sp_error("snapshot: cannot make the log in %s: %s", logdir, sp_strerror(rc));
			return rc;
		}
		repl_log_close(log);
	}
	if (rename(from, to) != 0 || fsync_dir(dir) != SP_OK) {
		sp_error("snapshot: rename %s: %s", from, strerror(errno));
		return SP_EIO;
	}
	if ((rc = unlink_in(dir, REPL_SNAP_MARKER)) || (rc = fsync_dir(dir)))
		return rc;
	sp_info("snapshot: installed in %s: the store at (%" PRIu64 ", %" PRIu64 ")", dir, pos.epoch,
	    pos.lsn);
	return SP_OK;
}

typedef struct download {
	int fd;
	bool started;
	uint8_t id[16], sha[crypto_hash_sha256_BYTES];
	uint64_t size, lsn, epoch, offset;
	crypto_hash_sha256_state h;
} download;


/* Takes one REPL_SNAP_CHUNK (hostile input: every field is checked against the first). */
static int
take_chunk(download *dl, const sp_frame *rep)
{
	sp_bin id = sp_frame_bin(rep, SP_F_SNAP_ID), sha = sp_frame_bin(rep, SP_F_SHA256);
	sp_bin data = sp_frame_bin(rep, SP_F_REPL_DATA);
	uint64_t size = sp_frame_u64(rep, SP_F_SIZE), lsn = sp_frame_u64(rep, SP_F_LSN);
	uint64_t epoch = sp_frame_u64(rep, SP_F_EPOCH), offset = sp_frame_u64(rep, SP_F_OFFSET);
	if (size > SNAP_MAX_SIZE || lsn >= POS_MAX || epoch >= POS_MAX || (lsn > 0 && epoch == 0)
	    || id.len != sizeof(dl->id) || sha.len != sizeof(dl->sha))
		return SP_EPROTO;
	if (!dl->started) {
		memcpy(dl->id, id.p, sizeof(dl->id));
		memcpy(dl->sha, sha.p, sizeof(dl->sha));
		dl->size = size;
		dl->lsn = lsn;
		dl->epoch = epoch;
		dl->started = true;
	} else if (memcmp(dl->id, id.p, sizeof(dl->id)) || memcmp(dl->sha, sha.p, sizeof(dl->sha))
	    || dl->size != size || dl->lsn != lsn || dl->epoch != epoch) {
		return SP_EPROTO;
	}
	if (offset != dl->offset || data.len > REPL_SNAP_CHUNK || data.len > size - offset
	    || (data.len == 0 && offset < size))
		return SP_EPROTO;
	int rc = sp_pwrite_all(dl->fd, data.p, data.len, offset);
	if (rc)
		return rc;
	crypto_hash_sha256_update(&dl->h, data.p, data.len);
	dl->offset += data.len;
	return SP_OK;
}

static bool
should_stop(const repl_snap_boot_cfg *cfg)
{
	return cfg->stop && cfg->stop(cfg->stop_arg);
}

static void
sleep_ms(uint64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Downloads the primary's snapshot into PARTIAL_FILE and, checked and fsynced, renames it
 * to its ready name. SP_OK with *pos set; SP_ENOTPRIMARY (ask etcd again), SP_ECLOSED
 * (stop), or another error (retry). */
static int
download_from(const repl_snap_boot_cfg *cfg, nng_socket sock, char *ready, size_t cap,
    repl_log_pos *pos, uint64_t *bytes)
{
	char partial[PATH_MAX];
	download dl = { .fd = -1 };
	int rc = path_in(partial, sizeof(partial), cfg->data_dir, PARTIAL_FILE);
	if (rc)
		return rc;
	if ((dl.fd = open(partial, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0)
		return SP_EIO;
	crypto_hash_sha256_init(&dl.h);
	uint64_t t_log = sp_mono_ms();
	for (;;) {
		if (should_stop(cfg)) {
			rc = SP_ECLOSED;
			break;
		}
		sp_frame req, rep;
		nng_msg *msg = NULL;
		sp_frame_init(&req, SP_T_REPL_SNAP_GET, 0, false);
		sp_frame_set_str(&req, SP_F_NAME, cfg->name);
		if (dl.started)
			sp_frame_set_bin(&req, SP_F_SNAP_ID, dl.id, sizeof(dl.id));
		sp_frame_set_u64(&req, SP_F_OFFSET, dl.offset);
		rc = sp_nng_call(sock, &req, &msg, &rep);
		uint64_t retry = 0;
		if (rc == SP_OK && rep.type != SP_T_REPL_SNAP_CHUNK)
			rc = SP_EPROTO;
		if (rc == SP_OK)
			rc = take_chunk(&dl, &rep);
		else if (rc == SP_EUNAVAIL && msg)
			retry = sp_frame_u64(&rep, SP_F_RETRY_AFTER);
		if (msg) {
			sp_frame_fini(&rep);
			nng_msg_free(msg);
		}
		if (rc == SP_EUNAVAIL) {
			sleep_ms(retry < 100 ? 100 : retry > 5000 ? 5000 : retry);
			continue;
		}
		if (rc)
			break;
		if (sp_mono_ms() - t_log > 5000) {
			sp_info("snapshot: %" PRIu64 " of %" PRIu64 " bytes", dl.offset, dl.size);
			t_log = sp_mono_ms();
		}
		if (dl.offset == dl.size) {
			uint8_t got[crypto_hash_sha256_BYTES];
			crypto_hash_sha256_final(&dl.h, got);
			if (memcmp(got, dl.sha, sizeof(got)) != 0) {
				rc = SP_EDIGEST;
				break;
			}
			if (fdatasync(dl.fd) != 0) {
				rc = SP_EIO;
				break;
			}
			char name[64], to[PATH_MAX];
			snprintf(name, sizeof(name), READY_PREFIX "%" PRIu64 "-%" PRIu64 READY_SUFFIX,
			    dl.epoch, dl.lsn);
			if ((rc = path_in(to, sizeof(to), cfg->data_dir, name)))
				break;
			if (rename(partial, to) != 0 || fsync_dir(cfg->data_dir) != SP_OK) {
				rc = SP_EIO;
				break;
			}
			snprintf(ready, cap, "%s", name);
			*pos = (repl_log_pos) { dl.epoch, dl.lsn };
			*bytes = dl.size;
			break;
		}
	}
	close(dl.fd);
	if (rc)
		unlink(partial);
	return rc;
}

int
repl_snap_mark_needed(const char *data_dir)
{
	char p[PATH_MAX];
	if (path_in(p, sizeof(p), data_dir, REPL_SNAP_MARKER))
		return SP_EINVAL;
	int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return SP_EIO;
	int rc = fsync(fd) == 0 ? SP_OK : SP_EIO;
	close(fd);
	return rc == SP_OK ? fsync_dir(data_dir) : rc;
}

int
repl_snap_bootstrap(const repl_snap_boot_cfg *cfg, repl_snap_boot_result *result)
{
	char ready[NAME_MAX + 1], inc[PATH_MAX];
	repl_log_pos pos;
	uint64_t t0 = sp_mono_ms(), bytes = 0;
	*result = (repl_snap_boot_result) { 0 };
	if (mkdir(cfg->data_dir, 0700) != 0 && errno != EEXIST) {
		sp_error("snapshot: mkdir %s: %s", cfg->data_dir, strerror(errno));
		return SP_EIO;
	}
	unlink_in(cfg->data_dir, PARTIAL_FILE); /* a download cut by a crash starts again */
	if (find_ready(cfg->data_dir, ready, sizeof(ready), &pos)) {
		sp_info("snapshot: %s was downloaded but not installed: installing it", ready);
		return install(cfg->data_dir, cfg->files, ready, pos);
	}
	if (path_in(inc, sizeof(inc), cfg->data_dir, LOG_DIR "/incarnation"))
		return SP_EINVAL;
	bool marked = exists_in(cfg->data_dir, REPL_SNAP_MARKER);
	if (!marked && (exists_in(cfg->data_dir, cfg->files->store) || access(inc, F_OK) == 0))
		return SP_OK; /* data of its own: it catches up from the log */

	repl_ha *reader;
	int rc = repl_ha_new_reader(cfg->etcd, cfg->cluster, cfg->group, &reader);
	if (rc)
		return rc;
	sp_info("snapshot: %s holds %s: looking for the primary of %s", cfg->data_dir,
	    marked ? "a copy marked for a snapshot" : "no store", cfg->group);
	nng_socket sock = NNG_SOCKET_INITIALIZER;
	char sock_url[REPL_HA_URL_MAX + 1] = "";
	bool sock_open = false;
	uint64_t t_log = 0;
	for (;;) {
		if (should_stop(cfg)) {
			rc = SP_ECLOSED;
			break;
		}
		repl_ha_view view;
		if ((rc = repl_ha_read(reader, &view))) {
			sp_warn_rl("snapshot: reading etcd: %s", sp_strerror(rc));
			sleep_ms(1000);
			continue;
		}
		bool usable = view.leader.present && view.leader.parsed && view.leader.url[0]
		    && strcmp(view.leader.id.name, cfg->name) != 0;
		if (!usable) {
			if (!view.leader.present && !view.sync.present && !marked) {
				sp_info("snapshot: %s has no history in etcd: a new shard, starting empty",
				    cfg->group);
				rc = SP_OK;
				break;
			}
			if (sp_mono_ms() - t_log > 5000) {
				sp_info("snapshot: waiting for a primary of %s to copy from", cfg->group);
				t_log = sp_mono_ms();
			}
			sleep_ms(500);
			continue;
		}
		/* One socket for the whole bootstrap unless the primary moves (closing a REQ
		 * socket while it redials can hang in NNG 1.5, so only at a change). */
		if (!sock_open || strcmp(sock_url, view.leader.url) != 0) {
			if (sock_open)
				nng_close(sock);
			sock_open = false;
			if ((rc = sp_nng_req_open(&sock, view.leader.url, CALL_TIMEOUT_MS, 0))) {
				sp_warn_rl("snapshot: cannot dial %s: %s", view.leader.url, sp_strerror(rc));
				sleep_ms(1000);
				continue;
			}
			sock_open = true;
			snprintf(sock_url, sizeof(sock_url), "%s", view.leader.url);
		}
		sp_info("snapshot: downloading from %s (%s)", view.leader.id.name, view.leader.url);
		rc = download_from(cfg, sock, ready, sizeof(ready), &pos, &bytes);
		if (rc == SP_OK) {
			rc = install(cfg->data_dir, cfg->files, ready, pos);
			break;
		}
		if (rc == SP_ECLOSED)
			break;
		sp_warn("snapshot: download from %s: %s; starting again", view.leader.id.name,
		    sp_strerror(rc));
		sleep_ms(rc == SP_ENOTPRIMARY ? 200 : 1000);
	}
	if (sock_open)
		nng_close(sock);
	repl_ha_free(reader);
	if (rc == SP_OK && exists_in(cfg->data_dir, cfg->files->store))
		*result = (repl_snap_boot_result) { true, bytes, sp_mono_ms() - t0 };
	return rc;
}
