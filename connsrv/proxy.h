/*
 * Frames connsrv does not serve itself, forwarded: a client's keysrv frame (any frame the
 * catalogue puts at SP_TIER_KEYSRV that a client may send) goes to keysrv with the session's
 * identity and the client's address attached, whatever the client put there; MEDIA_PUT/
 * DONE/GET go to the shard owning the blob as BLOB_PUT/DONE/GET. Called by session.c's
 * dispatch with the frame borrowed for the call; the reply runs later on the loop, holding
 * one of the session's server calls, and is relayed with the client's request id. A removed
 * or re-registered device loses its queue (PURGE) and its session wherever it is
 * (cs_revoke_device).
 */
#ifndef CS_PROXY_H
#define CS_PROXY_H

#include "connsrv/internal.h"

void cs_proxy_keysrv(cs_session *s, const sp_frame *f);
void cs_proxy_media(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);

#endif
