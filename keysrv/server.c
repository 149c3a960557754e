#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "keysrv/accounts.h"
#include "keysrv/devices.h"
#include "keysrv/groups.h"
#include "keysrv/links.h"
#include "keysrv/prekeys.h"
#include "keysrv/server.h"
#include "keysrv/settings.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"
#include "sp_time.h"

/* ---- arena ---- */

struct keys_chunk {
	struct keys_chunk *next;
	max_align_t data[];
};

void *
keys_arena_alloc(keys_arena *a, size_t n)
{
	struct keys_chunk *c = calloc(1, sizeof(*c) + n);
	if (!c)
		return NULL;
	c->next = a->head;
	a->head = c;
	return c->data;
}

void
keys_arena_free(keys_arena *a)
{
	struct keys_chunk *c = a->head, *next;
	for (; c; c = next) {
		next = c->next;
		free(c);
	}
	a->head = NULL;
}

/* ---- helpers for handlers ---- */

void
keys_reply_init(keys_req *r, unsigned type)
{
	sp_frame_init(&r->out, type, r->in->id, r->in->has_id);
}

int
keys_rate_take(keys_req *r, keys_rl *rl, const char *key, const char *what)
{
	int rc = keys_rl_take(rl, key, r->ctx->now_ms(), &r->retry_after_ms);
	if (rc == SP_ERATELIMIT) {
		sp_metric_inc(r->ctx->m_ratelimited);
		sp_debug("rate limited (%s) %s", what, key);
		r->reason = "rate limited; retry later";
	}
	return rc;
}

void
keys_hash(const keys_ctx *ctx, const char *tag, const void *a, size_t alen, const void *b,
    size_t blen, uint8_t out[KEYS_HASH_LEN])
{
	crypto_generichash_state st;
	uint8_t len[4] = {(uint8_t)(alen >> 24), (uint8_t)(alen >> 16), (uint8_t)(alen >> 8),
		(uint8_t)alen};
	crypto_generichash_init(&st, keys_store_secret(ctx->store), 32, KEYS_HASH_LEN);
	/* The tag's NUL and a's length keep (tag, a, b) splits unambiguous. */
	crypto_generichash_update(&st, (const uint8_t *)tag, strlen(tag) + 1);
	crypto_generichash_update(&st, len, sizeof(len));
	if (alen)
		crypto_generichash_update(&st, a, alen);
	if (blen)
		crypto_generichash_update(&st, b, blen);
	crypto_generichash_final(&st, out, KEYS_HASH_LEN);
}

void
keys_req_note(keys_req *r, int64_t before, int64_t after)
{
	if (r->nnotes < (int)(sizeof(r->notes) / sizeof(r->notes[0]))) {
		r->notes[r->nnotes].before = before;
		r->notes[r->nnotes].after = after;
		r->nnotes++;
	}
}

/* Applies the committed prekey-count changes to the low-water gauge and counter. */
static void
apply_notes(keys_req *r)
{
	int64_t low = r->ctx->cfg.low_water;
	for (int i = 0; i < r->nnotes; i++) {
		int64_t b = r->notes[i].before, a = r->notes[i].after;
		bool was = b >= 0 && b < low, is = a >= 0 && a < low;
		sp_metric_gauge_add(r->ctx->m_low_devices, (int64_t)is - (int64_t)was);
		if (b >= low && is)
			sp_metric_inc(r->ctx->m_low_events);
	}
}

/* ---- dispatch ---- */

typedef enum { AUTH_NONE, AUTH_OPTIONAL, AUTH_DEVICE, AUTH_USER } auth_mode;

/* The handlers, indexed by frame type: exactly the catalogue's SP_TIER_KEYSRV frames
 * (keys_server_serves; a unit test holds the two together). */
typedef struct route {
	auth_mode auth;
	int (*fn)(keys_req *r);
} route;

static const route routes[256] = {
	[SP_T_REGISTER] = {AUTH_NONE, keys_accounts_register},
	[SP_T_VERIFY] = {AUTH_NONE, keys_accounts_verify},
	[SP_T_LINK_REQUEST] = {AUTH_NONE, keys_links_request},
	[SP_T_LINK_LOOKUP] = {AUTH_DEVICE, keys_links_lookup},
	[SP_T_LINK_CONFIRM] = {AUTH_DEVICE, keys_links_confirm},
	[SP_T_LINK_STATUS] = {AUTH_NONE, keys_links_status},
	[SP_T_DEVICES_GET] = {AUTH_OPTIONAL, keys_devices_get},
	[SP_T_USER_LOOKUP] = {AUTH_DEVICE, keys_devices_lookup},
	[SP_T_REMOVE_DEVICE] = {AUTH_DEVICE, keys_devices_remove},
	[SP_T_KEYS_UPLOAD] = {AUTH_DEVICE, keys_prekeys_upload},
	[SP_T_KEYS_STATUS] = {AUTH_DEVICE, keys_prekeys_status},
	[SP_T_BUNDLE_GET] = {AUTH_DEVICE, keys_prekeys_bundle},
	[SP_T_AUTH_KEY_GET] = {AUTH_NONE, keys_devices_auth_key},
	[SP_T_GROUP_CREATE] = {AUTH_DEVICE, keys_groups_create},
	[SP_T_GROUP_ADD] = {AUTH_DEVICE, keys_groups_add},
	[SP_T_GROUP_REMOVE] = {AUTH_DEVICE, keys_groups_remove},
	[SP_T_GROUP_LEAVE] = {AUTH_DEVICE, keys_groups_leave},
	[SP_T_GROUP_ADMIN] = {AUTH_DEVICE, keys_groups_admin},
	[SP_T_GROUP_INFO] = {AUTH_DEVICE, keys_groups_info},
	[SP_T_GROUP_DEVICES] = {AUTH_USER, keys_groups_devices},
	[SP_T_SET_PIN] = {AUTH_DEVICE, keys_accounts_set_pin},
	[SP_T_PUSH_REGISTER] = {AUTH_DEVICE, keys_devices_push_register},
	[SP_T_PUSH_TOKEN_GET] = {AUTH_NONE, keys_devices_push_get},
	[SP_T_PUSH_DROP] = {AUTH_NONE, keys_devices_push_drop},
	[SP_T_PRIVACY_SET] = {AUTH_DEVICE, keys_settings_privacy},
	[SP_T_CONTACTS_EDIT] = {AUTH_DEVICE, keys_settings_contacts},
	[SP_T_PRESENCE_RULES] = {AUTH_USER, keys_settings_rules},
};

static sp_metric *m_requests[256];
static sp_metric *m_errors, *m_latency;

bool
keys_server_serves(unsigned type)
{
	return type < 256 && routes[type].fn != NULL;
}

static int
check_caller(keys_req *r, auth_mode mode)
{
	bool hu = sp_frame_has(r->in, SP_F_AUTH_USER), hd = sp_frame_has(r->in, SP_F_AUTH_DEVICE);
	uint64_t user = sp_frame_u64(r->in, SP_F_AUTH_USER);
	MDB_txn *txn;
	int rc;

	if (mode == AUTH_NONE || (mode == AUTH_OPTIONAL && !hu && !hd))
		return SP_OK;
	if (mode == AUTH_USER) {
		if (!hu || user == 0)
			return keys_fail(r, SP_EAUTH, "authenticated user required");
		r->user = user;
		return SP_OK;
	}
	if (!hu || !hd)
		return keys_fail(r, SP_EAUTH, "authenticated device required");
	if ((rc = keys_store_begin(r->ctx->store, false, &txn)))
		return rc;
	rc = keys_devices_check_caller(r, txn, user, sp_frame_u64(r->in, SP_F_AUTH_DEVICE));
	keys_store_abort(txn);
	return rc;
}

static void
error_reply(keys_req *r, int code)
{
	sp_frame_init(&r->out, SP_T_ERROR, r->in ? r->in->id : 0, r->in ? r->in->has_id : false);
	sp_frame_set_i64(&r->out, SP_F_CODE, code);
	sp_frame_set_str(&r->out, SP_F_REASON, r->reason ? r->reason : sp_strerror(code));
	if (code == SP_ERATELIMIT && r->retry_after_ms)
		sp_frame_set_u64(&r->out, SP_F_RETRY_AFTER, r->retry_after_ms);
}

int
keys_call(keys_ctx *ctx, const sp_frame *in, keys_req *r)
{
	const route *rt = keys_server_serves(in->type) ? &routes[in->type] : NULL;
	uint64_t t0 = sp_mono_ns();
	int rc;

	memset(r, 0, sizeof(*r));
	r->ctx = ctx;
	r->in = in;
	r->source = "-";
	if (!rt) {
		rc = keys_fail(r, SP_EBADTYPE, "not a keysrv request");
		goto done;
	}
	sp_metric_inc(m_requests[in->type]);
	if (ctx->gate) {
		char primary[80] = "";
		/* Login's key lookup and device lists may be a little stale
		 * (docs/REPLICATION.md, "Reads on key store replicas"). */
		bool stale_ok = in->type == SP_T_AUTH_KEY_GET || in->type == SP_T_DEVICES_GET;
		if ((rc = ctx->gate(ctx->gate_arg, stale_ok, primary, sizeof(primary)))) {
			char *reason = keys_arena_alloc(&r->arena, sizeof(primary));
			if (reason)
				memcpy(reason, primary, sizeof(primary));
			rc = keys_fail(r, rc, reason && reason[0] ? reason : NULL);
			goto done;
		}
	}
	if (sp_frame_has(in, SP_F_SOURCE)) {
		sp_bin b = sp_frame_bin(in, SP_F_SOURCE);
		char *s = keys_arena_alloc(&r->arena, b.len + 1);
		if (!s) {
			rc = SP_ENOMEM;
			goto done;
		}
		memcpy(s, b.p, b.len);
		if (b.len)
			r->source = s;
	}
	if ((rc = check_caller(r, rt->auth)) == SP_OK)
		rc = rt->fn(r);
	if (rc == SP_OK)
		apply_notes(r);
done:
	if (rc != SP_OK) {
		sp_metric_inc(m_errors);
		if (rc == SP_ESTORE || rc == SP_ENOMEM || rc == SP_EFULL)
			sp_warn("%s failed: %s", sp_frame_type_name(in->type), sp_strerror(rc));
		error_reply(r, rc);
	}
	sp_metric_observe(m_latency, (double)(sp_mono_ns() - t0) / 1e9);
	return rc;
}

void
keys_req_fini(keys_req *r)
{
	sp_frame_fini(&r->out); /* a reply replayed from the store was decoded */
	keys_arena_free(&r->arena);
}

static sp_metric *m_push_refused;

/* The push listener's whole menu: a push-role peer reads and drops push tokens, nothing
 * else (it cannot register, read keys or act for a device). */
static bool
push_serves(unsigned type)
{
	return type == SP_T_PUSH_TOKEN_GET || type == SP_T_PUSH_DROP;
}

static nng_msg *
handle_msg(keys_ctx *ctx, nng_msg *in, bool push_only)
{
	sp_frame req;
	keys_req r;
	nng_msg *out = NULL;
	int rc = sp_nng_msg_decode(in, &req);

	if (rc) {
		/* Undecodable: answer with the code and no request id. */
		sp_frame e;
		sp_metric_inc(m_errors);
		sp_frame_init(&e, SP_T_ERROR, 0, false);
		sp_frame_set_i64(&e, SP_F_CODE, rc);
		sp_frame_set_str(&e, SP_F_REASON, sp_strerror(rc));
		return sp_nng_msg_from_frame(&e, &out) == SP_OK ? out : NULL;
	}
	if (push_only && !push_serves(req.type)) {
		sp_metric_inc(m_push_refused);
		sp_warn_rl("keysrv: %s refused on the push listener", sp_frame_type_name(req.type));
		if (sp_nng_error_msg(req.id, req.has_id, SP_EBADTYPE,
			"not served on the push listener", &out) != SP_OK)
			out = NULL;
		sp_frame_fini(&req);
		return out;
	}
	keys_call(ctx, &req, &r);
	rc = sp_nng_msg_from_frame(&r.out, &out);
	if (rc) {
		/* A reply we built does not pack (a bug or a frame over the size limit). */
		sp_error("cannot pack %s reply: %s", sp_frame_type_name(r.out.type), sp_strerror(rc));
		keys_req_fini(&r);
		r.reason = "reply could not be encoded";
		error_reply(&r, rc);
		if (sp_nng_msg_from_frame(&r.out, &out) != SP_OK)
			out = NULL;
	}
	keys_req_fini(&r);
	sp_frame_fini(&req);
	return out;
}

nng_msg *
keys_handle_msg(keys_ctx *ctx, nng_msg *in)
{
	return handle_msg(ctx, in, false);
}

/* ---- context ---- */

static uint64_t
wall_ms(void)
{
	return sp_time_ms();
}

int
keys_ctx_open(keys_ctx **out, const keys_ctx_cfg *cfg)
{
	keys_ctx *ctx = calloc(1, sizeof(*ctx));
	int rc;

	if (!ctx)
		return SP_ENOMEM;
	ctx->cfg = cfg->keys;
	ctx->now_ms = wall_ms;
	if ((rc = (cfg->replicated ? keys_store_open_replicated : keys_store_open)(&ctx->store,
		 cfg->data_dir, cfg->map_size)) ||
	    (rc = keys_otp_sender_new(&ctx->otp, &cfg->otp)) ||
	    (rc = keys_rl_new(&ctx->rl_phone, cfg->rate_phone.burst, cfg->rate_phone.per_min,
		 cfg->rate_max_keys)) ||
	    (rc = keys_rl_new(&ctx->rl_source, cfg->rate_source.burst, cfg->rate_source.per_min,
		 cfg->rate_max_keys)) ||
	    (rc = keys_rl_new(&ctx->rl_bundle, cfg->rate_bundle.burst, cfg->rate_bundle.per_min,
		 cfg->rate_max_keys)) ||
	    (rc = keys_rl_new(&ctx->rl_link, cfg->rate_link.burst, cfg->rate_link.per_min,
		 cfg->rate_max_keys))) {
		keys_ctx_close(ctx);
		return rc;
	}
	for (unsigned t = 0; t < 256; t++) {
		char name[128];
		if (!keys_server_serves(t))
			continue;
		snprintf(name, sizeof(name), "keysrv_requests_total{type=\"%s\"}",
		    sp_frame_type_name(t));
		m_requests[t] = sp_metric_counter(name, "keysrv requests by frame type");
	}
	m_errors = sp_metric_counter("keysrv_request_errors_total", "keysrv requests answered ERROR");
	m_push_refused = sp_metric_counter("keysrv_push_listener_refused_total",
	    "requests on the push listener of a type it does not serve");
	keys_settings_init();
	m_latency = sp_metric_histogram("keysrv_request_seconds", "keysrv request handling time");
	ctx->m_low_events = sp_metric_counter("keysrv_prekey_low_total",
	    "times a device's one-time prekeys fell under the low-water mark");
	ctx->m_low_devices = sp_metric_gauge("keysrv_prekey_low_devices",
	    "current devices with fewer one-time prekeys than the low-water mark");
	ctx->m_opk_given = sp_metric_counter("keysrv_opk_handed_out_total",
	    "one-time prekeys handed out in bundles");
	ctx->m_replayed = sp_metric_counter("keysrv_replies_replayed_total",
	    "retried requests answered with the reply stored for their request id");
	ctx->m_opk_empty = sp_metric_counter("keysrv_opk_exhausted_total",
	    "bundles for a device that had no one-time prekey left");
	ctx->m_ratelimited = sp_metric_counter("keysrv_rate_limited_total",
	    "requests refused by a rate limit");
	ctx->m_budget_register = sp_metric_counter("keysrv_phone_budget_refused_total{kind=\"register\"}",
	    "requests refused because a phone's daily budget was spent");
	ctx->m_budget_verify = sp_metric_counter("keysrv_phone_budget_refused_total{kind=\"verify\"}",
	    "requests refused because a phone's daily budget was spent");
	ctx->m_budget_pin = sp_metric_counter("keysrv_phone_budget_refused_total{kind=\"pin\"}",
	    "requests refused because a phone's daily budget was spent");
	ctx->m_pin_wrong = sp_metric_counter("keysrv_pin_wrong_total",
	    "re-registrations refused for a wrong registration-lock PIN");
	int64_t low = 0;
	if ((rc = keys_prekeys_count_low(ctx, &low))) {
		keys_ctx_close(ctx);
		return rc;
	}
	sp_metric_set(ctx->m_low_devices, low);
	*out = ctx;
	return SP_OK;
}

void
keys_ctx_close(keys_ctx *ctx)
{
	if (!ctx)
		return;
	keys_otp_sender_free(ctx->otp);
	keys_rl_free(ctx->rl_phone);
	keys_rl_free(ctx->rl_source);
	keys_rl_free(ctx->rl_bundle);
	keys_rl_free(ctx->rl_link);
	keys_store_close(ctx->store);
	free(ctx);
}

/* ---- NNG server ---- */

/* One worker: a thread with its own REP context and aio. The receive is started under
 * `lock`, so that stop can cancel a waiting receive without racing a new one, while a
 * request being handled still gets its reply. */
typedef struct worker {
	struct keys_server *srv;
	pthread_t thread;
	bool started;
	nng_ctx ctx;
	nng_aio *aio;
	pthread_mutex_t lock;
	bool receiving; /* a receive is pending on aio (under lock) */
} worker;

struct keys_server {
	keys_ctx *ctx;
	nng_socket sock;
	unsigned nworkers;
	worker *workers;
	bool push_only; /* the push listener */
	_Atomic bool stopping;
};

static void *
worker_main(void *arg)
{
	worker *w = arg;
	for (;;) {
		pthread_mutex_lock(&w->lock);
		bool stop = w->srv->stopping;
		if (!stop) {
			w->receiving = true;
			nng_ctx_recv(w->ctx, w->aio);
		}
		pthread_mutex_unlock(&w->lock);
		if (stop)
			break;
		nng_aio_wait(w->aio);
		pthread_mutex_lock(&w->lock);
		w->receiving = false;
		pthread_mutex_unlock(&w->lock);
		int rv = nng_aio_result(w->aio);
		if (rv == NNG_ECLOSED)
			break;
		if (rv)
			continue; /* cancelled by stop (seen above), or a transient error */
		nng_msg *in = nng_aio_get_msg(w->aio);
		nng_msg *out = handle_msg(w->srv->ctx, in, w->srv->push_only);
		nng_msg_free(in);
		if (!out)
			continue; /* out of memory: the requester times out and resends */
		nng_aio_set_msg(w->aio, out);
		nng_ctx_send(w->ctx, w->aio);
		nng_aio_wait(w->aio);
		if (nng_aio_result(w->aio) != 0)
			nng_msg_free(out);
	}
	return NULL;
}

static int
server_start(keys_server **out, keys_ctx *ctx, const char *url, const char *peer_ca,
    bool push_only, unsigned workers)
{
	keys_server *srv = calloc(1, sizeof(*srv));
	int rc;

	if (!srv)
		return SP_ENOMEM;
	srv->ctx = ctx;
	srv->push_only = push_only;
	if (!(srv->workers = calloc(workers, sizeof(worker)))) {
		free(srv);
		return SP_ENOMEM;
	}
	if ((rc = sp_nng_rep_listen_ca(&srv->sock, url, peer_ca))) {
		sp_error("keysrv: cannot listen on %s: %s", url, sp_strerror(rc));
		free(srv->workers);
		free(srv);
		return rc;
	}
	for (unsigned i = 0; i < workers; i++) {
		worker *w = &srv->workers[i];
		w->srv = srv;
		pthread_mutex_init(&w->lock, NULL);
		srv->nworkers = i + 1;
		if (nng_ctx_open(&w->ctx, srv->sock) != 0 || nng_aio_alloc(&w->aio, NULL, NULL) != 0 ||
		    pthread_create(&w->thread, NULL, worker_main, w) != 0) {
			keys_server_stop(srv);
			return SP_ENOMEM;
		}
		w->started = true;
	}
	*out = srv;
	return SP_OK;
}

int
keys_server_start(keys_server **out, keys_ctx *ctx, const char *url, unsigned workers)
{
	return server_start(out, ctx, url, NULL, false, workers);
}

int
keys_server_start_push(keys_server **out, keys_ctx *ctx, const char *url, const char *peer_ca,
    unsigned workers)
{
	return server_start(out, ctx, url, peer_ca, true, workers);
}

void
keys_server_stop(keys_server *srv)
{
	if (!srv)
		return;
	for (unsigned i = 0; i < srv->nworkers; i++) {
		worker *w = &srv->workers[i];
		pthread_mutex_lock(&w->lock);
		srv->stopping = true;
		if (w->receiving)
			nng_aio_cancel(w->aio);
		pthread_mutex_unlock(&w->lock);
	}
	for (unsigned i = 0; i < srv->nworkers; i++) {
		worker *w = &srv->workers[i];
		if (w->started)
			pthread_join(w->thread, NULL);
		if (w->aio)
			nng_aio_free(w->aio);
		if (nng_ctx_id(w->ctx) > 0)
			nng_ctx_close(w->ctx);
		pthread_mutex_destroy(&w->lock);
	}
	nng_close(srv->sock);
	free(srv->workers);
	free(srv);
}
