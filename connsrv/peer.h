/*
 * The peer plane: the NNG pull socket on which other connsrv workers (and this one's own
 * pushes, looped back through srv->ops) send DELIVER hints and KICKs, and the periodic
 * refresh of this worker's routes in Redis. Messages arrive on NNG's threads, are queued
 * under a lock and handled on the loop (an event made active), where a DELIVER goes to
 * srv->ops->push and a KICK to cs_session_kick.
 */
#ifndef CS_PEER_H
#define CS_PEER_H

#include "connsrv/internal.h"

/* Listens on srv->pull_listen and starts the route refresh timer. */
int cs_peer_start(cs_server *srv);
/* Stops receiving, drops what is queued, frees the timer and the queue. */
void cs_peer_stop(cs_server *srv);

#endif
