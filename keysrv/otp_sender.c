#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "keysrv/otp_sender.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_metrics.h"

#define PHONE_MAX 32
#define CODE_MAX 16

typedef struct otp_item {
	char phone[PHONE_MAX + 1];
	char code[CODE_MAX + 1];
} otp_item;

struct keys_otp_sender {
	bool webhook;
	char *dir;
	/* webhook */
	char *host, *path;
	int port;
	int timeout_ms;
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	otp_item *queue;
	unsigned qmax, qhead, qlen;
	sp_metric *m_sent, *m_failed, *m_dropped;
};

/* ---- dev sender ---- */

static int
dev_send(keys_otp_sender *s, const char *phone, const char *code)
{
	char tmp[4096], path[4096];
	int n = snprintf(path, sizeof(path), "%s/%s", s->dir, phone);
	if (n < 0 || (size_t)n >= sizeof(path) || snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >=
	    (int)sizeof(tmp))
		return SP_EINVAL;
	sp_info("otp %s %s", phone, code);
	int fd = mkstemp(tmp);
	if (fd < 0) {
		sp_error("otp: cannot create %s: %s", tmp, strerror(errno));
		return SP_EIO;
	}
	char line[CODE_MAX + 2];
	int len = snprintf(line, sizeof(line), "%s\n", code);
	bool ok = write(fd, line, (size_t)len) == len;
	ok = close(fd) == 0 && ok;
	if (!ok || rename(tmp, path) != 0) {
		sp_error("otp: cannot write %s: %s", path, strerror(errno));
		unlink(tmp);
		return SP_EIO;
	}
	return SP_OK;
}

/* ---- webhook sender ---- */

typedef struct post_state {
	struct event_base *base;
	int status; /* HTTP status, 0 for a transport failure or timeout */
} post_state;

static void
on_response(struct evhttp_request *req, void *arg)
{
	post_state *st = arg;
	st->status = req ? evhttp_request_get_response_code(req) : 0;
	event_base_loopexit(st->base, NULL);
}

/* Posts one code and waits for the answer (or the timeout) on the thread's own base. */
static bool
webhook_post(keys_otp_sender *s, struct event_base *base, const otp_item *it)
{
	post_state st = {base, 0};
	struct evhttp_connection *conn = evhttp_connection_base_new(base, NULL, s->host,
	    (unsigned short)s->port);
	struct evhttp_request *req = NULL;
	char body[128], hostport[300];
	bool ok = false;

	if (!conn)
		return false;
	struct timeval tv = {s->timeout_ms / 1000, (s->timeout_ms % 1000) * 1000};
	evhttp_connection_set_timeout_tv(conn, &tv);
	evhttp_connection_set_retries(conn, 0);
	if (!(req = evhttp_request_new(on_response, &st)))
		goto out;
	/* phone and code were validated (digits and a leading '+'): nothing to escape. */
	int n = snprintf(body, sizeof(body), "{\"phone\":\"%s\",\"code\":\"%s\"}", it->phone, it->code);
	snprintf(hostport, sizeof(hostport), "%s:%d", s->host, s->port);
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	if (evhttp_add_header(h, "Host", hostport) ||
	    evhttp_add_header(h, "Content-Type", "application/json") ||
	    evhttp_add_header(h, "Connection", "close") ||
	    evbuffer_add(evhttp_request_get_output_buffer(req), body, (size_t)n)) {
		evhttp_request_free(req);
		goto out;
	}
	/* On failure evhttp_make_request frees the request itself. */
	if (evhttp_make_request(conn, req, EVHTTP_REQ_POST, s->path) != 0)
		goto out;
	event_base_dispatch(base);
	ok = st.status >= 200 && st.status < 300;
	if (!ok)
		sp_warn("otp webhook: %s:%d%s answered %d (0: no answer)", s->host, s->port, s->path,
		    st.status);
out:
	evhttp_connection_free(conn);
	return ok;
}

static void *
webhook_thread(void *arg)
{
	keys_otp_sender *s = arg;
	struct event_base *base = event_base_new();

	for (;;) {
		otp_item it;
		pthread_mutex_lock(&s->lock);
		while (!s->stop && s->qlen == 0)
			pthread_cond_wait(&s->cond, &s->lock);
		if (s->stop) {
			pthread_mutex_unlock(&s->lock);
			break;
		}
		it = s->queue[s->qhead];
		s->qhead = (s->qhead + 1) % s->qmax;
		s->qlen--;
		pthread_mutex_unlock(&s->lock);
		if (base && webhook_post(s, base, &it))
			sp_metric_inc(s->m_sent);
		else
			sp_metric_inc(s->m_failed);
	}
	if (base)
		event_base_free(base);
	return NULL;
}

static int
webhook_parse(keys_otp_sender *s, const char *url)
{
	struct evhttp_uri *u = url ? evhttp_uri_parse(url) : NULL;
	int rc = SP_ECONFIG;
	if (!u)
		goto out;
	const char *scheme = evhttp_uri_get_scheme(u), *host = evhttp_uri_get_host(u);
	const char *path = evhttp_uri_get_path(u), *query = evhttp_uri_get_query(u);
	if (!scheme || strcmp(scheme, "http") != 0 || !host || !*host)
		goto out;
	s->port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
	size_t plen = (path && *path ? strlen(path) : 1) + (query ? strlen(query) + 1 : 0) + 1;
	if (!(s->host = strdup(host)) || !(s->path = malloc(plen))) {
		rc = SP_ENOMEM;
		goto out;
	}
	snprintf(s->path, plen, "%s%s%s", path && *path ? path : "/", query ? "?" : "",
	    query ? query : "");
	rc = SP_OK;
out:
	if (u)
		evhttp_uri_free(u);
	return rc;
}

/* ---- interface ---- */

int
keys_otp_sender_new(keys_otp_sender **out, const keys_otp_sender_cfg *cfg)
{
	keys_otp_sender *s = calloc(1, sizeof(*s));
	int rc = SP_ECONFIG;
	if (!s)
		return SP_ENOMEM;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	s->m_sent = sp_metric_counter("keysrv_otp_sent_total", "one-time codes handed to the sender");
	s->m_failed = sp_metric_counter("keysrv_otp_send_failures_total",
	    "one-time codes the sender failed to deliver");
	s->m_dropped = sp_metric_counter("keysrv_otp_queue_full_total",
	    "one-time codes refused because the webhook queue was full");
	if (cfg->mode && strcmp(cfg->mode, "dev") == 0) {
		if (!cfg->dir || !*cfg->dir) {
			sp_error("otp-sender dev needs otp-dir");
			goto fail;
		}
		if (mkdir(cfg->dir, 0700) != 0 && errno != EEXIST) {
			sp_error("otp: cannot create %s: %s", cfg->dir, strerror(errno));
			goto fail;
		}
		if (!(s->dir = strdup(cfg->dir))) {
			rc = SP_ENOMEM;
			goto fail;
		}
	} else if (cfg->mode && strcmp(cfg->mode, "webhook") == 0) {
		if ((rc = webhook_parse(s, cfg->url))) {
			if (rc == SP_ECONFIG)
				sp_error("otp-webhook-url must be http://host[:port][/path], got '%s'",
				    cfg->url ? cfg->url : "");
			goto fail;
		}
		s->webhook = true;
		s->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 5000;
		s->qmax = cfg->queue_max ? cfg->queue_max : 1024;
		if (!(s->queue = calloc(s->qmax, sizeof(*s->queue)))) {
			rc = SP_ENOMEM;
			goto fail;
		}
		if (pthread_create(&s->thread, NULL, webhook_thread, s) != 0) {
			rc = SP_ENOMEM;
			goto fail;
		}
		s->thread_started = true;
	} else {
		sp_error("otp-sender must be dev or webhook, got '%s'", cfg->mode ? cfg->mode : "");
		goto fail;
	}
	*out = s;
	return SP_OK;
fail:
	keys_otp_sender_free(s);
	return rc;
}

void
keys_otp_sender_free(keys_otp_sender *s)
{
	if (!s)
		return;
	if (s->thread_started) {
		pthread_mutex_lock(&s->lock);
		s->stop = true;
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
		pthread_join(s->thread, NULL);
	}
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s->queue);
	free(s->dir);
	free(s->host);
	free(s->path);
	free(s);
}

int
keys_otp_send(keys_otp_sender *s, const char *phone, const char *code)
{
	if (strlen(phone) > PHONE_MAX || strlen(code) > CODE_MAX)
		return SP_EINVAL;
	if (!s->webhook) {
		int rc = dev_send(s, phone, code);
		sp_metric_inc(rc ? s->m_failed : s->m_sent);
		return rc;
	}
	pthread_mutex_lock(&s->lock);
	if (s->qlen == s->qmax) {
		pthread_mutex_unlock(&s->lock);
		sp_metric_inc(s->m_dropped);
		return SP_EFULL;
	}
	otp_item *it = &s->queue[(s->qhead + s->qlen) % s->qmax];
	snprintf(it->phone, sizeof(it->phone), "%s", phone);
	snprintf(it->code, sizeof(it->code), "%s", code);
	s->qlen++;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return SP_OK;
}
