/*
 * A group at full size through a real cluster: N members (1024; 128 under ASan, or
 * SP_GROUP_LARGE_MEMBERS) with 2 devices each, registered and linked with the client
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

/* Shared with the workers (MAP_SHARED): per member its user id, per device a result. */
typedef struct shared {
	uint64_t user[MAX_MEMBERS];
	int ok[MAX_MEMBERS][2];   /* the phase's check passed for device (member, k) */
	int seen[MAX_MEMBERS][2]; /* the phase's text was seen */
} shared;

static shared *sh;
static int members;
static char homes[256];
static const char *want_text;
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

/* Member i: register its primary (the sender's is done already), link its second device. */
static int
setup_member(int i)
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
	sealpost_close(b);
	sealpost_close(a);
	return rc;
}

static void
on_event(const sealpost_event *ev, void *arg)
{
	int *seen = arg;
	if (ev->type == SEALPOST_EV_MESSAGE && ev->text && strcmp(ev->text, want_text) == 0)
		(*seen)++;
}

/* Device (i, k) drains its inbox; ok when it saw want_text exactly once. */
static int
recv_device(int i, int k)
{
	sealpost *sp = open_dev(i, k);
	int seen = 0, rc = sp ? sealpost_recv(sp, 0, 0, on_event, &seen) : SP_EIO;
	if (rc)
		fprintf(stderr, "recv m%d%c: %s\n", i, k ? 'b' : 'a', sealpost_errmsg(sp));
	sealpost_close(sp);
	sh->seen[i][k] = seen;
	sh->ok[i][k] = rc == SP_OK && seen == 1;
	return rc;
}

enum { PH_SETUP, PH_RECV };

/* Runs a phase over every member (or device) in WORKERS forked processes. */
static void
run_phase(int phase)
{
	pid_t pids[WORKERS];
	for (int w = 0; w < WORKERS; w++) {
		pids[w] = fork();
		CHECK(pids[w] >= 0);
		if (pids[w] == 0) {
			int bad = 0;
			for (int i = w; i < members; i += WORKERS) {
				if (phase == PH_SETUP)
					bad += setup_member(i) != SP_OK;
				else
					for (int k = 0; k < 2; k++)
						if (i || k) /* not the sender's own device */
							recv_device(i, k);
			}
			_exit(bad ? 1 : 0);
		}
	}
	int failed = 0;
	for (int w = 0; w < WORKERS; w++) {
		int st;
		CHECK(waitpid(pids[w], &st, 0) == pids[w]);
		failed += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	CHECK(failed == 0);
	printf("group_large_itest: phase %s done at %llu ms\n", phase == PH_SETUP ? "setup" : "recv",
	       (unsigned long long)(sp_time_ms() - t_start));
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
			n += (i || k) && sh->ok[i][k];
	return n;
}

int
main(void)
{
	uint64_t t0 = sp_time_ms();
	t_start = t0;
	members = ASAN ? 128 : MAX_MEMBERS;
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
	run_phase(PH_SETUP);
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
	want_text = "first to everyone";
	run_phase(PH_RECV);
	printf("group_large_itest: %d of %d devices decrypted the first message\n", count_ok(members),
	       2 * members - 1);
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
	CHECK(sealpost_group_remove(s, "@big", phones[members - 2]) == 0);
	if (sealpost_send_text(s, "@big", "after the removal", &sent))
		fprintf(stderr, "send: %s\n", sealpost_errmsg(s));
	CHECK(sent.sent == 1);
	memset(sh->ok, 0, sizeof(sh->ok));
	memset(sh->seen, 0, sizeof(sh->seen));
	want_text = "after the removal";
	run_phase(PH_RECV);
	CHECK(count_ok(members - 1) == 2 * (members - 1) - 1);
	CHECK(sh->seen[members - 1][0] == 0 && sh->seen[members - 1][1] == 0);
	sealpost_close(s);
	for (int i = 0; i < members - 1; i++)
		free((void *)phones[i]);
	free(phones);
	remove_homes();
	ct_down();
	printf("group_large_itest: all passed in %llu ms (%d members x 2 devices)\n",
	       (unsigned long long)(sp_time_ms() - t0), members);
	return 0;
}
