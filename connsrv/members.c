/* Addresses of other servers, read from the current cluster map snapshot. */
#include <stdio.h>
#include <string.h>

#include "connsrv/internal.h"
#include "sp_error.h"

static int
copy_addr(sp_cluster_map *m, const sp_cluster_member *mem, char *buf, size_t cap)
{
	int rc = SP_EUNAVAIL;
	if (mem && (size_t)snprintf(buf, cap, "%s", mem->addr) < cap)
		rc = SP_OK;
	sp_cluster_map_put(m);
	return rc;
}

int
cs_members_shard_url(cs_server *srv, uint64_t device, char *buf, size_t cap)
{
	sp_cluster_map *m = sp_cluster_map_get(srv->cluster);
	if (!m)
		return SP_EUNAVAIL;
	return copy_addr(m, sp_cluster_map_shard_for(m, device), buf, cap);
}

int
cs_members_blob_url(cs_server *srv, const uint8_t *blob_id, size_t len, char *buf,
		    size_t cap)
{
	sp_cluster_map *m = sp_cluster_map_get(srv->cluster);
	if (!m)
		return SP_EUNAVAIL;
	return copy_addr(m, sp_cluster_map_shard_for_key(m, blob_id, len), buf, cap);
}
