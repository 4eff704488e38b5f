/* cedana-enter-cgroups: the first link of every restore's command chain in the helper's image
 * (ops/restore.py wrapper_args), in C: the Python module it replaces there
 * (sidecar/node/enter_cgroups.py, kept for helpers installed with pip) took ~70 ms to start,
 * on the critical path of every restore and migration pause (issue 19).
 *
 *   cedana-enter-cgroups --procs FILE [--procs FILE]... [--wait-for PATH [--wait-pid PID]
 *                        [--wait-timeout SECONDS]] -- COMMAND [ARG]...
 *
 * Writes its own pid into each FILE (the cgroup.procs of every cgroup of the placeholder's
 * process, as the helper found them: it never reads them from a caller), so that COMMAND and
 * everything it starts (CRIU's restored tree, with --manage-cgroups=ignore) is accounted to the
 * placeholder's container. With --wait-for it then waits until PATH exists (a post-copy restore
 * waits for its lazy-pages daemon's socket), giving up when process PID is gone (a zombie
 * counts as gone) or SECONDS (default 30) have passed. Then it becomes COMMAND.
 * Exit 125 when any step fails, as env(1) and nsenter(1) report their own failures.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "read_small.h"

#define EXIT_SETUP_FAILED 125
#define MAX_PROCS 64

static int usage(const char *why)
{
	fprintf(stderr, "cedana-enter-cgroups: %s\n"
		"usage: cedana-enter-cgroups --procs FILE... [--wait-for PATH [--wait-pid PID] "
		"[--wait-timeout SECONDS]] -- COMMAND [ARG]...\n", why);
	return EXIT_SETUP_FAILED;
}

static int join(const char *procs, pid_t self)
{
	char text[32];
	int fd = open(procs, O_WRONLY | O_CLOEXEC);
	int len = snprintf(text, sizeof(text), "%d\n", (int)self);
	ssize_t written;

	if (fd < 0)
		return -1;
	written = write(fd, text, (size_t)len);
	if (close(fd) != 0 || written != len)
		return -1;
	return 0;
}

static int alive(long pid)
{
	char path[64], buf[512];
	char *state;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	if (read_small(path, buf, sizeof(buf)) <= 0)
		return 0;
	state = strrchr(buf, ')'); /* the command name may hold anything but ends at the last ) */
	if (state == NULL || state[1] != ' ')
		return 0;
	return state[2] != 'Z';
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	const char *procs[MAX_PROCS];
	const char *wait_for = NULL;
	long wait_pid = 0;
	double wait_timeout = 30.0;
	int nprocs = 0, i;
	pid_t self = getpid();

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (i + 1 >= argc)
			return usage("an option without its value");
		if (strcmp(argv[i], "--procs") == 0) {
			if (nprocs == MAX_PROCS)
				return usage("too many --procs");
			procs[nprocs++] = argv[++i];
		} else if (strcmp(argv[i], "--wait-for") == 0) {
			wait_for = argv[++i];
		} else if (strcmp(argv[i], "--wait-pid") == 0) {
			wait_pid = strtol(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "--wait-timeout") == 0) {
			wait_timeout = strtod(argv[++i], NULL);
		} else {
			return usage("unknown option");
		}
	}
	if (i >= argc)
		return usage("a command to run is required after --");
	if (nprocs == 0)
		return usage("no --procs: which cgroups to join?");
	for (int p = 0; p < nprocs; p++) {
		if (join(procs[p], self) != 0) {
			fprintf(stderr, "cedana-enter-cgroups: cannot join %s: %s\n", procs[p],
				strerror(errno));
			return EXIT_SETUP_FAILED;
		}
	}
	if (wait_for != NULL) {
		double end = now() + wait_timeout;
		struct timespec pause = {0, 5 * 1000 * 1000};

		while (access(wait_for, F_OK) != 0) {
			if (now() > end || (wait_pid > 0 && !alive(wait_pid))) {
				fprintf(stderr, "cedana-enter-cgroups: %s did not appear\n", wait_for);
				return EXIT_SETUP_FAILED;
			}
			nanosleep(&pause, NULL);
		}
	}
	execvp(argv[i], &argv[i]);
	fprintf(stderr, "cedana-enter-cgroups: cannot run %s: %s\n", argv[i], strerror(errno));
	return EXIT_SETUP_FAILED;
}
