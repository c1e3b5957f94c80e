/* conngen: opens many WebSocket connections to pushd, fast (bench/connections.py).
 *
 * One thread, non-blocking sockets and epoll, so it opens connections far
 * faster than pushd accepts them and the figure measured is the server's.
 * Commands, one per line on stdin; one answer line each on stdout:
 *
 *   open N SUB CONC CHANNELS  open N more connections, at most CONC in
 *                             flight: connect, send the upgrade request for
 *                             /ws, read the 101; with SUB=1 also send a
 *                             (masked) subscribe frame and wait for the
 *                             "subscribed" reply.  CHANNELS: how many
 *                             channels the subscriptions are spread over.
 *                             -> "done OK FAILED SECONDS"
 *   close                     reset every connection (SO_LINGER 0: no
 *                             TIME_WAIT left on either side)  -> "closed N"
 *   quit
 *
 * Build: cc -O2 -o conngen conngen.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, WAIT_101, WAIT_SUBSCRIBED, DONE };

struct conn {
    int fd;
    int state;
    int len;
    char buf[1024];
};

static struct sockaddr_in addr;
static struct conn *conns;
static int nconns, capacity;
static int epfd;

static const char REQUEST[] =
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n";

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A masked text frame carrying {"type":"subscribe","channel":"bench-K"}. */
static int subscribe_frame(char *out, int channel) {
    char payload[100];
    int n = snprintf(payload, sizeof payload,
                     "{\"type\":\"subscribe\",\"channel\":\"bench-%d\"}", channel);
    static const unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    out[0] = (char)0x81;
    out[1] = (char)(0x80 | n);
    memcpy(out + 2, mask, 4);
    for (int i = 0; i < n; i++) out[6 + i] = payload[i] ^ mask[i % 4];
    return 6 + n;
}

static int start(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    if (nconns == capacity) {
        capacity = capacity ? 2 * capacity : 1024;
        conns = realloc(conns, capacity * sizeof *conns);
    }
    struct conn *c = &conns[nconns];
    c->fd = fd;
    c->state = CONNECTING;
    c->len = 0;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = nconns};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return nconns++;
}

/* 1: finished (DONE), -1: failed, 0: still going. */
static int step(struct conn *c, int sub, int channel) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) return -1;
        if (write(c->fd, REQUEST, sizeof REQUEST - 1) != sizeof REQUEST - 1) return -1;
        c->state = WAIT_101;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = c - conns};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        return 0;
    }
    for (;;) {
        if (c->len == (int)sizeof c->buf) { /* keep the tail only */
            memmove(c->buf, c->buf + c->len - 64, 64);
            c->len = 64;
        }
        ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
        if (n == 0) return -1;
        if (n < 0) return (errno == EAGAIN) ? 0 : -1;
        c->len += n;
        if (c->state == WAIT_101) {
            char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
            if (!end) continue;
            if (c->len < 12 || memcmp(c->buf, "HTTP/1.1 101", 12) != 0) return -1;
            int rest = c->len - (end + 4 - c->buf);
            memmove(c->buf, end + 4, rest);
            c->len = rest;
            if (!sub) return 1;
            char frame[128];
            int f = subscribe_frame(frame, channel);
            if (write(c->fd, frame, f) != f) return -1;
            c->state = WAIT_SUBSCRIBED;
        }
        if (c->state == WAIT_SUBSCRIBED &&
            memmem(c->buf, c->len, "\"subscribed\"", 12))
            return 1;
    }
}

static void finish(struct conn *c) {
    c->state = DONE;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
}

static void reset(struct conn *c) {
    struct linger lin = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lin, sizeof lin);
    close(c->fd);
}

static void open_many(int n, int sub, int conc, int channels) {
    int started = 0, ok = 0, failed = 0, inflight = 0;
    int first = nconns;
    struct epoll_event events[512];
    double t0 = now(), deadline = t0 + 120;
    while (ok + failed < n && now() < deadline) {
        while (inflight < conc && started < n) {
            started++;
            if (start() < 0)
                failed++;
            else
                inflight++;
        }
        int k = epoll_wait(epfd, events, 512, 1000);
        for (int i = 0; i < k; i++) {
            struct conn *c = &conns[events[i].data.u32];
            if (c->state == DONE || c->fd < 0) continue;
            int r = step(c, sub, (int)(c - conns - first) % channels);
            if (r == 0) continue;
            inflight--;
            if (r > 0) {
                ok++;
                finish(c);
            } else {
                failed++;
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                reset(c);
                c->fd = -1;
                c->state = DONE;
            }
        }
    }
    failed += n - ok - failed; /* timed out */
    printf("done %d %d %.6f\n", ok, failed, now() - t0);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: conngen PORT  (commands on stdin)\n");
        return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    epfd = epoll_create1(0);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        int n, sub, conc, channels = 1;
        if (sscanf(line, "open %d %d %d %d", &n, &sub, &conc, &channels) >= 3) {
            open_many(n, sub, conc, channels < 1 ? 1 : channels);
        } else if (strncmp(line, "close", 5) == 0) {
            int closed = 0;
            for (int i = 0; i < nconns; i++)
                if (conns[i].fd >= 0) {
                    epoll_ctl(epfd, EPOLL_CTL_DEL, conns[i].fd, NULL);
                    reset(&conns[i]);
                    closed++;
                }
            nconns = 0;
            printf("closed %d\n", closed);
            fflush(stdout);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    return 0;
}
