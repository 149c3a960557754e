/* Forwarding of keysrv and media frames (see proxy.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "connsrv/proxy.h"
#include "connsrv/revoke.h"
#include "sp_error.h"
#include "sp_log.h"

typedef struct proxy_op {
	cs_session *s;
	uint64_t id;
	bool has_id;
	unsigned type;
	uint64_t device; /* REMOVE_DEVICE */
} proxy_op;

static void
unset(sp_frame *f, sp_field fld)
{
	int slot = sp_frame_slot(f->type, fld);
	if (slot >= 0)
		f->present &= ~(1u << slot);
}

static void
purge_done(void *arg, int rc, const sp_frame *reply)
{
	(void)reply;
	uint64_t *device = arg;
	if (rc)
		sp_warn("purge of removed device %llu failed: %s", (unsigned long long)*device,
			sp_strerror(rc));
	free(device);
}

/* A removed device loses its queue at once, and its connection wherever it is. */
static void
after_remove(cs_server *srv, uint64_t user, uint64_t device)
{
	char url[256];
	uint64_t *arg = malloc(sizeof(*arg));
	cs_devcache_forget(srv, user);
	if (arg && cs_members_shard_url(srv, device, url, sizeof(url)) == SP_OK) {
		*arg = device;
		sp_frame q;
		sp_frame_init(&q, SP_T_PURGE, 0, false);
		sp_frame_set_u64(&q, SP_F_DEVICE, device);
		if (cs_shardcall_devices(srv->shards, url, &device, 1, &q, purge_done, arg) == SP_OK)
			arg = NULL;
	}
	free(arg);
	cs_revoke_device(srv, device);
}

static void
on_reply(void *arg, int rc, const sp_frame *reply)
{
	proxy_op *op = arg;
	cs_session *s = op->s;
	if (!reply) {
		cs_session_error(s, op->id, op->has_id, rc == SP_ETIMEDOUT ? SP_EUNAVAIL : rc,
				 "service unavailable, retry", NULL);
	} else if (reply->type == SP_T_BLOB_DATA) {
		sp_frame d;
		sp_frame_init(&d, SP_T_MEDIA_DATA, op->id, op->has_id);
		sp_bin id = sp_frame_bin(reply, SP_F_BLOB_ID), bytes = sp_frame_bin(reply, SP_F_BYTES);
		sp_frame_set_bin(&d, SP_F_BLOB_ID, id.p, id.len);
		sp_frame_set_u64(&d, SP_F_OFFSET, sp_frame_u64(reply, SP_F_OFFSET));
		sp_frame_set_bin(&d, SP_F_BYTES, bytes.p, bytes.len);
		sp_frame_set_u64(&d, SP_F_SIZE, sp_frame_u64(reply, SP_F_SIZE));
		cs_session_send(s, &d);
	} else {
		sp_frame r = *reply;
		r.id = op->id;
		r.has_id = op->has_id;
		r.zone = NULL;
		cs_session_send(s, &r);
		if (rc == SP_OK && reply->type == SP_T_DEVICE_REMOVED)
			after_remove(s->srv, sp_frame_u64(reply, SP_F_USER), sp_frame_u64(reply, SP_F_DEVICE));
		else if (rc == SP_OK && reply->type == SP_T_VERIFIED) {
			/* Registering again revokes the account's old devices: drop their queues. */
			const sp_val *old = sp_frame_get(reply, SP_F_DEVICES);
			uint64_t user = sp_frame_u64(reply, SP_F_USER);
			cs_devcache_forget(s->srv, user);
			for (uint32_t i = 0; old && i < old->us.n; i++)
				after_remove(s->srv, user, old->us.v[i]);
		}
	}
	cs_session_call_end(s);
	free(op);
}

/* Sends `q` (the client's frame `f` rewritten) and relays the reply. A media frame (`blob`
 * set) goes to the blob's shard at `url`; a keysrv frame (url NULL) to the key store's
 * primary (a device list may come from a fresh replica). Both are retried through a
 * failover. */
static void
forward(cs_session *s, const sp_frame *f, int rc, const char *url, const sp_frame *q,
	const sp_bin *blob)
{
	proxy_op *op = rc ? NULL : malloc(sizeof(*op));
	if (rc || !op) {
		cs_session_error(s, f->id, f->has_id, rc ? rc : SP_ENOMEM, "service unavailable, retry",
				 NULL);
		return;
	}
	op->s = s;
	op->id = f->id;
	op->has_id = f->has_id;
	op->type = f->type;
	cs_session_call_begin(s);
	rc = blob ? cs_shardcall_blob(s->srv->shards, url, blob->p, blob->len, q, on_reply, op)
		  : cs_shardcall_keysrv(s->srv->shards, q->type == SP_T_DEVICES_GET, q, on_reply, op);
	if (rc) {
		cs_session_error(s, f->id, f->has_id, rc, "bad request", NULL);
		cs_session_call_end(s);
		free(op);
	}
}

void
cs_proxy_media(cs_session *s, const sp_frame *f, const uint8_t *raw, size_t len)
{
	(void)raw;
	(void)len;
	char url[256];
	sp_frame q;
	sp_bin id = sp_frame_bin(f, SP_F_BLOB_ID);
	int rc = cs_members_blob_url(s->srv, id.p, id.len, url, sizeof(url));
	sp_frame_init(&q, f->type == SP_T_MEDIA_PUT    ? SP_T_BLOB_PUT
			  : f->type == SP_T_MEDIA_DONE ? SP_T_BLOB_DONE
						       : SP_T_BLOB_GET,
		      0, false);
	static const sp_field media[] = {SP_F_BLOB_ID, SP_F_OFFSET, SP_F_BYTES, SP_F_SIZE,
					 SP_F_SHA256,  SP_F_DEVICES, SP_F_LEN};
	for (size_t i = 0; i < sizeof(media) / sizeof(media[0]); i++) {
		const sp_val *v = sp_frame_get(f, media[i]);
		int slot = sp_frame_slot(q.type, media[i]);
		if (v && slot >= 0) {
			q.v[slot] = *v;
			q.present |= 1u << slot;
		}
	}
	if (f->type == SP_T_MEDIA_GET)
		sp_frame_set_u64(&q, SP_F_DEVICE, s->device);
	forward(s, f, rc, url, &q, &id);
}

void
cs_proxy_keysrv(cs_session *s, const sp_frame *f)
{
	char host[64];
	uint8_t req_id[16];
	sp_frame q = *f;
	q.zone = NULL; /* arrays stay owned by f */
	q.has_id = false;
	unset(&q, SP_F_AUTH_USER);
	unset(&q, SP_F_AUTH_DEVICE);
	unset(&q, SP_F_SOURCE);
	unset(&q, SP_F_REQ_ID);
	/* A write that is not idempotent, retried after a failover, must get the first answer
	 * (the same one-time prekeys, the same new group): keysrv keeps the reply under this
	 * id (keysrv/replies.h; it lives in q until forward packs it). */
	if (q.type == SP_T_BUNDLE_GET || q.type == SP_T_GROUP_CREATE) {
		randombytes_buf(req_id, sizeof(req_id));
		sp_frame_set_bin(&q, SP_F_REQ_ID, req_id, sizeof(req_id));
	}
	if (s->st == CS_ST_READY) {
		sp_frame_set_u64(&q, SP_F_AUTH_USER, s->user);
		sp_frame_set_u64(&q, SP_F_AUTH_DEVICE, s->device);
	}
	/* The address without the port: rate limits are per client host. (host lives until
	 * the frame is packed in forward: the frame borrows it.) */
	snprintf(host, sizeof(host), "%s", s->peer);
	char *colon = strrchr(host, ':');
	if (colon)
		*colon = '\0';
	sp_frame_set_str(&q, SP_F_SOURCE, host);
	forward(s, f, SP_OK, NULL, &q, NULL);
}
