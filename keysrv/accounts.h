/*
 * Accounts: phone-number registration with a one-time code (REGISTER), and VERIFY, which
 * creates the account (or re-registers it: the old devices are revoked, the user id and
 * group memberships stay) and its primary device.
 *
 * Codes are six random digits, stored only as a keyed hash, compared in constant time,
 * valid for otp-ttl and for otp-attempts wrong guesses. REGISTER is rate limited per phone
 * and per source, VERIFY per source.
 */
#ifndef KEYS_ACCOUNTS_H
#define KEYS_ACCOUNTS_H

#include <stdbool.h>

#include "keysrv/internal.h"

/* true for E.164: '+', then 8 to 15 digits, the first not 0. */
bool keys_phone_valid(const char *s);

int keys_accounts_register(keys_req *r);
int keys_accounts_verify(keys_req *r);

#endif
