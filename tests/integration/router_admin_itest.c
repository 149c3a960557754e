/* The router's admin listener (docs/ROUTER.md, "Admin access"), with the real bin/router
 * and a member (sp_cluster, in this process) as connsrv-0:
 *   - the public listener refuses POST /drain and /undrain (403, counted);
 *   - the admin listener without a token, with a wrong one, a prefix of it, a longer one
 *     or another scheme answers 401 (counted), and nothing is drained: the member's map,
 *     /map and /where are as before;
 *   - the right token drains (the member sees it, /where has nobody) and undrains;
 *   - the token never appears in the router's log;
 *   - a token file that group or others can read (0644, 0640), or too short a token: the
 *     router refuses to start, saying why;
 *   - no token file: no admin listener; admin-no-token: only on a loopback address, and
 *     then no token is asked; public-map=false: /map only on the admin listener. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "sp_cluster.h"
#include "sp_error.h"
#include "test_net.h"

static int passed, failed;

#define CHECK(cond, ...)                                                                \
	do {                                                                            \
		if (cond) {                                                             \
			passed++;                                                       \
		} else {                                                                \
			failed++;                                                       \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                   \
			fprintf(stderr, "\n");                                          \
			goto out;                                                       \
		}                                                                       \
	} while (0)

static char dir[64], cluster_path[128], token_path[128], log_path[128], bin[256];
static char token[65];
static int p_rep, p_pub, p_http, p_admin;
static char rep_url[64], pub_url[64];
static pid_t router_pid = -1;

/* The response headers of the last http() call. */
static char last_headers[4096];

/* One HTTP/1.0 exchange on loopback port `port`; `auth` is the Authorization header's
 * value (NULL: none). Returns the status (or -1), the body in `body` and the headers in
 * last_headers. */
static int
http(int port, const char *method, const char *path, const char *auth, char *body, size_t cap)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct timeval tv = {5, 0};
	char buf[65536];
	size_t n = 0;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	body[0] = '\0';
	last_headers[0] = '\0';
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		close(fd);
		return -1;
	}
	int len = snprintf(buf, sizeof(buf),
			   "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%s%s%sContent-Length: 0\r\n\r\n",
			   method, path, auth ? "Authorization: " : "", auth ? auth : "",
			   auth ? "\r\n" : "");
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
	snprintf(last_headers, sizeof(last_headers), "%.*s", b ? (int)(b - buf) : 0, buf);
	return status;
}

/* "Bearer <token>" into `out`. */
static const char *
bearer(char *out, size_t cap, const char *tok)
{
	snprintf(out, cap, "Bearer %s", tok);
	return out;
}

/* Starts bin/router with the test's cluster, ports and `extra` arguments (NULL-ended).
 * Returns 0 once its public /health answers; otherwise -1 with *status the exit status
 * if it exited (-1 if it did not answer within 10 s). */
static int
start_router(const char **extra, int *status)
{
	char a_rep[80], a_pub[80], a_http[16];
	const char *argv[40];
	int k = 0;
	*status = -1;
	snprintf(a_rep, sizeof(a_rep), "--listen=%s", rep_url);
	snprintf(a_pub, sizeof(a_pub), "--publish=%s", pub_url);
	snprintf(a_http, sizeof(a_http), "%d", p_http);
	argv[k++] = bin;
	argv[k++] = "--cluster-file";
	argv[k++] = cluster_path;
	argv[k++] = a_rep;
	argv[k++] = a_pub;
	argv[k++] = "--http-port";
	argv[k++] = a_http;
	argv[k++] = "--log-level";
	argv[k++] = "debug";
	argv[k++] = "--insecure-internal"; /* plain tcp:// links: the admin side is the subject */
	for (int i = 0; extra[i] && k < 39; i++)
		argv[k++] = extra[i];
	argv[k] = NULL;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	router_pid = pid;
	char body[4096];
	for (int i = 0; i < 200; i++) {
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			router_pid = -1;
			*status = st;
			return -1;
		}
		if (http(p_http, "GET", "/health", NULL, body, sizeof(body)) == 200)
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

/* Empties the router's log: each run's checks read only its own lines. */
static void
clear_log(void)
{
	int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0)
		close(fd);
}

/* The router's whole log so far (caller frees), or NULL. */
static char *
read_log(void)
{
	FILE *f = fopen(log_path, "r");
	if (!f)
		return NULL;
	char *s = calloc(1, 1 << 20);
	if (s)
		s[fread(s, 1, (1 << 20) - 1, f)] = '\0';
	fclose(f);
	return s;
}

/* What the member's on_change callback saw last. */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t epoch;
	bool draining, healthy;
} seen = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, false, false};

static void
on_change(void *arg)
{
	sp_cluster_map *m = sp_cluster_map_get(arg);
	const sp_cluster_member *self = sp_cluster_map_find(m, "connsrv-0");
	pthread_mutex_lock(&seen.lock);
	seen.epoch = sp_cluster_map_epoch(m);
	seen.draining = self && self->draining;
	seen.healthy = self && self->healthy;
	pthread_cond_broadcast(&seen.cond);
	pthread_mutex_unlock(&seen.lock);
	sp_cluster_map_put(m);
}

/* Waits up to 15 s for the member to see itself healthy and draining as given, in a map
 * with an epoch above `after`. */
static bool
wait_self(bool draining, uint64_t after)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 15;
	pthread_mutex_lock(&seen.lock);
	bool ok;
	while (!(ok = seen.healthy && seen.draining == draining && seen.epoch > after))
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

static bool
member_draining(sp_cluster *c)
{
	sp_cluster_map *m = sp_cluster_map_get(c);
	const sp_cluster_member *self = m ? sp_cluster_map_find(m, "connsrv-0") : NULL;
	bool d = self && self->draining;
	sp_cluster_map_put(m);
	return d;
}

/* How many connsrvs /map (asked on `port` with `auth`) shows draining, or -1. */
static int
map_draining(int port, const char *auth)
{
	char body[65536];
	if (http(port, "GET", "/map", auth, body, sizeof(body)) != 200)
		return -1;
	json_t *j = json_loads(body, JSON_DISABLE_EOF_CHECK, NULL);
	json_t *mb;
	size_t i;
	int n = j ? 0 : -1;
	json_array_foreach(json_object_get(j, "members"), i, mb)
		n += json_is_true(json_object_get(mb, "draining"));
	json_decref(j);
	return n;
}

/* The value of counter line `name` on the public /metrics, or -1. */
static long long
metric(const char *name)
{
	char body[65536], key[200];
	if (http(p_http, "GET", "/metrics", NULL, body, sizeof(body)) != 200)
		return -1;
	snprintf(key, sizeof(key), "\n%s ", name);
	const char *p = strstr(body, key);
	return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

static bool
write_token(const char *text, mode_t mode)
{
	unlink(token_path);
	int fd = open(token_path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (fd < 0)
		return false;
	bool ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text) && fchmod(fd, mode) == 0;
	close(fd);
	return ok;
}

/* A router that must refuse to start: exit status 2 and `why` in its log. */
static void
refuses(const char **extra, const char *why)
{
	int st;
	char *log = NULL;
	clear_log();
	CHECK(start_router(extra, &st) == -1, "the router started");
	CHECK(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2, "exit status %#x", st);
	log = read_log();
	CHECK(log && strstr(log, why), "no '%s' in its log: %s", why, log ? log : "(none)");
	CHECK(!strstr(log, token), "the token is in the log");
out:
	kill_router(SIGKILL); /* one that started by mistake */
	free(log);
}

static char a_admin[16];
static const char *admin_args[] = {"--admin-port", a_admin, "--admin-token-file", token_path,
				   NULL};

/* The main run: the token, the refusals and the drain. */
static void
with_token(void)
{
	sp_cluster *c = NULL;
	char body[65536], h[700];
	char *log = NULL;
	int st;

	CHECK(start_router(admin_args, &st) == 0, "router did not start (status %#x)", st);
	CHECK(sp_cluster_start(rep_url, pub_url, "connsrv-0", SP_ROLE_CONNSRV, &c) == SP_OK,
	      "member start");
	sp_cluster_on_change(c, on_change, c);
	CHECK(wait_self(false, 0), "connsrv-0 never became healthy");
	CHECK(http(p_http, "GET", "/where", NULL, body, sizeof(body)) == 200, "where: %s", body);

	/* The public listener: admin endpoints refused, whatever the method or credential. */
	CHECK(http(p_http, "POST", "/drain?name=connsrv-0", NULL, body, sizeof(body)) == 403,
	      "public drain: %s", body);
	CHECK(strstr(body, "admin listener"), "the refusal names the admin listener: %s", body);
	CHECK(http(p_http, "POST", "/drain?name=connsrv-0", bearer(h, sizeof(h), token), body,
		   sizeof(body)) == 403,
	      "public drain with the token: %s", body);
	CHECK(http(p_http, "POST", "/undrain?name=connsrv-0", NULL, body, sizeof(body)) == 403,
	      "public undrain: %s", body);
	CHECK(http(p_http, "GET", "/drain?name=connsrv-0", NULL, body, sizeof(body)) == 403,
	      "public GET drain: %s", body);
	/* public-map is on by default. */
	CHECK(map_draining(p_http, NULL) == 0, "public /map");

	/* The admin listener without the right token. */
	CHECK(http(p_admin, "POST", "/drain?name=connsrv-0", NULL, body, sizeof(body)) == 401,
	      "no token: %s", body);
	CHECK(strstr(body, "\"error\"") && strstr(last_headers, "WWW-Authenticate: Bearer"),
	      "401 without a JSON error or WWW-Authenticate: %s %s", last_headers, body);
	const char *missing[] = {"Basic dXNlcjpwYXNzd29yZA==", "Bearer", "Bearer   ", "Token x"};
	for (size_t i = 0; i < sizeof(missing) / sizeof(missing[0]); i++)
		CHECK(http(p_admin, "POST", "/drain?name=connsrv-0", missing[i], body,
			   sizeof(body)) == 401,
		      "'%s': %s", missing[i], body);
	char prefix[sizeof(token)], longer[sizeof(token) + 1], flipped[sizeof(token)];
	snprintf(prefix, sizeof(prefix), "%.*s", (int)strlen(token) - 1, token);
	snprintf(longer, sizeof(longer), "%sx", token);
	snprintf(flipped, sizeof(flipped), "%s", token);
	flipped[0] = flipped[0] == 'a' ? 'b' : 'a';
	const char *wrong[] = {"Bearer not-the-operator-token-at-all", prefix, longer, flipped};
	for (size_t i = 0; i < sizeof(wrong) / sizeof(wrong[0]); i++)
		CHECK(http(p_admin, "POST", "/drain?name=connsrv-0",
			   i ? bearer(h, sizeof(h), wrong[i]) : wrong[i], body, sizeof(body)) == 401,
		      "wrong token %zu: %s", i, body);
	CHECK(http(p_admin, "POST", "/undrain?name=connsrv-0", NULL, body, sizeof(body)) == 401,
	      "undrain without a token");
	CHECK(http(p_admin, "GET", "/map", NULL, body, sizeof(body)) == 401, "admin /map");
	CHECK(http(p_admin, "GET", "/no-such-thing", NULL, body, sizeof(body)) == 401,
	      "an unknown path is not revealed before the token");

	/* Nothing was drained: the router's maps, its gauge, /where and the member agree. */
	CHECK(map_draining(p_http, NULL) == 0, "drained without a token");
	CHECK(metric("sp_router_draining") == 0, "sp_router_draining");
	CHECK(http(p_http, "GET", "/where", NULL, body, sizeof(body)) == 200, "where: %s", body);
	CHECK(!member_draining(c), "the member saw a drain");
	CHECK(metric("sp_router_admin_refused_total{reason=\"public_listener\"}") == 4,
	      "public refusals counted");
	CHECK(metric("sp_router_admin_refused_total{reason=\"no_token\"}") == 8,
	      "refusals without a token counted");
	CHECK(metric("sp_router_admin_refused_total{reason=\"bad_token\"}") == 4,
	      "wrong tokens counted");

	/* The right token (the scheme is case-insensitive). */
	uint64_t before = member_epoch(c);
	CHECK(http(p_admin, "GET", "/map", bearer(h, sizeof(h), token), body, sizeof(body)) == 200,
	      "admin /map: %s", body);
	CHECK(http(p_admin, "GET", "/health", bearer(h, sizeof(h), token), body, sizeof(body)) ==
		      200,
	      "admin /health: %s", body);
	CHECK(http(p_admin, "GET", "/no-such-thing", bearer(h, sizeof(h), token), body,
		   sizeof(body)) == 404,
	      "unknown admin path: %s", body);
	snprintf(h, sizeof(h), "bearer %s", token);
	CHECK(http(p_admin, "POST", "/drain?name=connsrv-0", h, body, sizeof(body)) == 200,
	      "drain: %s", body);
	CHECK(wait_self(true, before), "the member never saw its drain");
	CHECK(http(p_http, "GET", "/where", NULL, body, sizeof(body)) == 503, "where: %s", body);
	CHECK(map_draining(p_admin, bearer(h, sizeof(h), token)) == 1, "admin /map after drain");
	CHECK(http(p_admin, "GET", "/drain?name=connsrv-0", h, body, sizeof(body)) == 405,
	      "drain by GET: %s", body);
	CHECK(http(p_admin, "POST", "/drain?name=ghost", h, body, sizeof(body)) == 404,
	      "drain ghost: %s", body);
	before = member_epoch(c);
	CHECK(http(p_admin, "POST", "/undrain?name=connsrv-0", h, body, sizeof(body)) == 200,
	      "undrain: %s", body);
	CHECK(wait_self(false, before), "the member never saw its undrain");
	CHECK(http(p_http, "GET", "/where", NULL, body, sizeof(body)) == 200, "where: %s", body);

	st = kill_router(SIGTERM);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "router stopped with status %#x", st);
	log = read_log();
	CHECK(log && strstr(log, "refused"), "no refusal logged");
	CHECK(!strstr(log, token), "the token is in the router's log");
	CHECK(!strstr(log, "not-the-operator-token"), "a presented credential is in the log");
out:
	free(log);
	sp_cluster_stop(c);
	kill_router(SIGTERM);
}

/* No token file, then admin-no-token (loopback only) with public-map=false. */
static void
without_token(void)
{
	char body[65536], a_bad[16];
	char *log = NULL;
	int st;
	const char *none[] = {"--admin-port", a_admin, NULL};
	clear_log();
	CHECK(start_router(none, &st) == 0, "router without a token file (status %#x)", st);
	CHECK(http(p_admin, "GET", "/health", NULL, body, sizeof(body)) == -1,
	      "an admin listener without a token file");
	CHECK(http(p_http, "POST", "/drain?name=connsrv-0", NULL, body, sizeof(body)) == 403,
	      "public drain: %s", body);
	log = read_log();
	CHECK(log && strstr(log, "no admin listener"), "no warning about the admin listener");
	st = kill_router(SIGTERM);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);

	const char *open_admin[] = {"--admin-port", a_admin, "--admin-no-token", "--public-map=false",
				    NULL};
	CHECK(start_router(open_admin, &st) == 0, "router with admin-no-token (status %#x)", st);
	CHECK(http(p_http, "GET", "/map", NULL, body, sizeof(body)) == 403, "public /map: %s", body);
	CHECK(http(p_admin, "GET", "/map", NULL, body, sizeof(body)) == 200, "admin /map: %s", body);
	CHECK(http(p_admin, "POST", "/drain?name=connsrv-1", NULL, body, sizeof(body)) == 200,
	      "drain without a token: %s", body);
	CHECK(map_draining(p_admin, NULL) == 1, "not drained");
	CHECK(http(p_admin, "POST", "/undrain?name=connsrv-1", NULL, body, sizeof(body)) == 200,
	      "undrain: %s", body);
	CHECK(map_draining(p_admin, NULL) == 0, "not undrained");
	st = kill_router(SIGTERM);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x", st);

	snprintf(a_bad, sizeof(a_bad), "%d", test_free_port());
	const char *open_wide[] = {"--admin-port", a_bad, "--admin-no-token", "--admin-addr",
				   "0.0.0.0", NULL};
	refuses(open_wide, "loopback");
	const char *both[] = {"--admin-port", a_admin, "--admin-no-token", "--admin-token-file",
			      token_path, NULL};
	refuses(both, "exclude each other");
out:
	free(log);
	kill_router(SIGTERM);
}

int
main(void)
{
	const char *binroot = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	unsigned char raw[24];

	snprintf(bin, sizeof(bin), "%s/router", binroot);
	snprintf(dir, sizeof(dir), "/tmp/sp-router-admin-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(cluster_path, sizeof(cluster_path), "%s/cluster.ini", dir);
	snprintf(token_path, sizeof(token_path), "%s/admin-token", dir);
	snprintf(log_path, sizeof(log_path), "%s/router.log", dir);
	atexit(at_exit);
	signal(SIGPIPE, SIG_IGN);

	FILE *rf = fopen("/dev/urandom", "r");
	if (!rf || fread(raw, 1, sizeof(raw), rf) != sizeof(raw)) {
		perror("/dev/urandom");
		return 1;
	}
	fclose(rf);
	for (size_t i = 0; i < sizeof(raw); i++)
		snprintf(token + 2 * i, 3, "%02x", raw[i]);

	p_rep = test_free_port();
	p_pub = test_free_port();
	p_http = test_free_port();
	p_admin = test_free_port();
	snprintf(rep_url, sizeof(rep_url), "tcp://127.0.0.1:%d", p_rep);
	snprintf(pub_url, sizeof(pub_url), "tcp://127.0.0.1:%d", p_pub);
	snprintf(a_admin, sizeof(a_admin), "%d", p_admin);
	FILE *f = fopen(cluster_path, "w");
	fprintf(f, "[inbox-0]\nrole = inbox\naddr = tcp://127.0.0.1:1401 ; not dialled here\nshard = 0\n"
		   "[keysrv]\nrole = keysrv\naddr = tcp://127.0.0.1:1301\n"
		   "[connsrv-0]\nrole = connsrv\naddr = tcp://127.0.0.1:1501\nclient = 127.0.0.1:7443\n"
		   "[connsrv-1]\nrole = connsrv\naddr = tcp://127.0.0.1:1502\nclient = 127.0.0.1:7444\n");
	fclose(f);

	/* Token files the router must refuse (a trailing newline is fine in a good one). */
	char line[80];
	snprintf(line, sizeof(line), "%s\n", token);
	CHECK(write_token(line, 0644), "token file");
	refuses(admin_args, "mode 0644");
	CHECK(write_token(line, 0640), "token file");
	refuses(admin_args, "mode 0640");
	CHECK(write_token("short\n", 0600), "token file");
	refuses(admin_args, "shorter than");
	if (failed)
		goto out;

	CHECK(write_token(line, 0600), "token file");
	with_token();
	if (failed)
		goto out;
	without_token();

out:
	kill_router(SIGKILL);
	if (failed) {
		char cmd[200];
		fprintf(stderr, "---- %s ----\n", log_path);
		snprintf(cmd, sizeof(cmd), "tail -n 30 %s >&2", log_path);
		if (system(cmd) != 0)
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
