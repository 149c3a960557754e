/*
 * connsrv's pre-login limits and delivery clamps against real processes (a private
 * cluster from scripts/devcluster.sh). connsrv-0 runs with a 2 s login deadline;
 * connsrv-1 is restarted with a long deadline, 4 unauthenticated connections per source
 * and a small handshake bucket. Both deliver through a window of 4. Abusive connections
 * come from other loopback addresses (127.0.0.2, 127.0.0.3) so that the legitimate
 * clients (127.0.0.1) are a different source.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "itest.h"
#include "sp_error.h"
#include "sp_time.h"
#include "sp_tls.h"

#define WINDOW 4
#define PER_SOURCE 4
#define HS_BURST 30

static itest_cluster cl;
static int phone_seq;

static void
new_user(itest_user *u, int which)
{
	char phone[32];
	snprintf(phone, sizeof(phone), "+1556%03d%04d", getpid() % 1000, ++phone_seq);
	itest_register(&cl, which, u, phone);
}

/* ---- raw connections: a chosen source address, bytes of our choosing ---- */

/* A TCP connection from `src` to connsrv `which`, or -1. */
static int
tcp_from(const char *src, int which)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in a;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	inet_pton(AF_INET, src, &a.sin_addr);
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(fd);
		return -1;
	}
	a.sin_port = htons((uint16_t)cl.conn_port[which]);
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = {10, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

/* Whether the server closed `fd` within timeout_ms (EOF or reset; bytes are skipped). */
static bool
closed_within(int fd, int timeout_ms)
{
	uint64_t end = sp_mono_ms() + (uint64_t)timeout_ms;
	char buf[4096];
	for (;;) {
		uint64_t now = sp_mono_ms();
		if (now >= end)
			return false;
		struct pollfd p = {fd, POLLIN, 0};
		if (poll(&p, 1, (int)(end - now)) <= 0)
			continue;
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			return true;
	}
}

typedef struct tls {
	SSL_CTX *ctx;
	SSL *ssl;
	int fd;
} tls;

static void
tls_close(tls *t)
{
	if (t->ssl)
		SSL_free(t->ssl);
	if (t->ctx)
		SSL_CTX_free(t->ctx);
	if (t->fd >= 0)
		close(t->fd);
	memset(t, 0, sizeof(*t));
	t->fd = -1;
}

/* TLS over a connection from `src`: SP_OK or SP_ETLS. */
static int
tls_open(tls *t, const char *src, int which)
{
	char err[256];
	memset(t, 0, sizeof(*t));
	t->fd = tcp_from(src, which);
	ck_assert_int_ge(t->fd, 0);
	ck_assert_ptr_nonnull(t->ctx = sp_tls_client_ctx(cl.ca, false, err, sizeof(err)));
	ck_assert_ptr_nonnull(t->ssl = SSL_new(t->ctx));
	SSL_set_fd(t->ssl, t->fd);
	X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), "127.0.0.1");
	if (SSL_connect(t->ssl) != 1) {
		ERR_clear_error();
		return SP_ETLS;
	}
	return SP_OK;
}

static void
tls_write(tls *t, const void *p, size_t n)
{
	ck_assert_int_eq(SSL_write(t->ssl, p, (int)n), (int)n);
}

static void
tls_send(tls *t, const sp_frame *f)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	ck_assert_int_eq(sp_frame_pack_prefixed(f, &sb), SP_OK);
	tls_write(t, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
}

static bool
tls_read_n(tls *t, uint8_t *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		int r = SSL_read(t->ssl, p + got, (int)(n - got));
		if (r <= 0)
			return false;
		got += (size_t)r;
	}
	return true;
}

/* The next frame's type (and an ERROR's code); false at EOF, reset or a 10 s silence. */
static bool
tls_recv(tls *t, unsigned *type, int64_t *code)
{
	uint8_t hdr[4];
	if (!tls_read_n(t, hdr, 4))
		return false;
	uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
	ck_assert_uint_le(len, 1u << 20);
	uint8_t *body = malloc(len ? len : 1);
	ck_assert_ptr_nonnull(body);
	bool ok = tls_read_n(t, body, len);
	if (ok) {
		sp_frame f;
		ck_assert_int_eq(sp_frame_decode(body, len, &f), SP_OK);
		*type = f.type;
		*code = f.type == SP_T_ERROR ? sp_frame_i64(&f, SP_F_CODE) : 0;
		sp_frame_fini(&f);
	}
	free(body);
	return ok;
}

/* ---- metrics ---- */

/* The value of `name` (a full series name, labels included) on connsrv `which`, or -1. */
static long long
metric(int which, const char *name)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/metric-value", cl.dir);
	unlink(path);
	if (itest_sh(&cl, "curl -sf http://127.0.0.1:%d/metrics | awk -v n='%s' '$1==n{print $2}' > %s",
		     cl.base + 80 + 10 * which, name, path) != 0)
		return -1;
	FILE *f = fopen(path, "r");
	long long v = -1;
	if (f) {
		if (fscanf(f, "%lld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

#define REFUSED(reason) "sp_connsrv_prelogin_refused_total{reason=\"" reason "\"}"

/* ---- tests ---- */

START_TEST(test_oversized_prelogin_frame_refused)
{
	long long before = metric(0, REFUSED("frame_size"));
	ck_assert_int_ge(before, 0);
	tls t;
	ck_assert_int_eq(tls_open(&t, "127.0.0.1", 0), SP_OK);
	/* Announces 8 KiB (fine after login, over the 4 KiB allowed before it). */
	static uint8_t junk[4 + 256] = {0, 0, 0x20, 0};
	tls_write(&t, junk, sizeof(junk));
	unsigned type = 0;
	int64_t code = 0;
	ck_assert(tls_recv(&t, &type, &code));
	ck_assert_uint_eq(type, SP_T_ERROR);
	ck_assert_int_eq(code, SP_ETOOBIG);
	ck_assert(!tls_recv(&t, &type, &code)); /* then closed */
	tls_close(&t);
	ck_assert_int_eq(metric(0, REFUSED("frame_size")), before + 1);

	/* Once logged in, the usual limits apply: a 10 KiB message goes through. */
	itest_user a, b;
	new_user(&a, 0);
	new_user(&b, 0);
	ck_assert_int_eq(itest_login(&cl, 0, &a), SP_OK);
	static char body[10 * 1024];
	memset(body, 'b', sizeof(body));
	uint8_t id[16];
	itest_msg_id(id);
	ck_assert_int_eq(itest_send(&a, b.user, &b.device, 1, id, body, sizeof(body)), SP_OK);
	itest_logout(&a);
}
END_TEST

START_TEST(test_ping_only_closed_at_login_deadline)
{
	long long before = metric(0, REFUSED("login_timeout"));
	tls t;
	/* The deadline runs from the accept, before the TLS handshake (slow under ASan):
	 * measure from before the connect. */
	uint64_t start = sp_mono_ms();
	ck_assert_int_eq(tls_open(&t, "127.0.0.1", 0), SP_OK);
	struct timeval tv = {1, 0};
	setsockopt(t.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	/* PING every 200 ms: each answered, none extends the 2 s deadline. */
	int pongs = 0;
	bool timed_out = false;
	for (int i = 0; i < 150 && !timed_out; i++) { /* bounded: 30 s */
		sp_frame p;
		sp_frame_init(&p, SP_T_PING, (uint64_t)i + 1, true);
		msgpack_sbuffer sb;
		msgpack_sbuffer_init(&sb);
		ck_assert_int_eq(sp_frame_pack_prefixed(&p, &sb), SP_OK);
		int w = SSL_write(t.ssl, sb.data, (int)sb.size);
		msgpack_sbuffer_destroy(&sb);
		if (w <= 0)
			break;
		unsigned type;
		int64_t code;
		while (tls_recv(&t, &type, &code)) {
			if (type == SP_T_PONG) {
				pongs++;
				break;
			}
			ck_assert_uint_eq(type, SP_T_ERROR);
			ck_assert_int_eq(code, SP_ETIMEDOUT);
			timed_out = true;
			break;
		}
		usleep(200000);
	}
	uint64_t lived = sp_mono_ms() - start;
	printf("PING-only connection: %d PONGs, closed after %llu ms\n", pongs, (unsigned long long)lived);
	ck_assert_msg(timed_out, "a PING-only connection was not closed at the login deadline");
	ck_assert_int_ge(pongs, 1);
	ck_assert_uint_ge(lived, 2000); /* not before the deadline */
	unsigned type;
	int64_t code;
	ck_assert(!tls_recv(&t, &type, &code)); /* closed after the ERROR */
	tls_close(&t);
	ck_assert_int_eq(metric(0, REFUSED("login_timeout")), before + 1);
}
END_TEST

START_TEST(test_unauthenticated_per_source_limit)
{
	long long before = metric(1, REFUSED("unauth_per_source"));
	ck_assert_int_ge(before, 0);
	/* 127.0.0.2 holds PER_SOURCE connections that never log in (no TLS even). */
	int held[PER_SOURCE];
	for (int i = 0; i < PER_SOURCE; i++)
		ck_assert_int_ge(held[i] = tcp_from("127.0.0.2", 1), 0);
	/* One more from there is closed at once, before any TLS. */
	int extra = tcp_from("127.0.0.2", 1);
	ck_assert_int_ge(extra, 0);
	ck_assert_msg(closed_within(extra, 10000), "connection past the per-source limit was kept");
	close(extra);
	ck_assert_int_eq(metric(1, REFUSED("unauth_per_source")), before + 1);
	/* A TLS client from there is refused too. */
	tls t;
	ck_assert_int_eq(tls_open(&t, "127.0.0.2", 1), SP_ETLS);
	tls_close(&t);
	/* Meanwhile a legitimate client (another source) registers, logs in and is served. */
	itest_user u;
	new_user(&u, 1);
	ck_assert_int_eq(itest_login(&cl, 1, &u), SP_OK);
	sp_frame f;
	ck_assert_int_eq(itest_wait(&u, SP_T_QUEUE_EMPTY, 10000, &f), SP_OK);
	sp_frame_fini(&f);
	itest_logout(&u);
	/* The held connections are still open (their deadline is long here). */
	for (int i = 0; i < PER_SOURCE; i++)
		ck_assert(!closed_within(held[i], 10));
	/* One of them goes: the source may connect again, and that one works. */
	close(held[0]);
	int rc = SP_ETLS;
	for (int i = 0; i < 50 && rc != SP_OK; i++) { /* until the server has seen the close */
		rc = tls_open(&t, "127.0.0.2", 1);
		if (rc != SP_OK) {
			tls_close(&t);
			usleep(100000);
		}
	}
	ck_assert_int_eq(rc, SP_OK);
	sp_frame p;
	sp_frame_init(&p, SP_T_PING, 7, true);
	tls_send(&t, &p);
	unsigned type;
	int64_t code;
	ck_assert(tls_recv(&t, &type, &code));
	ck_assert_uint_eq(type, SP_T_PONG);
	tls_close(&t);
	for (int i = 1; i < PER_SOURCE; i++)
		close(held[i]);
}
END_TEST

START_TEST(test_handshake_rate_per_source)
{
	long long before = metric(1, REFUSED("handshake_rate"));
	ck_assert_int_ge(before, 0);
	/* 127.0.0.3 opens connections in a burst, each closed at once by the client. */
	int refused = 0;
	for (int i = 0; i < 3 * HS_BURST; i++) {
		int fd = tcp_from("127.0.0.3", 1);
		ck_assert_int_ge(fd, 0);
		close(fd);
		usleep(2000);
	}
	long long after = metric(1, REFUSED("handshake_rate"));
	refused = (int)(after - before);
	printf("handshake bucket: %d of %d connections refused\n", refused, 3 * HS_BURST);
	ck_assert_int_ge(refused, 1);
	/* Other sources are not affected. */
	itest_user u;
	new_user(&u, 1);
	ck_assert_int_eq(itest_login(&cl, 1, &u), SP_OK);
	itest_logout(&u);
}
END_TEST

/* Next DELIVER that is not a receipt (receipts are ACKed as they come). */
static uint64_t
next_message(itest_user *u)
{
	for (;;) {
		sp_frame f;
		ck_assert_int_eq(itest_wait(u, SP_T_DELIVER, 15000, &f), SP_OK);
		uint64_t seq = sp_frame_u64(&f, SP_F_SEQ), etype = sp_frame_u64(&f, SP_F_ETYPE);
		sp_frame_fini(&f);
		if (etype < 10)
			return seq;
	}
}

/* Whether a DELIVERED receipt reaches `u` within timeout_ms. */
static bool
receipt_within(itest_user *u, int timeout_ms)
{
	uint64_t end = sp_mono_ms() + (uint64_t)timeout_ms;
	for (;;) {
		uint64_t now = sp_mono_ms();
		if (now >= end)
			return false;
		sp_frame f;
		if (itest_wait(u, SP_T_DELIVER, (int)(end - now), &f) != SP_OK)
			return false;
		uint64_t etype = sp_frame_u64(&f, SP_F_ETYPE);
		sp_frame_fini(&f);
		if (etype == SP_ETYPE_RECEIPT_DELIVERED)
			return true;
	}
}

static void
expect_error(itest_user *u, int code)
{
	sp_frame f;
	ck_assert_int_eq(itest_wait(u, SP_T_ERROR, 10000, &f), SP_OK);
	ck_assert_int_eq(sp_frame_i64(&f, SP_F_CODE), code);
	sp_frame_fini(&f);
}

START_TEST(test_ack_beyond_delivered_deletes_nothing)
{
	itest_user a, b;
	new_user(&a, 0);
	new_user(&b, 0);
	ck_assert_int_eq(itest_login(&cl, 0, &a), SP_OK);
	enum { N = 2 * WINDOW };
	for (int i = 0; i < N; i++) {
		uint8_t id[16];
		char text[16];
		itest_msg_id(id);
		snprintf(text, sizeof(text), "m%d", i);
		ck_assert_int_eq(itest_send(&a, b.user, &b.device, 1, id, text, strlen(text)), SP_OK);
	}
	long long refused0 = metric(1, "sp_connsrv_acks_refused_total");

	/* b is sent the first WINDOW entries and ACKs entries it was never sent. */
	ck_assert_int_eq(itest_login(&cl, 1, &b), SP_OK);
	uint64_t seq[N];
	for (int i = 0; i < WINDOW; i++)
		seq[i] = next_message(&b);
	uint64_t undelivered = seq[WINDOW - 1] + 2;
	sp_frame q;
	sp_frame_init(&q, SP_T_ACK, 0, false);
	sp_frame_set_u64s(&q, SP_F_SEQS, &undelivered, 1);
	ck_assert_int_eq(spc_conn_send(b.conn, &q), SP_OK);
	expect_error(&b, SP_ERANGE);
	sp_frame_init(&q, SP_T_ACK, 0, false);
	sp_frame_set_u64(&q, SP_F_UPTO_SEQ, seq[WINDOW - 1] + WINDOW);
	ck_assert_int_eq(spc_conn_send(b.conn, &q), SP_OK);
	expect_error(&b, SP_ERANGE);
	ck_assert_int_eq(metric(1, "sp_connsrv_acks_refused_total"), refused0 + 2);
	/* Nothing was deleted, so the sender hears of no delivery. */
	ck_assert_msg(!receipt_within(&a, 3000), "DELIVERED receipt for an entry never delivered");
	itest_logout(&b);

	/* b claims (AUTH last_seq) to have everything and ACKs all of it at once, as a
	 * client re-ACKing its last_seq does: no error, but only what this session has
	 * written can go; delivery still starts at the oldest entry. */
	b.acked = 1000000;
	ck_assert_int_eq(itest_login(&cl, 1, &b), SP_OK);
	ck_assert_int_eq(itest_ack(&b, 1000000), SP_OK);
	ck_assert_int_eq(next_message(&b), seq[0]); /* last_seq did not skip anything */
	itest_logout(&b);

	/* Every entry past the window was still there: b, honest now, gets them and ACKs. */
	b.acked = 0;
	ck_assert_int_eq(itest_login(&cl, 1, &b), SP_OK);
	int got = 0;
	uint64_t last = 0;
	while (got < N && last < seq[WINDOW - 1] + WINDOW) {
		uint64_t s = next_message(&b);
		ck_assert_uint_gt(s, last);
		last = s;
		got++;
		itest_ack(&b, s);
	}
	ck_assert_uint_ge(last, seq[WINDOW - 1] + WINDOW);
	ck_assert_int_ge(got, WINDOW); /* at least the undelivered half */
	/* Now that they were delivered and ACKed, the receipts come. */
	ck_assert(receipt_within(&a, 15000));
	itest_logout(&a);
	itest_logout(&b);
}
END_TEST

static void
up(void)
{
	/* Both connsrvs: 2 s to log in, a window of 4. */
	setenv("SEALPOST_CONNSRV_LOGIN_TIMEOUT", "2000", 1);
	setenv("SEALPOST_CONNSRV_WINDOW", "4", 1);
	itest_cluster_up(&cl);
	/* connsrv-1: a long deadline, small per-source limits. */
	setenv("SEALPOST_CONNSRV_LOGIN_TIMEOUT", "60000", 1);
	setenv("SEALPOST_CONNSRV_PRELOGIN_PER_SOURCE", "4", 1);
	setenv("SEALPOST_CONNSRV_HANDSHAKE_BURST", "30", 1);
	setenv("SEALPOST_CONNSRV_HANDSHAKE_RATE", "2", 1);
	itest_signal(&cl, "connsrv-1", SIGKILL);
	itest_restart(&cl, "connsrv-1");
}

static void
down(void)
{
	itest_cluster_down(&cl);
}

int
main(void)
{
	Suite *s = suite_create("connsrv_limits");
	TCase *tc = tcase_create("limits");
	tcase_add_unchecked_fixture(tc, up, down);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_oversized_prelogin_frame_refused);
	tcase_add_test(tc, test_ping_only_closed_at_login_deadline);
	tcase_add_test(tc, test_unauthenticated_per_source_limit);
	tcase_add_test(tc, test_handshake_rate_per_source);
	tcase_add_test(tc, test_ack_beyond_delivered_deletes_nothing);
	suite_add_tcase(s, tc);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
