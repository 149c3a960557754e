/*
 * Devices: key validation for a new device, creation and revocation inside a caller's
 * transaction, the authenticated-caller check, and the DEVICES_GET, REMOVE_DEVICE and
 * AUTH_KEY_GET handlers.
 */
#ifndef KEYS_DEVICES_H
#define KEYS_DEVICES_H

#include <stdbool.h>
#include <stdint.h>

#include "keysrv/internal.h"

/* The keys a new device presents (VERIFY, LINK_REQUEST). Pointers borrow the request. */
typedef struct keys_newdev {
	const uint8_t *ik;       /* 33 bytes, 0x05 || u */
	const uint8_t *auth_key; /* 32 bytes, Ed25519 */
	uint32_t reg_id;
	const char *push;
	uint16_t push_len;
	bool has_spk;
	uint32_t spk_id;
	const uint8_t *spk, *spk_sig;
} keys_newdev;

/* Reads and checks the new-device fields of r->in: a well-formed identity key, a valid
 * Ed25519 auth key, a 14-bit registration id and, when present, a signed prekey whose
 * signature verifies with the identity key. SP_EINVAL / SP_EBADSIG with r->reason. */
int keys_devices_parse_new(keys_req *r, keys_newdev *nd);

/* Creates a device for user `u` in `txn` and appends it to u->devices (the caller writes
 * `u`). SP_ELIMIT when the user already has KEYS_MAX_DEVICES. */
int keys_devices_add(keys_req *r, MDB_txn *txn, keys_user *u, const keys_newdev *nd, bool primary,
    uint64_t *device);

/* Revokes device `id` of user `u` in `txn`: deletes its one-time prekeys, keeps a
 * tombstone and drops it from u->devices (the caller writes `u`). */
int keys_devices_revoke(keys_req *r, MDB_txn *txn, keys_user *u, uint64_t id);

/* Checks that (user, device) is a live device of that user; fills r->caller_dev and
 * r->caller_primary. SP_EAUTH otherwise. */
int keys_devices_check_caller(keys_req *r, MDB_txn *txn, uint64_t user, uint64_t device);

int keys_devices_get(keys_req *r);
int keys_devices_remove(keys_req *r);
int keys_devices_auth_key(keys_req *r);

/* USER_LOOKUP {phone} -> USER_FOUND {phone, user}; SP_ENOTFOUND for no account. */
int keys_devices_lookup(keys_req *r);

/* Push wake-ups (docs/PUSH.md). A device's token is stored as "<platform>:<token>" in its
 * push field; a token stored without a known platform (an older VERIFY or KEYS_UPLOAD) is
 * reported without one, and pushsrv skips it.
 * PUSH_REGISTER {platform, token} -> OK: sets the caller's token; with neither, clears it.
 * PUSH_TOKEN_GET {device} -> PUSH_TOKEN_R {device, user[, platform, token]} (pushsrv).
 * PUSH_DROP {device, platform, token} -> OK: clears the token if it still is that one. */
int keys_devices_push_register(keys_req *r);
int keys_devices_push_get(keys_req *r);
int keys_devices_push_drop(keys_req *r);

/* Whether `p` is a push platform keysrv accepts ("fcm", "apns"). */
bool keys_push_platform_valid(const char *p);

#endif
