/*
 * Test support for keysrv's unit and integration tests (header-only; never included by
 * the server). Builds device key sets the way a client would, and drives requests either
 * in-process (keys_call) or over NNG.
 */
#ifndef KEYS_TEST_HARNESS_H
#define KEYS_TEST_HARNESS_H

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "client/signal/sig_curve.h"
#include "keysrv/links.h"
#include "keysrv/server.h"
#include "sp_error.h"
#include "sp_nng.h"
#include "test_net.h"

/* A client device's secrets and, once registered, its ids. */
typedef struct kt_device {
	sig_keypair ik;
	uint8_t auth_pk[crypto_sign_PUBLICKEYBYTES], auth_sk[crypto_sign_SECRETKEYBYTES];
	sig_keypair spk;
	uint8_t spk_sig[64];
	uint32_t reg_id;
	uint64_t user, device;
} kt_device;

static inline void
kt_device_new(kt_device *d)
{
	memset(d, 0, sizeof(*d));
	sig_keypair_generate(&d->ik);
	crypto_sign_keypair(d->auth_pk, d->auth_sk);
	sig_keypair_generate(&d->spk);
	sig_curve_sign(d->spk_sig, d->ik.priv, d->spk.pub, 33);
	d->reg_id = randombytes_uniform(0x3fff) + 1;
}

/* Sets the new-device fields (VERIFY / LINK_REQUEST) on f, with the signed prekey. */
static inline void
kt_set_newdev(sp_frame *f, const kt_device *d, uint32_t spk_id)
{
	sp_frame_set_bin(f, SP_F_IDENTITY_KEY, d->ik.pub, 33);
	sp_frame_set_bin(f, SP_F_AUTH_KEY, d->auth_pk, 32);
	sp_frame_set_u64(f, SP_F_REG_ID, d->reg_id);
	sp_frame_set_u64(f, SP_F_SPK_ID, spk_id);
	sp_frame_set_bin(f, SP_F_SPK, d->spk.pub, 33);
	sp_frame_set_bin(f, SP_F_SPK_SIG, d->spk_sig, 64);
}

static inline void
kt_set_auth(sp_frame *f, const kt_device *d)
{
	sp_frame_set_u64(f, SP_F_AUTH_USER, d->user);
	sp_frame_set_u64(f, SP_F_AUTH_DEVICE, d->device);
}

/* One-time prekey records ids [first, first+n) with fresh keys, in `recs` / `keys`. */
static inline void
kt_prekeys(sp_frame *recs, uint8_t (*keys)[33], uint32_t first, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		sig_keypair kp;
		sig_keypair_generate(&kp);
		memcpy(keys[i], kp.pub, 33);
		sp_frame_init(&recs[i], SP_T_PREKEY, 0, false);
		sp_frame_set_u64(&recs[i], SP_F_OPK_ID, first + i);
		sp_frame_set_bin(&recs[i], SP_F_OPK, keys[i], 33);
	}
}

/* The primary's link signature and the new device's status signature. */
static inline void
kt_link_sig(uint8_t sig[64], const kt_device *primary, const kt_device *nd)
{
	uint8_t msg[16 + 33 + 32];
	memcpy(msg, KEYS_LINK_SIG_TAG, 16);
	memcpy(msg + 16, nd->ik.pub, 33);
	memcpy(msg + 49, nd->auth_pk, 32);
	crypto_sign_detached(sig, NULL, msg, sizeof(msg), primary->auth_sk);
}

static inline void
kt_status_sig(uint8_t sig[64], const kt_device *nd, const char *code)
{
	uint8_t msg[23 + 8];
	memcpy(msg, KEYS_LINK_STATUS_TAG, 23);
	memcpy(msg + 23, code, 8);
	crypto_sign_detached(sig, NULL, msg, sizeof(msg), nd->auth_sk);
}

/* Reads the code the dev sender wrote for `phone` under `dir`. */
static inline int
kt_read_otp(const char *dir, const char *phone, char code[7])
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, phone);
	FILE *fp = fopen(path, "r");
	if (!fp)
		return -1;
	char line[32] = "";
	int ok = fgets(line, sizeof(line), fp) != NULL;
	fclose(fp);
	if (!ok || strlen(line) < 6)
		return -1;
	memcpy(code, line, 6);
	code[6] = '\0';
	return 0;
}

/* Recursive delete of a test directory (flat enough for keysrv's layout). */
static inline void
kt_rmtree(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[4096];
	if (!d)
		return;
	while ((e = readdir(d))) {
		struct stat st;
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if ((size_t)snprintf(p, sizeof(p), "%.2000s/%.1000s", dir, e->d_name) >= sizeof(p))
			continue;
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			kt_rmtree(p);
		else
			unlink(p);
	}
	closedir(d);
	rmdir(dir);
}

/* ---- in-process: a context over a temp dir with a settable clock ---- */

static uint64_t kt_now = 1700000000000ULL;

static inline uint64_t
kt_clock(void)
{
	return kt_now;
}

typedef struct kt_env {
	char dir[256], otp_dir[300];
	keys_ctx *ctx;
	keys_req r; /* the last reply, valid until the next call */
	bool have_reply;
} kt_env;

/* Default limits are generous; tests that exercise a limit pass their own config. */
static inline keys_ctx_cfg
kt_default_cfg(kt_env *e)
{
	keys_ctx_cfg cfg = {
		.data_dir = e->dir,
		.map_size = 64 << 20,
		.otp = {"dev", e->otp_dir, NULL, 1000, 16},
		.keys = {600000, 5, 600000, 20},
		.rate_phone = {1000, 1000},
		.rate_source = {1000, 1000},
		.rate_bundle = {1000, 1000},
		.rate_link = {1000, 1000},
		.rate_max_keys = 1000,
	};
	return cfg;
}

static inline int
kt_env_open_cfg(kt_env *e, keys_ctx_cfg *cfg)
{
	int rc = keys_ctx_open(&e->ctx, cfg);
	if (rc == SP_OK)
		e->ctx->now_ms = kt_clock;
	return rc;
}

static inline int
kt_env_init(kt_env *e)
{
	memset(e, 0, sizeof(*e));
	snprintf(e->dir, sizeof(e->dir), "/tmp/keysrv-test-XXXXXX");
	if (!mkdtemp(e->dir))
		return SP_EIO;
	snprintf(e->otp_dir, sizeof(e->otp_dir), "%s/otp", e->dir);
	return SP_OK;
}

static inline int
kt_env_open(kt_env *e)
{
	int rc = kt_env_init(e);
	if (rc)
		return rc;
	keys_ctx_cfg cfg = kt_default_cfg(e);
	return kt_env_open_cfg(e, &cfg);
}

static inline void
kt_env_close(kt_env *e, bool remove)
{
	if (e->have_reply)
		keys_req_fini(&e->r);
	e->have_reply = false;
	keys_ctx_close(e->ctx);
	e->ctx = NULL;
	if (remove)
		kt_rmtree(e->dir);
}

/* Handles `f` in-process and returns the SP code; e->r.out holds the reply. The reply is
 * also packed, so a reply that breaks the catalogue's bounds fails the call. */
static inline int
kt_call(kt_env *e, const sp_frame *f)
{
	msgpack_sbuffer sb;
	if (e->have_reply)
		keys_req_fini(&e->r);
	int rc = keys_call(e->ctx, f, &e->r);
	e->have_reply = true;
	msgpack_sbuffer_init(&sb);
	if (sp_frame_pack(&e->r.out, &sb) != SP_OK)
		rc = SP_EPROTO;
	msgpack_sbuffer_destroy(&sb);
	return rc;
}

/* REGISTER + VERIFY for a new device: fills d->user and d->device. */
static inline int
kt_register(kt_env *e, const char *phone, kt_device *d)
{
	sp_frame f;
	char code[7];
	int rc;

	sp_frame_init(&f, SP_T_REGISTER, 1, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	if ((rc = kt_call(e, &f)))
		return rc;
	if (kt_read_otp(e->otp_dir, phone, code))
		return SP_EIO;
	sp_frame_init(&f, SP_T_VERIFY, 2, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	sp_frame_set_str(&f, SP_F_OTP, code);
	kt_set_newdev(&f, d, 1);
	if ((rc = kt_call(e, &f)))
		return rc;
	d->user = sp_frame_u64(&e->r.out, SP_F_USER);
	d->device = sp_frame_u64(&e->r.out, SP_F_DEVICE);
	return SP_OK;
}

/* Uploads n fresh one-time prekeys with ids from `first`. */
static inline int
kt_upload(kt_env *e, const kt_device *d, uint32_t first, uint32_t n)
{
	sp_frame f, *recs = calloc(n ? n : 1, sizeof(sp_frame));
	uint8_t(*keys)[33] = calloc(n ? n : 1, 33);
	int rc = SP_ENOMEM;
	if (recs && keys) {
		kt_prekeys(recs, keys, first, n);
		sp_frame_init(&f, SP_T_KEYS_UPLOAD, 3, true);
		sp_frame_set_recs(&f, SP_F_PREKEYS, recs, n);
		kt_set_auth(&f, d);
		rc = kt_call(e, &f);
	}
	free(recs);
	free(keys);
	return rc;
}

/* Links a new device `nd` to primary `p` (request, confirm): fills nd's ids. */
static inline int
kt_link(kt_env *e, const kt_device *p, kt_device *nd)
{
	sp_frame f;
	char code[9];
	uint8_t sig[64];
	int rc;

	sp_frame_init(&f, SP_T_LINK_REQUEST, 4, true);
	kt_set_newdev(&f, nd, 1);
	if ((rc = kt_call(e, &f)))
		return rc;
	if (sp_frame_str(&e->r.out, SP_F_LINK_CODE, code, sizeof(code)))
		return SP_EPROTO;
	kt_link_sig(sig, p, nd);
	sp_frame_init(&f, SP_T_LINK_CONFIRM, 5, true);
	sp_frame_set_str(&f, SP_F_LINK_CODE, code);
	sp_frame_set_bin(&f, SP_F_PRIMARY_SIG, sig, 64);
	kt_set_auth(&f, p);
	if ((rc = kt_call(e, &f)))
		return rc;
	nd->user = sp_frame_u64(&e->r.out, SP_F_USER);
	nd->device = sp_frame_u64(&e->r.out, SP_F_DEVICE);
	return SP_OK;
}

/* ---- integration: real keysrv processes and NNG requests ---- */

/* Fails the test program: the exit handler kills and reaps every process started. */
#define KT_CHECK(cond)                                                                  \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
			exit(1);                                                        \
		}                                                                       \
	} while (0)
#define KT_CHECK_RC(expr, want)                                                                 \
	do {                                                                                    \
		int kt_rc_ = (expr);                                                            \
		if (kt_rc_ != (want)) {                                                         \
			fprintf(stderr, "FAIL %s:%d: %s = %d (%s), want %d\n", __FILE__, __LINE__, \
			    #expr, kt_rc_, sp_errname(kt_rc_), (want));                         \
			exit(1);                                                                \
		}                                                                               \
	} while (0)

#define KT_MAX_PROCS 8
static pid_t kt_pids[KT_MAX_PROCS];

static void
kt_kill_all(void)
{
	for (int i = 0; i < KT_MAX_PROCS; i++) {
		if (kt_pids[i] > 0) {
			kill(kt_pids[i], SIGKILL);
			waitpid(kt_pids[i], NULL, 0);
			kt_pids[i] = 0;
		}
	}
}

static inline void
kt_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

typedef struct kt_proc {
	pid_t pid;
	int slot;
	char log[512];
	char url[64];
} kt_proc;

/* True once `needle` appears in the file. */
static inline bool
kt_file_has(const char *path, const char *needle, char *line_out, size_t cap)
{
	FILE *fp = fopen(path, "r");
	char line[2048];
	bool found = false;
	if (!fp)
		return false;
	while (!found && fgets(line, sizeof(line), fp)) {
		if (strstr(line, needle)) {
			found = true;
			if (line_out)
				snprintf(line_out, cap, "%s", line);
		}
	}
	fclose(fp);
	return found;
}

/* Starts `$SP_BIN/keysrv --listen tcp://127.0.0.1:<free port> ARGS...` (argv ends with
 * NULL), logging to `log`, and waits for its ready line (copied to ready[] if given).
 * Retries with another port when the process exits before it is ready. */
static inline int
kt_keysrv_start(kt_proc *p, const char *log, const char *const *args, char *ready, size_t cap)
{
	const char *bindir = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	char bin[512];
	snprintf(bin, sizeof(bin), "%s/keysrv", bindir);
	snprintf(p->log, sizeof(p->log), "%s", log);
	for (int attempt = 0; attempt < 5; attempt++) {
		const char *argv[40];
		int n = 0, slot = -1;
		snprintf(p->url, sizeof(p->url), "tcp://127.0.0.1:%d", test_free_port());
		argv[n++] = bin;
		argv[n++] = "--listen";
		argv[n++] = p->url;
		argv[n++] = "--insecure-internal"; /* plain tcp:// on loopback */
		for (int i = 0; args[i] && n < 38; i++)
			argv[n++] = args[i];
		argv[n] = NULL;
		for (int i = 0; i < KT_MAX_PROCS; i++)
			if (kt_pids[i] == 0 && slot < 0)
				slot = i;
		if (slot < 0)
			return SP_ELIMIT;
		static bool registered;
		if (!registered) {
			atexit(kt_kill_all);
			registered = true;
		}
		unlink(log);
		pid_t pid = fork();
		if (pid < 0)
			return SP_EIO;
		if (pid == 0) {
			int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
			}
			execv(bin, (char *const *)argv);
			_exit(127);
		}
		kt_pids[slot] = pid;
		p->pid = pid;
		p->slot = slot;
		/* Start-up takes milliseconds; a generous bound only guards a hang. */
		for (int waited = 0; waited < 20000; waited += 20) {
			if (kt_file_has(log, "keysrv ready", ready, cap))
				return SP_OK;
			if (waitpid(pid, NULL, WNOHANG) == pid) {
				kt_pids[slot] = 0;
				break;
			}
			kt_sleep_ms(20);
		}
		if (kt_pids[slot]) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			kt_pids[slot] = 0;
			return SP_ETIMEDOUT;
		}
	}
	return SP_EIO;
}

/* Stops a process with `sig` and reaps it; returns its exit status (-1 if killed). */
static inline int
kt_proc_stop(kt_proc *p, int sig)
{
	int st = 0;
	kill(p->pid, sig);
	if (sig == SIGTERM) {
		for (int waited = 0; waited < 20000; waited += 20) {
			if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
				kt_pids[p->slot] = 0;
				return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
			}
			kt_sleep_ms(20);
		}
		kill(p->pid, SIGKILL);
	}
	waitpid(p->pid, &st, 0);
	kt_pids[p->slot] = 0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A REQ client; each kt_rpc frees the previous reply. */
typedef struct kt_conn {
	nng_socket s;
	nng_msg *m;
	sp_frame rep;
} kt_conn;

static inline int
kt_conn_open(kt_conn *c, const char *url)
{
	memset(c, 0, sizeof(*c));
	return sp_nng_req_open(&c->s, url, 10000, 0);
}

static inline void
kt_conn_release(kt_conn *c)
{
	if (c->m) {
		sp_frame_fini(&c->rep);
		nng_msg_free(c->m);
		c->m = NULL;
	}
}

static inline void
kt_conn_close(kt_conn *c)
{
	kt_conn_release(c);
	nng_close(c->s);
}

static inline int
kt_rpc(kt_conn *c, const sp_frame *f)
{
	kt_conn_release(c);
	return sp_nng_call(c->s, f, &c->m, &c->rep);
}

#endif
