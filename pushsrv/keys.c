/* Key store calls (see keys.h). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pushsrv/keys.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"

struct ps_keys {
	sp_cluster *cluster;
	int timeout_ms;
	bool open;
	nng_socket sock;
	char url[256]; /* where sock dials */
};

int
ps_keys_new(sp_cluster *cluster, int timeout_ms, ps_keys **out)
{
	ps_keys *k = calloc(1, sizeof(*k));
	if (!k)
		return SP_ENOMEM;
	k->cluster = cluster;
	k->timeout_ms = timeout_ms;
	*out = k;
	return SP_OK;
}

static void
close_sock(ps_keys *k)
{
	if (k->open)
		nng_close(k->sock);
	k->open = false;
	k->url[0] = '\0';
}

void
ps_keys_free(ps_keys *k)
{
	if (!k)
		return;
	close_sock(k);
	free(k);
}

/* A socket to the key store primary of the newest map. */
static int
target(ps_keys *k)
{
	sp_cluster_map *m = sp_cluster_map_get(k->cluster);
	const sp_cluster_member *t = m ? sp_cluster_map_keysrv_target(m) : NULL;
	int rc = SP_OK;
	if (!t || !t->addr || strlen(t->addr) >= sizeof(k->url)) {
		rc = SP_EUNAVAIL;
	} else if (!k->open || strcmp(t->addr, k->url) != 0) {
		close_sock(k);
		if ((rc = sp_nng_req_open(&k->sock, t->addr, k->timeout_ms, 0)) == SP_OK) {
			k->open = true;
			snprintf(k->url, sizeof(k->url), "%s", t->addr);
		}
	}
	sp_cluster_map_put(m);
	return rc;
}

/* One call; on SP_OK the caller finalises *rep and frees *msg. */
static int
call(ps_keys *k, const sp_frame *req, nng_msg **msg, sp_frame *rep)
{
	int rc = target(k);
	if (rc)
		return rc;
	rc = sp_nng_call(k->sock, req, msg, rep);
	if (rc && *msg) {
		sp_frame_fini(rep);
		nng_msg_free(*msg);
		*msg = NULL;
	}
	/* A copy that stopped answering, or is no longer primary: dial the map's next time. */
	if (rc == SP_ETIMEDOUT || rc == SP_ENOTPRIMARY || rc == SP_ECLOSED)
		close_sock(k);
	return rc;
}

int
ps_keys_token(ps_keys *k, uint64_t device, char platform[PS_KEYS_PLATFORM_MAX],
	      char token[PS_KEYS_TOKEN_MAX])
{
	sp_frame q, rep;
	nng_msg *msg = NULL;
	platform[0] = token[0] = '\0';
	sp_frame_init(&q, SP_T_PUSH_TOKEN_GET, 0, false);
	sp_frame_set_u64(&q, SP_F_DEVICE, device);
	int rc = call(k, &q, &msg, &rep);
	if (rc)
		return rc;
	if (rep.type != SP_T_PUSH_TOKEN_R || sp_frame_u64(&rep, SP_F_DEVICE) != device)
		rc = SP_EPROTO;
	else if (sp_frame_has(&rep, SP_F_PUSH_PLATFORM) &&
		 (sp_frame_str(&rep, SP_F_PUSH_PLATFORM, platform, PS_KEYS_PLATFORM_MAX) ||
		  sp_frame_str(&rep, SP_F_PUSH_TOKEN, token, PS_KEYS_TOKEN_MAX)))
		rc = SP_EPROTO;
	if (rc)
		platform[0] = token[0] = '\0';
	sp_frame_fini(&rep);
	nng_msg_free(msg);
	return rc;
}

int
ps_keys_drop(ps_keys *k, uint64_t device, const char *platform, const char *token)
{
	sp_frame q, rep;
	nng_msg *msg = NULL;
	sp_frame_init(&q, SP_T_PUSH_DROP, 0, false);
	sp_frame_set_u64(&q, SP_F_DEVICE, device);
	sp_frame_set_str(&q, SP_F_PUSH_PLATFORM, platform);
	sp_frame_set_str(&q, SP_F_PUSH_TOKEN, token);
	int rc = call(k, &q, &msg, &rep);
	if (rc)
		return rc;
	sp_frame_fini(&rep);
	nng_msg_free(msg);
	return SP_OK;
}
