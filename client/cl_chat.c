/*
 * `sealpost chat`: an interactive conversation on the terminal. One thread, one loop:
 * poll() on the terminal and on the connection. GNU readline's callback interface reads
 * the keys (rl_callback_read_char), so lines from the network are printed above the
 * input line and the line being typed is redrawn under them. The network side is the
 * library's own receive step (cl_next_deliver, which also sends the keepalive PINGs,
 * and cl_recv_process: decrypt, store, ACK, report), run without blocking; a lost
 * connection is replaced with the library's backoff, without freezing the input line.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "client/cl_format.h"
#include "client/cl_internal.h"
#include "sp_error.h"
#include "sp_time.h"

#define CHAT_HISTORY 20             /* messages shown on open */
#define CHAT_TICKS 256              /* our latest messages whose ticks are followed */
#define CHAT_BATCH 64               /* DELIVERs handled before the terminal gets a turn */
#define CHAT_WAKE_MS 1000           /* the loop wakes at least this often (keepalive, timers) */
#define CHAT_EXPIRY_MS 10000        /* how often sent ticks are checked for `expired` (no event says it) */
#define CHAT_TYPING_EVERY_MS 3000   /* our "typing" is repeated this often while we type */
#define CHAT_TYPING_IDLE_MS 5000    /* no key for this long: "stopped" */
#define CHAT_TYPING_GAP_MS 1100     /* connsrv drops a second TYPING within a second */
#define CHAT_THEIR_TYPING_MS 6000   /* their "typing" is shown this long without a refresh */

/* One of our messages and the tick last shown for it. */
typedef struct chat_tick {
	char id[33];
	int rank; /* -1 failed, 0 queued, 1 sent, 2 delivered, 3 read */
	char snippet[40];
} chat_tick;

typedef struct chat {
	sealpost *sp;
	const char *name;     /* the conversation as the user gave it */
	char display[160];    /* ... as events name it */
	uint64_t peer;        /* 1:1: the other user; 0 in a group */
	bool installed;       /* readline owns the input line */
	bool opening;         /* reporting what was pending before the history is shown */
	bool quit, need_read;
	char *line;           /* a line readline handed over, not handled yet (readline's) */
	/* our typing (1:1 only) */
	bool typing_on;       /* "typing" sent and no "stopped" or message since */
	uint64_t typing_sent_ms, last_key_ms;
	char *last_buf;       /* the input line after the last key, to notice edits */
	/* theirs */
	bool they_type;
	uint64_t they_type_until;
	/* connection */
	bool was_online;
	uint64_t retry_at;
	unsigned retries;
	chat_tick ticks[CHAT_TICKS];
	size_t nticks, tick_next;
	uint64_t expiry_check_at;
} chat;

/* readline's line handler takes no argument. */
static chat *chat_active;

/* ---- terminal ---- */

/* Prints one line above the input line (or plainly before readline is installed). */
static void
chat_print(chat *ch, const char *s)
{
	if (ch->installed)
		rl_clear_visible_line();
	fputs(s, stdout);
	fputc('\n', stdout);
	fflush(stdout);
	if (ch->installed) {
		rl_on_new_line();
		rl_redisplay();
	}
}

static void
chat_prompt(chat *ch)
{
	char p[200];
	if (ch->they_type)
		snprintf(p, sizeof(p), "%s is typing...> ", ch->display);
	else
		snprintf(p, sizeof(p), "%s> ", ch->display);
	rl_set_prompt(p);
	if (ch->installed) {
		rl_clear_visible_line();
		rl_on_new_line();
		rl_redisplay();
	}
}

/* A line that is about the chat, not a message: connection, security, other
 * conversations, and any event this view has no display of its own for (presence, when
 * the library reports it, belongs here). */
static void
chat_status(chat *ch, const char *s)
{
	char line[CL_FMT_LINE_MAX + 8];
	snprintf(line, sizeof(line), "-- %s", s);
	chat_print(ch, line);
}

static void
show_status_event(chat *ch, const sealpost_event *ev)
{
	char line[CL_FMT_LINE_MAX];
	cl_fmt_event_line(ev, line, sizeof(line));
	chat_status(ch, line);
}

/* ---- ticks ---- */

static int
rank_of(const char *status)
{
	return strcmp(status, "read") == 0	  ? 3
	       : strcmp(status, "delivered") == 0 ? 2
	       : strcmp(status, "sent") == 0	  ? 1
	       : strcmp(status, "failed") == 0	  ? -1
	       : strcmp(status, "expired") == 0	  ? 4
						  : 0;
}

static const char *
tick_text(int rank)
{
	static const char *const names[] = {"[failed]", "[queued]", "[sent]", "[delivered]", "[read]", "[expired]"};
	return names[rank + 1];
}

static void
tick_add(chat *ch, const char *id, int rank, const char *text)
{
	chat_tick *t = &ch->ticks[ch->tick_next];
	ch->tick_next = (ch->tick_next + 1) % CHAT_TICKS;
	if (ch->nticks < CHAT_TICKS)
		ch->nticks++;
	snprintf(t->id, sizeof(t->id), "%s", id);
	t->rank = rank;
	cl_fmt_sanitize(text ? text : "[file]", t->snippet, sizeof(t->snippet));
}

static chat_tick *
tick_find(chat *ch, const char *id)
{
	for (size_t i = 0; i < ch->nticks; i++)
		if (strcmp(ch->ticks[i].id, id) == 0)
			return &ch->ticks[i];
	return NULL;
}

/* Shows t's tick again if the library's overall status of it moved on. Local reads
 * only: safe inside an event callback. */
static void
tick_update(chat *ch, chat_tick *t)
{
	sealpost_status *st;
	if (sealpost_status_get(ch->sp, t->id, 1, &st) != SEALPOST_OK)
		return;
	int rank = rank_of(st->status);
	sealpost_status_free(st);
	if (rank == t->rank)
		return;
	t->rank = rank;
	char line[128];
	snprintf(line, sizeof(line), "   %s %s", tick_text(rank), t->snippet);
	chat_print(ch, line);
}

/* After the outbox went out on a new connection: queued messages are sent now. */
static void
ticks_refresh(chat *ch)
{
	for (size_t i = 0; i < ch->nticks; i++)
		if (ch->ticks[i].rank == 0)
			tick_update(ch, &ch->ticks[i]);
}

/* A sent message turns expired with time alone: looked at every CHAT_EXPIRY_MS. */
static void
ticks_expiry(chat *ch, uint64_t now)
{
	if (now < ch->expiry_check_at)
		return;
	ch->expiry_check_at = now + CHAT_EXPIRY_MS;
	for (size_t i = 0; i < ch->nticks; i++)
		if (ch->ticks[i].rank == 1)
			tick_update(ch, &ch->ticks[i]);
}

/* ---- events ---- */

static void
show_message(chat *ch, const sealpost_event *ev)
{
	char line[CL_FMT_LINE_MAX], body[CL_FMT_BODY_MAX], from[64], clock[8];
	if (strcmp(ev->conv ? ev->conv : "", ch->display) != 0) {
		cl_fmt_event_line(ev, line, sizeof(line));
		chat_status(ch, line);
		return;
	}
	if (ch->opening)
		return; /* the history shows it */
	cl_fmt_clock(ev->server_ts, clock);
	cl_fmt_body(ev, body, sizeof(body));
	if (ev->outgoing) {
		/* -2: no status here (our other device's copy): no tick. */
		int rank = ev->status ? rank_of(ev->status) : -2;
		snprintf(line, sizeof(line), "[%s] me: %s%s%s", clock, body, rank > -2 ? "  " : "",
			 rank > -2 ? tick_text(rank) : "");
		if (rank > -2 && ev->msg_id && !tick_find(ch, ev->msg_id))
			tick_add(ch, ev->msg_id, rank, ev->text);
	} else {
		cl_fmt_sanitize(ev->from, from, sizeof(from));
		snprintf(line, sizeof(line), "[%s] %s: %s", clock, from, body);
		ch->need_read = true;
		if (ev->from_user == ch->peer && ch->they_type) {
			ch->they_type = false; /* the message is what they were typing */
			chat_prompt(ch);
		}
	}
	chat_print(ch, line);
}

static void
show_receipt(chat *ch, const sealpost_event *ev)
{
	for (size_t i = 0; i < ev->n_msg_ids; i++) {
		chat_tick *t = tick_find(ch, ev->msg_ids[i]);
		if (t)
			tick_update(ch, t);
	}
}

static void
show_typing(chat *ch, const sealpost_event *ev)
{
	if (!ch->peer || ev->from_user != ch->peer)
		return; /* typing carries no conversation: shown only in the chat with its sender */
	ch->they_type = ev->typing != 0;
	ch->they_type_until = sp_time_ms() + CHAT_THEIR_TYPING_MS;
	chat_prompt(ch);
}

static void
on_event(const sealpost_event *ev, void *arg)
{
	chat *ch = arg;
	switch (ev->type) {
	case SEALPOST_EV_MESSAGE:
		show_message(ch, ev);
		break;
	case SEALPOST_EV_RECEIPT:
		show_receipt(ch, ev);
		break;
	case SEALPOST_EV_TYPING:
		show_typing(ch, ev);
		break;
	default:
		show_status_event(ch, ev);
		break;
	}
}

/* ---- input ---- */

static void
on_line(char *line)
{
	chat *ch = chat_active;
	if (!line) {
		ch->quit = true; /* end of input (^D on an empty line) */
		return;
	}
	/* The line is printed again, with the time and its tick: drop the echo. */
	if (isatty(STDOUT_FILENO)) {
		fputs("\033[A\033[2K\r", stdout);
		fflush(stdout);
	}
	free(ch->line);
	ch->line = line;
}

static void
send_typing(chat *ch, bool on, uint64_t now)
{
	/* Best effort: a lost TYPING only leaves the indicator to its timeout. */
	if (sealpost_typing(ch->sp, ch->name, on) == SEALPOST_OK) {
		ch->typing_on = on;
		ch->typing_sent_ms = now;
	}
}

/* Our typing, rate limited: "typing" when the line changes (again every few seconds
 * while it keeps changing), "stopped" when it is emptied or left alone. */
static void
typing_tick(chat *ch, uint64_t now)
{
	if (!ch->peer || !ch->sp->conn || now - ch->typing_sent_ms < CHAT_TYPING_GAP_MS)
		return;
	bool want = rl_end > 0 && now - ch->last_key_ms < CHAT_TYPING_IDLE_MS;
	if (want && (!ch->typing_on || now - ch->typing_sent_ms >= CHAT_TYPING_EVERY_MS) &&
	    ch->last_key_ms > ch->typing_sent_ms)
		send_typing(ch, true, now);
	else if (!want && ch->typing_on)
		send_typing(ch, false, now);
}

static void
note_edit(chat *ch, uint64_t now)
{
	const char *cur = rl_line_buffer ? rl_line_buffer : "";
	if (ch->last_buf && strcmp(ch->last_buf, cur) == 0)
		return;
	char *copy = strdup(cur);
	if (!copy)
		return; /* only the typing indicator depends on it */
	free(ch->last_buf);
	ch->last_buf = copy;
	ch->last_key_ms = now;
}

static void
send_line(chat *ch, const char *text)
{
	sealpost_sent s;
	char line[CL_FMT_LINE_MAX], body[CL_FMT_BODY_MAX], clock[8];
	memset(&s, 0, sizeof(s));
	int rc = sealpost_send_text(ch->sp, ch->name, text, &s);
	ch->typing_on = false; /* the message ends the typing on their side */
	cl_fmt_sanitize(text, body, sizeof(body));
	if (rc && !s.failed) {
		snprintf(line, sizeof(line), "not sent: %s", sealpost_errmsg(ch->sp));
		chat_status(ch, line);
		return;
	}
	cl_fmt_clock(s.sent ? s.server_ts : (uint64_t)time(NULL) * 1000, clock);
	int rank = s.failed ? -1 : s.sent ? 1 : 0;
	snprintf(line, sizeof(line), "[%s] me: %s  %s", clock, body, tick_text(rank));
	chat_print(ch, line);
	if (s.failed) {
		char reason[300];
		cl_fmt_sanitize(s.reason, reason, sizeof(reason));
		snprintf(line, sizeof(line), "not sent (%s): %s", sp_errname(s.error), reason);
		chat_status(ch, line);
		return;
	}
	tick_add(ch, s.msg_id, rank, text);
}

static void
handle_line(chat *ch, const char *text)
{
	if (!*text)
		return;
	if (text[0] == '/') {
		if (strcmp(text, "/quit") == 0) {
			ch->quit = true;
			return;
		}
		if (text[1] != '/') {
			chat_status(ch, "unknown command: /quit leaves (start a message with // for a leading /)");
			return;
		}
		text++;
	}
	add_history(text);
	send_line(ch, text);
}

/* ---- network ---- */

/* Handles what the connection brought, without blocking: at most CHAT_BATCH DELIVERs
 * (*more set when there may be others), and held gaps whose time is over (*next_hold
 * the next deadline, 0 none). Only a store failure is an error: a lost connection is
 * noticed by the caller (sp->conn NULL). */
static int
pump(chat *ch, bool *more, uint64_t *next_hold)
{
	sealpost *sp = ch->sp;
	int rc;
	*more = false;
	if ((rc = cl_recv_expire(sp, on_event, ch, next_hold)))
		return rc;
	for (int n = 0; sp->conn; n++) {
		if (n == CHAT_BATCH) {
			*more = true;
			return SP_OK;
		}
		cl_deliver *d = NULL;
		rc = cl_next_deliver(sp, 0, &d);
		if (rc == SP_EAGAIN)
			continue; /* QUEUE_EMPTY */
		if (rc)
			return SP_OK; /* nothing more for now, or the connection is gone */
		rc = cl_recv_process(sp, d, on_event, ch);
		cl_deliver_free(d);
		if (rc && sp->errclass != SEALPOST_ERR_NET)
			return rc;
	}
	return SP_OK;
}

/* A connection is up (ours, or one a send made). */
static void
online_now(chat *ch)
{
	sealpost *sp = ch->sp;
	if (ch->retries || sp->connects > 1) {
		char line[320];
		snprintf(line, sizeof(line), "connected to %s", sp->server);
		chat_status(ch, line);
	}
	ch->retries = 0;
	ch->was_online = true;
	ch->need_read = true;
	/* What was typed offline goes now (a failure shows at the next connection). */
	cl_outbox_flush(sp, NULL, NULL);
	ticks_refresh(ch);
}

/* Connects when the backoff allows; a refusal other than the network's ends the chat. */
static int
reconnect(chat *ch, uint64_t now)
{
	sealpost *sp = ch->sp;
	uint64_t base = sp->cfg.backoff_base_ms > 0 ? (uint64_t)sp->cfg.backoff_base_ms : 200;
	uint64_t cap = sp->cfg.backoff_cap_ms > 0 ? (uint64_t)sp->cfg.backoff_cap_ms : 10000;
	if (ch->was_online) {
		/* Lost: the library's delay for a lost connection, waited here rather than in
		 * cl_connect, so that the input line stays live. */
		ch->was_online = false;
		char line[400];
		snprintf(line, sizeof(line), "connection lost (%s); reconnecting", sp->drop_reason);
		chat_status(ch, line);
		ch->retry_at = now + (sp->dropped ? cl_backoff_ms(sp->drop_streak - 1, base, cap) : 0);
		sp->dropped = false;
	}
	if (now < ch->retry_at)
		return SP_OK;
	int rc = cl_online(sp, 1);
	if (rc) {
		if (sp->errclass != SEALPOST_ERR_NET)
			return rc;
		if (ch->retries == 0)
			chat_status(ch, "offline: messages are queued and go out once connected");
		ch->retry_at = sp_time_ms() + cl_backoff_ms(ch->retries < 32 ? ch->retries : 32, base, cap);
		ch->retries++;
		return SP_OK;
	}
	online_now(ch);
	return SP_OK;
}

/* ---- the loop ---- */

static int
chat_open(chat *ch)
{
	sealpost *sp = ch->sp;
	char key[48];
	uint64_t id;
	int rc;
	if ((rc = cl_need_account(sp)))
		return rc;
	if (ch->name[0] == '@') {
		if ((rc = cl_resolve_group(sp, ch->name, &id)))
			return rc;
		cl_conv_key(key, sizeof(key), true, id);
	} else {
		if ((rc = cl_resolve_user(sp, ch->name, &id)))
			return rc;
		cl_conv_key(key, sizeof(key), false, id);
		ch->peer = id;
	}
	cl_conv_display(sp, key, ch->display, sizeof(ch->display));
	/* Stored but not yet reported (collected by `status`): other conversations' as
	 * notices, this one's in the history below. */
	ch->opening = true;
	rc = cl_report_pending(sp, on_event, ch);
	ch->opening = false;
	if (rc)
		return rc;
	if ((rc = sealpost_history(sp, ch->name, CHAT_HISTORY, on_event, ch)))
		return rc;
	ch->need_read = true; /* what the history showed */
	return reconnect(ch, sp_time_ms());
}

/* How long the loop may sleep: the next timer, at most CHAT_WAKE_MS. */
static int
chat_wait_ms(const chat *ch, uint64_t now, uint64_t next_hold)
{
	uint64_t until = now + CHAT_WAKE_MS;
	if (next_hold && next_hold < until)
		until = next_hold;
	if (!ch->sp->conn && ch->retry_at < until)
		until = ch->retry_at;
	if (ch->they_type && ch->they_type_until < until)
		until = ch->they_type_until;
	return until > now ? (int)(until - now) : 0;
}

static int
chat_loop(chat *ch)
{
	sealpost *sp = ch->sp;
	int rc;
	while (!ch->quit) {
		uint64_t now = sp_time_ms(), next_hold = 0;
		bool more = false;
		if (!sp->conn && (rc = reconnect(ch, now)))
			return rc;
		if (ch->line) {
			char *line = ch->line;
			ch->line = NULL;
			handle_line(ch, line);
			free(line);
			continue;
		}
		if (sp->conn && !ch->was_online)
			online_now(ch); /* a send connected */
		if (sp->conn && ch->need_read) {
			ch->need_read = false; /* a lost connection asks again (online_now) */
			sealpost_read(sp, ch->name);
		}
		typing_tick(ch, now);
		ticks_expiry(ch, now);
		if (ch->they_type && now >= ch->they_type_until) {
			ch->they_type = false;
			chat_prompt(ch);
		}
		/* Last before sleeping: the calls above may have read frames into the buffer. */
		if ((rc = pump(ch, &more, &next_hold)))
			return rc;
		if (ch->quit)
			break;
		if (!sp->conn && ch->was_online)
			continue; /* lost while pumping: report it and schedule the retry */
		struct pollfd p[2] = {{STDIN_FILENO, POLLIN, 0}, {-1, POLLIN, 0}};
		if (sp->conn)
			p[1].fd = spc_conn_fd(sp->conn);
		int wait = more || (ch->need_read && sp->conn) ? 0 : chat_wait_ms(ch, sp_time_ms(), next_hold);
		if (poll(p, 2, wait) < 0)
			continue; /* EINTR (a resize): readline redraws */
		if (p[0].revents & POLLIN) {
			rl_callback_read_char();
			if (!ch->quit)
				note_edit(ch, sp_time_ms());
		} else if (p[0].revents & (POLLHUP | POLLERR | POLLNVAL)) {
			ch->quit = true; /* the terminal went away */
		}
	}
	return SP_OK;
}

int
sealpost_chat(sealpost *sp, const char *conv)
{
	if (chat_active)
		return cl_fail(sp, SP_EEXIST, SEALPOST_ERR_USAGE, "a chat is already open in this process");
	chat *ch = calloc(1, sizeof(*ch));
	if (!ch)
		return cl_fail(sp, SP_ENOMEM, SEALPOST_ERR_OTHER, "out of memory");
	ch->sp = sp;
	ch->name = conv;
	chat_active = ch;
	/* The library's own calls (a send, a READ) try the network once: the loop retries
	 * with backoff, so that the input line never waits through several attempts. */
	int attempts = sp->cfg.connect_attempts;
	sp->cfg.connect_attempts = 1;
	int rc = chat_open(ch);
	if (rc == SP_OK) {
		rl_readline_name = "sealpost";
		rl_instream = stdin;
		rl_outstream = stdout;
		rl_persistent_signal_handlers = 1; /* ^C and kill restore the terminal */
		rl_bind_key('\t', rl_insert);      /* no file name completion in a message */
		char prompt[200];
		snprintf(prompt, sizeof(prompt), "%s> ", ch->display);
		rl_callback_handler_install(prompt, on_line);
		ch->installed = true;
		rc = chat_loop(ch);
		if (ch->typing_on && sp->conn)
			sealpost_typing(sp, conv, 0);
		rl_callback_handler_remove();
		ch->installed = false;
		fputc('\n', stdout);
		fflush(stdout);
	}
	sp->cfg.connect_attempts = attempts;
	free(ch->line);
	free(ch->last_buf);
	free(ch);
	chat_active = NULL;
	return rc;
}
