/*
 * Names shared by the client library's modules (cl_*.c); not for other tiers. The
 * public API is client/sealpost.h; the Signal core is client/signal/.
 *
 * Files of client/:
 *   cl_handle.c       sealpost_open/close; the last error (cl_fail, error classes)
 *   cl_store.c        SQLite store: schema, transactions, statements, meta, sequence
 *                     counters of outgoing conversations
 *   cl_identity.c     this home's account in the store: ids, auth key, Signal state
 *   cl_names.c        contacts, "+phone" / "#user" / "@group" resolution, conversation
 *                     keys and display names, hex
 *   cl_net.c          connect, login, request/reply by id, DELIVER queue, ACK, backoff
 *   cl_account.c      register/verify, prekey upload and refill, link, devices
 *   cl_send.c         outbox, device lists, sessions from bundles, 1:1 and group sends
 *   cl_recv.c         decrypt, store, dedup, ordering, receipts, read, status, history
 *   cl_group.c        groups through keysrv, local copy, Sender Key rotation
 *   cl_media.c        streaming media encryption, resumable upload/download
 *   cl_env.c          the E2E plaintext container (msgpack)
 *   spc_conn.c        blocking TLS connection to connsrv: frames, login, router bootstrap
 *   cl_chat.c         `sealpost chat`: the interactive conversation on a terminal
 *                     (readline input line, its own poll loop over the library's
 *                     receive step)
 *   cl_format.c       the CLI's output: JSON lines or text (cl_format.h)
 *   sealpost_main.c   the command-line client (bin/sealpost)
 *   spsignal_main.c   the Signal core driven from the command line for the interop
 *                     tests (bin/spsignal)
 */
#ifndef CL_INTERNAL_H
#define CL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>
#include <sqlite3.h>

#include "client/sealpost.h"
#include "client/signal/sig_state.h"
#include "client/spc_conn.h"
#include "sp_frame.h"
#include "sp_proto.h"

#define CL_PREKEYS_BATCH 100
#define CL_CHUNK (512 * 1024)

/* Envelope types (DELIVER/SEND_ITEM etype). */
enum {
	CL_ET_WHISPER = 1,  /* Signal SignalMessage */
	CL_ET_PREKEY = 3,   /* Signal PreKeySignalMessage */
	CL_ET_SENDERKEY = 7, /* group body: SenderKeyMessage */
	CL_ET_SKDM = 8,     /* pairwise item of SEND_SK (SEND_GROUP before): type byte || Signal message */
	CL_ET_RECEIPT_DELIVERED = SP_ETYPE_RECEIPT_DELIVERED, /* made by connsrv */
	CL_ET_RECEIPT_READ = SP_ETYPE_RECEIPT_READ,
};

/* A DELIVER received while waiting for a reply: owned copies of its fields. */
typedef struct cl_deliver {
	struct cl_deliver *next;
	bool typing; /* a TYPING_EV (etype: its kind), not an inbox entry */
	/* A PRESENCE_EV (cl_presence.c), not an inbox entry: from_user is the user,
	 * server_ts its last seen (0: not shown); online 1/0/-1 (not shown); recent. */
	bool presence;
	int pres_online, pres_recent;
	uint64_t seq, from_user, from_device, server_ts, etype, group;
	uint8_t msg_id[16];
	uint8_t *env, *ct;
	size_t env_len, ct_len;
} cl_deliver;

struct sealpost {
	sealpost_config cfg; /* strings owned */
	sqlite3 *db;
	sig_store *sig; /* NULL until this home holds an account */
	uint64_t user, device, last_seq;
	char phone[33];
	bool identity_changed; /* the last decrypt trusted a peer's new identity key */
	uint8_t auth_pk[crypto_sign_PUBLICKEYBYTES], auth_sk[crypto_sign_SECRETKEYBYTES];
	spc_conn *conn;
	bool logged_in, queue_empty, refill;
	bool status_checked; /* KEYS_STATUS asked on this connection */
	uint64_t next_id;
	cl_deliver *dq_head, *dq_tail;
	int cut_chunks_left;
	/* Keepalive (cl_net.c): times in ms of sp_time_ms(); ping_sent_ms 0: no PING
	 * awaiting an answer. */
	uint64_t ping_at_ms, ping_sent_ms, connected_at_ms;
	uint64_t connects;     /* successful connections of this handle */
	unsigned drop_streak;  /* connections lost in a row (reset by one that stayed up) */
	bool dropped;          /* the last connection was lost: wait a backoff before the next */
	char server[272];      /* "host:port" of the current (or last) connsrv */
	char drop_reason[256]; /* why the last connection was lost */
	uint64_t watch[64];    /* users whose presence this handle follows (cl_presence.c) */
	size_t nwatch;
	char err[512];
	int errclass;
};

/* ---- errors (cl_handle.c) ---- */
/* Records a failure: class and printf-style detail; returns rc. */
int cl_fail(sealpost *sp, int rc, int cls, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The class a bare SP_E* code falls in. */
int cl_class_of(int rc);

/* ---- store (cl_store.c) ---- */
int cl_store_open(sealpost *sp);
void cl_store_close(sealpost *sp);
int cl_exec(sealpost *sp, const char *sql);
int cl_begin(sealpost *sp);
int cl_commit(sealpost *sp);
void cl_rollback(sealpost *sp);
/* Prepares sql (caller finalizes); SP_ESTORE on failure. */
int cl_prep(sealpost *sp, sqlite3_stmt **st, const char *sql);
/* Runs a prepared statement to completion and finalizes it; SP_ESTORE on failure. */
int cl_step_done(sealpost *sp, sqlite3_stmt *st);
int cl_meta_set_u64(sealpost *sp, const char *k, uint64_t v);
int cl_meta_set_blob(sealpost *sp, const char *k, const void *p, size_t n);
uint64_t cl_meta_u64(sealpost *sp, const char *k);
/* Copies a blob/text meta value into buf; its length, or -1 if absent/too long. */
int cl_meta_blob(sealpost *sp, const char *k, void *buf, size_t cap);
/* Next outgoing sequence number of a conversation (inside a transaction). */
int cl_conv_next_seq(sealpost *sp, const char *conv, uint64_t *seq);

/* ---- this home's account (cl_identity.c) ---- */
/* Writes the Signal state (inside the caller's transaction). */
int cl_sig_save(sealpost *sp);
/* Drops the in-memory Signal state and reloads the committed one (after a failure). */
int cl_sig_reload(sealpost *sp);
/* Loads the account (meta + Signal state) if there is one. */
int cl_account_load(sealpost *sp);
bool cl_registered(const sealpost *sp);
int cl_need_account(sealpost *sp);

/* ---- names (cl_names.c) ---- */
void cl_hex(const uint8_t *p, size_t n, char *out);
int cl_unhex(const char *s, uint8_t *out, size_t n);
void cl_peer_name(uint64_t user, uint64_t device, char out[48]);
/* Remembers the server's clock (server_ts at login, against ours) and exp_after from
 * AUTH_OK, for the `expired` status (cl_recv.c). Best effort: a store error only loses
 * them until the next login. */
void cl_expiry_learn(sealpost *sp, uint64_t server_ts, uint64_t exp_after);
/* Resolves "+phone" or "#user" to a user id (SP_ENOTFOUND: unknown contact). */
int cl_resolve_user(sealpost *sp, const char *name, uint64_t *user);
/* Sends a frame that has no reply (ACK, TYPING) on the current connection. */
int cl_post(sealpost *sp, const sp_frame *f);
/* Reports a queued TYPING_EV to the callback (cl_typing.c). */
void cl_typing_report(sealpost *sp, const cl_deliver *d, sealpost_event_cb cb, void *arg);
/* Presence (cl_presence.c): a queued PRESENCE_EV to the callback; the PRESENCE_EV frame
 * queued as a cl_deliver (*out the caller's); the watched users subscribed again on a new
 * connection (SP_OK unless the connection failed). */
void cl_presence_report(sealpost *sp, const cl_deliver *d, sealpost_event_cb cb, void *arg);
int cl_presence_deliver(const sp_frame *f, cl_deliver **out);
int cl_presence_resubscribe(sealpost *sp);
/* Resolves "@name" / "@id" to a known group id. */
int cl_resolve_group(sealpost *sp, const char *name, uint64_t *gid);
/* Display name of a user: its phone if known, else "#user". */
void cl_user_display(sealpost *sp, uint64_t user, char *out, size_t cap);
/* Conversation key in the store: "u:<user>" or "g:<group>". */
void cl_conv_key(char *out, size_t cap, bool group, uint64_t id);
/* Display name of a conversation key. */
void cl_conv_display(sealpost *sp, const char *key, char *out, size_t cap);

/* ---- network (cl_net.c) ---- */
/* Connects (router bootstrap unless a server is given) and logs in if registered,
 * retrying with backoff up to `attempts` times (<0: forever). After a lost connection
 * the first attempt waits a backoff too (growing while connections keep dropping), so
 * that the clients of a failed server do not all come back at once. */
int cl_connect(sealpost *sp, int attempts);
void cl_disconnect(sealpost *sp);
/* Sends q (its id assigned here) and waits for the reply with that id. On SP_OK *r is
 * the reply (not an ERROR; the caller calls sp_frame_fini before the next network
 * call). An ERROR reply returns its code (class SERVER). DELIVERs arriving meanwhile
 * are queued (cl_dq_pop). A network failure closes the connection (class NET). */
int cl_call(sealpost *sp, sp_frame *q, sp_frame *r);
/* As cl_call, failing with SP_EPROTO unless the reply is of type `want`. */
int cl_call_want(sealpost *sp, sp_frame *q, unsigned want, sp_frame *r);
/* Next DELIVER: a queued one first, else from the connection within timeout_ms.
 * SP_ETIMEDOUT when none came. *out is the caller's (cl_deliver_free). While it waits
 * it keeps the connection up: a PING when one is due (cl_ping_ms), and a PING left
 * unanswered for cl_pong_timeout_ms drops the connection (SP_ETIMEDOUT, class NET). */
int cl_next_deliver(sealpost *sp, int timeout_ms, cl_deliver **out);
void cl_deliver_free(cl_deliver *d);
int cl_ack(sealpost *sp, uint64_t upto);
/* The keepalive settings in effect (ping 0: off). */
uint64_t cl_ping_ms(const sealpost *sp);
uint64_t cl_pong_timeout_ms(const sealpost *sp);
/* Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)]. */
uint64_t cl_backoff_ms(unsigned attempt, uint64_t base, uint64_t cap);
void cl_sleep_ms(uint64_t ms);

/* ---- account and keys (cl_account.c) ---- */
/* Uploads n one-time prekeys not yet handed out (generating them first if needed). */
int cl_keys_upload(sealpost *sp, uint32_t n);
/* Uploads a batch if a reply since the last call said the server runs low. */
int cl_keys_refill(sealpost *sp);
/* cl_connect, then the first prekey upload if it is still due, then a refill if asked. */
int cl_online(sealpost *sp, int attempts);
/* The configured number of connection attempts per operation. */
int cl_attempts(const sealpost *sp);
/* A fresh device identity: auth key pair, Signal store with a signed prekey. */
int cl_keys_new_identity(sealpost *sp, sig_store **out);

/* ---- sessions and sending (cl_send.c) ---- */
/* Sends every queued outbox entry, oldest first; stops at the first network failure
 * (SP_OK if the outbox is empty after). */
int cl_outbox_flush(sealpost *sp, sealpost_progress_cb cb, void *arg);
/* Queues a message: assigns conv_seq, encodes the envelope, inserts the outbox row. */
int cl_outbox_add_text(sealpost *sp, const char *to, const char *text, uint8_t msg_id[16]);
/* Re-reads a user's device list from keysrv into the store. */
int cl_devices_refresh(sealpost *sp, uint64_t user);
/* Encrypts pt for one device, starting a session from a fetched bundle if needed.
 * *out is the caller's; *etype CL_ET_PREKEY or CL_ET_WHISPER. */
int cl_encrypt_for(sealpost *sp, uint64_t user, uint64_t device, const uint8_t *pt, size_t len,
		   uint8_t **out, size_t *outlen, int *etype);

/* Pairwise pt to devices of group gid (users[i] owns devs[i]) in SEND_SK frames of at
 * most CL_SK_CHUNK_ITEMS items / about CL_SK_CHUNK_BYTES, each acknowledged before the
 * next; stored[i] (n entries, the caller's) says the server stored it for devs[i] (not
 * refused for a full queue). mark: record those in sk_sent as they are acknowledged. */
#define CL_SK_CHUNK_ITEMS 256
#define CL_SK_CHUNK_BYTES (40 * 1024)
/* Our key kept per group message sent, for retry answers: the newest this many a group. */
#define CL_SK_DIST_KEEP 256
int cl_sk_send(sealpost *sp, uint64_t gid, const uint64_t *users, const uint64_t *devs, size_t n, const uint8_t *pt,
	       size_t ptlen, bool mark, bool *stored);
/* Retry requests for a missing group key: asked again of one sender device after
 * CL_SK_RETRY_MS, answered at most once per CL_SK_ANSWER_MS per requesting device; at
 * most CL_SK_HELD_MAX undecryptable group messages held, each for CL_SK_HELD_MS. */
#define CL_SK_RETRY_MS 60000
#define CL_SK_ANSWER_MS 10000
#define CL_SK_HELD_MAX 512
#define CL_SK_HELD_MS (7 * 24 * 3600 * 1000ULL)
/* Recipient status (recipients.status). */
enum { CL_ST_FAILED = -1, CL_ST_QUEUED = 0, CL_ST_SENT = 1, CL_ST_DELIVERED = 2, CL_ST_READ = 3 };
/* ---- groups (cl_group.c) ---- */
typedef struct cl_group_info {
	uint64_t gid, epoch;
	char name[129];
	uint64_t *users;          /* members */
	size_t nusers;
	uint64_t *devices;        /* every member device except ours */
	uint64_t *owners;         /* the user of each of those devices */
	size_t ndevices;
} cl_group_info;
/* Fetches the group from keysrv and updates the local copy (members, epoch); rotates
 * our Sender Key when a member left. */
int cl_group_fetch(sealpost *sp, uint64_t gid, cl_group_info *gi);
void cl_group_info_fini(cl_group_info *gi);
/* Records a group seen in an incoming message. */
int cl_group_seen(sealpost *sp, uint64_t gid, const char *name);

/* ---- media (cl_media.c) ---- */
typedef struct cl_media {
	uint8_t blob_id[16], key[32], digest[32];
	uint64_t size; /* ciphertext bytes */
	uint64_t plain_size;
	char mime[64], name[129];
} cl_media;
/* Streams path through XChaCha20-Poly1305 secretstream into enc_path with a fresh key;
 * fills m (blob id, key, digest of the ciphertext, sizes). */
int cl_media_encrypt_file(const char *path, const char *enc_path, cl_media *m);
/* Checks the ciphertext digest, then decrypts enc_path into out_path. SP_EDIGEST,
 * SP_ECRYPTO on failure (out_path removed). */
int cl_media_decrypt_file(const char *enc_path, const char *out_path, const cl_media *m);
/* Uploads enc_path as blob m->blob_id, resuming from what the shard has, then MEDIA_DONE
 * for the given devices. Reconnects on a lost connection. */
int cl_media_upload(sealpost *sp, const char *enc_path, const cl_media *m, const uint64_t *devices,
		    size_t ndev, sealpost_progress_cb cb, void *arg);
/* Downloads the blob into enc_path (resuming from its current length). */
int cl_media_download(sealpost *sp, const cl_media *m, const char *enc_path);

/* ---- envelope (cl_env.c): the E2E plaintext container ---- */
/* CL_K_SK_RETRY: "I cannot read your group message retry_msg_id: send me your key as it
 * was for it" (pairwise, through SEND_SK, answered with a CL_K_SKDM). */
enum { CL_K_TEXT = 1, CL_K_MEDIA = 2, CL_K_SKDM = 3, CL_K_SK_RETRY = 4 };
typedef struct cl_env {
	unsigned kind;
	uint64_t seq;       /* sender's conversation sequence number */
	uint64_t to;        /* 1:1: the recipient user (for self-fan-out copies) */
	uint64_t group;     /* 0 for 1:1 */
	const char *phone;  /* sender's phone (pointers into the decoded buffer or caller's) */
	size_t phone_len;
	const char *gname;
	size_t gname_len;
	const char *text;
	size_t text_len;
	const uint8_t *skdm;
	size_t skdm_len;
	const uint8_t *retry_msg_id; /* CL_K_SK_RETRY: 16 bytes */
	cl_media media;
} cl_env;
/* Encodes e; *out is the caller's (free). */
int cl_env_encode(const cl_env *e, uint8_t **out, size_t *outlen);
/* Decodes (bounded, hostile-input safe); strings point into in. */
int cl_env_decode(const uint8_t *in, size_t len, cl_env *e);

/* ---- receive (cl_recv.c) ---- */
/* Order bookkeeping for one incoming message (inside a transaction): decides whether it
 * is surfaced now (in order) and releases held ones that now follow. */
int cl_order_admit(sealpost *sp, const char *conv, uint64_t from_user, uint64_t from_device,
		   uint64_t seq, int64_t row);
/* Surfaces held messages whose hold time is over (inside a transaction). Returns the
 * earliest remaining deadline in *next_ms (0 if none). */
int cl_order_expire(sealpost *sp, uint64_t now_ms, uint64_t *next_ms);
/* Reports surfaced-but-unreported messages through cb, marking them reported. */
int cl_report_pending(sealpost *sp, sealpost_event_cb cb, void *arg);
/* One DELIVER (or queued TYPING_EV) of cl_next_deliver: decrypt, store, ACK, then report
 * through cb (which runs after the commit; it must not use the network). The receive
 * loop's step, also driven by cl_chat.c's own loop. */
int cl_recv_process(sealpost *sp, const cl_deliver *d, sealpost_event_cb cb, void *arg);
/* Surfaces held messages whose hold time is over and reports them; *next_ms the next
 * hold deadline (0: none). */
int cl_recv_expire(sealpost *sp, sealpost_event_cb cb, void *arg, uint64_t *next_ms);

#endif
