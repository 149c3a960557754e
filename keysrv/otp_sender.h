/*
 * Delivery of one-time registration codes, behind one interface:
 *   dev      logs "otp <phone> <code>" and writes the code to <otp-dir>/<phone>
 *            (temp file + rename, so a reader never sees half a code);
 *   webhook  POSTs {"phone":"...","code":"..."} to an https:// URL (libcurl, the
 *            certificate checked against the system CAs or `ca_file`) from a thread of
 *            its own, so a slow receiver never holds a request worker. A transient
 *            failure (no answer, 5xx, 429) is retried `retries` times with a doubling
 *            backoff; then it is logged and counted and the user asks for a new code.
 *            http:// is accepted only with `insecure_http` (warned at start).
 * Only the dev sender ever logs a code.
 */
#ifndef KEYS_OTP_SENDER_H
#define KEYS_OTP_SENDER_H

#include <stdbool.h>

typedef struct keys_otp_sender keys_otp_sender;

typedef struct keys_otp_sender_cfg {
	const char *mode;        /* "dev" or "webhook" */
	const char *dir;         /* dev: directory for code files (created if missing) */
	const char *url;         /* webhook: https://host[:port]/path */
	int timeout_ms;          /* webhook: per request */
	unsigned queue_max;      /* webhook: codes waiting to be posted */
	const char *ca_file;     /* webhook: PEM CA bundle (NULL: the system's) */
	bool insecure_http;      /* webhook: also accept http:// */
	unsigned retries;        /* webhook: tries after the first, on transient failures */
	unsigned backoff_ms;     /* webhook: first backoff (0: 500), doubled each retry */
} keys_otp_sender_cfg;

/* On SP_OK the caller owns *out (keys_otp_sender_free). SP_ECONFIG for an unknown mode,
 * a missing dir/url, an unreadable CA file or a URL that is not https://host[:port][/path]
 * (or http:// with insecure_http). */
int keys_otp_sender_new(keys_otp_sender **out, const keys_otp_sender_cfg *cfg);

/* Stops the webhook thread (dropping codes not yet posted) and frees the sender. */
void keys_otp_sender_free(keys_otp_sender *s);

/* Sends (dev) or queues (webhook) one code. phone is a validated E.164 string, code six
 * digits. Returns SP_OK, SP_EIO (dev write failed) or SP_EFULL (webhook queue full). */
int keys_otp_send(keys_otp_sender *s, const char *phone, const char *code);

#endif
