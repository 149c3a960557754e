/*
 * Receipts: envelopes the server makes (etype SP_ETYPE_RECEIPT_DELIVERED / _READ, from
 * device 0, env a packed RECEIPT) and appends to every device of the user they answer. READ
 * is a handler called by session.c's dispatch table; cs_receipts_acked is srv->ops->acked,
 * called by deliver.c with an ACK's reply. Receipts hold no session: the appends run later
 * on the loop and their entries go to srv->ops->notify. A READ is answered OK only once
 * its receipt is stored for every device of the user it answers (on each shard's sync
 * set), and ERROR otherwise, so a client that saw OK never has to send it again and one
 * that did not sends it again (the receipt's id is a hash of its content: stored once).
 * A DELIVERED receipt is best effort (the message itself was delivered); one that cannot
 * be stored is counted and logged.
 */
#ifndef CS_RECEIPTS_H
#define CS_RECEIPTS_H

#include "connsrv/internal.h"

void cs_receipts_read(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);
/* READ_UPTO: as READ (OK once stored for every device of to_user), the envelope a
 * RECEIPT_UPTO. Unpaired rd_devices / rd_seqs (different counts, or none) are SP_EINVAL. */
void cs_receipts_read_upto(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len);
/* The ACKED reply `acked` (borrowed) of the session's ACK: one DELIVERED receipt per sender
 * user of the deleted entries (server-made entries are not acknowledged in turn). */
void cs_receipts_acked(cs_session *s, const sp_frame *acked);
/* Called once every append of a receipt has answered: SP_OK when the receipt is stored
 * for every device of the user, else the first error. On the loop thread, possibly from
 * inside cs_receipts_queue (an error found before any append). */
typedef void (*cs_receipts_done_fn)(void *arg, int rc);

/* Queues a receipt envelope from (user, device) to every device of `to_user`. msg_ids are
 * borrowed for the call. `done` (may be NULL) hears the outcome. */
void cs_receipts_queue(cs_server *srv, uint64_t from_user, uint64_t from_device, uint64_t to_user,
		       unsigned etype, const sp_bin *msg_ids, uint32_t n, cs_receipts_done_fn done,
		       void *arg);

#endif
