/*
 * After appends: tell the connsrv workers holding the devices about the new entries. One
 * route lookup in Redis per call; a device with a route gets a DELIVER hint (the entry with
 * its seq, device and conn_epoch) pushed over NNG, or handed to srv->ops->push when the
 * route is this worker's. Hints are best effort: an offline device drains its inbox when it
 * connects, and a lost hint is repaired by the periodic check. cs_notify_appended is
 * srv->ops->notify (called by send.c and receipts.c); the route lookup's answer runs later
 * on the loop. Hints that cannot be sent are counted (sp_connsrv_pushes_dropped_total).
 */
#ifndef CS_NOTIFY_H
#define CS_NOTIFY_H

#include "connsrv/internal.h"

/* `entry` (the DELIVER frame without SEQ/DEVICE/CONN_EPOCH) is packed once, here; devices
 * and seqs are copied. */
void cs_notify_appended(cs_server *srv, const sp_frame *entry, const uint64_t *devices,
			const uint64_t *seqs, size_t n);

#endif
