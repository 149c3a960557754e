/*
 * Receipts: envelopes the server makes (etype SP_ETYPE_RECEIPT_DELIVERED / _READ, from
 * device 0, env a packed RECEIPT) and appends to every device of the user they answer. READ
 * is a handler called by session.c's dispatch table; cs_receipts_acked is srv->ops->acked,
 * called by deliver.c with an ACK's reply. Receipts hold no session: the appends run later
 * on the loop and their entries go to srv->ops->notify. A receipt is best effort (the
 * message itself was delivered); one that cannot be stored is counted and logged.
 */
#ifndef CS_RECEIPTS_H
#define CS_RECEIPTS_H

#include "connsrv/internal.h"

void cs_receipts_read(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);
/* The ACKED reply `acked` (borrowed) of the session's ACK: one DELIVERED receipt per sender
 * user of the deleted entries (server-made entries are not acknowledged in turn). */
void cs_receipts_acked(cs_session *s, const sp_frame *acked);
/* Queues a receipt envelope from (user, device) to every device of `to_user`. msg_ids are
 * borrowed for the call. */
void cs_receipts_queue(cs_server *srv, uint64_t from_user, uint64_t from_device, uint64_t to_user,
		       unsigned etype, const sp_bin *msg_ids, uint32_t n);

#endif
