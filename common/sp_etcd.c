#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>
#include <sodium.h>

#include "sp_error.h"
#include "sp_etcd.h"
#include "sp_log.h"

#define MAX_ENDPOINTS 16
#define MAX_REPLY (16u << 20) /* a range answer larger than this is refused */
#define B64 sodium_base64_VARIANT_ORIGINAL
#define AUTH_TIMEOUT_MS 10000L /* an authentication's bound */

struct sp_etcd {
	char *eps[MAX_ENDPOINTS];
	size_t neps, cur; /* cur: the endpoint that answered last */
	char *ca, *cert, *key;
	char *user, *password;
	long timeout_ms;
	CURL *curl;
	struct curl_slist *headers; /* with the token once authenticated */
	bool authed;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;

static void
global_init(void)
{
	global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static char *
dup_opt(const char *s, bool *fail)
{
	if (!s || !*s)
		return NULL;
	char *d = strdup(s);
	if (!d)
		*fail = true;
	return d;
}

int
sp_etcd_new(const sp_etcd_cfg *cfg, sp_etcd **out)
{
	if (!cfg || !cfg->endpoints || !*cfg->endpoints)
		return SP_EINVAL;
	pthread_once(&global_once, global_init);
	if (global_rc != CURLE_OK)
		return SP_ENOMEM;
	sp_etcd *e = calloc(1, sizeof(*e));
	if (!e)
		return SP_ENOMEM;
	bool fail = false;
	const char *p = cfg->endpoints;
	while (*p && !fail) {
		size_t n = strcspn(p, ",");
		if (n > 0) {
			if (e->neps == MAX_ENDPOINTS || n > 200 ||
			    (strncmp(p, "http://", 7) != 0 && strncmp(p, "https://", 8) != 0)) {
				sp_etcd_free(e);
				return SP_EINVAL;
			}
			if (!(e->eps[e->neps] = strndup(p, n)))
				fail = true;
			else
				e->neps++;
		}
		p += n + (p[n] == ',');
	}
	e->ca = dup_opt(cfg->ca, &fail);
	e->cert = dup_opt(cfg->cert, &fail);
	e->key = dup_opt(cfg->key, &fail);
	e->user = dup_opt(cfg->user, &fail);
	e->password = dup_opt(cfg->password, &fail);
	if (!fail && (!e->user) != (!e->password)) {
		sp_etcd_free(e);
		return SP_EINVAL;
	}
	e->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 2000;
	e->curl = curl_easy_init();
	e->headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (fail || !e->curl || !e->headers || e->neps == 0) {
		int rc = fail || !e->curl || !e->headers ? SP_ENOMEM : SP_EINVAL;
		sp_etcd_free(e);
		return rc;
	}
	*out = e;
	return SP_OK;
}

void
sp_etcd_free(sp_etcd *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < e->neps; i++)
		free(e->eps[i]);
	free(e->ca);
	free(e->cert);
	free(e->key);
	free(e->user);
	if (e->password) {
		sodium_memzero(e->password, strlen(e->password));
		free(e->password);
	}
	if (e->curl)
		curl_easy_cleanup(e->curl);
	curl_slist_free_all(e->headers);
	free(e);
}

/* ---- JSON helpers ---- */

static json_t *
b64_json(const void *p, size_t len)
{
	size_t cap = sodium_base64_ENCODED_LEN(len, B64);
	char *s = malloc(cap);
	if (!s)
		return NULL;
	sodium_bin2base64(s, cap, p, len, B64);
	json_t *j = json_string(s);
	free(s);
	return j;
}

/* Decodes a base64 member into a NUL-terminated buffer (an absent member is empty). */
static int
b64_take(json_t *o, const char *name, uint8_t **out, size_t *len)
{
	const char *s = json_string_value(json_object_get(o, name));
	size_t slen = s ? strlen(s) : 0;
	uint8_t *buf = malloc(slen / 4 * 3 + 4);
	if (!buf)
		return SP_ENOMEM;
	size_t n = 0;
	if (slen && sodium_base642bin(buf, slen / 4 * 3 + 3, s, slen, NULL, &n, NULL, B64) != 0) {
		free(buf);
		return SP_EPROTO;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return SP_OK;
}

/* The gateway writes int64 as strings (and leaves out zero values). */
static int64_t
num(json_t *o, const char *name)
{
	json_t *v = json_object_get(o, name);
	if (json_is_string(v))
		return strtoll(json_string_value(v), NULL, 10);
	if (json_is_integer(v))
		return (int64_t)json_integer_value(v);
	return 0;
}

static json_t *
num_json(int64_t v)
{
	char buf[24];
	snprintf(buf, sizeof(buf), "%lld", (long long)v);
	return json_string(buf);
}

/* range_end for "every key with this prefix": the prefix with its last byte that is not
 * 0xff incremented and the rest cut; "\0" (all keys from key on) when there is none. */
static json_t *
prefix_end_json(const void *key, size_t klen)
{
	uint8_t *end = malloc(klen ? klen : 1);
	if (!end)
		return NULL;
	memcpy(end, key, klen);
	size_t n = klen;
	while (n > 0 && end[n - 1] == 0xff)
		n--;
	json_t *j;
	if (n == 0) {
		static const uint8_t zero = 0;
		j = b64_json(&zero, 1);
	} else {
		end[n - 1]++;
		j = b64_json(end, n);
	}
	free(end);
	return j;
}

/* Sets name to a new reference, failing the whole object on ENOMEM. */
static bool
put(json_t *o, const char *name, json_t *v)
{
	return v && json_object_set_new(o, name, v) == 0;
}

static json_t *
key_req(const void *key, size_t klen, bool prefix)
{
	json_t *o = json_object();
	if (!o || !put(o, "key", b64_json(key, klen)) ||
	    (prefix && !put(o, "range_end", prefix_end_json(key, klen)))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static void
kv_fini(sp_etcd_kv *kv)
{
	free(kv->key);
	free(kv->value);
	memset(kv, 0, sizeof(*kv));
}

static int
kv_parse(json_t *o, sp_etcd_kv *kv)
{
	memset(kv, 0, sizeof(*kv));
	if (!json_is_object(o))
		return SP_EPROTO;
	int rc = b64_take(o, "key", &kv->key, &kv->key_len);
	if (rc == SP_OK)
		rc = b64_take(o, "value", &kv->value, &kv->value_len);
	if (rc) {
		kv_fini(kv);
		return rc;
	}
	kv->create_rev = num(o, "create_revision");
	kv->mod_rev = num(o, "mod_revision");
	kv->version = num(o, "version");
	kv->lease = num(o, "lease");
	return SP_OK;
}

void
sp_etcd_kvs_free(sp_etcd_kvs *kvs)
{
	if (!kvs)
		return;
	for (size_t i = 0; i < kvs->n; i++)
		kv_fini(&kvs->v[i]);
	free(kvs->v);
	memset(kvs, 0, sizeof(*kvs));
}

/* A range response ({kvs, count, header?}) into `out`; `rev` comes from the caller. */
static int
kvs_parse(json_t *o, int64_t rev, sp_etcd_kvs *out)
{
	json_t *arr = json_object_get(o, "kvs");
	size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
	memset(out, 0, sizeof(*out));
	out->rev = rev;
	if (n == 0)
		return SP_OK;
	if (!(out->v = calloc(n, sizeof(*out->v))))
		return SP_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		int rc = kv_parse(json_array_get(arr, i), &out->v[i]);
		if (rc) {
			sp_etcd_kvs_free(out);
			return rc;
		}
		out->n++;
	}
	return SP_OK;
}

static int64_t
header_rev(json_t *o)
{
	return num(json_object_get(o, "header"), "revision");
}

/* ---- HTTP ---- */

typedef struct reply_buf {
	char *p;
	size_t len, cap;
	bool too_big;
} reply_buf;

static size_t
on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	reply_buf *b = arg;
	size_t n = size * nmemb;
	if (b->len + n + 1 > MAX_REPLY) {
		b->too_big = true;
		return 0;
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return 0;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return n;
}

static void
setup_request(sp_etcd *e, const char *url, const char *body, long timeout_ms)
{
	CURL *c = e->curl;
	curl_easy_reset(c);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_POST, 1L);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, e->headers);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, e->timeout_ms < 1000 ? e->timeout_ms : 1000L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	if (e->ca)
		curl_easy_setopt(c, CURLOPT_CAINFO, e->ca);
	if (e->cert)
		curl_easy_setopt(c, CURLOPT_SSLCERT, e->cert);
	if (e->key)
		curl_easy_setopt(c, CURLOPT_SSLKEY, e->key);
}

/* Whether nothing reached etcd, so that another endpoint may be tried safely. */
static bool
not_sent(CURLcode cc)
{
	return cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ||
	       cc == CURLE_COULDNT_RESOLVE_PROXY;
}

static int
curl_err(const sp_etcd *e, CURLcode cc)
{
	switch (cc) {
	case CURLE_OPERATION_TIMEDOUT:
		return SP_ETIMEDOUT;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CACERT_BADFILE:
		sp_warn("etcd %s: %s", e->eps[e->cur], curl_easy_strerror(cc));
		return SP_EAUTH;
	case CURLE_OUT_OF_MEMORY:
		return SP_ENOMEM;
	default:
		return SP_EUNAVAIL;
	}
}

/* Maps etcd's {"error", "code"} (gRPC codes) to ours. */
static int
etcd_err(const sp_etcd *e, const char *path, json_t *o)
{
	int64_t code = num(o, "code");
	const char *msg = json_string_value(json_object_get(o, "message"));
	switch (code) {
	case 5: /* NOT_FOUND: e.g. an expired lease */
		return SP_ENOTFOUND;
	case 4: /* DEADLINE_EXCEEDED */
		return SP_ETIMEDOUT;
	case 11: /* OUT_OF_RANGE: a compacted revision */
		return SP_ERANGE;
	case 7:
	case 16: /* PERMISSION_DENIED, UNAUTHENTICATED */
		sp_warn("etcd %s%s: %s", e->eps[e->cur], path, msg ? msg : "?");
		return SP_EAUTH;
	case 14: /* UNAVAILABLE: no leader, shutting down */
		return SP_EUNAVAIL;
	default:
		sp_warn("etcd %s%s: %s (code %lld)", e->eps[e->cur], path, msg ? msg : "?",
			(long long)code);
		return SP_EIO;
	}
}

/* POSTs `body` to `path` and parses the answer into *resp, within timeout_ms. */
static int
call_body(sp_etcd *e, const char *path, const char *body, long timeout_ms, json_t **resp)
{
	int rc = SP_EUNAVAIL;
	for (size_t tries = 0; tries < e->neps; tries++) {
		char url[256];
		reply_buf b = {0};
		snprintf(url, sizeof(url), "%s%s", e->eps[e->cur], path);
		setup_request(e, url, body, timeout_ms);
		curl_easy_setopt(e->curl, CURLOPT_WRITEFUNCTION, on_body);
		curl_easy_setopt(e->curl, CURLOPT_WRITEDATA, &b);
		CURLcode cc = curl_easy_perform(e->curl);
		if (cc != CURLE_OK) {
			free(b.p);
			rc = b.too_big ? SP_ETOOBIG : curl_err(e, cc);
			if (not_sent(cc)) {
				e->cur = (e->cur + 1) % e->neps;
				continue;
			}
			break;
		}
		json_error_t jerr;
		json_t *o = b.p ? json_loadb(b.p, b.len, 0, &jerr) : NULL;
		free(b.p);
		if (!json_is_object(o)) {
			json_decref(o);
			rc = SP_EPROTO;
			break;
		}
		if (json_object_get(o, "error")) {
			rc = etcd_err(e, path, o);
			json_decref(o);
			break;
		}
		*resp = o;
		rc = SP_OK;
		break;
	}
	return rc;
}

/* Gets a token for the configured user and puts it in the headers of every call. */
static int
authenticate(sp_etcd *e)
{
	json_t *req = json_object(), *resp = NULL;
	if (!req || !put(req, "name", json_string(e->user)) ||
	    !put(req, "password", json_string(e->password))) {
		json_decref(req);
		return SP_ENOMEM;
	}
	char *body = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!body)
		return SP_ENOMEM;
	/* Without the old token: etcd checks a token before the call's own credentials. */
	curl_slist_free_all(e->headers);
	e->headers = curl_slist_append(NULL, "Content-Type: application/json");
	e->authed = false;
	/* etcd checks the password with bcrypt, which takes a while on a busy machine: an
	 * attempt given up early would only be made again, and each costs etcd the same. */
	long timeout = e->timeout_ms > AUTH_TIMEOUT_MS ? e->timeout_ms : AUTH_TIMEOUT_MS;
	int rc = e->headers ? call_body(e, "/v3/auth/authenticate", body, timeout, &resp) : SP_ENOMEM;
	sodium_memzero(body, strlen(body));
	free(body);
	if (rc)
		return rc;
	const char *token = json_string_value(json_object_get(resp, "token"));
	char hdr[600];
	if (!token || !*token || strlen(token) > 512 || strpbrk(token, "\r\n")) {
		json_decref(resp);
		return SP_EPROTO;
	}
	snprintf(hdr, sizeof(hdr), "Authorization: %s", token);
	json_decref(resp);
	struct curl_slist *h = curl_slist_append(e->headers, hdr);
	sodium_memzero(hdr, sizeof(hdr));
	if (!h)
		return SP_ENOMEM;
	e->headers = h;
	e->authed = true;
	return SP_OK;
}

/* Authenticates first when a user is configured and no token is held. */
static int
ensure_auth(sp_etcd *e)
{
	return e->user && !e->authed ? authenticate(e) : SP_OK;
}

/* POSTs `req` (consumed) to `path` and parses the answer into *resp; with a user, once
 * more after authenticating again when etcd refuses the token. */
static int
call(sp_etcd *e, const char *path, json_t *req, json_t **resp)
{
	if (!req)
		return SP_ENOMEM;
	char *body = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!body)
		return SP_ENOMEM;
	int rc = ensure_auth(e);
	if (rc == SP_OK)
		rc = call_body(e, path, body, e->timeout_ms, resp);
	if (rc == SP_EAUTH && e->user) {
		e->authed = false;
		if ((rc = ensure_auth(e)) == SP_OK)
			rc = call_body(e, path, body, e->timeout_ms, resp);
	}
	free(body);
	return rc;
}

/* ---- KV ---- */

int
sp_etcd_put(sp_etcd *e, const void *key, size_t klen, const void *value, size_t vlen,
	    int64_t lease, int64_t *rev)
{
	json_t *req = key_req(key, klen, false), *resp;
	if (req && (!put(req, "value", b64_json(value, vlen)) ||
		    (lease && !put(req, "lease", num_json(lease))))) {
		json_decref(req);
		req = NULL;
	}
	int rc = call(e, "/v3/kv/put", req, &resp);
	if (rc)
		return rc;
	if (rev)
		*rev = header_rev(resp);
	json_decref(resp);
	return SP_OK;
}

int
sp_etcd_get(sp_etcd *e, const void *key, size_t klen, bool prefix, sp_etcd_kvs *out)
{
	json_t *resp;
	int rc = call(e, "/v3/kv/range", key_req(key, klen, prefix), &resp);
	if (rc)
		return rc;
	rc = kvs_parse(resp, header_rev(resp), out);
	json_decref(resp);
	return rc;
}

int
sp_etcd_delete(sp_etcd *e, const void *key, size_t klen, bool prefix, int64_t *deleted)
{
	json_t *resp;
	int rc = call(e, "/v3/kv/deleterange", key_req(key, klen, prefix), &resp);
	if (rc)
		return rc;
	if (deleted)
		*deleted = num(resp, "deleted");
	json_decref(resp);
	return SP_OK;
}

/* ---- transactions ---- */

static const char *const cmp_results[] = {"EQUAL", "NOT_EQUAL", "GREATER", "LESS"};
static const char *const cmp_targets[] = {"VERSION", "CREATE", "MOD", "VALUE", "LEASE"};
static const char *const cmp_fields[] = {"version", "create_revision", "mod_revision", "value",
					 "lease"};

static json_t *
cmp_json(const sp_etcd_cmp *c)
{
	if ((unsigned)c->result > SP_ETCD_LESS || (unsigned)c->target > SP_ETCD_LEASE)
		return NULL;
	json_t *o = key_req(c->key, c->klen, false);
	if (!o || !put(o, "result", json_string(cmp_results[c->result])) ||
	    !put(o, "target", json_string(cmp_targets[c->target])) ||
	    !put(o, cmp_fields[c->target],
		 c->target == SP_ETCD_VALUE ? b64_json(c->value, c->vlen) : num_json(c->num))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static json_t *
op_json(const sp_etcd_op *op)
{
	json_t *body = key_req(op->key, op->klen, op->kind != SP_ETCD_OP_PUT && op->prefix);
	const char *name;
	switch (op->kind) {
	case SP_ETCD_OP_PUT:
		name = "request_put";
		if (body && (!put(body, "value", b64_json(op->value, op->vlen)) ||
			     (op->lease && !put(body, "lease", num_json(op->lease))))) {
			json_decref(body);
			body = NULL;
		}
		break;
	case SP_ETCD_OP_GET:
		name = "request_range";
		break;
	case SP_ETCD_OP_DELETE:
		name = "request_delete_range";
		break;
	default:
		json_decref(body);
		return NULL;
	}
	json_t *o = json_object();
	if (!o || !put(o, name, body)) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static bool
add_all(json_t *req, const char *name, const void *items, size_t n, size_t size,
	json_t *(*conv)(const void *))
{
	json_t *arr = json_array();
	if (!put(req, name, arr))
		return false;
	for (size_t i = 0; i < n; i++)
		if (json_array_append_new(arr, conv((const char *)items + i * size)) != 0)
			return false;
	return true;
}

static json_t *
cmp_conv(const void *p)
{
	return cmp_json(p);
}

static json_t *
op_conv(const void *p)
{
	return op_json(p);
}

void
sp_etcd_txn_result_free(sp_etcd_txn_result *res)
{
	if (!res)
		return;
	for (size_t i = 0; i < res->ngets; i++)
		sp_etcd_kvs_free(&res->gets[i]);
	free(res->gets);
	memset(res, 0, sizeof(*res));
}

int
sp_etcd_txn(sp_etcd *e, const sp_etcd_cmp *cmps, size_t ncmps, const sp_etcd_op *then,
	    size_t nthen, const sp_etcd_op *otherwise, size_t notherwise, sp_etcd_txn_result *res)
{
	json_t *req = json_object(), *resp;
	memset(res, 0, sizeof(*res));
	if (req && (!add_all(req, "compare", cmps, ncmps, sizeof(*cmps), cmp_conv) ||
		    !add_all(req, "success", then, nthen, sizeof(*then), op_conv) ||
		    !add_all(req, "failure", otherwise, notherwise, sizeof(*otherwise), op_conv))) {
		json_decref(req);
		req = NULL;
	}
	int rc = call(e, "/v3/kv/txn", req, &resp);
	if (rc)
		return rc;
	res->succeeded = json_is_true(json_object_get(resp, "succeeded"));
	res->rev = header_rev(resp);
	size_t nops = res->succeeded ? nthen : notherwise;
	json_t *responses = json_object_get(resp, "responses");
	if (nops && !(res->gets = calloc(nops, sizeof(*res->gets))))
		rc = SP_ENOMEM;
	for (size_t i = 0; rc == SP_OK && i < nops; i++) {
		json_t *r = json_object_get(json_array_get(responses, i), "response_range");
		if (r)
			rc = kvs_parse(r, res->rev, &res->gets[i]);
		if (rc == SP_OK)
			res->ngets++;
	}
	json_decref(resp);
	if (rc)
		sp_etcd_txn_result_free(res);
	return rc;
}

/* ---- leases ---- */

static json_t *
lease_req(const char *name, int64_t v)
{
	json_t *o = json_object();
	if (!o || !put(o, name, name[0] == 'T' ? json_integer(v) : num_json(v))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

int
sp_etcd_lease_grant(sp_etcd *e, int64_t ttl_s, int64_t *id, int64_t *granted_ttl)
{
	json_t *resp;
	if (ttl_s <= 0)
		return SP_EINVAL;
	int rc = call(e, "/v3/lease/grant", lease_req("TTL", ttl_s), &resp);
	if (rc)
		return rc;
	*id = num(resp, "ID");
	if (granted_ttl)
		*granted_ttl = num(resp, "TTL");
	json_decref(resp);
	return *id ? SP_OK : SP_EPROTO;
}

int
sp_etcd_lease_keepalive(sp_etcd *e, int64_t id, int64_t *ttl)
{
	json_t *resp;
	int rc = call(e, "/v3/lease/keepalive", lease_req("ID", id), &resp);
	if (rc)
		return rc;
	/* The streaming endpoint wraps its answer in "result"; an expired lease has no TTL. */
	int64_t t = num(json_object_get(resp, "result"), "TTL");
	json_decref(resp);
	if (t <= 0)
		return SP_ENOTFOUND;
	if (ttl)
		*ttl = t;
	return SP_OK;
}

int
sp_etcd_lease_revoke(sp_etcd *e, int64_t id)
{
	json_t *resp;
	int rc = call(e, "/v3/lease/revoke", lease_req("ID", id), &resp);
	if (rc == SP_OK)
		json_decref(resp);
	return rc;
}

/* ---- watch ---- */

typedef struct watch_state {
	reply_buf b;
	sp_etcd_watch_cb cb;
	void *arg;
	bool stopped, created;
	int rc; /* an error found in the stream */
} watch_state;

/* One message of the stream: {"result": {header, created?, canceled?, events?}}. */
static bool
watch_message(watch_state *w, json_t *o)
{
	json_t *err = json_object_get(o, "error");
	if (err) {
		/* The gateway puts a stream's error in an object: {"grpc_code", "message"}. */
		int64_t code = json_is_object(err) ? num(err, "grpc_code") : num(o, "code");
		w->rc = code == 11 ? SP_ERANGE : code == 16 || code == 7 ? SP_EAUTH : SP_EIO;
		return false;
	}
	json_t *r = json_object_get(o, "result");
	if (!json_is_object(r)) {
		w->rc = SP_EPROTO;
		return false;
	}
	if (json_is_true(json_object_get(r, "canceled"))) {
		w->rc = num(r, "compact_revision") ? SP_ERANGE : SP_EIO;
		return false;
	}
	if (json_is_true(json_object_get(r, "created")))
		w->created = true;
	json_t *events = json_object_get(r, "events");
	size_t n = json_is_array(events) ? json_array_size(events) : 0;
	if (n == 0)
		return true;
	sp_etcd_event *ev = calloc(n, sizeof(*ev));
	if (!ev) {
		w->rc = SP_ENOMEM;
		return false;
	}
	size_t got = 0;
	for (; got < n; got++) {
		json_t *je = json_array_get(events, got);
		const char *type = json_string_value(json_object_get(je, "type"));
		ev[got].deleted = type && strcmp(type, "DELETE") == 0;
		if ((w->rc = kv_parse(json_object_get(je, "kv"), &ev[got].kv)))
			break;
	}
	bool go_on = w->rc == SP_OK && w->cb(w->arg, header_rev(r), ev, n);
	for (size_t i = 0; i < got; i++)
		kv_fini(&ev[i].kv);
	free(ev);
	if (!go_on && w->rc == SP_OK)
		w->stopped = true;
	return go_on;
}

static size_t
on_watch_body(char *data, size_t size, size_t nmemb, void *arg)
{
	watch_state *w = arg;
	size_t n = size * nmemb;
	if (on_body(data, size, nmemb, &w->b) != n) {
		w->rc = SP_ETOOBIG;
		return 0;
	}
	/* Parse every whole JSON value buffered; keep the rest for the next chunk. */
	size_t off = 0;
	while (off < w->b.len) {
		while (off < w->b.len && (w->b.p[off] == '\n' || w->b.p[off] == '\r' || w->b.p[off] == ' '))
			off++;
		if (off == w->b.len)
			break;
		json_error_t jerr;
		json_t *o = json_loadb(w->b.p + off, w->b.len - off, JSON_DISABLE_EOF_CHECK, &jerr);
		if (!o)
			break; /* incomplete: wait for more bytes */
		off += (size_t)jerr.position;
		bool go_on = watch_message(w, o);
		json_decref(o);
		if (!go_on)
			return 0;
	}
	memmove(w->b.p, w->b.p + off, w->b.len - off);
	w->b.len -= off;
	return n;
}

int
sp_etcd_watch(sp_etcd *e, const void *key, size_t klen, bool prefix, int64_t start_rev,
	      long max_ms, sp_etcd_watch_cb cb, void *arg)
{
	json_t *create = key_req(key, klen, prefix), *req = json_object();
	if (create && start_rev > 0 && !put(create, "start_revision", num_json(start_rev))) {
		json_decref(create);
		create = NULL;
	}
	if (!req || !put(req, "create_request", create)) {
		json_decref(req);
		return SP_ENOMEM;
	}
	char *body = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	if (!body)
		return SP_ENOMEM;
	int rc = ensure_auth(e);
	if (rc) {
		free(body);
		return rc;
	}
	rc = SP_EUNAVAIL;
	bool reauthed = false;
	for (size_t tries = 0; tries < e->neps; tries++) {
		char url[256];
		watch_state w = {.cb = cb, .arg = arg};
		snprintf(url, sizeof(url), "%s/v3/watch", e->eps[e->cur]);
		setup_request(e, url, body, max_ms);
		curl_easy_setopt(e->curl, CURLOPT_WRITEFUNCTION, on_watch_body);
		curl_easy_setopt(e->curl, CURLOPT_WRITEDATA, &w);
		CURLcode cc = curl_easy_perform(e->curl);
		free(w.b.p);
		if (w.stopped)
			rc = SP_OK;
		else if (w.rc)
			rc = w.rc;
		else if (cc == CURLE_OPERATION_TIMEDOUT)
			rc = SP_ETIMEDOUT;
		else if (cc == CURLE_OK)
			rc = SP_EUNAVAIL; /* the server ended the stream */
		else
			rc = curl_err(e, cc);
		if (cc != CURLE_OK && not_sent(cc)) {
			e->cur = (e->cur + 1) % e->neps;
			continue;
		}
		if (rc == SP_EAUTH && e->user && !reauthed && !w.created) {
			/* The token lapsed: once more with a new one. */
			reauthed = true;
			e->authed = false;
			if ((rc = ensure_auth(e)))
				break;
			tries--;
			continue;
		}
		break;
	}
	free(body);
	return rc;
}
