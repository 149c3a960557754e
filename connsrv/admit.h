/*
 * Per-source admission of new connections, decided at accept time (before any TLS work):
 * a source (an IPv4 address, or an IPv6 /64, the unit one end host usually holds) may hold
 * at most `max_unauth` connections that have not logged in yet, and may start TLS
 * handshakes at `hs_rate` per second with bursts of `hs_burst` (a token bucket per source).
 *
 * The table of sources is bounded by `max_sources`. A source with unauthenticated
 * connections is pinned (its count must survive); an idle source (only its bucket) is kept
 * in least-recently-used order and the oldest is evicted when a new source needs room, so
 * an attacker with many addresses can neither grow the table nor evict the counts of
 * others. When every entry is pinned the new source is refused (CS_ADMIT_TABLE).
 * Pure bookkeeping: no I/O, no clock of its own (the caller passes now), one thread.
 */
#ifndef CS_ADMIT_H
#define CS_ADMIT_H

#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

typedef struct cs_admit cs_admit;

/* A source: family byte then the address (an IPv6 /64 prefix, zeros after it). */
typedef struct cs_admit_key {
	uint8_t b[17];
} cs_admit_key;

typedef struct cs_admit_cfg {
	long long max_unauth; /* unauthenticated connections per source */
	double hs_rate;       /* handshakes per second per source */
	long long hs_burst;   /* bucket size */
	size_t max_sources;   /* table entries */
} cs_admit_cfg;

typedef enum {
	CS_ADMIT_OK,     /* admitted: the source holds one more unauthenticated slot */
	CS_ADMIT_UNAUTH, /* the source has max_unauth connections not logged in */
	CS_ADMIT_RATE,   /* the source's handshake bucket is empty */
	CS_ADMIT_TABLE,  /* the table is full of pinned sources */
} cs_admit_verdict;

/* SP_OK or SP_ENOMEM / SP_EINVAL (a zero bound). *out is freed with cs_admit_free. */
int cs_admit_new(const cs_admit_cfg *cfg, cs_admit **out);
void cs_admit_free(cs_admit *a);
/* The source of a peer address (IPv4-mapped IPv6 counts as IPv4). */
void cs_admit_key_of(const struct sockaddr *sa, cs_admit_key *k);
/* Admits a new connection from `k` at `now_ms` or says why not; on CS_ADMIT_OK the
 * connection holds one unauthenticated slot of its source until cs_admit_release. */
cs_admit_verdict cs_admit_take(cs_admit *a, const cs_admit_key *k, uint64_t now_ms);
/* Gives back the slot taken by cs_admit_take (the connection logged in or closed). */
void cs_admit_release(cs_admit *a, const cs_admit_key *k);
/* Sources in the table / unauthenticated slots held by `k` (tests, metrics). */
size_t cs_admit_sources(const cs_admit *a);
long long cs_admit_unauth(const cs_admit *a, const cs_admit_key *k);
/* Short lower-case name of a refusal, for metric labels and logs. */
const char *cs_admit_verdict_name(cs_admit_verdict v);

#endif
