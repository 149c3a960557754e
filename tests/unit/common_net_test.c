/* NNG request helpers, metrics exposition over HTTP, TLS context errors. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "sp_error.h"
#include "sp_metrics.h"
#include "sp_nng.h"
#include "sp_tls.h"
#include "check_run.h"

static nng_socket rep;

/* Answers PING with PONG (same id) and anything else with an ERROR. */
static void *
echo_server(void *arg)
{
	int n = *(int *)arg;
	for (int i = 0; i < n; i++) {
		nng_msg *m;
		if (nng_recvmsg(rep, &m, 0))
			return NULL;
		sp_frame f, r;
		int rc = sp_nng_msg_decode(m, &f);
		if (rc) {
			sp_nng_send_error(rep, 0, false, rc, sp_strerror(rc));
		} else if (f.type == SP_T_PING) {
			sp_frame_init(&r, SP_T_PONG, f.id, f.has_id);
			sp_nng_send_frame(rep, &r);
		} else {
			sp_nng_send_error(rep, f.id, f.has_id, SP_EBADTYPE, "only PING here");
		}
		sp_frame_fini(&f);
		nng_msg_free(m);
	}
	return NULL;
}

START_TEST(test_nng_call)
{
	char url[64];
	snprintf(url, sizeof(url), "ipc:///tmp/sp-net-test-%d", (int)getpid());
	ck_assert_int_eq(sp_nng_rep_listen(&rep, url), SP_OK);
	int n = 2;
	pthread_t t;
	pthread_create(&t, NULL, echo_server, &n);

	nng_socket req;
	ck_assert_int_eq(sp_nng_req_open(&req, url, 2000, 0), SP_OK);
	sp_frame q, a;
	nng_msg *m;
	sp_frame_init(&q, SP_T_PING, 99, true);
	ck_assert_int_eq(sp_nng_call(req, &q, &m, &a), SP_OK);
	ck_assert_int_eq(a.type, SP_T_PONG);
	ck_assert(a.id == 99);
	sp_frame_fini(&a);
	nng_msg_free(m);

	/* An ERROR reply comes back as its code, with the frame for the reason. */
	sp_frame_init(&q, SP_T_OK, 1, true);
	ck_assert_int_eq(sp_nng_call(req, &q, &m, &a), SP_EBADTYPE);
	char reason[64];
	ck_assert_int_eq(sp_frame_str(&a, SP_F_REASON, reason, sizeof(reason)), SP_OK);
	ck_assert_str_eq(reason, "only PING here");
	sp_frame_fini(&a);
	nng_msg_free(m);
	pthread_join(t, NULL);
	nng_close(req);
	nng_close(rep);

	/* Nobody listening: the call times out rather than hanging. */
	ck_assert_int_eq(sp_nng_req_open(&req, "tcp://127.0.0.1:1", 200, 0), SP_OK);
	sp_frame_init(&q, SP_T_PING, 1, true);
	ck_assert_int_eq(sp_nng_call(req, &q, &m, &a), SP_ETIMEDOUT);
	nng_close(req);
}
END_TEST

static char http_body[65536];
static size_t http_len;

static void
on_http_done(struct evhttp_request *req, void *arg)
{
	struct event_base *base = arg;
	if (req && evhttp_request_get_response_code(req) == 200) {
		struct evbuffer *b = evhttp_request_get_input_buffer(req);
		http_len = evbuffer_remove(b, http_body, sizeof(http_body) - 1);
		http_body[http_len] = '\0';
	}
	event_base_loopexit(base, NULL);
}

START_TEST(test_metrics_http)
{
	sp_metric *c = sp_metric_counter("sp_test_things_total{kind=\"a\"}", "things seen");
	sp_metric *c2 = sp_metric_counter("sp_test_things_total{kind=\"b\"}", "things seen");
	sp_metric *g = sp_metric_gauge("sp_test_level", "a level");
	sp_metric *h = sp_metric_histogram("sp_test_latency_seconds", "latency");
	ck_assert_ptr_eq(c, sp_metric_counter("sp_test_things_total{kind=\"a\"}", "again"));
	sp_metric_add(c, 41);
	sp_metric_inc(c);
	sp_metric_inc(c2);
	sp_metric_set(g, -3);
	sp_metric_observe(h, 0.0003);
	sp_metric_observe(h, 0.2);
	sp_metric_inc(NULL);
	ck_assert_int_eq(sp_metric_value(c), 42);

	struct event_base *base = event_base_new();
	int port = 0;
	struct evhttp *http;
	ck_assert_int_eq(sp_metrics_http_start(base, "127.0.0.1", 0, &port, &http), SP_OK);
	ck_assert_int_gt(port, 0);
	struct evhttp_connection *conn = evhttp_connection_base_new(base, NULL, "127.0.0.1", (ev_uint16_t)port);
	struct evhttp_request *req = evhttp_request_new(on_http_done, base);
	evhttp_make_request(conn, req, EVHTTP_REQ_GET, "/metrics");
	event_base_dispatch(base);
	ck_assert_uint_gt(http_len, 0);
	ck_assert_ptr_nonnull(strstr(http_body, "# TYPE sp_test_things_total counter\n"));
	ck_assert_ptr_nonnull(strstr(http_body, "sp_test_things_total{kind=\"a\"} 42\n"));
	ck_assert_ptr_nonnull(strstr(http_body, "sp_test_things_total{kind=\"b\"} 1\n"));
	ck_assert_ptr_nonnull(strstr(http_body, "sp_test_level -3\n"));
	ck_assert_ptr_nonnull(strstr(http_body, "sp_test_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
	ck_assert_ptr_nonnull(strstr(http_body, "sp_test_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
	ck_assert_ptr_nonnull(strstr(http_body, "sp_test_latency_seconds_count 2\n"));
	/* One HELP/TYPE per family. */
	char *first = strstr(http_body, "# TYPE sp_test_things_total");
	ck_assert_ptr_null(strstr(first + 1, "# TYPE sp_test_things_total"));
	evhttp_connection_free(conn);
	evhttp_free(http);
	event_base_free(base);
}
END_TEST

START_TEST(test_tls_errors)
{
	char err[512];
	ck_assert_ptr_null(sp_tls_server_ctx("/nonexistent.pem", "/nonexistent.key", false, err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "cannot load certificate /nonexistent.pem"));
	ck_assert_ptr_null(sp_tls_client_ctx("/nonexistent-ca.pem", false, err, sizeof(err)));
	ck_assert_ptr_nonnull(strstr(err, "cannot load CA file"));

	/* A real pair loads; a key that does not match is refused and reload keeps the old one. */
	char dir[] = "/tmp/sptlsXXXXXX";
	ck_assert_ptr_nonnull(mkdtemp(dir));
	char cmd[1024];
	snprintf(cmd, sizeof(cmd),
		 "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
		 "-subj /CN=a -keyout a.key -out a.pem 2>/dev/null && "
		 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
		 "-subj /CN=b -keyout b.key -out b.pem 2>/dev/null",
		 dir);
	ck_assert_int_eq(system(cmd), 0);
	char a_pem[128], a_key[128], b_key[128];
	snprintf(a_pem, sizeof(a_pem), "%s/a.pem", dir);
	snprintf(a_key, sizeof(a_key), "%s/a.key", dir);
	snprintf(b_key, sizeof(b_key), "%s/b.key", dir);
	SSL_CTX *ctx = sp_tls_server_ctx(a_pem, a_key, false, err, sizeof(err));
	ck_assert_msg(ctx != NULL, "%s", err);
	ck_assert_int_eq(SSL_CTX_get_min_proto_version(ctx), TLS1_3_VERSION);
	ck_assert_int_eq(sp_tls_server_reload(ctx, a_pem, b_key, err, sizeof(err)), SP_ETLS);
	ck_assert_ptr_nonnull(strstr(err, "b.key"));
	ck_assert_int_eq(sp_tls_server_reload(ctx, a_pem, a_key, err, sizeof(err)), SP_OK);
	SSL_CTX_free(ctx);
	SSL_CTX *cctx = sp_tls_client_ctx(a_pem, false, err, sizeof(err));
	ck_assert_ptr_nonnull(cctx);
	SSL_CTX_free(cctx);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("net");
	TCase *tc = tcase_create("net");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_nng_call);
	tcase_add_test(tc, test_metrics_http);
	tcase_add_test(tc, test_tls_errors);
	suite_add_tcase(s, tc);
	return check_run(s);
}
