/*
 * The handle: sealpost_open/sealpost_close, and the last error it records (message and
 * class) for sealpost_errmsg/sealpost_errclass.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cl_internal.h"
#include "sp_error.h"

int
cl_class_of(int rc)
{
	switch (rc) {
	case SP_ECLOSED:
	case SP_ETIMEDOUT:
	case SP_EIO:
	case SP_ETLS:
	case SP_EUNAVAIL:
		return SEALPOST_ERR_NET;
	case SP_ECRYPTO:
	case SP_EBADSIG:
	case SP_EIDENTITY:
	case SP_EDIGEST:
	case SP_EREPLAY:
	case SP_EMALFORMED:
	case SP_ETRUNC:
		return SEALPOST_ERR_CRYPTO;
	case SP_EINVAL:
	case SP_ENOTFOUND:
		return SEALPOST_ERR_USAGE;
	default:
		return SEALPOST_ERR_OTHER;
	}
}

int
cl_fail(sealpost *sp, int rc, int cls, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(sp->err, sizeof(sp->err), fmt, ap);
	va_end(ap);
	sp->errclass = cls;
	return rc;
}

const char *
sealpost_errmsg(const sealpost *sp)
{
	return sp && sp->err[0] ? sp->err : "no error";
}

int
sealpost_errclass(const sealpost *sp)
{
	return sp && sp->errclass ? sp->errclass : SEALPOST_ERR_OTHER;
}

static char *
dup_opt(const char *s, bool *oom)
{
	if (!s || !*s)
		return NULL;
	char *d = strdup(s);
	if (!d)
		*oom = true;
	return d;
}

void
sealpost_close(sealpost *sp)
{
	if (!sp)
		return;
	cl_disconnect(sp);
	cl_store_close(sp);
	sig_store_free(sp->sig);
	sodium_memzero(sp->auth_sk, sizeof(sp->auth_sk));
	free((char *)sp->cfg.home);
	free((char *)sp->cfg.server);
	free((char *)sp->cfg.router);
	free((char *)sp->cfg.ca);
	free(sp);
}

int
sealpost_open(const sealpost_config *cfg, sealpost **out, char *err, size_t errlen)
{
	*out = NULL;
	if (!cfg || !cfg->home || !*cfg->home) {
		if (err)
			snprintf(err, errlen, "no home directory: use --home or SEALPOST_HOME");
		return SP_EINVAL;
	}
	if (sodium_init() < 0 || sig_crypto_init() != SP_OK) {
		if (err)
			snprintf(err, errlen, "libsodium failed to initialise");
		return SP_ECRYPTO;
	}
	sealpost *sp = calloc(1, sizeof(*sp));
	if (!sp) {
		if (err)
			snprintf(err, errlen, "out of memory");
		return SP_ENOMEM;
	}
	bool oom = false;
	sp->cfg = *cfg;
	sp->cfg.home = dup_opt(cfg->home, &oom);
	sp->cfg.server = dup_opt(cfg->server, &oom);
	sp->cfg.router = dup_opt(cfg->router, &oom);
	sp->cfg.ca = dup_opt(cfg->ca, &oom);
	sp->cut_chunks_left = cfg->test_cut_upload_after;
	int rc = oom ? cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory") : cl_store_open(sp);
	if (rc) {
		if (err)
			snprintf(err, errlen, "%s", sp->err);
		sealpost_close(sp);
		return rc;
	}
	*out = sp;
	return SP_OK;
}
