/* What spbench reads outside the protocol: the router's /map (which connsrvs to use),
 * /proc (connsrv RSS, kernel TCP memory) and the shards' Prometheus metrics. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench/sb.h"
#include "sp_error.h"

uint64_t
sb_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int
sb_http_get(const char *hostport, const char *path, char **body)
{
	char host[64];
	const char *colon = strrchr(hostport, ':');
	if (!colon || (size_t)(colon - hostport) >= sizeof(host))
		return SP_EINVAL;
	memcpy(host, hostport, (size_t)(colon - hostport));
	host[colon - hostport] = '\0';
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
	if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
		return SP_EINVAL;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return SP_EIO;
	struct timeval tv = {5, 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		close(fd);
		return SP_EUNAVAIL;
	}
	char req[512];
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, hostport);
	if (write(fd, req, (size_t)n) != n) {
		close(fd);
		return SP_EIO;
	}
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);
	ssize_t r = 0;
	while (buf && (r = read(fd, buf + len, cap - 1 - len)) > 0) {
		len += (size_t)r;
		if (cap - 1 - len < 4096) {
			if (cap >= 64u << 20)
				break;
			char *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = nb;
			cap *= 2;
		}
	}
	close(fd);
	if (!buf)
		return SP_ENOMEM;
	buf[len] = '\0';
	char *b = strstr(buf, "\r\n\r\n");
	if (strncmp(buf, "HTTP/1.", 7) != 0 || strncmp(buf + 8, " 200", 4) != 0 || !b) {
		free(buf);
		return SP_EUNAVAIL;
	}
	memmove(buf, b + 4, len - (size_t)(b + 4 - buf) + 1);
	*body = buf;
	return SP_OK;
}

int
sb_discover(void)
{
	char *body;
	int rc = sb_http_get(sb_o.router, "/map", &body);
	if (rc) {
		fprintf(stderr, "spbench: router %s: /map: %s\n", sb_o.router, sp_strerror(rc));
		return rc;
	}
	json_error_t je;
	json_t *j = json_loads(body, 0, &je);
	free(body);
	json_t *members = json_object_get(j, "members"), *m;
	size_t i;
	sb_o.ntargets = 0;
	json_array_foreach(members, i, m)
	{
		const char *role = json_string_value(json_object_get(m, "role"));
		const char *host = json_string_value(json_object_get(m, "host"));
		const char *name = json_string_value(json_object_get(m, "name"));
		json_int_t port = json_integer_value(json_object_get(m, "port"));
		if (!role || strcmp(role, "connsrv") != 0 || !host || port <= 0 ||
		    !json_is_true(json_object_get(m, "healthy")) || sb_o.ntargets >= SB_MAX_TARGETS)
			continue;
		sb_target *t = &sb_o.targets[sb_o.ntargets++];
		snprintf(t->host, sizeof(t->host), "%s", host);
		snprintf(t->name, sizeof(t->name), "%s", name ? name : "connsrv");
		t->port = (int)port;
	}
	json_decref(j);
	if (!sb_o.ntargets) {
		fprintf(stderr, "spbench: the router's map has no healthy connsrv\n");
		return SP_EUNAVAIL;
	}
	/* A stable order: connsrv-0 first. */
	for (int a = 1; a < sb_o.ntargets; a++)
		for (int b = a; b > 0 && strcmp(sb_o.targets[b - 1].name, sb_o.targets[b].name) > 0; b--) {
			sb_target t = sb_o.targets[b];
			sb_o.targets[b] = sb_o.targets[b - 1];
			sb_o.targets[b - 1] = t;
		}
	return SP_OK;
}

static uint64_t
rss_of(int pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	FILE *f = fopen(path, "r");
	uint64_t kb = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %lu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb * 1024;
}

static int
ppid_of(int pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')'); /* the command name may hold spaces */
	int ppid = -1;
	if (p && sscanf(p + 1, " %*c %d", &ppid) != 1)
		ppid = -1;
	return ppid;
}

/* The connsrv pids: --connsrv-pids, else the dev cluster's pid files. */
static int
connsrv_roots(int *pids, int cap)
{
	int n = 0;
	if (sb_o.connsrv_pids[0]) {
		char tmp[512], *save = NULL;
		snprintf(tmp, sizeof(tmp), "%s", sb_o.connsrv_pids);
		for (char *t = strtok_r(tmp, ",", &save); t && n < cap; t = strtok_r(NULL, ",", &save))
			pids[n++] = atoi(t);
		return n;
	}
	const char *dir = sb_o.state_dir;
	for (int i = 0; dir && i < 16 && n < cap; i++) {
		char path[512];
		snprintf(path, sizeof(path), "%s/pids/connsrv-%d.pid", dir, i);
		FILE *f = fopen(path, "r");
		int pid;
		if (!f)
			break;
		if (fscanf(f, "%d", &pid) == 1)
			pids[n++] = pid;
		fclose(f);
	}
	return n;
}

uint64_t
sb_connsrv_rss(int *nproc)
{
	int roots[SB_MAX_PIDS];
	int nr = connsrv_roots(roots, SB_MAX_PIDS);
	uint64_t total = 0;
	int count = 0;
	for (int i = 0; i < nr; i++) {
		total += rss_of(roots[i]);
		count++;
	}
	/* Worker processes are children of a master (--workers N). */
	DIR *d = nr ? opendir("/proc") : NULL;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		int pid = atoi(e->d_name);
		if (pid <= 0)
			continue;
		int pp = ppid_of(pid);
		for (int i = 0; i < nr; i++) {
			if (pp == roots[i]) {
				total += rss_of(pid);
				count++;
			}
		}
	}
	if (d)
		closedir(d);
	*nproc = count;
	return total;
}

uint64_t
sb_kernel_tcp_mem(void)
{
	FILE *f = fopen("/proc/net/sockstat", "r");
	char line[256];
	uint64_t pages = 0;
	while (f && fgets(line, sizeof(line), f)) {
		char *m = strstr(line, " mem ");
		if (strncmp(line, "TCP:", 4) == 0 && m)
			pages = strtoull(m + 5, NULL, 10);
	}
	if (f)
		fclose(f);
	return pages * (uint64_t)sysconf(_SC_PAGESIZE);
}

uint64_t
sb_kernel_slab(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	uint64_t kb = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "Slab: %lu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb * 1024;
}

double
sb_inbox_metric(const char *name)
{
	if (!sb_o.inbox_metrics[0])
		return -1;
	char tmp[512], *save = NULL;
	double sum = 0;
	int found = 0;
	snprintf(tmp, sizeof(tmp), "%s", sb_o.inbox_metrics);
	for (char *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		char *body;
		if (sb_http_get(t, "/metrics", &body))
			continue;
		size_t nl = strlen(name);
		for (char *line = body; line && *line;) {
			char *next = strchr(line, '\n');
			if (strncmp(line, name, nl) == 0 && (line[nl] == ' ' || line[nl] == '{')) {
				if (next)
					*next = '\0';
				char *sp = strrchr(line, ' ');
				if (sp) {
					sum += strtod(sp + 1, NULL);
					found++;
				}
				break;
			}
			line = next ? next + 1 : NULL;
		}
		free(body);
	}
	return found ? sum : -1;
}
