/*
 * Push wake-ups (docs/PUSH.md) on a private dev cluster with one pushsrv, against a local
 * HTTPS gateway (tests/integration/push_gateway.py, certificate from a test CA made here):
 *   - a device with an FCM-shaped token, offline, gets one wake-up after --push-delay for
 *     two messages, with no message content in it; a third message inside the period
 *     brings none;
 *   - a device that logs in (and out) before the delay gets none (the login cancelled it);
 *   - an APNs-shaped token is POSTed to <url>/3/device/<token> as a background push;
 *   - a gateway answering 500 twice is retried until it answers 200 (three POSTs);
 *   - a token the gateway calls dead (404, or UNREGISTERED in a 400 body) is dropped in
 *     keysrv: the next wake-up for that device finds no token and POSTs nothing;
 *   - `sealpost push register --platform apns TOKEN` registers a token that gets woken.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client_util.h"
#include "sp_error.h"
#include "sp_time.h"

#define DELAY_MS 2500

static pid_t gateway = -1;
static char tmp[64] = "/tmp/sp-push-XXXXXX", logfile[128];

/* Runs after ct_down (registered before it): the cluster is stopped first. */
static void
down(void)
{
	if (gateway > 0) {
		kill(gateway, SIGTERM);
		waitpid(gateway, NULL, 0);
		gateway = -1;
	}
	if (!getenv("SP_KEEP_CLUSTER")) {
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", tmp);
		if (system(cmd) != 0)
			fprintf(stderr, "push_itest: could not remove %s\n", tmp);
	}
}

static void
run(const char *cmd)
{
	if (system(cmd) != 0) {
		fprintf(stderr, "push_itest: failed: %s\n", cmd);
		exit(99);
	}
}

/* A test CA and a certificate for 127.0.0.1 it signs, then the gateway on a free port. */
static int
start_gateway(void)
{
	char cmd[2048], portfile[128];
	snprintf(cmd, sizeof(cmd),
		 "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
		 "-days 2 -subj /CN=push-test-ca -keyout ca.key -out ca.pem 2>/dev/null && "
		 "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=gw "
		 "-keyout gw.key -out gw.csr 2>/dev/null && "
		 "printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && "
		 "openssl x509 -req -in gw.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
		 "-extfile san.ext -out gw.pem 2>/dev/null",
		 tmp);
	run(cmd);
	snprintf(portfile, sizeof(portfile), "%s/port", tmp);
	snprintf(logfile, sizeof(logfile), "%s/gateway.log", tmp);
	char cert[128], key[128];
	snprintf(cert, sizeof(cert), "%s/gw.pem", tmp);
	snprintf(key, sizeof(key), "%s/gw.key", tmp);
	const char *root = getenv("SP_ROOT") ? getenv("SP_ROOT") : ".";
	char script[256];
	snprintf(script, sizeof(script), "%s/tests/integration/push_gateway.py", root);
	gateway = fork();
	CHECK(gateway >= 0);
	if (gateway == 0) {
		execlp("python3", "python3", script, cert, key, portfile, logfile, (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 100; i++) {
		FILE *f = fopen(portfile, "r");
		int port = 0;
		if (f) {
			if (fscanf(f, "%d", &port) != 1)
				port = 0;
			fclose(f);
		}
		if (port > 0)
			return port;
		usleep(100 * 1000);
	}
	fprintf(stderr, "push_itest: the gateway did not start\n");
	exit(99);
}

/* Lines of the gateway log containing `needle` (and `also`, when not NULL). */
static int
count_lines(const char *needle, const char *also)
{
	char line[4096];
	int n = 0;
	FILE *f = fopen(logfile, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, needle) && (!also || strstr(line, also)))
			n++;
	fclose(f);
	return n;
}

/* Waits up to ms for count_lines(needle, also) to reach want; returns the count. */
static int
wait_lines(const char *needle, const char *also, int want, int ms)
{
	uint64_t t0 = sp_time_ms();
	int n;
	while ((n = count_lines(needle, also)) < want && sp_time_ms() - t0 < (uint64_t)ms)
		usleep(100 * 1000);
	return n;
}

static int
push_register(itest_user *u, const char *platform, const char *token)
{
	sp_frame q, r;
	sp_frame_init(&q, SP_T_PUSH_REGISTER, 77, true);
	sp_frame_set_str(&q, SP_F_PUSH_PLATFORM, platform);
	sp_frame_set_str(&q, SP_F_PUSH_TOKEN, token);
	int rc = spc_conn_send(u->conn, &q);
	while (rc == SP_OK && (rc = spc_conn_recv(u->conn, 10000, &r)) == SP_OK) {
		bool done = r.has_id && r.id == 77;
		if (done)
			rc = r.type == SP_T_OK ? SP_OK : r.type == SP_T_ERROR ? (int)sp_frame_i64(&r, SP_F_CODE) : SP_EPROTO;
		sp_frame_fini(&r);
		if (done)
			break;
	}
	return rc;
}

/* A new account whose device registers (platform, token) and goes offline. */
static void
offline_device(itest_user *u, const char *phone, const char *platform, const char *token)
{
	itest_register(&ct_cluster, 0, u, phone);
	CHECK(itest_login(&ct_cluster, 0, u) == SP_OK);
	CHECK(push_register(u, platform, token) == SP_OK);
	itest_logout(u);
}

static void
send_to(itest_user *from, const itest_user *to, const char *text)
{
	uint8_t id[16];
	itest_msg_id(id);
	CHECK(itest_send(from, to->user, &to->device, 1, id, text, strlen(text)) == SP_OK);
}

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	CHECK(mkdtemp(tmp) != NULL);
	atexit(down);
	int port = start_gateway();
	char args[1024];
	snprintf(args, sizeof(args),
		 "--fcm-url https://127.0.0.1:%d/v1/projects/test/messages:send --apns-url "
		 "https://127.0.0.1:%d --gateway-ca %s/ca.pem --period 60000 --retry-base 300 "
		 "--retry-max 1000 --poll 100 --log-level debug",
		 port, port, tmp);
	setenv("SEALPOST_PUSH_ARGS", args, 1);
	snprintf(args, sizeof(args), "--push-delay %d", DELAY_MS);
	setenv("SP_CONNSRV_ARGS", args, 1);
	if (!getenv("SEALPOST_DEVCLUSTER_COPIES"))
		setenv("SEALPOST_DEVCLUSTER_COPIES", "1", 1);
	ct_start();

	itest_user a, b, c, d, e, f, g;
	itest_register(&ct_cluster, 0, &a, "+15550901");
	offline_device(&b, "+15550902", "fcm", "tok-b");
	offline_device(&c, "+15550903", "fcm", "tok-c");
	offline_device(&d, "+15550904", "fcm", "flaky-d");
	offline_device(&e, "+15550905", "fcm", "dead-e");
	offline_device(&f, "+15550906", "apns", "tok-f");
	offline_device(&g, "+15550907", "fcm", "unreg-g");
	/* A bad token is refused by keysrv. */
	CHECK(itest_login(&ct_cluster, 0, &g) == SP_OK);
	CHECK(push_register(&g, "fcm", "has space") == SP_EINVAL);
	CHECK(push_register(&g, "gcm", "tok") == SP_EINVAL);
	itest_logout(&g);
	/* The CLI registers h's token. */
	char out[4096], user[32], buf[64];
	ct_register("h", "+15550908", user, sizeof(user));
	CHECK(ct_run("h", out, sizeof(out), "push register --platform gcm tok") != 0);
	CHECK(ct_run("h", out, sizeof(out), "push register --platform apns cli-tok-h") == 0);
	CHECK(strcmp(ct_str(out, 0, "status", buf, sizeof(buf)), "push_registered") == 0);
	CHECK(ct_run("h", out, sizeof(out), "whoami") == 0);
	itest_user h = {.user = strtoull(user, NULL, 10),
			.device = strtoull(ct_str(out, 0, "device", buf, sizeof(buf)), NULL, 10)};
	CHECK(h.user && h.device);

	CHECK(itest_login(&ct_cluster, 1, &a) == SP_OK);
	uint64_t sent_at = sp_time_ms();
	send_to(&a, &b, "SECRET-TEXT-1");
	send_to(&a, &b, "SECRET-TEXT-2");
	send_to(&a, &c, "SECRET-TEXT-3");
	send_to(&a, &d, "hello d");
	send_to(&a, &e, "hello e");
	send_to(&a, &f, "hello f");
	send_to(&a, &g, "hello g");
	send_to(&a, &h, "hello h");
	/* c connects before its wake-up is due, and leaves again. */
	CHECK(itest_login(&ct_cluster, 0, &c) == SP_OK);
	itest_logout(&c);
	uint64_t c_back = sp_time_ms() - sent_at;
	printf("c logged in and out %llu ms after the send\n", (unsigned long long)c_back);

	/* One wake-up for b's two messages, not before the delay, with no content. */
	CHECK(wait_lines("\"tok-b\"", NULL, 1, 20000) == 1);
	uint64_t took = sp_time_ms() - sent_at;
	printf("b's wake-up after %llu ms\n", (unsigned long long)took);
	CHECK(took >= DELAY_MS - 200);
	CHECK(count_lines("\"tok-b\"", "\"data\": {\"type\": \"wake\"}") == 1);
	CHECK(count_lines("\"tok-b\"", "\"priority\": \"high\"") == 1);
	CHECK(count_lines("SECRET-TEXT", NULL) == 0);
	CHECK(count_lines("hello", NULL) == 0);
	/* APNs shape. */
	CHECK(wait_lines("\"/3/device/tok-f\"", "\"push_type\": \"background\"", 1, 10000) == 1);
	CHECK(count_lines("\"tok-f\"", "\"content-available\": 1") == 1);
	CHECK(wait_lines("\"/3/device/cli-tok-h\"", NULL, 1, 10000) == 1);
	/* Retried after two 500s. */
	CHECK(wait_lines("\"flaky-d\"", NULL, 3, 20000) == 3);
	CHECK(count_lines("\"flaky-d\"", "\"status\": 500") == 2);
	CHECK(count_lines("\"flaky-d\"", "\"status\": 200") == 1);
	/* Dead tokens: 404, and UNREGISTERED in a 400 body. */
	CHECK(wait_lines("\"dead-e\"", NULL, 1, 10000) == 1);
	CHECK(wait_lines("\"unreg-g\"", NULL, 1, 10000) == 1);

	/* Nothing more comes: b deduplicated (a third message inside the period), d done, c
	 * cancelled (only meaningful when c's login beat the delay). */
	send_to(&a, &b, "SECRET-TEXT-4");
	sleep(DELAY_MS / 1000 + 3);
	CHECK(count_lines("\"tok-b\"", NULL) == 1);
	CHECK(count_lines("\"flaky-d\"", NULL) == 3);
	if (c_back < DELAY_MS - 500)
		CHECK(count_lines("\"tok-c\"", NULL) == 0);
	else
		printf("c's login came too late to test the cancel (machine slow)\n");

	/* e's token is gone from keysrv: with e's period ended, a new message makes a wake-up
	 * due that finds no token and POSTs nothing. */
	CHECK(itest_sh(&ct_cluster,
		       "redis-cli -p %d --user sealpost --pass \"$(cat $SEALPOST_REDIS_PASSWORD_FILE)\" "
		       "--no-auth-warning DEL r:push:sent:%llu r:push:sent:%llu >/dev/null",
		       ct_cluster.base, (unsigned long long)e.device, (unsigned long long)g.device) == 0);
	send_to(&a, &e, "hello again e");
	send_to(&a, &g, "hello again g");
	char metric[256];
	snprintf(metric, sizeof(metric),
		 "for i in $(seq 100); do curl -sf http://127.0.0.1:%d/metrics | "
		 "grep -q '^pushsrv_wakeups_total{outcome=\"no_token\"} 2' && exit 0; sleep 0.1; done; exit 1",
		 ct_cluster.base + 95);
	sleep(DELAY_MS / 1000);
	CHECK(itest_sh(&ct_cluster, "%s", metric) == 0);
	CHECK(count_lines("\"dead-e\"", NULL) == 1);
	CHECK(count_lines("\"unreg-g\"", NULL) == 1);
	/* Tokens reach no log. */
	CHECK(itest_sh(&ct_cluster, "! grep -rq 'tok-b\\|flaky-d\\|dead-e' $SEALPOST_LOGS") == 0);
	itest_logout(&a);
	ct_down();
	down();
	printf("push_itest: all passed in %llu ms\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
