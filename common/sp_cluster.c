#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>

#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"
#include "sp_time.h"

/* How long one request to the router may take, and how often the thread looks at its stop
 * flag while waiting for published maps. */
#define CALL_TIMEOUT_MS 1000
#define DOWN_CALL_TIMEOUT_MS 250
#define SUB_POLL_MS 100

static const char *const role_names[] = {NULL, "connsrv", "inbox", "keysrv"};

const char *
sp_cluster_role_name(int role)
{
	if (role >= SP_ROLE_CONNSRV && role <= SP_ROLE_KEYSRV)
		return role_names[role];
	return "?";
}

int
sp_cluster_role_parse(const char *name)
{
	for (int r = SP_ROLE_CONNSRV; r <= SP_ROLE_KEYSRV; r++)
		if (strcmp(name, role_names[r]) == 0)
			return r;
	return -1;
}

/* An inbox shard: its copies are copies[first .. first + n) of the map, in name order. */
typedef struct shard_entry {
	uint32_t num;
	size_t first, n;
	size_t target; /* index in members of sp_cluster_map_shard_target's answer */
} shard_entry;

struct sp_cluster_map {
	atomic_uint refs;
	uint64_t epoch;
	size_t n;
	sp_cluster_member *members;
	char *strings; /* every member's strings, NUL-terminated, one block */
	sp_ring *ring; /* ring index i = shards[i] */
	size_t nshards;
	shard_entry *shards; /* ascending number */
	size_t *copies;      /* inbox member indices by (shard, name) */
};

static void
map_free(sp_cluster_map *m)
{
	sp_ring_free(m->ring);
	free(m->shards);
	free(m->copies);
	free(m->members);
	free(m->strings);
	free(m);
}

sp_cluster_map *
sp_cluster_map_hold(sp_cluster_map *m)
{
	if (m)
		atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
	return m;
}

void
sp_cluster_map_put(sp_cluster_map *m)
{
	if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
		map_free(m);
}

/* Copies a string value (no NUL inside) to *pos and advances it. */
static int
copy_str(const sp_frame *rec, sp_field fld, char **pos, const char **out)
{
	sp_bin b = sp_frame_bin(rec, fld);
	if (b.len && memchr(b.p, '\0', b.len))
		return SP_EPROTO;
	if (b.len)
		memcpy(*pos, b.p, b.len);
	(*pos)[b.len] = '\0';
	*out = *pos;
	*pos += b.len + 1;
	return SP_OK;
}

/* Orders inbox member indices by (shard, name); qsort_r's context is the member array. */
static int
copy_cmp(const void *a, const void *b, void *arg)
{
	const sp_cluster_member *mb = arg;
	const sp_cluster_member *x = &mb[*(const size_t *)a], *y = &mb[*(const size_t *)b];
	if (x->shard != y->shard)
		return x->shard < y->shard ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* Groups the inbox members (m->copies[0..ncopies), any order) into shards, picks each
 * shard's target and builds the ring over the shards' point names. */
static int
build_shards(sp_cluster_map *m, size_t ncopies)
{
	qsort_r(m->copies, ncopies, sizeof(*m->copies), copy_cmp, m->members);
	m->shards = calloc(ncopies ? ncopies : 1, sizeof(*m->shards));
	char (*names)[24] = calloc(ncopies ? ncopies : 1, sizeof(*names));
	const char **ptrs = calloc(ncopies ? ncopies : 1, sizeof(*ptrs));
	int rc = SP_ENOMEM;
	if (!m->shards || !names || !ptrs)
		goto out;
	for (size_t i = 0; i < ncopies; i++) {
		const sp_cluster_member *mb = &m->members[m->copies[i]];
		shard_entry *sh = m->nshards ? &m->shards[m->nshards - 1] : NULL;
		if (!sh || sh->num != mb->shard) {
			sh = &m->shards[m->nshards++];
			sh->num = mb->shard;
			sh->first = i;
		}
		sh->n++;
	}
	for (size_t k = 0; k < m->nshards; k++) {
		shard_entry *sh = &m->shards[k];
		size_t primary = SIZE_MAX, healthy = SIZE_MAX;
		for (size_t j = sh->first; j < sh->first + sh->n; j++) {
			const sp_cluster_member *mb = &m->members[m->copies[j]];
			if (mb->primary && primary == SIZE_MAX)
				primary = m->copies[j];
			if (mb->healthy && healthy == SIZE_MAX)
				healthy = m->copies[j];
		}
		sh->target = primary != SIZE_MAX ? primary
			     : healthy != SIZE_MAX ? healthy
						   : m->copies[sh->first];
		/* The point name depends on the shard number only: see sp_cluster_map_ring. */
		snprintf(names[k], sizeof(names[k]), "inbox-%" PRIu32, sh->num);
		ptrs[k] = names[k];
	}
	rc = sp_ring_new(m->epoch, ptrs, m->nshards, SP_RING_DEFAULT_VNODES, &m->ring);
	if (rc == SP_EINVAL)
		rc = SP_EPROTO;
out:
	free(names);
	free(ptrs);
	return rc;
}

int
sp_cluster_map_from_frame(const sp_frame *f, sp_cluster_map **out)
{
	if (f->type != SP_T_MAP)
		return SP_EBADTYPE;
	const sp_val *v = sp_frame_get(f, SP_F_MEMBERS);
	size_t n = v ? v->rs.n : 0;
	int rc = SP_ENOMEM;

	sp_cluster_map *m = calloc(1, sizeof(*m));
	if (!m)
		return SP_ENOMEM;
	atomic_init(&m->refs, 1);
	m->epoch = sp_frame_u64(f, SP_F_EPOCH);
	m->n = n;
	size_t bytes = 1;
	for (size_t i = 0; i < n; i++) {
		const sp_frame *r = &v->rs.v[i];
		bytes += sp_frame_bin(r, SP_F_NAME).len + sp_frame_bin(r, SP_F_ADDR).len +
			 sp_frame_bin(r, SP_F_HOST).len + 3;
	}
	m->members = calloc(n ? n : 1, sizeof(*m->members));
	m->strings = malloc(bytes);
	m->copies = calloc(n ? n : 1, sizeof(*m->copies));
	if (!m->members || !m->strings || !m->copies)
		goto fail;

	rc = SP_EPROTO;
	char *pos = m->strings;
	size_t ninbox = 0;
	for (size_t i = 0; i < n; i++) {
		const sp_frame *r = &v->rs.v[i];
		sp_cluster_member *mb = &m->members[i];
		uint64_t role = sp_frame_u64(r, SP_F_ROLE), port = sp_frame_u64(r, SP_F_PORT);
		uint64_t shard = sp_frame_u64(r, SP_F_SHARD);
		if (role > INT_MAX || port > 65535 || shard > UINT32_MAX)
			goto fail;
		if (copy_str(r, SP_F_NAME, &pos, &mb->name) || copy_str(r, SP_F_ADDR, &pos, &mb->addr) ||
		    copy_str(r, SP_F_HOST, &pos, &mb->host))
			goto fail;
		for (size_t j = 0; j < i; j++)
			if (strcmp(m->members[j].name, mb->name) == 0)
				goto fail;
		mb->role = (int)role;
		mb->port = (uint16_t)port;
		mb->shard = (uint32_t)shard;
		mb->healthy = sp_frame_u64(r, SP_F_HEALTHY) != 0;
		mb->draining = sp_frame_u64(r, SP_F_DRAINING) != 0;
		mb->conns = sp_frame_u64(r, SP_F_CONNS);
		mb->primary = sp_frame_u64(r, SP_F_PRIMARY) != 0;
		mb->in_sync = sp_frame_u64(r, SP_F_IN_SYNC) != 0;
		mb->lsn = sp_frame_u64(r, SP_F_LSN);
		mb->epoch = sp_frame_u64(r, SP_F_EPOCH);
		if (mb->role == SP_ROLE_INBOX)
			m->copies[ninbox++] = i;
	}
	if ((rc = build_shards(m, ninbox)))
		goto fail;
	*out = m;
	return SP_OK;
fail:
	map_free(m);
	return rc;
}

const sp_cluster_member *
sp_cluster_map_keysrv_target(const sp_cluster_map *m)
{
	const sp_cluster_member *first = NULL, *healthy = NULL;
	for (size_t i = 0; i < m->n; i++) {
		const sp_cluster_member *mb = &m->members[i];
		if (mb->role != SP_ROLE_KEYSRV)
			continue;
		if (mb->primary)
			return mb;
		if (!first)
			first = mb;
		if (mb->healthy && !healthy)
			healthy = mb;
	}
	return healthy ? healthy : first;
}

const sp_cluster_member *
sp_cluster_map_keysrv_reader(const sp_cluster_map *m, unsigned attempt)
{
	const sp_cluster_member *target = sp_cluster_map_keysrv_target(m);
	if (!target || attempt == 0)
		return target;
	/* The round: the target's healthy peers, in-sync first, then the target itself. */
	const sp_cluster_member *round[SP_CLUSTER_MAX_KEYSRV + 1];
	size_t n = 0;
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < m->n && n < SP_CLUSTER_MAX_KEYSRV; i++) {
			const sp_cluster_member *mb = &m->members[i];
			if (mb->role == SP_ROLE_KEYSRV && mb != target && mb->healthy &&
			    mb->in_sync == (pass == 0))
				round[n++] = mb;
		}
	round[n++] = target;
	return round[(attempt - 1) % n];
}

uint64_t
sp_cluster_map_epoch(const sp_cluster_map *m)
{
	return m->epoch;
}

size_t
sp_cluster_map_count(const sp_cluster_map *m)
{
	return m->n;
}

const sp_cluster_member *
sp_cluster_map_member(const sp_cluster_map *m, size_t i)
{
	return i < m->n ? &m->members[i] : NULL;
}

const sp_cluster_member *
sp_cluster_map_find(const sp_cluster_map *m, const char *name)
{
	for (size_t i = 0; i < m->n; i++)
		if (strcmp(m->members[i].name, name) == 0)
			return &m->members[i];
	return NULL;
}

const sp_ring *
sp_cluster_map_ring(const sp_cluster_map *m)
{
	return m->ring;
}

const sp_cluster_member *
sp_cluster_map_shard_for(const sp_cluster_map *m, uint64_t device_id)
{
	int owner, replica;
	if (sp_ring_lookup_u64(m->ring, device_id, &owner, &replica))
		return NULL;
	return &m->members[m->shards[owner].target];
}

const sp_cluster_member *
sp_cluster_map_shard_for_key(const sp_cluster_map *m, const void *key, size_t len)
{
	int owner, replica;
	if (sp_ring_lookup(m->ring, key, len, &owner, &replica))
		return NULL;
	return &m->members[m->shards[owner].target];
}

int
sp_cluster_map_shard_of(const sp_cluster_map *m, uint64_t device_id, uint32_t *shard)
{
	int owner, replica;
	if (sp_ring_lookup_u64(m->ring, device_id, &owner, &replica))
		return SP_ENOTFOUND;
	*shard = m->shards[owner].num;
	return SP_OK;
}

int
sp_cluster_map_shard_of_key(const sp_cluster_map *m, const void *key, size_t len, uint32_t *shard)
{
	int owner, replica;
	if (sp_ring_lookup(m->ring, key, len, &owner, &replica))
		return SP_ENOTFOUND;
	*shard = m->shards[owner].num;
	return SP_OK;
}

size_t
sp_cluster_map_shard_count(const sp_cluster_map *m)
{
	return m->nshards;
}

uint32_t
sp_cluster_map_shard_num(const sp_cluster_map *m, size_t i)
{
	return i < m->nshards ? m->shards[i].num : 0;
}

static const shard_entry *
find_shard(const sp_cluster_map *m, uint32_t shard)
{
	size_t lo = 0, hi = m->nshards;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->shards[mid].num < shard)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < m->nshards && m->shards[lo].num == shard ? &m->shards[lo] : NULL;
}

const sp_cluster_member *
sp_cluster_map_shard_target(const sp_cluster_map *m, uint32_t shard)
{
	const shard_entry *sh = find_shard(m, shard);
	return sh ? &m->members[sh->target] : NULL;
}

size_t
sp_cluster_map_shard_copies(const sp_cluster_map *m, uint32_t shard, const sp_cluster_member **out,
			    size_t cap)
{
	const shard_entry *sh = find_shard(m, shard);
	if (!sh)
		return 0;
	for (size_t j = 0; j < sh->n && j < cap; j++)
		out[j] = &m->members[m->copies[sh->first + j]];
	return sh->n;
}

/* One router's REQ side and what was last logged about it (cluster thread only). */
typedef struct router_conn {
	char *url;
	nng_socket req;
	bool open;
	bool down;    /* the last call got no answer */
	bool refused; /* the last heartbeat was refused: MAP_GET instead */
} router_conn;

struct sp_cluster {
	char *name; /* NULL: observer */
	int role;
	router_conn routers[SP_CLUSTER_MAX_ROUTERS];
	size_t nrouters;
	nng_socket sub; /* dials every router's PUB address */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond; /* signalled when a map is installed */
	sp_cluster_map *map; /* under lock */
	void (*cb)(void *);  /* under lock */
	void *cb_arg;
	_Atomic uint64_t conns;
	atomic_bool stop;
	bool stale; /* a router offered an older epoch than the installed one (thread only) */
};

/* Installs a MAP whose epoch is newer than the current one; anything else is ignored. */
static void
install(sp_cluster *c, const sp_frame *f)
{
	sp_cluster_map *m, *old;
	uint64_t cur;

	if (f->type != SP_T_MAP)
		return;
	pthread_mutex_lock(&c->lock);
	cur = c->map ? c->map->epoch : 0;
	pthread_mutex_unlock(&c->lock);
	uint64_t epoch = sp_frame_u64(f, SP_F_EPOCH);
	if (cur && epoch <= cur) {
		/* Only a router that lost its state file while its clock went back does this. */
		if (epoch < cur && !c->stale)
			sp_warn("cluster: the router offers map epoch %llu, older than the installed %llu: "
				"ignored until its epoch passes it",
				(unsigned long long)epoch, (unsigned long long)cur);
		c->stale = epoch < cur;
		return;
	}
	int rc = sp_cluster_map_from_frame(f, &m);
	if (rc) {
		sp_warn("cluster: ignoring a map from the router: %s", sp_strerror(rc));
		return;
	}
	/* Only this thread installs, so the epoch read above is still the current one. */
	pthread_mutex_lock(&c->lock);
	old = c->map;
	c->map = m;
	c->stale = false;
	void (*cb)(void *) = c->cb;
	void *arg = c->cb_arg;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	sp_cluster_map_put(old);
	sp_debug("cluster: map epoch %llu installed (%zu members)", (unsigned long long)m->epoch, m->n);
	if (cb)
		cb(arg);
}

/* One request to a router; installs the MAP it answers with. Returns SP_OK, the code of
 * an ERROR reply, or a transport error. */
static int
call_router(sp_cluster *c, router_conn *rc_, const sp_frame *q)
{
	nng_msg *msg = NULL;
	sp_frame r;
	/* A router that did not answer last time gets a short wait, so that one dead router
	 * does not stretch the heartbeats to the others; its dialer reconnects meanwhile. */
	int ms = rc_->down ? DOWN_CALL_TIMEOUT_MS : CALL_TIMEOUT_MS;
	nng_socket_set_ms(rc_->req, NNG_OPT_RECVTIMEO, ms);
	nng_socket_set_ms(rc_->req, NNG_OPT_SENDTIMEO, ms);
	int rc = sp_nng_call(rc_->req, q, &msg, &r);
	if (!msg)
		return rc;
	if (rc == SP_OK)
		install(c, &r);
	else if (!rc_->refused && rc != SP_EUNAVAIL)
		sp_warn("cluster: the router %s refused %s from '%s': %s", rc_->url,
			sp_frame_type_name(q->type), c->name ? c->name : "(observer)", sp_strerror(rc));
	sp_frame_fini(&r);
	nng_msg_free(msg);
	return rc;
}

static bool
transport_error(int rc)
{
	return rc == SP_ETIMEDOUT || rc == SP_ECLOSED || rc == SP_ENNG;
}

/* A heartbeat (or, for an observer or a member the router does not know, a MAP_GET) to
 * one router. SP_EUNAVAIL is a router with no map to give yet (its map lives in etcd and
 * it has not read it): the heartbeat counted, nothing to install. */
static void
poll_one(sp_cluster *c, router_conn *rt)
{
	sp_frame q;
	int rc = SP_EINVAL;

	if (c->name) {
		sp_frame_init(&q, SP_T_HEARTBEAT, 0, false);
		sp_frame_set_str(&q, SP_F_NAME, c->name);
		sp_frame_set_u64(&q, SP_F_ROLE, (uint64_t)c->role);
		sp_frame_set_u64(&q, SP_F_CONNS, atomic_load(&c->conns));
		rc = call_router(c, rt, &q);
		rt->refused = rc != SP_OK && rc != SP_EUNAVAIL && !transport_error(rc);
	}
	if (!c->name || rt->refused) {
		sp_frame_init(&q, SP_T_MAP_GET, 0, false);
		rc = call_router(c, rt, &q);
	}
	bool down = transport_error(rc);
	if (down && !rt->down && !atomic_load(&c->stop)) {
		pthread_mutex_lock(&c->lock);
		uint64_t epoch = c->map ? c->map->epoch : 0;
		pthread_mutex_unlock(&c->lock);
		if (epoch)
			sp_warn("cluster: router %s unreachable (%s); keeping map epoch %llu", rt->url,
				sp_strerror(rc), (unsigned long long)epoch);
		else
			sp_warn("cluster: router %s unreachable (%s); no map yet", rt->url,
				sp_strerror(rc));
	} else if (!down && rt->down) {
		sp_info("cluster: router %s reachable again", rt->url);
	}
	rt->down = down;
}

/* Every router in turn: each one tracks health from its own heartbeats. */
static void
poll_router(sp_cluster *c)
{
	for (size_t i = 0; i < c->nrouters && !atomic_load(&c->stop); i++)
		poll_one(c, &c->routers[i]);
}

static void *
cluster_thread(void *arg)
{
	sp_cluster *c = arg;
	uint64_t next = 0;

	while (!atomic_load(&c->stop)) {
		uint64_t now = sp_mono_ms();
		if (now >= next) {
			/* From the start of the call: a timed-out call does not stretch the period. */
			poll_router(c);
			next = now + SP_CLUSTER_HEARTBEAT_MS;
			continue;
		}
		nng_msg *msg;
		int rv = nng_recvmsg(c->sub, &msg, 0);
		if (rv == NNG_ECLOSED)
			break;
		if (rv)
			continue;
		sp_frame f;
		if (sp_nng_msg_decode(msg, &f) == SP_OK) {
			install(c, &f);
			sp_frame_fini(&f);
		}
		nng_msg_free(msg);
	}
	return NULL;
}

/* Splits a comma-separated list of URLs into out[] (strdup'ed). SP_EINVAL for an empty
 * item or more than SP_CLUSTER_MAX_ROUTERS. */
static int
split_urls(const char *list, char **out, size_t *n)
{
	*n = 0;
	const char *p = list;
	for (;;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		if (len == 0 || *n >= SP_CLUSTER_MAX_ROUTERS)
			return SP_EINVAL;
		if (!(out[*n] = strndup(p, len)))
			return SP_ENOMEM;
		(*n)++;
		if (!comma)
			return SP_OK;
		p = comma + 1;
	}
}

static int
sub_open(nng_socket *s, char **urls, size_t n)
{
	int rv = nng_sub0_open(s);
	if (rv)
		return sp_nng_err(rv);
	if ((rv = nng_socket_set(*s, NNG_OPT_SUB_SUBSCRIBE, "", 0)) ||
	    (rv = nng_socket_set_ms(*s, NNG_OPT_RECVTIMEO, SUB_POLL_MS)) ||
	    (rv = nng_socket_set_ms(*s, NNG_OPT_RECONNMINT, 20)) ||
	    (rv = nng_socket_set_ms(*s, NNG_OPT_RECONNMAXT, 1000)) ||
	    (rv = nng_socket_set_size(*s, NNG_OPT_RECVMAXSZ, sp_frame_limit_small() + 64))) {
		nng_close(*s);
		return sp_nng_err(rv);
	}
	/* One socket for every router: each publication arrives once per router, and the
	 * copies after the first are not newer, so they are ignored. */
	for (size_t i = 0; i < n; i++) {
		int rc = sp_nng_dial(*s, urls[i]); /* tls+tcp:// as the process's identity */
		if (rc) {
			nng_close(*s);
			return rc;
		}
	}
	return SP_OK;
}

static void
cluster_free(sp_cluster *c)
{
	for (size_t i = 0; i < c->nrouters; i++) {
		if (c->routers[i].open)
			nng_close(c->routers[i].req);
		free(c->routers[i].url);
	}
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
	free(c->name);
	free(c);
}

int
sp_cluster_start(const char *router_url, const char *pub_url, const char *self_name, int self_role,
		 sp_cluster **out)
{
	int rc;
	char *pubs[SP_CLUSTER_MAX_ROUTERS] = {0};
	size_t npub = 0;
	if (!router_url || !pub_url ||
	    (self_name && (!self_name[0] || strlen(self_name) > sp_field_def_get(SP_F_NAME)->max)))
		return SP_EINVAL;
	sp_cluster *c = calloc(1, sizeof(*c));
	if (!c)
		return SP_ENOMEM;
	c->role = self_role;
	pthread_mutex_init(&c->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &ca);
	pthread_condattr_destroy(&ca);
	rc = SP_ENOMEM;
	if (self_name && !(c->name = strdup(self_name)))
		goto fail;
	char *reqs[SP_CLUSTER_MAX_ROUTERS] = {0};
	size_t nreq = 0;
	rc = split_urls(router_url, reqs, &nreq);
	for (size_t i = 0; i < nreq; i++)
		c->routers[i].url = reqs[i];
	c->nrouters = nreq;
	if (rc || (rc = split_urls(pub_url, pubs, &npub)))
		goto fail;
	for (size_t i = 0; i < c->nrouters; i++) {
		if ((rc = sp_nng_req_open(&c->routers[i].req, c->routers[i].url, CALL_TIMEOUT_MS, 0)))
			goto fail;
		c->routers[i].open = true;
	}
	if ((rc = sub_open(&c->sub, pubs, npub)))
		goto fail;
	if (pthread_create(&c->thread, NULL, cluster_thread, c)) {
		nng_close(c->sub);
		rc = SP_ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < npub; i++)
		free(pubs[i]);
	*out = c;
	return SP_OK;
fail:
	for (size_t i = 0; i < npub; i++)
		free(pubs[i]);
	cluster_free(c);
	return rc;
}

int
sp_cluster_wait_map(sp_cluster *c, int timeout_ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&c->lock);
	while (!c->map)
		if (pthread_cond_timedwait(&c->cond, &c->lock, &ts))
			break;
	int rc = c->map ? SP_OK : SP_ETIMEDOUT;
	pthread_mutex_unlock(&c->lock);
	return rc;
}

void
sp_cluster_set_conns(sp_cluster *c, uint64_t conns)
{
	atomic_store(&c->conns, conns);
}

void
sp_cluster_on_change(sp_cluster *c, void (*cb)(void *arg), void *arg)
{
	pthread_mutex_lock(&c->lock);
	c->cb = cb;
	c->cb_arg = arg;
	pthread_mutex_unlock(&c->lock);
}

sp_cluster_map *
sp_cluster_map_get(sp_cluster *c)
{
	pthread_mutex_lock(&c->lock);
	sp_cluster_map *m = sp_cluster_map_hold(c->map);
	pthread_mutex_unlock(&c->lock);
	return m;
}

void
sp_cluster_stop(sp_cluster *c)
{
	if (!c)
		return;
	atomic_store(&c->stop, true);
	/* Closing aborts a request in flight, so the thread sees the flag at once. The SUB
	 * socket is closed only after the thread is gone: its receive returns every
	 * SUB_POLL_MS, and closing a SUB socket under a blocked receive can crash NNG 1.5
	 * (seen as a mutex panic in its sub0 code). */
	for (size_t i = 0; i < c->nrouters; i++) {
		nng_close(c->routers[i].req);
		c->routers[i].open = false;
	}
	pthread_join(c->thread, NULL);
	nng_close(c->sub);
	sp_cluster_map_put(c->map);
	cluster_free(c);
}
