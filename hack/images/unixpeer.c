/* unixpeer: one end of a unix stream connection, held open.
 * usage: unixpeer listen PATH   accept connections on PATH and answer each line with its count
 *        unixpeer connect PATH  connect to PATH (retrying until it exists), then every 200 ms
 *                               send a line and print "peer count=N" with the answer
 * For the lab's tests of a connection to a process outside the checkpointed container. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int address(const char *path, struct sockaddr_un *sa) {
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    strncpy(sa->sun_path, path, sizeof(sa->sun_path) - 1);
    return socket(AF_UNIX, SOCK_STREAM, 0);
}

int main(int argc, char **argv) {
    struct sockaddr_un sa;
    if (argc != 3) { fprintf(stderr, "usage: unixpeer listen|connect PATH\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd = address(argv[2], &sa);
    if (strcmp(argv[1], "listen") == 0) {
        unlink(argv[2]);
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 8)) { perror("listen"); return 1; }
        for (;;) {
            int c = accept(fd, NULL, NULL);
            if (c < 0) continue;
            if (fork() == 0) {
                char buf[64]; unsigned long n = 0; ssize_t r;
                while ((r = read(c, buf, sizeof(buf))) > 0) {
                    int len = snprintf(buf, sizeof(buf), "%lu\n", ++n);
                    if (write(c, buf, len) != len) break;
                }
                _exit(0);
            }
            close(c);
        }
    }
    while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) { usleep(200000); }
    struct timespec ts = {0, 200000000L};
    for (;;) {
        char buf[64];
        if (write(fd, "x\n", 2) != 2) { perror("write"); return 1; }
        ssize_t r = read(fd, buf, sizeof(buf) - 1);
        if (r <= 0) { perror("read"); return 1; }
        buf[r] = 0;
        printf("peer count=%s", buf);
        nanosleep(&ts, NULL);
    }
}
