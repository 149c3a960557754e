/* What repl/ha.c and repl/ha_loop.c share: the repl_ha object itself. */
#ifndef REPL_HA_INTERNAL_H
#define REPL_HA_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "repl/ha.h"

#define REPL_HA_KEY_MAX 256 /* "/sealpost/<cluster>/<group>/copies/<name>" and a NUL */

struct repl_ha {
	sp_etcd *etcd;      /* the owning thread's */
	sp_etcd *sync_etcd; /* repl_ha_sync_set's, under sync_mu */
	pthread_mutex_t sync_mu;
	char prefix[REPL_HA_KEY_MAX];
	size_t prefix_len;
	bool reader;        /* repl_ha_new_reader: reads and watches only */
	repl_ha_id self;
	char url[REPL_HA_URL_MAX + 1];
	int64_t ttl_s, keepalive_ms, margin_ms, defer_max_ms;

	/* Owning thread. */
	bool fresh;         /* a previous process's lease was looked for and revoked */
	int64_t lease;      /* 0: none */
	int64_t lease_until; /* send time of the last good grant/keepalive + granted TTL */
	bool published;     /* copies/<name> written under the current lease */
	repl_ha_status last_status;

	/* Read by any thread. */
	_Atomic int64_t serve_until; /* the fencing deadline while primary, else 0 */
	_Atomic int64_t leader_rev;  /* create revision of our leader key, 0: not primary */
	_Atomic int64_t epoch;       /* ours while primary, else 0 */
	atomic_bool step_down;       /* repl_ha_step_down: this term ends at the loop's next turn */

	/* The loop. */
	pthread_t thread;
	bool running;
	atomic_bool stop;
	repl_ha_callbacks cbs;
	pthread_mutex_t view_mu;
	bool have_view; /* loop_view is set (under view_mu) */
	repl_ha_view loop_view;
};

#endif
