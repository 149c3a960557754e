/*
 * The internal-link options every server takes (docs/SECURITY.md "Internal links"): its
 * TLS identity for tls+tcp:// links between servers, which role CAs may connect to its
 * listeners, and --insecure-internal, without which a plain tcp:// link is refused.
 */
#ifndef SP_INTERNAL_H
#define SP_INTERNAL_H

#include <stdbool.h>

#include "sp_config.h"

typedef struct sp_internal_opts {
	char *cert, *key, *ca, *client_ca;
	bool insecure;
} sp_internal_opts;

/* The option table entries bound to `o` (a pointer to an sp_internal_opts with static
 * storage when the table is a static initializer), for a tier's table. */
#define SP_INTERNAL_NOPTS 5
#define SP_INTERNAL_OPTS(o)                                                                    \
	{ "internal-cert", SP_CT_STR, &(o)->cert, NULL,                                        \
	    "PEM certificate (then its role CA) this process presents on tls+tcp:// links", 0, 0 }, \
	{ "internal-key", SP_CT_STR, &(o)->key, NULL, "PEM key of --internal-cert", 0, 0 },    \
	{ "internal-ca", SP_CT_STR, &(o)->ca, NULL,                                            \
	    "PEM bundle of the role CAs the servers this process dials over tls+tcp:// must "  \
	    "chain to (and its listeners' default, see --internal-client-ca)", 0, 0 },         \
	{ "internal-client-ca", SP_CT_STR, &(o)->client_ca, NULL,                              \
	    "PEM bundle of the role CAs whose members may connect to this process's "          \
	    "tls+tcp:// listeners (default: --internal-ca)", 0, 0 },                            \
	{ "insecure-internal", SP_CT_BOOL, &(o)->insecure, NULL,                               \
	    "allow plain tcp:// links between servers (no authentication, no encryption: "     \
	    "tests and single-host development only); logs a warning", 0, 0 }

/*
 * Applies the options before any socket is opened: sets the TLS identity when given
 * (--internal-cert, --internal-key and --internal-ca go together; --internal-client-ca
 * needs them), and checks the process's internal URLs, `urls[0..n)` (NULL entries are
 * skipped; an entry may be a comma-separated list): a tls+tcp:// URL needs the identity,
 * a plain one (tcp://) needs --insecure-internal. Without --insecure-internal, plain
 * links learnt later (the cluster map, etcd) are refused too (sp_nng_require_tls); with
 * it, one warning is logged. SP_OK, or SP_ECONFIG / SP_EIO / SP_ENOMEM (logged, with the
 * option to fix).
 */
int sp_internal_start(const sp_internal_opts *o, const char *const *urls, size_t n);

/* Forgets the identity (sp_nng_tls_fini). */
void sp_internal_stop(void);

#endif
