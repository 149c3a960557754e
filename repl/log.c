/* The replication log: segments of checksummed records, an epoch table, an incarnation. */
#include "log.h"

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
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "sp_bytes.h"
#include "sp_error.h"
#include "sp_io.h"
#include "sp_log.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#define SEG_NAME_DIGITS 20
#define SEG_SUFFIX ".log"
#define INC_FILE "incarnation"
#define EPOCH_FILE "epochs"
#define TMP_SUFFIX ".tmp"
#define INC_MAGIC "SPIN"
#define EPOCH_MAGIC "SPET"
#define FILE_VERSION 1
#define INC_FILE_LEN (4 + 4 + REPL_LOG_INCARNATION_LEN + 4)
#define SCAN_CHUNK (1u << 20)
/* Lengths are checked against the format's bound when reading, the configured one when
 * appending: lowering max_record does not make existing records unreadable. */
#define FORMAT_MAX_RECORD REPL_LOG_MAX_MAX_RECORD
#define IOV_BATCH 1024 /* iovecs per pwritev (IOV_MAX on Linux) */

/*
 * Checksums: CRC32C. The records guard against torn writes and media errors, not against
 * an adversary (the disk is the copy's own and payloads are end-to-end ciphertext), so a
 * keyed or cryptographic hash buys nothing here; CRC32C detects every burst error up to 32
 * bits, is what ext4, iSCSI and Kafka use for the same job, and runs at memory speed with
 * the SSE4.2 instruction (BLAKE2b, crypto_generichash, is an order of magnitude slower).
 */
static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static bool crc_hw;

static void
crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		crc_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
#if defined(__x86_64__)
	crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t
crc_sw(uint32_t c, const uint8_t *p, size_t n)
{
	while (n >= 8) {
		uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
		c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
		    crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^
		    crc_table[0][p[7]];
		p += 8;
		n -= 8;
	}
	while (n--)
		c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
	return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc_sse42(uint32_t c, const uint8_t *p, size_t n)
{
	uint64_t c64 = c;
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c64 = _mm_crc32_u64(c64, v);
		p += 8;
		n -= 8;
	}
	c = (uint32_t)c64;
	while (n--)
		c = _mm_crc32_u8(c, *p++);
	return c;
}
#endif

/* CRC32C of p[0..n) continuing from `crc` (0 to start), zlib-style chaining. */
static uint32_t
crc32c(uint32_t crc, const void *data, size_t n)
{
	pthread_once(&crc_once, crc_init);
	uint32_t c = ~crc;
#if defined(__x86_64__)
	if (crc_hw)
		return ~crc_sse42(c, data, n);
#endif
	return ~crc_sw(c, data, n);
}

typedef struct seg {
	uint64_t first; /* LSN of its first record (its name) */
	int fd;
	uint64_t size; /* bytes written */
	uint32_t *off; /* offset of each record */
	size_t n, cap;
	bool dirty; /* written since its last fdatasync */
} seg;

typedef struct epoch_ent {
	uint64_t epoch;
	uint64_t start; /* LSN of the epoch's first record */
} epoch_ent;

/* Everything below `mu` is read by readers under it and changed by the writer under it;
 * the writer may read it without the lock (nobody else changes it). */
struct repl_log {
	int dirfd; /* holds the flock */
	uint32_t seg_bytes, max_record;
	bool fresh;
	uint8_t inc[REPL_LOG_INCARNATION_LEN];
	pthread_mutex_t mu;
	seg *segs;
	size_t nseg, segcap;
	uint64_t base_lsn, base_epoch; /* trim point: the last record removed from the front */
	repl_log_pos last;
	uint64_t flushed, committed;
	epoch_ent *ep;
	size_t nep, epcap;
	bool ep_dirty; /* the epoch file differs from ep[] */
	bool dir_dirty; /* a segment was created since the last directory fsync */
	bool failed;
};

static void
seg_name(char out[SEG_NAME_DIGITS + sizeof(SEG_SUFFIX)], uint64_t first)
{
	snprintf(out, SEG_NAME_DIGITS + sizeof(SEG_SUFFIX), "%020" PRIu64 SEG_SUFFIX, first);
}

static void
hdr_put(uint8_t h[REPL_LOG_HEADER_LEN], const repl_log_rec *r)
{
	sp_be32_put(h, r->len);
	sp_be64_put(h + 4, r->epoch);
	sp_be64_put(h + 12, r->lsn);
	uint32_t c = crc32c(0, h, 20);
	c = crc32c(c, r->data, r->len);
	sp_be32_put(h + 20, c);
}

/* Parses a record at p (avail bytes there); SP_OK with *r set, or SP_ETRUNC / SP_EDIGEST /
 * SP_ETOOBIG when it is not a whole valid record. */
static int
rec_parse(const uint8_t *p, size_t avail, repl_log_rec *r)
{
	if (avail < REPL_LOG_HEADER_LEN)
		return SP_ETRUNC;
	uint32_t len = sp_be32_get(p);
	if (len > FORMAT_MAX_RECORD)
		return SP_ETOOBIG;
	if (avail - REPL_LOG_HEADER_LEN < len)
		return SP_ETRUNC;
	uint32_t c = crc32c(0, p, 20);
	c = crc32c(c, p + REPL_LOG_HEADER_LEN, len);
	if (c != sp_be32_get(p + 20))
		return SP_EDIGEST;
	r->len = len;
	r->epoch = sp_be64_get(p + 4);
	r->lsn = sp_be64_get(p + 12);
	r->data = p + REPL_LOG_HEADER_LEN;
	return SP_OK;
}


/* Writes `name` in the directory atomically and durably: temp file, fsync, rename, fsync
 * of the directory. */
static int
write_file_atomic(int dirfd, const char *name, const uint8_t *data, size_t len)
{
	char tmp[64];
	snprintf(tmp, sizeof(tmp), "%s" TMP_SUFFIX, name);
	int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return SP_EIO;
	int rc = sp_write_all(fd, data, len);
	if (rc == SP_OK && fsync(fd) != 0)
		rc = SP_EIO;
	if (close(fd) != 0 && rc == SP_OK)
		rc = SP_EIO;
	if (rc == SP_OK && renameat(dirfd, tmp, dirfd, name) != 0)
		rc = SP_EIO;
	if (rc == SP_OK && fsync(dirfd) != 0)
		rc = SP_EIO;
	return rc;
}

/* Reads a whole small file into a new buffer: SP_ENOTFOUND when absent, SP_ESTORE when
 * larger than `max`. */
static int
read_small_file(int dirfd, const char *name, size_t max, uint8_t **out, size_t *len)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? SP_ENOTFOUND : SP_EIO;
	int rc = SP_EIO;
	uint8_t *buf = NULL;
	struct stat st;
	if (fstat(fd, &st) != 0)
		goto fail;
	rc = SP_ESTORE;
	if (st.st_size < 0 || (uint64_t)st.st_size > max)
		goto fail;
	rc = SP_ENOMEM;
	if (!(buf = malloc((size_t)st.st_size + 1)))
		goto fail;
	if ((rc = sp_pread_all(fd, buf, (size_t)st.st_size, 0)) != SP_OK)
		goto fail;
	close(fd);
	*out = buf;
	*len = (size_t)st.st_size;
	return SP_OK;
fail:
	free(buf);
	close(fd);
	return rc;
}

/* The epoch table file: magic, version, count, count x (epoch, start), CRC32C. */
static int
epochs_write(int dirfd, const epoch_ent *ep, size_t n)
{
	size_t len = 12 + 16 * n + 4;
	uint8_t *b = malloc(len);
	if (!b)
		return SP_ENOMEM;
	memcpy(b, EPOCH_MAGIC, 4);
	sp_be32_put(b + 4, FILE_VERSION);
	sp_be32_put(b + 8, (uint32_t)n);
	for (size_t i = 0; i < n; i++) {
		sp_be64_put(b + 12 + 16 * i, ep[i].epoch);
		sp_be64_put(b + 20 + 16 * i, ep[i].start);
	}
	sp_be32_put(b + len - 4, crc32c(0, b, len - 4));
	int rc = write_file_atomic(dirfd, EPOCH_FILE, b, len);
	free(b);
	return rc;
}

static int
epochs_read(int dirfd, epoch_ent **out, size_t *n)
{
	uint8_t *b;
	size_t len;
	*out = NULL;
	*n = 0;
	int rc = read_small_file(dirfd, EPOCH_FILE, 12 + 16 * (size_t)REPL_LOG_EPOCHS_MAX + 4, &b, &len);
	if (rc == SP_ENOTFOUND)
		return SP_OK;
	if (rc != SP_OK)
		return rc;
	rc = SP_ESTORE;
	if (len < 16 || memcmp(b, EPOCH_MAGIC, 4) != 0 || sp_be32_get(b + 4) != FILE_VERSION)
		goto out;
	size_t cnt = sp_be32_get(b + 8);
	if (len != 12 + 16 * cnt + 4 || sp_be32_get(b + len - 4) != crc32c(0, b, len - 4))
		goto out;
	epoch_ent *ep = NULL;
	if (cnt && !(ep = calloc(cnt, sizeof(*ep)))) {
		rc = SP_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < cnt; i++) {
		ep[i].epoch = sp_be64_get(b + 12 + 16 * i);
		ep[i].start = sp_be64_get(b + 20 + 16 * i);
		if (ep[i].epoch == 0 || ep[i].start == 0 ||
		    (i && (ep[i].epoch <= ep[i - 1].epoch || ep[i].start <= ep[i - 1].start))) {
			free(ep);
			goto out;
		}
	}
	*out = ep;
	*n = cnt;
	rc = SP_OK;
out:
	free(b);
	return rc;
}

static int
incarnation_load(repl_log *log, bool have_segments)
{
	uint8_t *b;
	size_t len;
	int rc = read_small_file(log->dirfd, INC_FILE, 4096, &b, &len);
	if (rc == SP_OK) {
		bool ok = len == INC_FILE_LEN && memcmp(b, INC_MAGIC, 4) == 0 &&
		    sp_be32_get(b + 4) == FILE_VERSION && sp_be32_get(b + len - 4) == crc32c(0, b, len - 4);
		if (ok)
			memcpy(log->inc, b + 8, REPL_LOG_INCARNATION_LEN);
		free(b);
		return ok ? SP_OK : SP_ESTORE;
	}
	if (rc != SP_ENOTFOUND)
		return rc;
	if (have_segments)
		sp_warn("repl log: segments without an incarnation; new identity, the copy is fresh");
	uint8_t f[INC_FILE_LEN];
	memcpy(f, INC_MAGIC, 4);
	sp_be32_put(f + 4, FILE_VERSION);
	randombytes_buf(log->inc, sizeof(log->inc));
	memcpy(f + 8, log->inc, REPL_LOG_INCARNATION_LEN);
	sp_be32_put(f + INC_FILE_LEN - 4, crc32c(0, f, INC_FILE_LEN - 4));
	log->fresh = true;
	return write_file_atomic(log->dirfd, INC_FILE, f, sizeof(f));
}

static int
seg_push_off(seg *s, uint32_t off)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 256;
		uint32_t *o = realloc(s->off, cap * sizeof(*o));
		if (!o)
			return SP_ENOMEM;
		s->off = o;
		s->cap = cap;
	}
	s->off[s->n++] = off;
	return SP_OK;
}

static int
segs_reserve(repl_log *log, size_t want)
{
	if (want <= log->segcap)
		return SP_OK;
	size_t cap = log->segcap ? 2 * log->segcap : 8;
	while (cap < want)
		cap *= 2;
	seg *s = realloc(log->segs, cap * sizeof(*s));
	if (!s)
		return SP_ENOMEM;
	log->segs = s;
	log->segcap = cap;
	return SP_OK;
}

static int
ep_reserve(repl_log *log, size_t want)
{
	if (want > REPL_LOG_EPOCHS_MAX)
		return SP_ELIMIT;
	if (want <= log->epcap)
		return SP_OK;
	size_t cap = log->epcap ? 2 * log->epcap : 8;
	while (cap < want)
		cap *= 2;
	epoch_ent *e = realloc(log->ep, cap * sizeof(*e));
	if (!e)
		return SP_ENOMEM;
	log->ep = e;
	log->epcap = cap;
	return SP_OK;
}

static void
seg_close(seg *s)
{
	if (s->fd >= 0)
		close(s->fd);
	free(s->off);
	s->fd = -1;
	s->off = NULL;
}

/* Creates an empty segment file for `first` at the end of the list. */
static int
seg_create(repl_log *log, uint64_t first)
{
	int rc = segs_reserve(log, log->nseg + 1);
	if (rc != SP_OK)
		return rc;
	char name[SEG_NAME_DIGITS + sizeof(SEG_SUFFIX)];
	seg_name(name, first);
	int fd = openat(log->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return SP_EIO;
	log->segs[log->nseg++] = (seg){.first = first, .fd = fd};
	log->dir_dirty = true;
	return SP_OK;
}

/* Closes a segment and removes its file, durably (the caller fixes the list). */
static int
seg_unlink(repl_log *log, seg *s)
{
	char name[SEG_NAME_DIGITS + sizeof(SEG_SUFFIX)];
	seg_name(name, s->first);
	seg_close(s);
	if (unlinkat(log->dirfd, name, 0) != 0 || fsync(log->dirfd) != 0)
		return SP_EIO;
	return SP_OK;
}

/* A reader over one segment file with a sliding buffer (grown for a big record). */
typedef struct scan {
	int fd;
	uint64_t size;
	uint8_t *buf;
	size_t cap;
	uint64_t at; /* file offset of buf[0] */
	size_t len;
} scan;

/* Makes [off, off + want) (clipped to the file) available; returns a pointer to off and
 * the bytes available there. */
static int
scan_at(scan *sc, uint64_t off, size_t want, const uint8_t **p, size_t *avail)
{
	if (off > sc->size)
		off = sc->size;
	uint64_t end = off + want;
	if (end > sc->size)
		end = sc->size;
	if (off < sc->at || end > sc->at + sc->len) {
		if (end - off > sc->cap) {
			uint8_t *b = realloc(sc->buf, (size_t)(end - off));
			if (!b)
				return SP_ENOMEM;
			sc->buf = b;
			sc->cap = (size_t)(end - off);
		}
		size_t n = sc->size - off < sc->cap ? (size_t)(sc->size - off) : sc->cap;
		int rc = sp_pread_all(sc->fd, sc->buf, n, off);
		if (rc != SP_OK)
			return rc;
		sc->at = off;
		sc->len = n;
	}
	*p = sc->buf + (off - sc->at);
	*avail = (size_t)(sc->at + sc->len - off);
	return SP_OK;
}

/* Is there a valid record with lsn >= min_lsn anywhere after `from` in the file? Used to
 * tell a torn tail (nothing valid after the bad record) from corruption in the middle. */
static int
scan_valid_after(scan *sc, uint64_t from, uint64_t min_lsn, bool *found)
{
	*found = false;
	for (uint64_t o = from; o + REPL_LOG_HEADER_LEN <= sc->size; o++) {
		const uint8_t *p;
		size_t avail;
		int rc = scan_at(sc, o, REPL_LOG_HEADER_LEN, &p, &avail);
		if (rc != SP_OK)
			return rc;
		uint32_t len = sp_be32_get(p);
		uint64_t lsn = sp_be64_get(p + 12);
		if (len > FORMAT_MAX_RECORD || o + REPL_LOG_HEADER_LEN + len > sc->size || lsn < min_lsn ||
		    lsn - min_lsn > sc->size / REPL_LOG_HEADER_LEN || sp_be64_get(p + 4) == 0)
			continue;
		if ((rc = scan_at(sc, o, REPL_LOG_HEADER_LEN + len, &p, &avail)) != SP_OK)
			return rc;
		repl_log_rec r;
		if (rec_parse(p, avail, &r) == SP_OK) {
			*found = true;
			return SP_OK;
		}
	}
	return SP_OK;
}

/*
 * Scans segment `s` (its fd open), expecting its first record at *next_lsn: records every
 * record's offset, extends the epoch table, advances *next_lsn and *epoch. A bad record in
 * the last segment with nothing valid after it is cut off (torn write); anything else bad
 * is SP_ESTORE.
 */
static int
seg_scan(repl_log *log, seg *s, scan *sc, bool is_last, uint64_t *next_lsn, uint64_t *epoch)
{
	struct stat st;
	if (fstat(s->fd, &st) != 0)
		return SP_EIO;
	if (s->first != *next_lsn) {
		sp_error("repl log: segment %" PRIu64 " does not follow lsn %" PRIu64, s->first, *next_lsn - 1);
		return SP_ESTORE;
	}
	sc->fd = s->fd;
	sc->size = (uint64_t)st.st_size;
	sc->at = 0;
	sc->len = 0;
	uint64_t o = 0;
	while (o < sc->size) {
		const uint8_t *p;
		size_t avail;
		int rc = scan_at(sc, o, REPL_LOG_HEADER_LEN, &p, &avail);
		if (rc == SP_OK && avail >= REPL_LOG_HEADER_LEN && sp_be32_get(p) <= FORMAT_MAX_RECORD)
			rc = scan_at(sc, o, REPL_LOG_HEADER_LEN + sp_be32_get(p), &p, &avail);
		if (rc != SP_OK)
			return rc;
		repl_log_rec r;
		if (rec_parse(p, avail, &r) != SP_OK) {
			bool later = false;
			if (is_last && (rc = scan_valid_after(sc, o + 1, *next_lsn, &later)) != SP_OK)
				return rc;
			if (!is_last || later) {
				sp_error("repl log: corrupt record at offset %" PRIu64 " of segment %" PRIu64
					 " (lsn %" PRIu64 ") before the end of the log",
				    o, s->first, *next_lsn);
				return SP_ESTORE;
			}
			sp_warn("repl log: torn tail: cutting %" PRIu64 " bytes at lsn %" PRIu64, sc->size - o,
			    *next_lsn);
			if (ftruncate(s->fd, (off_t)o) != 0 || fdatasync(s->fd) != 0)
				return SP_EIO;
			sc->size = o;
			break;
		}
		if (r.lsn != *next_lsn || r.epoch < *epoch || r.epoch == 0) {
			sp_error("repl log: record (%" PRIu64 ", %" PRIu64 ") where lsn %" PRIu64
				 " of epoch >= %" PRIu64 " belongs",
			    r.epoch, r.lsn, *next_lsn, *epoch);
			return SP_ESTORE;
		}
		if (o > UINT32_MAX)
			return SP_ESTORE;
		if ((rc = seg_push_off(s, (uint32_t)o)) != SP_OK)
			return rc;
		if (r.epoch != *epoch || log->nep == 0) {
			if ((rc = ep_reserve(log, log->nep + 1)) != SP_OK)
				return rc == SP_ELIMIT ? SP_ESTORE : rc;
			log->ep[log->nep++] = (epoch_ent){r.epoch, r.lsn};
		}
		*epoch = r.epoch;
		(*next_lsn)++;
		o += REPL_LOG_HEADER_LEN + r.len;
	}
	s->size = sc->size;
	return SP_OK;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Lists the segment files (sorted first LSNs) and removes leftover temp files. */
static int
list_dir(repl_log *log, uint64_t **out, size_t *n)
{
	int fd = dup(log->dirfd);
	if (fd < 0)
		return SP_EIO;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return SP_EIO;
	}
	rewinddir(d);
	uint64_t *v = NULL;
	size_t cnt = 0, cap = 0;
	int rc = SP_OK;
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t len = strlen(e->d_name);
		if (len > strlen(TMP_SUFFIX) && strcmp(e->d_name + len - strlen(TMP_SUFFIX), TMP_SUFFIX) == 0) {
			unlinkat(log->dirfd, e->d_name, 0);
			continue;
		}
		if (len != SEG_NAME_DIGITS + strlen(SEG_SUFFIX) || strcmp(e->d_name + SEG_NAME_DIGITS, SEG_SUFFIX) != 0)
			continue;
		uint64_t first = 0;
		bool digits = true;
		for (int i = 0; i < SEG_NAME_DIGITS && digits; i++) {
			char c = e->d_name[i];
			digits = c >= '0' && c <= '9' && first <= (UINT64_MAX - 9) / 10;
			first = first * 10 + (uint64_t)(c - '0');
		}
		if (!digits || first == 0) {
			rc = SP_ESTORE;
			break;
		}
		if (cnt == cap) {
			size_t nc = cap ? 2 * cap : 16;
			uint64_t *nv = realloc(v, nc * sizeof(*nv));
			if (!nv) {
				rc = SP_ENOMEM;
				break;
			}
			v = nv;
			cap = nc;
		}
		v[cnt++] = first;
	}
	closedir(d);
	if (rc != SP_OK) {
		free(v);
		return rc;
	}
	if (cnt)
		qsort(v, cnt, sizeof(*v), cmp_u64);
	*out = v;
	*n = cnt;
	return SP_OK;
}

static bool
ep_equal(const epoch_ent *a, size_t na, const epoch_ent *b, size_t nb)
{
	return na == nb && (na == 0 || memcmp(a, b, na * sizeof(*a)) == 0);
}

/* Recovery of an existing log: segments, then the epoch table (trimmed part from the file,
 * the rest from the records). */
static int
recover(repl_log *log, const uint64_t *firsts, size_t nfirst)
{
	epoch_ent *fep = NULL;
	size_t nfep = 0;
	scan sc = {0};
	int rc = epochs_read(log->dirfd, &fep, &nfep);
	if (rc != SP_OK)
		goto fail;
	log->base_lsn = firsts[0] - 1;
	log->base_epoch = 0;
	size_t keep = 0;
	while (keep < nfep && fep[keep].start <= log->base_lsn)
		keep++;
	if (log->base_lsn > 0 && keep == 0) {
		sp_error("repl log: the epoch of trimmed lsn %" PRIu64 " is unknown", log->base_lsn);
		rc = SP_ESTORE;
		goto fail;
	}
	if ((rc = ep_reserve(log, keep)) != SP_OK)
		goto fail;
	if (keep) {
		memcpy(log->ep, fep, keep * sizeof(*fep));
		log->base_epoch = fep[keep - 1].epoch;
	}
	log->nep = keep;
	rc = SP_ENOMEM;
	if (!(sc.buf = malloc(SCAN_CHUNK)) || segs_reserve(log, nfirst) != SP_OK)
		goto fail;
	sc.cap = SCAN_CHUNK;
	uint64_t next = firsts[0], epoch = log->base_epoch;
	for (size_t i = 0; i < nfirst; i++) {
		char name[SEG_NAME_DIGITS + sizeof(SEG_SUFFIX)];
		seg_name(name, firsts[i]);
		seg *s = &log->segs[log->nseg];
		*s = (seg){.first = firsts[i], .fd = openat(log->dirfd, name, O_RDWR | O_CLOEXEC)};
		if (s->fd < 0) {
			rc = SP_EIO;
			goto fail;
		}
		log->nseg++;
		if ((rc = seg_scan(log, s, &sc, i + 1 == nfirst, &next, &epoch)) != SP_OK)
			goto fail;
	}
	/* What a crashed process left in the page cache is made durable before it counts as
	 * flushed (earlier segments were synced when the next one was started). */
	rc = SP_EIO;
	if (fdatasync(log->segs[log->nseg - 1].fd) != 0 || fsync(log->dirfd) != 0)
		goto fail;
	log->last = (repl_log_pos){epoch, next - 1};
	log->flushed = log->last.lsn;
	log->committed = log->base_lsn;
	if (!ep_equal(log->ep, log->nep, fep, nfep) && (rc = epochs_write(log->dirfd, log->ep, log->nep)) != SP_OK)
		goto fail;
	rc = SP_OK;
fail:
	free(sc.buf);
	free(fep);
	return rc;
}

static int
config_check(const repl_log_config *cfg, uint32_t *seg_bytes, uint32_t *max_record)
{
	*seg_bytes = cfg && cfg->segment_bytes ? cfg->segment_bytes : REPL_LOG_DEFAULT_SEGMENT;
	*max_record = cfg && cfg->max_record ? cfg->max_record : REPL_LOG_DEFAULT_MAX_RECORD;
	if (*seg_bytes < REPL_LOG_MIN_SEGMENT || *seg_bytes > REPL_LOG_MAX_SEGMENT ||
	    *max_record > REPL_LOG_MAX_MAX_RECORD)
		return SP_EINVAL;
	return SP_OK;
}

/* A new log whose trim point is `base` (a copy rebuilt from a snapshot): the first segment
 * starts after it and the epoch table says base.lsn is in base.epoch, so a fetch asking
 * about that epoch is answered and one asking about an older epoch needs a snapshot. */
static int
create_at(repl_log *log, repl_log_pos base)
{
	int rc = ep_reserve(log, 1);
	if (rc != SP_OK)
		return rc;
	log->ep[0] = (epoch_ent){base.epoch, base.lsn};
	log->nep = 1;
	log->base_lsn = base.lsn;
	log->base_epoch = base.epoch;
	log->last = base;
	log->flushed = log->committed = base.lsn;
	if ((rc = epochs_write(log->dirfd, log->ep, log->nep)) != SP_OK)
		return rc;
	return seg_create(log, base.lsn + 1);
}

static int
log_open(const char *dir, const repl_log_config *cfg, const repl_log_pos *base, repl_log **out)
{
	uint32_t seg_bytes, max_record;
	if (!dir || !*dir || !out || config_check(cfg, &seg_bytes, &max_record) != SP_OK)
		return SP_EINVAL;
	if (sodium_init() < 0)
		return SP_ECRYPTO;
	repl_log *log = calloc(1, sizeof(*log));
	if (!log)
		return SP_ENOMEM;
	log->dirfd = -1;
	log->seg_bytes = seg_bytes;
	log->max_record = max_record;
	uint64_t *firsts = NULL;
	size_t nfirst = 0;
	int rc = SP_ENOMEM;
	if (pthread_mutex_init(&log->mu, NULL) != 0) {
		free(log);
		return SP_ENOMEM;
	}
	rc = SP_EIO;
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		goto fail;
	if ((log->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		goto fail;
	if (flock(log->dirfd, LOCK_EX | LOCK_NB) != 0) {
		rc = errno == EWOULDBLOCK ? SP_ESTATE : SP_EIO;
		goto fail;
	}
	if ((rc = list_dir(log, &firsts, &nfirst)) != SP_OK)
		goto fail;
	if (nfirst == 0) {
		/* A new log: the first segment exists before the incarnation does, so a
		 * directory with an incarnation and no segment is a damaged one. */
		if (faccessat(log->dirfd, INC_FILE, F_OK, 0) == 0) {
			sp_error("repl log: %s has an incarnation but no segment", dir);
			rc = SP_ESTORE;
			goto fail;
		}
		if ((rc = base ? create_at(log, *base) : seg_create(log, 1)) != SP_OK)
			goto fail;
		rc = SP_EIO;
		if (fsync(log->dirfd) != 0)
			goto fail;
		log->dir_dirty = false;
	} else if (base) {
		sp_error("repl log: %s already holds a log", dir);
		rc = SP_EEXIST;
		goto fail;
	} else if ((rc = recover(log, firsts, nfirst)) != SP_OK) {
		goto fail;
	}
	if ((rc = incarnation_load(log, nfirst > 0)) != SP_OK)
		goto fail;
	free(firsts);
	*out = log;
	return SP_OK;
fail:
	free(firsts);
	repl_log_close(log);
	return rc;
}

int
repl_log_open(const char *dir, const repl_log_config *cfg, repl_log **out)
{
	return log_open(dir, cfg, NULL, out);
}

int
repl_log_open_at(const char *dir, const repl_log_config *cfg, repl_log_pos base, repl_log **out)
{
	if (base.epoch == 0 || base.lsn == 0 || base.lsn == UINT64_MAX)
		return SP_EINVAL;
	return log_open(dir, cfg, &base, out);
}

void
repl_log_close(repl_log *log)
{
	if (!log)
		return;
	for (size_t i = 0; i < log->nseg; i++)
		seg_close(&log->segs[i]);
	free(log->segs);
	free(log->ep);
	if (log->dirfd >= 0)
		close(log->dirfd);
	pthread_mutex_destroy(&log->mu);
	free(log);
}

/* Writes the iovecs at `off` of fd, all of them. */
static int
pwritev_all(int fd, struct iovec *iov, int n, uint64_t off)
{
	while (n > 0) {
		ssize_t w = pwritev(fd, iov, n, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return SP_EIO;
		off += (uint64_t)w;
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return SP_OK;
}

static int
append_check(const repl_log *log, uint64_t prev_epoch, uint64_t prev_lsn, const repl_log_rec *recs,
    size_t n)
{
	if (n > REPL_LOG_BATCH_MAX)
		return SP_ETOOBIG;
	if (n && !recs)
		return SP_EINVAL;
	if (prev_epoch != log->last.epoch || prev_lsn != log->last.lsn)
		return SP_EGAP;
	uint64_t lsn = prev_lsn, epoch = prev_epoch;
	size_t new_epochs = 0;
	for (size_t i = 0; i < n; i++) {
		const repl_log_rec *r = &recs[i];
		if (r->epoch == 0 || (r->len && !r->data))
			return SP_EINVAL;
		if (r->lsn != lsn + 1 || lsn == UINT64_MAX)
			return SP_EGAP;
		if (r->epoch < epoch)
			return SP_ESTATE;
		if (r->len > log->max_record)
			return SP_ETOOBIG;
		if (r->epoch != epoch || (log->nep == 0 && i == 0))
			new_epochs++;
		lsn = r->lsn;
		epoch = r->epoch;
	}
	if (log->nep + new_epochs > REPL_LOG_EPOCHS_MAX)
		return SP_ELIMIT;
	return SP_OK;
}

/* Undoes a failed append: drops the segments it created, cuts the one it started in. */
static int
append_rollback(repl_log *log, size_t nseg0, size_t n0, uint64_t size0, size_t nep0)
{
	int rc = SP_OK;
	while (log->nseg > nseg0) {
		if (seg_unlink(log, &log->segs[log->nseg - 1]) != SP_OK)
			rc = SP_EIO;
		log->nseg--;
	}
	seg *s = &log->segs[log->nseg - 1];
	s->n = n0;
	if (s->size != size0) {
		s->size = size0;
		if (ftruncate(s->fd, (off_t)size0) != 0)
			rc = SP_EIO;
	}
	log->nep = nep0;
	return rc;
}

int
repl_log_append(repl_log *log, uint64_t prev_epoch, uint64_t prev_lsn, const repl_log_rec *recs,
    size_t n)
{
	if (!log)
		return SP_EINVAL;
	if (log->failed)
		return SP_EIO;
	int rc = append_check(log, prev_epoch, prev_lsn, recs, n);
	if (rc != SP_OK || n == 0)
		return rc;
	uint8_t(*hdr)[REPL_LOG_HEADER_LEN] = malloc(n * REPL_LOG_HEADER_LEN);
	struct iovec *iov = malloc(IOV_BATCH * sizeof(*iov));
	if (!hdr || !iov) {
		free(hdr);
		free(iov);
		return SP_ENOMEM;
	}
	for (size_t i = 0; i < n; i++)
		hdr_put(hdr[i], &recs[i]);
	pthread_mutex_lock(&log->mu);
	size_t nseg0 = log->nseg, nep0 = log->nep;
	seg *s = &log->segs[log->nseg - 1];
	size_t n0 = s->n;
	uint64_t size0 = s->size;
	uint64_t epoch = log->last.epoch, wsize = s->size;
	int niov = 0;
	for (size_t i = 0; i < n; i++) {
		const repl_log_rec *r = &recs[i];
		uint64_t rsize = REPL_LOG_HEADER_LEN + (uint64_t)r->len;
		bool roll = s->n > 0 && s->size + rsize > log->seg_bytes;
		if (niov && (roll || niov + 2 > IOV_BATCH)) {
			if ((rc = pwritev_all(s->fd, iov, niov, wsize)) != SP_OK)
				goto fail;
			wsize = s->size;
			niov = 0;
		}
		if (roll) {
			/* Only the last segment may hold unsynced records: a crash can then tear
			 * nothing but the log's tail. */
			if (s->dirty && fdatasync(s->fd) != 0) {
				rc = SP_EIO;
				goto fail;
			}
			s->dirty = false;
			if ((rc = seg_create(log, r->lsn)) != SP_OK)
				goto fail;
			s = &log->segs[log->nseg - 1];
			wsize = 0;
		}
		if ((rc = seg_push_off(s, (uint32_t)s->size)) != SP_OK)
			goto fail;
		if (r->epoch != epoch || log->nep == 0) {
			if ((rc = ep_reserve(log, log->nep + 1)) != SP_OK)
				goto fail;
			log->ep[log->nep++] = (epoch_ent){r->epoch, r->lsn};
			epoch = r->epoch;
		}
		iov[niov++] = (struct iovec){hdr[i], REPL_LOG_HEADER_LEN};
		if (r->len)
			iov[niov++] = (struct iovec){(void *)r->data, r->len};
		s->size += rsize;
		s->dirty = true;
	}
	if (niov && (rc = pwritev_all(s->fd, iov, niov, wsize)) != SP_OK)
		goto fail;
	if (log->nep != nep0)
		log->ep_dirty = true;
	log->last = (repl_log_pos){recs[n - 1].epoch, recs[n - 1].lsn};
	pthread_mutex_unlock(&log->mu);
	free(hdr);
	free(iov);
	return SP_OK;
fail:
	if (append_rollback(log, nseg0, n0, size0, nep0) != SP_OK || rc == SP_EIO) {
		sp_error("repl log: append failed (%s); the log is failed", sp_strerror(rc));
		log->failed = true;
		rc = SP_EIO;
	}
	pthread_mutex_unlock(&log->mu);
	free(hdr);
	free(iov);
	return rc;
}

int
repl_log_sync(repl_log *log)
{
	if (!log)
		return SP_EINVAL;
	if (log->failed)
		return SP_EIO;
	/* The writer is the only one changing the segment list, so the fds stay valid while
	 * the fsyncs run without the lock and readers go on reading. */
	int rc = SP_OK;
	for (size_t i = 0; i < log->nseg && rc == SP_OK; i++)
		if (log->segs[i].dirty && fdatasync(log->segs[i].fd) != 0)
			rc = SP_EIO;
	if (rc == SP_OK && log->dir_dirty && fsync(log->dirfd) != 0)
		rc = SP_EIO;
	if (rc == SP_OK && log->ep_dirty)
		rc = epochs_write(log->dirfd, log->ep, log->nep);
	pthread_mutex_lock(&log->mu);
	if (rc == SP_OK) {
		for (size_t i = 0; i < log->nseg; i++)
			log->segs[i].dirty = false;
		log->dir_dirty = false;
		log->ep_dirty = false;
		log->flushed = log->last.lsn;
	} else if (rc == SP_EIO) {
		sp_error("repl log: sync failed; the log is failed");
		log->failed = true;
	}
	pthread_mutex_unlock(&log->mu);
	return rc;
}

/* Index of the segment holding lsn (first <= lsn), or of the last segment. */
static size_t
seg_find(const repl_log *log, uint64_t lsn)
{
	size_t lo = 0, hi = log->nseg;
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (log->segs[mid].first <= lsn)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* The epoch of the record at lsn (base_lsn <= lsn <= last). */
static uint64_t
epoch_of(const repl_log *log, uint64_t lsn)
{
	uint64_t e = 0;
	for (size_t i = 0; i < log->nep && log->ep[i].start <= lsn; i++)
		e = log->ep[i].epoch;
	return e;
}

int
repl_log_truncate(repl_log *log, uint64_t after_lsn)
{
	if (!log)
		return SP_EINVAL;
	if (log->failed)
		return SP_EIO;
	pthread_mutex_lock(&log->mu);
	int rc = SP_OK;
	if (after_lsn >= log->last.lsn)
		goto out;
	rc = SP_ERANGE;
	if (after_lsn < log->committed || after_lsn < log->base_lsn)
		goto out;
	rc = SP_EIO;
	/* Later segments first, so that a crash part-way leaves a contiguous log. */
	while (log->nseg > 1 && log->segs[log->nseg - 1].first > after_lsn) {
		if (seg_unlink(log, &log->segs[--log->nseg]) != SP_OK)
			goto fail;
	}
	seg *s = &log->segs[log->nseg - 1];
	if (after_lsn + 1 < s->first + s->n) {
		size_t keep = (size_t)(after_lsn + 1 - s->first);
		s->size = s->off[keep];
		s->n = keep;
		if (ftruncate(s->fd, (off_t)s->size) != 0)
			goto fail;
	}
	if (fdatasync(s->fd) != 0)
		goto fail;
	s->dirty = false;
	size_t nep = log->nep;
	while (log->nep > 0 && log->ep[log->nep - 1].start > after_lsn)
		log->nep--;
	if (log->nep != nep || log->ep_dirty) {
		if ((rc = epochs_write(log->dirfd, log->ep, log->nep)) != SP_OK)
			goto fail;
		log->ep_dirty = false;
	}
	if (log->dir_dirty) {
		if (fsync(log->dirfd) != 0)
			goto fail;
		log->dir_dirty = false;
	}
	log->last = (repl_log_pos){after_lsn == log->base_lsn ? log->base_epoch : epoch_of(log, after_lsn), after_lsn};
	log->flushed = after_lsn;
	rc = SP_OK;
out:
	pthread_mutex_unlock(&log->mu);
	return rc;
fail:
	sp_error("repl log: truncate failed; the log is failed");
	log->failed = true;
	pthread_mutex_unlock(&log->mu);
	return SP_EIO;
}

int
repl_log_trim(repl_log *log, uint64_t upto_lsn)
{
	return repl_log_retain(log, upto_lsn, 0);
}

/* How many front segments retention may delete (lock held). */
static size_t
segs_to_drop(const repl_log *log, uint64_t upto_lsn, uint64_t keep_bytes)
{
	uint64_t limit = upto_lsn < log->committed ? upto_lsn : log->committed;
	uint64_t left = 0;
	for (size_t i = 0; i < log->nseg; i++)
		left += log->segs[i].size;
	size_t drop = 0;
	while (drop + 1 < log->nseg) {
		const seg *s = &log->segs[drop];
		uint64_t end = s->first + s->n - 1;
		if (s->n == 0 || end > limit || end >= log->last.lsn || left - s->size < keep_bytes)
			break;
		left -= s->size;
		drop++;
	}
	return drop;
}

bool
repl_log_would_trim(repl_log *log, uint64_t upto_lsn, uint64_t keep_bytes)
{
	pthread_mutex_lock(&log->mu);
	bool any = !log->failed && segs_to_drop(log, upto_lsn, keep_bytes) > 0;
	pthread_mutex_unlock(&log->mu);
	return any;
}

int
repl_log_retain(repl_log *log, uint64_t upto_lsn, uint64_t keep_bytes)
{
	if (!log)
		return SP_EINVAL;
	if (log->failed)
		return SP_EIO;
	pthread_mutex_lock(&log->mu);
	size_t drop = segs_to_drop(log, upto_lsn, keep_bytes);
	int rc = SP_OK;
	if (drop == 0)
		goto out;
	/* Front segments first: a crash part-way leaves a contiguous log whose trim point the
	 * (not yet pruned) epoch table still covers. */
	for (size_t i = 0; i < drop; i++) {
		seg gone = log->segs[0];
		memmove(log->segs, log->segs + 1, (log->nseg - 1) * sizeof(*log->segs));
		log->nseg--;
		log->base_lsn = log->segs[0].first - 1;
		log->base_epoch = epoch_of(log, log->base_lsn);
		if (seg_unlink(log, &gone) != SP_OK)
			goto fail;
	}
	size_t prune = 0;
	while (prune + 1 < log->nep && log->ep[prune + 1].start <= log->base_lsn)
		prune++;
	if (prune) {
		memmove(log->ep, log->ep + prune, (log->nep - prune) * sizeof(*log->ep));
		log->nep -= prune;
		if ((rc = epochs_write(log->dirfd, log->ep, log->nep)) != SP_OK)
			goto fail;
		log->ep_dirty = false;
	}
out:
	pthread_mutex_unlock(&log->mu);
	return rc;
fail:
	sp_error("repl log: trim failed; the log is failed");
	log->failed = true;
	pthread_mutex_unlock(&log->mu);
	return SP_EIO;
}

int
repl_log_set_committed(repl_log *log, uint64_t lsn)
{
	if (!log)
		return SP_EINVAL;
	pthread_mutex_lock(&log->mu);
	int rc = SP_OK;
	if (lsn > log->last.lsn)
		rc = SP_ERANGE;
	else if (lsn > log->committed)
		log->committed = lsn;
	pthread_mutex_unlock(&log->mu);
	return rc;
}

/* Payload bytes of record k of segment s. */
static uint64_t
rec_bytes(const seg *s, size_t k)
{
	uint64_t end = k + 1 < s->n ? s->off[k + 1] : s->size;
	return end - s->off[k];
}

int
repl_log_read(repl_log *log, uint64_t from_lsn, uint64_t upto_lsn, size_t max_bytes,
    repl_log_read_cb cb, void *arg, size_t *count)
{
	if (count)
		*count = 0;
	if (!log || !cb || from_lsn == 0)
		return SP_EINVAL;
	uint8_t *buf = NULL;
	repl_log_rec *recs = NULL;
	size_t nrec = 0;
	pthread_mutex_lock(&log->mu);
	int rc = SP_ERANGE;
	if (from_lsn <= log->base_lsn || from_lsn > log->last.lsn + 1)
		goto unlock;
	rc = SP_OK;
	if (upto_lsn > log->last.lsn)
		upto_lsn = log->last.lsn;
	if (from_lsn > upto_lsn)
		goto unlock;
	/* Plan: how many records fit, and how many bytes that is. */
	uint64_t total = 0, payload = 0, lsn = from_lsn;
	for (size_t si = seg_find(log, from_lsn); si < log->nseg && lsn <= upto_lsn; si++) {
		const seg *s = &log->segs[si];
		for (size_t k = (size_t)(lsn - s->first); k < s->n && lsn <= upto_lsn; k++, lsn++) {
			uint64_t b = rec_bytes(s, k);
			if (nrec && payload + b - REPL_LOG_HEADER_LEN > max_bytes)
				goto planned;
			payload += b - REPL_LOG_HEADER_LEN;
			total += b;
			nrec++;
		}
	}
planned:
	rc = SP_ENOMEM;
	if (total > SIZE_MAX || !(buf = malloc((size_t)total)) || !(recs = calloc(nrec, sizeof(*recs))))
		goto unlock;
	size_t got = 0;
	uint64_t at = 0;
	lsn = from_lsn;
	for (size_t si = seg_find(log, from_lsn); got < nrec; si++) {
		const seg *s = &log->segs[si];
		size_t k0 = (size_t)(lsn - s->first);
		size_t k1 = k0 + (nrec - got < s->n - k0 ? nrec - got : s->n - k0);
		uint64_t end = k1 < s->n ? s->off[k1] : s->size;
		uint64_t len = end - s->off[k0];
		if ((rc = sp_pread_all(s->fd, buf + at, (size_t)len, s->off[k0])) != SP_OK)
			goto unlock;
		for (size_t k = k0; k < k1; k++, got++, lsn++) {
			const uint8_t *p = buf + at + (s->off[k] - s->off[k0]);
			if (rec_parse(p, (size_t)rec_bytes(s, k), &recs[got]) != SP_OK ||
			    recs[got].lsn != lsn) {
				sp_error("repl log: record %" PRIu64 " is damaged on disk", lsn);
				rc = SP_ESTORE;
				goto unlock;
			}
		}
		at += len;
	}
	rc = SP_OK;
unlock:
	pthread_mutex_unlock(&log->mu);
	size_t done = 0;
	if (rc == SP_OK) {
		for (; done < nrec; done++) {
			int r = cb(arg, &recs[done]);
			if (r != 0) {
				rc = r;
				done++;
				break;
			}
		}
	}
	if (count)
		*count = done;
	free(buf);
	free(recs);
	return rc;
}

int
repl_log_epoch_at(repl_log *log, uint64_t lsn, uint64_t *epoch)
{
	if (!log || !epoch)
		return SP_EINVAL;
	pthread_mutex_lock(&log->mu);
	int rc = SP_OK;
	if (lsn < log->base_lsn || lsn > log->last.lsn)
		rc = SP_ERANGE;
	else
		*epoch = lsn == 0 ? 0 : lsn == log->base_lsn ? log->base_epoch : epoch_of(log, lsn);
	pthread_mutex_unlock(&log->mu);
	return rc;
}

uint64_t
repl_log_bytes(repl_log *log)
{
	uint64_t n = 0;
	pthread_mutex_lock(&log->mu);
	for (size_t i = 0; i < log->nseg; i++)
		n += log->segs[i].size;
	pthread_mutex_unlock(&log->mu);
	return n;
}

int
repl_log_epoch_end(repl_log *log, uint64_t epoch, repl_log_pos *out)
{
	if (!log || !out)
		return SP_EINVAL;
	pthread_mutex_lock(&log->mu);
	int rc = SP_OK;
	if (log->nep == 0 || epoch >= log->last.epoch) {
		*out = log->last;
		goto out;
	}
	size_t i = log->nep;
	while (i > 0 && log->ep[i - 1].epoch > epoch)
		i--;
	if (i == 0) {
		if (log->ep[0].start == 1)
			*out = (repl_log_pos){0, 0};
		else
			rc = SP_ERANGE;
		goto out;
	}
	*out = (repl_log_pos){log->ep[i - 1].epoch, i < log->nep ? log->ep[i].start - 1 : log->last.lsn};
out:
	pthread_mutex_unlock(&log->mu);
	return rc;
}

uint64_t
repl_divergence(repl_log_pos follower_last, repl_log_pos leader_answer)
{
	return follower_last.lsn < leader_answer.lsn ? follower_last.lsn : leader_answer.lsn;
}

uint64_t
repl_log_first_lsn(repl_log *log)
{
	pthread_mutex_lock(&log->mu);
	uint64_t v = log->base_lsn + 1;
	pthread_mutex_unlock(&log->mu);
	return v;
}

repl_log_pos
repl_log_last(repl_log *log)
{
	pthread_mutex_lock(&log->mu);
	repl_log_pos v = log->last;
	pthread_mutex_unlock(&log->mu);
	return v;
}

uint64_t
repl_log_flushed(repl_log *log)
{
	pthread_mutex_lock(&log->mu);
	uint64_t v = log->flushed;
	pthread_mutex_unlock(&log->mu);
	return v;
}

uint64_t
repl_log_committed(repl_log *log)
{
	pthread_mutex_lock(&log->mu);
	uint64_t v = log->committed;
	pthread_mutex_unlock(&log->mu);
	return v;
}

bool
repl_log_fresh(const repl_log *log)
{
	return log->fresh;
}

void
repl_log_incarnation(const repl_log *log, uint8_t out[REPL_LOG_INCARNATION_LEN])
{
	memcpy(out, log->inc, REPL_LOG_INCARNATION_LEN);
}
