/*
 * The fastest HTTP server we know how to write for `wrk`, used as a ceiling: what any server,
 * with or without WebAssembly, can reach on this machine with this load generator.
 *
 * It answers every request with the bytes `guests/http.wat` answers, and does nothing else:
 * one thread per worker, each with its own SO_REUSEPORT listener and its own epoll (no shared
 * state, no locks, no atomics), edge-triggered sockets registered once, one `recv` per readable
 * edge when the read comes back short (a later arrival raises a new edge), every complete request
 * in that read answered with one `send`, no timers, no allocation after start. Requests split
 * across reads are matched (the state is how much of "\r\n\r\n" has been seen).
 *
 * With POLL_US > 0 a thread that runs out of events polls (epoll_wait with no timeout, yielding
 * its core between polls) for up to POLL_US microseconds before it blocks, as wamr-coro's `may`
 * workers do for 10 us (vendor/README.md): a client's `send` then rarely has to wake a sleeping
 * server thread.
 *
 * Two more options test whether answering in bursts helps (it did not measurably: docs/BENCHMARKS.md,
 * "Three system calls fewer per connection; answering in bursts does not help here"). DEFER=1
 * sends the answers of one epoll_wait batch after all of its reads, not each after its read.
 * GATHER_N > 0 makes a batch of fewer than GATHER_N events keep polling (yielding the core between
 * polls) until it has that many or GATHER_US microseconds have passed.
 *
 * What it leaves out, on purpose: idle timeouts, limits, a slow reader's backlog (a `send` that
 * does not take the whole answer closes the connection; counted on stderr at exit), metrics.
 *
 * build: cc -O2 -o /tmp/epoll_http scripts/ceiling/epoll_http.c -lpthread
 * usage: epoll_http PORT [THREADS [POLL_US [DEFER [GATHER_N GATHER_US]]]]
 *        (127.0.0.1; 2 threads, 0 us, no deferring, no gathering by default)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nHello from wamr-coro\n";
#define RESPONSE_LEN (sizeof RESPONSE - 1)
#define READ_BUF 16384
#define MAX_ANSWERS (READ_BUF / 4) /* a request is at least "\r\n\r\n" */
#define MAX_FDS 1048576

static int port;
static long poll_ns;
static int defer;
static int gather_n;
static long gather_ns;
static atomic_long short_sends;
/* Per fd: how many bytes of "\r\n\r\n" the connection's last read ended with. An fd belongs to
 * one thread's epoll from accept to close, so no two threads touch the same entry. */
static unsigned char matched[MAX_FDS];

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int listener(void) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    if (s < 0) die("socket");
    if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one))
        die("setsockopt");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) die("bind/listen");
    return s;
}

/* Counts the requests that end in buf[0..n), carrying the partial "\r\n\r\n" match in *m. */
static size_t count_requests(const char *buf, size_t n, unsigned char *m) {
    static const char end[4] = {'\r', '\n', '\r', '\n'};
    size_t done = 0;
    unsigned char k = *m;
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == end[k]) k++;
        else k = buf[i] == '\r' ? 1 : 0;
        if (k == 4) { done++; k = 0; }
    }
    *m = k;
    return done;
}

static void *worker(void *unused) {
    (void)unused;
    static __thread char in[READ_BUF];
    static __thread char out[MAX_ANSWERS * RESPONSE_LEN];
    int ls = listener(), ep = epoll_create1(0), one = 1;
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[256];
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev)) die("epoll_ctl");
    for (;;) {
        int n = epoll_wait(ep, evs, 256, poll_ns > 0 ? 0 : -1);
        if (n == 0) {
            struct timespec t0, t;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            do {
                sched_yield();
                n = epoll_wait(ep, evs, 256, 0);
                clock_gettime(CLOCK_MONOTONIC, &t);
            } while (n == 0 && (t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < poll_ns);
        }
        if (n == 0) n = epoll_wait(ep, evs, 256, -1);
        if (n > 0 && n < gather_n) {
            struct timespec t0, t;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            do {
                sched_yield();
                int m = epoll_wait(ep, evs + n, 256 - n, 0);
                if (m > 0) n += m;
                clock_gettime(CLOCK_MONOTONIC, &t);
            } while (n < gather_n && (t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < gather_ns);
        }
        int npend = 0;
        static __thread int pfd[256];
        static __thread size_t plen[256];
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAX_FDS) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    matched[c] = 0;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev)) close(c);
                }
                continue;
            }
            for (;;) {
                ssize_t r = recv(fd, in, READ_BUF, 0);
                if (r <= 0) {
                    if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
                    close(fd); /* closing removes it from the epoll */
                    break;
                }
                size_t answers = count_requests(in, (size_t)r, &matched[fd]), len = answers * RESPONSE_LEN;
                for (size_t k = 0; k < answers; k++) memcpy(out + k * RESPONSE_LEN, RESPONSE, RESPONSE_LEN);
                if (defer && len) { /* answered after the batch's reads; the rest of a full read waits */
                    pfd[npend] = fd;
                    plen[npend] = len;
                    npend++;
                    break;
                }
                if (len && send(fd, out, len, MSG_NOSIGNAL) != (ssize_t)len) {
                    atomic_fetch_add(&short_sends, 1);
                    close(fd);
                    break;
                }
                if (r < READ_BUF) break; /* drained; a later arrival raises a new edge */
            }
        }
        /* `out` holds copies of RESPONSE only, so any prefix of it is a run of whole answers. */
        for (int i = 0; i < npend; i++)
            if (send(pfd[i], out, plen[i], MSG_NOSIGNAL) != (ssize_t)plen[i]) {
                atomic_fetch_add(&short_sends, 1);
                close(pfd[i]);
            }
    }
    return NULL;
}

static void on_term(int sig) {
    (void)sig;
    char msg[64];
    int len = snprintf(msg, sizeof msg, "epoll_http: %ld short sends\n", atomic_load(&short_sends));
    if (len > 0) (void)!write(2, msg, (size_t)len);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [THREADS [POLL_US [DEFER [GATHER_N GATHER_US]]]]\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    poll_ns = argc > 3 ? atol(argv[3]) * 1000L : 0;
    defer = argc > 4 ? atoi(argv[4]) : 0;
    gather_n = argc > 5 ? atoi(argv[5]) : 0;
    gather_ns = argc > 6 ? atol(argv[6]) * 1000L : 0;
    if (port <= 0 || port > 65535 || threads < 1 || threads > 256 || poll_ns < 0 || gather_n < 0 || gather_n > 256 ||
        gather_ns < 0) {
        fprintf(stderr, "bad PORT, THREADS, POLL_US, GATHER_N or GATHER_US\n");
        return 2;
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    pthread_t t;
    for (int i = 1; i < threads; i++)
        if (pthread_create(&t, NULL, worker, NULL)) die("pthread_create");
    worker(NULL);
}
