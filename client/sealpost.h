/*
 * libsealpost-client: the Sealpost client library (the one public header).
 *
 * A `sealpost` handle is one device's state in a home directory (an SQLite store in WAL
 * mode: identity, prekeys, sessions, sender keys, contacts, messages, per-conversation
 * sequence numbers, dedup table, outbox) plus at most one blocking TLS connection to a
 * connsrv. Every call is synchronous; a handle is used by one thread at a time.
 *
 * Conversations are named like on the command line: "+15550001" (a contact's phone),
 * "#1234" (a user id, for users without a known phone), "@NAME" or "@1234" (a group by
 * local name or id). Message ids are 32 hex characters.
 *
 * Errors: functions return SEALPOST_OK (0) or a negative SP_E* code (common/sp_error.h);
 * sealpost_errmsg() then holds one line of detail and sealpost_errclass() says whether
 * it was a usage, network, server-refusal or crypto/identity problem.
 */
#ifndef SEALPOST_H
#define SEALPOST_H

#include <stddef.h>
#include <stdint.h>

#define SEALPOST_OK 0

/* Error classes (they are the CLI's exit codes). */
enum {
	SEALPOST_ERR_OTHER = 1,
	SEALPOST_ERR_USAGE = 2,  /* bad argument, unknown contact or group, not registered */
	SEALPOST_ERR_NET = 3,    /* cannot reach the cluster, connection lost */
	SEALPOST_ERR_SERVER = 4, /* the server answered ERROR */
	SEALPOST_ERR_CRYPTO = 5, /* undecryptable, bad signature, identity problem, damaged store */
};

typedef struct sealpost sealpost;

typedef struct sealpost_config {
	const char *home;   /* state directory (created if missing); required */
	const char *server; /* connsrv "host:port", or NULL to ask the router */
	const char *router; /* router HTTP "host:port[,host:port...]" (GET /where), tried in turn */
	const char *ca;     /* CA file that signs the servers' certificates */
	/* Connection attempts per operation before giving up (the send path then queues);
	 * 0 means the default (3). Between attempts: exponential backoff with full jitter. */
	int connect_attempts;
	int backoff_base_ms; /* 0: 200 */
	int backoff_cap_ms;  /* 0: 10000 */
	int gap_hold_ms;     /* how long a gap in a conversation is held back; 0: 2000 */
	/* Testing knob: cut the connection after this many uploaded media chunks (once), to
	 * exercise resumable upload. 0: off. */
	int test_cut_upload_after;
	/* Keepalive: a PING goes out after ping_ms without sending anything (less up to a
	 * quarter of it, at random, so that clients do not ping in step); 0: 60000; <0:
	 * never. connsrv closes a connection that sent nothing for its --idle-timeout (180 s
	 * by default), so this must stay well under that. */
	int ping_ms;
	/* A connection that brings no frame back within pong_timeout_ms of a PING is taken
	 * for dead (a stopped server, a lost path) and replaced; 0: 10000. */
	int pong_timeout_ms;
} sealpost_config;

/* Opens (creating if needed) the store in cfg->home. Strings are copied. On success *out
 * is the caller's (sealpost_close). On failure *out is NULL and, if err is not NULL, a
 * one-line reason is written there. */
int sealpost_open(const sealpost_config *cfg, sealpost **out, char *err, size_t errlen);

/* Closes the connection and the store; NULL is fine. */
void sealpost_close(sealpost *sp);

/* Detail of the last failure (never NULL) and its class (SEALPOST_ERR_*). */
const char *sealpost_errmsg(const sealpost *sp);
int sealpost_errclass(const sealpost *sp);

/* ---- account ---- */

/* Asks for a one-time code for phone (E.164); *ttl_s (if not NULL) is its lifetime. */
int sealpost_register(sealpost *sp, const char *phone, uint64_t *ttl_s);

/* Creates this device's identity, verifies the code, uploads a signed prekey and 100
 * one-time prekeys. The home must not hold an account yet. */
int sealpost_verify(sealpost *sp, const char *phone, const char *code);
/* The same with the registration-lock PIN (NULL: none), needed to re-register a number
 * whose account set one. */
int sealpost_verify_pin(sealpost *sp, const char *phone, const char *code, const char *pin);

/* (Primary device) sets the account's registration lock PIN (4-64 printable ASCII), or
 * clears it with NULL. */
int sealpost_set_pin(sealpost *sp, const char *pin);

/* Registers this device's push token for wake-ups (docs/PUSH.md): platform "fcm" or
 * "apns" and the token the platform gave the app (printable ASCII without space, quote,
 * backslash or slash); both NULL clears it. SP_EINVAL for a bad platform or token. */
int sealpost_push_register(sealpost *sp, const char *platform, const char *token);

/* This device: user id, device id and phone (buffer of at least 33 bytes). */
int sealpost_whoami(sealpost *sp, uint64_t *user, uint64_t *device, char *phone, size_t cap);

/* Records phone -> user id (keysrv has no lookup by phone yet). */
int sealpost_contact_add(sealpost *sp, const char *phone, uint64_t user);

/* ---- events ---- */

enum {
	SEALPOST_EV_MESSAGE = 1,       /* text or media (see media_* fields) */
	SEALPOST_EV_RECEIPT = 2,       /* delivered / read receipts for messages we sent */
	SEALPOST_EV_UNDECRYPTABLE = 3, /* refused: tampered, unknown sender key, ... (error) */
	SEALPOST_EV_IDENTITY = 4,      /* a contact's device has a new identity key
					* ("security code changed"); the message follows */
	SEALPOST_EV_CONNECTED = 5,     /* listen only: (re)connected (server, reconnects,
					* drop_reason) */
	SEALPOST_EV_TYPING = 6,        /* from / from_user is typing (typing 1) or stopped (0) */
	SEALPOST_EV_PRESENCE = 7,      /* from / from_user's presence changed (online,
					* last_seen_ms, recently: what its settings show us) */
};
enum { SEALPOST_RECEIPT_DELIVERED = 10, SEALPOST_RECEIPT_READ = 11 };

typedef struct sealpost_event {
	int type;
	const char *conv;       /* conversation name (see above) */
	const char *from;       /* sender's phone, or "#user" when unknown */
	uint64_t from_user, from_device;
	uint64_t group;         /* 0 for 1:1 */
	const char *msg_id;     /* hex; for receipts the first id */
	uint64_t conv_seq, server_ts;
	int outgoing;           /* history: 1 for messages this account sent */
	const char *status;     /* history of outgoing messages: as sealpost_status's */
	const char *text;       /* NULL for media */
	const char *media_path; /* saved file, NULL if not media or not saved */
	const char *media_name, *media_mime;
	uint64_t media_size;
	int media_error;        /* SP_EDIGEST etc. when the download failed its checks */
	int receipt_kind;       /* SEALPOST_RECEIPT_* */
	const char *const *msg_ids; /* receipts: every id */
	size_t n_msg_ids;
	int error;              /* SEALPOST_EV_UNDECRYPTABLE: the SP_E* code */
	const char *server;     /* SEALPOST_EV_CONNECTED: the connsrv's "host:port" */
	uint64_t reconnects;    /* SEALPOST_EV_CONNECTED: connections lost and replaced so far */
	const char *drop_reason; /* SEALPOST_EV_CONNECTED: why the previous one ended (NULL first) */
	int typing;             /* SEALPOST_EV_TYPING: 1 typing, 0 stopped */
	int online;             /* SEALPOST_EV_PRESENCE: 1 online, 0 offline, -1 not shown */
	uint64_t last_seen_ms;  /* SEALPOST_EV_PRESENCE: ms since the epoch; 0 not shown */
	int recently;           /* SEALPOST_EV_PRESENCE: "last seen recently" (coarse) */
	int held;               /* SEALPOST_EV_UNDECRYPTABLE: 1 for a group message kept while its
				 * sender is asked for the key; it comes later as a message event
				 * with the same msg_id */
} sealpost_event;

/* Strings in an event are valid during the callback only. */
typedef void (*sealpost_event_cb)(const sealpost_event *ev, void *arg);

/* ---- messaging ---- */

/* Tells `to` (PHONE or #USER) that this device is typing (typing != 0) or stopped: shown on
 * their devices that are online now, never stored; the server drops more than one a second.
 * Connects if needed. SEALPOST_OK once sent. */
int sealpost_typing(sealpost *sp, const char *to, int typing);

typedef struct sealpost_sent {
	char msg_id[33];
	int sent;           /* 1: SENT received; 0: queued in the outbox */
	uint64_t server_ts; /* when sent */
	int failed;         /* 1: failed for good (the call returns `error`) */
	int error;          /* failed: the SP_E* code */
	char reason[256];   /* failed: why */
	size_t n_refused;   /* sent: recipient devices the server refused (queue full), marked
			     * failed in sealpost_status_get; the others got it */
} sealpost_sent;

/* Writes the message to the outbox, then sends it (and anything queued before it).
 * Offline, it stays queued (SEALPOST_OK with out->sent = 0); the next call that
 * connects sends it with the same msg_id. A message that can never be sent (too large
 * for one frame, unknown recipient, not a member, ...) is marked failed, with its
 * reason, and the messages queued behind it go on: then this returns the error
 * (class SEALPOST_ERR_SERVER) with out->failed = 1 and out->msg_id filled in. */
int sealpost_send_text(sealpost *sp, const char *to, const char *text, sealpost_sent *out);

/* Progress of an upload or download: bytes done of total. */
typedef void (*sealpost_progress_cb)(uint64_t done, uint64_t total, void *arg);

/* Encrypts the file (streaming, constant memory) into the home, uploads it in resumable
 * chunks and sends the descriptor {blob_id, key, digest, size, mime, name}. */
int sealpost_send_file(sealpost *sp, const char *to, const char *path, sealpost_progress_cb cb,
		       void *arg, sealpost_sent *out);

/* Connects, sends the outbox, drains the inbox (decrypt, store, then ACK) and reports
 * events in conversation order. Returns after QUEUE_EMPTY, or when `listen` is 0 and
 * wait_ms > 0 after wait_ms more; with `listen` set it runs until the callback's process
 * ends, reconnecting with backoff. Events already stored but not yet reported (e.g.
 * collected by sealpost_status) are reported first. */
int sealpost_recv(sealpost *sp, int wait_ms, int listen, sealpost_event_cb cb, void *arg);

/* Marks every unread incoming message of conversation conv read: one READ_UPTO per sender
 * user, naming each of its devices' highest per-conversation seq shown here (docs/CLIENT.md
 * "Receipts"). */
int sealpost_read(sealpost *sp, const char *conv);

typedef struct sealpost_device_status {
	uint64_t user, device;
	const char *status; /* sent|delivered|read|expired (sent, and past the server's exp_after)|failed */
	const char *reason; /* failed: "queue full" (refused by the server); NULL otherwise */
} sealpost_device_status;

typedef struct sealpost_status {
	char status[16]; /* queued|sent|delivered|read|failed|expired (no recipient device got it
			  * within the server's exp_after) */
	uint64_t server_ts;
	int error;        /* failed: the SP_E* code */
	char reason[256]; /* failed: why */
	sealpost_device_status *devices; /* recipient devices (including our own others) */
	size_t n_devices;
} sealpost_status;

/* Status of one of our messages; unless offline, connects first to collect receipts.
 * On success the caller frees *out with sealpost_status_free. */
int sealpost_status_get(sealpost *sp, const char *msg_id, int offline, sealpost_status **out);
void sealpost_status_free(sealpost_status *st);

/* Local history of a conversation, oldest first (the last `limit`, 0 = 50). */
int sealpost_history(sealpost *sp, const char *conv, int limit, sealpost_event_cb cb, void *arg);

/* ---- interactive conversation (cl_chat.c) ---- */

/* Holds a conversation with conv (PHONE, #USER or @GROUP) on this process's terminal
 * (stdin / stdout, GNU readline): the last messages, then incoming ones printed above
 * the input line, ticks of our messages as receipts come, the peer's typing in the
 * prompt and ours sent (1:1 only), the conversation marked read as it is shown. Lines
 * typed are sent; messages for other conversations show as one-line notices (and count
 * as reported). Uses this handle's connection, reconnecting with backoff; offline,
 * messages queue. Returns SEALPOST_OK after /quit or end of input; an error when the
 * store fails or the server refuses this device. One chat per process at a time. */
int sealpost_chat(sealpost *sp, const char *conv);

/* ---- groups ---- */

typedef struct sealpost_group {
	uint64_t id, epoch;
	const char *name;
	size_t n_members;
	const uint64_t *members; /* user ids */
} sealpost_group;
typedef void (*sealpost_group_cb)(const sealpost_group *g, void *arg);

/* Creates a group with us as admin and the given phones as members; *id the new group. */
int sealpost_group_create(sealpost *sp, const char *name, const char *const *phones, size_t n,
			  uint64_t *id);
int sealpost_group_add(sealpost *sp, const char *group, const char *phone);
/* Removes a member; our Sender Key is rotated before the next group message. */
int sealpost_group_remove(sealpost *sp, const char *group, const char *phone);
int sealpost_group_leave(sealpost *sp, const char *group);
/* Groups known to this device (created here or seen in a message). */
int sealpost_group_list(sealpost *sp, sealpost_group_cb cb, void *arg);

/* ---- presence, privacy and the contacts the server knows (cl_presence.c) ---- */

enum {
	SEALPOST_PRIV_KEEP = -1, /* sealpost_privacy_set: leave as it is */
	SEALPOST_PRIV_EVERYONE = 0,
	SEALPOST_PRIV_CONTACTS = 1,
	SEALPOST_PRIV_NOBODY = 2, /* not for group_add */
};

typedef struct sealpost_privacy {
	int last_seen, online, group_add; /* SEALPOST_PRIV_* */
	uint64_t contacts;                /* contacts the server holds for this account */
} sealpost_privacy;

/* Sets the account's privacy settings (SEALPOST_PRIV_KEEP: unchanged; all KEEP only reads
 * them) and returns them in *out. Who may see our last seen and online state (reciprocal:
 * hiding ours hides everyone's from us), and who may add us to groups. Connects. */
int sealpost_privacy_set(sealpost *sp, int last_seen, int online, int group_add,
			 sealpost_privacy *out);

/* Adds (add != 0) or removes `user` in the account's server-side contact set, which the
 * "contacts" settings refer to (at most 5000). Connects; *out as above (may be NULL). */
int sealpost_contact_share(sealpost *sp, uint64_t user, int add, sealpost_privacy *out);

/* Forgets a contact (PHONE or #USER) here and in the server-side set. */
int sealpost_contact_remove(sealpost *sp, const char *name);

typedef struct sealpost_presence {
	uint64_t user;
	int online;            /* 1, 0, or -1 when its settings do not show it to us */
	uint64_t last_seen_ms; /* 0 when not shown or unknown */
	int recently;          /* coarse answer: seen within the last 3 days */
} sealpost_presence;

/* Asks once for the presence of `who` (PHONE or #USER). Connects. */
int sealpost_presence_get(sealpost *sp, const char *who, sealpost_presence *out);

/* Follows the presence of these users (PHONE or #USER; at most 64; n 0: none) on this
 * connection and every later one: changes come to sealpost_recv's callback as
 * SEALPOST_EV_PRESENCE. Sent at once when connected, else at the next connect. */
int sealpost_presence_watch(sealpost *sp, const char *const *who, size_t n);

/* ---- devices ---- */

/* On a new device (empty home): asks for a link code, reports it through code_cb, then
 * waits (up to wait_s seconds) until the primary confirms it; uploads prekeys. */
typedef void (*sealpost_code_cb)(const char *code, uint64_t ttl_s, void *arg);
int sealpost_link(sealpost *sp, int wait_s, sealpost_code_cb code_cb, void *arg);

/* On the primary: shows nothing, checks the code exists and signs the new device's keys. */
int sealpost_link_confirm(sealpost *sp, const char *code, uint64_t *device);

typedef struct sealpost_device {
	uint64_t device;
	int primary, self;
} sealpost_device;
typedef void (*sealpost_device_cb)(const sealpost_device *d, void *arg);
int sealpost_devices(sealpost *sp, sealpost_device_cb cb, void *arg);
int sealpost_device_remove(sealpost *sp, uint64_t device);

#endif
