/* Inbox shard calls retried on the shard's new primary (see shardcall.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "connsrv/shardcall.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_metrics.h"
#include "sp_time.h"

#define BACKOFF_MIN_MS 50
#define KEYS_NONE 0
#define KEYS_WRITE 1 /* to the key store's primary */
#define KEYS_READ 2  /* bounded-stale: any copy that may serve it */
#define BACKOFF_MAX_MS 1000

typedef struct sc_call {
	cs_shardcall *sc;
	cs_rpc_cb cb;
	void *arg;
	unsigned type;       /* the request's frame type, for the give-up line */
	msgpack_sbuffer req; /* the packed request: every attempt sends these bytes */
	/* What the call is routed by: keysrv (keys != KEYS_NONE), devices (n >= 1) or a blob
	 * key (n == 0). */
	int keys;
	uint64_t *devices;
	uint64_t one; /* devices points here when n == 1 */
	size_t n;
	uint8_t key[CS_SHARDCALL_KEY_MAX];
	size_t key_len;
	char url[256];        /* the shard of the last attempt */
	uint64_t deadline_ms; /* monotonic: no attempt starts after it */
	unsigned attempts;
	bool last;            /* the attempt in flight or waiting is the one at the deadline */
	bool cut;             /* the attempt in flight was cancelled: the map names another primary */
	int last_rc;          /* why the last attempt failed */
	struct event *timer;  /* made at the first retry */
	struct sc_call *prev, *next; /* sc->sent while an attempt is in flight, else sc->waiting */
} sc_call;

struct cs_shardcall {
	struct event_base *base;
	cs_rpc *rpc;
	sp_cluster *cluster;
	uint64_t budget_ms;
	bool closing;
	sc_call *sent;    /* calls with an attempt in flight */
	sc_call *waiting; /* calls waiting for their next attempt */
	unsigned nwaiting;
	uint64_t rng; /* xorshift state for the jitter */
	sp_metric *retries, *giveups;
};

/* The failures a failover produces. Anything else (SP_EFULL, SP_EINVAL, a malformed reply,
 * a cancelled call at shutdown: SP_ENNG) is the answer, and goes to the caller as it is. */
static bool
retryable(int rc)
{
	return rc == SP_ENOTPRIMARY || rc == SP_EUNAVAIL || rc == SP_ETIMEDOUT || rc == SP_ECLOSED;
}

static void
list_add(sc_call **head, sc_call *c)
{
	c->prev = NULL;
	c->next = *head;
	if (*head)
		(*head)->prev = c;
	*head = c;
}

static void
list_del(sc_call **head, sc_call *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		*head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
}

static void
call_free(sc_call *c)
{
	msgpack_sbuffer_destroy(&c->req);
	if (c->devices != &c->one)
		free(c->devices);
	if (c->timer)
		event_free(c->timer);
	free(c);
}

static void
finish(sc_call *c, int rc, const sp_frame *reply)
{
	c->cb(c->arg, rc, reply);
	call_free(c);
}

static void
give_up(sc_call *c, const char *why)
{
	sp_metric_inc(c->sc->giveups);
	sp_warn_rl("%s to %s %s given up after %u attempts: %s", sp_frame_type_name(c->type),
		   c->keys ? "keysrv" : "inbox shard", c->url, c->attempts, why);
	finish(c, SP_EUNAVAIL, NULL);
}

static void on_reply(void *arg, int rc, const sp_frame *reply);

static int
send_attempt(sc_call *c)
{
	c->attempts++;
	int rc = cs_rpc_call_packed(c->sc->rpc, c->url, c->req.data, c->req.size, on_reply, c);
	if (rc == SP_OK)
		list_add(&c->sc->sent, c);
	return rc;
}

/* The url of the shard that owns the call's devices or key in the newest map: SP_OK,
 * SP_EUNAVAIL when the map has no owner (yet), SP_EMISMATCH when the devices are no longer
 * owned by one shard (the ring changed: the caller has to split the request again). */
static int
resolve(sc_call *c)
{
	sp_cluster_map *m = sp_cluster_map_get(c->sc->cluster);
	if (!m)
		return SP_EUNAVAIL;
	const sp_cluster_member *owner =
		c->keys == KEYS_WRITE ? sp_cluster_map_keysrv_target(m)
		: c->keys == KEYS_READ ? sp_cluster_map_keysrv_reader(m, c->attempts)
		: c->n ? sp_cluster_map_shard_for(m, c->devices[0])
		       : sp_cluster_map_shard_for_key(m, c->key, c->key_len);
	int rc = owner ? SP_OK : SP_EUNAVAIL;
	for (size_t i = 1; rc == SP_OK && i < c->n; i++)
		if (sp_cluster_map_shard_for(m, c->devices[i]) != owner)
			rc = SP_EMISMATCH;
	if (rc == SP_OK && (size_t)snprintf(c->url, sizeof(c->url), "%s", owner->addr) >= sizeof(c->url))
		rc = SP_EINVAL;
	sp_cluster_map_put(m);
	return rc;
}

static void retry_later(sc_call *c, uint64_t retry_after_ms);

/* Loop: the backoff is over; the next attempt goes to the primary the newest map names. */
static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	sc_call *c = arg;
	list_del(&c->sc->waiting, c);
	c->sc->nwaiting--;
	sp_metric_inc(c->sc->retries);
	int rc = resolve(c);
	if (rc == SP_EMISMATCH) {
		give_up(c, "its devices are on different shards in the new map");
		return;
	}
	if (rc == SP_OK && (rc = send_attempt(c)) == SP_OK)
		return;
	if (rc == SP_EUNAVAIL) {
		/* No owner in the map right now, or no socket to it: that may pass too. */
		c->last_rc = rc;
		retry_later(c, 0);
		return;
	}
	give_up(c, sp_strerror(rc));
}

/* After a failed attempt: waits and tries again, or gives up once the budget is spent. */
static void
retry_later(sc_call *c, uint64_t retry_after_ms)
{
	cs_shardcall *sc = c->sc;
	uint64_t now = sp_mono_ms();
	if (sc->closing || c->last || now >= c->deadline_ms) {
		give_up(c, sp_strerror(c->last_rc));
		return;
	}
	uint64_t delay = retry_after_ms;
	if (!delay) {
		unsigned shift = c->attempts > 5 ? 5 : c->attempts - 1;
		delay = (uint64_t)BACKOFF_MIN_MS << shift;
		if (delay > BACKOFF_MAX_MS)
			delay = BACKOFF_MAX_MS;
		sc->rng ^= sc->rng << 13;
		sc->rng ^= sc->rng >> 7;
		sc->rng ^= sc->rng << 17;
		delay = delay / 2 + sc->rng % (delay / 2 + 1);
	}
	if (delay >= c->deadline_ms - now) {
		/* Marked, not left to the clock: the loop's timers may fire a little early. */
		delay = c->deadline_ms - now;
		c->last = true;
	}
	if (!c->timer && !(c->timer = evtimer_new(sc->base, on_timer, c))) {
		give_up(c, sp_strerror(SP_ENOMEM));
		return;
	}
	struct timeval tv = {(time_t)(delay / 1000), (suseconds_t)(delay % 1000) * 1000};
	evtimer_add(c->timer, &tv);
	list_add(&sc->waiting, c);
	sc->nwaiting++;
}

static void
on_reply(void *arg, int rc, const sp_frame *reply)
{
	sc_call *c = arg;
	list_del(&c->sc->sent, c);
	/* Cancelled by cs_shardcall_map_changed: the copy it went to is no longer primary. An
	 * answer that came first stands. */
	if (c->cut && rc == SP_ENNG)
		rc = SP_ENOTPRIMARY;
	c->cut = false;
	if (!retryable(rc)) {
		finish(c, rc, reply);
		return;
	}
	c->last_rc = rc;
	/* A retryable code with a reply came in an ERROR frame: it may say when to come back. */
	retry_later(c, reply ? sp_frame_u64(reply, SP_F_RETRY_AFTER) : 0);
}

int
cs_shardcall_new(struct event_base *base, cs_rpc *rpc, sp_cluster *cluster, int budget_ms,
		 cs_shardcall **out)
{
	cs_shardcall *sc = calloc(1, sizeof(*sc));
	if (!sc)
		return SP_ENOMEM;
	sc->base = base;
	sc->rpc = rpc;
	sc->cluster = cluster;
	sc->budget_ms = budget_ms > 0 ? (uint64_t)budget_ms : 0;
	sc->rng = sp_mono_ns() | 1;
	sc->retries = sp_metric_counter("sp_connsrv_shard_retries_total",
					"inbox shard calls sent again after a failover-like failure");
	sc->giveups = sp_metric_counter("sp_connsrv_shard_giveups_total",
					"inbox shard calls given up after --shard-retry-ms");
	*out = sc;
	return SP_OK;
}

void
cs_shardcall_free(cs_shardcall *sc)
{
	if (!sc)
		return;
	sc->closing = true;
	/* Attempts in flight were completed by cs_rpc_free, which comes first. */
	sc_call *c;
	while ((c = sc->waiting)) {
		list_del(&sc->waiting, c);
		sc->nwaiting--;
		finish(c, SP_ECLOSED, NULL);
	}
	free(sc);
}

/* Packs `req` into a new call; the caller sets its routing. */
static int
call_new(cs_shardcall *sc, const char *url, const sp_frame *req, cs_rpc_cb cb, void *arg,
	 sc_call **out)
{
	if (sc->closing)
		return SP_ECLOSED;
	sc_call *c = calloc(1, sizeof(*c));
	if (!c)
		return SP_ENOMEM;
	msgpack_sbuffer_init(&c->req);
	int rc = sp_frame_pack(req, &c->req);
	if (rc == SP_OK && (size_t)snprintf(c->url, sizeof(c->url), "%s", url) >= sizeof(c->url))
		rc = SP_EINVAL;
	if (rc) {
		call_free(c);
		return rc;
	}
	c->sc = sc;
	c->cb = cb;
	c->arg = arg;
	c->type = req->type;
	c->deadline_ms = sp_mono_ms() + sc->budget_ms;
	*out = c;
	return SP_OK;
}

/* The first attempt. A failure to send it is the caller's, as with cs_rpc_call. */
static int
call_start(sc_call *c)
{
	int rc = send_attempt(c);
	if (rc)
		call_free(c);
	return rc;
}

int
cs_shardcall_devices(cs_shardcall *sc, const char *url, const uint64_t *devices, size_t n,
		     const sp_frame *req, cs_rpc_cb cb, void *arg)
{
	if (n == 0)
		return SP_EINVAL;
	sc_call *c;
	int rc = call_new(sc, url, req, cb, arg, &c);
	if (rc)
		return rc;
	c->devices = n == 1 ? &c->one : malloc(n * sizeof(uint64_t));
	if (!c->devices) {
		call_free(c);
		return SP_ENOMEM;
	}
	memcpy(c->devices, devices, n * sizeof(uint64_t));
	c->n = n;
	return call_start(c);
}

int
cs_shardcall_blob(cs_shardcall *sc, const char *url, const uint8_t *key, size_t key_len,
		  const sp_frame *req, cs_rpc_cb cb, void *arg)
{
	if (key_len == 0 || key_len > CS_SHARDCALL_KEY_MAX)
		return SP_EINVAL;
	sc_call *c;
	int rc = call_new(sc, url, req, cb, arg, &c);
	if (rc)
		return rc;
	memcpy(c->key, key, key_len);
	c->key_len = key_len;
	return call_start(c);
}

int
cs_shardcall_keysrv(cs_shardcall *sc, bool read, const sp_frame *req, cs_rpc_cb cb, void *arg)
{
	if (!sc->cluster)
		return SP_EUNAVAIL;
	sp_cluster_map *m = sp_cluster_map_get(sc->cluster);
	const sp_cluster_member *to = m ? sp_cluster_map_keysrv_target(m) : NULL;
	char url[256];
	int rc = to ? SP_OK : SP_EUNAVAIL;
	if (rc == SP_OK && (size_t)snprintf(url, sizeof(url), "%s", to->addr) >= sizeof(url))
		rc = SP_EINVAL;
	sp_cluster_map_put(m);
	sc_call *c;
	if (rc || (rc = call_new(sc, url, req, cb, arg, &c)))
		return rc;
	c->keys = read ? KEYS_READ : KEYS_WRITE;
	return call_start(c);
}

static bool
is_cut(void *arg)
{
	return ((sc_call *)arg)->cut;
}

void
cs_shardcall_map_changed(cs_shardcall *sc)
{
	sp_cluster_map *m = sc->cluster ? sp_cluster_map_get(sc->cluster) : NULL;
	if (!m)
		return;
	bool any = false;
	for (sc_call *c = sc->sent; c; c = c->next) {
		if (c->keys == KEYS_READ) {
			/* Any copy may answer a read: only one the map no longer shows healthy
			 * (dead, most likely) is left for another. */
			const sp_cluster_member *to = NULL;
			for (size_t i = 0; i < sp_cluster_map_count(m) && !to; i++)
				if (sp_cluster_map_member(m, i)->role == SP_ROLE_KEYSRV &&
				    strcmp(sp_cluster_map_member(m, i)->addr, c->url) == 0)
					to = sp_cluster_map_member(m, i);
			if (!c->cut && (!to || !to->healthy))
				any = c->cut = true;
			continue;
		}
		const sp_cluster_member *owner =
			c->keys ? sp_cluster_map_keysrv_target(m)
			: c->n  ? sp_cluster_map_shard_for(m, c->devices[0])
				: sp_cluster_map_shard_for_key(m, c->key, c->key_len);
		if (!c->cut && owner && strcmp(owner->addr, c->url) != 0)
			any = c->cut = true;
	}
	sp_cluster_map_put(m);
	/* Marked first, then cancelled in one pass: the cancelled attempts complete later, on
	 * the loop. One marked earlier and still in flight (its cancel missed) goes again too. */
	if (any)
		cs_rpc_cancel(sc->rpc, on_reply, is_cut);
}

unsigned
cs_shardcall_waiting(const cs_shardcall *sc)
{
	return sc->nwaiting;
}
