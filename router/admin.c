/* The operator token of the router's admin listener: read once at start from a file that
 * only its owner may read, then compared in constant time with each request's bearer
 * credential. The token is never logged and its copies are wiped when freed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "internal.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_secret.h"

struct router_admin_token {
	size_t len;
	/* Zero-padded: tokens hold no NUL byte, so the padding cannot match a credential. */
	unsigned char tok[ROUTER_ADMIN_TOKEN_MAX];
};

static bool
is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int
router_admin_token_load(const char *path, router_admin_token **out, char *err, size_t errlen)
{
	/* Room for the longest token: a longer one is refused by sp_secret_read. */
	char buf[ROUTER_ADMIN_TOKEN_MAX + 2];
	size_t n = 0;
	int rc = sp_secret_read("admin-token-file", path, buf, sizeof(buf), &n, err, errlen);
	if (rc)
		return rc;
	rc = SP_ECONFIG;
	if (n < ROUTER_ADMIN_TOKEN_MIN) {
		snprintf(err, errlen, "admin-token-file %s: the token is shorter than %d characters",
			 path, ROUTER_ADMIN_TOKEN_MIN);
		goto out;
	}
	/* Visible ASCII only: the token travels in an HTTP header. */
	for (size_t i = 0; i < n; i++)
		if (buf[i] < 0x21 || buf[i] > 0x7e) {
			snprintf(err, errlen,
				 "admin-token-file %s: the token holds a byte that is not visible "
				 "ASCII (at offset %zu)",
				 path, i);
			goto out;
		}
	router_admin_token *t = calloc(1, sizeof(*t));
	if (!t) {
		rc = SP_ENOMEM;
		goto out;
	}
	memcpy(t->tok, buf, n);
	t->len = n;
	*out = t;
	rc = SP_OK;
out:
	OPENSSL_cleanse(buf, sizeof(buf));
	return rc;
}

router_admin_auth
router_admin_check(const router_admin_token *t, const char *authorization)
{
	SP_ASSERT(t);
	if (!authorization || strncasecmp(authorization, "Bearer", 6) != 0 ||
	    (authorization[6] != ' ' && authorization[6] != '\t'))
		return ROUTER_ADMIN_NO_TOKEN;
	const char *c = authorization + 6;
	while (*c == ' ' || *c == '\t')
		c++;
	size_t len = strlen(c);
	while (len && is_space(c[len - 1]))
		len--;
	if (len == 0)
		return ROUTER_ADMIN_NO_TOKEN;
	if (len > ROUTER_ADMIN_TOKEN_MAX)
		return ROUTER_ADMIN_BAD_TOKEN;
	/* The whole padded buffer is compared, whatever the lengths: the time taken says
	 * nothing about how much of the token matched. */
	unsigned char given[ROUTER_ADMIN_TOKEN_MAX] = {0};
	memcpy(given, c, len);
	int diff = CRYPTO_memcmp(given, t->tok, sizeof(given));
	OPENSSL_cleanse(given, sizeof(given));
	return diff == 0 && len == t->len ? ROUTER_ADMIN_OK : ROUTER_ADMIN_BAD_TOKEN;
}

void
router_admin_token_free(router_admin_token *t)
{
	if (!t)
		return;
	OPENSSL_cleanse(t, sizeof(*t));
	free(t);
}
