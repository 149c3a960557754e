/*
 * connsrv's pre-login limits that need no server: the per-source admission table
 * (connsrv/admit.c) — unauthenticated slots, the handshake bucket, the bounded table and
 * its eviction, source keys — and the size of the frames a client legitimately sends
 * before login against the default pre-login frame limit.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "check_run.h"
#include "connsrv/admit.h"
#include "sp_error.h"
#include "sp_frame.h"

static cs_admit_key
v4(const char *ip)
{
	struct sockaddr_in in;
	memset(&in, 0, sizeof(in));
	in.sin_family = AF_INET;
	ck_assert_int_eq(inet_pton(AF_INET, ip, &in.sin_addr), 1);
	cs_admit_key k;
	cs_admit_key_of((struct sockaddr *)&in, &k);
	return k;
}

static cs_admit_key
v6(const char *ip)
{
	struct sockaddr_in6 in;
	memset(&in, 0, sizeof(in));
	in.sin6_family = AF_INET6;
	ck_assert_int_eq(inet_pton(AF_INET6, ip, &in.sin6_addr), 1);
	cs_admit_key k;
	cs_admit_key_of((struct sockaddr *)&in, &k);
	return k;
}

static cs_admit *
table(long long unauth, double rate, long long burst, size_t sources)
{
	cs_admit_cfg c = {.max_unauth = unauth, .hs_rate = rate, .hs_burst = burst, .max_sources = sources};
	cs_admit *a;
	ck_assert_int_eq(cs_admit_new(&c, &a), SP_OK);
	return a;
}

START_TEST(test_unauth_per_source)
{
	cs_admit *a = table(3, 1000, 1000, 16);
	cs_admit_key x = v4("10.0.0.1"), y = v4("10.0.0.2");
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(cs_admit_take(a, &x, 0), CS_ADMIT_OK);
	ck_assert_int_eq(cs_admit_take(a, &x, 0), CS_ADMIT_UNAUTH);
	ck_assert_int_eq(cs_admit_unauth(a, &x), 3);
	/* Another source is not affected. */
	ck_assert_int_eq(cs_admit_take(a, &y, 0), CS_ADMIT_OK);
	/* A login (or close) gives a slot back. */
	cs_admit_release(a, &x);
	ck_assert_int_eq(cs_admit_unauth(a, &x), 2);
	ck_assert_int_eq(cs_admit_take(a, &x, 0), CS_ADMIT_OK);
	ck_assert_int_eq(cs_admit_take(a, &x, 0), CS_ADMIT_UNAUTH);
	cs_admit_free(a);
}
END_TEST

START_TEST(test_handshake_bucket)
{
	/* 10 per second, burst 5; slots are released at once so only the bucket limits. */
	cs_admit *a = table(1000, 10, 5, 16);
	cs_admit_key x = v4("192.0.2.7");
	uint64_t t = 1000000;
	for (int i = 0; i < 5; i++) {
		ck_assert_int_eq(cs_admit_take(a, &x, t), CS_ADMIT_OK);
		cs_admit_release(a, &x);
	}
	ck_assert_int_eq(cs_admit_take(a, &x, t), CS_ADMIT_RATE);
	ck_assert_int_eq(cs_admit_take(a, &x, t + 50), CS_ADMIT_RATE); /* half a token */
	ck_assert_int_eq(cs_admit_take(a, &x, t + 100), CS_ADMIT_OK);  /* one token */
	cs_admit_release(a, &x);
	ck_assert_int_eq(cs_admit_take(a, &x, t + 100), CS_ADMIT_RATE);
	/* A long pause refills up to the burst, not beyond. */
	t += 3600 * 1000;
	for (int i = 0; i < 5; i++) {
		ck_assert_int_eq(cs_admit_take(a, &x, t), CS_ADMIT_OK);
		cs_admit_release(a, &x);
	}
	ck_assert_int_eq(cs_admit_take(a, &x, t), CS_ADMIT_RATE);
	/* A clock that does not advance (or goes back) refills nothing. */
	ck_assert_int_eq(cs_admit_take(a, &x, t - 5000), CS_ADMIT_RATE);
	/* A refusal by the bucket holds no slot. */
	ck_assert_int_eq(cs_admit_unauth(a, &x), 0);
	cs_admit_free(a);
}
END_TEST

START_TEST(test_table_bounded_idle_evicted)
{
	cs_admit *a = table(2, 1000, 1000, 4);
	cs_admit_key k[64];
	char ip[32];
	for (int i = 0; i < 64; i++) {
		snprintf(ip, sizeof(ip), "10.1.%d.%d", i / 200, i % 200 + 1);
		k[i] = v4(ip);
	}
	/* Many sources that come and go: the table never holds more than its bound. */
	for (int i = 0; i < 64; i++) {
		ck_assert_int_eq(cs_admit_take(a, &k[i], (uint64_t)i), CS_ADMIT_OK);
		cs_admit_release(a, &k[i]);
		ck_assert_uint_le(cs_admit_sources(a), 4);
	}
	ck_assert_uint_eq(cs_admit_sources(a), 4);
	cs_admit_free(a);
}
END_TEST

START_TEST(test_table_pinned_sources_survive)
{
	cs_admit *a = table(1, 1000, 1000, 3);
	cs_admit_key p = v4("198.51.100.1"), q = v4("198.51.100.2"), idle = v4("198.51.100.3");
	cs_admit_key other = v4("198.51.100.4"), more = v4("198.51.100.5");
	ck_assert_int_eq(cs_admit_take(a, &p, 0), CS_ADMIT_OK); /* pinned: holds a slot */
	ck_assert_int_eq(cs_admit_take(a, &q, 0), CS_ADMIT_OK); /* pinned */
	ck_assert_int_eq(cs_admit_take(a, &idle, 0), CS_ADMIT_OK);
	cs_admit_release(a, &idle); /* idle: only a bucket */
	/* A new source evicts the idle one, never a pinned count. */
	ck_assert_int_eq(cs_admit_take(a, &other, 1), CS_ADMIT_OK);
	ck_assert_uint_eq(cs_admit_sources(a), 3);
	ck_assert_int_eq(cs_admit_unauth(a, &idle), 0);
	ck_assert_int_eq(cs_admit_take(a, &p, 1), CS_ADMIT_UNAUTH);
	ck_assert_int_eq(cs_admit_take(a, &q, 1), CS_ADMIT_UNAUTH);
	/* Every entry pinned: a new source is refused, the table does not grow. */
	ck_assert_int_eq(cs_admit_take(a, &more, 2), CS_ADMIT_TABLE);
	ck_assert_uint_eq(cs_admit_sources(a), 3);
	/* Once one logs in its entry may be evicted again. */
	cs_admit_release(a, &q);
	ck_assert_int_eq(cs_admit_take(a, &more, 3), CS_ADMIT_OK);
	ck_assert_int_eq(cs_admit_unauth(a, &q), 0);
	ck_assert_int_eq(cs_admit_unauth(a, &p), 1);
	cs_admit_free(a);
}
END_TEST

START_TEST(test_lru_order)
{
	/* Buckets of 2 that practically never refill: an evicted source would come back with
	 * a full bucket, a kept one with its empty bucket. */
	cs_admit *a = table(4, 0.001, 2, 2);
	cs_admit_key x = v4("203.0.113.1"), y = v4("203.0.113.2"), z = v4("203.0.113.3");
	ck_assert_int_eq(cs_admit_take(a, &x, 0), CS_ADMIT_OK);
	cs_admit_release(a, &x);
	ck_assert_int_eq(cs_admit_take(a, &y, 1), CS_ADMIT_OK);
	cs_admit_release(a, &y);
	ck_assert_int_eq(cs_admit_take(a, &x, 2), CS_ADMIT_OK); /* x: bucket empty, most recent */
	cs_admit_release(a, &x);
	ck_assert_int_eq(cs_admit_take(a, &z, 3), CS_ADMIT_OK); /* evicts y, the oldest */
	cs_admit_release(a, &z);
	ck_assert_uint_eq(cs_admit_sources(a), 2);
	ck_assert_int_eq(cs_admit_take(a, &x, 4), CS_ADMIT_RATE); /* x was kept */
	/* y was evicted: it comes back with a full bucket (evicting z, now the oldest). */
	ck_assert_int_eq(cs_admit_take(a, &y, 5), CS_ADMIT_OK);
	ck_assert_int_eq(cs_admit_take(a, &y, 5), CS_ADMIT_OK);
	ck_assert_int_eq(cs_admit_take(a, &y, 5), CS_ADMIT_RATE);
	cs_admit_release(a, &y);
	cs_admit_release(a, &y);
	cs_admit_free(a);
}
END_TEST

START_TEST(test_keys)
{
	/* IPv6: one /64 is one source; another /64 is another. */
	cs_admit_key a1 = v6("2001:db8:1:2::1"), a2 = v6("2001:db8:1:2:ffff::9"), b = v6("2001:db8:1:3::1");
	ck_assert_mem_eq(a1.b, a2.b, sizeof(a1.b));
	ck_assert(memcmp(a1.b, b.b, sizeof(a1.b)) != 0);
	/* An IPv4-mapped address is the IPv4 source. */
	cs_admit_key m = v6("::ffff:10.0.0.1"), p = v4("10.0.0.1");
	ck_assert_mem_eq(m.b, p.b, sizeof(m.b));
	/* Families never collide. */
	cs_admit_key z4 = v4("0.0.0.0"), z6 = v6("::");
	ck_assert(memcmp(z4.b, z6.b, sizeof(z4.b)) != 0);

	cs_admit *t = table(1, 1000, 1000, 16);
	ck_assert_int_eq(cs_admit_take(t, &a1, 0), CS_ADMIT_OK);
	ck_assert_int_eq(cs_admit_take(t, &a2, 0), CS_ADMIT_UNAUTH);
	ck_assert_int_eq(cs_admit_take(t, &b, 0), CS_ADMIT_OK);
	cs_admit_free(t);
}
END_TEST

START_TEST(test_bad_config)
{
	cs_admit *a;
	cs_admit_cfg c = {.max_unauth = 0, .hs_rate = 1, .hs_burst = 1, .max_sources = 1};
	ck_assert_int_eq(cs_admit_new(&c, &a), SP_EINVAL);
	c.max_unauth = 1;
	c.max_sources = 0;
	ck_assert_int_eq(cs_admit_new(&c, &a), SP_EINVAL);
	c.max_sources = 1;
	c.hs_rate = 0;
	ck_assert_int_eq(cs_admit_new(&c, &a), SP_EINVAL);
	ck_assert_str_eq(cs_admit_verdict_name(CS_ADMIT_RATE), "handshake_rate");
	ck_assert_str_eq(cs_admit_verdict_name(CS_ADMIT_UNAUTH), "unauth_per_source");
	ck_assert_str_eq(cs_admit_verdict_name(CS_ADMIT_TABLE), "source_table_full");
}
END_TEST

/* Every frame a client may send before login, with each of its fields at its largest,
 * packs well under the default pre-login limit (4 KiB, connsrv/main.c). A new pre-login
 * field that could not fit fails here, not in production. */
START_TEST(test_prelogin_frames_fit)
{
	static uint8_t big[65536];
	memset(big, 'x', sizeof(big));
	size_t largest = 0;
	int checked = 0;
	for (unsigned t = 0; t < SP_T__MAX; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		if (!d || !sp_frame_client_may_send(t, false))
			continue;
		sp_frame f;
		sp_frame_init(&f, (uint8_t)t, UINT64_MAX, true);
		for (unsigned i = 0; i < d->nfields; i++) {
			sp_field fld = d->fields[i].field;
			const sp_field_def *fd = sp_field_def_get(fld);
			switch (fd->type) {
			case SP_FT_UINT:
				ck_assert_int_eq(sp_frame_set_u64(&f, fld, UINT64_MAX), SP_OK);
				break;
			case SP_FT_INT:
				ck_assert_int_eq(sp_frame_set_i64(&f, fld, INT64_MIN), SP_OK);
				break;
			case SP_FT_BOOL:
				ck_assert_int_eq(sp_frame_set_bool(&f, fld, true), SP_OK);
				break;
			case SP_FT_BIN:
			case SP_FT_STR:
				ck_assert_uint_le(fd->max, sizeof(big));
				ck_assert_int_eq(sp_frame_set_bin(&f, fld, big, fd->max), SP_OK);
				break;
			default:
				ck_abort_msg("%s: array field %s before login: bound it here", d->name, fd->name);
			}
		}
		msgpack_sbuffer sb;
		msgpack_sbuffer_init(&sb);
		ck_assert_int_eq(sp_frame_pack(&f, &sb), SP_OK);
		if (sb.size > largest)
			largest = sb.size;
		msgpack_sbuffer_destroy(&sb);
		checked++;
	}
	printf("largest pre-login frame at its field bounds: %zu bytes\n", largest + 4);
	ck_assert_int_ge(checked, 7); /* HELLO, AUTH, PING, REGISTER, VERIFY, LINK_REQUEST, LINK_STATUS */
	ck_assert_uint_le(largest + 4, 2048); /* half the default: room for a field to grow */
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("connsrv_admit");
	TCase *tc = tcase_create("admit");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_unauth_per_source);
	tcase_add_test(tc, test_handshake_bucket);
	tcase_add_test(tc, test_table_bounded_idle_evicted);
	tcase_add_test(tc, test_table_pinned_sources_survive);
	tcase_add_test(tc, test_lru_order);
	tcase_add_test(tc, test_keys);
	tcase_add_test(tc, test_bad_config);
	tcase_add_test(tc, test_prelogin_frames_fit);
	suite_add_tcase(s, tc);
	return check_run(s);
}
