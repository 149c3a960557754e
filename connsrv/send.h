/*
 * SEND (1:1), SEND_GROUP and SEND_SK. A SEND is answered SENT only when every per-device append is
 * durable on its shard; any failure is an ERROR for that msg_id and the client retries with
 * the same msg_id (the shard dedups). The sender is always the authenticated device: nothing
 * in the client's frame says who sends. Handlers called by session.c's dispatch table; the
 * frame and its raw bytes are borrowed for the call (an op keeps its own copy). Each op holds
 * one of the session's server calls until it has answered; device lists come from the
 * devcache, appends go through the append queues (1:1) or APPEND_BATCH per shard (groups),
 * and the appended entries go to srv->ops->notify.
 */
#ifndef CS_SEND_H
#define CS_SEND_H

#include "connsrv/internal.h"

void cs_send_one(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);
void cs_send_group(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);
/* SEND_SK: pairwise items to devices of a group the sender is a member of (appended as 1:1
 * entries carrying the group id); SENT lists the devices refused for a full queue. */
void cs_send_sk(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);

#endif
