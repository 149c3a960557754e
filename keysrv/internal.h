/*
 * Names shared by keysrv's modules (not used by other tiers): the server context every
 * handler runs in, the per-request state, and a small arena for reply memory.
 */
#ifndef KEYS_INTERNAL_H
#define KEYS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keysrv/otp_sender.h"
#include "keysrv/ratelimit.h"
#include "keysrv/store.h"
#include "sp_frame.h"
#include "sp_metrics.h"

#define KEYS_MAX_LINKED 4        /* linked devices besides the primary */
#define KEYS_OPK_PER_UPLOAD 200  /* one-time prekeys in one KEYS_UPLOAD */
#define KEYS_OPK_PER_DEVICE 1000 /* one-time prekeys stored per device */
#define KEYS_GROUP_MAX 1024      /* members per group */
#define KEYS_GROUP_PAGE 256      /* members per GROUP_INFO_R */
#define KEYS_REG_ID_MAX 0x3fff   /* Signal registration ids are 14-bit */
#define KEYS_CODE_LEN 6          /* digits in a registration code */
#define KEYS_LINK_CODE_LEN 8

/* Tunables, from configuration. */
typedef struct keys_cfg {
	uint64_t otp_ttl_ms;
	unsigned otp_attempts;
	uint64_t link_ttl_ms;
	unsigned low_water;
	/* Per-phone budgets per 24-hour window, kept in the store (0: no budget): codes sent
	 * (REGISTER), wrong codes (VERIFY) and wrong registration-lock PINs. */
	unsigned phone_sends, phone_verify_fails, phone_pin_fails;
	/* argon2id limits for PIN hashes (0: libsodium's interactive limits). */
	unsigned long long pin_opslimit;
	size_t pin_memlimit;
} keys_cfg;

/* Everything a handler needs; shared by all worker threads (the members are thread-safe
 * or read-only after start-up). */
typedef struct keys_ctx {
	keys_store *store;
	keys_otp_sender *otp;
	keys_rl *rl_phone;  /* REGISTER per phone number */
	keys_rl *rl_source; /* unauthenticated requests per client address */
	keys_rl *rl_bundle; /* BUNDLE_GET per requesting user */
	keys_rl *rl_link;   /* LINK_LOOKUP / LINK_CONFIRM per requesting user */
	keys_cfg cfg;
	uint64_t (*now_ms)(void); /* wall clock; tests substitute their own */
	sp_metric *m_low_events;  /* a device's count fell under the low-water mark */
	sp_metric *m_low_devices; /* devices currently under it (since start) */
	sp_metric *m_opk_given, *m_opk_empty, *m_ratelimited, *m_replayed;
	sp_metric *m_budget_register, *m_budget_verify, *m_budget_pin; /* refused by a budget */
	sp_metric *m_pin_wrong;
	/* A replicated copy (keysrv/repl.h): whether it may serve now (a read that tolerates
	 * bounded staleness when stale_ok), else the error and the primary's name. NULL: a key
	 * store of one copy. */
	int (*gate)(void *arg, bool stale_ok, char *primary, size_t cap);
	void *gate_arg;
} keys_ctx;

/* Bump allocator for reply data that must outlive the handler's transaction. */
typedef struct keys_arena {
	struct keys_chunk *head;
} keys_arena;

/* Zeroed memory valid until keys_arena_free; NULL when out of memory. */
void *keys_arena_alloc(keys_arena *a, size_t n);
void keys_arena_free(keys_arena *a);

/* One request. The handler fills `out` (pointers into `arena` or `in`) and returns SP_OK,
 * or returns an error code and may set `reason` (static text) and `retry_after_ms`. */
typedef struct keys_req {
	keys_ctx *ctx;
	const sp_frame *in;
	sp_frame out;
	keys_arena arena;
	uint64_t user, device; /* the authenticated caller; 0 when none */
	bool caller_primary;
	const char *source; /* client address for rate limits ("-" when absent) */
	const char *reason;
	uint64_t retry_after_ms;
	keys_device caller_dev; /* the caller's device as checked before the handler ran */
	struct {
		int64_t before, after;
	} notes[2 * KEYS_MAX_DEVICES];
	int nnotes;
} keys_req;

/* Sets r->out to an empty reply of `type` carrying the request's id. */
void keys_reply_init(keys_req *r, unsigned type);

/* Fails a request: stores the reason and returns code. */
static inline int
keys_fail(keys_req *r, int code, const char *reason)
{
	r->reason = reason;
	return code;
}

/* Takes a token from `rl` for `key`; on SP_ERATELIMIT sets the reply's retry hint. */
int keys_rate_take(keys_req *r, keys_rl *rl, const char *key, const char *what);

/* Keyed hash (BLAKE2b with the server secret) of a domain tag and data. */
void keys_hash(const keys_ctx *ctx, const char *tag, const void *a, size_t alen, const void *b,
    size_t blen, uint8_t out[KEYS_HASH_LEN]);

/* Records, for after the commit, that a device's one-time prekey count went from
 * `before` to `after` (-1: the device did not exist / no longer counts). */
void keys_req_note(keys_req *r, int64_t before, int64_t after);

#endif
