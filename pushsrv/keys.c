/* Key store calls (see keys.h). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pushsrv/keys.h"
#include "sp_error.h"
#include "sp_log.h"
#include "sp_nng.h"

#define PUSH_URLS_MAX 16

struct ps_keys {
	sp_cluster *cluster;
	/* Copy name -> push listener URL (--keysrv-push), n_push entries. */
	struct {
		char name[64], url[256];
	} push[PUSH_URLS_MAX];
	size_t n_push;
	int timeout_ms;
	bool open;
	nng_socket sock;
	char url[256]; /* where sock dials */
};

/* Parses "NAME=URL[,NAME=URL...]" into k->push. */
static int
parse_push(ps_keys *k, const char *spec)
{
	for (const char *p = spec; *p;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *eq = memchr(p, '=', len);
		if (!eq || eq == p || (size_t)(eq - p) >= sizeof(k->push[0].name) ||
		    len - (size_t)(eq - p) - 1 == 0 || len - (size_t)(eq - p) - 1 >= sizeof(k->push[0].url) ||
		    k->n_push == PUSH_URLS_MAX)
			return SP_ECONFIG;
		memcpy(k->push[k->n_push].name, p, (size_t)(eq - p));
		memcpy(k->push[k->n_push].url, eq + 1, len - (size_t)(eq - p) - 1);
		k->n_push++;
		p += len + (end != NULL);
	}
	return k->n_push ? SP_OK : SP_ECONFIG;
}

int
ps_keys_new(sp_cluster *cluster, const char *push, int timeout_ms, ps_keys **out)
{
	ps_keys *k = calloc(1, sizeof(*k));
	if (!k)
		return SP_ENOMEM;
	if (push && parse_push(k, push)) {
		sp_error("pushsrv: --keysrv-push: want NAME=URL[,NAME=URL...] (at most %d)", PUSH_URLS_MAX);
		free(k);
		return SP_ECONFIG;
	}
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

/* Where to reach member `t`: its push listener when --keysrv-push names it; NULL when
 * the list is given but lacks it (its main listener would refuse the push role). */
static const char *
url_of(const ps_keys *k, const sp_cluster_member *t)
{
	if (!k->n_push)
		return t->addr;
	for (size_t i = 0; i < k->n_push; i++)
		if (t->name && strcmp(k->push[i].name, t->name) == 0)
			return k->push[i].url;
	sp_warn_rl("pushsrv: key store copy %s is not in --keysrv-push", t->name ? t->name : "?");
	return NULL;
}

/* A socket to the key store primary of the newest map. */
static int
target(ps_keys *k)
{
	sp_cluster_map *m = sp_cluster_map_get(k->cluster);
	const sp_cluster_member *t = m ? sp_cluster_map_keysrv_target(m) : NULL;
	const char *url = t && t->addr ? url_of(k, t) : NULL;
	int rc = SP_OK;
	if (!url || strlen(url) >= sizeof(k->url)) {
		rc = SP_EUNAVAIL;
	} else if (!k->open || strcmp(url, k->url) != 0) {
		close_sock(k);
		if ((rc = sp_nng_req_open(&k->sock, url, k->timeout_ms, 0)) == SP_OK) {
			k->open = true;
			snprintf(k->url, sizeof(k->url), "%s", url);
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
