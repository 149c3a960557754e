/*
 * sealpost: the command-line client (docs/CLIENT.md). One JSON line per result or event
 * on stdout (or text with --format text: client/cl_format.c); `chat` is the interactive
 * conversation (client/cl_chat.c). Errors are one line on stderr and the exit code says
 * what kind (2 usage, 3 network, 4 server refused, 5 crypto/identity, 1 other).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "client/cl_format.h"
#include "client/sealpost.h"
#include "sp_error.h"

static const char usage_text[] =
	"usage: sealpost [--home DIR] [--server HOST:PORT | --router HOST:PORT[,HOST:PORT...]] [--ca FILE]\n"
	"                [--format json|text] COMMAND\n"
	"  register PHONE                 ask for a one-time code\n"
	"  verify PHONE CODE [--pin PIN]  create this device's account (--pin: registration lock)\n"
	"  set-pin PIN | set-pin --clear  (primary) set or clear the registration lock PIN\n"
	"  whoami                         this device's user, device and phone\n"
	"  contact add PHONE USER_ID      remember a contact's user id (and tell the server)\n"
	"  contact remove PHONE|#USER     forget a contact (here and on the server)\n"
	"  privacy [--last-seen X] [--online X] [--group-add X]\n"
	"                                 X: everyone|contacts|nobody (group-add: everyone|contacts);\n"
	"                                 no option: show the current settings\n"
	"  presence PHONE|#USER           online / last seen, as their settings show it to you\n"
	"  send PHONE|#USER|@GROUP TEXT   send a text (\"queued\" when offline)\n"
	"  send-file PHONE|#USER|@GROUP PATH\n"
	"  recv [--wait SECONDS]          drain the inbox, print events\n"
	"  listen [--watch PHONE|#USER]...  stay connected, print events as they come\n"
	"                                 (--watch: also presence changes of those users, max 64)\n"
	"  read PHONE|@GROUP              mark a conversation read\n"
	"  typing PHONE|#USER [--stop]    show (or stop showing) that you are typing\n"
	"  status MSG_ID [--offline]      delivery status of a message\n"
	"  history PHONE|@GROUP [--limit N]\n"
	"  chat PHONE|#USER|@GROUP        interactive conversation on this terminal (/quit to leave)\n"
	"  group create NAME PHONE...  |  group add|remove @GROUP PHONE  |  group leave @GROUP  |  group list\n"
	"  link [--wait SECONDS]          (new device) show a code, wait for the primary\n"
	"  link-confirm CODE              (primary) approve a new device\n"
	"  devices  |  devices remove ID\n"
	"  push register --platform fcm|apns TOKEN  |  push clear   wake-ups for this device\n"
	"--format text: human-readable output instead of JSON lines.\n"
	"Defaults from SEALPOST_HOME, SEALPOST_SERVER, SEALPOST_ROUTER, SEALPOST_CA.\n"
	"Keepalive: SEALPOST_PING_MS (PING after this long without sending; default 60000,\n"
	"-1: never), SEALPOST_PONG_TIMEOUT_MS (no answer this long: reconnect; default 10000).\n"
	"Routers are tried in turn; with none answering, the connsrvs the last one listed\n"
	"(kept in the home) are.\n";

static int
usage(const char *why)
{
	if (why)
		fprintf(stderr, "sealpost: %s\n", why);
	fputs(usage_text, stderr);
	return SEALPOST_ERR_USAGE;
}

static int
fail(sealpost *sp, int rc)
{
	fprintf(stderr, "sealpost: %s\n", sp ? sealpost_errmsg(sp) : sp_strerror(rc));
	fflush(stdout);
	return sp ? sealpost_errclass(sp) : SEALPOST_ERR_OTHER;
}

/* A command's result, as JSON or text (client/cl_format.c); steals j. */
static void
emit(json_t *j)
{
	cl_fmt_result(CL_OUT_PLAIN, j);
}

/* 64-bit ids are JSON strings: JSON numbers lose precision beyond 2^53 in most tools. */
static json_t *
id_json(uint64_t v)
{
	return cl_fmt_id(v);
}

static json_t *
str_json(const char *s)
{
	return cl_fmt_str(s);
}

static void
on_event(const sealpost_event *ev, void *arg)
{
	(void)arg;
	cl_fmt_event(ev);
}

static void
on_progress(uint64_t done, uint64_t total, void *arg)
{
	(void)arg;
	int width = 40, fill = total ? (int)(done * (uint64_t)width / total) : width;
	fprintf(stderr, "\r[%.*s%*s] %3d%% %" PRIu64 "/%" PRIu64, fill, "########################################",
		width - fill, "", total ? (int)(done * 100 / total) : 100, done, total);
	if (done >= total)
		fputc('\n', stderr);
	fflush(stderr);
}

static int
parse_int_opt(int argc, char **argv, int *i, const char *name, long *v)
{
	if (strcmp(argv[*i], name) != 0)
		return 0;
	if (*i + 1 >= argc)
		return -1;
	char *end;
	*v = strtol(argv[++*i], &end, 10);
	return *end || *v < 0 ? -1 : 1;
}

static int
print_sent(sealpost *sp, int rc, const sealpost_sent *s)
{
	if (rc && !s->failed)
		return fail(sp, rc);
	cl_fmt_sent(s);
	/* A failed message: its id on stdout (status shows it later); the exit code says it
	 * failed. */
	return s->failed ? fail(sp, rc) : 0;
}

static int
ok_line(const char *status)
{
	json_t *j = json_object();
	json_object_set_new(j, "status", json_string(status));
	cl_fmt_result(CL_OUT_OK, j);
	return 0;
}

static void
on_code(const char *code, uint64_t ttl, void *arg)
{
	(void)arg;
	json_t *j = json_object();
	json_object_set_new(j, "link_code", json_string(code));
	json_object_set_new(j, "ttl", json_integer((json_int_t)ttl));
	emit(j);
}

static void
on_device(const sealpost_device *d, void *arg)
{
	(void)arg;
	json_t *j = json_object();
	json_object_set_new(j, "device", id_json(d->device));
	json_object_set_new(j, "primary", json_boolean(d->primary));
	json_object_set_new(j, "this", json_boolean(d->self));
	cl_fmt_result(CL_OUT_DEVICE, j);
}

static void
on_group(const sealpost_group *g, void *arg)
{
	(void)arg;
	json_t *j = json_object(), *m = json_array();
	json_object_set_new(j, "group", id_json(g->id));
	json_object_set_new(j, "name", str_json(g->name));
	json_object_set_new(j, "epoch", json_integer((json_int_t)g->epoch));
	for (size_t i = 0; i < g->n_members; i++)
		json_array_append_new(m, id_json(g->members[i]));
	json_object_set_new(j, "members", m);
	cl_fmt_result(CL_OUT_GROUP, j);
}

static int
parse_id(const char *s, uint64_t *v)
{
	char *end;
	if (!*s || *s == '-')
		return -1;
	*v = strtoull(s, &end, 10);
	return *end || !*v ? -1 : 0;
}

static int
cmd_group(sealpost *sp, int argc, char **argv)
{
	int rc;
	if (argc < 1)
		return usage("group needs a subcommand");
	if (strcmp(argv[0], "create") == 0) {
		uint64_t id;
		if (argc < 2)
			return usage("group create NAME PHONE...");
		if ((rc = sealpost_group_create(sp, argv[1], (const char *const *)argv + 2, (size_t)(argc - 2), &id)))
			return fail(sp, rc);
		json_t *j = json_object();
		json_object_set_new(j, "group", id_json(id));
		json_object_set_new(j, "name", json_string(argv[1]));
		emit(j);
		return 0;
	}
	if (strcmp(argv[0], "add") == 0 || strcmp(argv[0], "remove") == 0) {
		if (argc != 3)
			return usage("group add|remove @GROUP PHONE");
		rc = argv[0][0] == 'a' ? sealpost_group_add(sp, argv[1], argv[2]) : sealpost_group_remove(sp, argv[1], argv[2]);
		return rc ? fail(sp, rc) : ok_line("ok");
	}
	if (strcmp(argv[0], "leave") == 0) {
		if (argc != 2)
			return usage("group leave @GROUP");
		return (rc = sealpost_group_leave(sp, argv[1])) ? fail(sp, rc) : ok_line("ok");
	}
	if (strcmp(argv[0], "list") == 0)
		return (rc = sealpost_group_list(sp, on_group, NULL)) ? fail(sp, rc) : 0;
	return usage("unknown group subcommand");
}

static const char *const priv_names[] = {"everyone", "contacts", "nobody"};

static int
print_privacy(const sealpost_privacy *p)
{
	json_t *j = json_object();
	json_object_set_new(j, "last_seen", json_string(priv_names[p->last_seen % 3]));
	json_object_set_new(j, "online", json_string(priv_names[p->online % 3]));
	json_object_set_new(j, "group_add", json_string(priv_names[p->group_add % 3]));
	json_object_set_new(j, "contacts", json_integer((json_int_t)p->contacts));
	emit(j);
	return 0;
}

/* privacy, presence, contact add|remove. */
static int
cmd_presence(sealpost *sp, const char *cmd, int argc, char **argv)
{
	sealpost_privacy priv;
	int rc;
	if (strcmp(cmd, "privacy") == 0) {
		int v[3] = {SEALPOST_PRIV_KEEP, SEALPOST_PRIV_KEEP, SEALPOST_PRIV_KEEP};
		static const char *const opts[3] = {"--last-seen", "--online", "--group-add"};
		for (int i = 0; i < argc; i++) {
			int o = 0, k = 0;
			while (o < 3 && strcmp(argv[i], opts[o]) != 0)
				o++;
			if (o == 3 || i + 1 >= argc)
				return usage("privacy [--last-seen X] [--online X] [--group-add X]");
			i++;
			while (k < 3 && strcmp(argv[i], priv_names[k]) != 0)
				k++;
			if (k == 3 || (o == 2 && k == SEALPOST_PRIV_NOBODY))
				return usage(o == 2 ? "--group-add is everyone or contacts"
						    : "a privacy setting is everyone, contacts or nobody");
			v[o] = k;
		}
		if ((rc = sealpost_privacy_set(sp, v[0], v[1], v[2], &priv)))
			return fail(sp, rc);
		return print_privacy(&priv);
	}
	if (strcmp(cmd, "presence") == 0) {
		sealpost_presence p;
		if (argc != 1)
			return usage("presence PHONE|#USER");
		if ((rc = sealpost_presence_get(sp, argv[0], &p)))
			return fail(sp, rc);
		json_t *j = json_object();
		json_object_set_new(j, "type", json_string("presence"));
		json_object_set_new(j, "from", json_string(argv[0]));
		json_object_set_new(j, "user", id_json(p.user));
		if (p.online >= 0)
			json_object_set_new(j, "online", json_boolean(p.online));
		if (p.last_seen_ms)
			json_object_set_new(j, "last_seen", json_integer((json_int_t)p.last_seen_ms));
		if (p.recently)
			json_object_set_new(j, "last_seen_recently", json_true());
		emit(j);
		return 0;
	}
	/* contact */
	if (argc == 2 && strcmp(argv[0], "remove") == 0)
		return (rc = sealpost_contact_remove(sp, argv[1])) ? fail(sp, rc) : ok_line("ok");
	uint64_t user;
	if (argc != 3 || strcmp(argv[0], "add") != 0 || parse_id(argv[2], &user))
		return usage("contact add PHONE USER_ID | contact remove PHONE|#USER");
	if ((rc = sealpost_contact_add(sp, argv[1], user)))
		return fail(sp, rc);
	/* Kept here even when the server cannot be told now: the output says so, and
	 * running the command again tells it. */
	rc = sealpost_contact_share(sp, user, 1, NULL);
	json_t *j = json_object();
	json_object_set_new(j, "status", json_string("ok"));
	json_object_set_new(j, "shared", json_boolean(rc == 0));
	if (rc)
		json_object_set_new(j, "reason", json_string(sealpost_errmsg(sp)));
	cl_fmt_result(CL_OUT_OK, j);
	return 0;
}

static int
cmd_status(sealpost *sp, int argc, char **argv)
{
	const char *id = NULL;
	int offline = 0, rc;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--offline") == 0)
			offline = 1;
		else if (!id)
			id = argv[i];
		else
			return usage("status MSG_ID [--offline]");
	}
	if (!id)
		return usage("status MSG_ID [--offline]");
	sealpost_status *st;
	if ((rc = sealpost_status_get(sp, id, offline, &st)))
		return fail(sp, rc);
	cl_fmt_status(id, st);
	sealpost_status_free(st);
	return 0;
}

static int
cmd_chat(sealpost *sp, int argc, char **argv)
{
	if (argc != 1)
		return usage("chat PHONE|#USER|@GROUP");
	int rc = sealpost_chat(sp, argv[0]);
	return rc ? fail(sp, rc) : 0;
}

static int
run(sealpost *sp, int argc, char **argv)
{
	const char *cmd = argv[0];
	int rc;
	argc--;
	argv++;
	if (strcmp(cmd, "register") == 0) {
		uint64_t ttl = 0;
		if (argc != 1)
			return usage("register PHONE");
		if ((rc = sealpost_register(sp, argv[0], &ttl)))
			return fail(sp, rc);
		json_t *j = json_object();
		json_object_set_new(j, "status", json_string("code_sent"));
		json_object_set_new(j, "phone", json_string(argv[0]));
		json_object_set_new(j, "ttl", json_integer((json_int_t)ttl));
		emit(j);
		return 0;
	}
	if (strcmp(cmd, "push") == 0) {
		bool reg = argc == 4 && strcmp(argv[0], "register") == 0 && strcmp(argv[1], "--platform") == 0;
		if (!reg && !(argc == 1 && strcmp(argv[0], "clear") == 0))
			return usage("push register --platform fcm|apns TOKEN | push clear");
		if ((rc = sealpost_push_register(sp, reg ? argv[2] : NULL, reg ? argv[3] : NULL)))
			return fail(sp, rc);
		json_t *j = json_object();
		json_object_set_new(j, "status", json_string(reg ? "push_registered" : "push_cleared"));
		emit(j);
		return 0;
	}
	if (strcmp(cmd, "set-pin") == 0) {
		if (argc != 1)
			return usage("set-pin PIN | set-pin --clear");
		bool clear = strcmp(argv[0], "--clear") == 0;
		if ((rc = sealpost_set_pin(sp, clear ? NULL : argv[0])))
			return fail(sp, rc);
		json_t *j = json_object();
		json_object_set_new(j, "status", json_string(clear ? "pin_cleared" : "pin_set"));
		cl_fmt_result(CL_OUT_OK, j);
		return 0;
	}
	if (strcmp(cmd, "verify") == 0 || strcmp(cmd, "whoami") == 0 || strcmp(cmd, "link") == 0) {
		if (cmd[0] == 'v') {
			if (argc != 2 && !(argc == 4 && strcmp(argv[2], "--pin") == 0))
				return usage("verify PHONE CODE [--pin PIN]");
			if ((rc = sealpost_verify_pin(sp, argv[0], argv[1], argc == 4 ? argv[3] : NULL)))
				return fail(sp, rc);
		} else if (cmd[0] == 'l') {
			long wait = 120;
			for (int i = 0; i < argc; i++)
				if (parse_int_opt(argc, argv, &i, "--wait", &wait) != 1)
					return usage("link [--wait SECONDS]");
			if ((rc = sealpost_link(sp, (int)wait, on_code, NULL)))
				return fail(sp, rc);
		} else if (argc) {
			return usage("whoami takes no argument");
		}
		uint64_t user, device;
		char phone[33];
		if ((rc = sealpost_whoami(sp, &user, &device, phone, sizeof(phone))))
			return fail(sp, rc);
		json_t *j = json_object();
		if (cmd[0] != 'w')
			json_object_set_new(j, "status", json_string(cmd[0] == 'v' ? "verified" : "linked"));
		json_object_set_new(j, "user", id_json(user));
		json_object_set_new(j, "device", id_json(device));
		json_object_set_new(j, "phone", json_string(phone));
		emit(j);
		return 0;
	}
	if (strcmp(cmd, "contact") == 0 || strcmp(cmd, "privacy") == 0 || strcmp(cmd, "presence") == 0)
		return cmd_presence(sp, cmd, argc, argv);
	if (strcmp(cmd, "send") == 0 || strcmp(cmd, "send-file") == 0) {
		sealpost_sent s;
		if (argc != 2)
			return usage(cmd[4] ? "send-file TO PATH" : "send TO TEXT");
		if (cmd[4])
			rc = sealpost_send_file(sp, argv[0], argv[1], isatty(2) ? on_progress : NULL, NULL, &s);
		else
			rc = sealpost_send_text(sp, argv[0], argv[1], &s);
		return print_sent(sp, rc, &s);
	}
	if (strcmp(cmd, "recv") == 0 || strcmp(cmd, "listen") == 0) {
		long wait = 0;
		int listen = cmd[0] == 'l';
		const char *watch[64];
		size_t nwatch = 0;
		for (int i = 0; i < argc; i++) {
			if (listen && strcmp(argv[i], "--watch") == 0 && i + 1 < argc && nwatch < 64) {
				watch[nwatch++] = argv[++i];
				continue;
			}
			if (listen || parse_int_opt(argc, argv, &i, "--wait", &wait) != 1)
				return usage(listen ? "listen [--watch PHONE|#USER]..." : "recv [--wait SECONDS]");
		}
		if (nwatch && (rc = sealpost_presence_watch(sp, watch, nwatch)))
			return fail(sp, rc);
		if (wait > 86400)
			return usage("--wait is at most 86400");
		return (rc = sealpost_recv(sp, (int)wait * 1000, listen, on_event, NULL)) ? fail(sp, rc) : 0;
	}
	if (strcmp(cmd, "typing") == 0) {
		if (argc < 1 || argc > 2 || (argc == 2 && strcmp(argv[1], "--stop") != 0))
			return usage("typing PHONE|#USER [--stop]");
		return (rc = sealpost_typing(sp, argv[0], argc == 1)) ? fail(sp, rc) : ok_line("ok");
	}
	if (strcmp(cmd, "read") == 0) {
		if (argc != 1)
			return usage("read PHONE|@GROUP");
		return (rc = sealpost_read(sp, argv[0])) ? fail(sp, rc) : ok_line("ok");
	}
	if (strcmp(cmd, "status") == 0)
		return cmd_status(sp, argc, argv);
	if (strcmp(cmd, "history") == 0) {
		long limit = 50;
		const char *conv = NULL;
		for (int i = 0; i < argc; i++) {
			int r = parse_int_opt(argc, argv, &i, "--limit", &limit);
			if (r < 0 || (r == 0 && conv))
				return usage("history PHONE|@GROUP [--limit N]");
			if (r == 0)
				conv = argv[i];
		}
		if (!conv)
			return usage("history PHONE|@GROUP [--limit N]");
		return (rc = sealpost_history(sp, conv, (int)limit, on_event, NULL)) ? fail(sp, rc) : 0;
	}
	if (strcmp(cmd, "group") == 0)
		return cmd_group(sp, argc, argv);
	if (strcmp(cmd, "chat") == 0)
		return cmd_chat(sp, argc, argv);
	if (strcmp(cmd, "link-confirm") == 0) {
		uint64_t device = 0;
		if (argc != 1)
			return usage("link-confirm CODE");
		if ((rc = sealpost_link_confirm(sp, argv[0], &device)))
			return fail(sp, rc);
		json_t *j = json_object();
		json_object_set_new(j, "status", json_string("linked"));
		json_object_set_new(j, "device", id_json(device));
		emit(j);
		return 0;
	}
	if (strcmp(cmd, "devices") == 0) {
		uint64_t id;
		if (argc == 0)
			return (rc = sealpost_devices(sp, on_device, NULL)) ? fail(sp, rc) : 0;
		if (argc != 2 || strcmp(argv[0], "remove") != 0 || parse_id(argv[1], &id))
			return usage("devices [remove ID]");
		if ((rc = sealpost_device_remove(sp, id)))
			return fail(sp, rc);
		json_t *j = json_object();
		json_object_set_new(j, "status", json_string("removed"));
		json_object_set_new(j, "device", id_json(id));
		emit(j);
		return 0;
	}
	return usage("unknown command");
}

/* --format json|text (a global option): how results and events are printed. Returns 1
 * when argv[*i] was it (and its value consumed), 0 when not, -1 for a bad value. */
static int
format_opt(int argc, char **argv, int *i)
{
	if (strcmp(argv[*i], "--format") != 0)
		return 0;
	int mode = *i + 1 < argc ? cl_fmt_parse(argv[*i + 1]) : -1;
	if (mode < 0)
		return -1;
	cl_fmt_set((cl_fmt_mode)mode);
	++*i;
	return 1;
}

static const char *
env_or(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

int
main(int argc, char **argv)
{
	sealpost_config cfg = {
		.home = env_or("SEALPOST_HOME"),
		.server = env_or("SEALPOST_SERVER"),
		.router = env_or("SEALPOST_ROUTER"),
		.ca = env_or("SEALPOST_CA"),
	};
	const char *cut = env_or("SEALPOST_TEST_CUT_UPLOAD");
	if (cut)
		cfg.test_cut_upload_after = atoi(cut);
	const char *hold = env_or("SEALPOST_GAP_HOLD_MS");
	if (hold)
		cfg.gap_hold_ms = atoi(hold);
	const char *ping = env_or("SEALPOST_PING_MS"), *pong = env_or("SEALPOST_PONG_TIMEOUT_MS");
	if (ping)
		cfg.ping_ms = atoi(ping);
	if (pong)
		cfg.pong_timeout_ms = atoi(pong);
	int i = 1;
	for (; i < argc && argv[i][0] == '-'; i++) {
		int fo = format_opt(argc, argv, &i);
		if (fo < 0)
			return usage("--format json|text");
		if (fo)
			continue;
		const char **slot = strcmp(argv[i], "--home") == 0     ? &cfg.home
				    : strcmp(argv[i], "--server") == 0 ? &cfg.server
				    : strcmp(argv[i], "--router") == 0 ? &cfg.router
				    : strcmp(argv[i], "--ca") == 0     ? &cfg.ca
								       : NULL;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs(usage_text, stdout);
			return 0;
		}
		if (!slot)
			return usage("unknown option");
		if (i + 1 >= argc)
			return usage("option needs a value");
		*slot = argv[++i];
		if (slot == &cfg.server)
			cfg.router = NULL;
		else if (slot == &cfg.router)
			cfg.server = NULL;
	}
	if (i >= argc)
		return usage("no command");
	sealpost *sp;
	char err[512];
	int rc = sealpost_open(&cfg, &sp, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "sealpost: %s\n", err);
		if (rc == SP_EINVAL || rc == SP_EIO)
			return SEALPOST_ERR_USAGE;
		/* A damaged Signal state or key in the store is an identity problem. */
		return rc == SP_EMALFORMED || rc == SP_ETRUNC || rc == SP_ECRYPTO ? SEALPOST_ERR_CRYPTO
												      : SEALPOST_ERR_OTHER;
	}
	int code = run(sp, argc - i, argv + i);
	sealpost_close(sp);
	return code;
}
