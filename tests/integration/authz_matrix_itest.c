/*
 * The authorization matrix (issue 14, docs/SECURITY.md "Authorization matrix"): every frame
 * type of the catalogue (common/defs) against a dev cluster with mutual TLS, in each case
 * where it must be refused, and afterwards the victims' queue, blob, group and session are
 * intact. Driven by the catalogue: a frame type added later is sent in every generic case
 * automatically, and a client frame a logged-in user may send must have a row in
 * `post_rows` (what "another user's" version of it is and how it is refused), or the test
 * fails naming it.
 *
 * Cases:
 *   pre-login   every frame but HELLO/AUTH and the unauthenticated keysrv frames on a fresh
 *               connection: ERROR SP_EAUTH and the connection closed (state unchanged).
 *   client      after login as A, every frame a client may never send (server-only,
 *               replies, records, HELLO/AUTH again), filled naming B's device, user,
 *               group and blob: ERROR SP_EPROTO, never forwarded (B's queue, session and
 *               group are intact afterwards).
 *   other-user  after login as A, each client frame naming B's device/queue/blob/group
 *               where it takes one (post_rows).
 *   removed     a device removed by re-registration: its session on the other connsrv is
 *               kicked within the revocation bound and it cannot log in again.
 *   internal    each internal listener (keysrv, keysrv's push listener, an inbox copy,
 *               connsrv's pull socket, the router, both replication endpoints): no
 *               certificate and certificates of wrong roles get no answer; the right role
 *               gets ERROR SP_EBADTYPE for every frame type the listener does not serve.
 *   admin       the router's drain endpoint without or with a wrong token, and on the
 *               public listener: refused, nothing drained.
 * The matrix is printed (frame x case -> result) in the log.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/tls/tls.h>
#include <sodium.h>

#include "itest.h"
#include "sp_error.h"
#include "sp_frame.h"
#include "sp_nng.h"
#include "sp_time.h"

#define CHECK(cond, ...)                                                                    \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
			fprintf(stderr, __VA_ARGS__);                                       \
			fputc('\n', stderr);                                                \
			exit(1);                                                            \
		}                                                                           \
	} while (0)

/* How long a refused internal probe waits for an answer that must not come. */
#define PROBE_MS 1000
/* The revocation bound (docs/SECURITY.md "Revocation": about 20 s) plus slack. */
#define REVOKE_MS 30000

static itest_cluster C;
static int up;
static itest_user A, B, Cu, R;
static uint64_t group_g, group_epoch;
static uint8_t blob_id[16], msg_b[16];
static const char blob_bytes[] = "the blob B sent C: nobody else reads it";
static int rows;

static void
down(void)
{
	if (up)
		itest_cluster_down(&C);
	up = 0;
}

static void
row(const char *frame, const char *kase, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void
row(const char *frame, const char *kase, const char *fmt, ...)
{
	char res[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(res, sizeof(res), fmt, ap);
	va_end(ap);
	printf("matrix %-18s %-28s %s\n", frame, kase, res);
	rows++;
}

/* ---- frames filled from the catalogue ---- */

static uint8_t filler[4096];
static char ones[1024];
static uint64_t victim_dev[1], victim_user[1];
static sp_bin one_bin[1];
static sp_frame recs[4];

/* Sets field `fld` of `f` to a value the catalogue accepts, naming the victim (B) where the
 * field names a device, user, group or blob. */
static void
fill_field(sp_frame *f, sp_field fld, int depth)
{
	const sp_field_def *fd = sp_field_def_get(fld);
	uint32_t len = fd->min ? fd->min : 1;
	if (len > fd->max && fd->max)
		len = fd->max;
	CHECK(len < sizeof(filler) && len < sizeof(ones), "field %s min %u", fd->name, fd->min);
	switch (fd->type) {
	case SP_FT_UINT:
		sp_frame_set_u64(f, fld, fld == SP_F_DEVICE || fld == SP_F_AUTH_DEVICE ? B.device
					 : fld == SP_F_USER || fld == SP_F_TO_USER || fld == SP_F_AUTH_USER ||
						   fld == SP_F_FROM_USER
					     ? B.user
					 : fld == SP_F_GROUP ? group_g
							     : 1);
		break;
	case SP_FT_INT:
		sp_frame_set_i64(f, fld, 1);
		break;
	case SP_FT_BOOL:
		sp_frame_set_bool(f, fld, true);
		break;
	case SP_FT_BIN:
		if (fld == SP_F_BLOB_ID)
			sp_frame_set_bin(f, fld, blob_id, 16);
		else
			sp_frame_set_bin(f, fld, filler, len);
		break;
	case SP_FT_STR:
		sp_frame_set_str(f, fld, ones + sizeof(ones) - 1 - len);
		break;
	case SP_FT_UINTS:
		sp_frame_set_u64s(f, fld, fld == SP_F_USERS || fld == SP_F_PRES_USERS ? victim_user : victim_dev, 1);
		break;
	case SP_FT_BINS:
		one_bin[0] = (sp_bin){filler, len};
		sp_frame_set_bins(f, fld, one_bin, 1);
		break;
	case SP_FT_RECS: {
		CHECK(depth == 0 && fd->rec > 0, "nested records in %s", fd->name);
		const sp_frame_def *rd = sp_frame_def_get((unsigned)fd->rec);
		sp_frame *r = &recs[0];
		sp_frame_init(r, (unsigned)fd->rec, 0, false);
		for (unsigned i = 0; i < rd->nfields; i++)
			if (rd->fields[i].required)
				fill_field(r, rd->fields[i].field, 1);
		sp_frame_set_recs(f, fld, r, 1);
		break;
	}
	}
}

/* A frame of `type` with every required field set. */
static void
fill(sp_frame *f, unsigned type, uint64_t id)
{
	const sp_frame_def *d = sp_frame_def_get(type);
	sp_frame_init(f, type, id, true);
	for (unsigned i = 0; i < d->nfields; i++)
		if (d->fields[i].required)
			fill_field(f, d->fields[i].field, 0);
}

/* ---- client connections ---- */

/* The next reply to request `id` (other frames skipped): its type; *code for an ERROR. */
static unsigned
reply_to(spc_conn *c, uint64_t id, int timeout_ms, int *code, sp_frame *keep)
{
	uint64_t deadline = sp_mono_ns() + (uint64_t)timeout_ms * 1000000ULL;
	*code = 0;
	for (;;) {
		sp_frame r;
		uint64_t now = sp_mono_ns();
		if (now >= deadline)
			return 0;
		int rc = spc_conn_recv(c, (int)((deadline - now) / 1000000ULL) + 1, &r);
		if (rc) {
			*code = rc;
			return 0;
		}
		bool mine = r.has_id && r.id == id;
		if (mine || (r.type == SP_T_ERROR && !r.has_id)) {
			unsigned t = r.type;
			if (t == SP_T_ERROR)
				*code = (int)sp_frame_i64(&r, SP_F_CODE);
			if (keep)
				*keep = r;
			else
				sp_frame_fini(&r);
			return t;
		}
		sp_frame_fini(&r);
	}
}

/* One request on `c`: the reply type (0: none) and the ERROR code. */
static unsigned
ask(spc_conn *c, const sp_frame *q, int *code, sp_frame *keep)
{
	int rc = spc_conn_send(c, q);
	if (rc) {
		*code = rc;
		return 0;
	}
	return reply_to(c, q->id, 10000, code, keep);
}

/* The session still answers PING (a refusal left it as it was). */
static bool
alive(spc_conn *c)
{
	sp_frame q;
	int code;
	sp_frame_init(&q, SP_T_PING, 999999, true);
	return ask(c, &q, &code, NULL) == SP_T_PONG;
}

/* Connection closed by the server: the next receive says so. */
static bool
closed(spc_conn *c)
{
	sp_frame r;
	for (int i = 0; i < 20; i++) {
		int rc = spc_conn_recv(c, 5000, &r);
		if (rc == SP_ECLOSED || (rc && rc != SP_ETIMEDOUT))
			return true;
		if (rc)
			return false;
		sp_frame_fini(&r);
	}
	return false;
}

/* ---- set-up: B's group with C, B's blob for C, B's privacy, C's message to B ---- */

static void
setup(void)
{
	sp_frame q, r;
	int code;
	CHECK(itest_login(&C, 1, &B) == SP_OK, "B login");
	uint64_t users[1] = {Cu.user};
	sp_frame_init(&q, SP_T_GROUP_CREATE, 1, true);
	sp_frame_set_str(&q, SP_F_GROUP_NAME, "B and C");
	sp_frame_set_u64s(&q, SP_F_USERS, users, 1);
	CHECK(ask(B.conn, &q, &code, &r) == SP_T_GROUP_R, "GROUP_CREATE: %s", sp_strerror(code));
	group_g = sp_frame_u64(&r, SP_F_GROUP);
	group_epoch = sp_frame_u64(&r, SP_F_EPOCH);
	sp_frame_fini(&r);

	randombytes_buf(blob_id, sizeof(blob_id));
	sp_frame_init(&q, SP_T_MEDIA_PUT, 2, true);
	sp_frame_set_bin(&q, SP_F_BLOB_ID, blob_id, 16);
	sp_frame_set_u64(&q, SP_F_OFFSET, 0);
	sp_frame_set_bin(&q, SP_F_BYTES, blob_bytes, sizeof(blob_bytes));
	CHECK(ask(B.conn, &q, &code, NULL) == SP_T_BLOB_STORED, "MEDIA_PUT: %s", sp_strerror(code));
	uint8_t sha[32];
	crypto_hash_sha256(sha, (const uint8_t *)blob_bytes, sizeof(blob_bytes));
	uint64_t devs[1] = {Cu.device};
	sp_frame_init(&q, SP_T_MEDIA_DONE, 3, true);
	sp_frame_set_bin(&q, SP_F_BLOB_ID, blob_id, 16);
	sp_frame_set_u64(&q, SP_F_SIZE, sizeof(blob_bytes));
	sp_frame_set_bin(&q, SP_F_SHA256, sha, 32);
	sp_frame_set_u64s(&q, SP_F_DEVICES, devs, 1);
	CHECK(ask(B.conn, &q, &code, NULL) == SP_T_OK, "MEDIA_DONE: %s", sp_strerror(code));

	sp_frame_init(&q, SP_T_PRIVACY_SET, 4, true);
	sp_frame_set_u64(&q, SP_F_PRIV_ONLINE, 2);
	sp_frame_set_u64(&q, SP_F_PRIV_LAST_SEEN, 2);
	CHECK(ask(B.conn, &q, &code, NULL) == SP_T_PRIVACY, "PRIVACY_SET: %s", sp_strerror(code));
	itest_logout(&B);

	CHECK(itest_login(&C, 1, &Cu) == SP_OK, "C login");
	itest_msg_id(msg_b);
	CHECK(itest_send(&Cu, B.user, &B.device, 1, msg_b, "hi B", 4) == SP_OK, "C -> B");
	itest_logout(&Cu);
}

/* ---- pre-login ---- */

static bool
unauthenticated_ok(unsigned t)
{
	const sp_frame_def *d = sp_frame_def_get(t);
	return d->login == SP_LOGIN_PRE || d->login == SP_LOGIN_ANY;
}

static void
pre_login(void)
{
	for (unsigned t = 0; t < 256; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		if (!d)
			continue;
		if (unauthenticated_ok(t)) {
			/* HELLO/AUTH are the login itself; REGISTER, VERIFY, LINK_REQUEST and
			 * LINK_STATUS are unauthenticated by design (keysrv's per-source and
			 * per-phone limits; keysrv_otp_itest). */
			row(d->name, "pre-login", "served (login %s)", d->login == SP_LOGIN_PRE ? "pre" : "any");
			continue;
		}
		spc_conn *c = itest_connect(&C, 0);
		sp_frame q;
		int code;
		fill(&q, t, 7);
		if (spc_conn_send(c, &q) != SP_OK) {
			CHECK(d->flags & SP_FL_RECORD, "%s does not encode", d->name);
			spc_conn_close(c);
			row(d->name, "pre-login", "record: not encodable as a frame");
			continue;
		}
		unsigned rt = reply_to(c, 7, 10000, &code, NULL);
		CHECK(rt == SP_T_ERROR && code == SP_EAUTH, "%s before login: reply %u code %s", d->name,
		    rt, sp_strerror(code));
		CHECK(closed(c), "%s before login: connection left open", d->name);
		spc_conn_close(c);
		row(d->name, "pre-login", "ERROR EAUTH, closed");
	}
}

/* ---- after login as A: frames a client may never send ---- */

static void
client_never(void)
{
	for (unsigned t = 0; t < 256; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		if (!d || sp_frame_client_may_send(t, true))
			continue;
		sp_frame q;
		int code;
		fill(&q, t, 100 + t);
		if (spc_conn_send(A.conn, &q) != SP_OK) {
			CHECK(d->flags & SP_FL_RECORD, "%s does not encode", d->name);
			row(d->name, "client, logged in", "record: not encodable as a frame");
			CHECK(alive(A.conn), "A's session after %s", d->name);
			continue;
		}
		unsigned rt = reply_to(A.conn, 100 + t, 10000, &code, NULL);
		CHECK(rt == SP_T_ERROR && code == SP_EPROTO, "%s after login: reply %u code %s", d->name,
		    rt, sp_strerror(code));
		row(d->name, "client, logged in", "ERROR EPROTO (not forwarded)");
	}
	CHECK(alive(A.conn), "A's session after the refusals");
}

/* ---- after login as A: another user's device, queue, blob, group ---- */

typedef struct post_row {
	unsigned type;
	/* NULL: the frame takes no other user's object (why). */
	void (*probe)(unsigned type);
	const char *why;
} post_row;

static void
expect_error(unsigned type, sp_frame *q, const int *codes, const char *what)
{
	int code;
	unsigned rt = ask(A.conn, q, &code, NULL);
	bool ok = rt == SP_T_ERROR;
	for (const int *c = codes; ok && *c; c++)
		if (*c == code)
			goto good;
	CHECK(false, "%s %s: reply %s code %s", sp_frame_type_name(type), what, sp_frame_type_name(rt),
	    sp_strerror(code));
good:
	row(sp_frame_type_name(type), what, "ERROR %s", sp_strerror(code));
}

static void
p_send(unsigned t)
{
	/* SEND to B naming C's device as B's: refused as a mismatch, C gets nothing. */
	sp_frame q, item, r;
	int code;
	uint8_t id[16];
	itest_msg_id(id);
	sp_frame_init(&q, t, 201, true);
	sp_frame_set_bin(&q, SP_F_MSG_ID, id, 16);
	sp_frame_set_u64(&q, SP_F_TO_USER, B.user);
	sp_frame_init(&item, SP_T_SEND_ITEM, 0, false);
	sp_frame_set_u64(&item, SP_F_DEVICE, Cu.device);
	sp_frame_set_u64(&item, SP_F_ETYPE, 1);
	sp_frame_set_bin(&item, SP_F_CT, "x", 1);
	sp_frame_set_recs(&q, SP_F_ITEMS, &item, 1);
	CHECK(spc_conn_send(A.conn, &q) == SP_OK, "send");
	for (;;) {
		CHECK(spc_conn_recv(A.conn, 10000, &r) == SP_OK, "SEND reply");
		bool mine = sp_frame_has(&r, SP_F_MSG_ID) && memcmp(sp_frame_bin(&r, SP_F_MSG_ID).p, id, 16) == 0;
		unsigned rt = r.type;
		code = rt == SP_T_ERROR ? (int)sp_frame_i64(&r, SP_F_CODE) : 0;
		sp_frame_fini(&r);
		if (!mine)
			continue;
		CHECK(rt == SP_T_MISMATCHED_DEVICES || rt == SP_T_ERROR, "SEND to B naming C's device: %s",
		    sp_frame_type_name(rt));
		row("SEND", "other user's device", "%s%s", sp_frame_type_name(rt),
		    rt == SP_T_ERROR ? sp_strerror(code) : " (C's device is not B's)");
		return;
	}
}

static void
p_send_group(unsigned t)
{
	sp_frame q;
	uint8_t id[16];
	itest_msg_id(id);
	sp_frame_init(&q, t, 202, true);
	sp_frame_set_u64(&q, SP_F_GROUP, group_g);
	sp_frame_set_bin(&q, SP_F_MSG_ID, id, 16);
	sp_frame_set_u64(&q, SP_F_ETYPE, 1);
	sp_frame_set_bin(&q, SP_F_BODY, "x", 1);
	expect_error(t, &q, (const int[]){SP_EPERM, SP_ENOTFOUND, 0}, "group A is not in");
}

/* SEND_SK (pairwise items to a group's devices) into B's group, naming B's device: A is
 * not a member. */
static void
p_send_sk(unsigned t)
{
	sp_frame q, item;
	uint8_t id[16];
	itest_msg_id(id);
	sp_frame_init(&q, t, 206, true);
	sp_frame_set_u64(&q, SP_F_GROUP, group_g);
	sp_frame_set_bin(&q, SP_F_MSG_ID, id, 16);
	sp_frame_init(&item, SP_T_SEND_ITEM, 0, false);
	sp_frame_set_u64(&item, SP_F_DEVICE, B.device);
	sp_frame_set_u64(&item, SP_F_ETYPE, 8);
	sp_frame_set_bin(&item, SP_F_CT, "x", 1);
	sp_frame_set_recs(&q, SP_F_ITEMS, &item, 1);
	expect_error(t, &q, (const int[]){SP_EPERM, SP_ENOTFOUND, 0}, "group A is not in");
}

static void
p_ack(unsigned t)
{
	sp_frame q;
	sp_frame_init(&q, t, 203, true);
	sp_frame_set_u64(&q, SP_F_UPTO_SEQ, 1000);
	expect_error(t, &q, (const int[]){SP_ERANGE, 0}, "seqs not delivered");
	uint64_t seqs[2] = {500, 501};
	sp_frame_init(&q, t, 204, true);
	sp_frame_set_u64s(&q, SP_F_SEQS, seqs, 2);
	expect_error(t, &q, (const int[]){SP_ERANGE, 0}, "seqs list not delivered");
}

/* Blob reads are by capability: the 16-byte random id, learnt only from the (end-to-end
 * encrypted) message, and the bytes are ciphertext under a key in that message. So A's read
 * of B's blob is served, but it is not a fetch: it deletes nothing and C, its listed
 * reader, still reads it whole afterwards (victims_intact). docs/SECURITY.md records this
 * as an open question (refusing unlisted devices needs an inbox change). */
static void
p_media_get(unsigned t)
{
	sp_frame q;
	int code;
	sp_frame_init(&q, t, 205, true);
	sp_frame_set_bin(&q, SP_F_BLOB_ID, blob_id, 16);
	sp_frame_set_u64(&q, SP_F_OFFSET, 0);
	sp_frame_set_u64(&q, SP_F_LEN, 1024);
	unsigned rt = ask(A.conn, &q, &code, NULL);
	CHECK(rt == SP_T_MEDIA_DATA || rt == SP_T_ERROR, "MEDIA_GET of B's blob: %s", sp_strerror(code));
	row("MEDIA_GET", "B's blob (for C)", "%s%s", rt == SP_T_ERROR ? "ERROR " : "",
	    rt == SP_T_ERROR ? sp_strerror(code) : "MEDIA_DATA: served by capability, not a fetch");
}

static void
p_media_put(unsigned t)
{
	sp_frame q;
	sp_frame_init(&q, t, 206, true);
	sp_frame_set_bin(&q, SP_F_BLOB_ID, blob_id, 16);
	sp_frame_set_u64(&q, SP_F_OFFSET, sizeof(blob_bytes));
	sp_frame_set_bin(&q, SP_F_BYTES, "tail", 4);
	expect_error(t, &q, (const int[]){SP_ESTATE, SP_EPERM, 0}, "B's finished blob");
}

static void
p_media_done(unsigned t)
{
	sp_frame q;
	uint8_t sha[32];
	uint64_t devs[1] = {A.device};
	crypto_hash_sha256(sha, (const uint8_t *)blob_bytes, sizeof(blob_bytes));
	sp_frame_init(&q, t, 207, true);
	sp_frame_set_bin(&q, SP_F_BLOB_ID, blob_id, 16);
	sp_frame_set_u64(&q, SP_F_SIZE, sizeof(blob_bytes));
	sp_frame_set_bin(&q, SP_F_SHA256, sha, 32);
	sp_frame_set_u64s(&q, SP_F_DEVICES, devs, 1);
	int code;
	unsigned rt = ask(A.conn, &q, &code, NULL);
	/* Finishing it again must not add A to its readers: MEDIA_GET stays refused. */
	row("MEDIA_DONE", "B's finished blob", "%s %s", sp_frame_type_name(rt), rt == SP_T_ERROR ? sp_strerror(code) : "");
	p_media_get(SP_T_MEDIA_GET);
}

static void
p_presence(unsigned t)
{
	sp_frame q, r;
	int code;
	uint64_t users[1] = {B.user};
	sp_frame_init(&q, t, 208, true);
	if (t == SP_T_PRESENCE_GET)
		sp_frame_set_u64(&q, SP_F_USER, B.user);
	else
		sp_frame_set_u64s(&q, SP_F_PRES_USERS, users, 1);
	unsigned rt = ask(A.conn, &q, &code, &r);
	if (t == SP_T_PRESENCE_GET) {
		CHECK(rt == SP_T_PRESENCE_R, "PRESENCE_GET: %s", sp_strerror(code));
		CHECK(!sp_frame_has(&r, SP_F_PRES_ONLINE) && !sp_frame_has(&r, SP_F_PRES_LAST_SEEN) &&
			  !sp_frame_has(&r, SP_F_PRES_RECENT),
		    "B's hidden presence shown to A");
		sp_frame_fini(&r);
		row("PRESENCE_GET", "user hiding presence", "PRESENCE_R, nothing shown");
		return;
	}
	CHECK(rt == SP_T_OK, "PRESENCE_SUB: %s", sp_strerror(code));
	/* B comes online: A must get no PRESENCE_EV showing it. */
	CHECK(itest_login(&C, 1, &B) == SP_OK, "B login");
	uint64_t deadline = sp_mono_ns() + 2000000000ULL;
	while (sp_mono_ns() < deadline) {
		int rc = spc_conn_recv(A.conn, 200, &r);
		if (rc)
			continue;
		CHECK(r.type != SP_T_PRESENCE_EV || (!sp_frame_has(&r, SP_F_PRES_ONLINE) &&
							 !sp_frame_has(&r, SP_F_PRES_LAST_SEEN)),
		    "B's hidden presence pushed to A");
		sp_frame_fini(&r);
	}
	itest_logout(&B);
	row("PRESENCE_SUB", "user hiding presence", "OK, no update shows B");
}

static void
p_remove_device(unsigned t)
{
	sp_frame q;
	sp_frame_init(&q, t, 209, true);
	sp_frame_set_u64(&q, SP_F_DEVICE, B.device);
	expect_error(t, &q, (const int[]){SP_EPERM, SP_ENOTFOUND, 0}, "B's device");
}

static void
p_group(unsigned t)
{
	sp_frame q;
	uint64_t users[1] = {A.user}, victims[1] = {Cu.user};
	sp_frame_init(&q, t, 210, true);
	sp_frame_set_u64(&q, SP_F_GROUP, group_g);
	if (t == SP_T_GROUP_ADD)
		sp_frame_set_u64s(&q, SP_F_USERS, users, 1);
	if (t == SP_T_GROUP_REMOVE)
		sp_frame_set_u64s(&q, SP_F_USERS, victims, 1);
	if (t == SP_T_GROUP_ADMIN) {
		sp_frame_set_u64s(&q, SP_F_USERS, users, 1);
		sp_frame_set_bool(&q, SP_F_ADMIN, true);
	}
	expect_error(t, &q, (const int[]){SP_EPERM, SP_ENOTFOUND, 0}, "group A is not in");
}

static void
p_link(unsigned t)
{
	/* A well-formed link code nobody issued (keysrv's alphabet): nothing to look up or
	 * confirm. */
	sp_frame q;
	fill(&q, t, 211);
	sp_frame_set_str(&q, SP_F_LINK_CODE, "ZZZZ2345");
	expect_error(t, &q, (const int[]){SP_ENOTFOUND, SP_EEXPIRED, 0}, "code not issued");
}

static const post_row post_rows[] = {
	{SP_T_PING, NULL, "no target"},
	{SP_T_PONG, NULL, "no target"},
	{SP_T_SEND, p_send, NULL},
	{SP_T_SEND_GROUP, p_send_group, NULL},
	{SP_T_SEND_SK, p_send_sk, NULL},
	{SP_T_ACK, p_ack, NULL},
	{SP_T_READ, NULL, "a receipt is a message to TO_USER (limited: receipt)"},
	{SP_T_READ_UPTO, NULL, "a receipt is a message to TO_USER (limited: receipt); applied by the sender only to what it sent the reader"},
	{SP_T_MEDIA_PUT, p_media_put, NULL},
	{SP_T_MEDIA_DONE, p_media_done, NULL},
	{SP_T_MEDIA_GET, p_media_get, NULL},
	{SP_T_TYPING, NULL, "ephemeral, to anyone (like a message)"},
	{SP_T_PRESENCE_SUB, p_presence, NULL},
	{SP_T_PRESENCE_GET, p_presence, NULL},
	{SP_T_LINK_LOOKUP, p_link, NULL},
	{SP_T_LINK_CONFIRM, p_link, NULL},
	{SP_T_DEVICES_GET, NULL, "device lists are public (keys)"},
	{SP_T_REMOVE_DEVICE, p_remove_device, NULL},
	{SP_T_KEYS_UPLOAD, NULL, "own device only (no target field)"},
	{SP_T_KEYS_STATUS, NULL, "own device only (no target field)"},
	{SP_T_BUNDLE_GET, NULL, "public by design (limited per requester and target)"},
	{SP_T_GROUP_CREATE, NULL, "own new group (adds: group_add setting, limits)"},
	{SP_T_GROUP_ADD, p_group, NULL},
	{SP_T_GROUP_REMOVE, p_group, NULL},
	{SP_T_GROUP_LEAVE, p_group, NULL},
	{SP_T_GROUP_ADMIN, p_group, NULL},
	{SP_T_GROUP_INFO, p_group, NULL},
	{SP_T_USER_LOOKUP, NULL, "contact discovery by design (limited)"},
	{SP_T_SET_PIN, NULL, "own account only (no target field)"},
	{SP_T_PUSH_REGISTER, NULL, "own device only (no target field)"},
	{SP_T_PRIVACY_SET, NULL, "own account only (no target field)"},
	{SP_T_CONTACTS_EDIT, NULL, "own contact set only"},
};

static void
other_user(void)
{
	for (unsigned t = 0; t < 256; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		if (!d || !sp_frame_client_may_send(t, true) || d->login == SP_LOGIN_ANY)
			continue;
		const post_row *pr = NULL;
		for (size_t i = 0; i < sizeof(post_rows) / sizeof(post_rows[0]); i++)
			if (post_rows[i].type == t)
				pr = &post_rows[i];
		CHECK(pr, "client frame %s (%u) has no row in post_rows: say how another user's "
			  "version of it is refused", d->name, t);
		if (pr->probe)
			pr->probe(t);
		else
			row(d->name, "other user", "n/a: %s", pr->why);
	}
	CHECK(alive(A.conn), "A's session after the probes");
}

/* ---- nothing read, written or deleted ---- */

static void
victims_intact(void)
{
	sp_frame q, r;
	int code;
	/* B's queue: C's message is still there. */
	CHECK(itest_login(&C, 1, &B) == SP_OK, "B login");
	bool got = false;
	while (!got) {
		CHECK(itest_wait(&B, SP_T_DELIVER, 15000, &r) == SP_OK, "B's stored message");
		got = memcmp(sp_frame_bin(&r, SP_F_MSG_ID).p, msg_b, 16) == 0;
		uint64_t seq = sp_frame_u64(&r, SP_F_SEQ);
		sp_frame_fini(&r);
		itest_ack(&B, seq);
	}
	/* B's group: same epoch, B and C only. */
	sp_frame_init(&q, SP_T_GROUP_INFO, 301, true);
	sp_frame_set_u64(&q, SP_F_GROUP, group_g);
	CHECK(ask(B.conn, &q, &code, &r) == SP_T_GROUP_INFO_R, "GROUP_INFO: %s", sp_strerror(code));
	CHECK(sp_frame_u64(&r, SP_F_EPOCH) == group_epoch && sp_frame_u64(&r, SP_F_COUNT) == 2,
	    "B's group changed: epoch %llu count %llu", (unsigned long long)sp_frame_u64(&r, SP_F_EPOCH),
	    (unsigned long long)sp_frame_u64(&r, SP_F_COUNT));
	sp_frame_fini(&r);
	/* C still reads B's blob whole. */
	CHECK(itest_login(&C, 0, &Cu) == SP_OK, "C login");
	sp_frame_init(&q, SP_T_MEDIA_GET, 302, true);
	sp_frame_set_bin(&q, SP_F_BLOB_ID, blob_id, 16);
	sp_frame_set_u64(&q, SP_F_OFFSET, 0);
	sp_frame_set_u64(&q, SP_F_LEN, 4096);
	CHECK(ask(Cu.conn, &q, &code, &r) == SP_T_MEDIA_DATA, "C's MEDIA_GET: %s", sp_strerror(code));
	sp_bin b = sp_frame_bin(&r, SP_F_BYTES);
	CHECK(b.len == sizeof(blob_bytes) && memcmp(b.p, blob_bytes, b.len) == 0, "B's blob changed");
	sp_frame_fini(&r);
	row("(victims)", "after every probe", "B's queue, group, session and C's blob intact");
}

/* ---- a removed device ---- */

static void
removed_device(void)
{
	CHECK(itest_login(&C, 1, &R) == SP_OK, "R login");
	itest_user r2;
	itest_register(&C, 0, &r2, R.phone); /* re-registration revokes R's device */
	uint64_t t0 = sp_mono_ns();
	bool gone = false;
	while (!gone && sp_mono_ns() - t0 < REVOKE_MS * 1000000ULL) {
		sp_frame f;
		int rc = spc_conn_recv(R.conn, 1000, &f);
		if (rc == SP_ETIMEDOUT) {
			/* A frame makes the session re-check its device (docs/SECURITY.md). */
			sp_frame q;
			sp_frame_init(&q, SP_T_KEYS_STATUS, 400, true);
			spc_conn_send(R.conn, &q);
			continue;
		}
		if (rc) {
			gone = true;
			break;
		}
		gone = f.type == SP_T_KICKED;
		sp_frame_fini(&f);
	}
	CHECK(gone, "removed device's session on connsrv-1 still open after %d ms", REVOKE_MS);
	row("(session)", "removed device", "kicked after %llu ms",
	    (unsigned long long)((sp_mono_ns() - t0) / 1000000ULL));
	int rc = itest_login(&C, 1, &R);
	CHECK(rc == SP_EAUTH, "removed device logged in again: %s", sp_strerror(rc));
	itest_logout(&R);
	row("AUTH", "removed device", "ERROR EAUTH");
}

/* ---- internal listeners ---- */

typedef enum { ID_NONE, ID_CERT } id_kind;

static const char *
certs_path(const char *name, const char *ext)
{
	static char p[4][300];
	static int k;
	char *out = p[k++ % 4];
	snprintf(out, 300, "%s/certs/internal/%s.%s", C.dir, name, ext);
	return out;
}

static nng_socket
probe_open(const char *member, const char *url, bool push)
{
	nng_socket s;
	int rv = push ? nng_push0_open(&s) : nng_req0_open(&s);
	CHECK(rv == 0, "socket: %s", nng_strerror(rv));
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, PROBE_MS);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, PROBE_MS);
	nng_socket_set_ms(s, NNG_OPT_RECONNMINT, 20);
	nng_socket_set_ms(s, NNG_OPT_RECONNMAXT, 200);
	nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 4 << 20);
	if (!member) {
		nng_tls_config *cfg;
		nng_dialer d;
		CHECK(nng_tls_config_alloc(&cfg, NNG_TLS_MODE_CLIENT) == 0, "tls config");
		CHECK(nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_NONE) == 0, "auth mode");
		CHECK(nng_dialer_create(&d, s, url) == 0, "dialer");
		CHECK(nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, cfg) == 0, "dialer tls");
		CHECK(nng_dialer_start(d, NNG_FLAG_NONBLOCK) == 0, "dial");
		nng_tls_config_free(cfg);
	} else {
		sp_nng_tls tls = {certs_path(member, "pem"), certs_path(member, "key"),
				  certs_path("root-ca", "pem"), NULL};
		CHECK(sp_nng_tls_init(&tls) == SP_OK, "tls init %s", member);
		CHECK(sp_nng_dial(s, url) == SP_OK, "dial %s", url);
	}
	return s;
}

static void
probe_close(nng_socket s)
{
	nng_close(s);
	sp_nng_tls_fini();
}

/* connsrv's counter of pull-socket frames read and not acted on. */
static long
pull_dropped(int metrics_port)
{
	char cmd[160], line[256];
	snprintf(cmd, sizeof(cmd), "curl -sf -m 3 http://127.0.0.1:%d/metrics", metrics_port);
	FILE *p = popen(cmd, "r");
	CHECK(p, "popen curl");
	long v = -1;
	while (fgets(line, sizeof(line), p))
		if (strncmp(line, "sp_connsrv_peer_frames_dropped_total ", 37) == 0)
			v = strtol(line + 37, NULL, 10);
	pclose(p);
	CHECK(v >= 0, "no sp_connsrv_peer_frames_dropped_total on port %d", metrics_port);
	return v;
}

typedef struct listener {
	const char *name;
	int port_off;
	bool pull;              /* a PULL socket (no replies) */
	const char *right;      /* a member of a role it serves */
	const char *wrong[3];   /* members of roles it does not serve */
	unsigned probe;         /* what the wrong ones try */
	bool (*serves)(unsigned type);
} listener;

static bool
s_keysrv(unsigned t)
{
	return sp_frame_def_get(t)->tier == SP_TIER_KEYSRV;
}
static bool
s_push(unsigned t)
{
	return t == SP_T_PUSH_TOKEN_GET || t == SP_T_PUSH_DROP;
}
/* An inbox copy also answers PING (a liveness check, no data). */
static bool
s_inbox(unsigned t)
{
	return sp_frame_def_get(t)->tier == SP_TIER_INBOX || t == SP_T_PING;
}
static bool
s_peer(unsigned t)
{
	return sp_frame_def_get(t)->tier == SP_TIER_PEER;
}
static bool
s_router(unsigned t)
{
	return sp_frame_def_get(t)->tier == SP_TIER_ROUTER;
}
static bool
s_repl(unsigned t)
{
	return sp_frame_def_get(t)->tier == SP_TIER_REPL;
}

static const listener listeners[] = {
	{"keysrv", 61, false, "connsrv-0", {"pushsrv", "inbox-0a", "router-a"}, SP_T_AUTH_KEY_GET, s_keysrv},
	{"keysrv push", 70, false, "pushsrv", {"connsrv-0", "inbox-0a", NULL}, SP_T_PUSH_TOKEN_GET, s_push},
	{"inbox-0a", 20, false, "connsrv-0", {"keysrv-a", "pushsrv", "router-a"}, SP_T_FETCH, s_inbox},
	{"connsrv-1 pull", 60, true, "inbox-0a", {"keysrv-a", "pushsrv", "router-a"}, SP_T_KICK, s_peer},
	{"router-a", 2, false, "connsrv-0", {"router-b", NULL, NULL}, SP_T_HEARTBEAT, s_router},
	{"keysrv-a repl", 64, false, "keysrv-a", {"connsrv-0", "inbox-0a", NULL}, SP_T_REPL_FETCH, s_repl},
	{"inbox-0a repl", 30, false, "inbox-0a", {"connsrv-0", "keysrv-a", NULL}, SP_T_REPL_FETCH, s_repl},
};

static void
internal(const listener *l)
{
	char url[64], kase[64];
	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%d", C.base + l->port_off);
	const char *ids[5] = {NULL, l->wrong[0], l->wrong[1], l->wrong[2]};
	long dropped0 = l->pull ? pull_dropped(C.base + 90) : 0;
	/* No certificate, wrong roles: the handshake fails, nothing is answered or read. */
	for (int i = 0; i < 4; i++) {
		if (i > 0 && !ids[i])
			continue;
		snprintf(kase, sizeof(kase), "%s: %s", l->name, ids[i] ? ids[i] : "no certificate");
		nng_socket s = probe_open(ids[i], url, l->pull);
		sp_frame q;
		fill(&q, l->probe, 500);
		if (l->pull) {
			nng_msg *m;
			CHECK(sp_nng_msg_from_frame(&q, &m) == SP_OK, "pack");
			if (nng_sendmsg(s, m, 0) != 0)
				nng_msg_free(m);
			usleep(PROBE_MS * 1000);
			row(sp_frame_type_name(l->probe), kase, "not read");
		} else {
			nng_msg *m = NULL;
			sp_frame rep;
			int rc = sp_nng_call(s, &q, &m, &rep);
			CHECK(!m && (rc == SP_ETIMEDOUT || rc == SP_ECLOSED), "%s %s: answered (%s)",
			    sp_frame_type_name(l->probe), kase, sp_strerror(rc));
			row(sp_frame_type_name(l->probe), kase, "no answer (%s)", sp_strerror(rc));
		}
		probe_close(s);
	}
	if (l->pull) {
		CHECK(pull_dropped(C.base + 90) == dropped0, "%s read a frame from a refused peer", l->name);
		CHECK(alive(B.conn), "B's session after forged KICKs");
	}
	/* The right role: every type the listener does not serve is refused. */
	snprintf(kase, sizeof(kase), "%s: %s", l->name, l->right);
	nng_socket s = probe_open(l->right, url, l->pull);
	/* This one must be answered: give a slow handshake (a loaded machine, ASan) time. */
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, 10000);
	int refused = 0, records = 0;
	for (unsigned t = 0; t < 256; t++) {
		const sp_frame_def *d = sp_frame_def_get(t);
		if (!d || l->serves(t))
			continue;
		sp_frame q;
		fill(&q, t, 600 + t);
		nng_msg *m = NULL;
		if (sp_nng_msg_from_frame(&q, &m) != SP_OK) {
			CHECK(d->flags & SP_FL_RECORD, "%s does not encode", d->name);
			records++;
			continue;
		}
		if (l->pull) {
			CHECK(nng_sendmsg(s, m, 0) == 0, "push %s", d->name);
			refused++;
			continue;
		}
		nng_msg_free(m);
		m = NULL;
		sp_frame rep;
		int rc = sp_nng_call(s, &q, &m, &rep);
		CHECK(m, "%s on %s: no reply (%s)", d->name, kase, sp_strerror(rc));
		CHECK(rep.type == SP_T_ERROR && rc == SP_EBADTYPE, "%s on %s: %s (%s)", d->name, kase,
		    sp_frame_type_name(rep.type), sp_strerror(rc));
		sp_frame_fini(&rep);
		nng_msg_free(m);
		refused++;
	}
	if (l->pull) {
		/* A PEER_BATCH from the right role: each element stands alone, and a malformed
		 * one, a batch inside the batch and a type the socket does not serve are each
		 * dropped and counted. */
		msgpack_sbuffer in, nest;
		msgpack_sbuffer_init(&in);
		msgpack_sbuffer_init(&nest);
		static const uint8_t junk[3] = {0xc1, 0x00, 0x00};
		sp_frame e, b;
		fill(&e, SP_T_ERROR, 1);
		CHECK(sp_frame_pack(&e, &in) == SP_OK, "pack ERROR");
		sp_bin one = {junk, sizeof(junk)};
		sp_frame_init(&b, SP_T_PEER_BATCH, 0, false);
		sp_frame_set_bins(&b, SP_F_PEER_FRAMES, &one, 1);
		CHECK(sp_frame_pack(&b, &nest) == SP_OK, "pack inner batch");
		sp_bin els[3] = {{junk, sizeof(junk)}, {(const uint8_t *)nest.data, (uint32_t)nest.size},
				 {(const uint8_t *)in.data, (uint32_t)in.size}};
		sp_frame_init(&b, SP_T_PEER_BATCH, 0, false);
		sp_frame_set_bins(&b, SP_F_PEER_FRAMES, els, 3);
		nng_msg *m = NULL;
		CHECK(sp_nng_msg_from_frame(&b, &m) == SP_OK, "pack PEER_BATCH");
		CHECK(nng_sendmsg(s, m, 0) == 0, "push PEER_BATCH");
		msgpack_sbuffer_destroy(&in);
		msgpack_sbuffer_destroy(&nest);
		refused += 3;
		uint64_t deadline = sp_mono_ns() + 10000000000ULL;
		while (pull_dropped(C.base + 90) < dropped0 + refused && sp_mono_ns() < deadline)
			usleep(100000);
		CHECK(pull_dropped(C.base + 90) == dropped0 + refused, "%s: %d frames it does not serve, "
		    "%ld dropped", l->name, refused, pull_dropped(C.base + 90) - dropped0);
		row("(every other type)", kase, "%d types read and dropped (%d records not encodable)",
		    refused - 3, records);
		row("PEER_BATCH", kase, "malformed, nested and unserved elements dropped, each counted");
	} else {
		row("(every other type)", kase, "%d types: ERROR EBADTYPE (%d records not encodable)",
		    refused, records);
	}
	probe_close(s);
}

/* The push listener with the push role does serve its two frames. */
static void
push_served(void)
{
	char url[64];
	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%d", C.base + 70);
	nng_socket s = probe_open("pushsrv", url, false);
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000);
	sp_frame q, rep;
	nng_msg *m = NULL;
	sp_frame_init(&q, SP_T_PUSH_TOKEN_GET, 700, true);
	sp_frame_set_u64(&q, SP_F_DEVICE, B.device);
	int rc = sp_nng_call(s, &q, &m, &rep);
	CHECK(rc == SP_OK && rep.type == SP_T_PUSH_TOKEN_R, "PUSH_TOKEN_GET on the push listener: %s",
	    sp_strerror(rc));
	sp_frame_fini(&rep);
	nng_msg_free(m);
	probe_close(s);
	row("PUSH_TOKEN_GET", "keysrv push: pushsrv", "PUSH_TOKEN_R (served)");
}

/* ---- router admin ---- */

static int
http_code(const char *args)
{
	char cmd[512], out[16] = "";
	snprintf(cmd, sizeof(cmd), "curl -s -o /dev/null -m 5 -w '%%{http_code}' %s", args);
	FILE *p = popen(cmd, "r");
	CHECK(p, "popen");
	if (!fgets(out, sizeof(out), p))
		out[0] = '\0';
	pclose(p);
	return atoi(out);
}

static void
admin(void)
{
	char a[256];
	snprintf(a, sizeof(a), "-X POST 'http://127.0.0.1:%d/drain?name=connsrv-1'", C.base + 9);
	CHECK(http_code(a) == 401, "drain without a token");
	row("POST /drain", "admin: no token", "401");
	snprintf(a, sizeof(a), "-X POST -H 'Authorization: Bearer not-the-operator-token' "
			       "'http://127.0.0.1:%d/drain?name=connsrv-1'", C.base + 9);
	CHECK(http_code(a) == 401, "drain with a wrong token");
	row("POST /drain", "admin: wrong token", "401");
	snprintf(a, sizeof(a), "-X POST 'http://127.0.0.1:%d/drain?name=connsrv-1'", C.base + 1);
	CHECK(http_code(a) == 403, "drain on the public listener");
	row("POST /drain", "admin: public listener", "403");
	CHECK(itest_sh(&C, "curl -sf -m 5 http://127.0.0.1:%d/map | jq -e '[.members[] | "
			   "select(.name == \"connsrv-1\" and (.draining // false))] | length == 0' "
			   ">/dev/null", C.base + 1) == 0,
	    "connsrv-1 drained by a refused request");
	row("(router map)", "admin: after the refusals", "connsrv-1 not draining");
}

int
main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	CHECK(sodium_init() >= 0, "sodium");
	memset(filler, 1, sizeof(filler));
	memset(ones, '1', sizeof(ones) - 1);
	/* One copy per group: the matrix is about who may ask, not about replication. */
	setenv("SEALPOST_DEVCLUSTER_COPIES", "1", 1);
	atexit(down);
	itest_cluster_up(&C);
	up = 1;
	uint64_t t0 = sp_mono_ns();
	itest_register(&C, 0, &A, "+15557010001");
	itest_register(&C, 0, &B, "+15557010002");
	itest_register(&C, 0, &Cu, "+15557010003");
	itest_register(&C, 0, &R, "+15557010004");
	victim_dev[0] = B.device;
	victim_user[0] = B.user;
	setup();

	pre_login();
	CHECK(itest_login(&C, 0, &A) == SP_OK, "A login");
	client_never();
	other_user();
	itest_logout(&A);
	victims_intact();
	removed_device();
	for (size_t i = 0; i < sizeof(listeners) / sizeof(listeners[0]); i++)
		internal(&listeners[i]);
	push_served();
	admin();
	printf("authz_matrix_itest: %d rows, all refused as the catalogue says (%.1f s)\n", rows,
	    (double)(sp_mono_ns() - t0) / 1e9);
	return 0;
}
