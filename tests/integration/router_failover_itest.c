/*
 * Several routers (docs/ROUTER.md, "Several routers"): a private dev cluster with router-a
 * and router-b sharing the map through etcd.
 *   - both routers answer MAP_GET with the same bytes (same epoch, same etcd revision);
 *   - router-a, then router-b are SIGKILLed: a client connected before (the library, in
 *     this process) keeps sending, a new client (a CLI process on a fresh home) registers
 *     through the surviving router, the survivor becomes the map writer and publishes a
 *     drain made on its admin listener (with the operator token: devcluster.sh drain);
 *   - every router killed: the connected client still sends, new CLI processes on homes
 *     that connected before send and receive through the connsrv list they kept, and a
 *     home that never reached a router fails with the network exit code;
 *   - both routers back: the same map again.
 */
#include <nng/nng.h>

#include "client/sealpost.h"
#include "client_util.h"
#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_nng.h"
#include "sp_time.h"

#define ROUTER_A_HTTP 1
#define ROUTER_A_REP 2
#define ROUTER_B_HTTP 6
#define ROUTER_B_REP 7

static char alice[32], bob[32], carol[32];

/* A field of a router's /health (-1 when it does not answer). */
static long long
health_field(int off, const char *key)
{
	char body[512];
	if (ct_http_get(off, "/health", body, sizeof(body)))
		return -1;
	json_t *j = json_loads(body, 0, NULL);
	json_t *v = j ? json_object_get(j, key) : NULL;
	long long r = json_is_true(v) ? 1 : json_is_integer(v) ? json_integer_value(v) : 0;
	json_decref(j);
	return r;
}

/* The routers answer members only (mutual TLS): this test dials them as connsrv-0. */
static void
tls_as_member(void)
{
	char cert[300], key[300], ca[300];
	snprintf(cert, sizeof(cert), "%s/certs/internal/connsrv-0.pem", ct_cluster.dir);
	snprintf(key, sizeof(key), "%s/certs/internal/connsrv-0.key", ct_cluster.dir);
	snprintf(ca, sizeof(ca), "%s/certs/internal/servers.pem", ct_cluster.dir);
	sp_nng_tls t = {.cert = cert, .key = key, .peer_ca = ca};
	CHECK(sp_nng_tls_init(&t) == SP_OK);
}

/* MAP_GET to the router REP port base+off: the reply's bytes (caller frees). */
static uint8_t *
map_get(int off, size_t *len)
{
	char url[64];
	nng_socket s;
	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%d", ct_cluster.base + off);
	if (sp_nng_req_open(&s, url, 2000, 0))
		return NULL;
	sp_frame q, r;
	nng_msg *m = NULL;
	sp_frame_init(&q, SP_T_MAP_GET, 0, false);
	int rc = sp_nng_call(s, &q, &m, &r);
	uint8_t *out = NULL;
	if (rc == SP_OK && (out = malloc(nng_msg_len(m)))) {
		memcpy(out, nng_msg_body(m), nng_msg_len(m));
		*len = nng_msg_len(m);
	}
	if (m) {
		sp_frame_fini(&r);
		nng_msg_free(m);
	}
	nng_close(s);
	return out;
}

/* The map a router answers with, decoded (caller puts), or NULL. */
static sp_cluster_map *
map_of(int off)
{
	size_t len = 0;
	uint8_t *b = map_get(off, &len);
	sp_frame f;
	sp_cluster_map *m = NULL;
	if (b && sp_frame_decode(b, len, &f) == SP_OK) {
		if (sp_cluster_map_from_frame(&f, &m))
			m = NULL;
		sp_frame_fini(&f);
	}
	free(b);
	return m;
}

/* Both routers answer MAP_GET with the same bytes, and their /health the same epoch and
 * etcd revision (retried: the map may change between two reads, e.g. with a copy's LSN). */
static void
check_same_map(void)
{
	bool same = false;
	for (int i = 0; i < 100 && !same; i++) {
		size_t la = 0, lb = 0;
		uint8_t *a = map_get(ROUTER_A_REP, &la), *b = map_get(ROUTER_B_REP, &lb);
		long long ea = health_field(ROUTER_A_HTTP, "epoch"), eb = health_field(ROUTER_B_HTTP, "epoch");
		long long ra = health_field(ROUTER_A_HTTP, "etcd_revision");
		long long rb = health_field(ROUTER_B_HTTP, "etcd_revision");
		same = a && b && la == lb && memcmp(a, b, la) == 0 && ea > 0 && ea == eb && ra > 0 &&
		       ra == rb;
		if (same)
			printf("both routers publish epoch %lld (etcd revision %lld), %zu bytes\n", ea, ra, la);
		free(a);
		free(b);
		if (!same)
			usleep(100000);
	}
	CHECK(same);
	/* Exactly one of them writes it (once a restarted router is past its grace period and
	 * a killed writer's lease has expired). */
	bool one = false;
	for (int i = 0; i < 100 && !one; i++) {
		one = health_field(ROUTER_A_HTTP, "map_writer") + health_field(ROUTER_B_HTTP, "map_writer") == 1;
		if (!one)
			usleep(100000);
	}
	CHECK(one);
}

/* Waits until the router at `off` holds the leader key (the other one is dead). */
static void
wait_writer(int off)
{
	bool w = false;
	for (int i = 0; i < 100 && !(w = health_field(off, "map_writer") == 1); i++)
		usleep(100000);
	CHECK(w);
}

/* Sends one message from the library handle; it must go out (not be queued). */
static void
lib_send(sealpost *sp, const char *text)
{
	sealpost_sent s;
	int rc = sealpost_send_text(sp, "+15550302", text, &s);
	if (rc || !s.sent)
		fprintf(stderr, "send '%s': rc %d sent %d: %s\n", text, rc, s.sent, sealpost_errmsg(sp));
	CHECK(rc == SEALPOST_OK && s.sent);
}

/* A drain made on the admin listener of router `name`, the only one alive, shows in the
 * map it publishes (which it wrote); its public listener refuses it. */
static void
check_drain_published(const char *name, int off, int rep)
{
	char out[512];
	uint64_t before = 0;
	sp_cluster_map *m = map_of(rep);
	CHECK(m);
	before = sp_cluster_map_epoch(m);
	sp_cluster_map_put(m);
	char cmd[256];
	snprintf(cmd, sizeof(cmd),
		 "curl -s -o /dev/null -w '%%{http_code}' -X POST "
		 "'http://127.0.0.1:%d/drain?name=connsrv-1' | grep -qx 403",
		 ct_cluster.base + off);
	CHECK(system(cmd) == 0);
	/* Without a router name devcluster.sh tries each in turn: the dead one is skipped. */
	CHECK(itest_devcluster(&ct_cluster, "drain connsrv-1 >/dev/null") == 0);
	bool seen = false;
	for (int i = 0; i < 100 && !seen; i++) {
		m = map_of(rep);
		const sp_cluster_member *c1 = m ? sp_cluster_map_find(m, "connsrv-1") : NULL;
		seen = c1 && c1->draining && sp_cluster_map_epoch(m) > before;
		sp_cluster_map_put(m);
		if (!seen)
			usleep(100000);
	}
	CHECK(seen);
	snprintf(cmd, sizeof(cmd), "undrain connsrv-1 %s >/dev/null", name);
	CHECK(itest_devcluster(&ct_cluster, cmd) == 0);
	bool cleared = false;
	for (int i = 0; i < 100 && !cleared; i++) {
		m = map_of(rep);
		const sp_cluster_member *c1 = m ? sp_cluster_map_find(m, "connsrv-1") : NULL;
		cleared = c1 && !c1->draining;
		sp_cluster_map_put(m);
		if (!cleared)
			usleep(100000);
	}
	CHECK(cleared);
	/* /where offers it again (the undrain is local at once; health is unchanged). */
	CHECK(ct_http_get(off, "/where", out, sizeof(out)) == 0);
}

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	ct_start();
	tls_as_member();
	char out[65536], home[300], err[256];
	ct_register("alice", "+15550301", alice, sizeof(alice));
	ct_register("bob", "+15550302", bob, sizeof(bob));
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550301 %s", alice) == 0);

	check_same_map();

	/* alice: a library client, connected before any router dies. */
	snprintf(home, sizeof(home), "%s/home-alice", ct_cluster.dir);
	char routers[128];
	snprintf(routers, sizeof(routers), "127.0.0.1:%d,127.0.0.1:%d",
		 ct_cluster.base + ROUTER_A_HTTP, ct_cluster.base + ROUTER_B_HTTP);
	sealpost_config cfg = {.home = home, .router = routers, .ca = ct_cluster.ca};
	sealpost *sp;
	CHECK(sealpost_open(&cfg, &sp, err, sizeof(err)) == SEALPOST_OK);
	CHECK(sealpost_contact_add(sp, "+15550302", strtoull(bob, NULL, 10)) == SEALPOST_OK);
	lib_send(sp, "m-before");

	/* router-a dies: alice goes on; a new client (carol, a fresh home) registers through
	 * router-b; router-b takes the map over and publishes what changes on it. */
	itest_signal(&ct_cluster, "router-a", SIGKILL);
	lib_send(sp, "m-a-dead-1");
	ct_register("carol", "+15550303", carol, sizeof(carol));
	CHECK(ct_run("carol", out, sizeof(out), "send +15550302 'c-a-dead'") == 0);
	wait_writer(ROUTER_B_HTTP);
	check_drain_published("router-b", ROUTER_B_HTTP, ROUTER_B_REP);
	lib_send(sp, "m-a-dead-2");

	/* router-a back, router-b dies. */
	itest_restart(&ct_cluster, "router-a");
	check_same_map();
	itest_signal(&ct_cluster, "router-b", SIGKILL);
	lib_send(sp, "m-b-dead");
	CHECK(ct_run("bob", out, sizeof(out), "send +15550301 'b-b-dead'") == 0);
	wait_writer(ROUTER_A_HTTP);

	/* Every router dead: the connected client, and new CLI processes on homes that
	 * connected before (the connsrv list they kept). */
	itest_signal(&ct_cluster, "router-a", SIGKILL);
	CHECK(health_field(ROUTER_A_HTTP, "epoch") == -1 && health_field(ROUTER_B_HTTP, "epoch") == -1);
	lib_send(sp, "m-all-dead");
	CHECK(ct_run("carol", out, sizeof(out), "send +15550302 'c-all-dead'") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "send +15550301 'b-all-dead'") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(ct_count_text(out, "m-") == 5);
	CHECK(ct_count_text(out, "c-") == 2);
	/* alice's library client receives bob's two messages. */
	int got = 0;
	sealpost_close(sp);
	CHECK(ct_run("alice", out, sizeof(out), "recv") == 0);
	got = ct_count_text(out, "b-");
	CHECK(got == 2);
	/* A home that never reached a router has no list: a network error, at once. */
	uint64_t t1 = sp_time_ms();
	CHECK(ct_run("dave", out, sizeof(out), "register +15550304") == SEALPOST_ERR_NET);
	CHECK(sp_time_ms() - t1 < 20000);

	/* Both routers back: one map again. */
	itest_restart(&ct_cluster, "router-a");
	itest_restart(&ct_cluster, "router-b");
	check_same_map();

	ct_down();
	sp_nng_tls_fini();
	printf("router_failover_itest: all passed in %llu ms\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
