/* Stored replies of deduplicated writes (replies.h). */
#include <msgpack.h>

#include "replies.h"
#include "sp_error.h"
#include "store.h"

int
keys_replies_replay(keys_req *r, MDB_txn *txn, unsigned type)
{
	sp_bin id = sp_frame_bin(r->in, SP_F_REQ_ID);
	if (id.len != KEYS_REQ_ID_LEN)
		return SP_ENOTFOUND;
	uint8_t *buf = keys_arena_alloc(&r->arena, KEYS_REPLY_MAX);
	size_t len = 0;
	if (!buf)
		return SP_ENOMEM;
	int rc = keys_reply_get(r->ctx->store, txn, r->device, id.p, r->ctx->now_ms(), buf,
	    KEYS_REPLY_MAX, &len);
	if (rc)
		return rc;
	/* The packed reply lives in the arena, which outlives r->out. */
	if ((rc = sp_frame_decode(buf, len, &r->out)) || r->out.type != type) {
		sp_frame_fini(&r->out);
		return rc ? rc : SP_ESTORE;
	}
	r->out.id = r->in->id;
	r->out.has_id = r->in->has_id;
	sp_metric_inc(r->ctx->m_replayed);
	return SP_OK;
}

int
keys_replies_store(keys_req *r, MDB_txn *txn)
{
	sp_bin id = sp_frame_bin(r->in, SP_F_REQ_ID);
	if (id.len != KEYS_REQ_ID_LEN)
		return SP_OK;
	sp_frame f = r->out;
	f.has_id = false;
	f.id = 0;
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	int rc = sp_frame_pack(&f, &sb);
	if (rc == SP_OK)
		rc = keys_reply_put(r->ctx->store, txn, r->device, id.p,
		    r->ctx->now_ms() + KEYS_REPLY_TTL_MS, (const uint8_t *)sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
	return rc;
}
