/*
 * The replicated key store (issue 13): a real etcd and three keysrv copies of group
 * keys-0, talked to over NNG as connsrv does. Only the primary answers (the others say
 * SP_ENOTPRIMARY with its name). Accounts are made on the primary; a code is asked for on
 * it; the primary is SIGKILLed: another copy takes over within the lease and holds every
 * account (device lists), the pending code verifies there (the code record and the store's
 * secret were replicated), and new accounts are made on it. The old primary comes back on
 * its data as a replica; a copy whose data dir is deleted comes back from a snapshot;
 * then the two others are killed and one comes back empty: the rebuilt copy takes over and
 * still holds every account. Takes ~40 s.
 */
#include <sys/stat.h>

#include "etcd_proc.h"
#include "keysrv_harness.h"

#define COPIES 3
#define ACCOUNTS 8

static etcd_proc E;
static char root[64], dirs[COPIES][128], otp[COPIES][160], logs[COPIES][160];
static char data[COPIES][160], repl_url[COPIES][64], names[COPIES][16];
static kt_proc P[COPIES];
static bool up[COPIES];
static kt_device accts[2 * ACCOUNTS + 1];
static int nacct;

static void
cleanup(void)
{
	kt_kill_all();
	if (E.pid > 0 || E.dir[0])
		etcd_proc_stop(&E);
	if (root[0])
		kt_rmtree(root);
}

static void
copy_start(int i)
{
	const char *args[] = { "--data-dir", data[i], "--otp-dir", otp[i], "--metrics-port", "-1",
		"--name", names[i], "--etcd", E.endpoint, "--repl-listen", repl_url[i],
		"--lease-ttl", "3", "--repl-lag-ms", "1000", "--rate-source-burst", "1000",
		"--rate-phone-burst", "100", NULL };
	KT_CHECK_RC(kt_keysrv_start(&P[i], logs[i], args, NULL, 0), SP_OK);
	up[i] = true;
}

static void
copy_kill(int i)
{
	kt_proc_stop(&P[i], SIGKILL);
	up[i] = false;
}

static int
call(int i, sp_frame *f, kt_conn *c)
{
	KT_CHECK_RC(kt_conn_open(c, P[i].url), SP_OK);
	return kt_rpc(c, f);
}

static void
conn_done(kt_conn *c)
{
	kt_conn_release(c);
	nng_close(c->s);
}

static int
rpc_register(int i, const char *phone)
{
	kt_conn c;
	sp_frame f;
	sp_frame_init(&f, SP_T_REGISTER, 1, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	int rc = call(i, &f, &c);
	conn_done(&c);
	return rc;
}

static int
rpc_verify(int i, const char *phone, const char *code, kt_device *d)
{
	kt_conn c;
	sp_frame f;
	sp_frame_init(&f, SP_T_VERIFY, 2, true);
	sp_frame_set_str(&f, SP_F_PHONE, phone);
	sp_frame_set_str(&f, SP_F_OTP, code);
	kt_set_newdev(&f, d, 1);
	int rc = call(i, &f, &c);
	if (rc == SP_OK) {
		d->user = sp_frame_u64(&c.rep, SP_F_USER);
		d->device = sp_frame_u64(&c.rep, SP_F_DEVICE);
	}
	conn_done(&c);
	return rc;
}

/* The copy that answers a REGISTER now, or -1 after max_ms. */
static int
find_primary(int max_ms)
{
	static int probes;
	for (int waited = 0; waited < max_ms; waited += 100) {
		for (int i = 0; i < COPIES; i++) {
			char phone[20];
			/* A number per probe: each number has a daily budget of codes. */
			snprintf(phone, sizeof(phone), "+1777%07d", probes++);
			if (up[i] && rpc_register(i, phone) == SP_OK)
				return i;
		}
		kt_sleep_ms(100);
	}
	return -1;
}

static void
new_account(int p, int k)
{
	char phone[20], code[7];
	snprintf(phone, sizeof(phone), "+1555%07d", k);
	kt_device_new(&accts[nacct]);
	KT_CHECK_RC(rpc_register(p, phone), SP_OK);
	KT_CHECK(kt_read_otp(otp[p], phone, code) == 0);
	KT_CHECK_RC(rpc_verify(p, phone, code, &accts[nacct]), SP_OK);
	nacct++;
}

/* Every account made so far has its device on copy `p`. */
static void
check_accounts(int p, const char *phase)
{
	for (int k = 0; k < nacct; k++) {
		kt_conn c;
		sp_frame f;
		sp_frame_init(&f, SP_T_DEVICES_GET, 4, true);
		sp_frame_set_u64(&f, SP_F_USER, accts[k].user);
		int rc = call(p, &f, &c);
		KT_CHECK_RC(rc, SP_OK);
		const sp_val *v = sp_frame_get(&c.rep, SP_F_DEVICE_LIST);
		KT_CHECK(v && v->rs.n == 1 && sp_frame_u64(&v->rs.v[0], SP_F_DEVICE) == accts[k].device);
		conn_done(&c);
	}
	printf("%s: %s holds all %d accounts\n", phase, names[p], nacct);
}

int
main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	KT_CHECK(sodium_init() >= 0);
	snprintf(root, sizeof(root), "/tmp/keys_repl.XXXXXX");
	KT_CHECK(mkdtemp(root) != NULL);
	atexit(cleanup);
	KT_CHECK(etcd_proc_start(&E) == 0);
	for (int i = 0; i < COPIES; i++) {
		snprintf(names[i], sizeof(names[i]), "keys-%c", 'a' + i);
		snprintf(dirs[i], sizeof(dirs[i]), "%.60s/%s", root, names[i]);
		KT_CHECK(mkdir(dirs[i], 0700) == 0);
		snprintf(data[i], sizeof(data[i]), "%s/data", dirs[i]);
		snprintf(otp[i], sizeof(otp[i]), "%s/otp", dirs[i]);
		snprintf(logs[i], sizeof(logs[i]), "%s/keysrv.log", dirs[i]);
		snprintf(repl_url[i], sizeof(repl_url[i]), "tcp://127.0.0.1:%d", test_free_port());
		copy_start(i);
	}
	int p = find_primary(20000);
	KT_CHECK(p >= 0);
	printf("primary: %s\n", names[p]);
	for (int i = 0; i < COPIES; i++)
		if (i != p)
			KT_CHECK_RC(rpc_register(i, "+15550001111"), SP_ENOTPRIMARY);
	for (int k = 0; k < ACCOUNTS; k++)
		new_account(p, k);
	/* A code asked for on this primary, verified after it dies. */
	char code[7];
	KT_CHECK_RC(rpc_register(p, "+15558888888"), SP_OK);
	KT_CHECK(kt_read_otp(otp[p], "+15558888888", code) == 0);
	kt_sleep_ms(300); /* the replicas' applies run behind their acknowledgements */

	int old = p;
	copy_kill(old);
	int np = find_primary(20000);
	KT_CHECK(np >= 0 && np != old);
	printf("failover: %s took over from %s\n", names[np], names[old]);
	check_accounts(np, "after the failover");
	kt_device_new(&accts[nacct]);
	KT_CHECK_RC(rpc_verify(np, "+15558888888", code, &accts[nacct]), SP_OK);
	nacct++;
	printf("a code issued by %s verified on %s\n", names[old], names[np]);
	for (int k = ACCOUNTS; k < 2 * ACCOUNTS; k++)
		new_account(np, k);
	p = np;

	/* The old primary back on its data: a replica. */
	copy_start(old);
	kt_sleep_ms(500);
	KT_CHECK_RC(rpc_register(old, "+15550002222"), SP_ENOTPRIMARY);

	/* A copy with its data dir deleted comes back from a snapshot. */
	int lost = old;
	copy_kill(lost);
	kt_rmtree(data[lost]);
	copy_start(lost);
	KT_CHECK(kt_file_has(logs[lost], "snapshot: installed", NULL, 0));
	printf("%s rebuilt from a snapshot\n", names[lost]);
	kt_sleep_ms(2500); /* it joins the sync set */

	/* Only the rebuilt copy keeps its data; a third comes back empty so writes have two
	 * copies: the rebuilt one takes over and holds everything. */
	int other = -1;
	for (int i = 0; i < COPIES; i++)
		if (i != lost) {
			copy_kill(i);
			other = i;
		}
	kt_rmtree(data[other]);
	copy_start(other);
	np = find_primary(30000);
	KT_CHECK(np == lost);
	check_accounts(np, "the rebuilt copy as the last one standing");
	nng_fini();
	printf("ok\n");
	return 0;
}
