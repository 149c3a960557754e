/*
 * The peer plane: the NNG pull socket on which other connsrv workers (and this one's own
 * pushes, looped back through srv->ops) send DELIVER hints and KICKs, and the periodic
 * refresh of this worker's routes in Redis. Messages arrive on NNG's threads, are queued
 * under a lock and handled on the loop (an event made active), where a DELIVER goes to
 * srv->ops->push, a KICK to cs_session_kick and a TYPING_PUSH to cs_typing_push.
 */
#ifndef CS_PEER_H
#define CS_PEER_H

#include "connsrv/internal.h"

/* Listens on srv->pull_listen and starts the route refresh timer. */
int cs_peer_start(cs_server *srv);
/* Stops receiving, drops what is queued, frees the timer and the queue. */
void cs_peer_stop(cs_server *srv);

/* Pushes KICK {device, conn_epoch, reason (NULL: none)} to the worker at `url`. A push
 * that cannot be sent is counted (pushes_dropped) and logged, rate-limited: the session
 * stays until it goes, idles out or fails its own device check. Loop thread. */
void cs_peer_kick(cs_server *srv, const char *url, uint64_t device, uint64_t conn_epoch,
		  const char *reason);

#endif
