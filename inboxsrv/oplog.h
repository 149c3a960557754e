/*
 * The replication record of one applied inbox op (issue 12, rule 6: effects, not
 * requests). The primary encodes an op after inbox_store_apply() assigned its values (LSN,
 * timestamp, seqs, body id) and the per-target outcome (stored, duplicate of seq S, queue
 * full); a replica decodes it, applies it with those values (apply refuses a different
 * LSN, seq or body id with SP_EMISMATCH) and then checks that its outcome is the
 * recorded one, so every copy holds the same queues, seqs and dedup records or stops.
 *
 * Layout (big-endian): u8 version (1), u8 kind, u64 lsn, u64 ts, then per kind:
 *   APPEND        msg_id[16] from_user from_device server_ts etype group (u64 each)
 *                 u8 flags (1: has_group, 2: shared) u64 body_id u32 body_len body
 *                 u32 ntargets, each: u64 device u64 seq u8 outcome (0 stored, 1 dup,
 *                 2 full) u32 ct_len ct
 *   ACK           u64 device u64 upto_seq u32 nseqs u64 seqs[nseqs]
 *   PURGE         u64 device
 *   SWEEP         u32 limit
 *   BLOB_PUT      blob_id[16] u64 offset u32 len bytes
 *   BLOB_DONE     blob_id[16] u64 size sha256[32] u32 ndevices u64 devices[ndevices]
 *   BLOB_FETCHED  blob_id[16] u64 device
 * A record comes from another server: decoding bounds every count and length by the bytes
 * present and the limits below, and refuses trailing bytes.
 */
#ifndef INBOX_OPLOG_H
#define INBOX_OPLOG_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define INBOX_OPLOG_VERSION 1
/* The most targets the store applies in one op (fewer than 1 << TARGET_BITS): a record
 * with more could never be replayed. */
#define INBOX_OPLOG_MAX_TARGETS 8191
#define INBOX_OPLOG_MAX_LIST 65536 /* ACK seqs, BLOB_DONE devices */

/* Bytes inbox_oplog_encode will write for `op`. */
size_t inbox_oplog_size(const inbox_op *op);

/* Encodes applied op `op` (op->lsn != 0) into buf (cap >= inbox_oplog_size(op)). Returns
 * the length, or SP_ETOOBIG / SP_EINVAL. */
long inbox_oplog_encode(const inbox_op *op, uint8_t *buf, size_t cap);

/* A decoded record: `op` borrows from the record bytes (which must outlive it) and from
 * the arrays held here; `outcome[i]` is target i's recorded outcome. Free with
 * inbox_oplog_fini (also after a failed decode). */
typedef struct inbox_oplog_rec {
	inbox_op op;
	inbox_target *targets;
	uint8_t *outcome;
	uint64_t *seqs; /* each target's recorded seq */
	uint64_t *list; /* ACK seqs or BLOB_DONE devices, host order */
} inbox_oplog_rec;

/* SP_OK, SP_EMALFORMED (bad version, kind, flag, outcome, trailing bytes), SP_ETRUNC,
 * SP_ETOOBIG (a count past the limits), SP_ENOMEM. The op is ready for
 * inbox_store_apply() with its recorded LSN, timestamp, seqs and body id. */
int inbox_oplog_decode(const uint8_t *p, size_t len, inbox_oplog_rec *out);
void inbox_oplog_fini(inbox_oplog_rec *rec);

/* After applying rec->op on a replica: SP_OK if the op was applied (rec->op.rc is SP_OK)
 * and each target's outcome (stored / duplicate / full, and its seq) is the recorded one,
 * else SP_EMISMATCH. */
int inbox_oplog_check(const inbox_oplog_rec *rec);

#endif
