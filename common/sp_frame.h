/*
 * The frame catalogue and codec.
 *
 * A frame on the wire is one msgpack map whose first key is "t" (the frame type, an
 * unsigned integer), optionally followed by "id" (a request id echoed in the reply), then
 * the frame's fields. Between client and connsrv each frame is preceded by a 4-byte
 * big-endian length (see sp_framer.h); over NNG one message carries one map.
 *
 * Every frame type and field is declared once, in common/defs/ *.def, and the generic
 * encoder and decoder below are driven by those tables: adding a frame is one SP_FRAME
 * line (plus SP_FIELD lines for new fields).
 *
 * Decoding is strict: unknown types, unknown or repeated keys, wrong value types, lengths
 * and counts outside the declared bounds, missing required fields and trailing bytes are
 * errors with distinct codes. Binary and string values are not copied: they point into
 * the decoded buffer, which must outlive the frame. Arrays are allocated in the frame's
 * zone (freed by sp_frame_fini), only after their counts are bounded.
 */
#ifndef SP_FRAME_H
#define SP_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "sp_proto.h" /* bounds the catalogue uses */

typedef enum {
	SP_FT_UINT,  /* uint64 */
	SP_FT_INT,   /* int64 (negative values allowed) */
	SP_FT_BOOL,
	SP_FT_BIN,   /* msgpack bin, length in [min,max] */
	SP_FT_STR,   /* msgpack str (UTF-8 not checked), length in [min,max]; not NUL-terminated */
	SP_FT_UINTS, /* array of uint64, count <= max_count */
	SP_FT_BINS,  /* array of bin, each length in [min,max], count <= max_count */
	SP_FT_RECS,  /* array of maps of record type `rec`, count <= max_count */
} sp_ftype;

/* Frame types: SP_T_<NAME> = number, from the .def files. */
typedef enum {
	SP_T_NONE = -1, /* "no record type" in field definitions */
#define SP_FRAME(name, num, flags, serve, fields) SP_T_##name = num,
#include "defs/frames_all.def"
#undef SP_FRAME
	SP_T__MAX = 256
} sp_ftype_id;

/* Fields: SP_F_<NAME>, dense indices into the field table. */
typedef enum {
#define SP_FIELD(name, key, type, min, max, max_count, rec) SP_F_##name,
#include "defs/fields_all.def"
#undef SP_FIELD
	SP_F__COUNT
} sp_field;

/* Frame flags. */
#define SP_FL_RECORD 0x1 /* only valid nested in an SP_FT_RECS field, never top level */
#define SP_FL_LARGE  0x2 /* may use the large frame limit (media chunks) */
#define SP_FL_RATED  0x4 /* a client's frame that takes a token from its send bucket */

/* Who serves a request (the catalogue's serve column, see defs/frames_all.def). */
typedef enum {
	SP_TIER_NONE, /* not a request */
	SP_TIER_CONNSRV,
	SP_TIER_KEYSRV,
	SP_TIER_INBOX,
	SP_TIER_ROUTER,
	SP_TIER_PEER, /* connsrv's pull socket */
	SP_TIER_REPL, /* a shard primary's replication endpoint (inboxsrv/repl.h) */
} sp_tier;

/* When a client may send a frame (the catalogue's serve column). */
typedef enum {
	SP_LOGIN_NO,   /* never: servers only */
	SP_LOGIN_PRE,  /* only before login (the login exchange itself) */
	SP_LOGIN_ANY,  /* before and after login */
	SP_LOGIN_POST, /* only once logged in */
} sp_login;

#define SP_FRAME_MAX_FIELDS 16 /* per frame type, excluding t and id */
#define SP_FRAME_MAX_DEPTH 3   /* nesting of record arrays */

typedef struct sp_bin {
	const uint8_t *p;
	uint32_t len;
} sp_bin;

typedef struct sp_frame sp_frame;

typedef struct sp_val {
	union {
		uint64_t u; /* UINT, BOOL (0/1) */
		int64_t i;  /* INT */
		sp_bin b;   /* BIN, STR */
		struct {
			const uint64_t *v;
			uint32_t n;
		} us; /* UINTS */
		struct {
			const sp_bin *v;
			uint32_t n;
		} bs; /* BINS */
		struct {
			const sp_frame *v;
			uint32_t n;
		} rs; /* RECS */
	};
} sp_val;

/* A frame or a record. Values are indexed by the slot of the field in the type's spec. */
struct sp_frame {
	uint8_t type;
	bool has_id;
	uint64_t id;
	uint32_t present; /* bit s: slot s has a value */
	sp_val v[SP_FRAME_MAX_FIELDS];
	msgpack_zone *zone; /* decoder-owned arrays; NULL if none */
};

typedef struct sp_field_def {
	const char *key; /* wire key */
	const char *name;
	sp_ftype type;
	uint32_t min, max; /* value length bounds (BIN, STR, BINS elements) */
	uint32_t max_count; /* array count bound (UINTS, BINS, RECS) */
	int rec;            /* record frame type for RECS, else -1 */
} sp_field_def;

typedef struct sp_field_spec {
	sp_field field;
	bool required;
} sp_field_spec;

typedef struct sp_frame_def {
	const char *name; /* NULL for unused type numbers */
	unsigned flags;
	uint8_t nfields;
	const sp_field_spec *fields;
	sp_tier tier;   /* who serves it (SP_TIER_NONE: not a request) */
	sp_login login; /* whether and when clients may send it */
	int reply;      /* type of a success reply; SP_T_NONE: none */
} sp_frame_def;

/* Catalogue lookups. sp_frame_def_get returns NULL for an unknown type. */
const sp_frame_def *sp_frame_def_get(unsigned type);
const sp_field_def *sp_field_def_get(sp_field f);
const char *sp_frame_type_name(unsigned type); /* "SEND", or "?" */
/* Whether a client in the given login state may send `type` (false for unknown types). */
bool sp_frame_client_may_send(unsigned type, bool logged_in);

/* Size limits: frames of SP_FL_LARGE types may be up to `large` bytes, others up to
 * `small` (msgpack body, without the length prefix). Defaults 64 KiB / 1 MiB. Process-wide;
 * set once at start-up from configuration. */
void sp_frame_set_limits(size_t small, size_t large);
size_t sp_frame_limit_small(void);
size_t sp_frame_limit_large(void);

/* Starts an empty frame of `type` (no fields, no zone). */
void sp_frame_init(sp_frame *f, unsigned type, uint64_t id, bool has_id);

/* Frees what decoding allocated (the zone); the frame may be reused after. */
void sp_frame_fini(sp_frame *f);

/* Decodes exactly one msgpack map of `len` bytes into `f`. Values point into `p` (which
 * must outlive `f`); arrays go into f->zone. On error `f` holds nothing to free.
 * Returns SP_OK or SP_EMALFORMED, SP_ETRUNC, SP_ETRAILING, SP_EBADTYPE, SP_EFIELDTYPE,
 * SP_EMISSING, SP_EUNKNOWNFIELD, SP_EFIELDLEN, SP_EDUPFIELD, SP_ETOOBIG, SP_ENOMEM. */
int sp_frame_decode(const uint8_t *p, size_t len, sp_frame *f);

/* Appends the msgpack map of `f` to `sb` (without length prefix). Checks required fields
 * and bounds first (SP_EMISSING, SP_EFIELDLEN) and the size limit (SP_ETOOBIG); on error
 * `sb` is left as it was. Values are not owned by the frame: they must stay valid until
 * this returns. */
int sp_frame_pack(const sp_frame *f, msgpack_sbuffer *sb);

/* As sp_frame_pack, preceded by the 4-byte big-endian body length. */
int sp_frame_pack_prefixed(const sp_frame *f, msgpack_sbuffer *sb);

/* Slot of `fld` in `type`'s spec, or -1 if the type has no such field. */
int sp_frame_slot(unsigned type, sp_field fld);

/* Getters: absent fields read as 0 / empty / NULL. */
bool sp_frame_has(const sp_frame *f, sp_field fld);
const sp_val *sp_frame_get(const sp_frame *f, sp_field fld);
uint64_t sp_frame_u64(const sp_frame *f, sp_field fld);
int64_t sp_frame_i64(const sp_frame *f, sp_field fld);
sp_bin sp_frame_bin(const sp_frame *f, sp_field fld); /* BIN and STR */

/* Copies a STR/BIN field into `buf` (size `cap`) NUL-terminated. Returns SP_OK,
 * SP_EMISSING if absent, SP_ETOOBIG if it does not fit. */
int sp_frame_str(const sp_frame *f, sp_field fld, char *buf, size_t cap);

/* Setters. They return SP_EUNKNOWNFIELD if the type has no such field, SP_EFIELDTYPE if
 * the field is of another type. Pointers are borrowed, not copied: the caller keeps the
 * memory alive until the frame is packed. */
int sp_frame_set_u64(sp_frame *f, sp_field fld, uint64_t v);
int sp_frame_set_i64(sp_frame *f, sp_field fld, int64_t v);
int sp_frame_set_bool(sp_frame *f, sp_field fld, bool v);
int sp_frame_set_bin(sp_frame *f, sp_field fld, const void *p, size_t len);
int sp_frame_set_str(sp_frame *f, sp_field fld, const char *s); /* NUL-terminated */
int sp_frame_set_u64s(sp_frame *f, sp_field fld, const uint64_t *v, uint32_t n);
int sp_frame_set_bins(sp_frame *f, sp_field fld, const sp_bin *v, uint32_t n);
int sp_frame_set_recs(sp_frame *f, sp_field fld, const sp_frame *v, uint32_t n);

#endif
