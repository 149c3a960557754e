/*
 * The CLI's output: JSON lines (the default; the contract scripts rely on) or
 * human-readable text (--format text). Commands build their result once, as a JSON
 * object or a library struct, and this module prints it in the chosen form.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/cl_format.h"
#include "sp_error.h"

static cl_fmt_mode fmt_mode = CL_FMT_JSON;

int
cl_fmt_parse(const char *name)
{
	if (strcmp(name, "json") == 0)
		return CL_FMT_JSON;
	if (strcmp(name, "text") == 0)
		return CL_FMT_TEXT;
	return -1;
}

void
cl_fmt_set(cl_fmt_mode mode)
{
	fmt_mode = mode;
}

cl_fmt_mode
cl_fmt_get(void)
{
	return fmt_mode;
}

json_t *
cl_fmt_id(uint64_t v)
{
	char b[24];
	snprintf(b, sizeof(b), "%" PRIu64, v);
	return json_string(b);
}

json_t *
cl_fmt_str(const char *s)
{
	json_t *j = json_string(s ? s : "");
	return j ? j : json_stringn("?", 1); /* invalid UTF-8 */
}

void
cl_fmt_sanitize(const char *s, char *out, size_t cap)
{
	size_t n = 0;
	if (cap == 0)
		return;
	/* Escape sequences in a message could rewrite the user's terminal. UTF-8 bytes
	 * (>= 0x80) and tabs pass; other C0 controls (newlines too: one line per event)
	 * and DEL do not. */
	for (; s && *s && n + 1 < cap; s++) {
		unsigned char c = (unsigned char)*s;
		out[n++] = (c < 0x20 && c != '\t') || c == 0x7f ? '?' : (char)c;
	}
	out[n] = '\0';
}

void
cl_fmt_clock(uint64_t ms, char out[8])
{
	if (!ms) {
		snprintf(out, 8, "--:--");
		return;
	}
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	if (!localtime_r(&t, &tm)) {
		snprintf(out, 8, "--:--");
		return;
	}
	snprintf(out, 8, "%02d:%02d", tm.tm_hour % 24, tm.tm_min % 60);
}

static void
emit(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (s) {
		puts(s);
		free(s);
	}
	fflush(stdout);
	json_decref(j);
}

static void
text_line(const char *s)
{
	puts(s);
	fflush(stdout);
}

/* ---- events ---- */

static json_t *
event_json(const sealpost_event *ev)
{
	json_t *j = json_object();
	if (!j)
		return NULL;
	switch (ev->type) {
	case SEALPOST_EV_RECEIPT: {
		json_object_set_new(j, "type", json_string("receipt"));
		json_object_set_new(j, "kind",
				    json_string(ev->receipt_kind == SEALPOST_RECEIPT_READ ? "read" : "delivered"));
		json_object_set_new(j, "from", cl_fmt_str(ev->from));
		json_object_set_new(j, "device", cl_fmt_id(ev->from_device));
		json_t *ids = json_array();
		for (size_t i = 0; i < ev->n_msg_ids; i++)
			json_array_append_new(ids, json_string(ev->msg_ids[i]));
		json_object_set_new(j, "msg_ids", ids);
		return j;
	}
	case SEALPOST_EV_IDENTITY:
		json_object_set_new(j, "type", json_string("security"));
		json_object_set_new(j, "from", cl_fmt_str(ev->from));
		json_object_set_new(j, "device", cl_fmt_id(ev->from_device));
		json_object_set_new(j, "text", json_string("security code changed"));
		return j;
	case SEALPOST_EV_TYPING:
		json_object_set_new(j, "type", json_string("typing"));
		json_object_set_new(j, "from", cl_fmt_str(ev->from));
		json_object_set_new(j, "device", cl_fmt_id(ev->from_device));
		json_object_set_new(j, "state", json_string(ev->typing ? "typing" : "stopped"));
		return j;
	case SEALPOST_EV_PRESENCE:
		json_object_set_new(j, "type", json_string("presence"));
		json_object_set_new(j, "from", cl_fmt_str(ev->from));
		json_object_set_new(j, "user", cl_fmt_id(ev->from_user));
		if (ev->online >= 0)
			json_object_set_new(j, "online", json_boolean(ev->online));
		if (ev->last_seen_ms)
			json_object_set_new(j, "last_seen", json_integer((json_int_t)ev->last_seen_ms));
		if (ev->recently)
			json_object_set_new(j, "last_seen_recently", json_true());
		return j;
	case SEALPOST_EV_CONNECTED:
		json_object_set_new(j, "type", json_string("connected"));
		json_object_set_new(j, "server", cl_fmt_str(ev->server));
		json_object_set_new(j, "reconnects", json_integer((json_int_t)ev->reconnects));
		if (ev->drop_reason)
			json_object_set_new(j, "after", cl_fmt_str(ev->drop_reason));
		return j;
	case SEALPOST_EV_UNDECRYPTABLE:
		json_object_set_new(j, "type", json_string("error"));
		json_object_set_new(j, "from", cl_fmt_str(ev->from));
		json_object_set_new(j, "device", cl_fmt_id(ev->from_device));
		json_object_set_new(j, "msg_id", json_string(ev->msg_id));
		json_object_set_new(j, "error", json_string(sp_errname(ev->error)));
		if (ev->held)
			json_object_set_new(j, "held", json_true());
		return j;
	default:
		break;
	}
	json_object_set_new(j, "type", json_string("message"));
	json_object_set_new(j, "conv", cl_fmt_str(ev->conv));
	json_object_set_new(j, "from", cl_fmt_str(ev->from));
	json_object_set_new(j, "device", cl_fmt_id(ev->from_device));
	if (ev->group)
		json_object_set_new(j, "group", cl_fmt_id(ev->group));
	json_object_set_new(j, "msg_id", json_string(ev->msg_id));
	json_object_set_new(j, "conv_seq", json_integer((json_int_t)ev->conv_seq));
	json_object_set_new(j, "server_ts", json_integer((json_int_t)ev->server_ts));
	if (ev->outgoing)
		json_object_set_new(j, "outgoing", json_true());
	if (ev->status)
		json_object_set_new(j, "status", json_string(ev->status));
	if (ev->text) {
		json_object_set_new(j, "text", cl_fmt_str(ev->text));
	} else {
		json_t *m = json_object();
		if (ev->media_path)
			json_object_set_new(m, "path", cl_fmt_str(ev->media_path));
		json_object_set_new(m, "name", cl_fmt_str(ev->media_name));
		json_object_set_new(m, "mime", cl_fmt_str(ev->media_mime));
		json_object_set_new(m, "size", json_integer((json_int_t)ev->media_size));
		if (ev->media_error)
			json_object_set_new(m, "error", json_string(sp_errname(ev->media_error)));
		json_object_set_new(j, "media", m);
	}
	return j;
}

void
cl_fmt_body(const sealpost_event *ev, char *out, size_t cap)
{
	if (ev->text) {
		cl_fmt_sanitize(ev->text, out, cap);
		return;
	}
	char name[160], mime[80], path[512];
	cl_fmt_sanitize(ev->media_name, name, sizeof(name));
	cl_fmt_sanitize(ev->media_mime, mime, sizeof(mime));
	cl_fmt_sanitize(ev->media_path, path, sizeof(path));
	if (ev->media_error)
		snprintf(out, cap, "[file %s, %s, %" PRIu64 " bytes: refused, %s]", name, mime, ev->media_size,
			 sp_errname(ev->media_error));
	else
		snprintf(out, cap, "[file %s, %s, %" PRIu64 " bytes%s%s]", name, mime, ev->media_size,
			 path[0] ? ": " : "", path);
}

void
cl_fmt_event_line(const sealpost_event *ev, char *out, size_t cap)
{
	char from[64], conv[160], body[CL_FMT_BODY_MAX], clock[8];
	cl_fmt_sanitize(ev->from, from, sizeof(from));
	cl_fmt_sanitize(ev->conv, conv, sizeof(conv));
	switch (ev->type) {
	case SEALPOST_EV_MESSAGE:
		cl_fmt_body(ev, body, sizeof(body));
		cl_fmt_clock(ev->server_ts, clock);
		if (ev->outgoing)
			snprintf(out, cap, "[%s] me to %s: %s%s%s%s", clock, conv, body, ev->status ? " (" : "",
				 ev->status ? ev->status : "", ev->status ? ")" : "");
		else if (ev->group)
			snprintf(out, cap, "[%s] %s in %s: %s", clock, from, conv, body);
		else
			snprintf(out, cap, "[%s] %s: %s", clock, from, body);
		return;
	case SEALPOST_EV_RECEIPT: {
		size_t n = (size_t)snprintf(out, cap, "%s by %s (device %" PRIu64 "):",
					    ev->receipt_kind == SEALPOST_RECEIPT_READ ? "read" : "delivered", from,
					    ev->from_device);
		for (size_t i = 0; i < ev->n_msg_ids && n < cap; i++)
			n += (size_t)snprintf(out + n, cap - n, " %s", ev->msg_ids[i]);
		return;
	}
	case SEALPOST_EV_IDENTITY:
		snprintf(out, cap, "security code changed: %s (device %" PRIu64 ")", from, ev->from_device);
		return;
	case SEALPOST_EV_TYPING:
		snprintf(out, cap, "%s %s", from, ev->typing ? "is typing" : "stopped typing");
		return;
	case SEALPOST_EV_PRESENCE: {
		char seen[32] = "";
		if (ev->last_seen_ms) {
			char clock[8];
			cl_fmt_clock(ev->last_seen_ms, clock);
			snprintf(seen, sizeof(seen), ", last seen %s", clock);
		} else if (ev->recently) {
			snprintf(seen, sizeof(seen), ", last seen recently");
		}
		snprintf(out, cap, "%s is %s%s", from,
			 ev->online > 0 ? "online" : ev->online == 0 ? "offline" : "(online hidden)", seen);
		return;
	}
	case SEALPOST_EV_CONNECTED: {
		char server[272], after[256];
		cl_fmt_sanitize(ev->server, server, sizeof(server));
		cl_fmt_sanitize(ev->drop_reason, after, sizeof(after));
		snprintf(out, cap, "connected to %s (reconnects: %" PRIu64 ")%s%s", server, ev->reconnects,
			 after[0] ? "; the last connection ended: " : "", after);
		return;
	}
	case SEALPOST_EV_UNDECRYPTABLE:
		snprintf(out, cap, "%s a message from %s (device %" PRIu64 "): %s, id %s%s",
			 ev->held ? "cannot read yet" : "refused", from, ev->from_device, sp_errname(ev->error),
			 ev->msg_id ? ev->msg_id : "?", ev->held ? " (held: the sender is asked for its key)" : "");
		return;
	default:
		snprintf(out, cap, "event %d from %s", ev->type, from);
		return;
	}
}

void
cl_fmt_event(const sealpost_event *ev)
{
	if (fmt_mode == CL_FMT_TEXT) {
		char line[CL_FMT_LINE_MAX];
		cl_fmt_event_line(ev, line, sizeof(line));
		text_line(line);
		return;
	}
	json_t *j = event_json(ev);
	if (j)
		emit(j);
}

/* ---- results ---- */

/* A scalar JSON value as text ("-" for null). */
static void
value_text(json_t *v, char *out, size_t cap)
{
	switch (json_typeof(v)) {
	case JSON_STRING:
		cl_fmt_sanitize(json_string_value(v), out, cap);
		return;
	case JSON_INTEGER:
		snprintf(out, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
		return;
	case JSON_TRUE:
		snprintf(out, cap, "yes");
		return;
	case JSON_FALSE:
		snprintf(out, cap, "no");
		return;
	case JSON_ARRAY: {
		size_t n = 0, i;
		json_t *e;
		out[0] = '\0';
		json_array_foreach(v, i, e)
		{
			char one[128];
			value_text(e, one, sizeof(one));
			if (n < cap)
				n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? ", " : "", one);
		}
		return;
	}
	default:
		snprintf(out, cap, "-");
		return;
	}
}

static const char *
field(json_t *j, const char *key, char *buf, size_t cap)
{
	json_t *v = json_object_get(j, key);
	if (!v) {
		buf[0] = '\0';
		return buf;
	}
	value_text(v, buf, cap);
	return buf;
}

void
cl_fmt_result(cl_out_kind kind, json_t *j)
{
	if (!j)
		return;
	if (fmt_mode == CL_FMT_JSON) {
		emit(j);
		return;
	}
	char a[160], b[160], c[4096], line[4608];
	switch (kind) {
	case CL_OUT_OK:
		text_line(field(j, "status", a, sizeof(a)));
		break;
	case CL_OUT_DEVICE: {
		bool primary = json_is_true(json_object_get(j, "primary")), self = json_is_true(json_object_get(j, "this"));
		snprintf(line, sizeof(line), "device %s%s%s%s%s", field(j, "device", a, sizeof(a)),
			 primary || self ? " (" : "", primary ? "primary" : "", primary && self ? ", " : "",
			 self ? "this device)" : primary ? ")" : "");
		text_line(line);
		break;
	}
	case CL_OUT_GROUP: {
		char epoch[32];
		field(j, "members", c, sizeof(c));
		snprintf(line, sizeof(line), "@%s  group %s  epoch %s  members: %s", field(j, "name", a, sizeof(a)),
			 field(j, "group", b, sizeof(b)), field(j, "epoch", epoch, sizeof(epoch)), c);
		text_line(line);
		break;
	}
	case CL_OUT_PLAIN: {
		const char *key;
		json_t *v;
		json_object_foreach(j, key, v)
		{
			value_text(v, c, sizeof(c));
			snprintf(line, sizeof(line), "%s: %s", key, c);
			text_line(line);
		}
		break;
	}
	}
	json_decref(j);
}

void
cl_fmt_sent(const sealpost_sent *s)
{
	if (fmt_mode == CL_FMT_TEXT) {
		char line[512], clock[8];
		if (s->failed) {
			char reason[256];
			cl_fmt_sanitize(s->reason, reason, sizeof(reason));
			snprintf(line, sizeof(line), "failed %s: %s: %s", s->msg_id, sp_errname(s->error), reason);
		} else if (s->sent) {
			cl_fmt_clock(s->server_ts, clock);
			if (s->n_refused)
				snprintf(line, sizeof(line), "sent %s at %s; %zu devices refused it: queue full", s->msg_id,
					 clock, s->n_refused);
			else
				snprintf(line, sizeof(line), "sent %s at %s", s->msg_id, clock);
		} else {
			snprintf(line, sizeof(line), "queued %s (offline: it goes out on the next connection)", s->msg_id);
		}
		text_line(line);
		return;
	}
	json_t *j = json_object();
	json_object_set_new(j, "msg_id", json_string(s->msg_id));
	json_object_set_new(j, "status", json_string(s->failed ? "failed" : s->sent ? "sent" : "queued"));
	json_object_set_new(j, "server_ts", s->sent && !s->failed ? json_integer((json_int_t)s->server_ts) : json_null());
	if (s->failed) {
		json_object_set_new(j, "error", json_string(sp_errname(s->error)));
		json_object_set_new(j, "reason", cl_fmt_str(s->reason));
	}
	if (s->n_refused)
		json_object_set_new(j, "refused", json_integer((json_int_t)s->n_refused));
	emit(j);
}

void
cl_fmt_status(const char *msg_id, const sealpost_status *st)
{
	if (fmt_mode == CL_FMT_TEXT) {
		char line[512], clock[8], reason[256];
		cl_fmt_clock(st->server_ts, clock);
		cl_fmt_sanitize(st->reason, reason, sizeof(reason));
		if (st->error)
			snprintf(line, sizeof(line), "%s: %s (%s: %s)", msg_id, st->status, sp_errname(st->error), reason);
		else if (st->server_ts)
			snprintf(line, sizeof(line), "%s: %s (sent at %s)", msg_id, st->status, clock);
		else
			snprintf(line, sizeof(line), "%s: %s", msg_id, st->status);
		text_line(line);
		for (size_t i = 0; i < st->n_devices; i++) {
			snprintf(line, sizeof(line), "  user %" PRIu64 " device %" PRIu64 ": %s%s%s", st->devices[i].user,
				 st->devices[i].device, st->devices[i].status, st->devices[i].reason ? ": " : "",
				 st->devices[i].reason ? st->devices[i].reason : "");
			text_line(line);
		}
		return;
	}
	json_t *j = json_object(), *devs = json_array();
	json_object_set_new(j, "msg_id", json_string(msg_id));
	json_object_set_new(j, "status", json_string(st->status));
	json_object_set_new(j, "server_ts", st->server_ts ? json_integer((json_int_t)st->server_ts) : json_null());
	if (st->error) {
		json_object_set_new(j, "error", json_string(sp_errname(st->error)));
		json_object_set_new(j, "reason", cl_fmt_str(st->reason));
	}
	for (size_t i = 0; i < st->n_devices; i++) {
		json_t *d = json_object();
		json_object_set_new(d, "user", cl_fmt_id(st->devices[i].user));
		json_object_set_new(d, "device", cl_fmt_id(st->devices[i].device));
		json_object_set_new(d, "status", json_string(st->devices[i].status));
		if (st->devices[i].reason)
			json_object_set_new(d, "reason", json_string(st->devices[i].reason));
		json_array_append_new(devs, d);
	}
	json_object_set_new(j, "devices", devs);
	emit(j);
}
