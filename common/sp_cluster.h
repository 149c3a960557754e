/*
 * Member side of the cluster map (docs/ROUTER.md).
 *
 * Every server (connsrv, inboxsrv, keysrv) runs one sp_cluster: a background thread that
 * heartbeats the router every second (HEARTBEAT {name, role, conns}, answered with the
 * MAP), subscribes to the router's published MAPs, and installs each map with a higher
 * epoch as an immutable, reference-counted snapshot. When the router is unreachable the
 * last map stays installed (the data path keeps working on it) and the thread keeps
 * trying; a restarted router is picked up by the next heartbeat.
 *
 * Snapshots are swapped under a mutex and counted atomically, so any thread (e.g. a
 * libevent loop) may hold one while the cluster thread installs the next.
 */
#ifndef SP_CLUSTER_H
#define SP_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sp_frame.h"
#include "sp_ring.h"

/* Member roles as they travel in frames. */
#define SP_ROLE_CONNSRV 1
#define SP_ROLE_INBOX 2
#define SP_ROLE_KEYSRV 3

#define SP_CLUSTER_HEARTBEAT_MS 1000
/* keysrv copies a reader goes round (more are ignored). */
#define SP_CLUSTER_MAX_KEYSRV 16
/* Routers one member heartbeats and subscribes to. */
#define SP_CLUSTER_MAX_ROUTERS 8

/* "connsrv", "inbox", "keysrv", or "?" for anything else. */
const char *sp_cluster_role_name(int role);

/* The role of a name above, or -1. */
int sp_cluster_role_parse(const char *name);

/* One member as the router last described it. Strings live as long as the snapshot;
 * host is "" and port 0 for members without a client listener (all but connsrv). */
typedef struct sp_cluster_member {
	const char *name;
	int role;
	const char *addr; /* NNG address other servers use to reach it */
	const char *host; /* connsrv: client TLS listener */
	uint16_t port;
	uint32_t shard; /* inbox: shard number; members sharing one are the shard's copies */
	bool healthy;
	bool draining;
	uint64_t conns; /* as of the map's epoch: not refreshed between epochs */
	/* Inbox copies, as the router last read etcd (all false/0 when it does not mirror
	 * etcd): */
	bool primary;  /* holds the shard's leader key */
	bool in_sync;  /* in the shard's sync set */
	uint64_t lsn;  /* flushed LSN it last published (as of the map's epoch, like conns) */
	uint64_t epoch; /* the shard's epoch */
} sp_cluster_member;

typedef struct sp_cluster_map sp_cluster_map;

/* Builds a snapshot from a decoded MAP frame (strings are copied: the frame may go away).
 * Duplicate names, a port above 65535 or a shard above UINT32_MAX are SP_EPROTO.
 * On SP_OK *out holds one reference, released with sp_cluster_map_put. */
int sp_cluster_map_from_frame(const sp_frame *map, sp_cluster_map **out);

/* Reference counting: get/put may be called from any thread. put(NULL) does nothing. */
sp_cluster_map *sp_cluster_map_hold(sp_cluster_map *m);
void sp_cluster_map_put(sp_cluster_map *m);

uint64_t sp_cluster_map_epoch(const sp_cluster_map *m);
size_t sp_cluster_map_count(const sp_cluster_map *m);
/* i < count; the pointer lives as long as the snapshot. */
const sp_cluster_member *sp_cluster_map_member(const sp_cluster_map *m, size_t i);
/* NULL when no member has that name. */
const sp_cluster_member *sp_cluster_map_find(const sp_cluster_map *m, const char *name);

/* The ring over every inbox *shard* (healthy or not, so that ownership does not move while
 * a shard is briefly down), SP_RING_DEFAULT_VNODES points each, epoch = the map's. A
 * shard's point name is "inbox-<shard>", whatever its copies are called: adding or
 * removing a copy moves no device, and a one-copy cluster whose members are named
 * inbox-0, inbox-1, ... with shards 0, 1, ... keeps the ownership it had when the ring was
 * over member names. Ring index i is the i-th shard in ascending number. */
const sp_ring *sp_cluster_map_ring(const sp_cluster_map *m);

/* The copy to send a device's queue / a blob id requests to: the owning shard's target
 * (sp_cluster_map_shard_target); NULL when there is no inbox member in the map. */
const sp_cluster_member *sp_cluster_map_shard_for(const sp_cluster_map *m, uint64_t device_id);
const sp_cluster_member *sp_cluster_map_shard_for_key(const sp_cluster_map *m, const void *key,
						      size_t len);

/* The number of the shard that owns a device / a blob id: SP_OK, or SP_ENOTFOUND when the
 * map has no inbox member. */
int sp_cluster_map_shard_of(const sp_cluster_map *m, uint64_t device_id, uint32_t *shard);
int sp_cluster_map_shard_of_key(const sp_cluster_map *m, const void *key, size_t len,
				uint32_t *shard);

/* Inbox shards in the map, and the i-th one's number (ascending; i < count). */
size_t sp_cluster_map_shard_count(const sp_cluster_map *m);
uint32_t sp_cluster_map_shard_num(const sp_cluster_map *m, size_t i);

/* A shard's target: its primary as the map says; with none named, its first healthy copy
 * in name order; with none healthy, its first copy. NULL for a shard not in the map. */
const sp_cluster_member *sp_cluster_map_shard_target(const sp_cluster_map *m, uint32_t shard);

/* A shard's copies in name order: up to `cap` pointers into `out`; returns how many
 * copies the shard has (0: no such shard), which may exceed cap. */
size_t sp_cluster_map_shard_copies(const sp_cluster_map *m, uint32_t shard,
				   const sp_cluster_member **out, size_t cap);

/* The keysrv copy to send a request to: the one the map names primary (holder of the key
 * store's leader key); with none, the first healthy keysrv in map order; with none healthy,
 * the first. NULL when the map has no keysrv. */
const sp_cluster_member *sp_cluster_map_keysrv_target(const sp_cluster_map *m);

/* The keysrv copy to send a read that tolerates bounded staleness to, attempt `attempt`
 * (0: the first): attempt 0 goes to the target; later ones go round the other healthy
 * copies, in-sync ones first, then back to the target (a replica refuses what it may not
 * serve: docs/REPLICATION.md "Reads on key store replicas"). NULL without keysrv. */
const sp_cluster_member *sp_cluster_map_keysrv_reader(const sp_cluster_map *m, unsigned attempt);

typedef struct sp_cluster sp_cluster;

/* Starts the cluster thread. router_url: the router's REP address (listen); pub_url: its
 * PUB address (publish). Either may be a comma-separated list (up to
 * SP_CLUSTER_MAX_ROUTERS), for several routers sharing their map through etcd: the member
 * heartbeats every router in turn each period (a router that did not answer last time is
 * given DOWN_CALL_TIMEOUT_MS, 250 ms), subscribes to every PUB address, and installs
 * whichever map is newest, from whichever router. self_name/self_role: this member, as named in the router's cluster
 * file; with self_name NULL the process is an observer that polls MAP_GET instead of
 * heartbeating. Returns at once (the router need not be up). On SP_OK *out is the
 * caller's, ended with sp_cluster_stop. tls+tcp:// URLs are dialled with the process's
 * internal TLS identity (sp_nng_tls_init). SP_EINVAL for a missing URL, an empty item in a
 * list, too many routers, or an empty or too long (over 64 bytes) name. */
int sp_cluster_start(const char *router_url, const char *pub_url, const char *self_name,
		     int self_role, sp_cluster **out);

/* Waits until a map is installed: SP_OK, or SP_ETIMEDOUT after timeout_ms. */
int sp_cluster_wait_map(sp_cluster *c, int timeout_ms);

/* The connection count sent in the next heartbeats. Any thread. */
void sp_cluster_set_conns(sp_cluster *c, uint64_t conns);

/* Sets the callback run on the cluster thread after each new map is installed (NULL
 * removes it). It must not call sp_cluster_stop. A map installed before the callback was
 * set is not replayed: read sp_cluster_map_get after setting it. */
void sp_cluster_on_change(sp_cluster *c, void (*cb)(void *arg), void *arg);

/* The current snapshot with a reference the caller releases with sp_cluster_map_put, or
 * NULL before the first map. */
sp_cluster_map *sp_cluster_map_get(sp_cluster *c);

/* Stops and joins the thread, closes the sockets and frees everything (snapshots still
 * held by callers stay valid until they are put). NULL does nothing. */
void sp_cluster_stop(sp_cluster *c);

#endif
