/* cedana-pause: the command of a placeholder ("sleeping") container, which needs nothing from
 * the workload's image. Built static; the placeholder pod's init container copies it from the
 * node helper's image into an emptyDir the placeholder's containers mount at /.cedana.
 *
 *   cedana-pause run NAME [-- COMMAND ARGS...]
 *       The container's PID 1. First start: mark /.cedana/started-NAME and wait; the node helper
 *       restores the checkpointed processes beside it (they become its children). A later start
 *       of the same container (the kubelet restarted it: a liveness probe failed, the restored
 *       program exited) runs COMMAND, the program as the source pod ran it, afresh. SIGTERM and
 *       SIGINT are passed on to the restored processes; it exits when they have, or at once
 *       when there are none. It reaps whatever is reparented to it. SIGUSR1 (the node helper,
 *       before it stops the restored processes for a restore into this same container, their
 *       TCP connections held): the next end of the restored processes is not the program's
 *       end; wait for the next restore.
 *   cedana-pause restored
 *       Exit 0 when PID 1 of this container has a child (the restore is done), else 1: the
 *       placeholder's startup probe, which holds the source's liveness and readiness probes
 *       back until the restored program runs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stopping, held;

static void on_stop(int sig) {
    stopping = sig;
}

static void on_hold(int sig) {
    (void)sig;
    held = 1;
}

/* Whether some process other than `self` has `parent` as its parent. */
static int has_child(pid_t parent, pid_t self) {
    DIR *proc = opendir("/proc");
    if (!proc) return 0;
    struct dirent *entry;
    int found = 0;
    while (!found && (entry = readdir(proc))) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        if (*end || pid <= 0 || pid == self || pid == parent) continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        buf[n] = 0;
        char *close_paren = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
        char state;
        long ppid;
        if (close_paren && sscanf(close_paren + 1, " %c %ld", &state, &ppid) == 2 &&
            ppid == parent)
            found = 1;
    }
    closedir(proc);
    return found;
}

static void on_child(int sig) {
    (void)sig;
}

static int run(const char *name, int argc, char **argv) {
    char marker[4096];
    snprintf(marker, sizeof marker, "/.cedana/started-%s", name);
    if (access(marker, F_OK) == 0 && argc > 0) {
        execvp(argv[0], argv); /* restarted: the program, afresh */
        fprintf(stderr, "cedana-pause: cannot run %s: %s\n", argv[0], strerror(errno));
        return 127;
    }
    int fd = open(marker, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_hold;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    int had_child = 0, forwarded = 0, status_out = 0;
    for (;;) {
        int status;
        pid_t reaped = waitpid(-1, &status, WNOHANG);
        if (reaped > 0) {
            status_out = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            continue;
        }
        if (reaped == 0) {
            had_child = 1; /* the restored processes, reparented to this one */
        } else if (errno == ECHILD) {
            if (had_child && held && !stopping) {
                held = had_child = 0; /* stopped to be restored here again: wait for it */
                continue;
            }
            if (had_child) return status_out; /* the restored program ended: so does this */
            if (stopping) return 0;
        }
        if (stopping && !forwarded) {
            kill(-1, stopping); /* every process of the container but this one */
            forwarded = 1;
        }
        usleep(500000); /* or until a signal */
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "run") == 0) {
        int rest = 3;
        if (argc > 3 && strcmp(argv[3], "--") == 0) rest = 4;
        return run(argv[2], argc - rest, argv + rest);
    }
    if (argc == 2 && strcmp(argv[1], "restored") == 0)
        return has_child(1, getpid()) ? 0 : 1;
    fprintf(stderr, "usage: cedana-pause run NAME [-- COMMAND ARGS...] | cedana-pause restored\n");
    return 2;
}
