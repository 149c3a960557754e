/* Test-only: whether two inbox ops carry the same replicated values (what an oplog record
 * holds: kind, LSN, timestamp and each kind's inputs and assigned values), byte for byte
 * where they point at bytes. Results that apply fills in (ACK refs, sweep counts, ...) and
 * target outcomes are not compared. Header-only, for the unit test and the fuzz target. */
#ifndef TESTS_OPLOG_CMP_H
#define TESTS_OPLOG_CMP_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "inboxsrv/store.h"

static inline bool
oplog_cmp_bytes(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen)
{
	return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static inline bool
oplog_cmp_list(const uint64_t *a, const uint64_t *b, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return false;
	return true;
}

/* Equal replicated values. With `seqs`, every target's seq is compared too (a decoded op
 * keeps only its stored targets' seqs: compare seqs of two decodings, or of an applied op
 * and the record's rec->seqs separately). */
static inline bool
oplog_cmp_op(const inbox_op *a, const inbox_op *b, bool seqs)
{
	if (a->kind != b->kind || a->lsn != b->lsn || a->ts != b->ts)
		return false;
	switch (a->kind) {
	case INBOX_OP_APPEND: {
		const __typeof__(a->append) *x = &a->append, *y = &b->append;
		if (memcmp(x->msg_id, y->msg_id, INBOX_MSG_ID_LEN) || x->from_user != y->from_user
		    || x->from_device != y->from_device || x->server_ts != y->server_ts
		    || x->etype != y->etype || x->group != y->group || x->has_group != y->has_group
		    || x->shared != y->shared || x->body_id != y->body_id
		    || !oplog_cmp_bytes(x->body, x->body_len, y->body, y->body_len)
		    || x->ntargets != y->ntargets)
			return false;
		for (uint32_t i = 0; i < x->ntargets; i++) {
			const inbox_target *s = &x->targets[i], *t = &y->targets[i];
			if (s->device != t->device || (seqs && s->seq != t->seq)
			    || !oplog_cmp_bytes(
			        s->ct, s->ct ? s->ct_len : 0, t->ct, t->ct ? t->ct_len : 0))
				return false;
		}
		return true;
	}
	case INBOX_OP_ACK:
		return a->ack.device == b->ack.device && a->ack.upto_seq == b->ack.upto_seq
		    && a->ack.nseqs == b->ack.nseqs
		    && oplog_cmp_list(a->ack.seqs, b->ack.seqs, a->ack.nseqs);
	case INBOX_OP_PURGE:
		return a->purge.device == b->purge.device;
	case INBOX_OP_SWEEP:
		return a->sweep.limit == b->sweep.limit;
	case INBOX_OP_BLOB_PUT:
		return memcmp(a->blob_put.blob_id, b->blob_put.blob_id, INBOX_BLOB_ID_LEN) == 0
		    && a->blob_put.offset == b->blob_put.offset
		    && oplog_cmp_bytes(
		        a->blob_put.bytes, a->blob_put.len, b->blob_put.bytes, b->blob_put.len);
	case INBOX_OP_BLOB_DONE:
		return memcmp(a->blob_done.blob_id, b->blob_done.blob_id, INBOX_BLOB_ID_LEN) == 0
		    && a->blob_done.size == b->blob_done.size
		    && memcmp(a->blob_done.sha256, b->blob_done.sha256, INBOX_SHA256_LEN) == 0
		    && a->blob_done.ndevices == b->blob_done.ndevices
		    && oplog_cmp_list(
		        a->blob_done.devices, b->blob_done.devices, a->blob_done.ndevices);
	case INBOX_OP_BLOB_FETCHED:
		return memcmp(a->blob_fetched.blob_id, b->blob_fetched.blob_id, INBOX_BLOB_ID_LEN)
		    == 0
		    && a->blob_fetched.device == b->blob_fetched.device;
	default:
		return false;
	}
}

#endif
