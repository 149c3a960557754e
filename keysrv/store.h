/*
 * keysrv's LMDB store: the environment, its named databases and the record codecs.
 *
 * Databases (keys big-endian so that a prefix scan lists one owner's entries in order):
 *   meta     "secret" -> 32 random bytes (keys OTP and link-code hashes)
 *   phones   E.164 string -> user id (8)
 *   users    user (8) -> keys_user
 *   devices  device (8) -> keys_device (kept as a tombstone after removal so an id is
 *            never reused)
 *   opks     device (8) || opk id (4) -> 33-byte one-time prekey
 *   otps     E.164 string -> keys_otp
 *   links    keyed hash of the link code (32) -> keys_link
 *   groups   group (8) -> keys_group
 *   members  group (8) || user (8) -> flags (1)
 *   budgets  E.164 string -> keys_budget (per-phone daily counters; swept when expired)
 *   pins     user (8) -> keys_pin (registration lock: the PIN's argon2id hash string)
 *   replies  device (8) || request id (16) -> expiry (8) || the packed reply: a write
 *            whose retry must get the first answer (a one-time prekey hand-out)
 *   settings user (8) -> privacy settings and contact count (keysrv/settings.c)
 *   contacts user (8) || contact (8) -> 1 byte: the user's server-side contact set
 *
 * Every call takes the caller's transaction; values read are copied into the records, so
 * nothing returned points into the map. Write transactions are serialized by LMDB, and a
 * commit is durable (fsync) before it returns.
 */
#ifndef KEYS_STORE_H
#define KEYS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#define KEYS_PHONE_MAX 16     /* '+' and at most 15 digits */
#define KEYS_MAX_DEVICES 5    /* the primary and at most 4 linked devices */
#define KEYS_PUSH_MAX 512
#define KEYS_GROUP_NAME_MAX 128
#define KEYS_PUB_LEN 33
#define KEYS_AUTH_LEN 32
#define KEYS_SIG_LEN 64
#define KEYS_HASH_LEN 32
#define KEYS_REQ_ID_LEN 16
#define KEYS_REPLY_MAX 4096 /* a stored reply (BUNDLE_R of KEYS_MAX_DEVICES is ~1.2 KiB) */
#define KEYS_REPLY_TTL_MS (10ULL * 60 * 1000) /* retries come within seconds */

typedef enum {
	KDB_META,
	KDB_PHONES,
	KDB_USERS,
	KDB_DEVICES,
	KDB_OPKS,
	KDB_OTPS,
	KDB_LINKS,
	KDB_GROUPS,
	KDB_MEMBERS,
	KDB_BUDGETS,
	KDB_PINS,
	KDB_REPLIES,
	KDB_SETTINGS, /* new databases go last: the replication records name them by index */
	KDB_CONTACTS,
	KDB__COUNT
} keys_db;

typedef struct keys_store keys_store;

typedef struct keys_user {
	uint64_t id;
	uint64_t primary;
	uint64_t created_ms;
	char phone[KEYS_PHONE_MAX + 1];
	uint8_t ndevices; /* live devices, the primary first */
	uint64_t devices[KEYS_MAX_DEVICES];
} keys_user;

#define KEYS_DEV_PRIMARY 0x1
#define KEYS_DEV_REVOKED 0x2
#define KEYS_DEV_HAS_SPK 0x4

typedef struct keys_device {
	uint64_t id;
	uint64_t user;
	uint8_t flags;
	uint32_t reg_id;
	uint64_t created_ms;
	uint8_t ik[KEYS_PUB_LEN];
	uint8_t auth_key[KEYS_AUTH_LEN];
	uint32_t spk_id;
	uint8_t spk[KEYS_PUB_LEN];
	uint8_t spk_sig[KEYS_SIG_LEN];
	uint32_t opk_count; /* one-time prekeys stored for this device */
	uint16_t push_len;
	char push[KEYS_PUSH_MAX + 1];
} keys_device;

#define KEYS_OTP_PENDING 0
#define KEYS_OTP_USED 1

/* A one-time code: only its keyed hash is stored. Once used, the record remembers the
 * result (and a hash of the keys it was used with) so that a resent VERIFY is answered
 * the same, until the record expires. */
typedef struct keys_otp {
	uint8_t hash[KEYS_HASH_LEN];
	uint64_t expires_ms;
	uint8_t attempts_left;
	uint8_t state;
	uint64_t user, device;
	uint8_t keys_hash[KEYS_HASH_LEN];
} keys_otp;

#define KEYS_LINK_PENDING 0
#define KEYS_LINK_CONFIRMED 1

typedef struct keys_link {
	uint8_t state;
	uint64_t expires_ms;
	uint8_t ik[KEYS_PUB_LEN];
	uint8_t auth_key[KEYS_AUTH_LEN];
	uint32_t reg_id;
	bool has_spk;
	uint32_t spk_id;
	uint8_t spk[KEYS_PUB_LEN];
	uint8_t spk_sig[KEYS_SIG_LEN];
	uint16_t push_len;
	char push[KEYS_PUSH_MAX + 1];
	uint64_t user, device; /* once confirmed */
} keys_link;

typedef struct keys_group {
	uint64_t id;
	uint64_t epoch;
	uint64_t created_ms;
	uint32_t nmembers;
	uint32_t nadmins;
	char name[KEYS_GROUP_NAME_MAX + 1];
} keys_group;

#define KEYS_MEMBER_ADMIN 0x1

/* Per-phone counters of one window (KEYS_BUDGET_WINDOW_MS from the first counted event):
 * codes sent, wrong codes and wrong PINs. Durable, so that neither a new REGISTER nor a
 * restart gives an attacker fresh guesses; swept once the window is over. */
#define KEYS_BUDGET_WINDOW_MS (24ULL * 3600 * 1000)

typedef struct keys_budget {
	uint64_t expires_ms; /* end of the window */
	uint32_t sends, verify_fails, pin_fails;
} keys_budget;

/* crypto_pwhash_STRBYTES (128): "$argon2id$v=19$m=...,t=...,p=1$salt$hash" and a NUL. */
#define KEYS_PIN_HASH_MAX 128

typedef struct keys_pin {
	uint64_t set_ms;
	char hash[KEYS_PIN_HASH_MAX]; /* NUL-terminated */
} keys_pin;

/* Opens (creating if needed) the store in directory `dir` with a map of `map_size`
 * bytes, and creates the server secret on first use. On SP_OK the caller owns *out
 * (keys_store_close). SP_ESTORE on any LMDB failure (logged). */
int keys_store_open(keys_store **out, const char *dir, size_t map_size);
/* The same for a replicated copy: the secret is not made here (a replica gets it from the
 * primary's log; the primary makes it with keys_store_ensure_secret once it leads). */
int keys_store_open_replicated(keys_store **out, const char *dir, size_t map_size);
void keys_store_close(keys_store *s);

/* Loads the server secret, making it (a write, logged when replicated) if the store has
 * none. SP_OK once keys_store_secret is valid. Not inside a transaction. */
int keys_store_ensure_secret(keys_store *s);
/* The 32-byte server secret (valid until close, once keys_store_ensure_secret or a
 * non-replicated open succeeded). */
const uint8_t *keys_store_secret(const keys_store *s);

/* ---- replication (keysrv/repl.c) ----
 * With a hook set, every put and delete of a write transaction (one at a time: LMDB's
 * writer lock) is captured as an effect (repl/lmdbfx.h); keys_store_commit of a
 * transaction that changed anything stores LSN + 1 and calls the hook with the record
 * before the LMDB commit, and aborts the transaction if the hook fails (its error is the
 * commit's). A replica applies the primary's records with keys_store_apply. */
typedef int (*keys_store_repl_fn)(void *arg, uint64_t lsn, const uint8_t *rec, size_t len);
void keys_store_set_repl(keys_store *s, keys_store_repl_fn fn, void *arg);
/* The LSN of the last committed logged transaction (0: none). */
int keys_store_lsn(keys_store *s, uint64_t *lsn);
/* Applies record `lsn` (the next one: SP_EGAP otherwise) in one transaction. */
int keys_store_apply(keys_store *s, uint64_t lsn, const uint8_t *rec, size_t len);
/* Flushes every commit to disk. */
int keys_store_sync(keys_store *s);
/* A consistent, compacted copy of the store to `fd` (the file `path`) and its LSN. */
int keys_store_copy(keys_store *s, int fd, const char *path, uint64_t *lsn);

/* Transactions. A read transaction is ended with keys_store_abort. Commit returns SP_OK,
 * SP_EFULL (map full) or SP_ESTORE; the transaction is gone either way. */
int keys_store_begin(keys_store *s, bool write, MDB_txn **txn);
int keys_store_commit(MDB_txn *txn);
void keys_store_abort(MDB_txn *txn);

MDB_dbi keys_store_dbi(const keys_store *s, keys_db db);

/* Maps an LMDB return code to SP_OK, SP_ENOTFOUND, SP_EEXIST, SP_EFULL or SP_ESTORE. */
int keys_store_err(int mdb_rc);

/* Raw access: get copies at most `cap` bytes into buf and sets *len (SP_ENOTFOUND if
 * absent). put with MDB_NOOVERWRITE returns SP_EEXIST for an existing key. */
int keys_store_get(keys_store *s, MDB_txn *txn, keys_db db, const void *key, size_t klen,
    void *buf, size_t cap, size_t *len);
int keys_store_put(keys_store *s, MDB_txn *txn, keys_db db, const void *key, size_t klen,
    const void *val, size_t vlen, unsigned flags);
int keys_store_del(keys_store *s, MDB_txn *txn, keys_db db, const void *key, size_t klen);
/* Deletes the cursor's current entry of `db` (captured when replicated). Returns LMDB's
 * code, as mdb_cursor_del. */
int keys_store_cursor_del(keys_store *s, MDB_txn *txn, MDB_cursor *c, keys_db db);

/* Records. get returns SP_ENOTFOUND if absent and SP_ESTORE for an undecodable value. */
int keys_user_get(keys_store *s, MDB_txn *txn, uint64_t id, keys_user *u);
int keys_user_put(keys_store *s, MDB_txn *txn, const keys_user *u);
int keys_user_by_phone(keys_store *s, MDB_txn *txn, const char *phone, uint64_t *user);
int keys_device_get(keys_store *s, MDB_txn *txn, uint64_t id, keys_device *d);
int keys_device_put(keys_store *s, MDB_txn *txn, const keys_device *d);
int keys_otp_get(keys_store *s, MDB_txn *txn, const char *phone, keys_otp *o);
int keys_otp_put(keys_store *s, MDB_txn *txn, const char *phone, const keys_otp *o);
int keys_link_get(keys_store *s, MDB_txn *txn, const uint8_t key[KEYS_HASH_LEN], keys_link *l);
int keys_link_put(keys_store *s, MDB_txn *txn, const uint8_t key[KEYS_HASH_LEN], const keys_link *l);
/* A phone's budget; absent or expired (at now_ms) reads as a fresh zeroed window. */
int keys_budget_get(keys_store *s, MDB_txn *txn, const char *phone, uint64_t now_ms, keys_budget *b);
int keys_budget_put(keys_store *s, MDB_txn *txn, const char *phone, const keys_budget *b);
int keys_pin_get(keys_store *s, MDB_txn *txn, uint64_t user, keys_pin *p);
int keys_pin_put(keys_store *s, MDB_txn *txn, uint64_t user, const keys_pin *p);
/* The reply stored for (device, request id): copies it into buf (at most cap bytes) and
 * sets *len; SP_ENOTFOUND when absent or expired at now_ms. */
int keys_reply_get(keys_store *s, MDB_txn *txn, uint64_t device,
    const uint8_t id[KEYS_REQ_ID_LEN], uint64_t now_ms, uint8_t *buf, size_t cap, size_t *len);
/* Stores a packed reply (len <= KEYS_REPLY_MAX, else SP_EINVAL) until expires_ms. */
int keys_reply_put(keys_store *s, MDB_txn *txn, uint64_t device,
    const uint8_t id[KEYS_REQ_ID_LEN], uint64_t expires_ms, const uint8_t *reply, size_t len);
int keys_group_get(keys_store *s, MDB_txn *txn, uint64_t id, keys_group *g);
int keys_group_put(keys_store *s, MDB_txn *txn, const keys_group *g);

/* A fresh random id that is non-zero and not a key of `db` (users, devices, groups). */
int keys_store_new_id(keys_store *s, MDB_txn *txn, keys_db db, uint64_t *id);

/* Deletes expired OTP, link, budget and reply records (at most `max` of each); returns how
 * many. */
int keys_store_sweep(keys_store *s, uint64_t now_ms, unsigned max, unsigned *deleted);

#endif
