/* The internal-link options (sp_internal.h). */
#include "sp_internal.h"

#include <string.h>

#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"

/* Checks one URL of a comma-separated list item [u, u + len). */
static int
check_url(const sp_internal_opts *o, const char *u, size_t len, bool have_id)
{
	char url[512];
	if (len == 0)
		return SP_OK;
	if (len >= sizeof(url)) {
		sp_error("internal URL too long: %.64s...", u);
		return SP_ECONFIG;
	}
	memcpy(url, u, len);
	url[len] = '\0';
	if (sp_nng_url_tls(url) && !have_id) {
		sp_error("%s is tls+tcp:// but no identity was given: --internal-cert, "
			 "--internal-key and --internal-ca are needed",
		    url);
		return SP_ECONFIG;
	}
	if (sp_nng_url_plain(url) && !o->insecure) {
		sp_error("%s is a plain internal link: use tls+tcp:// with --internal-cert, "
			 "--internal-key and --internal-ca, or give --insecure-internal (no "
			 "authentication, no encryption; docs/SECURITY.md)",
		    url);
		return SP_ECONFIG;
	}
	return SP_OK;
}

int
sp_internal_start(const sp_internal_opts *o, const char *const *urls, size_t n)
{
	bool have_id = o->cert || o->key || o->ca || o->client_ca;
	if (have_id) {
		if (!o->cert || !o->key || !o->ca) {
			sp_error("--internal-cert, --internal-key and --internal-ca go together "
				 "(--internal-client-ca needs them)");
			return SP_ECONFIG;
		}
		sp_nng_tls tls = { o->cert, o->key, o->ca, o->client_ca };
		int rc = sp_nng_tls_init(&tls);
		if (rc)
			return rc == SP_EINVAL ? SP_ECONFIG : rc;
	}
	for (size_t i = 0; i < n; i++) {
		for (const char *p = urls[i]; p && *p;) {
			const char *comma = strchr(p, ',');
			size_t len = comma ? (size_t)(comma - p) : strlen(p);
			int rc = check_url(o, p, len, have_id);
			if (rc) {
				sp_nng_tls_fini();
				return rc;
			}
			p = comma ? comma + 1 : p + len;
		}
	}
	sp_nng_require_tls(!o->insecure);
	if (o->insecure)
		sp_warn("--insecure-internal: links between servers may be plain tcp://, with no "
			"authentication and no encryption: anyone who reaches an internal port can "
			"read, write and delete what it serves (docs/SECURITY.md)");
	return SP_OK;
}

void
sp_internal_stop(void)
{
	sp_nng_tls_fini();
}
