/*
 * Groups: create (the creator is the first admin), add / remove members and grant or
 * revoke admin (admins only), leave, list members with their devices (members only, in
 * pages), and the flat device list connsrv fans out to (members only). At most 1024
 * members. Every change bumps the group's epoch so that clients rotate Sender Keys; a
 * request that changes nothing (adding a member twice) leaves it as it is. When the last
 * admin leaves, the remaining member with the lowest id becomes admin; when the last
 * member leaves, the group is deleted.
 */
#ifndef KEYS_GROUPS_H
#define KEYS_GROUPS_H

#include "keysrv/internal.h"

int keys_groups_create(keys_req *r);
int keys_groups_add(keys_req *r);
int keys_groups_remove(keys_req *r);
int keys_groups_leave(keys_req *r);
int keys_groups_admin(keys_req *r);
int keys_groups_info(keys_req *r);
int keys_groups_devices(keys_req *r);

#endif
