/*
 * Revocation everywhere (docs/CONNSRV.md, "Revocation"): a device removed, or every device
 * of an account re-registered, loses its live session on whichever connsrv holds it, and a
 * session whose device is no longer current is closed within a bound even when that kick
 * is lost.
 *   - cs_revoke_device: kicks the device's session on this worker and, through its route
 *     in Redis, on the worker or connsrv that holds it (a KICK with reason "removed",
 *     whatever connection epoch it has).
 *   - cs_revoke_check: a logged-in session re-checks that its device is still in its
 *     user's device list (the device cache, `--devcache-ms`; keysrv replicas answer while
 *     fresh) at most once per `--devcache-ms`, on any frame it sends; a device no longer
 *     listed is kicked. The frame itself goes on: at most one cache period of frames of a
 *     removed device is served.
 * Loop thread only; callbacks run later on the loop, never inside these calls.
 */
#ifndef CS_REVOKE_H
#define CS_REVOKE_H

#include <stdint.h>

#include "connsrv/internal.h"

void cs_revoke_device(cs_server *srv, uint64_t device);
void cs_revoke_check(cs_session *s);

#endif
