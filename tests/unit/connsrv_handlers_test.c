/*
 * connsrv's handlers over fake servers: a session on one end of a bufferevent pair (the test
 * plays the client on the other end, through the real frame loop and dispatch table), a
 * fake router serving a cluster map of two inbox shards and keysrv, and fake shards and a
 * fake keysrv (NNG REP sockets on threads) answering as scripted. srv->ops->notify is
 * recorded instead of going to Redis. Covers the dispatch table against the catalogue,
 * SEND (appends to the owning shards, SENT only after every append, ERROR on a failed
 * append, MISMATCHED_DEVICES), the delivery window (ACK opens it, a gap fetches), DELIVERED
 * receipts after an ACK, READ receipts, deferred device-cache answers, a session freed
 * only after its last server call, and inbox calls through a failover: a copy that answers
 * SP_ENOTPRIMARY or times out is tried again, on the new primary once the map names it,
 * until the retry budget is spent, and an attempt waiting at a dead copy is cut short by the
 * map that names the new primary; other errors are answered at once. The fake shards share
 * one store, as a shard's copies do, and deduplicate appends by (device, from_device,
 * msg_id) as a shard does.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>

#include "connsrv/deliver.h"
#include "connsrv/internal.h"
#include "connsrv/receipts.h"
#include "sp_error.h"
#include "sp_framer.h"
#include "sp_nng.h"
#include "sp_time.h"
#include "check_run.h"

#define ROUTER_URL "inproc://csh-router"
#define PUB_URL "inproc://csh-pub"
#define SHARD0_URL "inproc://csh-inbox-0"
#define SHARD1_URL "inproc://csh-inbox-1"
#define KEYSRV_URL "inproc://csh-keysrv"
#define SHARD2_URL "inproc://csh-inbox-new" /* a copy that becomes a shard's primary */

/* Users and devices: user 1 has devices 11 and 12, user 2 has 21 and 22. */
#define ALICE 1
#define BOB 2

/* ---- the fake servers (state under `lock`) ---- */

#define MAX_DEV 64
#define MAX_ENTRIES 64
#define MAX_ITEMS 256

typedef struct entry {
	uint64_t seq, from_user, from_device, etype;
	uint64_t first_seq; /* seq, kept when the entry is deleted: what dedup answers */
	uint8_t msg_id[16];
	uint8_t env[256];
	uint32_t envlen;
} entry;

typedef struct item {
	char url[64];
	uint64_t device, from_user, from_device, etype;
	uint8_t msg_id[16];
	uint8_t env[256];
	uint32_t envlen;
} item;

/* How a fake shard answers every inbox request. */
typedef enum {
	MODE_OK,
	MODE_NOTPRIMARY, /* ERROR{SP_ENOTPRIMARY}: a copy that is no longer primary */
	MODE_SILENT,     /* no answer: a dead copy (the call times out) */
	MODE_FULL,       /* ERROR{SP_EFULL}: not retryable */
	MODE_BUSY,       /* ERROR{SP_EUNAVAIL, retry_after 5000} */
} fake_mode;

#define NFAKES 4

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	entry inbox[MAX_DEV][MAX_ENTRIES]; /* per device, seq order; seq 0: deleted */
	int ninbox[MAX_DEV];
	uint64_t last_seq[MAX_DEV];
	item items[MAX_ITEMS]; /* every append item received, in arrival order */
	int nitems;
	int fetches, devices_gets;
	atomic_bool hold[2];     /* shard i holds its APPEND_MULTI replies */
	atomic_bool fail_append; /* APPEND_MULTI answered ERROR{SP_EIO} */
	_Atomic int ack_delay_ms; /* each INBOX_ACK answered this much later */
	uint64_t ack_uptos[64];   /* upto of every INBOX_ACK received, in arrival order */
	int nacks;
	_Atomic int mode[NFAKES]; /* fake_mode of each fake shard */
	_Atomic int reqs[NFAKES]; /* inbox requests each fake shard received */
	/* The map the fake router serves: inbox member i's address, and the epoch. */
	const char *inbox_addr[2];
	uint64_t epoch;
} fk;

typedef struct fake_srv {
	const char *url;
	int shard; /* -1: keysrv */
	int slot;  /* index into fk.mode and fk.reqs */
	nng_socket sock;
	pthread_t th;
} fake_srv;

static void
store_entry(uint64_t device, const item *it, uint64_t seq)
{
	entry *e = &fk.inbox[device][fk.ninbox[device]++];
	e->seq = seq;
	e->from_user = it->from_user;
	e->from_device = it->from_device;
	e->etype = it->etype;
	memcpy(e->msg_id, it->msg_id, 16);
	memcpy(e->env, it->env, it->envlen);
	e->envlen = it->envlen;
	e->first_seq = seq;
}

/* The seq of the entry `it` already made in `device`'s inbox (deleted or not), or 0. */
static uint64_t
dedup_seq(uint64_t device, const item *it)
{
	for (int i = 0; i < fk.ninbox[device]; i++) {
		const entry *e = &fk.inbox[device][i];
		if (e->from_device == it->from_device && memcmp(e->msg_id, it->msg_id, 16) == 0)
			return e->first_seq;
	}
	return 0;
}

/* Stored entries of `device` (deleted or not) with msg_id byte 0 `b`. */
static int
stored(uint64_t device, uint8_t b)
{
	int n = 0;
	pthread_mutex_lock(&lock);
	for (int i = 0; i < fk.ninbox[device]; i++)
		n += fk.inbox[device][i].msg_id[0] == b;
	pthread_mutex_unlock(&lock);
	return n;
}

static void
answer_append_multi(fake_srv *fs, const sp_frame *q)
{
	while (atomic_load(&fk.hold[fs->shard]))
		usleep(1000);
	if (atomic_load(&fk.fail_append)) {
		sp_nng_send_error(fs->sock, q->id, q->has_id, SP_EIO, "scripted");
		return;
	}
	const sp_val *items = sp_frame_get(q, SP_F_APPEND_ITEMS);
	sp_frame res[MAX_ITEMS], r;
	pthread_mutex_lock(&lock);
	for (uint32_t i = 0; i < items->rs.n; i++) {
		const sp_frame *in = &items->rs.v[i];
		item *it = &fk.items[fk.nitems++];
		snprintf(it->url, sizeof(it->url), "%s", fs->url);
		it->device = sp_frame_u64(in, SP_F_DEVICE);
		it->from_user = sp_frame_u64(in, SP_F_FROM_USER);
		it->from_device = sp_frame_u64(in, SP_F_FROM_DEVICE);
		it->etype = sp_frame_u64(in, SP_F_ETYPE);
		memcpy(it->msg_id, sp_frame_bin(in, SP_F_MSG_ID).p, 16);
		sp_bin env = sp_frame_bin(in, SP_F_ENV);
		ck_assert_uint_le(env.len, sizeof(it->env));
		memcpy(it->env, env.p, env.len);
		it->envlen = env.len;
		uint64_t seq = dedup_seq(it->device, it);
		if (!seq) {
			seq = ++fk.last_seq[it->device];
			store_entry(it->device, it, seq);
		}
		sp_frame_init(&res[i], SP_T_APPEND_RESULT, 0, false);
		sp_frame_set_u64(&res[i], SP_F_SEQ, seq);
	}
	pthread_mutex_unlock(&lock);
	sp_frame_init(&r, SP_T_APPENDED_MULTI, q->id, q->has_id);
	sp_frame_set_recs(&r, SP_F_RESULTS, res, items->rs.n);
	ck_assert_int_eq(sp_nng_send_frame(fs->sock, &r), SP_OK);
}

static void
answer_fetch(fake_srv *fs, const sp_frame *q)
{
	uint64_t dev = sp_frame_u64(q, SP_F_DEVICE), after = sp_frame_u64(q, SP_F_AFTER_SEQ);
	uint64_t max = sp_frame_u64(q, SP_F_MAX_COUNT);
	sp_frame recs[MAX_ENTRIES], r;
	uint32_t n = 0;
	bool more = false;
	pthread_mutex_lock(&lock);
	fk.fetches++;
	for (int i = 0; i < fk.ninbox[dev]; i++) {
		const entry *e = &fk.inbox[dev][i];
		if (!e->seq || e->seq <= after)
			continue;
		if (n == max) {
			more = true;
			break;
		}
		sp_frame_init(&recs[n], SP_T_ENTRY, 0, false);
		sp_frame_set_u64(&recs[n], SP_F_SEQ, e->seq);
		sp_frame_set_bin(&recs[n], SP_F_MSG_ID, e->msg_id, 16);
		sp_frame_set_u64(&recs[n], SP_F_FROM_USER, e->from_user);
		sp_frame_set_u64(&recs[n], SP_F_FROM_DEVICE, e->from_device);
		sp_frame_set_u64(&recs[n], SP_F_SERVER_TS, 1);
		sp_frame_set_u64(&recs[n], SP_F_ETYPE, e->etype);
		sp_frame_set_bin(&recs[n], SP_F_ENV, e->env, e->envlen);
		n++;
	}
	sp_frame_init(&r, SP_T_ENTRIES_R, q->id, q->has_id);
	sp_frame_set_recs(&r, SP_F_ENTRIES, recs, n);
	sp_frame_set_bool(&r, SP_F_MORE, more);
	/* Packed under the lock: the records borrow the store. */
	ck_assert_int_eq(sp_nng_send_frame(fs->sock, &r), SP_OK);
	pthread_mutex_unlock(&lock);
}

static void
answer_ack(fake_srv *fs, const sp_frame *q)
{
	uint64_t dev = sp_frame_u64(q, SP_F_DEVICE), upto = sp_frame_u64(q, SP_F_UPTO_SEQ);
	const sp_val *seqs = sp_frame_get(q, SP_F_SEQS);
	sp_frame refs[MAX_ENTRIES], r;
	entry gone[MAX_ENTRIES];
	uint32_t n = 0;
	if (fk.ack_delay_ms)
		usleep((useconds_t)fk.ack_delay_ms * 1000);
	pthread_mutex_lock(&lock);
	if (fk.nacks < 64)
		fk.ack_uptos[fk.nacks] = upto;
	fk.nacks++;
	for (int i = 0; i < fk.ninbox[dev]; i++) {
		entry *e = &fk.inbox[dev][i];
		bool hit = e->seq && e->seq <= upto;
		for (uint32_t k = 0; seqs && k < seqs->us.n; k++)
			hit |= e->seq && seqs->us.v[k] == e->seq;
		if (!hit)
			continue;
		gone[n] = *e;
		e->seq = 0;
		sp_frame_init(&refs[n], SP_T_DELIVERED_REF, 0, false);
		sp_frame_set_u64(&refs[n], SP_F_FROM_USER, gone[n].from_user);
		sp_frame_set_u64(&refs[n], SP_F_FROM_DEVICE, gone[n].from_device);
		sp_frame_set_bin(&refs[n], SP_F_MSG_ID, gone[n].msg_id, 16);
		n++;
	}
	pthread_mutex_unlock(&lock);
	sp_frame_init(&r, SP_T_ACKED, q->id, q->has_id);
	sp_frame_set_recs(&r, SP_F_DELIVERED, refs, n);
	ck_assert_int_eq(sp_nng_send_frame(fs->sock, &r), SP_OK);
}

static void
answer_devices_get(fake_srv *fs, const sp_frame *q)
{
	static const uint8_t ik[33] = {5};
	uint64_t user = sp_frame_u64(q, SP_F_USER);
	sp_frame recs[2], r;
	pthread_mutex_lock(&lock);
	fk.devices_gets++;
	pthread_mutex_unlock(&lock);
	if (user != ALICE && user != BOB) {
		sp_nng_send_error(fs->sock, q->id, q->has_id, SP_ENOTFOUND, "no such user");
		return;
	}
	for (int i = 0; i < 2; i++) {
		sp_frame_init(&recs[i], SP_T_DEVICE_INFO, 0, false);
		sp_frame_set_u64(&recs[i], SP_F_DEVICE, user * 10 + 1 + (uint64_t)i);
		sp_frame_set_bin(&recs[i], SP_F_IDENTITY_KEY, ik, sizeof(ik));
		sp_frame_set_u64(&recs[i], SP_F_REG_ID, 1);
		sp_frame_set_bool(&recs[i], SP_F_PRIMARY, i == 0);
	}
	sp_frame_init(&r, SP_T_DEVICES_R, q->id, q->has_id);
	sp_frame_set_u64(&r, SP_F_USER, user);
	sp_frame_set_recs(&r, SP_F_DEVICE_LIST, recs, 2);
	ck_assert_int_eq(sp_nng_send_frame(fs->sock, &r), SP_OK);
}

static void
answer_blob_get(fake_srv *fs, const sp_frame *q)
{
	sp_frame r;
	sp_bin id = sp_frame_bin(q, SP_F_BLOB_ID);
	sp_frame_init(&r, SP_T_BLOB_DATA, q->id, q->has_id);
	sp_frame_set_bin(&r, SP_F_BLOB_ID, id.p, id.len);
	sp_frame_set_u64(&r, SP_F_OFFSET, 0);
	sp_frame_set_bin(&r, SP_F_BYTES, "blob", 4);
	sp_frame_set_u64(&r, SP_F_SIZE, 4);
	ck_assert_int_eq(sp_nng_send_frame(fs->sock, &r), SP_OK);
}

/* A scripted failure of an inbox request, if the fake's mode says so: true when handled. */
static bool
answer_scripted(fake_srv *fs, const sp_frame *q)
{
	if (fs->shard < 0)
		return false;
	atomic_fetch_add(&fk.reqs[fs->slot], 1);
	switch ((fake_mode)atomic_load(&fk.mode[fs->slot])) {
	case MODE_NOTPRIMARY:
		sp_nng_send_error(fs->sock, q->id, q->has_id, SP_ENOTPRIMARY, "not primary");
		return true;
	case MODE_SILENT:
		return true; /* the next receive abandons the request */
	case MODE_FULL:
		sp_nng_send_error(fs->sock, q->id, q->has_id, SP_EFULL, "full");
		return true;
	case MODE_BUSY: {
		sp_frame e;
		sp_frame_init(&e, SP_T_ERROR, q->id, q->has_id);
		sp_frame_set_i64(&e, SP_F_CODE, SP_EUNAVAIL);
		sp_frame_set_u64(&e, SP_F_RETRY_AFTER, 5000);
		ck_assert_int_eq(sp_nng_send_frame(fs->sock, &e), SP_OK);
		return true;
	}
	case MODE_OK:
		break;
	}
	return false;
}

static void *
fake_run(void *arg)
{
	fake_srv *fs = arg;
	nng_msg *m;
	while (nng_recvmsg(fs->sock, &m, 0) == 0) {
		sp_frame q;
		ck_assert_int_eq(sp_nng_msg_decode(m, &q), SP_OK);
		if (answer_scripted(fs, &q)) {
			sp_frame_fini(&q);
			nng_msg_free(m);
			continue;
		}
		switch (q.type) {
		case SP_T_APPEND_MULTI:
			answer_append_multi(fs, &q);
			break;
		case SP_T_FETCH:
			answer_fetch(fs, &q);
			break;
		case SP_T_INBOX_ACK:
			answer_ack(fs, &q);
			break;
		case SP_T_DEVICES_GET:
			answer_devices_get(fs, &q);
			break;
		case SP_T_BLOB_GET:
			answer_blob_get(fs, &q);
			break;
		default:
			sp_nng_send_error(fs->sock, q.id, q.has_id, SP_EPROTO, "not faked");
		}
		sp_frame_fini(&q);
		nng_msg_free(m);
	}
	return NULL;
}

/* The router: every MAP_GET is answered with the map of fk.inbox_addr and fk.epoch. */
static nng_socket router_sock, pub_sock;
static pthread_t router_th;

static void
map_frame(sp_frame *f, sp_frame recs[3], uint64_t id, bool has_id)
{
	static const char *names[2] = {"inbox-0", "inbox-1"};
	pthread_mutex_lock(&lock);
	for (int i = 0; i < 3; i++) {
		sp_frame_init(&recs[i], SP_T_MEMBER, 0, false);
		sp_frame_set_str(&recs[i], SP_F_NAME, i < 2 ? names[i] : "keysrv");
		sp_frame_set_u64(&recs[i], SP_F_ROLE, i < 2 ? SP_ROLE_INBOX : SP_ROLE_KEYSRV);
		sp_frame_set_str(&recs[i], SP_F_ADDR, i < 2 ? fk.inbox_addr[i] : KEYSRV_URL);
		sp_frame_set_u64(&recs[i], SP_F_SHARD, i < 2 ? (uint64_t)i : 0);
		sp_frame_set_bool(&recs[i], SP_F_HEALTHY, true);
	}
	sp_frame_init(f, SP_T_MAP, id, has_id);
	sp_frame_set_u64(f, SP_F_EPOCH, fk.epoch);
	sp_frame_set_recs(f, SP_F_MEMBERS, recs, 3);
	pthread_mutex_unlock(&lock);
}

static void *
router_run(void *arg)
{
	(void)arg;
	nng_msg *m;
	while (nng_recvmsg(router_sock, &m, 0) == 0) {
		sp_frame q, f, recs[3];
		if (sp_nng_msg_decode(m, &q) == SP_OK) {
			map_frame(&f, recs, q.id, q.has_id);
			sp_nng_send_frame(router_sock, &f);
			sp_frame_fini(&q);
		}
		nng_msg_free(m);
	}
	return NULL;
}

static fake_srv fakes[NFAKES] = {
	{SHARD0_URL, 0, 0, {0}, 0},
	{SHARD1_URL, 1, 1, {0}, 0},
	{KEYSRV_URL, -1, 2, {0}, 0},
	{SHARD2_URL, 0, 3, {0}, 0},
};

/* ---- the connsrv side ---- */

typedef struct notified {
	uint64_t device, seq, etype;
} notified;

static cs_server srv;
static struct bufferevent *client; /* the test's end of the pair */
static cs_session *sess;
static sp_frame got[512];           /* frames the client received */
static uint8_t *got_raw[512];
static int ngot;
static notified notes[256];
static int nnotes;

static void
fake_notify(cs_server *s, const sp_frame *entry, const uint64_t *devices, const uint64_t *seqs,
	    size_t n)
{
	(void)s;
	for (size_t i = 0; i < n; i++) {
		ck_assert_int_lt(nnotes, 256);
		notes[nnotes].device = devices[i];
		notes[nnotes].seq = seqs[i];
		notes[nnotes++].etype = sp_frame_u64(entry, SP_F_ETYPE);
	}
}

static const cs_ops test_ops = {
	.push = cs_deliver_push,
	.notify = fake_notify,
	.acked = cs_receipts_acked,
};

static void
on_client_read(struct bufferevent *bev, void *arg)
{
	(void)arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	for (;;) {
		sp_frame f;
		size_t used;
		int rc = sp_framer_next(in, sp_frame_limit_large(), &f, &used);
		if (rc == SP_EAGAIN)
			return;
		ck_assert_int_eq(rc, SP_OK);
		sp_frame_fini(&f);
		/* Kept decoded over an owned copy of the body. */
		ck_assert_int_lt(ngot, 512);
		uint8_t *raw = malloc(used - 4);
		memcpy(raw, evbuffer_pullup(in, (ev_ssize_t)used) + 4, used - 4);
		sp_framer_consume(in, used);
		ck_assert_int_eq(sp_frame_decode(raw, used - 4, &got[ngot]), SP_OK);
		got_raw[ngot++] = raw;
	}
}

static int
count(unsigned type)
{
	int n = 0;
	for (int i = 0; i < ngot; i++)
		n += got[i].type == type;
	return n;
}

/* The nth frame of `type` received (0-based), or NULL. */
static const sp_frame *
nth(unsigned type, int k)
{
	for (int i = 0; i < ngot; i++)
		if (got[i].type == type && k-- == 0)
			return &got[i];
	return NULL;
}

static void
client_send(const sp_frame *f)
{
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	ck_assert_int_eq(sp_frame_pack_prefixed(f, &sb), SP_OK);
	bufferevent_write(client, sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* Runs the loop until pred() holds (or for `ms` when pred is NULL); false on timeout. */
static bool
run_until(bool (*pred)(void), int ms)
{
	struct event *tick = event_new(srv.base, -1, EV_PERSIST, on_tick, NULL);
	struct timeval tv = {0, 5000};
	event_add(tick, &tv);
	uint64_t end = sp_time_ms() + (uint64_t)ms;
	bool ok = false;
	while (!(ok = pred && pred()) && sp_time_ms() < end)
		event_base_loop(srv.base, EVLOOP_ONCE);
	event_free(tick);
	return ok;
}

/* rpc_ms bounds each NNG call; retry_ms is --shard-retry-ms. */
static void
setup_with(int rpc_ms, int retry_ms)
{
	memset(&fk, 0, sizeof(fk));
	fk.inbox_addr[0] = SHARD0_URL;
	fk.inbox_addr[1] = SHARD1_URL;
	fk.epoch = 7;
	evthread_use_pthreads();
	ck_assert_int_eq(sp_nng_rep_listen(&router_sock, ROUTER_URL), SP_OK);
	ck_assert_int_eq(nng_pub0_open(&pub_sock), 0);
	ck_assert_int_eq(nng_listen(pub_sock, PUB_URL, NULL, 0), 0);
	pthread_create(&router_th, NULL, router_run, NULL);
	for (int i = 0; i < NFAKES; i++) {
		ck_assert_int_eq(sp_nng_rep_listen(&fakes[i].sock, fakes[i].url), SP_OK);
		pthread_create(&fakes[i].th, NULL, fake_run, &fakes[i]);
	}

	memset(&srv, 0, sizeof(srv));
	srv.cfg.window = 256;
	srv.cfg.out_pause_bytes = 256 * 1024;
	srv.cfg.out_max_bytes = 4 * 1024 * 1024;
	srv.cfg.send_rate = srv.cfg.send_burst = 1000;
	srv.cfg.devcache_ms = 10000;
	srv.cfg.idle_timeout_ms = 180000;
	srv.ops = &test_ops;
	snprintf(srv.pull_url, sizeof(srv.pull_url), "inproc://csh-pull");
	ck_assert_ptr_nonnull(srv.base = event_base_new());
	ck_assert_int_eq(cs_rpc_new(srv.base, rpc_ms, &srv.rpc), SP_OK);
	/* Nothing listens there: routes stay disconnected (claims fail, releases are no-ops). */
	ck_assert_int_eq(cs_routes_new(srv.base, "127.0.0.1:1", NULL, NULL, 90, &srv.routes), SP_OK);
	ck_assert_int_eq(cs_devcache_new(&srv, &srv.devcache), SP_OK);
	ck_assert_int_eq(sp_cluster_start(ROUTER_URL, PUB_URL, NULL, 0, &srv.cluster), SP_OK);
	ck_assert_int_eq(sp_cluster_wait_map(srv.cluster, 5000), SP_OK);
	ck_assert_int_eq(cs_shardcall_new(srv.base, srv.rpc, srv.cluster, retry_ms, &srv.shards), SP_OK);
	ck_assert_int_eq(cs_appendq_new(srv.base, srv.shards, &srv.appendq), SP_OK);
	ck_assert_int_eq(cs_session_start(&srv), SP_OK);
	srv.m.receipts = sp_metric_counter("test_receipts_total", "");
	srv.m.receipts_dropped = sp_metric_counter("test_receipts_dropped_total", "");
	srv.m.delivered_rt = sp_metric_counter("test_delivered_rt_total", "");

	struct bufferevent *pair[2];
	ck_assert_int_eq(bufferevent_pair_new(srv.base, BEV_OPT_DEFER_CALLBACKS, pair), 0);
	client = pair[1];
	bufferevent_setcb(client, on_client_read, NULL, NULL, NULL);
	bufferevent_enable(client, EV_READ | EV_WRITE);
	ck_assert_ptr_nonnull(sess = cs_session_new(&srv, pair[0], "test:1"));
	ngot = nnotes = 0;
}

static void
setup(void)
{
	setup_with(5000, 10000);
}

/* Logs the session in as (user, device) without the HELLO/AUTH exchange. */
static void
login_as(uint64_t user, uint64_t device)
{
	sess->user = user;
	sess->device = device;
	sess->conn_epoch = 99;
	cs_session_bind(sess);
}

static void
teardown(void)
{
	for (cs_session *s = srv.sessions, *next; s; s = next) {
		next = s->next;
		cs_session_close(s, false);
	}
	cs_rpc_free(srv.rpc);
	cs_shardcall_free(srv.shards);
	cs_appendq_free(srv.appendq);
	cs_routes_free(srv.routes);
	sp_cluster_stop(srv.cluster);
	cs_devcache_free(srv.devcache);
	cs_session_stop(&srv);
	ck_assert_ptr_null(srv.sessions);
	ck_assert_ptr_null(srv.closed);
	ck_assert_ptr_null(srv.reap);
	bufferevent_free(client);
	event_base_free(srv.base);
	for (int i = 0; i < NFAKES; i++) {
		nng_close(fakes[i].sock);
		pthread_join(fakes[i].th, NULL);
	}
	nng_close(router_sock);
	pthread_join(router_th, NULL);
	nng_close(pub_sock);
	for (int i = 0; i < ngot; i++) {
		sp_frame_fini(&got[i]);
		free(got_raw[i]);
	}
}

static const char *
owner_url(uint64_t device)
{
	static char url[64];
	sp_cluster_map *m = sp_cluster_map_get(srv.cluster);
	snprintf(url, sizeof(url), "%s", sp_cluster_map_shard_for(m, device)->addr);
	sp_cluster_map_put(m);
	return url;
}

static int
nitems(void)
{
	pthread_mutex_lock(&lock);
	int n = fk.nitems;
	pthread_mutex_unlock(&lock);
	return n;
}

/* A SEND of `n` items (device, ciphertext "ct<device>") from the session to `to`. */
static void
send_msg(uint64_t to, const uint64_t *devices, uint32_t n, uint8_t msg_id_byte)
{
	uint8_t msg_id[16] = {msg_id_byte};
	char ct[8][16];
	sp_frame f, items[8];
	for (uint32_t i = 0; i < n; i++) {
		snprintf(ct[i], sizeof(ct[i]), "ct%llu", (unsigned long long)devices[i]);
		sp_frame_init(&items[i], SP_T_SEND_ITEM, 0, false);
		sp_frame_set_u64(&items[i], SP_F_DEVICE, devices[i]);
		sp_frame_set_u64(&items[i], SP_F_ETYPE, 1);
		sp_frame_set_bin(&items[i], SP_F_CT, ct[i], strlen(ct[i]));
	}
	sp_frame_init(&f, SP_T_SEND, msg_id_byte, true);
	sp_frame_set_bin(&f, SP_F_MSG_ID, msg_id, 16);
	sp_frame_set_u64(&f, SP_F_TO_USER, to);
	sp_frame_set_recs(&f, SP_F_ITEMS, items, n);
	client_send(&f);
}

static bool got_sent(void) { return count(SP_T_SENT) > 0; }
static bool got_error(void) { return count(SP_T_ERROR) > 0; }
static bool got_mismatch(void) { return count(SP_T_MISMATCHED_DEVICES) > 0; }
static bool got_ok(void) { return count(SP_T_OK) > 0; }
static bool got_queue_empty(void) { return count(SP_T_QUEUE_EMPTY) > 0; }

/* ---- tests ---- */

START_TEST(test_dispatch_matches_catalogue)
{
	ck_assert_int_eq(cs_session_dispatch_mismatch(), -1);
	/* Every frame a client may send is served: by connsrv's table or forwarded to keysrv. */
	for (unsigned t = 0; t < SP_T__MAX; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		if (d && d->login != SP_LOGIN_NO)
			ck_assert_msg(d->tier == SP_TIER_CONNSRV || d->tier == SP_TIER_KEYSRV,
				      "%s: a client frame nobody serves", d->name);
	}
}
END_TEST

START_TEST(test_send_sent_after_every_append)
{
	setup();
	login_as(ALICE, 11);
	/* The recipient's devices and the sender's other device. */
	uint64_t devs[3] = {21, 22, 12};
	/* Hold the replies of the shard owning 21: SENT must wait for it. */
	int held = strcmp(owner_url(21), SHARD0_URL) == 0 ? 0 : 1;
	atomic_store(&fk.hold[held], true);
	send_msg(BOB, devs, 3, 0x41);
	run_until(NULL, 300);
	ck_assert_int_eq(count(SP_T_SENT), 0);
	ck_assert_int_eq(count(SP_T_ERROR), 0);
	atomic_store(&fk.hold[held], false);
	ck_assert(run_until(got_sent, 5000));
	const sp_frame *sent = nth(SP_T_SENT, 0);
	ck_assert_uint_eq(sent->id, 0x41);
	ck_assert_uint_eq(sp_frame_bin(sent, SP_F_MSG_ID).p[0], 0x41);
	/* One append per device, each at the shard that owns the device, from the session. */
	ck_assert_int_eq(nitems(), 3);
	for (int i = 0; i < 3; i++) {
		const item *it = &fk.items[i];
		ck_assert_str_eq(it->url, owner_url(it->device));
		ck_assert_uint_eq(it->from_user, ALICE);
		ck_assert_uint_eq(it->from_device, 11);
		char want[16];
		snprintf(want, sizeof(want), "ct%llu", (unsigned long long)it->device);
		ck_assert_uint_eq(it->envlen, strlen(want));
		ck_assert(memcmp(it->env, want, it->envlen) == 0);
	}
	/* Each stored entry is announced to its device's holder. */
	ck_assert_int_eq(nnotes, 3);
	for (int i = 0; i < 3; i++)
		ck_assert_uint_eq(notes[i].seq, 1);
	teardown();
}
END_TEST

START_TEST(test_send_failed_append_is_error)
{
	setup();
	login_as(ALICE, 11);
	atomic_store(&fk.fail_append, true);
	uint64_t devs[3] = {21, 22, 12};
	send_msg(BOB, devs, 3, 0x42);
	ck_assert(run_until(got_error, 5000));
	run_until(NULL, 100);
	ck_assert_int_eq(count(SP_T_SENT), 0);
	const sp_frame *e = nth(SP_T_ERROR, 0);
	ck_assert_int_eq(sp_frame_i64(e, SP_F_CODE), SP_EIO);
	ck_assert_uint_eq(sp_frame_bin(e, SP_F_MSG_ID).p[0], 0x42);
	ck_assert_int_eq(nnotes, 0);
	/* Not a failover: answered as it came, not retried. */
	ck_assert_int_eq(sp_metric_value(sp_metric_counter("sp_connsrv_shard_retries_total", "")), 0);
	teardown();
}
END_TEST

START_TEST(test_send_mismatched_devices)
{
	setup();
	login_as(ALICE, 11);
	uint64_t devs[2] = {21, 99}; /* 22 and the sender's 12 missing, 99 extra */
	send_msg(BOB, devs, 2, 0x43);
	ck_assert(run_until(got_mismatch, 5000));
	const sp_frame *m = nth(SP_T_MISMATCHED_DEVICES, 0);
	const sp_val *missing = sp_frame_get(m, SP_F_MISSING), *extra = sp_frame_get(m, SP_F_EXTRA);
	ck_assert_uint_eq(missing->us.n, 2);
	ck_assert(missing->us.v[0] + missing->us.v[1] == 22 + 12);
	ck_assert_uint_eq(extra->us.n, 1);
	ck_assert_uint_eq(extra->us.v[0], 99);
	ck_assert_int_eq(nitems(), 0);
	/* The cached lists were checked again against fresh ones before answering. */
	ck_assert_int_eq(fk.devices_gets, 4);
	teardown();
}
END_TEST

/* Puts `n` entries from ALICE/11 into device `dev`'s inbox, msg_id byte 0 = seq. */
static void
fill_inbox(uint64_t dev, int n)
{
	pthread_mutex_lock(&lock);
	for (int i = 0; i < n; i++) {
		item it = {.from_user = ALICE, .from_device = 11, .etype = 1, .envlen = 1};
		uint64_t seq = ++fk.last_seq[dev];
		it.msg_id[0] = (uint8_t)seq;
		it.env[0] = 'm';
		store_entry(dev, &it, seq);
	}
	pthread_mutex_unlock(&lock);
}

static void
client_ack(uint64_t upto)
{
	sp_frame a;
	sp_frame_init(&a, SP_T_ACK, 0, false);
	sp_frame_set_u64(&a, SP_F_UPTO_SEQ, upto);
	client_send(&a);
}

static int want_delivers;
static bool got_delivers(void) { return count(SP_T_DELIVER) >= want_delivers; }
static bool acked_all(void) { return sess->acked_seq == sess->sent_seq; }

static bool
inbox_empty_21(void)
{
	pthread_mutex_lock(&lock);
	bool empty = true;
	for (int i = 0; i < fk.ninbox[21]; i++)
		empty &= fk.inbox[21][i].seq == 0;
	pthread_mutex_unlock(&lock);
	return empty && !sess->ack_sending;
}

/* One cumulative INBOX_ACK in flight per session: the client's ACKs meanwhile leave as one,
 * the highest, when it is answered; nothing any of them named stays on the shard. */
START_TEST(test_acks_merged_while_one_in_flight)
{
	setup();
	srv.m.acks_merged = sp_metric_counter("test_acks_merged_total", "");
	int64_t merged = sp_metric_value(srv.m.acks_merged);
	fill_inbox(21, 10);
	login_as(BOB, 21);
	cs_session_logged_in(sess, 0);
	want_delivers = 10;
	ck_assert(run_until(got_delivers, 5000));
	fk.ack_delay_ms = 300;
	int before = fk.nacks;
	client_ack(2);
	run_until(NULL, 50);
	client_ack(5);
	client_ack(4); /* below the one waiting: adds nothing */
	client_ack(8);
	client_ack(10);
	ck_assert(run_until(inbox_empty_21, 5000));
	ck_assert_int_eq(fk.nacks - before, 2);
	ck_assert_uint_eq(fk.ack_uptos[before], 2);
	ck_assert_uint_eq(fk.ack_uptos[before + 1], 10);
	ck_assert_int_eq(sp_metric_value(srv.m.acks_merged) - merged, 4);
	ck_assert_uint_eq(sess->acked_seq, 10);
	/* With nothing in flight an ACK leaves at once, as itself (the first one above, and
	 * this one, which the fake answers at once). */
	fk.ack_delay_ms = 0;
	int64_t m2 = sp_metric_value(srv.m.acks_merged);
	client_ack(10);
	run_until(NULL, 100);
	ck_assert(run_until(inbox_empty_21, 5000));
	ck_assert_int_eq(fk.nacks - before, 3);
	ck_assert_uint_eq(fk.ack_uptos[before + 2], 10);
	ck_assert_int_eq(sp_metric_value(srv.m.acks_merged), m2);
	teardown();
}
END_TEST

START_TEST(test_delivery_window)
{
	setup();
	srv.cfg.window = 4;
	fill_inbox(21, 10);
	login_as(BOB, 21);
	cs_session_logged_in(sess, 0);
	want_delivers = 4;
	ck_assert(run_until(got_delivers, 5000));
	run_until(NULL, 200);
	/* No more than the window outstanding, and the drain is not over. */
	ck_assert_int_eq(count(SP_T_DELIVER), 4);
	ck_assert_int_eq(count(SP_T_QUEUE_EMPTY), 0);
	for (int i = 0; i < 4; i++)
		ck_assert_uint_eq(sp_frame_u64(nth(SP_T_DELIVER, i), SP_F_SEQ), (uint64_t)i + 1);
	/* An ACK opens the window by what it acknowledged. */
	client_ack(2);
	want_delivers = 6;
	ck_assert(run_until(got_delivers, 5000));
	run_until(NULL, 200);
	ck_assert_int_eq(count(SP_T_DELIVER), 6);
	client_ack(6);
	want_delivers = 10;
	ck_assert(run_until(got_delivers, 5000));
	client_ack(10);
	ck_assert(run_until(acked_all, 5000));
	ck_assert(got_queue_empty());
	ck_assert_int_eq(count(SP_T_DELIVER), 10);
	ck_assert_uint_eq(sp_frame_u64(nth(SP_T_QUEUE_EMPTY, 0), SP_F_SEQ), 10);

	/* A pushed hint that is the next seq is written at once, without a fetch. */
	fill_inbox(21, 2);
	int fetches = fk.fetches;
	int64_t rt = sp_metric_value(srv.m.delivered_rt);
	sp_frame d;
	uint8_t id[16] = {11};
	sp_frame_init(&d, SP_T_DELIVER, 0, false);
	sp_frame_set_u64(&d, SP_F_SEQ, 11);
	sp_frame_set_bin(&d, SP_F_MSG_ID, id, 16);
	sp_frame_set_u64(&d, SP_F_FROM_USER, ALICE);
	sp_frame_set_u64(&d, SP_F_FROM_DEVICE, 11);
	sp_frame_set_u64(&d, SP_F_SERVER_TS, 1);
	sp_frame_set_u64(&d, SP_F_ETYPE, 1);
	sp_frame_set_bin(&d, SP_F_ENV, "m", 1);
	sp_frame_set_u64(&d, SP_F_DEVICE, 21);
	sp_frame_set_u64(&d, SP_F_CONN_EPOCH, 99);
	cs_deliver_push(&srv, &d);
	want_delivers = 11;
	ck_assert(run_until(got_delivers, 5000));
	ck_assert_int_eq(fk.fetches, fetches);
	ck_assert_int_eq(sp_metric_value(srv.m.delivered_rt) - rt, 1);

	/* A gap (13 while 12 was never written) is filled from the shard, in order. */
	fill_inbox(21, 1);
	sp_frame_set_u64(&d, SP_F_SEQ, 13);
	cs_deliver_push(&srv, &d);
	want_delivers = 13;
	ck_assert(run_until(got_delivers, 5000));
	ck_assert_int_gt(fk.fetches, fetches);
	ck_assert_uint_eq(sp_frame_u64(nth(SP_T_DELIVER, 11), SP_F_SEQ), 12);
	ck_assert_uint_eq(sp_frame_u64(nth(SP_T_DELIVER, 12), SP_F_SEQ), 13);

	/* A hint for an older connection of the device is not written. */
	sp_frame_set_u64(&d, SP_F_SEQ, 14);
	sp_frame_set_u64(&d, SP_F_CONN_EPOCH, 98);
	cs_deliver_push(&srv, &d);
	run_until(NULL, 100);
	ck_assert_int_eq(count(SP_T_DELIVER), 13);
	teardown();
}
END_TEST

static int want_items;
static bool got_items(void) { return nitems() >= want_items; }

/* The receipt appended as item i: its envelope decoded. */
static void
check_receipt(int i, uint64_t to_device, unsigned kind, uint64_t from_user, uint64_t from_device,
	      uint8_t msg_id_byte)
{
	const item *it = &fk.items[i];
	ck_assert_uint_eq(it->device, to_device);
	ck_assert_uint_eq(it->etype, kind);
	ck_assert_uint_eq(it->from_device, 0);
	ck_assert_uint_eq(it->from_user, from_user);
	sp_frame r;
	ck_assert_int_eq(sp_frame_decode(it->env, it->envlen, &r), SP_OK);
	ck_assert_int_eq(r.type, SP_T_RECEIPT);
	ck_assert_uint_eq(sp_frame_u64(&r, SP_F_KIND), kind);
	ck_assert_uint_eq(sp_frame_u64(&r, SP_F_FROM_USER), from_user);
	ck_assert_uint_eq(sp_frame_u64(&r, SP_F_FROM_DEVICE), from_device);
	const sp_val *ids = sp_frame_get(&r, SP_F_MSG_IDS);
	ck_assert_uint_eq(ids->bs.n, 1);
	ck_assert_uint_eq(ids->bs.v[0].p[0], msg_id_byte);
	sp_frame_fini(&r);
}

START_TEST(test_delivered_receipt_after_ack)
{
	setup();
	fill_inbox(21, 1); /* from ALICE/11, msg_id byte 1 */
	login_as(BOB, 21);
	cs_session_logged_in(sess, 0);
	ck_assert(run_until(got_queue_empty, 5000));
	client_ack(1);
	/* One DELIVERED receipt per device of the sender, made by the server. */
	want_items = 2;
	ck_assert(run_until(got_items, 5000));
	run_until(NULL, 100);
	ck_assert_int_eq(nitems(), 2);
	uint64_t sum = 0;
	for (int i = 0; i < 2; i++) {
		check_receipt(i, fk.items[i].device, SP_ETYPE_RECEIPT_DELIVERED, BOB, 21, 1);
		ck_assert_str_eq(fk.items[i].url, owner_url(fk.items[i].device));
		sum += fk.items[i].device;
	}
	ck_assert_uint_eq(sum, 11 + 12);
	ck_assert_int_eq(nnotes, 2);
	ck_assert_uint_eq(notes[0].etype, SP_ETYPE_RECEIPT_DELIVERED);
	ck_assert_int_eq(sp_metric_value(srv.m.receipts), 2);
	teardown();
}
END_TEST

START_TEST(test_read_receipt)
{
	setup();
	login_as(BOB, 21);
	uint8_t id[16] = {0x55};
	sp_bin ids[1] = {{id, 16}};
	sp_frame r;
	sp_frame_init(&r, SP_T_READ, 5, true);
	sp_frame_set_u64(&r, SP_F_TO_USER, ALICE);
	sp_frame_set_bins(&r, SP_F_MSG_IDS, ids, 1);
	client_send(&r);
	ck_assert(run_until(got_ok, 5000));
	ck_assert_uint_eq(nth(SP_T_OK, 0)->id, 5);
	want_items = 2;
	ck_assert(run_until(got_items, 5000));
	for (int i = 0; i < 2; i++)
		check_receipt(i, fk.items[i].device, SP_ETYPE_RECEIPT_READ, BOB, 21, 0x55);

	/* A receipt to a user keysrv does not know is counted as dropped. */
	int64_t dropped = sp_metric_value(srv.m.receipts_dropped);
	cs_receipts_queue(&srv, BOB, 21, 77, SP_ETYPE_RECEIPT_READ, ids, 1, NULL, NULL);
	run_until(NULL, 300);
	ck_assert_int_eq(sp_metric_value(srv.m.receipts_dropped) - dropped, 1);
	teardown();
}
END_TEST

/* READ is answered only once its receipt is stored on every device of the sender: not
 * while a shard holds its answer, ERROR (retryable) when an append fails, and a final
 * ERROR for a user that does not exist. */
START_TEST(test_read_ok_only_when_stored)
{
	setup();
	login_as(BOB, 21);
	uint8_t id[16] = {0x56};
	sp_bin ids[1] = {{id, 16}};
	sp_frame r;
	atomic_store(&fk.hold[0], true);
	atomic_store(&fk.hold[1], true);
	sp_frame_init(&r, SP_T_READ, 6, true);
	sp_frame_set_u64(&r, SP_F_TO_USER, ALICE);
	sp_frame_set_bins(&r, SP_F_MSG_IDS, ids, 1);
	client_send(&r);
	run_until(NULL, 300);
	ck_assert_int_eq(count(SP_T_OK), 0);
	ck_assert_int_eq(count(SP_T_ERROR), 0);
	atomic_store(&fk.hold[0], false);
	atomic_store(&fk.hold[1], false);
	ck_assert(run_until(got_ok, 5000));
	ck_assert_uint_eq(nth(SP_T_OK, 0)->id, 6);
	ck_assert_int_eq(nitems(), 2);

	atomic_store(&fk.fail_append, true);
	id[0] = 0x57;
	sp_frame_init(&r, SP_T_READ, 7, true);
	sp_frame_set_u64(&r, SP_F_TO_USER, ALICE);
	sp_frame_set_bins(&r, SP_F_MSG_IDS, ids, 1);
	client_send(&r);
	ck_assert(run_until(got_error, 5000));
	run_until(NULL, 100);
	ck_assert_int_eq(count(SP_T_OK), 1);
	const sp_frame *e = nth(SP_T_ERROR, 0);
	ck_assert_uint_eq(e->id, 7);
	ck_assert_int_eq(sp_frame_i64(e, SP_F_CODE), SP_EUNAVAIL);
	atomic_store(&fk.fail_append, false);

	sp_frame_init(&r, SP_T_READ, 8, true);
	sp_frame_set_u64(&r, SP_F_TO_USER, 77);
	sp_frame_set_bins(&r, SP_F_MSG_IDS, ids, 1);
	client_send(&r);
	run_until(NULL, 500);
	ck_assert_int_eq(count(SP_T_ERROR), 2);
	e = nth(SP_T_ERROR, 1);
	ck_assert_uint_eq(e->id, 8);
	ck_assert_int_eq(sp_frame_i64(e, SP_F_CODE), SP_ENOTFOUND);
	ck_assert_int_eq(count(SP_T_OK), 1);
	teardown();
}
END_TEST

static int answered;

static void
on_devices(void *arg, int rc, const uint64_t *devices, size_t n)
{
	(void)arg;
	ck_assert_int_eq(rc, SP_OK);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(devices[0], 11);
	answered++;
}

static bool got_answer(void) { return answered > 0; }

START_TEST(test_devcache_answers_later)
{
	setup();
	answered = 0;
	cs_devcache_get(&srv, ALICE, false, on_devices, NULL);
	ck_assert_int_eq(answered, 0);
	ck_assert(run_until(got_answer, 5000));
	/* A cache hit too is answered from the loop, never inside the call. */
	cs_devcache_get(&srv, ALICE, false, on_devices, NULL);
	ck_assert_int_eq(answered, 1);
	run_until(NULL, 50);
	ck_assert_int_eq(answered, 2);
	ck_assert_int_eq(fk.devices_gets, 1);
	teardown();
}
END_TEST

static bool reaped(void) { return !srv.closed && !srv.reap; }

START_TEST(test_closed_session_freed_after_its_calls)
{
	setup();
	login_as(ALICE, 11);
	int held = strcmp(owner_url(21), SHARD0_URL) == 0 ? 0 : 1;
	atomic_store(&fk.hold[held], true);
	uint64_t devs[3] = {21, 22, 12};
	send_msg(BOB, devs, 3, 0x44);
	run_until(NULL, 200);
	ck_assert_uint_gt(sess->inflight, 0);
	/* The client goes away while the SEND is in flight: the session is closed at once
	 * (out of the registry) but kept until the append answers. */
	cs_session_close(sess, false);
	ck_assert_ptr_null(srv.sessions);
	ck_assert_ptr_null(srv.by_device);
	run_until(NULL, 100);
	ck_assert_ptr_eq(srv.closed, sess);
	atomic_store(&fk.hold[held], false);
	ck_assert(run_until(reaped, 5000));
	ck_assert_int_eq(count(SP_T_SENT), 0); /* a closed session is never written to */
	teardown();
}
END_TEST

/* ---- inbox calls through a failover ---- */

static int64_t
counter(const char *name)
{
	return sp_metric_value(sp_metric_counter(name, ""));
}

static int64_t retries_before;
static bool retried(void) { return counter("sp_connsrv_shard_retries_total") > retries_before; }
static int64_t giveups(void) { return counter("sp_connsrv_shard_giveups_total"); }
static int reqs_slot, reqs_want;
static bool got_reqs(void) { return atomic_load(&fk.reqs[reqs_slot]) >= reqs_want; }

/* The fake (slot) at the address the current map gives the owner of `device` / of a key. */
static int
slot_of(const char *url)
{
	for (int i = 0; i < NFAKES; i++)
		if (strcmp(fakes[i].url, url) == 0)
			return i;
	ck_abort_msg("no fake at %s", url);
	return -1;
}

static int
owner_slot(uint64_t device)
{
	return slot_of(owner_url(device));
}

static uint64_t want_epoch;

static bool
map_installed(void)
{
	sp_cluster_map *m = sp_cluster_map_get(srv.cluster);
	bool ok = sp_cluster_map_epoch(m) == want_epoch;
	sp_cluster_map_put(m);
	return ok;
}

/* Inbox member `member`'s primary is now the fake at `url`: the router publishes a new map
 * (same ring, the member's new address), and connsrv installs it. */
static void
fail_over(int member, const char *url)
{
	sp_frame f, recs[3];
	pthread_mutex_lock(&lock);
	fk.inbox_addr[member] = url;
	want_epoch = ++fk.epoch;
	pthread_mutex_unlock(&lock);
	map_frame(&f, recs, 0, false);
	ck_assert_int_eq(sp_nng_send_frame(pub_sock, &f), SP_OK);
	ck_assert(run_until(map_installed, 5000));
	cs_shardcall_map_changed(srv.shards); /* as main.c does on every new map */
}

static const uint64_t bob_and_alice12[3] = {21, 22, 12};

START_TEST(test_append_retried_on_new_primary)
{
	setup();
	login_as(ALICE, 11);
	int m = owner_slot(21);
	atomic_store(&fk.mode[m], MODE_NOTPRIMARY);
	retries_before = 0;
	send_msg(BOB, bob_and_alice12, 3, 0x45);
	/* Refused, and tried again on the same copy while the map still names it. */
	reqs_slot = m;
	reqs_want = 2;
	ck_assert(run_until(got_reqs, 3000));
	ck_assert(retried());
	ck_assert_int_eq(count(SP_T_SENT) + count(SP_T_ERROR), 0);
	fail_over(m, SHARD2_URL);
	ck_assert(run_until(got_sent, 5000));
	ck_assert_int_eq(count(SP_T_ERROR), 0);
	/* Every append was stored once, at the primary of its device's shard in the new map
	 * (the refused copy stored nothing), with the client's msg_id. */
	ck_assert_int_eq(nitems(), 3);
	bool moved = false;
	for (int i = 0; i < 3; i++) {
		ck_assert_str_eq(fk.items[i].url, owner_url(fk.items[i].device));
		ck_assert_uint_eq(fk.items[i].msg_id[0], 0x45);
		moved |= strcmp(fk.items[i].url, SHARD2_URL) == 0;
		ck_assert_int_eq(stored(fk.items[i].device, 0x45), 1);
	}
	ck_assert(moved);
	ck_assert_int_eq(nnotes, 3);
	ck_assert_int_eq(giveups(), 0);
	teardown();
}
END_TEST

START_TEST(test_append_retried_after_timeout)
{
	setup_with(200, 10000); /* calls time out after 200 ms */
	login_as(ALICE, 11);
	int m = owner_slot(21);
	atomic_store(&fk.mode[m], MODE_SILENT);
	retries_before = 0;
	send_msg(BOB, bob_and_alice12, 3, 0x46);
	ck_assert(run_until(retried, 3000));
	ck_assert_int_eq(count(SP_T_SENT) + count(SP_T_ERROR), 0);
	/* The copy answers again (or a new one would): the retry goes through, and an attempt
	 * the copy served late could not store the entry twice. */
	atomic_store(&fk.mode[m], MODE_OK);
	ck_assert(run_until(got_sent, 5000));
	ck_assert_int_eq(count(SP_T_ERROR), 0);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(stored(bob_and_alice12[i], 0x46), 1);
	ck_assert_int_eq(giveups(), 0);
	teardown();
}
END_TEST

START_TEST(test_attempt_to_dead_copy_cut_short_by_new_map)
{
	setup(); /* calls time out after 5 s */
	login_as(ALICE, 11);
	int m = owner_slot(21);
	atomic_store(&fk.mode[m], MODE_SILENT); /* the primary died with the request */
	send_msg(BOB, bob_and_alice12, 3, 0x4b);
	reqs_slot = m;
	reqs_want = 1;
	ck_assert(run_until(got_reqs, 3000));
	/* The new map names another copy: the attempt still waiting at the dead one is cut
	 * short and sent there, well before its timeout. */
	uint64_t t0 = sp_mono_ns();
	fail_over(m, SHARD2_URL);
	ck_assert(run_until(got_sent, 2000));
	ck_assert_uint_lt((sp_mono_ns() - t0) / 1000000, 2000);
	ck_assert_int_eq(count(SP_T_ERROR), 0);
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(stored(bob_and_alice12[i], 0x4b), 1);
	ck_assert_int_eq(counter("sp_connsrv_shard_retries_total"), 1);
	ck_assert_int_eq(giveups(), 0);
	teardown();
}
END_TEST

START_TEST(test_giveup_after_budget)
{
	setup_with(5000, 300); /* --shard-retry-ms 300 */
	login_as(ALICE, 11);
	int m = owner_slot(21);
	atomic_store(&fk.mode[m], MODE_NOTPRIMARY);
	uint64_t t0 = sp_mono_ns();
	send_msg(BOB, bob_and_alice12, 3, 0x47);
	ck_assert(run_until(got_error, 3000));
	uint64_t ms = (sp_mono_ns() - t0) / 1000000;
	ck_assert_uint_ge(ms, 290);
	ck_assert_uint_lt(ms, 2000);
	/* The client hears the retryable error it always heard for a shard it cannot reach,
	 * never the copy's SP_ENOTPRIMARY. */
	const sp_frame *e = nth(SP_T_ERROR, 0);
	ck_assert_uint_eq(e->id, 0x47);
	ck_assert_int_eq(sp_frame_i64(e, SP_F_CODE), SP_EUNAVAIL);
	ck_assert_uint_eq(sp_frame_bin(e, SP_F_MSG_ID).p[0], 0x47);
	ck_assert_int_eq(count(SP_T_SENT), 0);
	ck_assert_int_ge(counter("sp_connsrv_shard_retries_total"), 2);
	ck_assert_int_eq(giveups(), 1);
	teardown();
}
END_TEST

START_TEST(test_retry_after_honoured)
{
	setup_with(5000, 300);
	login_as(ALICE, 11);
	int m = owner_slot(21);
	/* ERROR{SP_EUNAVAIL, retry_after 5000}: the next attempt waits for it, cut to the
	 * budget, so there are exactly two, where the backoff alone would make four or more. */
	atomic_store(&fk.mode[m], MODE_BUSY);
	uint64_t t0 = sp_mono_ns();
	send_msg(BOB, bob_and_alice12, 3, 0x49);
	ck_assert(run_until(got_error, 3000));
	ck_assert_uint_ge((sp_mono_ns() - t0) / 1000000, 290);
	ck_assert_int_eq(sp_frame_i64(nth(SP_T_ERROR, 0), SP_F_CODE), SP_EUNAVAIL);
	ck_assert_int_eq(atomic_load(&fk.reqs[m]), 2);
	ck_assert_int_eq(giveups(), 1);
	teardown();
}
END_TEST

START_TEST(test_non_retryable_error_answered_at_once)
{
	setup();
	login_as(ALICE, 11);
	/* Every device of bob's full (a send that reaches some of them is SENT, naming the
	 * others in grp_refused): the message did not go, and SP_EFULL is not retried. */
	int m = owner_slot(21), m2 = owner_slot(22);
	atomic_store(&fk.mode[m], MODE_FULL);
	atomic_store(&fk.mode[m2], MODE_FULL);
	send_msg(BOB, bob_and_alice12, 3, 0x4a);
	ck_assert(run_until(got_error, 3000));
	run_until(NULL, 200);
	ck_assert_int_eq(sp_frame_i64(nth(SP_T_ERROR, 0), SP_F_CODE), SP_EFULL);
	ck_assert_int_eq(count(SP_T_ERROR), 1);
	ck_assert_int_eq(atomic_load(&fk.reqs[m]), 1);
	ck_assert_int_eq(atomic_load(&fk.reqs[m2]), 1);
	ck_assert_int_eq(counter("sp_connsrv_shard_retries_total"), 0);
	ck_assert_int_eq(giveups(), 0);
	teardown();
}
END_TEST

static bool
inbox_deleted(void)
{
	pthread_mutex_lock(&lock);
	bool all = true;
	for (int i = 0; i < fk.ninbox[21]; i++)
		all &= fk.inbox[21][i].seq == 0;
	pthread_mutex_unlock(&lock);
	return all;
}

static bool two_receipts(void) { return sp_metric_value(srv.m.receipts) == 2; }

START_TEST(test_fetch_and_ack_follow_the_primary)
{
	setup();
	fill_inbox(21, 3);
	int m = owner_slot(21);
	atomic_store(&fk.mode[m], MODE_NOTPRIMARY);
	login_as(BOB, 21);
	retries_before = 0;
	cs_session_logged_in(sess, 0);
	ck_assert(run_until(retried, 3000));
	ck_assert_int_eq(count(SP_T_DELIVER), 0);
	/* The shard's copies hold the same entries: the new primary serves the drain. */
	fail_over(m, SHARD2_URL);
	ck_assert(run_until(got_queue_empty, 5000));
	ck_assert_int_eq(count(SP_T_DELIVER), 3);
	/* And back: the ACK meets the old primary's refusal, then the copy named next. */
	atomic_store(&fk.mode[m], MODE_OK);
	atomic_store(&fk.mode[3], MODE_NOTPRIMARY);
	retries_before = counter("sp_connsrv_shard_retries_total");
	client_ack(3);
	ck_assert(run_until(retried, 3000));
	ck_assert(!inbox_deleted());
	fail_over(m, fakes[m].url);
	ck_assert(run_until(inbox_deleted, 5000));
	/* Its ACKED reply made the DELIVERED receipts to the sender's two devices. */
	ck_assert(run_until(two_receipts, 5000));
	ck_assert_int_eq(giveups(), 0);
	teardown();
}
END_TEST

static bool got_media(void) { return count(SP_T_MEDIA_DATA) > 0; }

START_TEST(test_media_follows_the_primary)
{
	setup();
	login_as(ALICE, 11);
	uint8_t blob[16] = {9, 9};
	sp_cluster_map *map = sp_cluster_map_get(srv.cluster);
	int m = slot_of(sp_cluster_map_shard_for_key(map, blob, 16)->addr);
	sp_cluster_map_put(map);
	atomic_store(&fk.mode[m], MODE_NOTPRIMARY);
	retries_before = 0;
	sp_frame g;
	sp_frame_init(&g, SP_T_MEDIA_GET, 9, true);
	sp_frame_set_bin(&g, SP_F_BLOB_ID, blob, 16);
	sp_frame_set_u64(&g, SP_F_OFFSET, 0);
	sp_frame_set_u64(&g, SP_F_LEN, 4);
	client_send(&g);
	ck_assert(run_until(retried, 3000));
	fail_over(m, SHARD2_URL);
	ck_assert(run_until(got_media, 5000));
	const sp_frame *d = nth(SP_T_MEDIA_DATA, 0);
	ck_assert_uint_eq(d->id, 9);
	ck_assert(memcmp(sp_frame_bin(d, SP_F_BYTES).p, "blob", 4) == 0);
	ck_assert_int_eq(count(SP_T_ERROR), 0);
	teardown();
}
END_TEST

START_TEST(test_session_closed_while_retrying)
{
	setup();
	login_as(ALICE, 11);
	int m = owner_slot(21);
	atomic_store(&fk.mode[m], MODE_NOTPRIMARY);
	retries_before = 0;
	send_msg(BOB, bob_and_alice12, 3, 0x48);
	ck_assert(run_until(retried, 3000));
	/* The client goes away between two attempts: the session is kept (its SEND is still
	 * a call outstanding) and never written to; it is freed once the retry is over. */
	cs_session_close(sess, false);
	run_until(NULL, 200);
	ck_assert_ptr_eq(srv.closed, sess);
	fail_over(m, SHARD2_URL);
	ck_assert(run_until(reaped, 5000));
	ck_assert_int_eq(count(SP_T_SENT) + count(SP_T_ERROR), 0);
	/* Stored all the same: the client's own retry (same msg_id) is answered from dedup. */
	ck_assert_int_eq(stored(21, 0x48), 1);
	teardown();
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("connsrv_handlers");
	TCase *tc = tcase_create("handlers");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_dispatch_matches_catalogue);
	tcase_add_test(tc, test_send_sent_after_every_append);
	tcase_add_test(tc, test_send_failed_append_is_error);
	tcase_add_test(tc, test_send_mismatched_devices);
	tcase_add_test(tc, test_delivery_window);
	tcase_add_test(tc, test_acks_merged_while_one_in_flight);
	tcase_add_test(tc, test_delivered_receipt_after_ack);
	tcase_add_test(tc, test_read_receipt);
	tcase_add_test(tc, test_read_ok_only_when_stored);
	tcase_add_test(tc, test_devcache_answers_later);
	tcase_add_test(tc, test_closed_session_freed_after_its_calls);
	tcase_add_test(tc, test_append_retried_on_new_primary);
	tcase_add_test(tc, test_append_retried_after_timeout);
	tcase_add_test(tc, test_attempt_to_dead_copy_cut_short_by_new_map);
	tcase_add_test(tc, test_giveup_after_budget);
	tcase_add_test(tc, test_retry_after_honoured);
	tcase_add_test(tc, test_non_retryable_error_answered_at_once);
	tcase_add_test(tc, test_fetch_and_ack_follow_the_primary);
	tcase_add_test(tc, test_media_follows_the_primary);
	tcase_add_test(tc, test_session_closed_while_retrying);
	suite_add_tcase(s, tc);
	return check_run(s);
}
