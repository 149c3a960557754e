/* Secrets read from files (see sp_secret.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sp_error.h"
#include "sp_secret.h"

int
sp_secret_read(const char *what, const char *path, char *buf, size_t cap, size_t *len,
	       char *err, size_t errlen)
{
	struct stat st;
	size_t n = 0;
	int rc = SP_ECONFIG;
	if (cap < 2) {
		snprintf(err, errlen, "%s: no room for a secret", what);
		return SP_ECONFIG;
	}
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
		return SP_ECONFIG;
	}
	if (fstat(fd, &st)) {
		snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s %s: not a regular file", what, path);
		goto out;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		snprintf(err, errlen, "%s %s: mode %04o gives group or others access (chmod 600 it)",
			 what, path, (unsigned)(st.st_mode & 07777));
		goto out;
	}
	/* One byte more than a secret may have, to see a longer one. */
	for (;;) {
		ssize_t r = read(fd, buf + n, cap - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n == cap - 1) {
			char extra;
			ssize_t more;
			while ((more = read(fd, &extra, 1)) < 0 && errno == EINTR)
				;
			if (more > 0) {
				snprintf(err, errlen, "%s %s: longer than %zu bytes", what, path, cap - 2);
				goto out;
			}
			break;
		}
	}
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' ||
		     buf[n - 1] == '\t'))
		n--;
	if (n == 0) {
		snprintf(err, errlen, "%s %s: empty", what, path);
		goto out;
	}
	buf[n] = '\0';
	*len = n;
	rc = SP_OK;
out:
	if (rc)
		memset(buf, 0, cap);
	close(fd);
	return rc;
}
