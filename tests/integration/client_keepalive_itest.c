/*
 * The client's connection stays up (docs/CLIENT.md, "Keepalive"), on a private cluster
 * whose connsrvs close a connection after 3 s without a frame from the client
 * (SEALPOST_CONNSRV_IDLE_TIMEOUT=3000, instead of 180 s):
 *   - `sealpost listen` with SEALPOST_PING_MS=1000 stays on one connection for 20 s
 *     (its "connected" lines say reconnects 0), though messages come 7 s apart, and
 *     every message sent meanwhile arrives; its connsrv counted the PINGs;
 *   - the control: with pings off (SEALPOST_PING_MS=-1) the server does cut the same
 *     listener within 8 s, and it reconnects;
 *   - a dead server: the listener's connsrv is SIGSTOPped (TCP still accepts, nothing
 *     answers); the missing PONG is noticed within a bound and the listener moves to the
 *     other connsrv, where a new message reaches it.
 */
#include "client_util.h"
#include "sp_error.h"
#include "sp_time.h"

static char alice[32], bob[32];

#define PING_ENV "SEALPOST_PING_MS=1000 SEALPOST_PONG_TIMEOUT_MS=2000"

/* A counter of connsrv `which`'s /metrics (-1 when it does not answer). */
static long long
connsrv_metric(int which, const char *name)
{
	char cmd[512], line[512];
	snprintf(cmd, sizeof(cmd), "curl -sf --max-time 3 http://127.0.0.1:%d/metrics", ct_cluster.base + 80 + 10 * which);
	FILE *p = popen(cmd, "r");
	CHECK(p != NULL);
	long long v = -1;
	size_t nl = strlen(name);
	while (fgets(line, sizeof(line), p)) {
		if (v < 0 && strncmp(line, name, nl) == 0 && line[nl] == ' ')
			v = atoll(line + nl + 1);
	}
	pclose(p);
	return v < 0 ? 0 : v; /* a counter not made yet is 0 */
}

/* Waits (up to ms) until <outname> holds at least n "connected" lines; returns them. */
static int
wait_connected(const char *outname, int n, int ms, char *out, size_t cap)
{
	int got = 0;
	for (int waited = 0;; waited += 100) {
		ct_read_out(outname, out, cap);
		got = ct_count(out, "type", "connected");
		if (got >= n || waited >= ms)
			return got;
		usleep(100000);
	}
}

/* Waits (up to ms) until <outname> holds a message with this text. */
static bool
wait_text(const char *outname, const char *text, int ms)
{
	static char out[65536];
	for (int waited = 0;; waited += 100) {
		ct_read_out(outname, out, sizeof(out));
		if (ct_count(out, "text", text) > 0)
			return true;
		if (waited >= ms)
			return false;
		usleep(100000);
	}
}

/* Stops a listener and shows what it wrote on stderr (the sanitizers report there). */
static void
stop_listener(pid_t pid, const char *outname)
{
	static char err[65536];
	char name[128];
	ct_stop(pid);
	snprintf(name, sizeof(name), "%s.err", outname);
	ct_read_out(name, err, sizeof(err));
	if (err[0])
		printf("%s stderr:\n%s", outname, err);
	CHECK(strstr(err, "Sanitizer") == NULL && strstr(err, "runtime error") == NULL);
}

/* Which connsrv (0 or 1) a "host:port" names. */
static int
connsrv_of(const char *server)
{
	const char *colon = strrchr(server, ':');
	int port = colon ? atoi(colon + 1) : 0;
	CHECK(port == ct_cluster.conn_port[0] || port == ct_cluster.conn_port[1]);
	return port == ct_cluster.conn_port[0] ? 0 : 1;
}

static void
test_stays_up(void)
{
	char out[65536], b[256];
	/* Everything on connsrv-0: the listener's PINGs are counted there. */
	char args[128];
	snprintf(args, sizeof(args), "--server 127.0.0.1:%d listen", ct_cluster.conn_port[0]);
	long long pings0 = connsrv_metric(0, "sp_connsrv_frames_in_by_type_total{type=\"PING\"}");
	pid_t l = ct_spawn("bob", "listen-up.out", PING_ENV, args);
	CHECK(wait_connected("listen-up.out", 1, 15000, out, sizeof(out)) == 1);
	uint64_t t0 = sp_time_ms();
	/* Messages 7 s apart (more than twice the idle timeout): only the PINGs keep the
	 * connection; the senders use the other connsrv. */
	for (int i = 1; i <= 3; i++) {
		while (sp_time_ms() < t0 + (uint64_t)(i - 1) * 7000 + 1000)
			usleep(100000);
		CHECK(ct_run("alice", out, sizeof(out), "--server 127.0.0.1:%d send +15550702 'kept %d'",
			     ct_cluster.conn_port[1], i) == 0);
		snprintf(b, sizeof(b), "kept %d", i);
		CHECK(wait_text("listen-up.out", b, 10000));
	}
	while (sp_time_ms() < t0 + 20000)
		usleep(100000);
	ct_read_out("listen-up.out", out, sizeof(out));
	CHECK(kill(l, 0) == 0); /* still running */
	stop_listener(l, "listen-up.out");
	printf("listener output after %llu ms:\n%s", (unsigned long long)(sp_time_ms() - t0), out);
	CHECK(ct_count(out, "type", "connected") == 1);
	json_t *j = ct_line(out, 0);
	CHECK(j && json_integer_value(json_object_get(j, "reconnects")) == 0);
	json_decref(j);
	for (int i = 1; i <= 3; i++) {
		snprintf(b, sizeof(b), "kept %d", i);
		CHECK(ct_count(out, "text", b) == 1);
	}
	long long pings = connsrv_metric(0, "sp_connsrv_frames_in_by_type_total{type=\"PING\"}") - pings0;
	printf("PINGs counted by connsrv-0: %lld\n", pings);
	CHECK(pings >= 10); /* one a second, less the jitter */
}

/* Without PINGs the same listener is cut by the idle timeout: the test above measures
 * something. */
static void
test_control_without_pings(void)
{
	char out[65536], args[128];
	snprintf(args, sizeof(args), "--server 127.0.0.1:%d listen", ct_cluster.conn_port[0]);
	pid_t l = ct_spawn("bob", "listen-noping.out", "SEALPOST_PING_MS=-1", args);
	int n = wait_connected("listen-noping.out", 2, 15000, out, sizeof(out));
	stop_listener(l, "listen-noping.out");
	printf("listener without pings:\n%s", out);
	CHECK(n >= 2);
	json_t *j = ct_line(out, 1);
	CHECK(j && json_integer_value(json_object_get(j, "reconnects")) == 1);
	CHECK(json_string_value(json_object_get(j, "after")) != NULL);
	json_decref(j);
}

static void
test_dead_server(void)
{
	char out[65536], srv[64];
	/* Through the routers, like a real client: they name both connsrvs. */
	pid_t l = ct_spawn("bob", "listen-dead.out", PING_ENV, "listen");
	CHECK(wait_connected("listen-dead.out", 1, 20000, out, sizeof(out)) == 1);
	int first = connsrv_of(ct_str(out, 0, "server", srv, sizeof(srv)));
	/* Let it ping once on the first connection. */
	sleep(2);
	char name[32];
	snprintf(name, sizeof(name), "connsrv-%d", first);
	uint64_t t0 = sp_time_ms();
	itest_signal(&ct_cluster, name, SIGSTOP);
	/* The bound: a PING interval, the PONG timeout, a backoff, one TLS handshake with the
	 * stopped server (5 s) and the login on the other one; generous for a slow machine. */
	int n = wait_connected("listen-dead.out", 2, 40000, out, sizeof(out));
	uint64_t took = sp_time_ms() - t0;
	/* Back at once: the listener has moved (or failed to), and the teardown needs it. */
	itest_signal(&ct_cluster, name, SIGCONT);
	printf("listener after SIGSTOP of %s (%llu ms):\n%s", name, (unsigned long long)took, out);
	CHECK(n >= 2);
	json_t *j = ct_line(out, 1);
	CHECK(j != NULL);
	CHECK(json_integer_value(json_object_get(j, "reconnects")) == 1);
	const char *after = json_string_value(json_object_get(j, "after"));
	CHECK(after && strstr(after, "no PONG"));
	CHECK(connsrv_of(json_string_value(json_object_get(j, "server"))) == 1 - first);
	json_decref(j);
	/* A message reaches it on the other connsrv. */
	CHECK(ct_run("alice", out, sizeof(out), "--server 127.0.0.1:%d send +15550702 'after the stop'",
		     ct_cluster.conn_port[1 - first]) == 0);
	bool got = wait_text("listen-dead.out", "after the stop", 15000);
	stop_listener(l, "listen-dead.out");
	CHECK(got);
}

int
main(void)
{
	uint64_t t0 = sp_time_ms();
	/* connsrv reads SEALPOST_CONNSRV_<OPTION> (common/sp_config.c). */
	setenv("SEALPOST_CONNSRV_IDLE_TIMEOUT", "3000", 1);
	ct_start();
	ct_register("alice", "+15550701", alice, sizeof(alice));
	ct_register("bob", "+15550702", bob, sizeof(bob));
	char out[4096];
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550701 %s", alice) == 0);
	test_stays_up();
	test_control_without_pings();
	test_dead_server();
	ct_down();
	printf("client_keepalive_itest: all passed in %llu ms\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
