/*
 * HTTPS POSTs to the push gateway (libcurl, blocking, one reused handle so connections are
 * kept alive): https only, the peer's certificate and host name checked (against
 * --gateway-ca, or the system's CAs), no redirects, a time limit per request. Not
 * thread-safe: one ps_http per thread.
 */
#ifndef PS_HTTP_H
#define PS_HTTP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ps_http ps_http;

/* ca_file: PEM bundle the gateway's certificate must chain to (NULL: the system's).
 * bearer: sent as "Authorization: Bearer <bearer>" when non-NULL (copied, wiped on free).
 * SP_ENOMEM, SP_EIO (libcurl would not start). */
int ps_http_new(const char *ca_file, const char *bearer, int timeout_ms, ps_http **out);
void ps_http_free(ps_http *h);

/* POSTs `body` to `url` with `headers` (NULL-terminated). *status: the HTTP status, 0 when
 * no answer came (connection, TLS or time-out failure: *err names it, static text). The
 * answer's first `cap` bytes go to resp (*len of them). SP_OK when an answer came (any
 * status), SP_EIO when none did, SP_ENOMEM. */
int ps_http_post(ps_http *h, const char *url, const char *const *headers, const char *body,
		 long *status, char *resp, size_t cap, size_t *len, const char **err);

#endif
