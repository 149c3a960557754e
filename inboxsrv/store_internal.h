/*
 * Names shared by the files of the inbox store, not by the rest of inboxsrv:
 *   store.c          open/close, transactions, apply (the op dispatch), small records
 *   store_append.c   APPEND ops: dedup lookups, caps, log and TTL records
 *   store_ack.c      entries leaving: ACK, PURGE, the TTL sweep, the collector
 *   store_read.c     FETCH, STAT, LAST_SEQS and shard figures, in read transactions
 *   store_rebuild.c  the in-memory dedup and queue indexes, rebuilt at open
 * (blob.c, the blob ops, uses internal.h only.)
 */
#ifndef INBOX_STORE_INTERNAL_H
#define INBOX_STORE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "internal.h"
#include "sp_error.h"
#include "store.h"

/* Queue entry (log value): header, then ct bytes, then the envelope or (shared) the body
 * id. */
#define Q_FLAG_GROUP 0x1
#define Q_FLAG_SHARED 0x2
enum {
	QH_FLAGS = 0, /* u32 */
	QH_CT_LEN = 4, /* u32 */
	QH_ENV_LEN = 8, /* u32: envelope or body length */
	QH_TS = 16, /* u64 store time */
	QH_SERVER_TS = 24, /* u64 */
	QH_FROM_USER = 32, /* u64 */
	QH_FROM_DEVICE = 40, /* u64 */
	QH_ETYPE = 48, /* u64 */
	QH_GROUP = 56, /* u64 */
	QH_MSG_ID = 64, /* 16 bytes */
	QH_DEVICE = 80, /* u64 */
	QH_SEQ = 88, /* u64 */
	QH_SIZE = 96
};

#define LKEY_LEN 8 /* log DB: entry id = lsn << TARGET_BITS | target index */
#define TARGET_BITS 13 /* > log2 of the most targets of one op (5120) */
#define TKEY_LEN 24 /* ttl DB: ts, device, seq */
#define TVAL_LEN 24 /* ttl DB: from_device, msg_id */

static inline void
inbox_log_key(uint8_t k[LKEY_LEN], uint64_t id)
{
	sp_be64_put(k, id);
}

static inline void
inbox_ttl_key(uint8_t k[TKEY_LEN], uint64_t ts, uint64_t device, uint64_t seq)
{
	sp_be64_put(k, ts);
	sp_be64_put(k + 8, device);
	sp_be64_put(k + 16, seq);
}

/* The fingerprint of a TTL record (key k, value v). */
static inline uint64_t
inbox_ttl_fp(const inbox_store *s, const uint8_t *k, const uint8_t *v)
{
	return inbox_dedup_fp(s->dx, sp_be64_get(k + 8), inbox_le64_get(v), v + 8);
}

static inline int
inbox_entry_check(const MDB_val *v)
{
	if (v->mv_size < QH_SIZE)
		return SP_ESTORE;
	const uint8_t *p = v->mv_data;
	uint32_t flags = inbox_le32_get(p + QH_FLAGS), ct_len = inbox_le32_get(p + QH_CT_LEN);
	size_t payload = (flags & Q_FLAG_SHARED) ? 8 : inbox_le32_get(p + QH_ENV_LEN);
	return v->mv_size == QH_SIZE + (size_t)ct_len + payload ? SP_OK : SP_ESTORE;
}

/* Envelope/body + ct bytes of an entry: what counts against the device's byte cap. */
static inline uint64_t
inbox_entry_bytes(const uint8_t *p)
{
	return (uint64_t)inbox_le32_get(p + QH_CT_LEN) + inbox_le32_get(p + QH_ENV_LEN);
}

/* The shared body an entry refers to, or 0 if it carries its envelope. */
static inline uint64_t
inbox_entry_body(const MDB_val *v)
{
	const uint8_t *p = v->mv_data;
	if (inbox_le32_get(p + QH_FLAGS) & Q_FLAG_SHARED)
		return inbox_le64_get(p + v->mv_size - 8);
	return 0;
}

/* ---- store.c ---- */

/* A little-endian u64 record of `dbi` (absent: 0). SP_OK or an inbox_lmdb_err code. */
int inbox_store_get_u64(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t klen, uint64_t *v);
int inbox_store_put_u64(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t klen, uint64_t v);

/* Adds `delta` to the shard-wide counter `name` of the meta DB (floored at 0). */
int inbox_store_count_add(inbox_store *s, MDB_txn *txn, const char *name, int64_t delta);

/* The log record of entry (device, seq) at log id `id`, in `txn`: SP_OK, SP_ENOTFOUND, or
 * SP_ESTORE if the record is not that entry. `val` points into the map. */
int inbox_store_log_entry(
    inbox_store *s, MDB_txn *txn, uint64_t id, uint64_t device, uint64_t seq, MDB_val *val);

/* ---- the ops, applied by inbox_store_apply with the op's LSN decided ---- */

int inbox_store_apply_append(inbox_store *s, MDB_txn *txn, inbox_op *op, uint64_t lsn);
int inbox_store_apply_ack(inbox_store *s, MDB_txn *txn, inbox_op *op);
int inbox_store_apply_purge(inbox_store *s, MDB_txn *txn, inbox_op *op);
int inbox_store_apply_sweep(inbox_store *s, MDB_txn *txn, inbox_op *op);

/* ---- store_rebuild.c ---- */

/* Builds s->dx and s->qx from the committed TTL, dev and log tables (at open). */
int inbox_store_rebuild(inbox_store *s);

#endif
