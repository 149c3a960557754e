/*
 * Revocation everywhere (docs/CONNSRV.md, "Revocation"), on a private dev cluster:
 *   - a device logged in on connsrv-1 is revoked by its account's re-registration through
 *     connsrv-0: connsrv-0 finds its route in Redis and KICKs it there; the client gets
 *     KICKED "device removed" within seconds, and its key no longer logs in;
 *   - with Redis stopped (no route, so no KICK can be sent), the session is closed by its
 *     own periodic check (--devcache-ms, 10 s) on the next frame it sends;
 *   - Redis refuses a client without the password, and the password is in no log.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "itest.h"
#include "sp_error.h"
#include "sp_time.h"

static itest_cluster cluster;
static bool up;

static void
down(void)
{
	if (up)
		itest_cluster_down(&cluster);
	up = false;
}

#define CHECK(cond)                                                                         \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
			exit(1);                                                            \
		}                                                                           \
	} while (0)

/* Pings until a KICKED arrives or `ms` pass; returns the ms it took (-1: none). */
static long long
ping_until_kicked(itest_user *u, int ms, char *reason, size_t cap)
{
	uint64_t t0 = sp_time_ms();
	while (sp_time_ms() - t0 < (uint64_t)ms) {
		sp_frame p, f;
		sp_frame_init(&p, SP_T_PING, 0, false);
		if (spc_conn_send(u->conn, &p) != SP_OK)
			return -1;
		/* Anything but KICKED (PONG, queue-empty, ...) is skipped. */
		if (itest_wait(u, SP_T_KICKED, 500, &f) == SP_OK) {
			reason[0] = '\0';
			if (sp_frame_has(&f, SP_F_REASON))
				sp_frame_str(&f, SP_F_REASON, reason, cap);
			sp_frame_fini(&f);
			return (long long)(sp_time_ms() - t0);
		}
	}
	return -1;
}

int
main(void)
{
	if (sodium_init() < 0)
		return 1;
	uint64_t t0 = sp_time_ms();
	setvbuf(stdout, NULL, _IOLBF, 0);
	atexit(down);
	itest_cluster_up(&cluster);
	up = true;
	itest_cluster *c = &cluster;
	char reason[64];

	/* Through the route: re-registered elsewhere, kicked on the other connsrv. */
	itest_user a, a2;
	itest_register(c, 1, &a, "+15550501");
	CHECK(itest_login(c, 1, &a) == SP_OK);
	itest_register(c, 0, &a2, "+15550501");
	CHECK(a2.user == a.user && a2.device != a.device);
	long long took = ping_until_kicked(&a, 10000, reason, sizeof(reason));
	printf("route KICK after %lld ms: %s\n", took, reason);
	CHECK(took >= 0);
	CHECK(strcmp(reason, "device removed") == 0);
	itest_logout(&a);
	CHECK(itest_login(c, 1, &a) != SP_OK);
	itest_logout(&a);
	/* The new device works. */
	CHECK(itest_login(c, 0, &a2) == SP_OK);
	itest_logout(&a2);

	/* No route to follow: the session's own check closes it. */
	itest_user b, b2;
	itest_register(c, 1, &b, "+15550502");
	CHECK(itest_login(c, 1, &b) == SP_OK);
	itest_signal(c, "redis", SIGSTOP);
	itest_register(c, 0, &b2, "+15550502");
	took = ping_until_kicked(&b, 25000, reason, sizeof(reason));
	itest_signal(c, "redis", SIGCONT);
	printf("periodic check closed it after %lld ms: %s\n", took, reason);
	CHECK(took >= 0);
	CHECK(strcmp(reason, "device removed") == 0);
	itest_logout(&b);
	CHECK(itest_login(c, 0, &b2) == SP_OK);
	itest_logout(&b2);

	/* Redis takes only the connsrvs' ACL user, and its password reaches no log. */
	CHECK(itest_sh(c, "redis-cli -p %d GET x | grep -q NOAUTH", c->base) == 0);
	CHECK(itest_sh(c, "! grep -rqF \"$(cat $SEALPOST_REDIS_PASSWORD_FILE)\" $SEALPOST_LOGS") == 0);
	down();
	printf("revoke_itest: all passed in %llu ms\n", (unsigned long long)(sp_time_ms() - t0));
	return 0;
}
