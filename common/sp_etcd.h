/*
 * A small etcd v3 client over etcd's HTTP/JSON gateway (`/v3/...`, etcd 3.4): put, range,
 * delete, transactions, leases (grant, keep-alive, revoke) and watch. It is the control
 * plane's arbiter (leader keys, sync sets, the cluster map); no message data goes there.
 *
 * Calls are blocking, bounded by the configured timeout, and made with libcurl: a client
 * belongs to one thread at a time (the replication loop runs its etcd calls on a thread
 * of its own, as Patroni's HA loop does). Several endpoints may be given; a call that
 * cannot reach one tries the next, and the client keeps using the one that answered.
 *
 * Keys and values are byte strings (base64 on the wire, handled here). Revisions, lease
 * ids and TTLs are int64. Results that carry key-values are owned by the caller and freed
 * with sp_etcd_kvs_free / sp_etcd_txn_result_free.
 *
 * Errors: SP_EUNAVAIL (no endpoint reachable or etcd unavailable), SP_ETIMEDOUT,
 * SP_ENOTFOUND (no such lease), SP_ERANGE (a watch revision already compacted),
 * SP_EAUTH (TLS or credentials refused), SP_EPROTO (an answer we cannot parse), SP_EIO
 * (any other etcd error, logged with etcd's message), SP_ENOMEM, SP_EINVAL.
 */
#ifndef SP_ETCD_H
#define SP_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sp_etcd sp_etcd;

typedef struct sp_etcd_cfg {
	const char *endpoints; /* "http://127.0.0.1:2379,https://10.0.0.2:2379" */
	const char *ca;        /* PEM of the CA that signs etcd's certificate (https) */
	const char *cert, *key; /* client certificate and key (PEM), when etcd asks for one */
	/* An etcd user (etcd with auth enabled). etcd's gateway does not take the client
	 * certificate's name as the user, so a client authenticates with a password and
	 * sends the token it gets on every call, authenticating again when etcd says the
	 * token is no longer valid (a simple token lapses after --auth-token-ttl idle).
	 * NULL: no user. */
	const char *user, *password;
	long timeout_ms;       /* per call; 0: 2000 */
} sp_etcd_cfg;

typedef struct sp_etcd_kv {
	uint8_t *key, *value; /* NUL-terminated for convenience; lengths exclude it */
	size_t key_len, value_len;
	int64_t create_rev, mod_rev, version, lease;
} sp_etcd_kv;

typedef struct sp_etcd_kvs {
	sp_etcd_kv *v;
	size_t n;
	int64_t rev; /* the store's revision when the call was served */
} sp_etcd_kvs;

/* Copies cfg's strings. On SP_OK the caller owns *out (sp_etcd_free). */
int sp_etcd_new(const sp_etcd_cfg *cfg, sp_etcd **out);
void sp_etcd_free(sp_etcd *e);

/* Puts key=value (attached to `lease` unless 0). *rev (optional): the new revision. */
int sp_etcd_put(sp_etcd *e, const void *key, size_t klen, const void *value, size_t vlen,
		int64_t lease, int64_t *rev);

/* The key, or with `prefix` every key that starts with it, in key order. */
int sp_etcd_get(sp_etcd *e, const void *key, size_t klen, bool prefix, sp_etcd_kvs *out);

/* Deletes the key (or the prefix). *deleted (optional): how many went. */
int sp_etcd_delete(sp_etcd *e, const void *key, size_t klen, bool prefix, int64_t *deleted);

void sp_etcd_kvs_free(sp_etcd_kvs *kvs);

/* ---- transactions ---- */

typedef enum { SP_ETCD_EQUAL, SP_ETCD_NOT_EQUAL, SP_ETCD_GREATER, SP_ETCD_LESS } sp_etcd_cmp_result;
typedef enum {
	SP_ETCD_VERSION, /* num */
	SP_ETCD_CREATE,  /* num: create revision (0: the key does not exist) */
	SP_ETCD_MOD,     /* num: last modification revision */
	SP_ETCD_VALUE,   /* value, vlen */
	SP_ETCD_LEASE,   /* num: lease id */
} sp_etcd_cmp_target;

typedef struct sp_etcd_cmp {
	const void *key;
	size_t klen;
	sp_etcd_cmp_result result;
	sp_etcd_cmp_target target;
	int64_t num;
	const void *value;
	size_t vlen;
} sp_etcd_cmp;

typedef enum { SP_ETCD_OP_PUT, SP_ETCD_OP_GET, SP_ETCD_OP_DELETE } sp_etcd_op_kind;

typedef struct sp_etcd_op {
	sp_etcd_op_kind kind;
	const void *key;
	size_t klen;
	const void *value; /* PUT */
	size_t vlen;
	int64_t lease;     /* PUT */
	bool prefix;       /* GET, DELETE */
} sp_etcd_op;

typedef struct sp_etcd_txn_result {
	bool succeeded; /* every compare held: the success ops ran */
	int64_t rev;
	sp_etcd_kvs *gets; /* one per op of the branch that ran (empty for PUT/DELETE) */
	size_t ngets;
} sp_etcd_txn_result;

/* If every compare holds, runs `then` ops, else `otherwise` ops, atomically. */
int sp_etcd_txn(sp_etcd *e, const sp_etcd_cmp *cmps, size_t ncmps, const sp_etcd_op *then,
		size_t nthen, const sp_etcd_op *otherwise, size_t notherwise, sp_etcd_txn_result *res);
void sp_etcd_txn_result_free(sp_etcd_txn_result *res);

/* ---- leases ---- */

/* Grants a lease of `ttl_s` seconds; *granted_ttl (optional) is what etcd granted. */
int sp_etcd_lease_grant(sp_etcd *e, int64_t ttl_s, int64_t *id, int64_t *granted_ttl);
/* Renews the lease once; SP_ENOTFOUND when it has expired (or never was). */
int sp_etcd_lease_keepalive(sp_etcd *e, int64_t id, int64_t *ttl);
/* Revokes the lease (its keys go with it); SP_ENOTFOUND when it is gone already. */
int sp_etcd_lease_revoke(sp_etcd *e, int64_t id);

/* ---- watch ---- */

typedef struct sp_etcd_event {
	bool deleted; /* else a put */
	sp_etcd_kv kv; /* borrowed for the callback's duration */
} sp_etcd_event;

/* Called on the watching thread with each batch of events (`rev` is the revision of the
 * batch's header). Returns true to keep watching, false to stop. */
typedef bool (*sp_etcd_watch_cb)(void *arg, int64_t rev, const sp_etcd_event *ev, size_t n);

/* Watches the key (or prefix) from `start_rev` (0: from now) for at most `max_ms`.
 * Returns SP_OK when the callback stopped it, SP_ETIMEDOUT when max_ms passed, SP_ERANGE
 * when start_rev is compacted (read the state again, then watch from its revision). */
int sp_etcd_watch(sp_etcd *e, const void *key, size_t klen, bool prefix, int64_t start_rev,
		  long max_ms, sp_etcd_watch_cb cb, void *arg);

#endif
