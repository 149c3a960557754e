/* The real bin/router with a member (sp_cluster, in this process) as connsrv-0: heartbeats
 * make it healthy, /where returns it, a drain over the admin listener (with the operator
 * token) reaches the member with a higher
 * epoch, the member keeps its map while the router is SIGKILLed, and a restarted router
 * carries on with a higher epoch and the drain remembered. Also hostile NNG requests. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <nng/nng.h>

#include "sp_cluster.h"
#include "sp_error.h"
#include "sp_nng.h"
#include "test_net.h"

static int passed, failed;

#define CHECK(cond, ...)                                                  \
	do {                                                              \
		if (cond) {                                               \
			passed++;                                         \
		} else {                                                  \
			failed++;                                         \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                     \
			fprintf(stderr, "\n");                            \
			goto out;                                         \
		}                                                         \
	} while (0)

static char dir[64], cluster_path[128], log_path[128], token_path[128], bin[256];
static int p_rep, p_pub, p_http, p_admin;
static char rep_url[64], pub_url[64];
static pid_t router_pid = -1;
/* The operator token of the admin listener. */
#define TOKEN "router-cluster-itest-operator-token"

/* One HTTP/1.0 exchange on loopback `port` (the admin port: with the operator token).
 * Returns the status (or -1) and the body in `body`. */
static int
http_on(int port, const char *method, const char *path, char *body, size_t cap)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct timeval tv = {5, 0};
	char buf[65536];
	size_t n = 0;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	body[0] = '\0';
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		close(fd);
		return -1;
	}
	int len = snprintf(buf, sizeof(buf), "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%sContent-Length: 0\r\n\r\n",
			   method, path, port == p_admin ? "Authorization: Bearer " TOKEN "\r\n" : "");
	if (write(fd, buf, (size_t)len) != len) {
		close(fd);
		return -1;
	}
	ssize_t r;
	while (n < sizeof(buf) - 1 && (r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
		n += (size_t)r;
	close(fd);
	buf[n] = '\0';
	int status;
	if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
		return -1;
	const char *b = strstr(buf, "\r\n\r\n");
	snprintf(body, cap, "%s", b ? b + 4 : "");
	return status;
}

/* On the public listener. */
static int
http(const char *method, const char *path, char *body, size_t cap)
{
	return http_on(p_http, method, path, body, cap);
}

/* On the admin listener. */
static int
admin(const char *method, const char *path, char *body, size_t cap)
{
	return http_on(p_admin, method, path, body, cap);
}

static json_t *
http_json(const char *method, const char *path, int *status)
{
	char body[65536];
	*status = http(method, path, body, sizeof(body));
	return json_loads(body, 0, NULL);
}

/* Starts bin/router on the chosen ports; returns once /health answers, or -1 if it died
 * or did not answer within 10 s. */
static int
start_router(void)
{
	char a_rep[80], a_pub[80], a_http[16], a_admin[16];
	snprintf(a_rep, sizeof(a_rep), "--listen=%s", rep_url);
	snprintf(a_pub, sizeof(a_pub), "--publish=%s", pub_url);
	snprintf(a_http, sizeof(a_http), "%d", p_http);
	snprintf(a_admin, sizeof(a_admin), "%d", p_admin);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(bin, bin, "--cluster-file", cluster_path, a_rep, a_pub, "--http-port", a_http,
		      "--admin-port", a_admin, "--admin-token-file", token_path,
		      "--heartbeat-timeout", "1500", "--log-level", "debug", "--insecure-internal",
		      (char *)NULL);
		_exit(127);
	}
	router_pid = pid;
	char body[4096];
	for (int i = 0; i < 200; i++) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			router_pid = -1;
			return -1;
		}
		if (http("GET", "/health", body, sizeof(body)) == 200)
			return 0;
		usleep(50 * 1000);
	}
	return -1;
}

/* Stops the router with `sig` (SIGKILL after 5 s) and reaps it; returns its wait status,
 * or -1 if none was running. */
static int
kill_router(int sig)
{
	int st = -1;
	if (router_pid <= 0)
		return -1;
	kill(router_pid, sig);
	for (int i = 0; i < 100; i++) {
		if (waitpid(router_pid, &st, WNOHANG) == router_pid) {
			router_pid = -1;
			return st;
		}
		usleep(50 * 1000);
	}
	kill(router_pid, SIGKILL);
	waitpid(router_pid, &st, 0);
	router_pid = -1;
	return st;
}

static void
at_exit(void)
{
	kill_router(SIGKILL);
}

/* What the member's on_change callback saw last. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int calls;
	uint64_t epoch;
	bool draining, healthy;
} seen = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, false, false};

static void
on_change(void *arg)
{
	sp_cluster_map *m = sp_cluster_map_get(arg);
	const sp_cluster_member *self = sp_cluster_map_find(m, "connsrv-0");
	pthread_mutex_lock(&seen.lock);
	seen.calls++;
	seen.epoch = sp_cluster_map_epoch(m);
	seen.draining = self && self->draining;
	seen.healthy = self && self->healthy;
	pthread_cond_broadcast(&seen.cond);
	pthread_mutex_unlock(&seen.lock);
	sp_cluster_map_put(m);
}

/* Waits up to 15 s for the callback to report connsrv-0 in the given state with an epoch
 * above `after`. */
static bool
wait_self(bool healthy, bool draining, uint64_t after)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 15;
	pthread_mutex_lock(&seen.lock);
	bool ok;
	while (!(ok = seen.healthy == healthy && seen.draining == draining && seen.epoch > after))
		if (pthread_cond_timedwait(&seen.cond, &seen.lock, &ts) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&seen.lock);
	return ok;
}

static uint64_t
member_epoch(sp_cluster *c)
{
	sp_cluster_map *m = sp_cluster_map_get(c);
	uint64_t e = m ? sp_cluster_map_epoch(m) : 0;
	sp_cluster_map_put(m);
	return e;
}

/* A request on a REQ socket of our own; returns the reply's ERROR code, SP_OK for another
 * reply, or a transport error. */
static int
ask(nng_socket s, const sp_frame *q)
{
	nng_msg *m = NULL;
	sp_frame r;
	int rc = sp_nng_call(s, q, &m, &r);
	if (m) {
		sp_frame_fini(&r);
		nng_msg_free(m);
	}
	return rc;
}

/* Failures are counted by CHECK. */
static void
hostile_requests(void)
{
	nng_socket s = NNG_SOCKET_INITIALIZER;
	sp_frame q;
	CHECK(sp_nng_req_open(&s, rep_url, 5000, 0) == SP_OK, "REQ socket");
	sp_frame_init(&q, SP_T_HEARTBEAT, 1, true);
	sp_frame_set_str(&q, SP_F_NAME, "ghost");
	sp_frame_set_u64(&q, SP_F_ROLE, SP_ROLE_CONNSRV);
	CHECK(ask(s, &q) == SP_ENOTFOUND, "unknown member");
	sp_frame_set_str(&q, SP_F_NAME, "connsrv-0");
	sp_frame_set_u64(&q, SP_F_ROLE, SP_ROLE_INBOX);
	CHECK(ask(s, &q) == SP_EINVAL, "wrong role");
	sp_frame_set_u64(&q, SP_F_ROLE, UINT64_MAX);
	CHECK(ask(s, &q) == SP_ENOTFOUND, "absurd role");
	sp_frame_init(&q, SP_T_PING, 2, true);
	CHECK(ask(s, &q) == SP_EBADTYPE, "a frame the router does not serve");

	/* Bytes that are no frame at all: an ERROR, and the router still answers after. */
	nng_msg *m;
	nng_msg_alloc(&m, 0);
	nng_msg_append(m, "\xc1\xff\x00garbage", 10);
	CHECK(nng_sendmsg(s, m, 0) == 0, "send garbage");
	CHECK(nng_recvmsg(s, &m, 0) == 0, "no answer to garbage");
	sp_frame r;
	CHECK(sp_nng_msg_decode(m, &r) == SP_OK && r.type == SP_T_ERROR, "garbage gets an ERROR");
	sp_frame_fini(&r);
	nng_msg_free(m);
	sp_frame_init(&q, SP_T_MAP_GET, 3, true);
	CHECK(ask(s, &q) == SP_OK, "MAP_GET after garbage");
	nng_close(s);
	return;
out:
	if (nng_socket_id(s) > 0)
		nng_close(s);
}

static json_t *
find_member(json_t *map, const char *name)
{
	size_t i;
	json_t *mb;
	json_array_foreach(json_object_get(map, "members"), i, mb)
		if (strcmp(json_string_value(json_object_get(mb, "name")), name) == 0)
			return mb;
	return NULL;
}

int
main(void)
{
	sp_cluster *c = NULL;
	json_t *j = NULL;
	int st;
	char body[65536];
	const char *binroot = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";

	snprintf(bin, sizeof(bin), "%s/router", binroot);
	snprintf(dir, sizeof(dir), "/tmp/sp-router-itest-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(cluster_path, sizeof(cluster_path), "%s/cluster.ini", dir);
	snprintf(log_path, sizeof(log_path), "%s/router.log", dir);
	snprintf(token_path, sizeof(token_path), "%s/admin-token", dir);
	int tfd = open(token_path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	CHECK(tfd >= 0 && write(tfd, TOKEN "\n", sizeof(TOKEN)) == (ssize_t)sizeof(TOKEN),
	      "token file");
	close(tfd);
	atexit(at_exit);
	signal(SIGPIPE, SIG_IGN);

	int started = -1;
	for (int attempt = 0; attempt < 5 && started; attempt++) {
		p_rep = test_free_port();
		p_pub = test_free_port();
		p_http = test_free_port();
		p_admin = test_free_port();
		snprintf(rep_url, sizeof(rep_url), "tcp://127.0.0.1:%d", p_rep);
		snprintf(pub_url, sizeof(pub_url), "tcp://127.0.0.1:%d", p_pub);
		FILE *f = fopen(cluster_path, "w");
		fprintf(f,
			"[inbox-0]\nrole = inbox\naddr = tcp://127.0.0.1:1401 ; not dialled here\nshard = 0\n"
			"[inbox-1]\nrole = inbox\naddr = tcp://127.0.0.1:1402\nshard = 1\n"
			"[keysrv]\nrole = keysrv\naddr = tcp://127.0.0.1:1301\n"
			"[connsrv-0]\nrole = connsrv\naddr = tcp://127.0.0.1:1501\nclient = 127.0.0.1:7443\n"
			"[connsrv-1]\nrole = connsrv\naddr = tcp://127.0.0.1:1502\nclient = 127.0.0.1:7444\n");
		fclose(f);
		started = start_router();
	}
	CHECK(started == 0, "router did not start (see %s)", log_path);

	/* Nobody has heartbeated: no connsrv to offer. */
	CHECK(http("GET", "/where", body, sizeof(body)) == 503, "where before heartbeats: %s", body);

	/* The member joins: its heartbeats make it healthy. */
	CHECK(sp_cluster_start(rep_url, pub_url, "connsrv-0", SP_ROLE_CONNSRV, &c) == SP_OK, "start");
	sp_cluster_on_change(c, on_change, c);
	sp_cluster_set_conns(c, 5);
	CHECK(sp_cluster_wait_map(c, 10000) == SP_OK, "no map");
	CHECK(wait_self(true, false, 0), "connsrv-0 never became healthy");

	j = http_json("GET", "/where", &st);
	CHECK(st == 200 && j, "where: %d", st);
	CHECK(strcmp(json_string_value(json_object_get(j, "name")), "connsrv-0") == 0, "where name");
	CHECK(strcmp(json_string_value(json_object_get(j, "host")), "127.0.0.1") == 0, "where host");
	CHECK(json_integer_value(json_object_get(j, "port")) == 7443, "where port");
	json_decref(j);

	/* The first heartbeat may have left before set_conns: wait for one that carries it. */
	for (int i = 0; i < 50; i++) {
		j = http_json("GET", "/map", &st);
		if (!j || json_integer_value(json_object_get(find_member(j, "connsrv-0"), "conns")) == 5)
			break;
		json_decref(j);
		j = NULL;
		usleep(100 * 1000);
	}
	CHECK(st == 200 && j, "map: %d", st);
	CHECK(json_array_size(json_object_get(j, "members")) == 5, "map members");
	CHECK((uint64_t)json_integer_value(json_object_get(j, "epoch")) >= member_epoch(c), "map epoch");
	CHECK(json_is_true(json_object_get(find_member(j, "connsrv-0"), "healthy")), "self healthy");
	CHECK(json_integer_value(json_object_get(find_member(j, "connsrv-0"), "conns")) == 5, "conns");
	CHECK(json_is_false(json_object_get(find_member(j, "connsrv-1"), "healthy")), "other unhealthy");
	json_decref(j);
	j = NULL;

	CHECK(http("GET", "/metrics", body, sizeof(body)) == 200, "metrics");
	CHECK(strstr(body, "sp_router_members{role=\"connsrv\",state=\"healthy\"} 1\n"), "gauge: %s", body);
	CHECK(strstr(body, "sp_router_heartbeats_total "), "heartbeat counter");

	hostile_requests();
	if (failed)
		goto out;

	/* Drain: the member sees itself draining in a newer map; /where has nobody. */
	uint64_t before = member_epoch(c);
	CHECK(http("POST", "/drain?name=connsrv-0", body, sizeof(body)) == 403,
	      "drain on the public listener: %s", body);
	CHECK(admin("POST", "/drain?name=connsrv-0", body, sizeof(body)) == 200, "drain: %s", body);
	CHECK(wait_self(true, true, before), "the member never saw its drain");
	CHECK(http("GET", "/where", body, sizeof(body)) == 503, "where while draining: %s", body);
	CHECK(admin("POST", "/drain?name=ghost", body, sizeof(body)) == 404, "drain ghost");
	CHECK(admin("POST", "/drain?name=keysrv", body, sizeof(body)) == 400, "drain keysrv");
	CHECK(admin("POST", "/drain", body, sizeof(body)) == 400, "drain without name");
	CHECK(admin("GET", "/drain?name=connsrv-0", body, sizeof(body)) == 405, "drain by GET");

	/* The router dies: the member keeps its map (and its ring) all the while. */
	uint64_t last = member_epoch(c);
	kill_router(SIGKILL);
	sleep(3);
	sp_cluster_map *m = sp_cluster_map_get(c);
	CHECK(m && sp_cluster_map_epoch(m) == last, "map lost while the router is down");
	const sp_cluster_member *owner = sp_cluster_map_shard_for(m, 12345);
	bool owner_ok = owner && owner->role == SP_ROLE_INBOX;
	bool still_draining = sp_cluster_map_find(m, "connsrv-0")->draining;
	sp_cluster_map_put(m);
	CHECK(owner_ok && still_draining, "cached map incomplete");

	/* Back on the same addresses: a higher epoch, the drain remembered, healthy again. */
	CHECK(start_router() == 0, "restart failed (see %s)", log_path);
	CHECK(wait_self(true, true, last), "member did not resume with a higher epoch");
	CHECK(member_epoch(c) > last, "epoch went backwards");
	CHECK(http("GET", "/where", body, sizeof(body)) == 503, "where while still draining");

	CHECK(admin("POST", "/undrain?name=connsrv-0", body, sizeof(body)) == 200, "undrain");
	CHECK(wait_self(true, false, last), "undrain never reached the member");
	j = http_json("GET", "/where", &st);
	CHECK(st == 200 && j && strcmp(json_string_value(json_object_get(j, "name")), "connsrv-0") == 0,
	      "where after undrain");

	/* SIGTERM is a clean stop (under sanitizers: no leak or error reports either). */
	st = kill_router(SIGTERM);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "router stopped with status %#x", st);

out:
	json_decref(j);
	sp_cluster_stop(c);
	kill_router(SIGTERM);
	if (failed) {
		fprintf(stderr, "---- %s ----\n", log_path);
		snprintf(body, sizeof(body), "tail -n 30 %s >&2", log_path);
		if (system(body) != 0)
			fprintf(stderr, "(no log)\n");
	}
	char p[192];
	snprintf(p, sizeof(p), "%s/cluster.ini.state", dir);
	unlink(p);
	unlink(cluster_path);
	unlink(token_path);
	unlink(log_path);
	rmdir(dir);
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
