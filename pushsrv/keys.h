/*
 * pushsrv's calls to the key store (docs/PUSH.md): a device's push token (PUSH_TOKEN_GET)
 * and dropping one its gateway called dead (PUSH_DROP), sent to the keysrv primary the
 * newest cluster map names (one REQ socket, opened again when the primary changes), on
 * that copy's push listener (keysrv --push-listen: those two requests only) when `push`
 * names it, else on its member address.
 * Blocking; not thread-safe. The cluster is borrowed and must outlive this.
 */
#ifndef PS_KEYS_H
#define PS_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "sp_cluster.h"

/* Longest platform name and token, with their NULs. */
#define PS_KEYS_PLATFORM_MAX 16
#define PS_KEYS_TOKEN_MAX 513

typedef struct ps_keys ps_keys;

/* `push`: "NAME=URL[,NAME=URL...]", the push listener of each key store copy by member
 * name, or NULL (dial member addresses). SP_ECONFIG: a malformed list. */
int ps_keys_new(sp_cluster *cluster, const char *push, int timeout_ms, ps_keys **out);
void ps_keys_free(ps_keys *k);

/* The device's token: SP_OK with platform and token ("" for both when it has none, or one
 * of no known platform); SP_ENOTFOUND when the device is gone; another code when the key
 * store did not answer (SP_EUNAVAIL: no keysrv in the map; a transport error; an ERROR
 * such as SP_ENOTPRIMARY), worth a retry. */
int ps_keys_token(ps_keys *k, uint64_t device, char platform[PS_KEYS_PLATFORM_MAX],
		  char token[PS_KEYS_TOKEN_MAX]);

/* Clears the device's token if it still is (platform, token). */
int ps_keys_drop(ps_keys *k, uint64_t device, const char *platform, const char *token);

#endif
