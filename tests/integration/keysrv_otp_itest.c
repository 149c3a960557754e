/*
 * keysrv's one-time codes and registration lock against real processes:
 *   - the per-phone budget of wrong codes holds across re-registrations and a restart,
 *     and refusals carry retry_after and are counted and logged;
 *   - registration lock: SET_PIN, then VERIFY needs the PIN; wrong PINs have a budget;
 *   - --production refuses the dev sender and an insecure webhook (exit 2), and an
 *     http:// webhook without --otp-webhook-insecure-http is refused at start;
 *   - the webhook sender over https to a loopback TLS receiver (a CA and a certificate
 *     made with openssl in a temp dir): the code arrives and verifies, never appears in
 *     keysrv's log; with another CA the receiver is refused and nothing is posted.
 */
#include <ctype.h>
#include <pthread.h>

#include <event2/buffer.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <openssl/ssl.h>

#include "keysrv_harness.h"
#include "sp_tls.h"

static char tmp[256];

/* ---- the https receiver ---- */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int nposts;
static char last_body[512];

static void
on_request(struct evhttp_request *req, void *arg)
{
	(void)arg;
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(in);
	pthread_mutex_lock(&lock);
	if (n >= sizeof(last_body))
		n = sizeof(last_body) - 1;
	evbuffer_copyout(in, last_body, n);
	last_body[n] = '\0';
	nposts++;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	evhttp_send_reply(req, 200, "OK", NULL);
}

static struct bufferevent *
tls_bev(struct event_base *base, void *arg)
{
	SSL *ssl = SSL_new(arg);
	KT_CHECK(ssl != NULL);
	return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
	    BEV_OPT_CLOSE_ON_FREE);
}

static void *
http_thread(void *arg)
{
	event_base_dispatch(arg);
	return NULL;
}

static bool
wait_posts(int want)
{
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 20;
	pthread_mutex_lock(&lock);
	while (nposts < want && pthread_cond_timedwait(&cond, &lock, &dl) == 0)
		;
	bool ok = nposts >= want;
	pthread_mutex_unlock(&lock);
	return ok;
}

/* ---- keysrv ---- */

/* The value of "name value" on keysrv's /metrics, or -1. */
static long long
metric(int port, const char *name)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	char buf[65536];
	size_t n = 0;
	ssize_t r;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	const char *get = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
	if (write(fd, get, strlen(get)) < 0) {
		close(fd);
		return -1;
	}
	while (n + 1 < sizeof(buf) && (r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
		n += (size_t)r;
	close(fd);
	buf[n] = '\0';
	char pat[256];
	snprintf(pat, sizeof(pat), "\n%s ", name);
	const char *p = strstr(buf, pat);
	return p ? atoll(p + strlen(pat)) : -1;
}

static long long
wait_metric(int port, const char *name, long long want)
{
	long long v = -1;
	for (int waited = 0; waited < 20000; waited += 50) {
		if ((v = metric(port, name)) == want)
			break;
		kt_sleep_ms(50);
	}
	return v;
}

static int
metrics_port(const char *ready)
{
	const char *mp = strstr(ready, "metrics-port=");
	KT_CHECK(mp != NULL);
	int port = atoi(mp + strlen("metrics-port="));
	KT_CHECK(port > 0);
	return port;
}

/* Runs keysrv with args to its exit (it must not start serving) and returns the exit
 * status. */
static int
run_to_exit(const char *const *args, const char *log)
{
	const char *bindir = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	char bin[512];
	const char *argv[32];
	int n = 0, st = 0;
	snprintf(bin, sizeof(bin), "%s/keysrv", bindir);
	argv[n++] = bin;
	argv[n++] = "--listen";
	argv[n++] = "tcp://127.0.0.1:0";
	argv[n++] = "--insecure-internal";
	for (int i = 0; args[i] && n < 31; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	unlink(log);
	pid_t pid = fork();
	KT_CHECK(pid >= 0);
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	for (int waited = 0; waited < 20000; waited += 20) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
		kt_sleep_ms(20);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	KT_CHECK(!"keysrv did not exit");
	return -1;
}

static int
rpc_register(kt_conn *c, const char *phone)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_REGISTER, 1, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	return kt_rpc(c, &f);
}

static int
rpc_verify(kt_conn *c, const char *phone, const char *code, const char *pin, kt_device *d)
{
	sp_frame f;
	sp_frame_init(&f, SP_T_VERIFY, 2, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	sp_frame_set_str(&f, SP_F_OTP, code);
	if (pin)
		sp_frame_set_str(&f, SP_F_PIN, pin);
	kt_set_newdev(&f, d, 1);
	int rc = kt_rpc(c, &f);
	if (rc == SP_OK) {
		d->user = sp_frame_u64(&c->rep, SP_F_USER);
		d->device = sp_frame_u64(&c->rep, SP_F_DEVICE);
	}
	return rc;
}

/* True when `tok` appears in the file as a token of its own (not inside a longer run of
 * letters and digits such as a hex id), so a random code is not found by chance. */
static bool
log_has_token(const char *path, const char *tok)
{
	FILE *fp = fopen(path, "r");
	char line[4096];
	size_t n = strlen(tok);
	bool found = false;
	KT_CHECK(fp != NULL);
	while (!found && fgets(line, sizeof(line), fp)) {
		for (const char *p = line; !found && (p = strstr(p, tok)); p++) {
			bool left = p == line || !isalnum((unsigned char)p[-1]);
			found = left && !isalnum((unsigned char)p[n]);
		}
	}
	fclose(fp);
	return found;
}

static void
wrong_code(const char *code, char out[7])
{
	memcpy(out, code, 7);
	out[0] = out[0] == '9' ? '0' : (char)(out[0] + 1);
}

/* The last reply is a budget refusal: SP_ERATELIMIT renewing within (0, 24 h]. */
static void
check_budget_refusal(kt_conn *c)
{
	KT_CHECK(c->rep.type == SP_T_ERROR);
	uint64_t ra = sp_frame_u64(&c->rep, SP_F_RETRY_AFTER);
	KT_CHECK(ra > 0 && ra <= 24ULL * 3600 * 1000);
}

/* ---- phases ---- */

static void
budgets_and_lock(void)
{
	char data[300], otp[300], log[300], ready[2048], code[7], bad[7];
	snprintf(data, sizeof(data), "%s/budget-data", tmp);
	snprintf(otp, sizeof(otp), "%s/budget-otp", tmp);
	snprintf(log, sizeof(log), "%s/budget.log", tmp);
	const char *args[] = {"--data-dir", data, "--otp-dir", otp, "--metrics-port", "0",
		"--phone-max-wrong-codes", "3", "--phone-max-codes", "20", "--phone-max-wrong-pins", "2",
		"--rate-phone-burst", "100", "--rate-source-burst", "1000", NULL};
	const char *p1 = "+14155558001", *p2 = "+14155558002";
	kt_proc p;
	kt_conn c;
	kt_device d, d2, d3;
	kt_device_new(&d);

	KT_CHECK_RC(kt_keysrv_start(&p, log, args, ready, sizeof(ready)), SP_OK);
	KT_CHECK_RC(kt_conn_open(&c, p.url), SP_OK);
	/* Two wrong codes, a new REGISTER, one more wrong code: the phone's budget (3) is
	 * spent, and the right code is refused. */
	KT_CHECK_RC(rpc_register(&c, p1), SP_OK);
	KT_CHECK(kt_read_otp(otp, p1, code) == 0);
	wrong_code(code, bad);
	KT_CHECK_RC(rpc_verify(&c, p1, bad, NULL, &d), SP_EAUTH);
	KT_CHECK_RC(rpc_verify(&c, p1, bad, NULL, &d), SP_EAUTH);
	KT_CHECK_RC(rpc_register(&c, p1), SP_OK);
	KT_CHECK(kt_read_otp(otp, p1, code) == 0);
	wrong_code(code, bad);
	KT_CHECK_RC(rpc_verify(&c, p1, bad, NULL, &d), SP_EAUTH);
	KT_CHECK_RC(rpc_verify(&c, p1, code, NULL, &d), SP_ERATELIMIT);
	check_budget_refusal(&c);
	KT_CHECK(kt_file_has(log, "phone budget spent (verify)", NULL, 0));

	/* A restart renews nothing. */
	kt_conn_close(&c);
	KT_CHECK(kt_proc_stop(&p, SIGTERM) == 0);
	KT_CHECK_RC(kt_keysrv_start(&p, log, args, ready, sizeof(ready)), SP_OK);
	int mport = metrics_port(ready);
	KT_CHECK_RC(kt_conn_open(&c, p.url), SP_OK);
	KT_CHECK_RC(rpc_register(&c, p1), SP_OK);
	KT_CHECK(kt_read_otp(otp, p1, code) == 0);
	KT_CHECK_RC(rpc_verify(&c, p1, code, NULL, &d), SP_ERATELIMIT);
	check_budget_refusal(&c);
	KT_CHECK(metric(mport, "keysrv_phone_budget_refused_total{kind=\"verify\"}") == 1);

	/* Registration lock. */
	kt_device_new(&d);
	kt_device_new(&d2);
	kt_device_new(&d3);
	KT_CHECK_RC(rpc_register(&c, p2), SP_OK);
	KT_CHECK(kt_read_otp(otp, p2, code) == 0);
	KT_CHECK_RC(rpc_verify(&c, p2, code, NULL, &d), SP_OK);
	sp_frame f;
	sp_frame_init(&f, SP_T_SET_PIN, 3, true);
	sp_frame_set_str(&f, SP_F_PIN, "zq9731");
	kt_set_auth(&f, &d);
	KT_CHECK_RC(kt_rpc(&c, &f), SP_OK);
	KT_CHECK(c.rep.type == SP_T_PIN_SET && sp_frame_u64(&c.rep, SP_F_LOCKED) == 1);
	KT_CHECK(!kt_file_has(log, "zq9731", NULL, 0));
	KT_CHECK_RC(rpc_register(&c, p2), SP_OK);
	KT_CHECK(kt_read_otp(otp, p2, code) == 0);
	KT_CHECK_RC(rpc_verify(&c, p2, code, NULL, &d2), SP_EPERM);
	KT_CHECK_RC(rpc_verify(&c, p2, code, "1111", &d2), SP_EAUTH);
	KT_CHECK_RC(rpc_verify(&c, p2, code, "zq9731", &d2), SP_OK);
	KT_CHECK(d2.user == d.user);
	/* A second wrong PIN spends the budget (2): then even the right one is refused. */
	KT_CHECK_RC(rpc_register(&c, p2), SP_OK);
	KT_CHECK(kt_read_otp(otp, p2, code) == 0);
	KT_CHECK_RC(rpc_verify(&c, p2, code, "2222", &d3), SP_EAUTH);
	KT_CHECK_RC(rpc_verify(&c, p2, code, "zq9731", &d3), SP_ERATELIMIT);
	check_budget_refusal(&c);
	KT_CHECK(metric(mport, "keysrv_phone_budget_refused_total{kind=\"pin\"}") == 1);
	KT_CHECK(metric(mport, "keysrv_pin_wrong_total") == 2);
	/* The account is still the one d2 registered. */
	sp_frame_init(&f, SP_T_KEYS_STATUS, 4, true);
	kt_set_auth(&f, &d2);
	KT_CHECK_RC(kt_rpc(&c, &f), SP_OK);

	kt_conn_close(&c);
	KT_CHECK(kt_proc_stop(&p, SIGTERM) == 0);
}

static void
startup_refusals(void)
{
	char data[300], log[300];
	snprintf(data, sizeof(data), "%s/refuse-data", tmp);
	snprintf(log, sizeof(log), "%s/refuse.log", tmp);
	const char *prod_dev[] = {"--data-dir", data, "--production", "--metrics-port", "-1", NULL};
	KT_CHECK(run_to_exit(prod_dev, log) == 2);
	KT_CHECK(kt_file_has(log, "--production refuses otp-sender=dev", NULL, 0));
	KT_CHECK(!kt_file_has(log, "keysrv ready", NULL, 0));
	const char *prod_plain[] = {"--data-dir", data, "--production", "--otp-sender", "webhook",
		"--otp-webhook-url", "http://127.0.0.1:9/otp", "--otp-webhook-insecure-http",
		"--metrics-port", "-1", NULL};
	KT_CHECK(run_to_exit(prod_plain, log) == 2);
	KT_CHECK(kt_file_has(log, "--production refuses otp-webhook-insecure-http", NULL, 0));
	const char *plain[] = {"--data-dir", data, "--otp-sender", "webhook", "--otp-webhook-url",
		"http://127.0.0.1:9/otp", "--metrics-port", "-1", NULL};
	KT_CHECK(run_to_exit(plain, log) != 0);
	KT_CHECK(kt_file_has(log, "otp-webhook-insecure-http", NULL, 0));
	KT_CHECK(!kt_file_has(log, "keysrv ready", NULL, 0));
}

static void
webhook_https(void)
{
	char cmd[2048], ca[300], other[300], cert[300], key[300];
	snprintf(cmd, sizeof(cmd),
	    "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
	    "-subj /CN=otp-test-ca -keyout ca.key -out ca.pem 2>/dev/null && "
	    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
	    "-subj /CN=other-ca -keyout other.key -out other.pem 2>/dev/null && "
	    "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 "
	    "-keyout srv.key -out srv.csr 2>/dev/null && "
	    "printf 'subjectAltName=IP:127.0.0.1\\n' > srv.ext && "
	    "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
	    "-extfile srv.ext -out srv.pem 2>/dev/null",
	    tmp);
	KT_CHECK(system(cmd) == 0);
	snprintf(ca, sizeof(ca), "%s/ca.pem", tmp);
	snprintf(other, sizeof(other), "%s/other.pem", tmp);
	snprintf(cert, sizeof(cert), "%s/srv.pem", tmp);
	snprintf(key, sizeof(key), "%s/srv.key", tmp);

	char err[256];
	SSL_CTX *sctx = sp_tls_server_ctx(cert, key, false, err, sizeof(err));
	KT_CHECK(sctx != NULL);
	struct event_base *base = event_base_new();
	struct evhttp *http = evhttp_new(base);
	KT_CHECK(base && http);
	evhttp_set_bevcb(http, tls_bev, sctx);
	evhttp_set_gencb(http, on_request, NULL);
	struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
	KT_CHECK(bs != NULL);
	struct sockaddr_in sa;
	socklen_t slen = sizeof(sa);
	KT_CHECK(getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &slen) == 0);
	char url[128];
	snprintf(url, sizeof(url), "https://127.0.0.1:%d/otp", ntohs(sa.sin_port));
	pthread_t t;
	KT_CHECK(pthread_create(&t, NULL, http_thread, base) == 0);

	/* The right CA: the code arrives, verifies, and is nowhere in keysrv's log. */
	char data[300], log[300], ready[2048];
	snprintf(data, sizeof(data), "%s/https-data", tmp);
	snprintf(log, sizeof(log), "%s/https.log", tmp);
	const char *args[] = {"--data-dir", data, "--production", "--otp-sender", "webhook",
		"--otp-webhook-url", url, "--otp-webhook-ca", ca, "--metrics-port", "0", NULL};
	kt_proc p;
	kt_conn c;
	KT_CHECK_RC(kt_keysrv_start(&p, log, args, ready, sizeof(ready)), SP_OK);
	KT_CHECK(!kt_file_has(log, "INSECURE", NULL, 0));
	int mport = metrics_port(ready);
	KT_CHECK_RC(kt_conn_open(&c, p.url), SP_OK);
	const char *phone = "+14155558101";
	KT_CHECK_RC(rpc_register(&c, phone), SP_OK);
	KT_CHECK(wait_posts(1));
	char code[7] = "";
	const char *prefix = "{\"phone\":\"+14155558101\",\"code\":\"";
	pthread_mutex_lock(&lock);
	bool shape = strncmp(last_body, prefix, strlen(prefix)) == 0 &&
	    strspn(last_body + strlen(prefix), "0123456789") == 6;
	if (shape)
		memcpy(code, last_body + strlen(prefix), 6);
	pthread_mutex_unlock(&lock);
	KT_CHECK(shape);
	kt_device d;
	kt_device_new(&d);
	KT_CHECK_RC(rpc_verify(&c, phone, code, NULL, &d), SP_OK);
	KT_CHECK(wait_metric(mport, "keysrv_otp_sent_total", 1) == 1);
	kt_conn_close(&c);
	KT_CHECK(kt_proc_stop(&p, SIGTERM) == 0);
	KT_CHECK(!log_has_token(log, code));
	KT_CHECK(!kt_file_has(log, "otp +", NULL, 0));

	/* Another CA: the receiver's certificate is refused, nothing is posted. */
	args[8] = other;
	snprintf(log, sizeof(log), "%s/https-other.log", tmp);
	KT_CHECK_RC(kt_keysrv_start(&p, log, args, ready, sizeof(ready)), SP_OK);
	mport = metrics_port(ready);
	KT_CHECK_RC(kt_conn_open(&c, p.url), SP_OK);
	KT_CHECK_RC(rpc_register(&c, "+14155558102"), SP_OK);
	KT_CHECK(wait_metric(mport, "keysrv_otp_send_failures_total", 1) == 1);
	KT_CHECK(metric(mport, "keysrv_otp_sent_total") == 0);
	KT_CHECK(metric(mport, "keysrv_otp_webhook_retries_total") == 0);
	pthread_mutex_lock(&lock);
	KT_CHECK(nposts == 1);
	pthread_mutex_unlock(&lock);
	KT_CHECK(kt_file_has(log, "attempt 1 failed", NULL, 0));
	kt_conn_close(&c);
	KT_CHECK(kt_proc_stop(&p, SIGTERM) == 0);

	event_base_loopbreak(base);
	pthread_join(t, NULL);
	evhttp_free(http);
	event_base_free(base);
	SSL_CTX_free(sctx);
}

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	KT_CHECK(evthread_use_pthreads() == 0);
	snprintf(tmp, sizeof(tmp), "/tmp/keysrv-otp-XXXXXX");
	KT_CHECK(mkdtemp(tmp) != NULL);
	budgets_and_lock();
	startup_refusals();
	webhook_https();
	kt_rmtree(tmp);
	printf("keysrv_otp_itest: all passed\n");
	return 0;
}
