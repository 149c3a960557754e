/* group: one sender, groups of each --group-sizes (members including the sender). Per
 * size, three phases on one event loop:
 *   store:  members offline; the sender sends --group-msgs SEND_GROUPs (window --window)
 *           and waits for every SENT. Reported: stored fan-out entries/s, and the shards'
 *           storage growth per group message (sum of sp_inbox_map_used_bytes over the
 *           shards' metrics), next to what storing the body once per member would take.
 *   drain:  every member logs in and drains its inbox; each checks it got all messages.
 *   online: members online, the sender sends for --duration s (closed loop); reported:
 *           member deliveries/s (fan-out), send -> SENT and send -> member latency.
 * Map growth is measured on a high-water mark (LMDB reuses freed pages), so run it on a
 * fresh cluster, smallest size first, for meaningful bytes (bench/run.sh does). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "bench/sb.h"
#include "client/spc_conn.h"
#include "sp_error.h"

#define MAX_SIZES 8
#define ONLINE_GRACE_S 15

enum { PH_SENDER, PH_STORE, PH_DRAIN, PH_ONLINE, PH_DONE };

typedef struct member {
	sb_conn c;
	sb_track seen;
	bool empty;
} member;

typedef struct size_res {
	int size;
	uint64_t group;
	double store_s, drain_s, online_s;
	uint64_t stored_msgs, drain_delivered, online_sent, online_delivered;
	double map_before, map_after, entries_before, entries_after;
	sb_hist lat_sent, lat_recv;
	uint64_t lost, dups;
} size_res;

static struct {
	sb_net net;
	sb_stats st;
	const sb_account *acc;
	sb_conn sender;
	member *m;
	int nsizes, k, phase;
	size_res res[MAX_SIZES];
	uint32_t run_id;
	uint32_t next_seq, store_end;
	int inflight;
	uint64_t unanswered;
	uint32_t *recv_cnt;
	size_t recv_cap;
	sb_track sent;
	size_t conns_next, members_empty;
	int conns_inflight;
	uint64_t t_phase, t_stop;
	bool stopping;
	uint8_t *buf;
	struct event *tick;
	int rc;
} G;

static void member_cb(sb_conn *c, int ev, const sp_frame *f);
static void next_phase(void);

static int
nmembers(void)
{
	return G.res[G.k].size - 1;
}

static void
send_one(void)
{
	sb_msg m = {G.run_id, (uint32_t)G.k, G.next_seq++, sb_now_ns()};
	uint8_t id[16];
	sb_payload_make(G.buf, (size_t)sb_o.size, &m);
	sb_msg_id(id, &m);
	sp_frame q;
	sp_frame_init(&q, SP_T_SEND_GROUP, m.seq, true);
	sp_frame_set_u64(&q, SP_F_GROUP, G.res[G.k].group);
	sp_frame_set_bin(&q, SP_F_MSG_ID, id, 16);
	sp_frame_set_u64(&q, SP_F_ETYPE, 7);
	sp_frame_set_bin(&q, SP_F_BODY, G.buf, (size_t)sb_o.size);
	if (sb_conn_send(&G.sender, &q) == SP_OK) {
		G.st.sent++;
		G.inflight++;
		G.unanswered++;
	}
}

static void
pump(void)
{
	if (G.phase == PH_STORE)
		while (G.inflight < sb_o.window && G.next_seq < G.store_end)
			send_one();
	else if (G.phase == PH_ONLINE && !G.stopping)
		while (G.inflight < sb_o.window)
			send_one();
}

static void
connect_members(void)
{
	while (G.conns_inflight < sb_o.concurrency && G.conns_next < (size_t)nmembers()) {
		size_t i = G.conns_next++;
		member *mb = &G.m[i];
		mb->c.tag = 0;
		mb->empty = false;
		if (sb_conn_start(&mb->c, &G.net, (int)(i % (size_t)sb_o.ntargets), &G.acc[1 + i], member_cb, mb) ==
		    SP_OK)
			G.conns_inflight++;
	}
}

static void
on_sender(sb_conn *c, int ev, const sp_frame *f)
{
	(void)c;
	if (ev == SB_EV_EMPTY && G.phase == PH_SENDER) {
		next_phase();
		return;
	}
	if (ev == SB_EV_CLOSED) {
		fprintf(stderr, "spbench: the group sender lost its connection\n");
		G.rc = SP_ECLOSED;
		event_base_loopexit(G.net.base, NULL);
		return;
	}
	if (ev != SB_EV_FRAME || (G.phase != PH_STORE && G.phase != PH_ONLINE))
		return;
	if (f->type == SP_T_DELIVER) {
		G.st.receipts += sp_frame_u64(f, SP_F_ETYPE) >= 10;
		return;
	}
	if ((f->type != SP_T_SENT && f->type != SP_T_ERROR) || !sp_frame_has(f, SP_F_MSG_ID))
		return;
	sb_msg m;
	sb_msg_from_id(sp_frame_bin(f, SP_F_MSG_ID).p, &m);
	G.unanswered--;
	uint64_t now = sb_now_ns();
	if (f->type == SP_T_SENT) {
		G.st.sent_ok++;
		sb_track_mark(&G.sent, m.seq);
		if (G.phase == PH_ONLINE)
			sb_hist_add(&G.res[G.k].lat_sent, (now - m.t_ns) / 1000);
	} else {
		char reason[128] = "";
		sp_frame_str(f, SP_F_REASON, reason, sizeof(reason));
		if (G.st.send_err++ < 5)
			fprintf(stderr, "spbench: SEND_GROUP: %s (%s)\n", sp_strerror((int)sp_frame_i64(f, SP_F_CODE)),
				reason);
	}
	if (G.phase == PH_STORE) {
		G.inflight--;
		if (G.unanswered == 0 && G.next_seq >= G.store_end) {
			G.res[G.k].store_s = (double)(now - G.t_phase) / 1e9;
			next_phase();
			return;
		}
	} else if (f->type == SP_T_ERROR) {
		G.inflight--;
	}
	pump();
}

static void
member_cb(sb_conn *c, int ev, const sp_frame *f)
{
	member *mb = c->user;
	if (ev == SB_EV_READY || (ev == SB_EV_CLOSED && !c->tag)) {
		c->tag = 1;
		G.conns_inflight--;
		connect_members();
		if (ev == SB_EV_CLOSED)
			G.members_empty++; /* counted as done; its messages count as lost */
		return;
	}
	if (ev == SB_EV_EMPTY && !mb->empty) {
		mb->empty = true;
		if (++G.members_empty == (size_t)nmembers() && G.phase == PH_DRAIN) {
			G.res[G.k].drain_s = (double)(sb_now_ns() - G.t_phase) / 1e9;
			next_phase();
		}
		return;
	}
	if (ev != SB_EV_FRAME || f->type != SP_T_DELIVER || sp_frame_u64(f, SP_F_ETYPE) >= 10)
		return;
	sp_bin env = sp_frame_bin(f, SP_F_ENV);
	sb_msg m;
	if (!sb_payload_parse(env.p, env.len, &m) || m.run != G.run_id || m.stream != (uint32_t)G.k)
		return;
	int fresh = sb_track_mark(&mb->seen, m.seq);
	if (fresh == 0) {
		G.st.dups++;
		G.res[G.k].dups++;
		return;
	}
	uint64_t now = sb_now_ns();
	G.st.delivered++;
	G.st.t_last_delivery = now;
	if (G.phase == PH_DRAIN) {
		G.res[G.k].drain_delivered++;
		return;
	}
	if (G.phase != PH_ONLINE)
		return;
	G.res[G.k].online_delivered++;
	sb_hist_add(&G.res[G.k].lat_recv, (now - m.t_ns) / 1000);
	if (m.seq >= G.recv_cap) {
		size_t ncap = G.recv_cap ? G.recv_cap * 2 : 65536;
		while (ncap <= m.seq)
			ncap *= 2;
		uint32_t *nc = realloc(G.recv_cnt, ncap * sizeof(uint32_t));
		if (!nc)
			return;
		memset(nc + G.recv_cap, 0, (ncap - G.recv_cap) * sizeof(uint32_t));
		G.recv_cnt = nc;
		G.recv_cap = ncap;
	}
	/* A message leaves the window when every member has it. */
	if (++G.recv_cnt[m.seq] == (uint32_t)nmembers()) {
		G.inflight--;
		pump();
	}
}

static void
end_size(void)
{
	size_res *r = &G.res[G.k];
	for (int i = 0; i < nmembers(); i++) {
		uint64_t lost = sb_track_lost(&G.sent, &G.m[i].seen);
		r->lost += lost;
		G.st.lost += lost;
		sb_conn_close(&G.m[i].c);
		sb_track_free(&G.m[i].seen);
	}
	sb_track_free(&G.sent);
	free(G.recv_cnt);
	G.recv_cnt = NULL;
	G.recv_cap = 0;
}

static void
next_phase(void)
{
	G.t_phase = sb_now_ns();
	switch (G.phase) {
	case PH_SENDER:
	case PH_ONLINE:
		if (G.phase == PH_ONLINE) {
			G.res[G.k].online_s = (double)(G.t_stop - G.res[G.k].online_s) / 1e9;
			end_size();
			G.k++;
		}
		if (G.k >= G.nsizes) {
			G.phase = PH_DONE;
			event_base_loopexit(G.net.base, NULL);
			return;
		}
		G.phase = PH_STORE;
		G.next_seq = 0;
		G.store_end = (uint32_t)sb_o.group_msgs;
		G.inflight = 0;
		G.unanswered = 0;
		G.stopping = false;
		G.res[G.k].map_before = sb_inbox_metric("sp_inbox_map_used_bytes");
		G.res[G.k].entries_before = sb_inbox_metric("sp_inbox_queue_entries");
		if (!sb_o.quiet)
			fprintf(stderr, "spbench: group of %d: storing %d messages for offline members\n", G.res[G.k].size,
				sb_o.group_msgs);
		pump();
		return;
	case PH_STORE:
		G.res[G.k].stored_msgs = G.store_end;
		G.res[G.k].map_after = sb_inbox_metric("sp_inbox_map_used_bytes");
		G.res[G.k].entries_after = sb_inbox_metric("sp_inbox_queue_entries");
		G.phase = PH_DRAIN;
		G.conns_next = 0;
		G.members_empty = 0;
		if (!sb_o.quiet)
			fprintf(stderr, "spbench: group of %d: %d members log in and drain\n", G.res[G.k].size, nmembers());
		connect_members();
		return;
	case PH_DRAIN:
		G.phase = PH_ONLINE;
		G.inflight = 0;
		G.res[G.k].online_s = (double)G.t_phase; /* start, replaced by the duration */
		G.t_stop = G.t_phase + (uint64_t)(sb_o.duration_s * 1e9);
		if (!sb_o.quiet)
			fprintf(stderr, "spbench: group of %d: online fan-out for %.0f s\n", G.res[G.k].size, sb_o.duration_s);
		pump();
		return;
	}
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	uint64_t now = sb_now_ns();
	sb_progress(G.phase == PH_STORE ? "store" : G.phase == PH_DRAIN ? "drain" : "fan", &G.st,
		    (double)(now - G.st.t_first_connect) / 1e9);
	if (G.phase != PH_ONLINE)
		return;
	if (!G.stopping && now >= G.t_stop) {
		G.stopping = true;
		G.res[G.k].online_sent = G.next_seq - G.store_end;
	}
	if (G.stopping) {
		bool quiet = G.unanswered == 0;
		for (int i = 0; quiet && i < nmembers(); i++)
			quiet = sb_track_lost(&G.sent, &G.m[i].seen) == 0;
		if (quiet || now >= G.t_stop + (uint64_t)ONLINE_GRACE_S * 1000000000u) {
			G.t_stop = G.t_stop < now ? G.t_stop : now;
			next_phase();
		}
	}
}

/* GROUP_CREATE through a blocking connection as the sender (members by user id). */
static int
create_group(const sb_account *sender, const sb_account *members, int n, uint64_t *group)
{
	spc_conn *c;
	char err[256];
	int rc = spc_conn_open(sb_o.targets[0].host, sb_o.targets[0].port, sb_o.ca, 5000, &c, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "spbench: %s\n", err);
		return rc;
	}
	if ((rc = spc_conn_login(c, sender->user, sender->device, sender->sk, 0, NULL))) {
		spc_conn_close(c);
		return rc;
	}
	uint64_t *users = malloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
	if (!users) {
		spc_conn_close(c);
		return SP_ENOMEM;
	}
	for (int i = 0; i < n; i++)
		users[i] = members[i].user;
	char name[64];
	snprintf(name, sizeof(name), "spbench-%d-%08x", n + 1, randombytes_random());
	sp_frame q, r;
	sp_frame_init(&q, SP_T_GROUP_CREATE, 9, true);
	sp_frame_set_str(&q, SP_F_GROUP_NAME, name);
	sp_frame_set_u64s(&q, SP_F_USERS, users, (uint32_t)n);
	rc = spc_conn_send(c, &q);
	free(users);
	while (rc == SP_OK && (rc = spc_conn_recv(c, 15000, &r)) == SP_OK) {
		unsigned t = r.type;
		if (t == SP_T_GROUP_R)
			*group = sp_frame_u64(&r, SP_F_GROUP);
		else if (t == SP_T_ERROR)
			rc = (int)sp_frame_i64(&r, SP_F_CODE);
		sp_frame_fini(&r);
		if (t == SP_T_GROUP_R || t == SP_T_ERROR)
			break;
	}
	spc_conn_close(c);
	return rc;
}

int
sb_scen_group(sb_result *res)
{
	memset(&G, 0, sizeof(G));
	int maxsize = 0;
	char tmp[128], *save = NULL;
	snprintf(tmp, sizeof(tmp), "%s", sb_o.group_sizes);
	for (char *t = strtok_r(tmp, ",", &save); t && G.nsizes < MAX_SIZES; t = strtok_r(NULL, ",", &save)) {
		int n = atoi(t);
		if (n < 2 || n > 1024) {
			fprintf(stderr, "spbench: group sizes are 2..1024 members (with the sender)\n");
			return SP_EINVAL;
		}
		G.res[G.nsizes++].size = n;
		if (n > maxsize)
			maxsize = n;
	}
	if (!G.nsizes)
		return SP_EINVAL;
	size_t have;
	sb_account *acc;
	int rc = sb_accounts_get((size_t)maxsize, &acc, &have);
	if (rc)
		return rc;
	G.acc = acc;
	for (int k = 0; k < G.nsizes; k++) {
		if ((rc = create_group(&acc[0], &acc[1], G.res[k].size - 1, &G.res[k].group))) {
			fprintf(stderr, "spbench: GROUP_CREATE of %d: %s\n", G.res[k].size, sp_strerror(rc));
			free(acc);
			return rc;
		}
	}
	G.run_id = randombytes_random();
	G.m = calloc((size_t)maxsize, sizeof(member));
	G.buf = malloc((size_t)sb_o.size);
	if (!G.m || !G.buf || (rc = sb_net_init(&G.net, &G.st))) {
		free(G.m);
		free(G.buf);
		free(acc);
		return rc ? rc : SP_ENOMEM;
	}
	G.tick = event_new(G.net.base, -1, EV_PERSIST, on_tick, NULL);
	struct timeval tv = {1, 0};
	if (G.tick)
		event_add(G.tick, &tv);
	G.phase = PH_SENDER;
	if (sb_conn_start(&G.sender, &G.net, 0, &acc[0], on_sender, NULL) == SP_OK)
		event_base_dispatch(G.net.base);
	else
		G.rc = SP_ECLOSED;
	if (G.phase != PH_DONE && !G.rc)
		G.rc = SP_EIO;
	sb_conn_close(&G.sender);
	for (int i = 0; i < maxsize; i++) {
		sb_conn_close(&G.m[i].c);
		sb_track_free(&G.m[i].seen);
	}
	if (G.tick)
		event_free(G.tick);
	sb_net_fini(&G.net);

	/* Results: one object per size; the headline figures are the largest group's. */
	json_t *arr = json_array();
	double best_fan = 0;
	for (int k = 0; k < G.nsizes; k++) {
		size_res *r = &G.res[k];
		json_t *o = json_object();
		double msgs = (double)r->stored_msgs;
		json_object_set_new(o, "size", json_integer(r->size));
		json_object_set_new(o, "stored_fanout_entries_per_s",
				    json_real(r->store_s > 0 ? msgs * (r->size - 1) / r->store_s : 0));
		json_object_set_new(o, "stored_group_msgs_per_s", json_real(r->store_s > 0 ? msgs / r->store_s : 0));
		if (r->map_before >= 0 && msgs > 0) {
			json_object_set_new(o, "storage_bytes_per_group_msg", json_real((r->map_after - r->map_before) / msgs));
			json_object_set_new(o, "entries_per_group_msg",
					    json_real((r->entries_after - r->entries_before) / msgs));
		}
		/* Without the per-shard dedup each member's entry would hold the body. */
		json_object_set_new(o, "body_bytes_if_not_deduped", json_real((double)sb_o.size * (r->size - 1)));
		json_object_set_new(o, "drain_s", json_real(r->drain_s));
		json_object_set_new(o, "drain_deliveries_per_s",
				    json_real(r->drain_s > 0 ? (double)r->drain_delivered / r->drain_s : 0));
		double fan = r->online_s > 0 ? (double)r->online_delivered / r->online_s : 0;
		json_object_set_new(o, "online_fanout_deliveries_per_s", json_real(fan));
		json_object_set_new(o, "online_group_msgs_per_s", json_real(r->online_s > 0 ? (double)r->online_sent / r->online_s : 0));
		json_object_set_new(o, "sent_p50_ms", json_real(sb_hist_pct_ms(&r->lat_sent, 50)));
		json_object_set_new(o, "sent_p99_ms", json_real(sb_hist_pct_ms(&r->lat_sent, 99)));
		json_object_set_new(o, "p50_ms", json_real(sb_hist_pct_ms(&r->lat_recv, 50)));
		json_object_set_new(o, "p99_ms", json_real(sb_hist_pct_ms(&r->lat_recv, 99)));
		json_object_set_new(o, "lost", json_integer((json_int_t)r->lost));
		json_object_set_new(o, "duplicated", json_integer((json_int_t)r->dups));
		json_array_append_new(arr, o);
		sb_hist_merge(&G.st.lat_sent, &r->lat_sent);
		sb_hist_merge(&G.st.lat_recv, &r->lat_recv);
		if (k == G.nsizes - 1 || fan > best_fan)
			best_fan = fan;
		if (!sb_o.quiet || !sb_o.json)
			fprintf(sb_o.json ? stderr : stdout,
				"  group %4d: stored %8.0f entries/s, %8.0f B/msg (bodies if not deduped: %.0f B), "
				"drain %6.2f s, online fan-out %8.0f deliveries/s, p99 %.2f ms, lost %llu dup %llu\n",
				r->size, r->store_s > 0 ? msgs * (r->size - 1) / r->store_s : 0,
				r->map_before >= 0 && msgs > 0 ? (r->map_after - r->map_before) / msgs : -1,
				(double)sb_o.size * (r->size - 1), r->drain_s, fan, sb_hist_pct_ms(&r->lat_recv, 99),
				(unsigned long long)r->lost, (unsigned long long)r->dups);
	}
	json_t *extra = json_object();
	json_object_set_new(extra, "groups", arr);
	res->json_extra = extra;
	res->st = G.st;
	res->delivered_per_s = best_fan;
	uint64_t online_sent = 0;
	double online_s = 0;
	for (int k = 0; k < G.nsizes; k++) {
		online_sent += G.res[k].online_sent;
		online_s += G.res[k].online_s;
	}
	res->sent_per_s = online_s > 0 ? (double)online_sent / online_s : 0;
	res->connections = (uint64_t)maxsize;
	res->elapsed_s = (double)(sb_now_ns() - G.st.t_first_connect) / 1e9;
	free(G.m);
	free(G.buf);
	free(acc);
	return G.rc;
}
