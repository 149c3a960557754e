/*
 * The CLI's output (docs/CLIENT.md, "Output formats"): every result and event a command
 * prints goes through here, as one JSON object per line (the default, for scripts) or
 * as human-readable text (--format text). `sealpost chat` uses the text lines too.
 *
 * Ownership: functions taking a json_t steal the reference. Output goes to stdout and
 * is flushed per line. Text output never passes control characters from the network
 * through to the terminal (they are shown as '?'; tabs pass).
 */
#ifndef CL_FORMAT_H
#define CL_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "client/sealpost.h"

/* Room for a message body (a text is at most 32768 bytes) and for a whole line. */
#define CL_FMT_BODY_MAX 33024
#define CL_FMT_LINE_MAX (CL_FMT_BODY_MAX + 512)

typedef enum { CL_FMT_JSON = 0, CL_FMT_TEXT = 1 } cl_fmt_mode;

/* "json" or "text"; -1 for anything else. */
int cl_fmt_parse(const char *name);
/* The process-wide mode (set once, from --format, before anything is printed). */
void cl_fmt_set(cl_fmt_mode mode);
cl_fmt_mode cl_fmt_get(void);

/* Kinds of command results, for their text form (JSON prints the object as it is). */
typedef enum {
	CL_OUT_PLAIN,    /* "key: value" per line */
	CL_OUT_OK,       /* {"status":…}: the status word alone */
	CL_OUT_DEVICE,   /* one device of `devices` */
	CL_OUT_GROUP,    /* one group of `group list` */
} cl_out_kind;

/* Prints a command's result object j (stolen). */
void cl_fmt_result(cl_out_kind kind, json_t *j);
/* Prints an event of recv / listen / history. */
void cl_fmt_event(const sealpost_event *ev);
/* Prints the outcome of send / send-file. */
void cl_fmt_sent(const sealpost_sent *s);
/* Prints `status MSG_ID`. */
void cl_fmt_status(const char *msg_id, const sealpost_status *st);

/* 64-bit id as a JSON string (numbers lose precision past 2^53 in most tools). */
json_t *cl_fmt_id(uint64_t v);
/* A JSON string of s ("" for NULL; "?" when it is not valid UTF-8). */
json_t *cl_fmt_str(const char *s);

/* One event as a text line (no newline) into out; what `--format text` prints, and
 * what chat shows. */
void cl_fmt_event_line(const sealpost_event *ev, char *out, size_t cap);
/* The body of a message event: its text, or a description of its file. */
void cl_fmt_body(const sealpost_event *ev, char *out, size_t cap);
/* s with control characters but tab replaced by '?' (at most cap - 1 bytes), for a
 * terminal. */
void cl_fmt_sanitize(const char *s, char *out, size_t cap);
/* "HH:MM" (local time) of a time in ms since the epoch; "--:--" for 0. */
void cl_fmt_clock(uint64_t ms, char out[8]);

#endif
