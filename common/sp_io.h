/* Whole reads and writes of file descriptors: retried on EINTR and short counts. */
#ifndef SP_IO_H
#define SP_IO_H

#include <stddef.h>
#include <stdint.h>

/* All n bytes at the file's offset / at `off`. SP_OK, or SP_EIO (an error, or end of file
 * before n bytes for a read). */
int sp_write_all(int fd, const void *buf, size_t n);
int sp_pwrite_all(int fd, const void *buf, size_t n, uint64_t off);
int sp_pread_all(int fd, void *buf, size_t n, uint64_t off);

#endif
