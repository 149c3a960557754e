/*
 * Typing indicators (docs/CONNSRV.md, "Typing"): ephemeral, never stored. A TYPING from a
 * logged-in device goes to the recipient's devices that are online now (their routes in
 * Redis), as TYPING_EV {from_user, from_device, kind}; an offline device gets nothing.
 * A session may send at most one TYPING per TYPING_MIN_MS; more are dropped and counted.
 * Loop thread only; work after the call (device list, route lookup) runs later on the loop.
 */
#ifndef CS_TYPING_H
#define CS_TYPING_H

#include <stddef.h>
#include <stdint.h>

#include "connsrv/internal.h"

#define CS_TYPING_MIN_MS 1000

/* Dispatch handler for TYPING. */
void cs_typing(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);

/* A TYPING_PUSH from a peer: writes TYPING_EV to the device's session if it is still the
 * one of the push's connection epoch. */
void cs_typing_push(cs_server *srv, const sp_frame *f);

#endif
