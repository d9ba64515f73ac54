/* madvise_cost.c: what MADV_DONTNEED costs in a process with another thread
 * running on another CPU, as a server's `may` workers are: dropping a page
 * that is resident makes the kernel flush it from the other CPU's TLB by
 * inter-processor interrupt (a VM exit under KVM); dropping pages that are
 * not resident flushes nothing. Why a new coroutine keeps its stack's bottom
 * page (src/wamr/stack.rs, release_unused_pages) and a reset writes zeros
 * over the few pages a connection dirtied instead of dropping them
 * (src/wamr/state.rs, zero_pages). Needs two CPUs.
 *
 *   cc -O2 -o /tmp/madvise_cost scripts/madvise_cost.c -lpthread && /tmp/madvise_cost
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>

static volatile int stop;

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *spin(void *arg) {
    (void)arg;
    pin(1);
    while (!stop) {
    }
    return 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    pin(0);
    pthread_t t;
    pthread_create(&t, 0, spin, 0); /* the other worker, busy on CPU 1 */
    size_t sz = 256 * 1024;         /* a coroutine stack */
    int n = 50000;
    char *p = mmap(0, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const char *what[] = {"nothing resident in the range", "one page of it written first",
                          "one page of it read first (the kernel's zero page)", "writing zeros over one page instead"};
    for (int mode = 0; mode < 4; mode++) {
        double t0 = now();
        for (int i = 0; i < n; i++) {
            if (mode == 1) p[8192] = 1;
            if (mode == 2) (void)*(volatile char *)(p + 8192);
            if (mode == 3) {
                p[8192] = 1;
                for (int j = 0; j < 4096; j += 8) *(volatile long *)(p + 8192 + j) = 0;
                continue;
            }
            madvise(p + 4096, sz - 8192, MADV_DONTNEED);
        }
        printf("%-52s %7.0f ns per iteration\n", what[mode], (now() - t0) / n * 1e9);
    }
    stop = 1;
    pthread_join(t, 0);
    return 0;
}
