/*
 * keysrv's webhook OTP sender against a tiny evhttp receiver on loopback: the code
 * arrives as {"phone","code"} JSON in a POST to the configured URL and verifies; a
 * receiver that answers 500 is retried (once here) and then counted as a failure in
 * /metrics. The receiver is plain http://, which keysrv accepts only with
 * --otp-webhook-insecure-http (warned at start); https is keysrv_otp_itest's.
 */
#include <pthread.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>

#include "keysrv_harness.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int nposts;
static char last_body[512], last_uri[256], last_ctype[64];
static int last_method;

static void
on_request(struct evhttp_request *req, void *arg)
{
	(void)arg;
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(in);
	const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
	pthread_mutex_lock(&lock);
	if (n >= sizeof(last_body))
		n = sizeof(last_body) - 1;
	evbuffer_copyout(in, last_body, n);
	last_body[n] = '\0';
	snprintf(last_uri, sizeof(last_uri), "%s", evhttp_request_get_uri(req));
	snprintf(last_ctype, sizeof(last_ctype), "%s", ct ? ct : "");
	last_method = evhttp_request_get_command(req);
	nposts++;
	bool fail = strstr(last_body, "+14155557099") != NULL; /* this phone is refused */
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	evhttp_send_reply(req, fail ? 500 : 200, fail ? "Nope" : "OK", NULL);
}

static void *
http_thread(void *arg)
{
	event_base_dispatch(arg);
	return NULL;
}

/* Waits until `want` posts have arrived (bounded: a hang fails rather than blocks). */
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

/* The value of a metric line "name value" from keysrv's /metrics, or -1. */
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

int
main(void)
{
	char tmp[256], data_dir[300], log_path[300], url[128], ready[2048];
	signal(SIGPIPE, SIG_IGN);
	KT_CHECK(evthread_use_pthreads() == 0);
	snprintf(tmp, sizeof(tmp), "/tmp/keysrv-webhook-XXXXXX");
	KT_CHECK(mkdtemp(tmp) != NULL);
	snprintf(data_dir, sizeof(data_dir), "%s/data", tmp);
	snprintf(log_path, sizeof(log_path), "%s/keysrv.log", tmp);

	/* The receiver. */
	struct event_base *base = event_base_new();
	struct evhttp *http = evhttp_new(base);
	KT_CHECK(base && http);
	evhttp_set_gencb(http, on_request, NULL);
	struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
	KT_CHECK(bs != NULL);
	struct sockaddr_in sa;
	socklen_t slen = sizeof(sa);
	KT_CHECK(getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &slen) == 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook?x=1", ntohs(sa.sin_port));
	pthread_t t;
	KT_CHECK(pthread_create(&t, NULL, http_thread, base) == 0);

	kt_proc p;
	kt_conn c;
	const char *args[] = {"--data-dir", data_dir, "--otp-sender", "webhook", "--otp-webhook-url", url,
		"--otp-webhook-timeout-ms", "5000", "--otp-webhook-insecure-http", "--otp-webhook-retries",
		"1", "--otp-webhook-backoff-ms", "50", "--metrics-port", "0", NULL};
	KT_CHECK_RC(kt_keysrv_start(&p, log_path, args, ready, sizeof(ready)), SP_OK);
	KT_CHECK(kt_file_has(log_path, "INSECURE", NULL, 0));
	const char *mp = strstr(ready, "metrics-port=");
	KT_CHECK(mp != NULL);
	int mport = atoi(mp + strlen("metrics-port="));
	KT_CHECK(mport > 0);
	KT_CHECK_RC(kt_conn_open(&c, p.url), SP_OK);

	/* A code posted as JSON, which then verifies. */
	sp_frame f;
	sp_frame_init(&f, SP_T_REGISTER, 1, true);
	sp_frame_set_str(&f, SP_F_PHONE, "+14155557001");
	KT_CHECK_RC(kt_rpc(&c, &f), SP_OK);
	KT_CHECK(wait_posts(1));
	pthread_mutex_lock(&lock);
	char code[7] = "";
	const char *prefix = "{\"phone\":\"+14155557001\",\"code\":\"";
	bool shape = strncmp(last_body, prefix, strlen(prefix)) == 0 &&
	    strspn(last_body + strlen(prefix), "0123456789") == 6 &&
	    strcmp(last_body + strlen(prefix) + 6, "\"}") == 0;
	if (shape)
		memcpy(code, last_body + strlen(prefix), 6);
	bool meta = last_method == EVHTTP_REQ_POST && strcmp(last_uri, "/hook?x=1") == 0 &&
	    strcmp(last_ctype, "application/json") == 0;
	pthread_mutex_unlock(&lock);
	KT_CHECK(shape);
	KT_CHECK(meta);
	kt_device d;
	kt_device_new(&d);
	sp_frame_init(&f, SP_T_VERIFY, 2, true);
	sp_frame_set_str(&f, SP_F_PHONE, "+14155557001");
	sp_frame_set_str(&f, SP_F_OTP, code);
	kt_set_newdev(&f, &d, 1);
	KT_CHECK_RC(kt_rpc(&c, &f), SP_OK);
	KT_CHECK(wait_metric(mport, "keysrv_otp_sent_total", 1) == 1);

	/* The code never reaches keysrv's log with the webhook sender. */
	KT_CHECK(!kt_file_has(log_path, code, NULL, 0));

	/* A refusing receiver is retried, then a counted failure (and the request itself
	 * still succeeds: the code is stored; the user asks again). */
	sp_frame_init(&f, SP_T_REGISTER, 3, true);
	sp_frame_set_str(&f, SP_F_PHONE, "+14155557099");
	KT_CHECK_RC(kt_rpc(&c, &f), SP_OK);
	KT_CHECK(wait_posts(3));
	KT_CHECK(wait_metric(mport, "keysrv_otp_send_failures_total", 1) == 1);
	KT_CHECK(metric(mport, "keysrv_otp_webhook_retries_total") == 1);
	KT_CHECK(metric(mport, "keysrv_otp_sent_total") == 1);
	/* The URL is logged without its query (which may carry a token). */
	KT_CHECK(kt_file_has(log_path, "/hook: attempt 1 failed", NULL, 0));
	KT_CHECK(!kt_file_has(log_path, "x=1", NULL, 0));

	kt_conn_close(&c);
	KT_CHECK(kt_proc_stop(&p, SIGTERM) == 0);
	event_base_loopbreak(base);
	pthread_join(t, NULL);
	evhttp_free(http);
	event_base_free(base);
	kt_rmtree(tmp);
	printf("keysrv_webhook_itest: all passed\n");
	return 0;
}
