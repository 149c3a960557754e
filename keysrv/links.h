/*
 * Device linking by rendezvous on keysrv:
 *   new device  LINK_REQUEST {keys}         -> LINK_PENDING {link_code, ttl}
 *   primary     LINK_LOOKUP {link_code}     -> LINK_INFO {keys}      (to show / compare)
 *   primary     LINK_CONFIRM {link_code, primary_sig} -> VERIFIED {user, device}
 *   new device  LINK_STATUS {link_code, sig} -> LINK_PENDING until confirmed, then
 *                                              VERIFIED {user, device, phone}
 * primary_sig is the primary's Ed25519 auth-key signature over
 * "sealpost-link-v1" || ik (33) || auth_key (32); sig in LINK_STATUS is the new device's
 * own auth-key signature over "sealpost-link-status-v1" || link_code (8 upper-case
 * characters), so only that device learns the result. Codes use an alphabet without
 * 0/O/1/I, are matched case-insensitively, stored only as a keyed hash and expire after
 * link-ttl. Only the primary may look up or confirm (rate limited per user); requests are
 * rate limited per source.
 */
#ifndef KEYS_LINKS_H
#define KEYS_LINKS_H

#include "keysrv/internal.h"

#define KEYS_LINK_SIG_TAG "sealpost-link-v1"
#define KEYS_LINK_STATUS_TAG "sealpost-link-status-v1"

int keys_links_request(keys_req *r);
int keys_links_lookup(keys_req *r);
int keys_links_confirm(keys_req *r);
int keys_links_status(keys_req *r);

#endif
