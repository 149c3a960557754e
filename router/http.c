/* The router's HTTP side (evhttp on the router loop). Two listeners: the public one for
 * client bootstrap (/where), health, metrics and (unless public-map is off) the map; the
 * admin one, where every request needs the operator token, for draining, the map and
 * health. Answers are JSON except /metrics. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "internal.h"
#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_log.h"

struct router_http {
	router *r;
	struct evhttp *http;	   /* public */
	struct evhttp *admin;	   /* NULL: no admin listener */
	router_admin_token *token; /* NULL with admin-no-token */
};

/* Sends `body` (a new reference, consumed) as the JSON answer. */
static void
send_json(struct evhttp_request *req, int code, const char *reason, json_t *body)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	struct evbuffer *out = evbuffer_new();
	if (!text || !out) {
		free(text);
		if (out)
			evbuffer_free(out);
		evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
		return;
	}
	evbuffer_add(out, text, strlen(text));
	evbuffer_add(out, "\n", 1);
	free(text);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "application/json");
	evhttp_send_reply(req, code, reason, out);
	evbuffer_free(out);
}

static void
send_err(struct evhttp_request *req, int code, const char *reason, const char *msg)
{
	send_json(req, code, reason, json_pack("{s:s}", "error", msg));
}

static bool
method_is(struct evhttp_request *req, enum evhttp_cmd_type want)
{
	if (evhttp_request_get_command(req) == want)
		return true;
	send_err(req, 405, "Method Not Allowed",
		 want == EVHTTP_REQ_GET ? "use GET" : "use POST");
	return false;
}

static void
on_where(struct evhttp_request *req, void *arg)
{
	router *r = arg;
	if (!method_is(req, EVHTTP_REQ_GET))
		return;
	const router_member *mb = router_map_where(r->map);
	if (!mb) {
		sp_metric_inc(r->m_where_none);
		send_err(req, 503, "Service Unavailable", "no healthy connsrv");
		return;
	}
	sp_metric_inc(r->m_where_ok);
	json_t *body = json_pack("{s:s, s:i, s:s}", "host", mb->host, "port", (int)mb->port,
				 "name", mb->name);
	/* Every healthy, non-draining connsrv: clients keep this list and try it in turn when
	 * no router answers (docs/CLIENT.md). */
	json_t *all = json_array();
	for (size_t i = 0; all && i < router_map_count(r->map); i++) {
		const router_member *c = router_map_member(r->map, i);
		if (c->role == SP_ROLE_CONNSRV && c->healthy && !c->draining)
			json_array_append_new(all, json_pack("{s:s, s:i, s:s}", "host", c->host,
							     "port", (int)c->port, "name", c->name));
	}
	if (body && all)
		json_object_set_new(body, "servers", all);
	else
		json_decref(all);
	send_json(req, 200, "OK", body);
}

static json_t *
member_json(const router_member *mb, uint64_t now_ms)
{
	json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:I}", "name", mb->name, "role",
			      sp_cluster_role_name(mb->role), "addr", mb->addr, "healthy", mb->healthy,
			      "conns", (json_int_t)mb->conns);
	if (!o)
		return NULL;
	if (mb->role == SP_ROLE_CONNSRV) {
		json_object_set_new(o, "host", json_string(mb->host));
		json_object_set_new(o, "port", json_integer(mb->port));
		json_object_set_new(o, "draining", json_boolean(mb->draining));
	}
	if (mb->role == SP_ROLE_INBOX)
		json_object_set_new(o, "shard", json_integer(mb->shard));
	if (mb->role == SP_ROLE_INBOX || mb->role == SP_ROLE_KEYSRV) {
		/* false/0 until etcd was read for the group (or without --etcd): unknown. */
		json_object_set_new(o, "primary", json_boolean(mb->primary));
		json_object_set_new(o, "in_sync", json_boolean(mb->in_sync));
		json_object_set_new(o, "lsn", json_integer((json_int_t)mb->lsn));
		json_object_set_new(o, "epoch", json_integer((json_int_t)mb->shard_epoch));
	}
	if (mb->last_hb)
		json_object_set_new(o, "last_heartbeat_ms_ago",
				    json_integer((json_int_t)(now_ms - mb->last_hb)));
	return o;
}

/* With the map in etcd, "epoch" is the published map's (the same on every router) and
 * "etcd_revision" the map key's revision; without etcd, the router's own epoch. */
static void
add_published(router *r, json_t *body)
{
	if (!body || !r->store)
		return;
	uint64_t epoch = 0;
	int64_t rev = 0;
	router_store_map(r->store, &epoch, &rev);
	json_object_set_new(body, "epoch", json_integer((json_int_t)epoch));
	json_object_set_new(body, "etcd_revision", json_integer((json_int_t)rev));
	json_object_set_new(body, "map_writer", json_boolean(router_store_leader(r->store)));
}

static void
on_map(struct evhttp_request *req, void *arg)
{
	router *r = arg;
	if (!method_is(req, EVHTTP_REQ_GET))
		return;
	json_t *members = json_array();
	uint64_t now = router_now_ms();
	for (size_t i = 0; members && i < router_map_count(r->map); i++)
		if (json_array_append_new(members, member_json(router_map_member(r->map, i), now)))
			break;
	json_t *body = json_pack("{s:I, s:o}", "epoch", (json_int_t)router_map_epoch(r->map),
				 "members", members);
	add_published(r, body);
	send_json(req, 200, "OK", body);
}

static void
set_draining(struct evhttp_request *req, router *r, bool draining)
{
	struct evkeyvalq q;
	bool changed;

	if (!method_is(req, EVHTTP_REQ_POST))
		return;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
	TAILQ_INIT(&q);
	if (!query || evhttp_parse_query_str(query, &q)) {
		send_err(req, 400, "Bad Request", "expected ?name=MEMBER");
		return;
	}
	const char *name = evhttp_find_header(&q, "name");
	const router_member *mb = name ? router_map_find(r->map, name) : NULL;
	int rc = name ? SP_OK : SP_EINVAL;
	/* With the map in etcd the flag lives there, so that every router sees it. */
	if (r->store && mb && mb->role == SP_ROLE_CONNSRV &&
	    router_store_set_draining(r->store, name, draining)) {
		send_err(req, 503, "Service Unavailable", "cannot write the flag to etcd");
		evhttp_clear_headers(&q);
		return;
	}
	if (name)
		rc = router_map_set_draining(r->map, name, draining, &changed);
	if (!name) {
		send_err(req, 400, "Bad Request", "expected ?name=MEMBER");
	} else if (rc == SP_ENOTFOUND) {
		/* The name is not echoed: it is client text, maybe not even UTF-8. */
		send_err(req, 404, "Not Found", "no member of that name");
	} else if (rc) {
		send_err(req, 400, "Bad Request", "not a connsrv: only a connsrv drains");
	} else {
		if (changed) {
			sp_info("%s %s by admin request (epoch %llu)", name,
				draining ? "draining" : "no longer draining",
				(unsigned long long)router_map_epoch(r->map));
			router_changed(r);
		}
		send_json(req, 200, "OK",
			  json_pack("{s:s, s:b, s:I}", "name", name, "draining", draining, "epoch",
				    (json_int_t)router_map_epoch(r->map)));
	}
	evhttp_clear_headers(&q);
}

static void
on_drain(struct evhttp_request *req, void *arg)
{
	set_draining(req, arg, true);
}

static void
on_undrain(struct evhttp_request *req, void *arg)
{
	set_draining(req, arg, false);
}

static void
on_health(struct evhttp_request *req, void *arg)
{
	router *r = arg;
	if (!method_is(req, EVHTTP_REQ_GET))
		return;
	json_t *body = json_pack("{s:s, s:I}", "status", "ok", "epoch",
				 (json_int_t)router_map_epoch(r->map));
	add_published(r, body);
	send_json(req, 200, "OK", body);
}

static void
on_metrics(struct evhttp_request *req, void *arg)
{
	(void)arg;
	if (method_is(req, EVHTTP_REQ_GET))
		sp_metrics_http_reply(req, NULL);
}

static void
on_other(struct evhttp_request *req, void *arg)
{
	router_http *h = arg;
	send_err(req, 404, "Not Found",
		 h->admin ? "try /where, /map, /health, /metrics (draining is on the admin listener)"
			  : "try /where, /map, /health, /metrics");
}

/* An admin endpoint asked on the public listener: refused whatever the method, so that a
 * caller learns where to go and nothing else. */
static void
on_admin_only(struct evhttp_request *req, void *arg)
{
	router *r = arg;
	sp_metric_inc(r->m_admin_refused[ROUTER_ADMIN_REFUSED_PUBLIC]);
	send_err(req, 403, "Forbidden",
		 "served only on the router's admin listener (admin-addr, admin-port), with the "
		 "operator token");
}

/* The admin listener's endpoints. */
static const struct {
	const char *path;
	void (*fn)(struct evhttp_request *req, void *r);
} admin_routes[] = {
	{"/drain", on_drain},
	{"/undrain", on_undrain},
	{"/map", on_map},
	{"/health", on_health},
};

/* Whether `req` carries the operator token; if not, answers 401, counts and logs it (at
 * most once a second: a scan must not flood the log). */
static bool
admin_authorized(router_http *h, struct evhttp_request *req)
{
	static sp_log_limit lim;
	if (!h->token)
		return true;
	const char *auth =
		evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	router_admin_auth a = router_admin_check(h->token, auth);
	if (a == ROUTER_ADMIN_OK)
		return true;
	bool none = a == ROUTER_ADMIN_NO_TOKEN;
	sp_metric_inc(h->r->m_admin_refused[none ? ROUTER_ADMIN_REFUSED_NO_TOKEN
						   : ROUTER_ADMIN_REFUSED_BAD_TOKEN]);
	char *peer = NULL;
	ev_uint16_t peer_port = 0;
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	if (conn)
		evhttp_connection_get_peer(conn, &peer, &peer_port);
	sp_log_limited(&lim, SP_LOG_WARN, "admin request from %s:%u refused: %s",
		       peer ? peer : "?", (unsigned)peer_port,
		       none ? "no bearer token" : "wrong token");
	evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
			  "Bearer realm=\"sealpost-router-admin\"");
	send_err(req, 401, "Unauthorized",
		 none ? "an operator token is required (Authorization: Bearer TOKEN)"
		      : "wrong operator token");
	return false;
}

/* Every admin request: authenticated first (unknown paths too, so that an unauthenticated
 * caller learns nothing), then dispatched by path. */
static void
on_admin(struct evhttp_request *req, void *arg)
{
	router_http *h = arg;
	if (!admin_authorized(h, req))
		return;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	for (size_t i = 0; path && i < sizeof(admin_routes) / sizeof(admin_routes[0]); i++)
		if (strcmp(path, admin_routes[i].path) == 0) {
			admin_routes[i].fn(req, h->r);
			return;
		}
	send_err(req, 404, "Not Found",
		 "try POST /drain?name=, POST /undrain?name=, GET /map, GET /health");
}

/* Limits shared by both listeners: requests are small, and slow clients are cut off. */
static struct evhttp *
http_new(router *r)
{
	struct evhttp *http = evhttp_new(r->base);
	if (!http)
		return NULL;
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
	evhttp_set_max_headers_size(http, 8192);
	evhttp_set_max_body_size(http, 4096);
	evhttp_set_timeout(http, 30);
	return http;
}

/* Binds `http` to addr:port; *bound is the port bound (useful with port 0). */
static int
http_bind(struct evhttp *http, const char *addr, int port, int *bound)
{
	struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, addr, (ev_uint16_t)port);
	if (!bs)
		return SP_EIO;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	*bound = port;
	if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			*bound = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			*bound = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	return SP_OK;
}

/* A numeric loopback address (127.0.0.0/8 or ::1). */
static bool
is_loopback(const char *addr)
{
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, addr, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	return inet_pton(AF_INET6, addr, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* The admin listener, as the options say: none without a token file (unless
 * admin-no-token), and without a token only on loopback. */
static int
admin_start(router_http *h, const router_config *cfg, char *err, size_t errlen)
{
	router *r = h->r;
	int rc;
	r->admin_port = -1;
	if (cfg->admin_port < 0)
		return SP_OK;
	if (cfg->admin_token_file && cfg->admin_no_token) {
		snprintf(err, errlen, "admin-token-file and admin-no-token exclude each other");
		return SP_ECONFIG;
	}
	if (!cfg->admin_token_file && !cfg->admin_no_token) {
		sp_warn("no admin listener: admin-token-file is not set (POST /drain and /undrain "
			"are unavailable; admin-port -1 silences this)");
		return SP_OK;
	}
	if (cfg->admin_no_token && !is_loopback(cfg->admin_addr)) {
		snprintf(err, errlen,
			 "admin-no-token needs a numeric loopback admin-addr (127.0.0.1 or ::1), "
			 "not %s: give an admin-token-file",
			 cfg->admin_addr);
		return SP_ECONFIG;
	}
	if (cfg->admin_token_file &&
	    (rc = router_admin_token_load(cfg->admin_token_file, &h->token, err, errlen)))
		return rc;
	if (!(h->admin = http_new(r)))
		return SP_ENOMEM;
	evhttp_set_gencb(h->admin, on_admin, h);
	if (http_bind(h->admin, cfg->admin_addr, cfg->admin_port, &r->admin_port)) {
		snprintf(err, errlen, "cannot listen for admin HTTP on %s:%d", cfg->admin_addr,
			 cfg->admin_port);
		return SP_EIO;
	}
	if (!h->token)
		sp_warn("admin listener on %s:%d WITHOUT a token (admin-no-token): any local user "
			"can drain connection servers",
			cfg->admin_addr, r->admin_port);
	return SP_OK;
}

int
router_http_start(router *r, const router_config *cfg, router_http **out, char *err,
		  size_t errlen)
{
	int rc;
	router_http *h = calloc(1, sizeof(*h));
	if (!h)
		return SP_ENOMEM;
	h->r = r;
	rc = SP_ENOMEM;
	if (!(h->http = http_new(r)))
		goto fail;
	evhttp_set_cb(h->http, "/where", on_where, r);
	evhttp_set_cb(h->http, "/map", cfg->public_map ? on_map : on_admin_only, r);
	evhttp_set_cb(h->http, "/drain", on_admin_only, r);
	evhttp_set_cb(h->http, "/undrain", on_admin_only, r);
	evhttp_set_cb(h->http, "/health", on_health, r);
	evhttp_set_cb(h->http, "/metrics", on_metrics, r);
	evhttp_set_gencb(h->http, on_other, h);
	if ((rc = admin_start(h, cfg, err, errlen)))
		goto fail;
	if ((rc = http_bind(h->http, cfg->http_addr, cfg->http_port, &r->http_port))) {
		snprintf(err, errlen, "cannot listen for HTTP on %s:%d", cfg->http_addr,
			 cfg->http_port);
		goto fail;
	}
	*out = h;
	return SP_OK;
fail:
	router_http_free(h);
	return rc;
}

void
router_http_free(router_http *h)
{
	if (!h)
		return;
	if (h->http)
		evhttp_free(h->http);
	if (h->admin)
		evhttp_free(h->admin);
	router_admin_token_free(h->token);
	free(h);
}
