#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <sodium.h>

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
	char *url, *ca_file;
	char *log_url; /* scheme://host[:port]/path: no user info or query (may hold a token) */
	bool insecure;
	struct curl_slist *headers;
	int timeout_ms;
	unsigned retries, backoff_ms;
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	otp_item *queue;
	unsigned qmax, qhead, qlen;
	sp_metric *m_sent, *m_failed, *m_dropped, *m_retried;
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

static size_t
discard_body(char *p, size_t size, size_t n, void *arg)
{
	(void)p;
	(void)arg;
	return size * n;
}

/* Waits up to ms or until stop; returns true when stopping. Called with s->lock held. */
static bool
wait_stop(keys_otp_sender *s, unsigned ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (!s->stop && pthread_cond_timedwait(&s->cond, &s->lock, &ts) == 0)
		;
	return s->stop;
}

/* One POST. Returns 1 on a 2xx answer, 0 for a failure worth retrying (no answer, 5xx,
 * 429), -1 for one that is not (another 4xx, a certificate the CA does not vouch for).
 * The log lines name the URL and the failure, never the body (it holds the code). */
static int
webhook_post_once(keys_otp_sender *s, CURL *c, const char *body, int attempt)
{
	long status = 0;
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	CURLcode cc = curl_easy_perform(c);
	if (cc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	if (cc == CURLE_OK && status >= 200 && status < 300)
		return 1;
	bool tls = cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CACERT_BADFILE ||
	    cc == CURLE_SSL_CERTPROBLEM || cc == CURLE_SSL_CONNECT_ERROR;
	sp_warn_rl("otp webhook %s: attempt %d failed: %s (HTTP %ld)", s->log_url, attempt,
	    cc == CURLE_OK ? "answer" : curl_easy_strerror(cc), status);
	if (tls || (cc == CURLE_OK && status >= 400 && status < 500 && status != 429))
		return -1;
	return 0;
}

/* Posts one code, retrying transient failures up to `retries` times with a doubling
 * backoff (cut short by stop). */
static bool
webhook_post(keys_otp_sender *s, CURL *c, const otp_item *it)
{
	char body[128];
	/* phone and code were validated (digits and a leading '+'): nothing to escape. */
	snprintf(body, sizeof(body), "{\"phone\":\"%s\",\"code\":\"%s\"}", it->phone, it->code);
	unsigned backoff = s->backoff_ms;
	bool ok = false;
	for (unsigned attempt = 0;; attempt++) {
		int res = webhook_post_once(s, c, body, (int)attempt + 1);
		if (res != 0) {
			ok = res > 0;
			break;
		}
		if (attempt >= s->retries)
			break;
		sp_metric_inc(s->m_retried);
		pthread_mutex_lock(&s->lock);
		bool stop = wait_stop(s, backoff);
		pthread_mutex_unlock(&s->lock);
		if (stop)
			break;
		backoff = backoff > 30000 ? 60000 : backoff * 2;
	}
	sodium_memzero(body, sizeof(body));
	return ok;
}

static CURL *
webhook_handle(keys_otp_sender *s)
{
	CURL *c = curl_easy_init();
	if (!c)
		return NULL;
	curl_easy_setopt(c, CURLOPT_URL, s->url);
	curl_easy_setopt(c, CURLOPT_POST, 1L);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, s->headers);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)s->timeout_ms);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, s->insecure ? "http,https" : "https");
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	if (s->ca_file)
		curl_easy_setopt(c, CURLOPT_CAINFO, s->ca_file);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_body);
	return c;
}

static void *
webhook_thread(void *arg)
{
	keys_otp_sender *s = arg;
	CURL *c = webhook_handle(s);

	if (!c)
		sp_error("otp webhook: cannot create a curl handle; codes will not be delivered");
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
		sodium_memzero(&s->queue[s->qhead], sizeof(it));
		s->qhead = (s->qhead + 1) % s->qmax;
		s->qlen--;
		pthread_mutex_unlock(&s->lock);
		if (c && webhook_post(s, c, &it))
			sp_metric_inc(s->m_sent);
		else
			sp_metric_inc(s->m_failed);
		sodium_memzero(&it, sizeof(it));
	}
	if (c)
		curl_easy_cleanup(c);
	return NULL;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_rc;

static void
curl_init_once(void)
{
	curl_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* https://host[:port][/path]; http:// only when insecure. The host must be non-empty. */
static int
webhook_parse(keys_otp_sender *s, const char *url, bool insecure)
{
	CURLU *u;
	char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
	int rc = SP_ECONFIG;

	if (!url || !(u = curl_url()))
		return url ? SP_ENOMEM : SP_ECONFIG;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host ||
	    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
		goto out;
	if (strcmp(scheme, "https") != 0 && !(insecure && strcmp(scheme, "http") == 0))
		goto out;
	size_t n = strlen(scheme) + strlen(host) + strlen(port) + strlen(path) + 8;
	if (!(s->url = strdup(url)) || !(s->log_url = malloc(n))) {
		rc = SP_ENOMEM;
		goto out;
	}
	snprintf(s->log_url, n, "%s://%s:%s%s", scheme, host, port, path);
	rc = SP_OK;
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_free(path);
	curl_url_cleanup(u);
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
	s->m_retried = sp_metric_counter("keysrv_otp_webhook_retries_total",
	    "webhook posts tried again after a transient failure");
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
		pthread_once(&curl_once, curl_init_once);
		if (curl_rc != CURLE_OK) {
			sp_error("otp webhook: curl_global_init: %s", curl_easy_strerror(curl_rc));
			goto fail;
		}
		if ((rc = webhook_parse(s, cfg->url, cfg->insecure_http))) {
			if (rc == SP_ECONFIG)
				sp_error("otp-webhook-url must be https://host[:port][/path]%s",
				    cfg->insecure_http ? " or http://..." :
							 " (http:// only with otp-webhook-insecure-http)");
			goto fail;
		}
		if (cfg->ca_file && *cfg->ca_file && !(s->ca_file = strdup(cfg->ca_file))) {
			rc = SP_ENOMEM;
			goto fail;
		}
		if (cfg->ca_file && *cfg->ca_file && access(cfg->ca_file, R_OK) != 0) {
			sp_error("otp-webhook-ca %s: %s", cfg->ca_file, strerror(errno));
			rc = SP_ECONFIG;
			goto fail;
		}
		s->insecure = cfg->insecure_http;
		if (s->insecure && strncmp(s->log_url, "http://", 7) == 0)
			sp_warn("otp webhook: INSECURE: codes are posted in clear text to %s "
				"(otp-webhook-insecure-http); use https:// outside tests", s->log_url);
		if (!(s->headers = curl_slist_append(NULL, "Content-Type: application/json"))) {
			rc = SP_ENOMEM;
			goto fail;
		}
		s->retries = cfg->retries;
		s->backoff_ms = cfg->backoff_ms ? cfg->backoff_ms : 500;
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
	free(s->url);
	free(s->log_url);
	free(s->ca_file);
	curl_slist_free_all(s->headers);
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
