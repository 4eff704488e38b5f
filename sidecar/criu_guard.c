/* cedana-criu-guard, as the node helper's image installs it: the same program as
 * criu_guard.py (read its docstring), in C, because runc starts it twice for every checkpoint
 * and restore (once to ask CRIU's version, once to dump or restore): the Python version costs
 * ~20 ms a start, this one under 1 ms (issue 19: the fixed overhead of every command).
 *
 * It asks the kernel to SIGKILL it when its parent (runc) dies, checks the parent did not die
 * before that took effect, and becomes the real CRIU (CEDANA_GUARDED_CRIU, default `criu`).
 * Exit 125 when it cannot. Built static by hack/build-helper-image.sh and deploy/Dockerfile.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define EXIT_PARENT_GONE 125

int main(int argc, char **argv)
{
	const char *real = getenv("CEDANA_GUARDED_CRIU");
	pid_t parent = getppid();

	(void)argc;
	if (real == NULL || real[0] == '\0')
		real = "criu";
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
		fprintf(stderr, "cedana-criu-guard: prctl(PR_SET_PDEATHSIG): %s\n", strerror(errno));
		return EXIT_PARENT_GONE;
	}
	if (getppid() != parent) /* runc died before the request took effect */
		return EXIT_PARENT_GONE;
	argv[0] = (char *)real;
	execvp(real, argv);
	fprintf(stderr, "cedana-criu-guard: cannot run %s: %s\n", real, strerror(errno));
	return EXIT_PARENT_GONE;
}
