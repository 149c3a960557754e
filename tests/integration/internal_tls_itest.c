/*
 * Mutual TLS on every internal link (docs/SECURITY.md "Internal links"): a router, a
 * keysrv, one inbox and a connsrv on loopback, every link tls+tcp:// with certificates
 * from scripts/certs.sh (a cluster root, one CA per role, a bundle of role CAs per
 * listener). A client registers, logs in and sends through it.
 *
 * Then the refusals: a dialer with no certificate, with a certificate of a role the
 * listener does not serve, or speaking plain tcp:// to a TLS listener gets no answer and
 * nothing is read, written or deleted: forged FETCH/PURGE on the inbox leave the queue
 * intact (its owner still gets the message), a forged REGISTER on keysrv sends no code,
 * frames pushed to connsrv's pull socket are never read (its counter of frames it read
 * and dropped does not move). The same probes with the right role's certificate do get
 * through, so the refusals are the handshake's.
 *
 * keysrv copies replicate over mutual TLS too: two copies with min-copies 2 answer a
 * write (so the replica fetched the log), and a connsrv certificate, welcome on keysrv's
 * request socket, gets nothing from its replication endpoint (--repl-peer-ca).
 *
 * Last, each binary started with a tcp:// internal URL and no --insecure-internal exits
 * non-zero and says why; with the flag it starts and warns.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/tls/tls.h>

#include "etcd_proc.h"
#include "itest.h"
#include "sp_error.h"
#include "sp_frame.h"
#include "sp_nng.h"
#include "sp_time.h"
#include "test_net.h"

#define CHECK(cond, ...)                                                                    \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
			fprintf(stderr, __VA_ARGS__);                                       \
			fputc('\n', stderr);                                                \
			exit(1);                                                            \
		}                                                                           \
	} while (0)

/* How long a refused probe waits for an answer that must not come. */
#define PROBE_MS 1500
/* How long a probe that must be answered waits: the TLS handshake and the request take
 * seconds under ASan with other tests beside it (a 1.5 s bound failed once in CI). */
#define ANSWER_MS 15000

typedef struct proc {
	const char *name;
	pid_t pid;
	char log[256];
} proc;

enum { P_REDIS, P_ROUTER, P_KEYSRV, P_INBOX, P_CONNSRV, NPROCS };
static proc P[NPROCS] = {
	{ "redis", 0, "" }, { "router", 0, "" }, { "keysrv", 0, "" }, { "inbox-0", 0, "" },
	{ "connsrv-0", 0, "" },
};
static char dir[64], certs[128];
static int checks;
/* Two keysrv copies and their etcd. */
static proc K[2] = { { "keys-a", 0, "" }, { "keys-b", 0, "" } };
static etcd_proc E;

static void
stop(proc *p)
{
	if (p->pid <= 0)
		return;
	kill(p->pid, SIGKILL);
	waitpid(p->pid, NULL, 0);
	p->pid = 0;
}

static void
cleanup(void)
{
	for (int i = NPROCS; i-- > 0;)
		stop(&P[i]);
	stop(&K[0]);
	stop(&K[1]);
	if (E.pid > 0)
		etcd_proc_stop(&E);
	if (dir[0] && !getenv("SP_KEEP_CLUSTER")) {
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
	} else if (dir[0]) {
		fprintf(stderr, "kept %s\n", dir);
	}
}

static const char *
bin(const char *prog)
{
	static char path[8][256];
	static int k;
	const char *b = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	char *out = path[k++ % 8];
	snprintf(out, 256, "%s/%s", b, prog);
	return out;
}

static const char *
cert(const char *name, const char *ext)
{
	static char path[8][192];
	static int k;
	char *out = path[k++ % 8];
	snprintf(out, 192, "%s/%s.%s", certs, name, ext);
	return out;
}

static void
spawn(proc *p, char *const argv[])
{
	snprintf(p->log, sizeof(p->log), "%s/%s.log", dir, p->name);
	p->pid = fork();
	CHECK(p->pid >= 0, "fork");
	if (p->pid == 0) {
		int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execvp(argv[0], argv);
		_exit(127);
	}
}

static bool
file_has(const char *path, const char *text)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	char line[2048];
	bool found = false;
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, text) != NULL;
	fclose(f);
	return found;
}

/* Waits until `p`'s log has `text`; fails if it exits first or after 20 s. */
static void
wait_log(proc *p, const char *text)
{
	uint64_t deadline = sp_mono_ns() + 20000000000ULL;
	while (!file_has(p->log, text)) {
		int st;
		CHECK(waitpid(p->pid, &st, WNOHANG) == 0, "%s exited at start-up; see %s", p->name,
		    p->log);
		CHECK(sp_mono_ns() < deadline, "%s: no '%s' in 20 s; see %s", p->name, text, p->log);
		usleep(50000);
	}
}

/* ---- probes: one request or push with a given identity ---- */

/* Identity of a probe: a member certificate by name, none (TLS without a certificate),
 * or plain tcp:// to the TLS listener. */
typedef enum { ID_CERT, ID_NONE, ID_PLAIN } id_kind;
typedef struct ident {
	id_kind kind;
	const char *member;
} ident;

static const char *
ident_name(ident id)
{
	return id.kind == ID_CERT ? id.member : id.kind == ID_NONE ? "no certificate" : "plain tcp";
}

/* Opens a REQ or PUSH socket to `url` ("tls+tcp://...") as `id`; sends and receives
 * wait up to `ms`. */
static nng_socket
probe_open(ident id, const char *url, bool push, int ms)
{
	nng_socket s;
	int rv = push ? nng_push0_open(&s) : nng_req0_open(&s);
	CHECK(rv == 0, "socket: %s", nng_strerror(rv));
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, ms);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, ms);
	nng_socket_set_ms(s, NNG_OPT_RECONNMINT, 20);
	nng_socket_set_ms(s, NNG_OPT_RECONNMAXT, 200);
	if (id.kind == ID_PLAIN) {
		char plain[128];
		CHECK(strncmp(url, "tls+", 4) == 0, "%s", url);
		snprintf(plain, sizeof(plain), "%s", url + 4);
		CHECK(sp_nng_dial(s, plain) == SP_OK, "dial %s", plain);
	} else if (id.kind == ID_NONE) {
		/* The probe does not check the server either: only the server's refusal counts. */
		nng_tls_config *cfg;
		nng_dialer d;
		CHECK(nng_tls_config_alloc(&cfg, NNG_TLS_MODE_CLIENT) == 0, "tls config");
		CHECK(nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_NONE) == 0, "auth mode");
		CHECK(nng_dialer_create(&d, s, url) == 0, "dialer");
		CHECK(nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, cfg) == 0, "dialer tls");
		CHECK(nng_dialer_start(d, NNG_FLAG_NONBLOCK) == 0, "dial");
		nng_tls_config_free(cfg);
	} else {
		sp_nng_tls tls = { cert(id.member, "pem"), cert(id.member, "key"),
			cert("root-ca", "pem"), NULL };
		CHECK(sp_nng_tls_init(&tls) == SP_OK, "tls init %s", id.member);
		CHECK(sp_nng_dial(s, url) == SP_OK, "dial %s", url);
	}
	return s;
}

static void
probe_close(nng_socket s)
{
	nng_close(s);
	sp_nng_tls_fini();
}

/* One request as `id`, waiting up to `ms`: the reply's type in *type (0 when none),
 * the call's code. */
static int
probe_call(ident id, const char *url, const sp_frame *req, unsigned *type, int ms)
{
	nng_socket s = probe_open(id, url, false, ms);
	nng_msg *m = NULL;
	sp_frame rep;
	int rc = sp_nng_call(s, req, &m, &rep);
	*type = 0;
	if (m) {
		*type = rep.type;
		sp_frame_fini(&rep);
		nng_msg_free(m);
	}
	probe_close(s);
	return rc;
}

/* A request that must get no answer: the transport fails (the handshake did). */
static void
refused_call(ident id, const char *url, const sp_frame *req, const char *what)
{
	unsigned type;
	int rc = probe_call(id, url, req, &type, PROBE_MS);
	CHECK(type == 0 && (rc == SP_ETIMEDOUT || rc == SP_ECLOSED),
	    "%s as %s on %s: %s (reply type %u)", what, ident_name(id), url, sp_strerror(rc), type);
	printf("ok: %s as %s on %s: no answer (%s)\n", what, ident_name(id), url, sp_strerror(rc));
	checks++;
}

/* Pushes one PING (a frame the pull socket reads and drops, counting it) as `id`, and
 * gives the push time to leave before the socket closes. */
static void
push_ping(ident id, const char *url)
{
	nng_socket s = probe_open(id, url, true, PROBE_MS);
	sp_frame f;
	sp_frame_init(&f, SP_T_PING, 0, false);
	nng_msg *m;
	CHECK(sp_nng_msg_from_frame(&f, &m) == SP_OK, "ping frame");
	if (nng_sendmsg(s, m, 0) != 0)
		nng_msg_free(m);
	usleep(PROBE_MS * 1000);
	probe_close(s);
}

/* connsrv's count of pull-socket frames it read and did not act on. */
static long
pull_dropped(int metrics_port)
{
	char cmd[160], line[256];
	snprintf(cmd, sizeof(cmd), "curl -sf -m 3 http://127.0.0.1:%d/metrics", metrics_port);
	FILE *p = popen(cmd, "r");
	CHECK(p, "popen curl");
	long v = -1;
	while (fgets(line, sizeof(line), p))
		if (strncmp(line, "sp_connsrv_peer_frames_dropped_total ", 37) == 0)
			v = strtol(line + 37, NULL, 10);
	pclose(p);
	CHECK(v >= 0, "no sp_connsrv_peer_frames_dropped_total on port %d", metrics_port);
	return v;
}

/* ---- keysrv replication ---- */

static void
keysrv_copies(void)
{
	char url[2][64], repl[2][64], data[2][160];
	CHECK(etcd_proc_start(&E) == 0, "etcd");
	for (int i = 0; i < 2; i++) {
		snprintf(url[i], sizeof(url[i]), "tls+tcp://127.0.0.1:%d", test_free_port());
		snprintf(repl[i], sizeof(repl[i]), "tls+tcp://127.0.0.1:%d", test_free_port());
		snprintf(data[i], sizeof(data[i]), "%s/%s", dir, K[i].name);
		char *argv[] = { (char *)bin("keysrv"), "--data-dir", data[i], "--listen", url[i],
			"--metrics-port", "-1", "--name", (char *)K[i].name, "--etcd", E.endpoint,
			"--repl-listen", repl[i], "--min-copies", "2", "--internal-cert",
			(char *)cert(K[i].name, "pem"), "--internal-key", (char *)cert(K[i].name, "key"),
			"--internal-ca", (char *)cert("keysrv-dial", "pem"), "--internal-client-ca",
			(char *)cert("connsrv-ca", "pem"), "--repl-peer-ca",
			(char *)cert("keysrv-ca", "pem"), NULL };
		spawn(&K[i], argv);
	}
	/* A write on the primary needs the replica's fetch over TLS. */
	const ident conn_id = { ID_CERT, "connsrv-0" };
	int primary = -1;
	uint64_t deadline = sp_mono_ns() + 30000000000ULL;
	for (int attempt = 0; primary < 0; attempt++) {
		CHECK(sp_mono_ns() < deadline, "no keysrv copy answered a write in 30 s; see %s, %s",
		    K[0].log, K[1].log);
		for (int i = 0; i < 2 && primary < 0; i++) {
			char phone[32];
			snprintf(phone, sizeof(phone), "+1555100%04d", attempt * 2 + i);
			sp_frame reg;
			sp_frame_init(&reg, SP_T_REGISTER, 5, true);
			sp_frame_set_str(&reg, SP_F_PHONE, phone);
			unsigned type;
			if (probe_call(conn_id, url[i], &reg, &type, PROBE_MS) == SP_OK
			    && type == SP_T_REGISTERED)
				primary = i;
		}
		if (primary < 0)
			usleep(300000);
	}
	printf("ok: keysrv copies replicate over tls+tcp:// (%s primary)\n", K[primary].name);
	checks++;
	sp_frame get;
	uint8_t id[16] = { 5 };
	sp_frame_init(&get, SP_T_REPL_SNAP_GET, 6, true);
	sp_frame_set_str(&get, SP_F_NAME, "intruder");
	sp_frame_set_bin(&get, SP_F_SNAP_ID, id, sizeof(id));
	sp_frame_set_u64(&get, SP_F_OFFSET, 0);
	refused_call(conn_id, repl[primary], &get, "REPL_SNAP_GET");
	const ident none = { ID_NONE, NULL };
	refused_call(none, repl[primary], &get, "REPL_SNAP_GET");
}

/* ---- the start-up check ---- */

/* Runs `cmd` (output to `log`), which must exit with a failure status (not a signal) at
 * once and log `text`. */
static void
refused_start(const char *what, const char *cmd, const char *log, const char *text)
{
	char full[2048];
	snprintf(full, sizeof(full), "timeout 20 %s >%s 2>&1", cmd, log);
	int st = system(full);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 124,
	    "%s: exit status %d; see %s", what, WIFEXITED(st) ? WEXITSTATUS(st) : -1, log);
	CHECK(file_has(log, text), "%s: no '%s' in %s", what, text, log);
	printf("ok: %s refused to start\n", what);
	checks++;
}

static void
startup_checks(int conn_port)
{
	char cmd[1024], log[160], data[160];
	const char *plain = "is a plain internal link";
	int port = test_free_port();

	snprintf(log, sizeof(log), "%s/refuse-router.log", dir);
	snprintf(cmd, sizeof(cmd),
	    "%s --cluster-file %s/cluster.ini --state-file %s/r2.state --http-port 0 --listen "
	    "tcp://127.0.0.1:%d --publish tls+tcp://127.0.0.1:%d %s",
	    bin("router"), dir, dir, port, test_free_port(), "--internal-cert x");
	/* --internal-cert alone: the identity's files go together. */
	refused_start("router with half an identity", cmd, log, "go together");
	snprintf(cmd, sizeof(cmd),
	    "%s --cluster-file %s/cluster.ini --state-file %s/r2.state --http-port 0 --listen "
	    "tcp://127.0.0.1:%d --publish tls+tcp://127.0.0.1:%d",
	    bin("router"), dir, dir, port, test_free_port());
	/* A TLS URL with no identity, and a plain one. */
	refused_start("router with tcp:// --listen", cmd, log, plain);
	snprintf(cmd, sizeof(cmd),
	    "%s --cluster-file %s/cluster.ini --state-file %s/r2.state --http-port 0 --listen "
	    "tls+tcp://127.0.0.1:%d --publish tls+tcp://127.0.0.1:%d",
	    bin("router"), dir, dir, port, test_free_port());
	refused_start("router with tls+tcp:// and no certificate", cmd, log, "no identity");

	snprintf(log, sizeof(log), "%s/refuse-keysrv.log", dir);
	snprintf(data, sizeof(data), "%s/keysrv2", dir);
	snprintf(cmd, sizeof(cmd), "%s --data-dir %s --listen tcp://127.0.0.1:%d --metrics-port -1",
	    bin("keysrv"), data, port);
	refused_start("keysrv with tcp:// --listen", cmd, log, plain);

	snprintf(log, sizeof(log), "%s/refuse-inboxsrv.log", dir);
	snprintf(data, sizeof(data), "%s/inbox2", dir);
	/* The listener is TLS; the router it would heartbeat is not. */
	snprintf(cmd, sizeof(cmd),
	    "%s --data-dir %s --map-size 64M --listen tls+tcp://127.0.0.1:%d --name inbox-0 "
	    "--router tcp://127.0.0.1:%d --router-pub tcp://127.0.0.1:%d --internal-cert %s "
	    "--internal-key %s --internal-ca %s",
	    bin("inboxsrv"), data, port, test_free_port(), test_free_port(), cert("inbox-0", "pem"),
	    cert("inbox-0", "key"), cert("inbox-dial", "pem"));
	refused_start("inboxsrv with a tcp:// --router", cmd, log, plain);

	snprintf(log, sizeof(log), "%s/refuse-connsrv.log", dir);
	snprintf(cmd, sizeof(cmd),
	    "%s --listen 127.0.0.1:%d --cert %s --key %s --pull tcp://127.0.0.1:%d --router "
	    "tls+tcp://127.0.0.1:%d --router-pub tls+tcp://127.0.0.1:%d --internal-cert %s "
	    "--internal-key %s --internal-ca %s",
	    bin("connsrv"), conn_port, cert("edge", "pem"), cert("edge", "key"), port,
	    test_free_port(), test_free_port(), cert("connsrv-0", "pem"), cert("connsrv-0", "key"),
	    cert("servers", "pem"));
	refused_start("connsrv with a tcp:// --pull", cmd, log, plain);

	/* With --insecure-internal: it starts, and warns. */
	proc k = { "keysrv-insecure", 0, "" };
	char url[64], otp[160];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	snprintf(data, sizeof(data), "%s/keysrv2", dir);
	snprintf(otp, sizeof(otp), "%s/keysrv2/otp", dir);
	char *argv[] = { (char *)bin("keysrv"), "--data-dir", data, "--listen", url,
		"--metrics-port", "-1", "--otp-dir", otp, "--insecure-internal", NULL };
	spawn(&k, argv);
	wait_log(&k, "keysrv ready");
	CHECK(file_has(k.log, "--insecure-internal: links between servers may be plain tcp://"),
	    "no warning in %s", k.log);
	kill(k.pid, SIGTERM);
	int st;
	CHECK(waitpid(k.pid, &st, 0) == k.pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
	    "keysrv --insecure-internal did not stop cleanly");
	printf("ok: keysrv with tcp:// and --insecure-internal started and warned\n");
	checks++;
}

/* ---- the cluster ---- */

static void
make_certs(void)
{
	char cmd[2048];
	snprintf(certs, sizeof(certs), "%s/certs", dir);
	/* Role CAs; one member each; bundles of the role CAs each end trusts. The client
	 * listener's certificate comes from a CA of its own, as in a real deployment. */
	snprintf(cmd, sizeof(cmd),
	    "set -e; t='%s/scripts/certs.sh'; d='%s'; $t $d root; "
	    "for r in router keysrv inbox connsrv; do $t $d role $r; done; "
	    "$t $d member router router; $t $d member keysrv keysrv; "
	    "$t $d member inbox inbox-0; $t $d member connsrv connsrv-0; "
	    "$t $d member keysrv keys-a; $t $d member keysrv keys-b; "
	    "$t $d bundle members connsrv inbox keysrv; $t $d bundle servers router keysrv inbox "
	    "connsrv; $t $d bundle keysrv-dial router keysrv; $t $d bundle inbox-dial router inbox; "
	    "$t $d bundle connsrv-inbox connsrv inbox; "
	    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
	    "-subj '/CN=test client CA' -keyout $d/edge-ca.key -out $d/edge-ca.pem 2>/dev/null; "
	    "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost "
	    "-keyout $d/edge.key -out $d/edge.csr 2>/dev/null; "
	    "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' >$d/edge.ext; "
	    "openssl x509 -req -in $d/edge.csr -CA $d/edge-ca.pem -CAkey $d/edge-ca.key "
	    "-CAcreateserial -days 2 -extfile $d/edge.ext -out $d/edge.pem 2>/dev/null",
	    getenv("SP_ROOT") ? getenv("SP_ROOT") : ".", certs);
	CHECK(system(cmd) == 0, "certificates");
}

int
main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "/tmp/sp-mtls-XXXXXX");
	CHECK(mkdtemp(dir), "mkdtemp");
	atexit(cleanup);
	make_certs();

	int p_redis = test_free_port(), p_rep = test_free_port(), p_pub = test_free_port();
	int p_keys = test_free_port(), p_inbox = test_free_port(), p_pull = test_free_port();
	int p_client = test_free_port(), p_metrics = test_free_port();
	char u_rep[64], u_pub[64], u_keys[64], u_inbox[64], u_pull[64];
	snprintf(u_rep, sizeof(u_rep), "tls+tcp://127.0.0.1:%d", p_rep);
	snprintf(u_pub, sizeof(u_pub), "tls+tcp://127.0.0.1:%d", p_pub);
	snprintf(u_keys, sizeof(u_keys), "tls+tcp://127.0.0.1:%d", p_keys);
	snprintf(u_inbox, sizeof(u_inbox), "tls+tcp://127.0.0.1:%d", p_inbox);
	snprintf(u_pull, sizeof(u_pull), "tls+tcp://127.0.0.1:%d", p_pull);

	char path[256];
	snprintf(path, sizeof(path), "%s/cluster.ini", dir);
	FILE *f = fopen(path, "w");
	CHECK(f, "cluster.ini");
	fprintf(f,
	    "[keysrv]\nrole = keysrv\naddr = %s\n[inbox-0]\nrole = inbox\naddr = %s\nshard = 0\n"
	    "[connsrv-0]\nrole = connsrv\naddr = %s\nclient = 127.0.0.1:%d\n",
	    u_keys, u_inbox, u_pull, p_client);
	fclose(f);

	char s_redis[16], s_client[32], s_metrics[16], d_keys[160], d_inbox[160], state[160];
	snprintf(s_redis, sizeof(s_redis), "%d", p_redis);
	snprintf(s_client, sizeof(s_client), "127.0.0.1:%d", p_client);
	snprintf(s_metrics, sizeof(s_metrics), "%d", p_metrics);
	snprintf(d_keys, sizeof(d_keys), "%s/keysrv", dir);
	snprintf(d_inbox, sizeof(d_inbox), "%s/inbox-0", dir);
	snprintf(state, sizeof(state), "%s/router.state", dir);
	char redis_addr[32];
	snprintf(redis_addr, sizeof(redis_addr), "127.0.0.1:%d", p_redis);

	char *redis[] = { "redis-server", "--port", s_redis, "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", dir, NULL };
	spawn(&P[P_REDIS], redis);
	/* The router serves the three member roles; it dials nobody. */
	char *router[] = { (char *)bin("router"), "--cluster-file", path, "--state-file", state,
		"--listen", u_rep, "--publish", u_pub, "--http-port", "0", "--internal-cert",
		(char *)cert("router", "pem"), "--internal-key", (char *)cert("router", "key"),
		"--internal-ca", (char *)cert("members", "pem"), NULL };
	spawn(&P[P_ROUTER], router);
	/* keysrv answers connsrv only; it dials the router. */
	char *keysrv[] = { (char *)bin("keysrv"), "--data-dir", d_keys, "--listen", u_keys,
		"--metrics-port", "-1", "--name", "keysrv", "--router", u_rep, "--router-pub", u_pub,
		"--internal-cert", (char *)cert("keysrv", "pem"), "--internal-key",
		(char *)cert("keysrv", "key"), "--internal-ca", (char *)cert("keysrv-dial", "pem"),
		"--internal-client-ca", (char *)cert("connsrv-ca", "pem"), NULL };
	spawn(&P[P_KEYSRV], keysrv);
	/* The inbox answers connsrv and its shard's copies; it dials the router. */
	char *inbox[] = { (char *)bin("inboxsrv"), "--data-dir", d_inbox, "--listen", u_inbox,
		"--map-size", "256M", "--shard", "0", "--name", "inbox-0", "--router", u_rep,
		"--router-pub", u_pub, "--internal-cert", (char *)cert("inbox-0", "pem"),
		"--internal-key", (char *)cert("inbox-0", "key"), "--internal-ca",
		(char *)cert("inbox-dial", "pem"), "--internal-client-ca",
		(char *)cert("connsrv-inbox", "pem"), NULL };
	spawn(&P[P_INBOX], inbox);
	/* connsrv's pull socket answers connsrv and inbox; it dials every role. */
	char *connsrv[] = { (char *)bin("connsrv"), "--name", "connsrv-0", "--listen", s_client,
		"--cert", (char *)cert("edge", "pem"), "--key", (char *)cert("edge", "key"), "--pull",
		u_pull, "--redis", redis_addr, "--router", u_rep, "--router-pub", u_pub,
		"--metrics-port", s_metrics, "--internal-cert", (char *)cert("connsrv-0", "pem"),
		"--internal-key", (char *)cert("connsrv-0", "key"), "--internal-ca",
		(char *)cert("servers", "pem"), "--internal-client-ca",
		(char *)cert("connsrv-inbox", "pem"), NULL };
	wait_log(&P[P_ROUTER], "router up");
	wait_log(&P[P_KEYSRV], "keysrv ready");
	wait_log(&P[P_INBOX], "listening on");
	spawn(&P[P_CONNSRV], connsrv);
	wait_log(&P[P_CONNSRV], "listening on");

	/* A client registers and sends through the TLS cluster. */
	itest_cluster cl;
	memset(&cl, 0, sizeof(cl));
	snprintf(cl.dir, sizeof(cl.dir), "%s", dir);
	snprintf(cl.ca, sizeof(cl.ca), "%s", cert("edge-ca", "pem"));
	snprintf(cl.otp_dir, sizeof(cl.otp_dir), "%s/otp", d_keys);
	cl.conn_port[0] = p_client;
	itest_user a, b;
	itest_register(&cl, 0, &a, "+15550001001");
	itest_register(&cl, 0, &b, "+15550001002");
	CHECK(itest_login(&cl, 0, &a) == SP_OK, "login a");
	CHECK(itest_login(&cl, 0, &b) == SP_OK, "login b");
	sp_frame fr;
	CHECK(itest_wait(&b, SP_T_QUEUE_EMPTY, 10000, &fr) == SP_OK, "b's drain");
	sp_frame_fini(&fr);
	uint8_t id[16], id2[16];
	itest_msg_id(id);
	CHECK(itest_send(&a, b.user, &b.device, 1, id, "over tls", 8) == SP_OK, "send");
	CHECK(itest_wait(&b, SP_T_DELIVER, 10000, &fr) == SP_OK, "deliver");
	CHECK(memcmp(sp_frame_bin(&fr, SP_F_MSG_ID).p, id, 16) == 0, "the message sent");
	uint64_t seq = sp_frame_u64(&fr, SP_F_SEQ);
	sp_frame_fini(&fr);
	CHECK(itest_ack(&b, seq) == SP_OK, "ack");
	itest_logout(&b);
	printf("ok: register, login, send and deliver over tls+tcp:// links\n");
	checks++;
	/* One more for b while it is away: it waits in the inbox. */
	itest_msg_id(id2);
	CHECK(itest_send(&a, b.user, &b.device, 1, id2, "queued", 6) == SP_OK, "send 2");
	itest_logout(&a);

	const ident router_id = { ID_CERT, "router" }, inbox_id = { ID_CERT, "inbox-0" };
	const ident keysrv_id = { ID_CERT, "keysrv" }, conn_id = { ID_CERT, "connsrv-0" };
	const ident none = { ID_NONE, NULL }, plain = { ID_PLAIN, NULL };
	const ident bad_for_inbox[] = { router_id, keysrv_id, none, plain };
	unsigned type;
	int rc;

	/* The inbox request socket: forged FETCH and PURGE of b's queue. */
	sp_frame fetch, purge;
	sp_frame_init(&fetch, SP_T_FETCH, 1, true);
	sp_frame_set_u64(&fetch, SP_F_DEVICE, b.device);
	sp_frame_set_u64(&fetch, SP_F_AFTER_SEQ, seq);
	sp_frame_init(&purge, SP_T_PURGE, 2, true);
	sp_frame_set_u64(&purge, SP_F_DEVICE, b.device);
	for (size_t i = 0; i < sizeof(bad_for_inbox) / sizeof(bad_for_inbox[0]); i++) {
		refused_call(bad_for_inbox[i], u_inbox, &fetch, "FETCH");
		refused_call(bad_for_inbox[i], u_inbox, &purge, "PURGE");
	}
	/* The same FETCH as connsrv: the entry is there. */
	rc = probe_call(conn_id, u_inbox, &fetch, &type, ANSWER_MS);
	CHECK(rc == SP_OK && type == SP_T_ENTRIES_R, "FETCH as connsrv: %s, type %u", sp_strerror(rc),
	    type);
	printf("ok: FETCH as connsrv-0 answered\n");
	checks++;

	/* keysrv: a forged REGISTER sends no code. */
	sp_frame reg;
	char otp[256];
	sp_frame_init(&reg, SP_T_REGISTER, 3, true);
	sp_frame_set_str(&reg, SP_F_PHONE, "+15550001003");
	snprintf(otp, sizeof(otp), "%.200s/+15550001003", cl.otp_dir);
	refused_call(inbox_id, u_keys, &reg, "REGISTER");
	refused_call(router_id, u_keys, &reg, "REGISTER");
	refused_call(none, u_keys, &reg, "REGISTER");
	refused_call(plain, u_keys, &reg, "REGISTER");
	CHECK(access(otp, F_OK) != 0, "a code was sent for a forged REGISTER");
	rc = probe_call(conn_id, u_keys, &reg, &type, ANSWER_MS);
	CHECK(rc == SP_OK && type == SP_T_REGISTERED, "REGISTER as connsrv: %s, type %u", sp_strerror(rc),
	    type);
	CHECK(access(otp, F_OK) == 0, "no code after REGISTER as connsrv");
	printf("ok: REGISTER as connsrv-0 answered\n");
	checks++;

	/* The router: members only. */
	sp_frame mapget;
	sp_frame_init(&mapget, SP_T_MAP_GET, 4, true);
	refused_call(router_id, u_rep, &mapget, "MAP_GET");
	refused_call(none, u_rep, &mapget, "MAP_GET");
	refused_call(plain, u_rep, &mapget, "MAP_GET");
	rc = probe_call(keysrv_id, u_rep, &mapget, &type, ANSWER_MS);
	CHECK(rc == SP_OK && type == SP_T_MAP, "MAP_GET as keysrv: %s, type %u", sp_strerror(rc),
	    type);
	printf("ok: MAP_GET as keysrv answered\n");
	checks++;

	/* connsrv's pull socket: nothing pushed by another role is read. */
	const ident bad_for_pull[] = { router_id, keysrv_id, none, plain };
	long before = pull_dropped(p_metrics);
	for (size_t i = 0; i < sizeof(bad_for_pull) / sizeof(bad_for_pull[0]); i++) {
		push_ping(bad_for_pull[i], u_pull);
		CHECK(pull_dropped(p_metrics) == before, "a push as %s was read",
		    ident_name(bad_for_pull[i]));
		printf("ok: push as %s to %s not read\n", ident_name(bad_for_pull[i]), u_pull);
		checks++;
	}
	push_ping(inbox_id, u_pull);
	uint64_t deadline = sp_mono_ns() + 5000000000ULL;
	while (pull_dropped(p_metrics) == before && sp_mono_ns() < deadline)
		usleep(100000);
	CHECK(pull_dropped(p_metrics) == before + 1, "the push as inbox-0 was not read");
	printf("ok: push as inbox-0 read\n");
	checks++;

	/* b's queue is intact: the queued message arrives. */
	CHECK(itest_login(&cl, 0, &b) == SP_OK, "login b again");
	CHECK(itest_wait(&b, SP_T_DELIVER, 10000, &fr) == SP_OK, "queued deliver");
	CHECK(memcmp(sp_frame_bin(&fr, SP_F_MSG_ID).p, id2, 16) == 0, "the queued message");
	sp_frame_fini(&fr);
	itest_logout(&b);
	printf("ok: the queue survived the forged PURGEs\n");
	checks++;

	keysrv_copies();
	startup_checks(test_free_port());
	printf("%d passed, 0 failed\n", checks);
	return 0;
}
