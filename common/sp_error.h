/* The project's one error enum: functions return SP_OK (0) or a negative SP_E* code. */
#ifndef SP_ERROR_H
#define SP_ERROR_H

/* X(name, value, text). Values are stable: they travel in ERROR frames. */
#define SP_ERRORS(X)                                                        \
	X(SP_OK, 0, "ok")                                                   \
	X(SP_ENOMEM, -1, "out of memory")                                   \
	X(SP_EINVAL, -2, "invalid argument")                                \
	X(SP_EIO, -3, "I/O error")                                          \
	X(SP_EAGAIN, -4, "incomplete input, need more bytes")               \
	X(SP_ETOOBIG, -5, "frame or field too large")                       \
	X(SP_ETRUNC, -6, "truncated input")                                 \
	X(SP_ETRAILING, -7, "trailing bytes after frame")                   \
	X(SP_EMALFORMED, -8, "malformed input")                           \
	X(SP_EBADTYPE, -9, "unknown frame type")                            \
	X(SP_EFIELDTYPE, -10, "field has the wrong type")                   \
	X(SP_EMISSING, -11, "required field missing")                       \
	X(SP_EUNKNOWNFIELD, -12, "unknown field")                           \
	X(SP_EFIELDLEN, -13, "field length out of bounds")                  \
	X(SP_EDUPFIELD, -14, "field appears twice")                         \
	X(SP_ECONFIG, -15, "configuration error")                           \
	X(SP_ETIMEDOUT, -16, "timed out")                                   \
	X(SP_ECLOSED, -17, "connection closed")                             \
	X(SP_ENOTFOUND, -18, "not found")                                   \
	X(SP_EEXIST, -19, "already exists")                                 \
	X(SP_EPERM, -20, "permission denied")                               \
	X(SP_EAUTH, -21, "authentication failed")                           \
	X(SP_ERATELIMIT, -22, "rate limited")                               \
	X(SP_EFULL, -23, "queue or store full")                             \
	X(SP_ECRYPTO, -24, "cryptographic failure")                         \
	X(SP_EBADSIG, -25, "bad signature")                                 \
	X(SP_EEXPIRED, -26, "expired")                                      \
	X(SP_ETLS, -27, "TLS error")                                        \
	X(SP_ENNG, -28, "messaging (nng) error")                            \
	X(SP_EREDIS, -29, "redis error")                                    \
	X(SP_ESTORE, -30, "storage error")                                  \
	X(SP_EMISMATCH, -31, "device list mismatch")                        \
	X(SP_EUNAVAIL, -32, "service unavailable")                          \
	X(SP_EPROTO, -33, "protocol violation")                             \
	X(SP_ERANGE, -34, "value out of range")                             \
	X(SP_EGAP, -35, "gap in sequence or offset")                        \
	X(SP_EDIGEST, -36, "digest mismatch")                               \
	X(SP_EREPLAY, -37, "replayed or already used")                      \
	X(SP_EIDENTITY, -38, "identity key changed")                        \
	X(SP_ESTATE, -39, "invalid state")                                  \
	X(SP_ELIMIT, -40, "limit reached")                                  \
	X(SP_ENOTPRIMARY, -41, "not the shard's primary")

typedef enum {
#define SP_ERR_ENUM(name, value, text) name = value,
	SP_ERRORS(SP_ERR_ENUM)
#undef SP_ERR_ENUM
} sp_err;

/* Static text for an error code (never NULL; "unknown error" for codes not in the enum). */
const char *sp_strerror(int code);

/* Symbolic name ("SP_ENOMEM") for an error code, for logs and JSON; never NULL. */
const char *sp_errname(int code);

#endif
