#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"
#include "test_proc.h"
#include "sp_error.h"

static void
die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "itest: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(99);
}

static const char *
root(void)
{
	const char *r = getenv("SP_ROOT");
	return r ? r : ".";
}

static const char *
bindir(void)
{
	const char *b = getenv("SP_BIN");
	return b ? b : "bin";
}

static int
devcluster(itest_cluster *c, const char *args)
{
	char cmd[1024];
	/* The cluster as deployed: every link between servers is mutual TLS. */
	snprintf(cmd, sizeof(cmd),
		 "SP_DEVCLUSTER_DIR=%s SP_PORT_BASE=%d SP_BIN=%s %s/scripts/devcluster.sh %s",
		 c->dir, c->base, bindir(), root(), args);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

int
itest_devcluster(itest_cluster *c, const char *args)
{
	return devcluster(c, args);
}

void
itest_cluster_up(itest_cluster *c)
{
	memset(c, 0, sizeof(*c));
	/* Servers get killed under our feet: a write to a dead socket is an error, not death. */
	signal(SIGPIPE, SIG_IGN);
	strcpy(c->dir, "/tmp/sp-itest-XXXXXX");
	if (!mkdtemp(c->dir))
		die("mkdtemp failed");
	/* Random base port per run; several test programs may run one after another. */
	srand((unsigned)(time(NULL) ^ getpid()));
	for (int attempt = 0; attempt < 5; attempt++) {
		c->base = 10000 + (rand() % 220) * 100; /* below the ephemeral range */
		if (devcluster(c, "up") == 0)
			break;
		devcluster(c, "down");
		if (attempt == 4)
			die("cluster did not start (logs in %s/logs)", c->dir);
	}
	snprintf(c->ca, sizeof(c->ca), "%s/certs/ca.pem", c->dir);
	snprintf(c->router, sizeof(c->router), "127.0.0.1:%d", c->base + 1);
	snprintf(c->redis, sizeof(c->redis), "127.0.0.1:%d", c->base);
	c->conn_port[0] = c->base + 40;
	c->conn_port[1] = c->base + 41;
	snprintf(c->otp_dir, sizeof(c->otp_dir), "%s/data/keysrv/otp", c->dir);
}

void
itest_cluster_down(itest_cluster *c)
{
	devcluster(c, "down >/dev/null");
	if (!getenv("SP_KEEP_CLUSTER")) {
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", c->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "itest: could not remove %s\n", c->dir);
	}
}

/* Whether pid exists and has not exited. The servers are detached (their parent is init),
 * and an exited one stays a zombie until init reaps it, which some inits do only every
 * second or two; a zombie holds no port or file any more. */
static bool
running(int pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	char state = test_proc_state(path);
	return state != '\0' && state != 'Z';
}

void
itest_signal(itest_cluster *c, const char *name, int sig)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/pids/%s.pid", c->dir, name);
	FILE *f = fopen(path, "r");
	int pid = 0;
	if (!f || fscanf(f, "%d", &pid) != 1 || pid <= 0)
		die("no pid for %s", name);
	fclose(f);
	kill(pid, sig);
	if (sig == SIGKILL || sig == SIGTERM) {
		for (int i = 0; i < 100 && running(pid); i++)
			usleep(50000);
	}
}

void
itest_restart(itest_cluster *c, const char *name)
{
	char args[128];
	snprintf(args, sizeof(args), "restart %s", name);
	if (devcluster(c, args))
		die("restart %s failed", name);
	usleep(300000);
}

int
itest_sh(itest_cluster *c, const char *fmt, ...)
{
	char body[2048], cmd[2400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(body, sizeof(body), fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof(cmd), ". %s/env; %s", c->dir, body);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

spc_conn *
itest_connect(itest_cluster *c, int which)
{
	char err[512];
	spc_conn *conn;
	for (int i = 0; i < 50; i++) {
		if (spc_conn_open("127.0.0.1", c->conn_port[which], c->ca, 5000, &conn, err, sizeof(err)) == SP_OK)
			return conn;
		usleep(100000);
	}
	die("connect to connsrv-%d: %s", which, err);
	return NULL;
}

/* One request, one reply of `want` type (ERROR gives its code). */
static int
call(spc_conn *conn, const sp_frame *q, unsigned want, sp_frame *r)
{
	int rc = spc_conn_send(conn, q);
	while (rc == SP_OK) {
		rc = spc_conn_recv(conn, 10000, r);
		if (rc)
			return rc;
		if (r->type == want)
			return SP_OK;
		if (r->type == SP_T_ERROR) {
			rc = (int)sp_frame_i64(r, SP_F_CODE);
			sp_frame_fini(r);
			return rc;
		}
		sp_frame_fini(r);
	}
	return rc;
}

void
itest_register(itest_cluster *c, int which, itest_user *u, const char *phone)
{
	memset(u, 0, sizeof(*u));
	snprintf(u->phone, sizeof(u->phone), "%s", phone);
	crypto_sign_keypair(u->auth_pk, u->auth_sk);
	uint8_t sk[32];
	u->ik[0] = 0x05;
	crypto_box_keypair(u->ik + 1, sk);
	spc_conn *conn = itest_connect(c, which);
	sp_frame q, r;
	sp_frame_init(&q, SP_T_REGISTER, 1, true);
	sp_frame_set_str(&q, SP_F_PHONE, phone);
	int rc = call(conn, &q, SP_T_REGISTERED, &r);
	if (rc)
		die("REGISTER %s: %s", phone, sp_strerror(rc));
	sp_frame_fini(&r);
	char path[400], code[32] = "";
	snprintf(path, sizeof(path), "%s/%s", c->otp_dir, phone);
	FILE *f = fopen(path, "r");
	if (!f || !fgets(code, sizeof(code), f))
		die("no one-time code for %s in %s", phone, path);
	fclose(f);
	code[strcspn(code, "\r\n ")] = '\0';
	sp_frame_init(&q, SP_T_VERIFY, 2, true);
	sp_frame_set_str(&q, SP_F_PHONE, phone);
	sp_frame_set_str(&q, SP_F_OTP, code);
	sp_frame_set_bin(&q, SP_F_IDENTITY_KEY, u->ik, 33);
	sp_frame_set_bin(&q, SP_F_AUTH_KEY, u->auth_pk, 32);
	sp_frame_set_u64(&q, SP_F_REG_ID, 1 + (randombytes_random() & 0x3ffe));
	if ((rc = call(conn, &q, SP_T_VERIFIED, &r)))
		die("VERIFY %s: %s", phone, sp_strerror(rc));
	u->user = sp_frame_u64(&r, SP_F_USER);
	u->device = sp_frame_u64(&r, SP_F_DEVICE);
	sp_frame_fini(&r);
	spc_conn_close(conn);
}

int
itest_login(itest_cluster *c, int which, itest_user *u)
{
	if (u->conn)
		spc_conn_close(u->conn);
	u->conn = itest_connect(c, which);
	return spc_conn_login(u->conn, u->user, u->device, u->auth_sk, u->acked, NULL);
}

void
itest_logout(itest_user *u)
{
	spc_conn_close(u->conn);
	u->conn = NULL;
}

void
itest_msg_id(uint8_t id[16])
{
	randombytes_buf(id, 16);
}

bool
itest_sanitized(void)
{
	const char *v = getenv("SP_SANITIZED");
	return v && strcmp(v, "1") == 0;
}

int
itest_send(itest_user *u, uint64_t to_user, const uint64_t *devices, size_t n,
	   const uint8_t msg_id[16], const void *body, size_t len)
{
	sp_frame q, items[8], r;
	static uint64_t next_id = 1000;
	sp_frame_init(&q, SP_T_SEND, ++next_id, true);
	sp_frame_set_bin(&q, SP_F_MSG_ID, msg_id, 16);
	sp_frame_set_u64(&q, SP_F_TO_USER, to_user);
	for (size_t i = 0; i < n && i < 8; i++) {
		sp_frame_init(&items[i], SP_T_SEND_ITEM, 0, false);
		sp_frame_set_u64(&items[i], SP_F_DEVICE, devices[i]);
		sp_frame_set_u64(&items[i], SP_F_ETYPE, 1);
		sp_frame_set_bin(&items[i], SP_F_CT, body, len);
	}
	sp_frame_set_recs(&q, SP_F_ITEMS, items, (uint32_t)n);
	int rc = spc_conn_send(u->conn, &q);
	while (rc == SP_OK) {
		rc = spc_conn_recv(u->conn, 15000, &r);
		if (rc)
			break;
		bool mine = sp_frame_has(&r, SP_F_MSG_ID) && memcmp(sp_frame_bin(&r, SP_F_MSG_ID).p, msg_id, 16) == 0;
		if (r.type == SP_T_SENT && mine) {
			sp_frame_fini(&r);
			return SP_OK;
		}
		if ((r.type == SP_T_ERROR && (mine || !sp_frame_has(&r, SP_F_MSG_ID))) ||
		    (r.type == SP_T_MISMATCHED_DEVICES && mine)) {
			rc = r.type == SP_T_ERROR ? (int)sp_frame_i64(&r, SP_F_CODE) : SP_EMISMATCH;
			sp_frame_fini(&r);
			return rc;
		}
		sp_frame_fini(&r);
	}
	return rc;
}

int
itest_wait(itest_user *u, unsigned type, int timeout_ms, sp_frame *f)
{
	for (;;) {
		int rc = spc_conn_recv(u->conn, timeout_ms, f);
		if (rc)
			return rc;
		if (f->type == type)
			return SP_OK;
		sp_frame_fini(f);
	}
}

int
itest_ack(itest_user *u, uint64_t upto)
{
	sp_frame q;
	sp_frame_init(&q, SP_T_ACK, 0, false);
	sp_frame_set_u64(&q, SP_F_UPTO_SEQ, upto);
	if (upto > u->acked)
		u->acked = upto;
	return spc_conn_send(u->conn, &q);
}
