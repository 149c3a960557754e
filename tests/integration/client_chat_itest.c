/*
 * `sealpost chat` (docs/CLIENT.md, "chat") driven through pseudo-terminals on a private
 * dev cluster: alice and bob each hold a chat open (TERM=xterm, readline in control)
 *   - alice's chat opens with the history (a message sent before) and its tick, which
 *     turns to [delivered] when the receipt waiting in her inbox comes in;
 *   - bob's chat opens, shows it and marks it read: alice's tick turns to [read];
 *   - alice types: bob's prompt shows "... is typing"; Enter sends: alice's line shows
 *     [sent], bob's chat shows the message, alice's tick goes to [read];
 *   - bob's reply appears in alice's chat;
 *   - /quit (alice) and end of input (bob, ^D) exit 0;
 *   - reopened, alice's chat shows the conversation from the store with its ticks;
 *   - control characters from the network never reach the terminal.
 */
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <sys/ioctl.h>

#include "client_util.h"
#include "sp_time.h"

typedef struct pty_chat {
	const char *who;
	pid_t pid;
	int fd;       /* pty master */
	char *out;    /* everything the chat wrote (NUL-terminated) */
	size_t len, cap;
	size_t mark;  /* searches start here */
} pty_chat;

/* Chats not yet reaped: killed at exit, so a failed check leaves nothing running. */
static pid_t chat_pids[4];
static int chat_npids;

static void
chats_kill(void)
{
	for (int i = 0; i < chat_npids; i++) {
		kill(chat_pids[i], SIGKILL);
		waitpid(chat_pids[i], NULL, 0);
	}
	chat_npids = 0;
}

static void
chat_forget(pid_t pid)
{
	for (int i = 0; i < chat_npids; i++)
		if (chat_pids[i] == pid)
			chat_pids[i] = chat_pids[--chat_npids];
}

static void
chat_open(pty_chat *c, const char *who, const char *peer)
{
	char cmd[2048];
	const char *bin = getenv("SP_BIN") ? getenv("SP_BIN") : "bin";
	snprintf(cmd, sizeof(cmd), ". %s/env; TERM=xterm SEALPOST_GAP_HOLD_MS=300 exec %s/sealpost --home %s/home-%s chat %s",
		 ct_cluster.dir, bin, ct_cluster.dir, who, peer);
	struct winsize ws = {.ws_row = 40, .ws_col = 160};
	memset(c, 0, sizeof(*c));
	c->who = who;
	c->cap = 1 << 20;
	c->out = calloc(1, c->cap);
	CHECK(c->out != NULL);
	CHECK(chat_npids < 4);
	if (chat_npids == 0)
		atexit(chats_kill);
	c->pid = forkpty(&c->fd, NULL, NULL, &ws);
	CHECK(c->pid >= 0);
	if (c->pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	chat_pids[chat_npids++] = c->pid;
	CHECK(fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) == 0);
}

/* Reads what the chat wrote so far. */
static void
chat_read(pty_chat *c)
{
	for (;;) {
		if (c->len + 1 >= c->cap)
			return;
		ssize_t n = read(c->fd, c->out + c->len, c->cap - 1 - c->len);
		if (n <= 0)
			return; /* EAGAIN, or EIO once the chat has exited */
		c->len += (size_t)n;
		c->out[c->len] = '\0';
	}
}

/* Waits up to ms for `needle` in the output after the mark; moves the mark past it. */
static bool
chat_wait(pty_chat *c, const char *needle, int ms)
{
	for (int i = 0; i <= ms / 50; i++) {
		chat_read(c);
		char *p = strstr(c->out + c->mark, needle);
		if (p) {
			c->mark = (size_t)(p - c->out) + strlen(needle);
			return true;
		}
		usleep(50000);
	}
	fprintf(stderr, "%s's chat: no \"%s\" in:\n%s\n", c->who, needle, c->out + c->mark);
	return false;
}

static void
chat_type(pty_chat *c, const char *keys)
{
	size_t n = strlen(keys);
	CHECK(write(c->fd, keys, n) == (ssize_t)n);
}

/* Waits up to ms for the chat to exit; its exit code (-1: still running, then killed). */
static int
chat_exit(pty_chat *c, int ms)
{
	int st = 0;
	for (int i = 0; i <= ms / 50; i++) {
		chat_read(c); /* keep the pty drained so that the chat never blocks writing */
		if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
			chat_forget(c->pid);
			close(c->fd);
			printf("--- %s's chat output ---\n%s\n---\n", c->who, c->out);
			free(c->out);
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		}
		usleep(50000);
	}
	kill(c->pid, SIGKILL);
	waitpid(c->pid, NULL, 0);
	chat_forget(c->pid);
	close(c->fd);
	printf("--- %s's chat output (killed) ---\n%s\n---\n", c->who, c->out);
	free(c->out);
	return -1;
}

int
main(void)
{
	uint64_t t0 = sp_time_ms();
	ct_start();
	char out[16384], alice[32], bob[32];
	ct_register("alice", "+15550801", alice, sizeof(alice));
	ct_register("bob", "+15550802", bob, sizeof(bob));
	CHECK(ct_run("alice", out, sizeof(out), "contact add +15550802 %s", bob) == 0);
	CHECK(ct_run("bob", out, sizeof(out), "contact add +15550801 %s", alice) == 0);
	/* Before any chat: one message each way, for the history. */
	CHECK(ct_run("alice", out, sizeof(out), "send +15550802 'before the chat'") == 0);
	CHECK(ct_run("bob", out, sizeof(out), "recv") == 0);
	CHECK(strstr(out, "before the chat") != NULL);

	/* Alice opens: the history with her message as her store has it (sent), then the
	 * delivered receipt waiting in her inbox moves its tick (bob has not read it). */
	pty_chat a, b;
	chat_open(&a, "alice", "+15550802");
	CHECK(chat_wait(&a, "me: before the chat  [sent]", 15000));
	CHECK(chat_wait(&a, "+15550802> ", 15000));
	CHECK(chat_wait(&a, "[delivered] before the chat", 15000));

	/* Bob opens: the history shows it and marks it read; alice's tick follows. */
	chat_open(&b, "bob", "+15550801");
	CHECK(chat_wait(&b, "+15550801: before the chat", 15000));
	CHECK(chat_wait(&b, "+15550801> ", 15000));
	CHECK(chat_wait(&a, "[read] before the chat", 15000));

	/* Alice types: bob sees it in his prompt. */
	chat_type(&a, "hello bob");
	CHECK(chat_wait(&b, "+15550801 is typing...> ", 15000));
	/* Enter: sent on alice's side, shown and read on bob's, the tick moves on. */
	chat_type(&a, "\r");
	CHECK(chat_wait(&a, "me: hello bob  [sent]", 15000));
	CHECK(chat_wait(&b, "+15550801: hello bob", 15000));
	CHECK(chat_wait(&a, "[read] hello bob", 15000));

	/* Bob's reply appears in alice's chat, above her input line. */
	chat_type(&b, "hi alice\r");
	CHECK(chat_wait(&b, "me: hi alice  [sent]", 15000));
	CHECK(chat_wait(&a, "+15550802: hi alice", 15000));
	CHECK(chat_wait(&b, "[read] hi alice", 15000));

	/* A message with a terminal escape in it, from the CLI: shown defused. */
	chat_type(&a, "/quit\r");
	CHECK(chat_exit(&a, 15000) == 0);
	CHECK(ct_run("alice", out, sizeof(out), "send +15550802 \"$(printf 'esc\\033[2Jape')\"") == 0);
	CHECK(chat_wait(&b, "+15550801: esc?[2Jape", 15000));
	CHECK(strstr(b.out, "\033[2J") == NULL);

	/* End of input closes bob's chat. */
	chat_type(&b, "\004");
	CHECK(chat_exit(&b, 15000) == 0);

	/* Reopened: the conversation from the store, ticks as they ended. */
	chat_open(&a, "alice", "+15550802");
	CHECK(chat_wait(&a, "me: before the chat  [read]", 15000));
	CHECK(chat_wait(&a, "me: hello bob  [read]", 15000));
	CHECK(chat_wait(&a, "+15550802: hi alice", 15000));
	CHECK(chat_wait(&a, "+15550802> ", 15000));
	chat_type(&a, "/quit\r");
	CHECK(chat_exit(&a, 15000) == 0);

	printf("client_chat_itest: ok (%.1f s)\n", (double)(sp_time_ms() - t0) / 1000.0);
	return 0;
}
