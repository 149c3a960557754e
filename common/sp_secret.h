/* Secrets kept in files (a Redis password, an operator token): read whole, refused when
 * the file is readable by group or others, never logged. */
#ifndef SP_SECRET_H
#define SP_SECRET_H

#include <stddef.h>

/* Reads the secret in `path` into buf (NUL-terminated, trailing whitespace and line end
 * removed; *len its length). SP_OK, or SP_ECONFIG with a one-line message in err naming
 * `what` (the option) and the path: unreadable, not a regular file, group or other access
 * (chmod 600 it), empty, or longer than cap - 1 bytes. */
int sp_secret_read(const char *what, const char *path, char *buf, size_t cap, size_t *len,
		   char *err, size_t errlen);

#endif
