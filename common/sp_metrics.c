#include <arpa/inet.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "sp_error.h"
#include "sp_metrics.h"

#define NBUCKETS 16
static const double bucket_le[NBUCKETS] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
					   0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
					   0.5,     1,      2.5,     10};

typedef enum { M_COUNTER, M_GAUGE, M_HISTOGRAM } mkind;

struct sp_metric {
	char name[208];
	size_t base_len; /* bytes before '{' */
	const char *help;
	mkind kind;
	_Atomic int64_t value;
	_Atomic uint64_t buckets[NBUCKETS + 1]; /* last: +Inf */
	_Atomic uint64_t sum_ns;
	struct sp_metric *next;
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static sp_metric *reg_head, *reg_tail;

static sp_metric *
metric_new(const char *name, const char *help, mkind kind)
{
	sp_metric *m;
	if (strlen(name) >= sizeof(m->name))
		return NULL;
	pthread_mutex_lock(&reg_lock);
	for (m = reg_head; m; m = m->next) {
		if (strcmp(m->name, name) == 0) {
			pthread_mutex_unlock(&reg_lock);
			return m;
		}
	}
	m = calloc(1, sizeof(*m));
	if (m) {
		strcpy(m->name, name);
		const char *brace = strchr(name, '{');
		m->base_len = brace ? (size_t)(brace - name) : strlen(name);
		m->help = help;
		m->kind = kind;
		if (reg_tail)
			reg_tail->next = m;
		else
			reg_head = m;
		reg_tail = m;
	}
	pthread_mutex_unlock(&reg_lock);
	return m;
}

sp_metric *
sp_metric_counter(const char *name, const char *help)
{
	return metric_new(name, help, M_COUNTER);
}

sp_metric *
sp_metric_gauge(const char *name, const char *help)
{
	return metric_new(name, help, M_GAUGE);
}

sp_metric *
sp_metric_histogram(const char *name, const char *help)
{
	return metric_new(name, help, M_HISTOGRAM);
}

void
sp_metric_inc(sp_metric *m)
{
	if (m)
		atomic_fetch_add_explicit(&m->value, 1, memory_order_relaxed);
}

void
sp_metric_add(sp_metric *m, uint64_t n)
{
	if (m)
		atomic_fetch_add_explicit(&m->value, (int64_t)n, memory_order_relaxed);
}

void
sp_metric_set(sp_metric *m, int64_t v)
{
	if (m)
		atomic_store_explicit(&m->value, v, memory_order_relaxed);
}

void
sp_metric_gauge_add(sp_metric *m, int64_t d)
{
	if (m)
		atomic_fetch_add_explicit(&m->value, d, memory_order_relaxed);
}

void
sp_metric_observe(sp_metric *m, double s)
{
	if (!m)
		return;
	int i = 0;
	while (i < NBUCKETS && s > bucket_le[i])
		i++;
	atomic_fetch_add_explicit(&m->buckets[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&m->value, 1, memory_order_relaxed);
	if (s > 0)
		atomic_fetch_add_explicit(&m->sum_ns, (uint64_t)(s * 1e9), memory_order_relaxed);
}

int64_t
sp_metric_value(const sp_metric *m)
{
	return m ? atomic_load_explicit(&m->value, memory_order_relaxed) : 0;
}

/* Writes `name` with an extra label (le="...") merged into its label set. */
static void
series(struct evbuffer *out, const sp_metric *m, const char *suffix, const char *extra)
{
	const char *labels = m->name + m->base_len; /* "" or "{...}" */
	evbuffer_add(out, m->name, m->base_len);
	evbuffer_add_printf(out, "%s", suffix);
	if (*labels && extra)
		evbuffer_add_printf(out, "%.*s,%s}", (int)strlen(labels) - 1, labels, extra);
	else if (*labels)
		evbuffer_add_printf(out, "%s", labels);
	else if (extra)
		evbuffer_add_printf(out, "{%s}", extra);
}

int
sp_metrics_render(struct evbuffer *out)
{
	static const char *const kinds[] = {"counter", "gauge", "histogram"};
	pthread_mutex_lock(&reg_lock);
	for (sp_metric *m = reg_head; m; m = m->next) {
		/* HELP/TYPE once per family: at its first series. */
		bool first = true;
		for (sp_metric *p = reg_head; p != m; p = p->next)
			if (p->base_len == m->base_len && memcmp(p->name, m->name, m->base_len) == 0)
				first = false;
		if (first)
			evbuffer_add_printf(out, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)m->base_len, m->name,
					    m->help ? m->help : "", (int)m->base_len, m->name, kinds[m->kind]);
		if (m->kind != M_HISTOGRAM) {
			series(out, m, "", NULL);
			evbuffer_add_printf(out, " %lld\n", (long long)sp_metric_value(m));
			continue;
		}
		uint64_t cum = 0;
		char le[48];
		for (int i = 0; i <= NBUCKETS; i++) {
			cum += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
			if (i < NBUCKETS)
				snprintf(le, sizeof(le), "le=\"%g\"", bucket_le[i]);
			else
				snprintf(le, sizeof(le), "le=\"+Inf\"");
			series(out, m, "_bucket", le);
			evbuffer_add_printf(out, " %llu\n", (unsigned long long)cum);
		}
		series(out, m, "_sum", NULL);
		evbuffer_add_printf(out, " %.9f\n", (double)atomic_load(&m->sum_ns) / 1e9);
		series(out, m, "_count", NULL);
		evbuffer_add_printf(out, " %llu\n", (unsigned long long)cum);
	}
	pthread_mutex_unlock(&reg_lock);
	return SP_OK;
}

void
sp_metrics_http_reply(struct evhttp_request *req, void *arg)
{
	(void)arg;
	struct evbuffer *out = evbuffer_new();
	if (!out) {
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
		return;
	}
	sp_metrics_render(out);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4");
	evhttp_send_reply(req, HTTP_OK, "OK", out);
	evbuffer_free(out);
}

int
sp_metrics_http_start(struct event_base *base, const char *addr, int port, int *bound_port,
		      struct evhttp **http_out)
{
	struct evhttp *http = evhttp_new(base);
	if (!http)
		return SP_ENOMEM;
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET);
	evhttp_set_cb(http, "/metrics", sp_metrics_http_reply, NULL);
	struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, addr, (ev_uint16_t)port);
	if (!bs) {
		evhttp_free(http);
		return SP_EIO;
	}
	if (bound_port) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		evutil_socket_t fd = evhttp_bound_socket_get_fd(bs);
		*bound_port = port;
		if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_INET)
			*bound_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	}
	*http_out = http;
	return SP_OK;
}

static void *
metrics_thread(void *arg)
{
	event_base_dispatch(arg);
	return NULL;
}

int
sp_metrics_http_thread(const char *addr, int port, int *bound_port)
{
	struct event_base *base = event_base_new();
	pthread_t t;
	if (!base)
		return SP_ENOMEM;
	struct evhttp *http;
	int rc = sp_metrics_http_start(base, addr, port, bound_port, &http);
	if (rc) {
		event_base_free(base);
		return rc;
	}
	if (pthread_create(&t, NULL, metrics_thread, base)) {
		evhttp_free(http);
		event_base_free(base);
		return SP_ENOMEM;
	}
	pthread_detach(t);
	return SP_OK;
}
