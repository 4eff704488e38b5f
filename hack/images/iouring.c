/* iouring: holds an io_uring instance open (an anon_inode:[io_uring] fd) and prints a heartbeat.
 * CRIU cannot dump io_uring; the helper must refuse such a process with a clear error. */
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    int fd = (int)syscall(__NR_io_uring_setup, 4, &params);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (fd < 0) { perror("io_uring_setup"); }
    for (unsigned long beat = 0;; beat++) {
        printf("iouring fd=%d beat=%lu\n", fd, beat);
        sleep(1);
    }
}
