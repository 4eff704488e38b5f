/* One small /proc or state file read whole into buf (NUL-terminated), for the helper's C
 * programs (enter_cgroups.c, lazy_guard.c): the bytes read, or -1. */
#ifndef CEDANA_READ_SMALL_H
#define CEDANA_READ_SMALL_H

#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

static ssize_t read_small(const char *path, char *buf, size_t size)
{
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return n;
}

#endif
