/* memcheck: memory whose every byte a restore must bring back. Fills MIB MiB of anonymous
 * memory with a pseudo-random sequence (no two pages alike, so a page served at the wrong
 * address or read as zeros shows), keeps a page it cannot read itself (PROT_NONE between two
 * readable ones) and THREADS threads each with a pattern on its own stack, then every
 * INTERVAL_MS checks all of it and prints a heartbeat in memhog's format:
 *   memcheck mib=MIB beat=N sum=BAD ok=1      (BAD: the 8-byte words found wrong)
 * usage: memcheck MIB [INTERVAL_MS [THREADS]] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define SEED 0x9e3779b97f4a7c15ULL
#define STACK_WORDS 2048

static volatile int stack_ok[64];

static uint64_t next(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static size_t check(const uint64_t *p, size_t words, uint64_t seed)
{
	size_t bad = 0;

	for (size_t i = 0; i < words; i++)
		bad += p[i] != next(&seed);
	return bad;
}

static void *on_stack(void *arg)
{
	long n = (long)arg;
	uint64_t words[STACK_WORDS];
	uint64_t x = SEED + n;
	struct timespec ts = {0, 50 * 1000000L};

	for (int i = 0; i < STACK_WORDS; i++)
		words[i] = next(&x);
	for (;;) {
		stack_ok[n] = check(words, STACK_WORDS, SEED + n) == 0;
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	long interval_ms = argc > 2 ? atol(argv[2]) : 500;
	long threads = argc > 3 ? atol(argv[3]) : 3;
	size_t len = mib << 20;
	uint64_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned char *guarded = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE,
				      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
	uint64_t x = SEED;

	if (p == MAP_FAILED || guarded == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	if (threads < 0 || threads > 64)
		threads = 3;
	for (size_t i = 0; i < len / 8; i++)
		p[i] = next(&x);
	memset(guarded, 0x5a, 3 * 4096);
	mprotect(guarded + 4096, 4096, PROT_NONE);
	for (long n = 0; n < threads; n++) {
		pthread_t t;

		stack_ok[n] = 1;
		if (pthread_create(&t, NULL, on_stack, (void *)n) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (unsigned long beat = 0;; beat++) {
		size_t bad = check(p, len / 8, SEED);
		int ok;

		mprotect(guarded + 4096, 4096, PROT_READ);
		for (int i = 0; i < 3 * 4096; i++)
			bad += guarded[i] != 0x5a;
		mprotect(guarded + 4096, 4096, PROT_NONE);
		ok = bad == 0;
		for (long n = 0; n < threads; n++)
			ok = ok && stack_ok[n];
		printf("memcheck mib=%zu beat=%lu sum=%zu ok=%d\n", mib, beat, bad, ok);
		nanosleep(&ts, NULL);
	}
}
