#include "sp_io.h"

#include <errno.h>
#include <sys/types.h>
#include <unistd.h>

#include "sp_error.h"

int
sp_write_all(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return SP_EIO;
		p += w;
		n -= (size_t)w;
	}
	return SP_OK;
}

int
sp_pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
	const uint8_t *p = buf;
	while (n) {
		ssize_t w = pwrite(fd, p, n, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return SP_EIO;
		p += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return SP_OK;
}

int
sp_pread_all(int fd, void *buf, size_t n, uint64_t off)
{
	uint8_t *p = buf;
	while (n) {
		ssize_t r = pread(fd, p, n, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return SP_EIO;
		p += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return SP_OK;
}
