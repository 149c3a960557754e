/* Blocking HTTPS POSTs with libcurl (see http.h). */
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <sodium.h>

#include "pushsrv/http.h"
#include "sp_error.h"

struct ps_http {
	CURL *c;
	char *auth; /* "Authorization: Bearer ..." or NULL */
};

typedef struct sink {
	char *buf;
	size_t cap, len;
} sink;

/* Keeps the first cap bytes; the rest is read and dropped (a gateway answer is small). */
static size_t
on_body(char *p, size_t size, size_t n, void *arg)
{
	sink *s = arg;
	size_t total = size * n, room = s->cap - s->len;
	size_t take = total < room ? total : room;
	memcpy(s->buf + s->len, p, take);
	s->len += take;
	return total;
}

int
ps_http_new(const char *ca_file, const char *bearer, int timeout_ms, ps_http **out)
{
	static const char prefix[] = "Authorization: Bearer ";
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return SP_EIO;
	ps_http *h = calloc(1, sizeof(*h));
	if (!h)
		return SP_ENOMEM;
	if (!(h->c = curl_easy_init())) {
		free(h);
		return SP_EIO;
	}
	if (bearer) {
		size_t n = sizeof(prefix) + strlen(bearer);
		if (!(h->auth = malloc(n))) {
			ps_http_free(h);
			return SP_ENOMEM;
		}
		memcpy(h->auth, prefix, sizeof(prefix) - 1);
		memcpy(h->auth + sizeof(prefix) - 1, bearer, strlen(bearer) + 1);
	}
	curl_easy_setopt(h->c, CURLOPT_POST, 1L);
	curl_easy_setopt(h->c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(h->c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h->c, CURLOPT_PROTOCOLS_STR, "https");
	curl_easy_setopt(h->c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h->c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h->c, CURLOPT_SSL_VERIFYHOST, 2L);
	if (ca_file)
		curl_easy_setopt(h->c, CURLOPT_CAINFO, ca_file);
	curl_easy_setopt(h->c, CURLOPT_WRITEFUNCTION, on_body);
	*out = h;
	return SP_OK;
}

void
ps_http_free(ps_http *h)
{
	if (!h)
		return;
	if (h->c)
		curl_easy_cleanup(h->c);
	if (h->auth) {
		sodium_memzero(h->auth, strlen(h->auth));
		free(h->auth);
	}
	free(h);
	curl_global_cleanup();
}

int
ps_http_post(ps_http *h, const char *url, const char *const *headers, const char *body,
	     long *status, char *resp, size_t cap, size_t *len, const char **err)
{
	struct curl_slist *hl = NULL, *t;
	sink s = {resp, cap, 0};
	*status = 0;
	*len = 0;
	*err = NULL;
	for (size_t i = 0; headers && headers[i]; i++) {
		if (!(t = curl_slist_append(hl, headers[i])))
			goto nomem;
		hl = t;
	}
	if (h->auth) {
		if (!(t = curl_slist_append(hl, h->auth)))
			goto nomem;
		hl = t;
	}
	curl_easy_setopt(h->c, CURLOPT_URL, url);
	curl_easy_setopt(h->c, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(h->c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h->c, CURLOPT_WRITEDATA, &s);
	CURLcode cc = curl_easy_perform(h->c);
	/* The list is freed below: the handle must not keep pointing at it. */
	curl_easy_setopt(h->c, CURLOPT_HTTPHEADER, NULL);
	curl_slist_free_all(hl);
	if (cc != CURLE_OK) {
		*err = curl_easy_strerror(cc);
		return SP_EIO;
	}
	curl_easy_getinfo(h->c, CURLINFO_RESPONSE_CODE, status);
	*len = s.len;
	return SP_OK;
nomem:
	curl_slist_free_all(hl);
	return SP_ENOMEM;
}
