/*
 * Accounts: phone-number registration with a one-time code (REGISTER), and VERIFY, which
 * creates the account (or re-registers it: the old devices are revoked, the user id and
 * group memberships stay) and its primary device.
 *
 * Codes are six random digits, stored only as a keyed hash, compared in constant time,
 * valid for otp-ttl and for otp-attempts wrong guesses. REGISTER is rate limited per phone
 * and per source, VERIFY per source. On top of that each phone has durable daily budgets
 * (keys_budget in the store): codes sent, wrong codes, wrong PINs, which neither a new
 * REGISTER nor a restart renews.
 *
 * Registration lock: SET_PIN (the primary) stores an argon2id hash of a PIN for the
 * account; VERIFY of a locked number then needs the right PIN as well as the code.
 */
#ifndef KEYS_ACCOUNTS_H
#define KEYS_ACCOUNTS_H

#include <stdbool.h>

#include "keysrv/internal.h"

/* true for E.164: '+', then 8 to 15 digits, the first not 0. */
bool keys_phone_valid(const char *s);

int keys_accounts_register(keys_req *r);
int keys_accounts_verify(keys_req *r);
int keys_accounts_set_pin(keys_req *r);

#define KEYS_PIN_MIN 4
#define KEYS_PIN_MAX 64

#endif
