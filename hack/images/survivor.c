/* survivor: a process tree whose resources must all survive checkpoint and restore.
 *  - an open file (/tmp/survivor.log), appended to through the same descriptor;
 *  - a unix socket pair between the parent and a child process, ping-ponging a counter;
 *  - a listening TCP socket on PORT that answers each connection with the current state
 *    (PORT 0: no socket).
 * usage: survivor [PORT]
 * Every second the parent prints: "survivor tick=N pong=M file_bytes=B child=PID". */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void child_loop(int sock) {
    unsigned long v;
    for (;;) {
        ssize_t n = read(sock, &v, sizeof v);
        if (n == 0) _exit(0);
        if (n != (ssize_t)sizeof v) { if (errno == EINTR) continue; _exit(1); }
        v++;
        if (write(sock, &v, sizeof v) != (ssize_t)sizeof v) _exit(1);
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 8080;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) { perror("socketpair"); return 1; }
    pid_t child = fork();
    if (child == 0) { close(sv[0]); child_loop(sv[1]); }
    close(sv[1]);
    int logfd = open("/tmp/survivor.log", O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (logfd < 0) { perror("open"); return 1; }
    int lsock = -1;
    if (port > 0) {
    lsock = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(lsock, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lsock, 8) < 0) {
        perror("listen"); return 1;
    }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsigned long tick = 0, pong = 0;
    time_t last = 0;
    for (;;) {
        struct pollfd pfd = {.fd = lsock, .events = POLLIN};
        if (lsock < 0) {
            struct timespec pause = {0, 200000000L};
            nanosleep(&pause, NULL);
        } else if (poll(&pfd, 1, 200) > 0) {
            int c = accept(lsock, NULL, NULL);
            if (c >= 0) {
                char buf[160];
                struct stat st;
                fstat(logfd, &st);
                int len = snprintf(buf, sizeof buf, "tick=%lu pong=%lu file_bytes=%lld child=%d\n",
                                   tick, pong, (long long)st.st_size, (int)child);
                (void)!write(c, buf, len);
                close(c);
            }
        }
        time_t now = time(NULL);
        if (now == last) continue;
        last = now;
        unsigned long v = pong;
        if (write(sv[0], &v, sizeof v) != (ssize_t)sizeof v || read(sv[0], &v, sizeof v) != (ssize_t)sizeof v) {
            printf("survivor error: socket pair broken\n");
            return 2;
        }
        pong = v;
        char line[64];
        int len = snprintf(line, sizeof line, "tick %lu\n", tick);
        (void)!write(logfd, line, len);
        struct stat st;
        fstat(logfd, &st);
        int status;
        pid_t w = waitpid(child, &status, WNOHANG);
        printf("survivor tick=%lu pong=%lu file_bytes=%lld child=%d child_alive=%d\n", tick, pong,
               (long long)st.st_size, (int)child, w == 0);
        tick++;
    }
}
