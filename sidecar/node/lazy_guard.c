/* cedana-lazy-guard: the guard of a post-copy restore's lazy-pages daemon in the helper's
 * image, in C: the same program as sidecar/node/lazy_guard.py (read its docstring; kept for
 * helpers installed with pip), whose Python start-up (~23 ms) was inside every post-copy
 * migration's pause, as the restore waits for the daemon it starts (issue 19).
 *
 *   cedana-lazy-guard --pidfile FILE [--keep-fd N]... -- COMMAND [ARG]...
 *
 * Runs COMMAND (`criu lazy-pages ...`), which alone keeps the descriptors N (the guard closes
 * its copies), and reads FILE (the restore's pidfile: the restored root's pid) once CRIU wrote
 * it, holding a pidfd of that process. When COMMAND ends with a status other than 0 before
 * every page arrived, the restored process is killed through the pidfd (no other process can
 * have taken it), with everything below it unless it is the init of a pid namespace of its own
 * (whose death ends them all). Exits with COMMAND's status (a signal's as Python reports it:
 * 256 - signal), 125 when COMMAND cannot be started or the command line is wrong.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "read_small.h"

#define EXIT_SETUP_FAILED 125
#define POLL_MS 50
#define MAX_KEEP 16
#define MAX_BELOW 4096

static int usage(const char *why)
{
	fprintf(stderr, "cedana-lazy-guard: %s\n"
		"usage: cedana-lazy-guard --pidfile FILE [--keep-fd N]... -- COMMAND [ARG]...\n",
		why);
	return EXIT_SETUP_FAILED;
}

static long pid_of(const char *pidfile)
{
	char buf[32], *end;
	long pid;

	if (read_small(pidfile, buf, sizeof(buf)) <= 0)
		return 0;
	errno = 0;
	pid = strtol(buf, &end, 10);
	while (*end == ' ' || *end == '\n' || *end == '\t')
		end++;
	if (errno || end == buf || *end != '\0' || pid <= 0)
		return 0;
	return pid;
}

/* a pidfd of the process the pidfile names; -1 while CRIU has not written it */
static int open_restored(const char *pidfile)
{
	long pid = pid_of(pidfile);

	if (pid <= 0)
		return -1;
	return (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
}

static int is_namespace_init(long pid)
{
	char path[64], line[256];
	FILE *f;
	int init = 0;

	snprintf(path, sizeof(path), "/proc/%ld/status", pid);
	f = fopen(path, "re");
	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, "NSpid:", 6) == 0) {
			char *last = strrchr(line, '\t');

			last = last ? last + 1 : line + 6;
			init = strtol(last, NULL, 10) == 1;
			break;
		}
	}
	fclose(f);
	return init;
}

/* the processes below pid (its children's children too), as /proc shows them */
static int descendants(long pid, long *found, int max)
{
	int count = 0, next = 0;
	long parent = pid;

	for (;;) {
		char path[64];
		DIR *tasks;
		struct dirent *task;

		snprintf(path, sizeof(path), "/proc/%ld/task", parent);
		tasks = opendir(path);
		while (tasks != NULL && (task = readdir(tasks)) != NULL) {
			char children[320];
			FILE *f;
			long child;

			if (task->d_name[0] == '.')
				continue;
			snprintf(children, sizeof(children), "/proc/%ld/task/%s/children", parent,
				 task->d_name);
			f = fopen(children, "re");
			if (f == NULL)
				continue;
			while (count < max && fscanf(f, "%ld", &child) == 1)
				found[count++] = child;
			fclose(f);
		}
		if (tasks != NULL)
			closedir(tasks);
		if (next >= count)
			return count;
		parent = found[next++];
	}
}

/* 1 when the restored root was killed, 0 when it was gone already */
static int kill_tree(int pidfd, long pid)
{
	static long below[MAX_BELOW];
	int count = 0;

	if (pid > 0 && !is_namespace_init(pid))
		count = descendants(pid, below, MAX_BELOW);
	if (syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0) != 0)
		return 0;
	for (int i = 0; i < count; i++)
		kill((pid_t)below[i], SIGKILL);
	return 1;
}

/* fork and exec the command; its exec error comes back through a pipe closed on exec */
static pid_t start(char **command)
{
	int report[2], err = 0;
	pid_t child;

	if (pipe2(report, O_CLOEXEC) != 0)
		return -1;
	child = fork();
	if (child == 0) {
		close(report[0]);
		signal(SIGHUP, SIG_DFL);
		execvp(command[0], command);
		err = errno;
		(void)!write(report[1], &err, sizeof(err));
		_exit(EXIT_SETUP_FAILED);
	}
	close(report[1]);
	if (child < 0) {
		close(report[0]);
		return -1;
	}
	if (read(report[0], &err, sizeof(err)) == sizeof(err)) {
		close(report[0]);
		waitpid(child, NULL, 0);
		errno = err;
		return -1;
	}
	close(report[0]);
	return child;
}

int main(int argc, char **argv)
{
	const char *pidfile = NULL;
	int keep[MAX_KEEP], nkeep = 0, i, status, code, restored = -1;
	pid_t daemon;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		} else if (strcmp(argv[i], "--pidfile") == 0 && i + 1 < argc) {
			pidfile = argv[++i];
		} else if (strcmp(argv[i], "--keep-fd") == 0 && i + 1 < argc) {
			char *end;

			if (nkeep == MAX_KEEP)
				return usage("too many --keep-fd");
			keep[nkeep++] = (int)strtol(argv[++i], &end, 10);
			if (*end != '\0' || keep[nkeep - 1] < 0)
				return usage("--keep-fd takes a descriptor number");
		} else {
			return usage("unknown option");
		}
	}
	if (pidfile == NULL)
		return usage("--pidfile is required");
	if (i >= argc)
		return usage("a command to run is required after --");
	signal(SIGHUP, SIG_IGN);

	daemon = start(argv + i);
	if (daemon < 0) {
		fprintf(stderr, "lazy_guard: cannot run %s: %s\n", argv[i], strerror(errno));
		return EXIT_SETUP_FAILED;
	}
	for (int k = 0; k < nkeep; k++)
		close(keep[k]); /* the daemon's alone: its end of the connection closes with it */

	for (;;) {
		pid_t ended = waitpid(daemon, &status, restored >= 0 ? 0 : WNOHANG);

		if (ended == daemon)
			break;
		if (ended < 0 && errno != EINTR) {
			status = EXIT_SETUP_FAILED << 8;
			break;
		}
		if (restored < 0) {
			struct timespec ts = {0, POLL_MS * 1000000L};

			restored = open_restored(pidfile);
			if (restored < 0)
				nanosleep(&ts, NULL);
		}
	}
	code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
	if (code != 0) {
		if (restored < 0)
			restored = open_restored(pidfile);
		if (restored >= 0 && kill_tree(restored, pid_of(pidfile)))
			fprintf(stderr, "lazy_guard: the lazy-pages daemon ended with status %d before "
				"every page arrived: the restored process was killed\n", code);
	}
	if (restored >= 0)
		close(restored);
	return code & 0xff;
}
