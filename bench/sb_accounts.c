/* Benchmark accounts: registered through the real protocol (REGISTER, the one-time code
 * from the dev cluster's OTP directory, VERIFY) over many connections at once, spread
 * over 127.0.0.x source addresses because keysrv rate-limits registrations per source
 * host, and cached in a file (phone, user, device, Ed25519 secret key) so later runs
 * reuse them. A cache from another cluster is detected by a test login and set aside. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/sb.h"
#include "client/spc_conn.h"
#include "sp_error.h"

#define REG_CONNS 96
#define CACHE_MAGIC "# spbench accounts v1 prefix"

typedef struct reg_conn {
	sb_conn c;
	struct event *retry;
	int step; /* 0: REGISTER sent, 1: VERIFY sent */
	size_t slot;
	sb_account a;
	uint8_t pk[crypto_sign_PUBLICKEYBYTES];
	int failures;
} reg_conn;

typedef struct reg_run {
	sb_net net;
	sb_stats st;
	sb_account *acc;
	size_t have, need, next; /* next: index of the next phone number to use */
	unsigned prefix;
	FILE *cache;
	const char *otp_dir;
	reg_conn *rc;
	int nconns, active;
	size_t pending; /* accounts being registered right now */
	uint64_t t0, last_print;
	int fatal;
} reg_run;

static reg_run R;

static void reg_next(reg_conn *r);
static void reg_cb(sb_conn *c, int ev, const sp_frame *f);
static void reg_send_verify(reg_conn *r);

static void
reg_send_register(reg_conn *r)
{
	sp_frame q;
	sp_frame_init(&q, SP_T_REGISTER, 1, true);
	sp_frame_set_str(&q, SP_F_PHONE, r->a.phone);
	r->step = 0;
	sb_conn_send(&r->c, &q);
}

static void
on_retry(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	reg_conn *r = arg;
	if (!r->c.open)
		sb_conn_start(&r->c, &R.net, (int)(r->slot % (size_t)sb_o.ntargets), NULL, reg_cb, r);
	else if (r->step == 1)
		reg_send_verify(r);
	else
		reg_send_register(r);
}

static void
retry_later(reg_conn *r, uint64_t ms)
{
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
	event_add(r->retry, &tv);
}

static bool
read_otp(const char *phone, char *code, size_t cap)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/%s", R.otp_dir, phone);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	bool ok = fgets(code, (int)cap, f) != NULL;
	fclose(f);
	code[strcspn(code, "\r\n ")] = '\0';
	return ok && code[0];
}

static void
reg_send_verify(reg_conn *r)
{
	char code[32];
	if (!read_otp(r->a.phone, code, sizeof(code))) {
		fprintf(stderr, "spbench: no one-time code for %s in %s (set SEALPOST_OTP_DIR)\n", r->a.phone,
			R.otp_dir);
		R.fatal = SP_ENOTFOUND;
		event_base_loopexit(R.net.base, NULL);
		return;
	}
	uint8_t ik[33], xsk[32];
	ik[0] = 0x05;
	crypto_box_keypair(ik + 1, xsk);
	sp_frame q;
	sp_frame_init(&q, SP_T_VERIFY, 2, true);
	sp_frame_set_str(&q, SP_F_PHONE, r->a.phone);
	sp_frame_set_str(&q, SP_F_OTP, code);
	sp_frame_set_bin(&q, SP_F_IDENTITY_KEY, ik, 33);
	sp_frame_set_bin(&q, SP_F_AUTH_KEY, r->pk, 32);
	sp_frame_set_u64(&q, SP_F_REG_ID, 1 + (randombytes_random() & 0x3ffe));
	r->step = 1;
	sb_conn_send(&r->c, &q);
}

static void
reg_next(reg_conn *r)
{
	if (r->a.phone[0]) {
		r->a.phone[0] = '\0';
		R.pending--;
	}
	if (R.have + R.pending >= R.need || R.next >= 1000000) {
		R.active--;
		sb_conn_close(&r->c);
		if (R.active == 0)
			event_base_loopexit(R.net.base, NULL);
		return;
	}
	R.pending++;
	snprintf(r->a.phone, sizeof(r->a.phone), "+4479%04u%06zu", R.prefix, R.next++);
	crypto_sign_keypair(r->pk, r->a.sk);
	reg_send_register(r);
}

static void
reg_cb(sb_conn *c, int ev, const sp_frame *f)
{
	reg_conn *r = c->user;
	if (ev == SB_EV_TLS) {
		if (r->a.phone[0])
			reg_send_register(r);
		else
			reg_next(r);
		return;
	}
	if (ev == SB_EV_CLOSED) {
		if (++r->failures > 20) {
			fprintf(stderr, "spbench: registration connections keep failing\n");
			R.fatal = SP_EUNAVAIL;
			event_base_loopexit(R.net.base, NULL);
			return;
		}
		r->step = 0;
		retry_later(r, 200);
		return;
	}
	if (ev != SB_EV_FRAME)
		return;
	if (f->type == SP_T_ERROR) {
		int code = (int)sp_frame_i64(f, SP_F_CODE);
		uint64_t after = sp_frame_has(f, SP_F_RETRY_AFTER) ? sp_frame_u64(f, SP_F_RETRY_AFTER) : 1000;
		if (code == SP_ERATELIMIT) {
			R.st.rate_limited++;
			retry_later(r, after < 50 ? 50 : after > 10000 ? 10000 : after);
			return;
		}
		char reason[128] = "";
		sp_frame_str(f, SP_F_REASON, reason, sizeof(reason));
		fprintf(stderr, "spbench: registering %s: %s (%s)\n", r->a.phone, sp_strerror(code), reason);
		if (++r->failures > 20) {
			R.fatal = code;
			event_base_loopexit(R.net.base, NULL);
			return;
		}
		reg_next(r);
		return;
	}
	if (f->type == SP_T_REGISTERED && r->step == 0) {
		reg_send_verify(r);
		return;
	}
	if (f->type == SP_T_VERIFIED && r->step == 1) {
		r->a.user = sp_frame_u64(f, SP_F_USER);
		r->a.device = sp_frame_u64(f, SP_F_DEVICE);
		R.acc[R.have++] = r->a;
		fprintf(R.cache, "%s %llu %llu ", r->a.phone, (unsigned long long)r->a.user,
			(unsigned long long)r->a.device);
		for (size_t i = 0; i < sizeof(r->a.sk); i++)
			fprintf(R.cache, "%02x", r->a.sk[i]);
		fputc('\n', R.cache);
		reg_next(r);
	}
}

static void
on_reg_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	fflush(R.cache);
	if (!sb_o.quiet)
		fprintf(stderr, "[%7.1fs] accounts %zu/%zu (rate limited %llu)\n",
			(double)(sb_now_ns() - R.t0) / 1e9, R.have, R.need,
			(unsigned long long)R.st.rate_limited);
}

static int
load_cache(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return SP_ENOTFOUND;
	char line[512];
	if (!fgets(line, sizeof(line), f) || sscanf(line, CACHE_MAGIC " %u", &R.prefix) != 1) {
		fclose(f);
		return SP_EPROTO;
	}
	while (fgets(line, sizeof(line), f) && R.have < R.need) {
		sb_account a;
		unsigned long long u, d;
		char hex[2 * sizeof(a.sk) + 1];
		memset(&a, 0, sizeof(a));
		if (sscanf(line, "%23s %llu %llu %128s", a.phone, &u, &d, hex) != 4 ||
		    sodium_hex2bin(a.sk, sizeof(a.sk), hex, strlen(hex), NULL, NULL, NULL))
			continue;
		a.user = u;
		a.device = d;
		R.acc[R.have++] = a;
		R.next++;
	}
	/* Numbers already used in the file stay used (the file may hold more than needed). */
	while (fgets(line, sizeof(line), f))
		R.next++;
	fclose(f);
	return SP_OK;
}

/* A cached account that cannot log in means the cache is from another cluster. */
static bool
cache_valid(void)
{
	if (!R.have)
		return true;
	spc_conn *c;
	char err[256];
	const sb_account *a = &R.acc[0];
	if (spc_conn_open(sb_o.targets[0].host, sb_o.targets[0].port, sb_o.ca, 5000, &c, err, sizeof(err)))
		return true; /* cannot tell; the scenario will report failed logins */
	int rc = spc_conn_login(c, a->user, a->device, a->sk, 0, NULL);
	spc_conn_close(c);
	return rc != SP_EAUTH && rc != SP_ENOTFOUND && rc != SP_EPERM && rc != SP_EPROTO;
}

int
sb_accounts_get(size_t need, sb_account **out, size_t *n)
{
	memset(&R, 0, sizeof(R));
	R.need = need;
	R.acc = calloc(need ? need : 1, sizeof(sb_account));
	if (!R.acc)
		return SP_ENOMEM;
	const char *path = sb_o.accounts;
	int rc = load_cache(path);
	if (rc == SP_OK && !cache_valid()) {
		char old[600];
		snprintf(old, sizeof(old), "%s.stale", path);
		fprintf(stderr, "spbench: %s belongs to another cluster; moved to %s\n", path, old);
		rename(path, old);
		R.have = R.next = 0;
		rc = SP_ENOTFOUND;
	}
	if (R.have >= need) {
		*out = R.acc;
		*n = R.have;
		return SP_OK;
	}
	if (rc != SP_OK) {
		R.prefix = randombytes_uniform(10000);
		if (!(R.cache = fopen(path, "w"))) {
			fprintf(stderr, "spbench: %s: %s\n", path, strerror(errno));
			free(R.acc);
			return SP_EIO;
		}
		fprintf(R.cache, CACHE_MAGIC " %04u\n", R.prefix);
	} else if (!(R.cache = fopen(path, "a"))) {
		fprintf(stderr, "spbench: %s: %s\n", path, strerror(errno));
		free(R.acc);
		return SP_EIO;
	}
	R.otp_dir = getenv("SEALPOST_OTP_DIR");
	static char otp[600];
	if (!R.otp_dir) {
		snprintf(otp, sizeof(otp), "%s/data/keysrv/otp", sb_o.state_dir);
		R.otp_dir = otp;
	}
	if ((rc = sb_net_init(&R.net, &R.st))) {
		fclose(R.cache);
		free(R.acc);
		return rc;
	}
	size_t missing = need - R.have;
	R.nconns = missing < REG_CONNS ? (int)missing : REG_CONNS;
	R.rc = calloc((size_t)R.nconns, sizeof(reg_conn));
	struct event *tick = event_new(R.net.base, -1, EV_PERSIST, on_reg_tick, NULL);
	struct timeval tv = {1, 0};
	R.t0 = sb_now_ns();
	if (!R.rc || !tick || event_add(tick, &tv)) {
		rc = SP_ENOMEM;
		goto out;
	}
	if (!sb_o.quiet)
		fprintf(stderr, "spbench: registering %zu accounts (cache %s)\n", missing, path);
	for (int i = 0; i < R.nconns; i++) {
		reg_conn *r = &R.rc[i];
		r->slot = (size_t)i;
		r->retry = evtimer_new(R.net.base, on_retry, r);
		R.active++;
		if (!r->retry || sb_conn_start(&r->c, &R.net, i % sb_o.ntargets, NULL, reg_cb, r))
			R.active--;
	}
	if (R.active)
		event_base_dispatch(R.net.base);
	rc = R.fatal ? R.fatal : R.have >= need ? SP_OK : SP_EUNAVAIL;
out:
	for (int i = 0; R.rc && i < R.nconns; i++) {
		sb_conn_close(&R.rc[i].c);
		if (R.rc[i].retry)
			event_free(R.rc[i].retry);
	}
	if (tick)
		event_free(tick);
	free(R.rc);
	fclose(R.cache);
	sb_net_fini(&R.net);
	if (rc) {
		free(R.acc);
		return rc;
	}
	*out = R.acc;
	*n = R.have;
	return SP_OK;
}
