/* The TTL sweeper: a thread that periodically submits SWEEP ops (bounded batches of
 * expired entries, dedup records and blobs) to the writer, repeating while a batch hits
 * its bound. Expiry itself is decided by the store against the op's timestamp. */
#ifndef INBOX_SWEEP_H
#define INBOX_SWEEP_H

#include <stdint.h>

#include "commit.h"

typedef struct inbox_sweep inbox_sweep;

/* `c` must outlive the sweeper. On SP_OK the caller owns *out (inbox_sweep_stop). */
int inbox_sweep_start(inbox_sweep **out, inbox_commit *c, uint64_t interval_ms, uint32_t batch);

/* Stops the thread (waiting for a sweep in progress) and frees `sw`. */
void inbox_sweep_stop(inbox_sweep *sw);

#endif
