/* memhog: allocates N MiB of anonymous memory, touches every page, then prints a heartbeat
 * with a running checksum of the memory so a restore can be checked.
 * usage: memhog MIB [INTERVAL_MS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    long interval_ms = argc > 2 ? atol(argv[2]) : 1000;
    size_t len = mib << 20;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    unsigned long long sum = 0;
    for (size_t i = 0; i < len; i += 4096) { p[i] = (unsigned char)(i >> 12); sum += p[i]; }
    struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsigned long beat = 0;
    for (;;) {
        unsigned long long check = 0;
        for (size_t i = 0; i < len; i += 4096) check += p[i];
        printf("memhog mib=%zu beat=%lu sum=%llu ok=%d\n", mib, beat++, check, check == sum);
        nanosleep(&ts, NULL);
    }
}
