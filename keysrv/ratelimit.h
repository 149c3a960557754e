/*
 * In-memory token buckets keyed by a short string (a phone number, a client address, a
 * user id). Each key starts with `burst` tokens and regains `per_min` per minute. Memory
 * is bounded: at most `max_keys` buckets; when full, buckets that have refilled
 * completely (idle keys) are dropped, and if none has, new keys are refused (fail closed).
 * Thread-safe. State is lost on restart, which only ever makes the limits looser.
 */
#ifndef KEYS_RATELIMIT_H
#define KEYS_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct keys_rl keys_rl;

/* On SP_OK the caller owns *out (keys_rl_free). burst and per_min must be > 0. */
int keys_rl_new(keys_rl **out, unsigned burst, unsigned per_min, size_t max_keys);
void keys_rl_free(keys_rl *rl);

/* Takes one token for `key` at time now_ms. Returns SP_OK, or SP_ERATELIMIT and in
 * *retry_after_ms (when non-NULL) how long until a token is available. */
int keys_rl_take(keys_rl *rl, const char *key, uint64_t now_ms, uint64_t *retry_after_ms);

#endif
