/*
 * A group at full size through a real cluster: N members (1024; 136 under ASan, whose
 * 271 other devices still take two SEND_SK frames; or SP_GROUP_LARGE_MEMBERS) with 2
 * devices each, registered and linked with the client
 * library in forked workers that each own a slice of the devices. The first message
 * needs the sender key of member 0 on 2N-1 devices (far more than one 64 KiB frame holds:
 * it goes in SEND_SK chunks ahead of the body); every device must decrypt it. Then the
 * last member is removed: the key rotates, every remaining device decrypts the next
 * message and the removed member's devices do not get it.
 */
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "client_util.h"
#include "client/sealpost.h"
#include "sp_error.h"
#include "sp_time.h"

#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN 1
#endif
#endif
#ifndef ASAN
#define ASAN 0
#endif

#define WORKERS 8
#define MAX_MEMBERS 1024

/* Shared with the workers (MAP_SHARED): per member its user id, per device a result; the
 * text the receive pass looks for. */
typedef struct shared {
	char want[64];
	uint64_t user[MAX_MEMBERS];
	int err[MAX_MEMBERS][2];  /* a receive call of device (member, k) failed in this pass */
	int seen[MAX_MEMBERS][2]; /* times it saw the pass's text */
	int undec[MAX_MEMBERS][2]; /* undecryptable events it reported in this pass */
} shared;

static shared *sh;
static int members;
static char homes[256];
static uint64_t t_start;

static void
phone_of(int i, char *out, size_t cap)
{
	snprintf(out, cap, "+1555%07d", 1000000 + i);
}

/* The sender's primary is a CLI home (ct_run "sender"); the others are the library's. */
static void
home_of(int i, int k, char *out, size_t cap)
{
	if (i == 0 && k == 0)
		snprintf(out, cap, "%s/home-sender", ct_cluster.dir);
	else
		snprintf(out, cap, "%s/m%d%c", homes, i, k ? 'b' : 'a');
}

static sealpost *
open_dev(int i, int k)
{
	char home[512], err[256];
	home_of(i, k, home, sizeof(home));
	sealpost_config cfg = {.home = home, .router = ct_cluster.router, .ca = ct_cluster.ca, .gap_hold_ms = 300,
			       .connect_attempts = 5};
	sealpost *sp = NULL;
	if (sealpost_open(&cfg, &sp, err, sizeof(err)))
		fprintf(stderr, "open %s: %s\n", home, err);
	return sp;
}

/* Confirms a link code on the primary while the new device waits (sealpost_link). */
static void
confirm(const char *code, uint64_t ttl, void *arg)
{
	(void)ttl;
	uint64_t dev;
	if (sealpost_link_confirm(arg, code, &dev))
		fprintf(stderr, "link-confirm: %s\n", sealpost_errmsg(arg));
}

/* Member i: register its primary (the sender's is done already), link its second device;
 * the handles stay open in *pa, *pb (connected) for the receive passes. */
static int
setup_member(int i, sealpost **pa, sealpost **pb)
{
	char phone[32], path[512], code[32] = "";
	phone_of(i, phone, sizeof(phone));
	sealpost *a = open_dev(i, 0), *b = NULL;
	int rc = !a ? SP_EIO : i == 0 ? SP_OK : sealpost_register(a, phone, NULL);
	if (rc == SP_OK && i > 0) {
		snprintf(path, sizeof(path), "%s/%s", ct_cluster.otp_dir, phone);
		FILE *f = fopen(path, "r");
		if (!f || !fgets(code, sizeof(code), f))
			rc = SP_EIO;
		if (f)
			fclose(f);
		code[strcspn(code, "\r\n")] = '\0';
	}
	if (rc == SP_OK && i > 0)
		rc = sealpost_verify(a, phone, code);
	uint64_t dev;
	if (rc == SP_OK)
		rc = sealpost_whoami(a, &sh->user[i], &dev, phone, sizeof(phone));
	if (rc == SP_OK && !(b = open_dev(i, 1)))
		rc = SP_EIO;
	if (rc == SP_OK)
		rc = sealpost_link(b, 60, confirm, a);
	if (rc)
		fprintf(stderr, "member %d: %s\n", i, a ? sealpost_errmsg(a) : "open");
	*pa = a;
	*pb = b;
	return rc;
}

static void
on_event(const sealpost_event *ev, void *arg)
{
	int *seen = arg;
	if (ev->type == SEALPOST_EV_MESSAGE && ev->text && strcmp(ev->text, sh->want) == 0)
		seen[0]++;
	if (ev->type == SEALPOST_EV_UNDECRYPTABLE)
		seen[1]++;
	seen[2]++;
}

/* Device (i, k) reads what came on its open handle for wait_ms after the queue was
 * empty (an open connection has had its QUEUE_EMPTY already: what the send pushed is read
 * within that time); ok when every call succeeded and it saw the text exactly once. */
static void
recv_device(sealpost *sp, int i, int k, int wait_ms)
{
	/* A device with a long queue (the sender's other device gets every member's
	 * receipts) reads on while it makes progress, up to a minute. */
	uint64_t until = sp_time_ms() + 60000;
	int seen[3];
	do {
		memset(seen, 0, sizeof(seen));
		int rc = sealpost_recv(sp, wait_ms, 0, on_event, seen);
		if (rc) {
			fprintf(stderr, "recv m%d%c: %s\n", i, k ? 'b' : 'a', sealpost_errmsg(sp));
			sh->err[i][k] = 1;
		}
		sh->seen[i][k] += seen[0];
		sh->undec[i][k] += seen[1];
	} while (!sh->err[i][k] && !sh->seen[i][k] && seen[2] > 0 && sp_time_ms() < until);
}

/* Rounds of a receive pass: a device that has not seen the text yet reads again, longer
 * (the push to its connection may be late on a loaded machine). */
static const int pass_wait_ms[] = {100, 400, 1500, 3000};

/* The workers: each sets up its members (i = w mod WORKERS), keeps their handles open
 * and runs a receive pass over their devices on each 'R' from the parent ('Q': close and
 * exit), answering one byte ('K' ok, 'F' failed) per step. */
static pid_t pids[WORKERS];
static int to_w[WORKERS], from_w[WORKERS];

static void
worker(int w, int in, int out)
{
	sealpost **h = calloc(2 * (size_t)members, sizeof(*h));
	int bad = !h;
	for (int i = w; i < members && h; i += WORKERS)
		bad += setup_member(i, &h[2 * i], &h[2 * i + 1]) != SP_OK;
	if (h) {
		/* The sender's primary is the parent's from here on. */
		sealpost_close(h[0]);
		h[0] = NULL;
	}
	char c = bad ? 'F' : 'K';
	if (write(out, &c, 1) != 1)
		_exit(1);
	while (!bad && read(in, &c, 1) == 1 && c == 'R') {
		for (size_t r = 0; r < sizeof(pass_wait_ms) / sizeof(pass_wait_ms[0]); r++)
			for (int i = w; i < members; i += WORKERS)
				for (int k = 0; k < 2; k++)
					if (h[2 * i + k] && (r == 0 || sh->seen[i][k] == 0))
						recv_device(h[2 * i + k], i, k, pass_wait_ms[r]);
		c = 'K';
		if (write(out, &c, 1) != 1)
			break;
	}
	for (int i = 0; h && i < 2 * members; i++)
		sealpost_close(h[i]);
	free(h);
	_exit(bad ? 1 : 0);
}

/* One step of every worker: sends cmd (0: none, the setup), waits for every answer. */
static void
step(char cmd, const char *what)
{
	int failed = 0;
	for (int w = 0; w < WORKERS && cmd; w++)
		CHECK(write(to_w[w], &cmd, 1) == 1);
	for (int w = 0; w < WORKERS; w++) {
		char c = 0;
		failed += read(from_w[w], &c, 1) != 1 || c != 'K';
	}
	CHECK(failed == 0);
	printf("group_large_itest: %s done at %llu ms\n", what, (unsigned long long)(sp_time_ms() - t_start));
}

static void
start_workers(void)
{
	for (int w = 0; w < WORKERS; w++) {
		int a[2], b[2];
		CHECK(pipe(a) == 0 && pipe(b) == 0);
		pids[w] = fork();
		CHECK(pids[w] >= 0);
		if (pids[w] == 0) {
			close(a[1]);
			close(b[0]);
			worker(w, a[0], b[1]);
		}
		close(a[0]);
		close(b[1]);
		to_w[w] = a[1];
		from_w[w] = b[0];
	}
	step(0, "setup");
}

static void
stop_workers(void)
{
	int failed = 0;
	for (int w = 0; w < WORKERS; w++) {
		char c = 'Q', st_ok;
		int st;
		st_ok = write(to_w[w], &c, 1) == 1;
		close(to_w[w]);
		close(from_w[w]);
		failed += !st_ok || waitpid(pids[w], &st, 0) != pids[w] || !WIFEXITED(st) || WEXITSTATUS(st) != 0;
	}
	CHECK(failed == 0);
}

/* The homes go at exit, a failed check included (workers leave with _exit). */
static void
remove_homes(void)
{
	char cmd[512];
	if (!homes[0])
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", homes);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", homes);
	homes[0] = '\0';
}

static int
count_ok(int upto)
{
	int n = 0;
	for (int i = 0; i < upto; i++)
		for (int k = 0; k < 2; k++)
			n += (i || k) && !sh->err[i][k] && sh->seen[i][k] == 1;
	return n;
}

/* The devices of members [0, upto) that failed the pass, on stderr. */
static void
report_bad(int upto)
{
	for (int i = 0; i < upto; i++)
		for (int k = 0; k < 2; k++)
			if ((i || k) && (sh->err[i][k] || sh->seen[i][k] != 1))
				fprintf(stderr, "device m%d%c: seen %d, undecryptable %d, errors %d\n", i, k ? 'b' : 'a',
					sh->seen[i][k], sh->undec[i][k], sh->err[i][k]);
}

int
main(void)
{
	uint64_t t0 = sp_time_ms();
	t_start = t0;
	members = ASAN ? 136 : MAX_MEMBERS;
	if (getenv("SP_GROUP_LARGE_MEMBERS"))
		members = atoi(getenv("SP_GROUP_LARGE_MEMBERS"));
	CHECK(members >= 3 && members <= MAX_MEMBERS);
	struct rlimit rl = {20000, 20000};
	setrlimit(RLIMIT_NOFILE, &rl);
	/* Many users from one address, far faster than people: the abuse limits are raised
	 * (as bench/repl.sh does), not bypassed. */
	setenv("SEALPOST_CONNSRV_HANDSHAKE_RATE", "1000000", 1);
	setenv("SEALPOST_CONNSRV_HANDSHAKE_BURST", "1000000", 1);
	setenv("SEALPOST_CONNSRV_PRELOGIN_PER_SOURCE", "1000000", 1);
	const char *lims[] = {"SEND", "SEND_SOURCE", "RECEIPT", "GROUP", "GROUP_SOURCE", "BUNDLE", "BUNDLE_SOURCE",
			      "BUNDLE_TARGET", "LOOKUP", "LOOKUP_SOURCE"};
	for (size_t i = 0; i < sizeof(lims) / sizeof(lims[0]); i++) {
		char k[96];
		snprintf(k, sizeof(k), "SEALPOST_CONNSRV_LIMIT_%s", lims[i]);
		setenv(k, "10M/s", 1);
	}
	/* keysrv's (after devcluster.sh's own flags, which they override). */
	setenv("SP_KEYSRV_ARGS",
	       "--rate-source-burst 1000000 --rate-source-per-min 1000000 --rate-bundle-burst 1000000"
	       " --rate-bundle-per-min 1000000 --rate-phone-burst 1000000",
	       1);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(sh != MAP_FAILED);
	ct_start();
	/* The homes (2N SQLite stores) live in memory when /dev/shm is there. */
	snprintf(homes, sizeof(homes), "%s/sp-group-large-%d", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp",
		 (int)getpid());
	CHECK(mkdir(homes, 0700) == 0);
	atexit(remove_homes);
	char first[32], uid[32], out[1 << 20];
	phone_of(0, first, sizeof(first));
	ct_register("sender", first, uid, sizeof(uid));
	start_workers();
	printf("group_large_itest: %d members x 2 devices registered in %llu ms\n", members,
	       (unsigned long long)(sp_time_ms() - t0));

	sealpost *s = open_dev(0, 0);
	CHECK(s != NULL);
	const char **phones = calloc((size_t)members, sizeof(char *));
	CHECK(phones != NULL);
	for (int i = 1; i < members; i++) {
		char p[32];
		phone_of(i, p, sizeof(p));
		CHECK(sealpost_contact_add(s, p, sh->user[i]) == 0);
		phones[i - 1] = strdup(p);
	}
	uint64_t gid;
	CHECK(sealpost_group_create(s, "big", phones, (size_t)members - 1, &gid) == 0);
	sealpost_sent sent;
	uint64_t t1 = sp_time_ms();
	if (sealpost_send_text(s, "@big", "first to everyone", &sent))
		fprintf(stderr, "send: %s\n", sealpost_errmsg(s));
	CHECK(sent.sent == 1 && sent.n_refused == 0);
	printf("group_large_itest: first message (key to %d devices) sent in %llu ms\n", 2 * members - 1,
	       (unsigned long long)(sp_time_ms() - t1));
	snprintf(sh->want, sizeof(sh->want), "first to everyone");
	step('R', "first receive pass");
	printf("group_large_itest: %d of %d devices decrypted the first message\n", count_ok(members),
	       2 * members - 1);
	report_bad(members);
	CHECK(count_ok(members) == 2 * members - 1);
	/* The sender's record: every device `sent` (or further), none refused. */
	CHECK(ct_run("sender", out, sizeof(out), "status %s --offline", sent.msg_id) == 0);
	CHECK(ct_nlines(out) == 1);
	json_t *j = ct_line(out, 0);
	CHECK(j && json_array_size(json_object_get(j, "devices")) == (size_t)(2 * members - 1));
	json_decref(j);
	CHECK(!strstr(out, "failed"));

	/* The last member leaves the group: rotation, then the next message. */
	printf("group_large_itest: status checked at %llu ms\n", (unsigned long long)(sp_time_ms() - t0));
	/* The sender's handle sat idle through the pass (past connsrv's idle timeout on a slow
	 * machine): a fresh one, as an app coming back would have. */
	sealpost_close(s);
	CHECK((s = open_dev(0, 0)) != NULL);
	int rc = sealpost_group_remove(s, "@big", phones[members - 2]);
	if (rc)
		fprintf(stderr, "group remove: %s\n", sealpost_errmsg(s));
	CHECK(rc == 0);
	if (sealpost_send_text(s, "@big", "after the removal", &sent))
		fprintf(stderr, "send: %s\n", sealpost_errmsg(s));
	CHECK(sent.sent == 1);
	memset(sh->err, 0, sizeof(sh->err));
	memset(sh->undec, 0, sizeof(sh->undec));
	memset(sh->seen, 0, sizeof(sh->seen));
	snprintf(sh->want, sizeof(sh->want), "after the removal");
	step('R', "second receive pass");
	report_bad(members - 1);
	CHECK(count_ok(members - 1) == 2 * (members - 1) - 1);
	CHECK(sh->seen[members - 1][0] == 0 && sh->seen[members - 1][1] == 0);
	sealpost_close(s);
	stop_workers();
	for (int i = 0; i < members - 1; i++)
		free((void *)phones[i]);
	free(phones);
	remove_homes();
	ct_down();
	printf("group_large_itest: all passed in %llu ms (%d members x 2 devices)\n",
	       (unsigned long long)(sp_time_ms() - t0), members);
	return 0;
}
