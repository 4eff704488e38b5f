/* counter: prints an increasing number once per interval and writes it to a file.
 * usage: counter [FILE] [INTERVAL_MS] [START]
 * The value lives in memory; the file only mirrors it, so a restored process that continues
 * from its checkpointed value proves memory was restored. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/tmp/counter";
    long interval_ms = argc > 2 ? atol(argv[2]) : 1000;
    unsigned long value = argc > 3 ? strtoul(argv[3], NULL, 10) : 0;
    struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (;;) {
        printf("count=%lu\n", value);
        FILE *f = fopen(path, "w");
        if (f) { fprintf(f, "%lu\n", value); fclose(f); }
        value++;
        nanosleep(&ts, NULL);
    }
}
