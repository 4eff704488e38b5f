/* unixpeer: one end of a unix stream connection, held open.
 * usage: unixpeer listen PATH   accept connections on PATH and answer each line with its count
 *        unixpeer connect PATH  connect to PATH (retrying until it exists), then every 200 ms
 *                               send a line and print "peer count=N" with the answer
 *        unixpeer tcp PORT      one process serving TCP connections on PORT: each line gets
 *                               "served=N", N counting every answer of the process (its state,
 *                               in memory); a connection that breaks is dropped, the rest go on
 * For the lab's tests of connections to a process outside the checkpointed container, and of
 * TCP connections across a restore. */
#include <netinet/in.h>
#include <poll.h>
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

static int serve_tcp(int port) {
    struct sockaddr_in sin;
    struct pollfd fds[65];
    int n = 1, one = 1;
    unsigned long served = 0;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    fds[0].fd = socket(AF_INET, SOCK_STREAM, 0);
    fds[0].events = POLLIN;
    setsockopt(fds[0].fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fds[0].fd, (struct sockaddr *)&sin, sizeof(sin)) || listen(fds[0].fd, 16)) {
        perror("tcp listen");
        return 1;
    }
    printf("serving tcp port %d\n", port);
    for (;;) {
        if (poll(fds, n, -1) < 0) continue;
        if ((fds[0].revents & POLLIN) && n < 65) {
            int c = accept(fds[0].fd, NULL, NULL);
            if (c >= 0) { fds[n].fd = c; fds[n].events = POLLIN; fds[n].revents = 0; n++; }
        }
        for (int i = 1; i < n; i++) {
            if (!fds[i].revents) continue;
            char buf[64];
            ssize_t r = read(fds[i].fd, buf, sizeof(buf));
            int len = r > 0 ? snprintf(buf, sizeof(buf), "served=%lu\n", ++served) : 0;
            if (r <= 0 || write(fds[i].fd, buf, len) != len) {
                printf("connection dropped (%s)\n", r == 0 ? "closed" : "error");
                close(fds[i].fd);
                fds[i] = fds[--n];
                i--;
            }
        }
    }
}

int main(int argc, char **argv) {
    struct sockaddr_un sa;
    if (argc != 3) { fprintf(stderr, "usage: unixpeer listen|connect PATH | tcp PORT\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(argv[1], "tcp") == 0) return serve_tcp(atoi(argv[2]));
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
