/*
 * Presence (docs/CONNSRV.md, "Presence"): whether a user is online and when it was last
 * seen, as soft state in Redis, pushed to the sessions that subscribed to the user.
 *
 * - State: a user is online while r:po:<user> (sorted set: one member "<device>|<conn_epoch>"
 *   per logged-in session, scored by its expiry, renewed every route_ttl/3) holds an
 *   unexpired member; r:ls:<user> holds the wall-clock ms at which one of its sessions last
 *   logged out. (Not the device list: presence never fills the device cache.)
 * - Subscriptions: PRESENCE_SUB replaces a session's set (at most CS_PRESENCE_MAX_SUBS
 *   users); they live in this worker's memory and end with the session. A worker with at
 *   least one subscriber of user U is listed in the sorted set r:pw:<U> (member: its pull
 *   url; score: expiry ms, renewed every route_ttl/3).
 * - Publishing: a device of U logging in or out here marks U changed. A worker publishes U
 *   at most once per CS_PRESENCE_MIN_MS (changes in between are folded into one publish of
 *   the state at that time): one PRESENCE_PUSH per listed worker (peer plane), and each
 *   worker writes one PRESENCE_EV per subscribed session, showing only what the
 *   subscriber's rule allows.
 * - Privacy: the rule of (viewer, user) comes from keysrv (PRESENCE_RULES) when the
 *   subscription is made or the one-shot PRESENCE_GET asked; cs_presence_view applies it.
 *
 * Loop thread only. Answers to a session come later on the loop, never inside a call.
 */
#ifndef CS_PRESENCE_H
#define CS_PRESENCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "connsrv/internal.h"

#define CS_PRESENCE_MAX_SUBS 64       /* users one session follows */
#define CS_PRESENCE_MIN_MS 3000       /* one publish per user per worker per this */
#define CS_PRESENCE_RECENT_MS (3ULL * 24 * 3600 * 1000) /* "last seen recently" */

/* Rule bits (as keysrv's PRESENCE_RULES_R): bit 0 online; bits 1-2 last seen 0 hidden,
 * 1 coarse, 2 exact. */
#define CS_PRES_ONLINE 0x1u
#define CS_PRES_LS(rule) (((rule) >> 1) & 3u)

/* What one viewer is shown of a user's state. */
typedef struct cs_presence_shown {
	bool has_online, online;
	bool has_last_seen;
	uint64_t last_seen; /* ms since the epoch */
	bool recent;        /* coarse: online or last seen within CS_PRESENCE_RECENT_MS */
} cs_presence_shown;

/* Applies `rule` to the state (online, last_seen: 0 unknown) at now_ms. Returns whether
 * anything at all is shown. */
bool cs_presence_view(unsigned rule, bool online, uint64_t last_seen, uint64_t now_ms,
		      cs_presence_shown *out);

typedef struct cs_presence cs_presence;

/* On SP_OK srv->presence is set (freed by cs_presence_free, after cs_routes_free and
 * cs_devcache_free, whose pending callbacks may still reach it). */
int cs_presence_new(cs_server *srv);
void cs_presence_free(cs_server *srv);

/* Dispatch handlers: PRESENCE_SUB (answered OK) and PRESENCE_GET (PRESENCE_R). */
void cs_presence_sub(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);
void cs_presence_get(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);

/* Session hooks (session.c): logged in (route claimed); logged out (route released);
 * closing (its subscriptions end). */
void cs_presence_online(cs_session *s);
void cs_presence_offline(cs_session *s);
void cs_presence_session_gone(cs_session *s);

/* A PRESENCE_PUSH from a peer (peer.c). */
void cs_presence_push(cs_server *srv, const sp_frame *f);

#endif
