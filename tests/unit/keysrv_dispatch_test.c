/* keysrv's handler table and the catalogue name the same requests. */
#include <check.h>

#include "keysrv/server.h"
#include "sp_frame.h"
#include "check_run.h"

START_TEST(test_table_matches_catalogue)
{
	unsigned served = 0;
	for (unsigned t = 0; t < 300; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		bool want = d && d->tier == SP_TIER_KEYSRV;
		ck_assert_msg(keys_server_serves(t) == want, "type %u (%s): table %d, catalogue %d", t,
			      sp_frame_type_name(t), keys_server_serves(t), want);
		served += want;
	}
	ck_assert_uint_eq(served, 27); /* 20, SET_PIN, PUSH_REGISTER, PUSH_TOKEN_GET, PUSH_DROP,
					 * PRIVACY_SET, CONTACTS_EDIT, PRESENCE_RULES */
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("keysrv_dispatch");
	TCase *tc = tcase_create("dispatch");
	tcase_add_test(tc, test_table_matches_catalogue);
	suite_add_tcase(s, tc);
	return check_run(s);
}
