/* spsignal: drive the Signal core from the command line (JSON on stdout, one party's
 * state in a file). Used by the interop cross-tests; see usage() and docs/SIGNAL.md. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/signal/sig_state.h"
#include "sp_error.h"

#define MAX_STDIN (4u << 20)
#define MAX_STATE (256u << 20)

static const char usage_text[] =
    "usage: spsignal COMMAND STATE [ARGS]\n"
    "  init STATE --reg-id N --prekeys K [--device-id D]   new party; prints its bundle\n"
    "  bundle STATE                       bundle with the next unused one-time prekey\n"
    "  encrypt STATE PEER [BUNDLE.json]   plaintext on stdin -> {\"type\",\"body\"}\n"
    "  decrypt STATE PEER                 {\"type\",\"body\"} on stdin -> {\"ok\",\"plaintext\"}\n"
    "  trust STATE PEER IDENTITY_B64      accept a changed identity key for PEER\n"
    "  sk-create STATE GROUP [--rotate]   -> {\"skdm\"}\n"
    "  sk-process STATE GROUP SENDER      {\"skdm\"} on stdin\n"
    "  sk-encrypt STATE GROUP             plaintext on stdin -> {\"type\":\"senderkey\",\"body\"}\n"
    "  sk-decrypt STATE GROUP SENDER      {\"type\",\"body\"} on stdin -> {\"ok\",\"plaintext\"}\n"
    "Keys are base64 of the 33-byte 0x05 form. Errors: {\"ok\":false,\"error\":...}, exit 1;\n"
    "bad arguments: exit 2. The state file is replaced atomically, and only on success.\n";

/* The loaded state (wiped and freed by fail() too), and the heap blocks of the running
 * command: fail() ends the process, and keeping them reachable keeps leak checkers quiet
 * about that deliberate exit. */
static sig_store *g_store;
static void *g_roots[32];
static unsigned g_nroots;

static void *
root(void *p)
{
	if (g_nroots < sizeof(g_roots) / sizeof(g_roots[0]))
		g_roots[g_nroots++] = p;
	return p;
}

static void
drop_state(void)
{
	sig_store_free(g_store);
	g_store = NULL;
}

static void
die_usage(const char *fmt, ...)
{
	va_list ap;

	fputs("spsignal: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (see spsignal --help)\n", stderr);
	exit(2);
}

/* Operational failure: JSON on stdout, one line on stderr, exit 1. */
static void
fail(int rc, const char *what)
{
	const char *text = sp_strerror(rc);

	if (rc == SP_EIDENTITY)
		text = "identity key changed (security code changed)";
	else if (rc == SP_EMALFORMED)
		text = "malformed input";
	else if (rc == SP_ECRYPTO)
		text = "bad MAC, padding or key";
	printf("{\"ok\":false,\"error\":\"%s: %s\",\"code\":\"%s\"}\n", what, text, sp_errname(rc));
	fprintf(stderr, "spsignal: %s: %s\n", what, text);
	drop_state();
	exit(1);
}

static int
read_all(FILE *f, uint8_t **out, size_t *len, size_t max)
{
	size_t cap = 4096, n = 0;
	uint8_t *b = malloc(cap), *nb;

	if (b == NULL)
		return SP_ENOMEM;
	for (;;) {
		size_t r;

		if (n == cap) {
			if (cap >= max) {
				free(b);
				return SP_ETOOBIG;
			}
			cap *= 2;
			if ((nb = realloc(b, cap)) == NULL) {
				free(b);
				return SP_ENOMEM;
			}
			b = nb;
		}
		r = fread(b + n, 1, cap - n, f);
		n += r;
		if (r == 0) {
			if (ferror(f)) {
				free(b);
				return SP_EIO;
			}
			break;
		}
	}
	if (n > max) {
		free(b);
		return SP_ETOOBIG;
	}
	*out = root(b);
	*len = n;
	return SP_OK;
}

static int
load_file(const char *path, uint8_t **out, size_t *len, size_t max)
{
	FILE *f = fopen(path, "rb");
	int rc;

	if (f == NULL)
		return errno == ENOENT ? SP_ENOTFOUND : SP_EIO;
	rc = read_all(f, out, len, max);
	fclose(f);
	return rc;
}

/* Writes temp + fsync + rename + fsync(dir). */
static int
write_atomic(const char *path, const uint8_t *data, size_t len)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	char *slash;
	int fd, rc = SP_EIO;
	size_t off = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
		return SP_EINVAL;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return SP_EIO;
	while (off < len) {
		ssize_t w = write(fd, data + off, len - off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			goto out;
		}
		off += (size_t)w;
	}
	if (fsync(fd) != 0)
		goto out;
	if (close(fd) != 0) {
		fd = -1;
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) != 0)
		goto out;
	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dir)
		dir[1] = 0;
	else
		*slash = 0;
	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
		(void)fsync(fd);
		close(fd);
		fd = -1;
	}
	rc = SP_OK;
out:
	if (fd >= 0)
		close(fd);
	if (rc != SP_OK)
		unlink(tmp);
	return rc;
}

static sig_store *
load_state(const char *path)
{
	uint8_t *blob;
	size_t len;
	sig_store *s;
	int rc;

	if ((rc = load_file(path, &blob, &len, MAX_STATE)) != SP_OK)
		fail(rc, "cannot read state file");
	rc = sig_store_deserialize(&s, blob, len);
	sodium_memzero(blob, len);
	free(blob);
	if (rc != SP_OK)
		fail(rc, "damaged state file");
	g_store = s;
	return s;
}

static void
save_state(const char *path, const sig_store *s)
{
	uint8_t *blob;
	size_t len;
	int rc;

	if ((rc = sig_store_serialize(s, &blob, &len)) != SP_OK)
		fail(rc, "cannot serialize state");
	rc = write_atomic(path, blob, len);
	sodium_memzero(blob, len);
	free(blob);
	if (rc != SP_OK)
		fail(rc, "cannot write state file");
}

/* base64 (standard alphabet) into a malloc'd string. */
static char *
b64(const uint8_t *p, size_t n)
{
	size_t l = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
	char *s = malloc(l);

	if (s == NULL)
		fail(SP_ENOMEM, "base64");
	sodium_bin2base64(s, l, p, n, sodium_base64_VARIANT_ORIGINAL);
	return s;
}

/* Decodes base64 (padded or not) into a malloc'd buffer. */
static int
unb64(const char *s, uint8_t **out, size_t *len)
{
	size_t sl = strlen(s), cap = sl / 4 * 3 + 3, n = 0;
	uint8_t *b = malloc(cap ? cap : 1);
	const char *end = NULL;

	if (b == NULL)
		return SP_ENOMEM;
	if (sodium_base642bin(b, cap, s, sl, " \r\n", &n, &end, sodium_base64_VARIANT_ORIGINAL) != 0 ||
	    end != s + sl) {
		if (sodium_base642bin(b, cap, s, sl, " \r\n", &n, &end,
		        sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0 || end != s + sl) {
			free(b);
			return SP_EMALFORMED;
		}
	}
	*out = root(b);
	*len = n;
	return SP_OK;
}

/* ---- JSON input through SQLite's json1 ---- */

static sqlite3 *jdb;

static void
json_open(void)
{
	if (sqlite3_open(":memory:", &jdb) != SQLITE_OK)
		fail(SP_ENOMEM, "sqlite");
}

static int
json_valid(const char *json)
{
	sqlite3_stmt *st;
	int ok = 0;

	if (sqlite3_prepare_v2(jdb, "SELECT json_valid(?1) AND json_type(?1) = 'object'", -1, &st, NULL) != SQLITE_OK)
		return 0;
	sqlite3_bind_text(st, 1, json, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		ok = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	return ok;
}

/* Text at path (malloc'd) or NULL when absent / not a string. */
static char *
json_text(const char *json, const char *path)
{
	sqlite3_stmt *st;
	char *out = NULL;

	if (sqlite3_prepare_v2(jdb, "SELECT json_type(?1, ?2), json_extract(?1, ?2)", -1, &st, NULL) != SQLITE_OK)
		return NULL;
	sqlite3_bind_text(st, 1, json, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_TEXT &&
	    strcmp((const char *)sqlite3_column_text(st, 0), "text") == 0) {
		const char *t = (const char *)sqlite3_column_text(st, 1);

		out = root(strdup(t != NULL ? t : ""));
	}
	sqlite3_finalize(st);
	return out;
}

/* Integer at path into *v; 0 if absent or not an integer in [0, UINT32_MAX]. */
static int
json_u32(const char *json, const char *path, uint32_t *v)
{
	sqlite3_stmt *st;
	int ok = 0;

	if (sqlite3_prepare_v2(jdb, "SELECT json_type(?1, ?2), json_extract(?1, ?2)", -1, &st, NULL) != SQLITE_OK)
		return 0;
	sqlite3_bind_text(st, 1, json, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, path, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_TEXT &&
	    strcmp((const char *)sqlite3_column_text(st, 0), "integer") == 0) {
		sqlite3_int64 x = sqlite3_column_int64(st, 1);

		if (x >= 0 && x <= UINT32_MAX) {
			*v = (uint32_t)x;
			ok = 1;
		}
	}
	sqlite3_finalize(st);
	return ok;
}

static int
json_key(const char *json, const char *path, uint8_t *dst, size_t want)
{
	char *t = json_text(json, path);
	uint8_t *b;
	size_t n;
	int rc;

	if (t == NULL)
		return SP_EMISSING;
	rc = unb64(t, &b, &n);
	free(t);
	if (rc != SP_OK)
		return rc;
	if (n != want) {
		free(b);
		return SP_EFIELDLEN;
	}
	memcpy(dst, b, n);
	free(b);
	return SP_OK;
}

static char *
read_stdin_text(void)
{
	uint8_t *b, *nb;
	size_t n;
	int rc;

	if ((rc = read_all(stdin, &b, &n, MAX_STDIN)) != SP_OK)
		fail(rc, "cannot read stdin");
	if ((nb = realloc(b, n + 1)) == NULL) {
		free(b);
		fail(SP_ENOMEM, "stdin");
	}
	root(nb);
	nb[n] = 0;
	if (memchr(nb, 0, n) != NULL) {
		free(nb);
		fail(SP_EMALFORMED, "stdin holds a NUL byte");
	}
	return (char *)nb;
}

static int
parse_bundle(const char *json, sig_bundle *b)
{
	int rc;

	memset(b, 0, sizeof(*b));
	if (!json_valid(json))
		return SP_EMALFORMED;
	if (!json_u32(json, "$.registrationId", &b->registration_id) ||
	    !json_u32(json, "$.signedPreKey.keyId", &b->signed_prekey_id))
		return SP_EMISSING;
	if (!json_u32(json, "$.deviceId", &b->device_id))
		b->device_id = 1;
	if ((rc = json_key(json, "$.identityKey", b->identity_key, SIG_PUB_LEN)) != SP_OK ||
	    (rc = json_key(json, "$.signedPreKey.publicKey", b->signed_prekey, SIG_PUB_LEN)) != SP_OK ||
	    (rc = json_key(json, "$.signedPreKey.signature", b->signed_prekey_sig, SIG_SIG_LEN)) != SP_OK)
		return rc;
	if (json_u32(json, "$.preKey.keyId", &b->prekey_id)) {
		if ((rc = json_key(json, "$.preKey.publicKey", b->prekey, SIG_PUB_LEN)) != SP_OK)
			return rc;
		b->has_prekey = 1;
	}
	return SP_OK;
}

static void
print_bundle(const sig_bundle *b)
{
	char *ik = b64(b->identity_key, SIG_PUB_LEN), *spk = b64(b->signed_prekey, SIG_PUB_LEN),
	     *sig = b64(b->signed_prekey_sig, SIG_SIG_LEN);

	printf("{\"registrationId\":%u,\"deviceId\":%u,\"identityKey\":\"%s\","
	       "\"signedPreKey\":{\"keyId\":%u,\"publicKey\":\"%s\",\"signature\":\"%s\"}",
	    b->registration_id, b->device_id, ik, b->signed_prekey_id, spk, sig);
	if (b->has_prekey) {
		char *pk = b64(b->prekey, SIG_PUB_LEN);

		printf(",\"preKey\":{\"keyId\":%u,\"publicKey\":\"%s\"}", b->prekey_id, pk);
		free(pk);
	}
	printf("}\n");
	free(ik);
	free(spk);
	free(sig);
}

static uint32_t
parse_u32_arg(const char *name, const char *v, uint32_t max)
{
	char *end;
	unsigned long x;

	errno = 0;
	x = strtoul(v, &end, 10);
	if (errno || end == v || *end || v[0] == '-' || x > max)
		die_usage("%s must be an integer in 0..%u, got '%s'", name, max, v);
	return (uint32_t)x;
}

static void
check_name(const char *what, const char *n)
{
	if (n[0] == 0 || strlen(n) > SIG_MAX_NAME)
		die_usage("%s must be 1..%d bytes", what, SIG_MAX_NAME);
}

static void
nargs(int argc, int lo, int hi, const char *cmd)
{
	if (argc < lo || argc > hi)
		die_usage("wrong number of arguments for '%s'", cmd);
}

static int
cmd_init(int argc, char **argv)
{
	uint32_t reg = 0, npk = 0, dev = 1;
	int have_reg = 0, have_pk = 0, rc;
	sig_store *s;
	sig_bundle b;
	struct stat stt;

	for (int i = 3; i < argc; i++) {
		if (i + 1 >= argc)
			die_usage("option '%s' needs a value", argv[i]);
		if (strcmp(argv[i], "--reg-id") == 0) {
			reg = parse_u32_arg("--reg-id", argv[++i], 0x3fff);
			have_reg = 1;
		} else if (strcmp(argv[i], "--prekeys") == 0) {
			npk = parse_u32_arg("--prekeys", argv[++i], SIG_MAX_PREKEYS);
			have_pk = 1;
		} else if (strcmp(argv[i], "--device-id") == 0) {
			dev = parse_u32_arg("--device-id", argv[++i], INT32_MAX);
		} else {
			die_usage("unknown option '%s'", argv[i]);
		}
	}
	if (!have_reg || !have_pk)
		die_usage("init needs --reg-id N and --prekeys K");
	if (stat(argv[2], &stt) == 0)
		fail(SP_EEXIST, "state file exists");
	if ((rc = sig_store_generate(&s, reg, dev, npk)) != SP_OK)
		fail(rc, "cannot create keys");
	g_store = s;
	if ((rc = sig_store_bundle(s, &b, 1)) != SP_OK)
		fail(rc, "bundle");
	save_state(argv[2], s);
	print_bundle(&b);
	drop_state();
	return 0;
}

static int
cmd_bundle(int argc, char **argv)
{
	sig_store *s;
	sig_bundle b;
	int rc;

	nargs(argc, 3, 3, "bundle");
	s = load_state(argv[2]);
	if ((rc = sig_store_bundle(s, &b, 1)) != SP_OK)
		fail(rc, "bundle");
	save_state(argv[2], s);
	print_bundle(&b);
	drop_state();
	return 0;
}

/* Prints {"type","body"} for a ciphertext and frees it. */
static void
print_ciphertext(const char *type, uint8_t *out, size_t outlen)
{
	char *body = b64(out, outlen);

	printf("{\"type\":\"%s\",\"body\":\"%s\"}\n", type, body);
	free(body);
	free(out);
}

static int
cmd_encrypt(int argc, char **argv)
{
	sig_store *s;
	sig_bundle b, *bp = NULL;
	uint8_t *pt, *out;
	size_t ptlen, outlen;
	int rc, type;

	nargs(argc, 4, 5, "encrypt");
	check_name("PEER", argv[3]);
	s = load_state(argv[2]);
	if (argc == 5) {
		uint8_t *j;
		size_t jl;
		char *js;

		if ((rc = load_file(argv[4], &j, &jl, 1u << 16)) != SP_OK)
			fail(rc, "cannot read bundle file");
		if ((js = root(malloc(jl + 1))) == NULL)
			fail(SP_ENOMEM, "bundle");
		memcpy(js, j, jl);
		js[jl] = 0;
		free(j);
		if ((rc = parse_bundle(js, &b)) != SP_OK)
			fail(rc, "bad bundle");
		free(js);
		bp = &b;
	}
	if ((rc = read_all(stdin, &pt, &ptlen, SIG_MAX_PLAINTEXT)) != SP_OK)
		fail(rc, "cannot read plaintext");
	if ((rc = sig_store_encrypt(s, argv[3], bp, pt, ptlen, &out, &outlen, &type)) != SP_OK)
		fail(rc, bp ? "cannot start session" : rc == SP_ENOTFOUND ? "no session with peer (pass its bundle)" : "cannot encrypt");
	root(out);
	save_state(argv[2], s);
	print_ciphertext(type == SIG_MSG_PREKEY ? "prekey" : "whisper", out, outlen);
	sodium_memzero(pt, ptlen);
	free(pt);
	drop_state();
	return 0;
}

/* Reads {"type","body"} from stdin; returns the body and its type string. */
static uint8_t *
read_message(size_t *len, char **type)
{
	char *in = read_stdin_text(), *body;
	uint8_t *msg;
	int rc;

	if (!json_valid(in))
		fail(SP_EMALFORMED, "input is not a JSON object");
	*type = json_text(in, "$.type");
	body = json_text(in, "$.body");
	if (*type == NULL || body == NULL)
		fail(SP_EMISSING, "input needs \"type\" and \"body\"");
	if ((rc = unb64(body, &msg, len)) != SP_OK)
		fail(rc, "body is not base64");
	free(body);
	free(in);
	return msg;
}

static void
print_plaintext(uint8_t *pt, size_t ptlen)
{
	char *t = b64(pt, ptlen);

	printf("{\"ok\":true,\"plaintext\":\"%s\"}\n", t);
	free(t);
	sodium_memzero(pt, ptlen);
	free(pt);
}

static int
cmd_decrypt(int argc, char **argv)
{
	sig_store *s;
	uint8_t *msg, *pt;
	size_t len, ptlen;
	char *type;
	int rc, t;

	nargs(argc, 4, 4, "decrypt");
	check_name("PEER", argv[3]);
	s = load_state(argv[2]);
	msg = read_message(&len, &type);
	if (strcmp(type, "prekey") == 0 || strcmp(type, "3") == 0)
		t = SIG_MSG_PREKEY;
	else if (strcmp(type, "whisper") == 0 || strcmp(type, "1") == 0 || strcmp(type, "2") == 0)
		t = SIG_MSG_WHISPER;
	else
		fail(SP_EBADTYPE, "unknown message type");
	if ((rc = sig_store_decrypt(s, argv[3], t, msg, len, &pt, &ptlen)) != SP_OK)
		fail(rc, "decrypt failed");
	root(pt);
	save_state(argv[2], s);
	print_plaintext(pt, ptlen);
	free(type);
	free(msg);
	drop_state();
	return 0;
}

static int
cmd_trust(int argc, char **argv)
{
	sig_store *s;
	uint8_t *id;
	size_t n;
	int rc;

	nargs(argc, 5, 5, "trust");
	check_name("PEER", argv[3]);
	if (unb64(argv[4], &id, &n) != SP_OK || n != SIG_PUB_LEN || id[0] != SIG_KEY_TYPE)
		die_usage("IDENTITY must be base64 of a 33-byte 0x05 key");
	s = load_state(argv[2]);
	if ((rc = sig_store_trust_identity(s, argv[3], id)) != SP_OK)
		fail(rc, "trust");
	save_state(argv[2], s);
	printf("{\"ok\":true}\n");
	free(id);
	drop_state();
	return 0;
}

static int
cmd_sk_create(int argc, char **argv)
{
	sig_store *s;
	uint8_t *out;
	size_t len;
	int rc, rotate = 0;
	char *t;

	nargs(argc, 4, 5, "sk-create");
	check_name("GROUP", argv[3]);
	if (argc == 5) {
		if (strcmp(argv[4], "--rotate") != 0)
			die_usage("unknown option '%s'", argv[4]);
		rotate = 1;
	}
	s = load_state(argv[2]);
	if ((rc = sig_store_sk_distribution(s, argv[3], rotate, &out, &len)) != SP_OK)
		fail(rc, "sender key");
	root(out);
	save_state(argv[2], s);
	t = b64(out, len);
	printf("{\"skdm\":\"%s\"}\n", t);
	free(t);
	sodium_memzero(out, len);
	free(out);
	drop_state();
	return 0;
}

static int
cmd_sk_process(int argc, char **argv)
{
	sig_store *s;
	char *in, *skdm;
	uint8_t *m;
	size_t len;
	int rc;

	nargs(argc, 5, 5, "sk-process");
	check_name("GROUP", argv[3]);
	check_name("SENDER", argv[4]);
	s = load_state(argv[2]);
	in = read_stdin_text();
	if (!json_valid(in) || (skdm = json_text(in, "$.skdm")) == NULL)
		fail(SP_EMALFORMED, "input needs {\"skdm\":BASE64}");
	if ((rc = unb64(skdm, &m, &len)) != SP_OK)
		fail(rc, "skdm is not base64");
	if ((rc = sig_store_sk_process(s, argv[3], argv[4], m, len)) != SP_OK)
		fail(rc, "cannot process distribution message");
	save_state(argv[2], s);
	printf("{\"ok\":true}\n");
	sodium_memzero(m, len);
	free(m);
	free(skdm);
	free(in);
	drop_state();
	return 0;
}

static int
cmd_sk_encrypt(int argc, char **argv)
{
	sig_store *s;
	uint8_t *pt, *out;
	size_t ptlen, outlen;
	int rc;

	nargs(argc, 4, 4, "sk-encrypt");
	check_name("GROUP", argv[3]);
	s = load_state(argv[2]);
	if ((rc = read_all(stdin, &pt, &ptlen, SIG_MAX_PLAINTEXT)) != SP_OK)
		fail(rc, "cannot read plaintext");
	if ((rc = sig_store_sk_encrypt(s, argv[3], pt, ptlen, &out, &outlen)) != SP_OK)
		fail(rc, rc == SP_ENOTFOUND ? "no sender key for group (run sk-create first)" : "cannot encrypt");
	root(out);
	save_state(argv[2], s);
	print_ciphertext("senderkey", out, outlen);
	sodium_memzero(pt, ptlen);
	free(pt);
	drop_state();
	return 0;
}

static int
cmd_sk_decrypt(int argc, char **argv)
{
	sig_store *s;
	uint8_t *msg, *pt;
	size_t len, ptlen;
	char *type;
	int rc;

	nargs(argc, 5, 5, "sk-decrypt");
	check_name("GROUP", argv[3]);
	check_name("SENDER", argv[4]);
	s = load_state(argv[2]);
	msg = read_message(&len, &type);
	if (strcmp(type, "senderkey") != 0 && strcmp(type, "7") != 0)
		fail(SP_EBADTYPE, "unknown message type");
	if ((rc = sig_store_sk_decrypt(s, argv[3], argv[4], msg, len, &pt, &ptlen)) != SP_OK)
		fail(rc, "decrypt failed");
	root(pt);
	save_state(argv[2], s);
	print_plaintext(pt, ptlen);
	free(type);
	free(msg);
	drop_state();
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} cmds[] = {
		{ "init", cmd_init },
		{ "bundle", cmd_bundle },
		{ "encrypt", cmd_encrypt },
		{ "decrypt", cmd_decrypt },
		{ "trust", cmd_trust },
		{ "sk-create", cmd_sk_create },
		{ "sk-process", cmd_sk_process },
		{ "sk-encrypt", cmd_sk_encrypt },
		{ "sk-decrypt", cmd_sk_decrypt },
	};

	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	                     strcmp(argv[1], "help") == 0)) {
		fputs(usage_text, stdout);
		return 0;
	}
	if (argc < 3)
		die_usage(argc < 2 ? "missing command" : "missing STATE file");
	if (sodium_init() < 0) {
		fprintf(stderr, "spsignal: libsodium failed to initialise\n");
		return 1;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (strcmp(argv[1], cmds[i].name) == 0) {
			int rc;

			if (argv[2][0] == 0)
				die_usage("STATE must not be empty");
			json_open();
			rc = cmds[i].fn(argc, argv);
			sqlite3_close(jdb);
			return rc;
		}
	}
	die_usage("unknown command '%s'", argv[1]);
	return 2;
}
