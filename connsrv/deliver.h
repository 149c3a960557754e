/*
 * Delivery to this worker's logged-in devices: the window of DELIVERs written and not yet
 * ACKed, FETCH from the device's shard, pushed DELIVER hints, ACK, and the periodic
 * lost-push check. Entry points run on the loop: the ACK handler from session.c's dispatch
 * table, the others from session.c (login done, socket writable) and from srv->ops->push.
 * Every FETCH, INBOX_ACK and LAST_SEQS call holds one of the session's server calls until
 * its answer has run. The entries an ACK deleted go to srv->ops->acked; an ACK deletes only
 * entries written on the session (beyond: ERROR SP_ERANGE, nothing deleted).
 */
#ifndef CS_DELIVER_H
#define CS_DELIVER_H

#include "connsrv/internal.h"

/* The periodic check (a timer on srv->base) / its end. */
int cs_deliver_start(cs_server *srv);
void cs_deliver_stop(cs_server *srv);
/* Login done: drain the inbox from its oldest entry. `last_seq` (AUTH's, the client's
 * word) skips nothing; an ACK up to it is cut to what was delivered instead of refused. */
void cs_deliver_login(cs_session *s, uint64_t last_seq);
/* A DELIVER hint for one of our devices (from a peer or from ourselves); borrowed. */
void cs_deliver_push(cs_server *srv, const sp_frame *f);
void cs_deliver_ack(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);
/* The client's socket drained: delivery may resume. */
void cs_deliver_writable(cs_session *s);

#endif
