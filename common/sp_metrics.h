/*
 * Metrics registry with Prometheus text exposition (served by evhttp at GET /metrics).
 *
 * Metrics are created once (usually at start-up) and live until exit: the registry owns
 * them and callers keep the pointer. A name may carry fixed labels, e.g.
 * `sp_frames_in_total{type="SEND"}`; series sharing a base name form one family.
 * Updates are lock-free atomics and safe from any thread.
 */
#ifndef SP_METRICS_H
#define SP_METRICS_H

#include <stdint.h>

struct event_base;
struct evbuffer;

typedef struct sp_metric sp_metric;

/* Returns the metric (an existing one of the same name is returned again), or NULL on
 * out-of-memory or a name longer than 200 bytes. Histograms bucket seconds from 50 us
 * to 10 s. */
sp_metric *sp_metric_counter(const char *name, const char *help);
sp_metric *sp_metric_gauge(const char *name, const char *help);
sp_metric *sp_metric_histogram(const char *name, const char *help);

/* All updates accept NULL (a metric that failed to register) and do nothing. */
void sp_metric_inc(sp_metric *m);
void sp_metric_add(sp_metric *m, uint64_t n);
void sp_metric_set(sp_metric *m, int64_t v);
void sp_metric_gauge_add(sp_metric *m, int64_t d);
void sp_metric_observe(sp_metric *m, double seconds);

/* Current value of a counter or gauge (tests, admin output). */
int64_t sp_metric_value(const sp_metric *m);

/* Appends the exposition text of every metric to `out`. */
int sp_metrics_render(struct evbuffer *out);

struct evhttp;
struct evhttp_request;

/* An evhttp callback answering with the exposition text (for servers that serve /metrics
 * on an evhttp of their own, beside other paths). */
void sp_metrics_http_reply(struct evhttp_request *req, void *arg);

/* Serves GET /metrics on addr:port from `base`'s loop (port 0: pick one; the chosen port is
 * returned in *bound_port when non-NULL). On SP_OK *http is the server, which the caller
 * frees with evhttp_free before freeing `base`. */
int sp_metrics_http_start(struct event_base *base, const char *addr, int port, int *bound_port,
			  struct evhttp **http);

/* The same on a thread of its own with its own event base, for servers without a libevent
 * loop. The thread runs until the process exits. */
int sp_metrics_http_thread(const char *addr, int port, int *bound_port);

#endif
