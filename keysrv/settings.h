/*
 * Privacy settings and the server-side contact set of each user (docs/KEYSRV.md, "Privacy
 * and contacts"): who may see the user's last seen and online state (everyone, contacts,
 * nobody), who may add the user to groups (everyone, contacts), and the bounded set of user
 * ids the user's client uploaded as its contacts. Durable in the key store (databases
 * `settings` and `contacts`), so replicated like every keysrv write.
 *
 * Handlers run on keysrv's worker threads with the request's transaction rules of
 * keysrv/internal.h; the rule function is pure.
 */
#ifndef KEYS_SETTINGS_H
#define KEYS_SETTINGS_H

#include <stdbool.h>
#include <stdint.h>

#include "keysrv/internal.h"

#define KEYS_CONTACTS_MAX 5000 /* contacts kept per user */

enum { KEYS_PRIV_EVERYONE = 0, KEYS_PRIV_CONTACTS = 1, KEYS_PRIV_NOBODY = 2 };

/* Presence rule bits (PRESENCE_RULES_R): bit 0 online visible; bits 1-2 last seen. */
#define KEYS_RULE_ONLINE 0x1u
#define KEYS_RULE_LS_SHIFT 1
enum { KEYS_LS_HIDDEN = 0, KEYS_LS_COARSE = 1, KEYS_LS_EXACT = 2 };

typedef struct keys_privacy {
	uint8_t last_seen, online, group_add; /* KEYS_PRIV_* */
	uint32_t ncontacts;
} keys_privacy;

/* What `viewer` may see of `target`'s presence (KEYS_RULE_* bits). Reciprocal: each
 * visibility needs the target's setting to admit the viewer *and* the viewer's own
 * setting to admit the target (who hides theirs sees no one's). A viewer refused the exact
 * last seen only by its own setting gets the coarse answer. viewer_in_t: the viewer is in
 * the target's contacts; t_in_viewer: the reverse. */
unsigned keys_settings_rule(const keys_privacy *target, bool viewer_in_t,
    const keys_privacy *viewer, bool t_in_viewer);

/* Registers the metrics (once, before serving). */
void keys_settings_init(void);

/* A user's settings (defaults, everyone and no contacts, when none are stored). */
int keys_settings_get(keys_store *s, MDB_txn *txn, uint64_t user, keys_privacy *p);
/* Whether `contact` is in `owner`'s contact set. */
int keys_settings_has_contact(keys_store *s, MDB_txn *txn, uint64_t owner, uint64_t contact,
    bool *has);
/* For GROUP_CREATE / GROUP_ADD inside their write transaction: SP_OK if `adder` may add
 * `target` to a group, else SP_EPERM with the reason set (counted in
 * keysrv_group_add_refused_total). */
int keys_settings_may_add(keys_req *r, MDB_txn *txn, uint64_t target, uint64_t adder);

/* Handlers: PRIVACY_SET (reply PRIVACY), CONTACTS_EDIT (reply PRIVACY), PRESENCE_RULES. */
int keys_settings_privacy(keys_req *r);
int keys_settings_contacts(keys_req *r);
int keys_settings_rules(keys_req *r);

#endif
