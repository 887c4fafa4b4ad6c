/*
 * udpload: the UDP load generator, sink and echo server of benchmarks/run.py.
 *
 * One process holds both application sockets, so one clock times the whole
 * path: the "app" socket sends to --target (the tunnel's entry, or the sink
 * itself for direct UDP) and the "sink" socket, bound to --sink, counts what
 * arrives (blast) or sends each datagram back to its source (window, ping,
 * probe).  Every loop is bounded by a count and by a duration.  The result
 * is one JSON object on stdout.  Linux only (sendmmsg, recvmmsg).
 *
 *   udpload blast  --target H:P --sink H:P --size N [--count N] [--duration S]
 *   udpload window --target H:P --sink H:P --size N [--window W] [--count N] [--duration S]
 *   udpload ping   --target H:P --sink H:P --size N [--count N] [--warmup N] [--duration S]
 *   udpload probe  --target H:P --sink H:P [--duration S]
 *   udpload flows  --target H:P --sink H:P --size N --flows F [--window W] [--count N]
 *                  [--duration S] [--setup-s S]
 *
 * blast --in-flight N keeps at most N datagrams sent and not yet at the sink
 * (after 100 ms without an arrival, what is outstanding counts as lost):
 * the tunnel's one-way capacity, without the sender spending a core on
 * datagrams a full socket drops.
 *
 * blast --flows F sends from F application sockets, each on its own
 * source port, in turn: one way, through a tunnel's sessions.  Like flows it
 * opens the sessions first (the sink echoes until then), says so, and only
 * then blasts.
 *
 * --a-bind H:P binds the application socket(s) there and leaves them
 * unconnected (the datagrams go to --target with sendto, and replies are
 * taken from any source), and --reply-to H:P sends every echo there instead
 * of to its source: for a tunnel whose ends send from a port of their own
 * (Debian's udptunnel 1.1).
 *
 * flows is window with F application sockets, each on its own source port
 * (so each is a session of a tunnel with --sessions), each with W datagrams
 * in flight, all answered by the one echo socket.  The sessions are opened
 * first (a datagram from each source, echoed, in waves), then measured.
 *
 * Each datagram starts with a 16-byte header: a run id (so datagrams of an
 * earlier run, still in flight, are not counted), a sequence number and the
 * send time.  Hence --size is at least 16.
 *
 * Build: cc -O2 -o udpload udpload.c -lpthread
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEADER 16
#define MAX_SIZE 65507
#define BATCH 32
#define MAX_COUNT 100000000L
#define MAX_FLOWS 1024
/* flows: a datagram's sequence number carries its flow in the top bits. */
#define FLOW_SHIFT 22
#define FLOW_SEQS (1L << FLOW_SHIFT)
#define PROBE_SEQ (FLOW_SEQS - 1)
/* flows: sessions opened at once (a burst of new TCP connections beyond a
 * listener's backlog loses SYNs, and each costs a second). */
#define SETUP_WAVE 32

struct options {
    const char *mode;
    struct sockaddr_storage target, sink;
    socklen_t targetLen, sinkLen;
    int size;
    long count;
    long warmup;
    int window;
    double duration;
    int timeoutMs;
    int drainMs;
    int flows;
    int flowsGiven;
    long inFlight;
    double setupSeconds;
    struct sockaddr_storage aBind, replyTo;
    socklen_t aBindLen, replyToLen;
};

static uint32_t runId;

static void die(const char *what)
{
    fprintf(stderr, "udpload: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void usage(const char *why)
{
    fprintf(stderr,
            "udpload: %s\n"
            "usage: udpload blast|window|ping|probe|flows --target HOST:PORT --sink HOST:PORT\n"
            "         [--size N] [--count N] [--duration S] [--window W] [--warmup N]\n"
            "         [--timeout-ms MS] [--drain-ms MS] [--flows F] [--setup-s S]\n"
            "         [--a-bind HOST:PORT] [--reply-to HOST:PORT] [--in-flight N]\n",
            why);
    exit(2);
}

static uint64_t nowNs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpuSeconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* "1.2.3.4:5" or "[::1]:5" */
static socklen_t parseAddress(const char *text, struct sockaddr_storage *out)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    if (colon == NULL || colon == text || strlen(text) >= sizeof host)
        usage("addresses are HOST:PORT");
    long port = strtol(colon + 1, NULL, 10);
    if (port <= 0 || port > 65535)
        usage("bad port");
    size_t n = (size_t)(colon - text);
    memcpy(host, text, n);
    host[n] = 0;
    memset(out, 0, sizeof *out);
    if (host[0] == '[' && n > 2 && host[n - 1] == ']') {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
        host[n - 1] = 0;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1)
            usage("bad IPv6 address");
        return sizeof *a;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)out;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
        usage("bad IPv4 address");
    return sizeof *a;
}

static int openSocket(int family)
{
    int fd = socket(family, SOCK_DGRAM, 0);
    if (fd < 0)
        die("socket");
    /* The same (large) buffers for direct UDP and for the tunnel: the
     * application's sockets must not be where datagrams are lost. */
    int size = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    return fd;
}

/* Where unconnected sockets send (--a-bind), or NULL; where echoes go
 * (--reply-to), or NULL for their source. */
static const struct sockaddr_storage *sendTarget, *echoTarget;
static socklen_t sendTargetLen, echoTargetLen;

/* The app socket: an ephemeral port, connected to the target; or, with
 * --a-bind, bound there and unconnected. */
static int appSocket(const struct options *o)
{
    int fd = openSocket(o->target.ss_family);
    if (o->aBindLen) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (const struct sockaddr *)&o->aBind, o->aBindLen) < 0)
            die("bind --a-bind");
        return fd;
    }
    if (connect(fd, (const struct sockaddr *)&o->target, o->targetLen) < 0)
        die("connect to --target");
    return fd;
}

/* send() on an app socket, connected or not. */
static ssize_t appSend(int fd, const void *buf, size_t len)
{
    if (sendTarget != NULL)
        return sendto(fd, buf, len, 0, (const struct sockaddr *)sendTarget, sendTargetLen);
    return send(fd, buf, len, 0);
}

static int sinkSocket(const struct options *o)
{
    int fd = openSocket(o->sink.ss_family);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&o->sink, o->sinkLen) < 0)
        die("bind --sink");
    return fd;
}

static void stamp(unsigned char *buf, uint32_t seq, uint64_t t)
{
    memcpy(buf, &runId, 4);
    memcpy(buf + 4, &seq, 4);
    memcpy(buf + 8, &t, 8);
}

/* The sequence number of one of our datagrams, or -1 for a stranger. */
static long ours(const unsigned char *buf, unsigned int len, int size, long *badLen)
{
    uint32_t id, seq;
    if (len < HEADER)
        return -1;
    memcpy(&id, buf, 4);
    if (id != runId)
        return -1;
    if ((int)len != size)
        ++*badLen;
    memcpy(&seq, buf + 4, 4);
    return seq;
}

static uint64_t sentAt(const unsigned char *buf)
{
    uint64_t t;
    memcpy(&t, buf + 8, 8);
    return t;
}

/* One bit per sequence number: which datagrams came (back) already. */
struct seen {
    unsigned char *bits;
    long n;
};

static void seenInit(struct seen *s, long n)
{
    s->n = n;
    s->bits = calloc((size_t)n / 8 + 1, 1);
    if (s->bits == NULL)
        die("calloc");
}

/* 1 if seq is new, 0 if a duplicate, -1 if out of range. */
static int seenMark(struct seen *s, long seq)
{
    if (seq < 0 || seq >= s->n)
        return -1;
    unsigned char bit = (unsigned char)(1u << (seq & 7));
    if (s->bits[seq >> 3] & bit)
        return 0;
    s->bits[seq >> 3] |= bit;
    return 1;
}

/* Batches for recvmmsg / sendmmsg. */
struct batch {
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct sockaddr_storage names[BATCH];
    unsigned char *bufs[BATCH];
};

static void batchInit(struct batch *b, size_t bufSize)
{
    memset(b, 0, sizeof *b);
    for (int i = 0; i < BATCH; i++) {
        b->bufs[i] = calloc(bufSize, 1);
        if (b->bufs[i] == NULL)
            die("calloc");
        memset(b->bufs[i], 'u', bufSize);
        b->iovs[i].iov_base = b->bufs[i];
        b->iovs[i].iov_len = bufSize;
        b->msgs[i].msg_hdr.msg_iov = &b->iovs[i];
        b->msgs[i].msg_hdr.msg_iovlen = 1;
    }
}

static void batchForReceiving(struct batch *b, int withNames)
{
    for (int i = 0; i < BATCH; i++) {
        b->iovs[i].iov_len = MAX_SIZE + 1;
        b->msgs[i].msg_hdr.msg_name = withNames ? &b->names[i] : NULL;
        b->msgs[i].msg_hdr.msg_namelen = withNames ? sizeof b->names[i] : 0;
    }
}

/* Wait up to ms for fd to be readable: 1 if it is, 0 if not. */
static int waitReadable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, ms);
    if (r < 0 && errno != EINTR)
        die("poll");
    return r > 0;
}

/* Address the first n messages of a batch to `to' (NULL: none, for a
 * connected socket). */
static void aim(struct batch *b, int n, const struct sockaddr_storage *to, socklen_t len)
{
    for (int i = 0; i < n; i++) {
        b->msgs[i].msg_hdr.msg_name = (void *)to;
        b->msgs[i].msg_hdr.msg_namelen = to ? len : 0;
    }
}

/* Send n prepared datagrams of a batch; returns how many went. */
static int sendBatch(int fd, struct batch *b, int n, long *errors)
{
    int done = 0;
    while (done < n) {
        int r = sendmmsg(fd, b->msgs + done, (unsigned int)(n - done), 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            /* ECONNREFUSED (nobody listening yet), ENOBUFS...: skip one. */
            ++*errors;
            done++;
            continue;
        }
        done += r;
    }
    return done;
}

/* ---- echo: the sink socket sends every datagram back to its source ---- */

struct echo {
    int fd;
    atomic_int stop;
    long echoed;
    long sendErrors;
};

static void *echoMain(void *arg)
{
    struct echo *e = arg;
    struct batch *b = malloc(sizeof *b);
    if (b == NULL)
        die("malloc");
    batchInit(b, MAX_SIZE + 1);
    while (!atomic_load(&e->stop)) {
        if (!waitReadable(e->fd, 20))
            continue;
        batchForReceiving(b, 1);
        int n = recvmmsg(e->fd, b->msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            continue;
        for (int i = 0; i < n; i++)
            b->iovs[i].iov_len = b->msgs[i].msg_len;
        if (echoTarget != NULL)
            aim(b, n, echoTarget, echoTargetLen);
        e->echoed += sendBatch(e->fd, b, n, &e->sendErrors);
    }
    return NULL;
}

static void echoStart(struct echo *e, pthread_t *thread, int fd)
{
    memset(e, 0, sizeof *e);
    e->fd = fd;
    if (pthread_create(thread, NULL, echoMain, e) != 0)
        die("pthread_create");
}

static void echoStop(struct echo *e, pthread_t thread)
{
    atomic_store(&e->stop, 1);
    pthread_join(thread, NULL);
}

struct flow {
    int fd;
    long nextSeq;   /* per flow, below PROBE_SEQ */
    long completed;
    long lost;
    int inFlight;
    long *slots;    /* the sequence numbers in flight, -1 where free */
    uint64_t last;  /* when it last sent a window or got a reply */
    uint64_t rttSum;
};

/* ---- blast: send as fast as possible, count what reaches the sink ---- */

struct sender {
    const struct options *o;
    int fd;
    const int *fds; /* with --flows: the flows' sockets, in turn */
    int nfds;
    long sent;
    long sendErrors;
    uint64_t start, end;
    atomic_int done;
    /* --in-flight: what the sink has counted, and the sender's wait for it */
    atomic_long received;
    pthread_mutex_t lock;
    pthread_cond_t arrived;
    long writtenOff; /* datagrams given up as lost after a stall */
    long stalls;
};

/* --in-flight: wait until n more datagrams may go (at most o->inFlight
 * sent and not yet at the sink); after 100 ms without an arrival, what is
 * outstanding counts as lost.  0 once the deadline passed. */
static int senderMayGo(struct sender *s, int n, uint64_t deadline)
{
    const struct options *o = s->o;
    long seen = atomic_load(&s->received);
    uint64_t since = nowNs();
    while (s->sent - seen - s->writtenOff + n > o->inFlight) {
        uint64_t t = nowNs();
        if (t >= deadline)
            return 0;
        if (t - since >= 100000000u) {
            s->writtenOff = s->sent - seen;
            s->stalls++;
            break;
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 5000000;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&s->lock);
        if (atomic_load(&s->received) == seen)
            pthread_cond_timedwait(&s->arrived, &s->lock, &until);
        pthread_mutex_unlock(&s->lock);
        long now = atomic_load(&s->received);
        if (now != seen) {
            seen = now;
            since = nowNs();
        }
    }
    return 1;
}

static void *senderMain(void *arg)
{
    struct sender *s = arg;
    const struct options *o = s->o;
    struct batch *b = malloc(sizeof *b);
    if (b == NULL)
        die("malloc");
    batchInit(b, (size_t)o->size);
    for (int i = 0; i < BATCH; i++)
        b->iovs[i].iov_len = (size_t)o->size;
    uint64_t deadline = nowNs() + (uint64_t)(o->duration * 1e9);
    s->start = nowNs();
    while (s->sent < o->count) {
        uint64_t t = nowNs();
        if (t >= deadline)
            break;
        int n = BATCH;
        if (o->count - s->sent < n)
            n = (int)(o->count - s->sent);
        if (o->inFlight && !senderMayGo(s, n, deadline))
            break;
        for (int i = 0; i < n; i++)
            stamp(b->bufs[i], (uint32_t)(s->sent + i), t);
        int fd = s->nfds ? s->fds[(s->sent / BATCH) % s->nfds] : s->fd;
        aim(b, n, sendTarget, sendTargetLen);
        s->sent += sendBatch(fd, b, n, &s->sendErrors);
    }
    s->end = nowNs();
    atomic_store(&s->done, 1);
    return NULL;
}

static int flowsSetup(const struct options *o, struct flow *flows, int epfd, long *setupSent);
static void raiseDescriptorLimit(long needed);

/* blast --flows: open the flows' sessions (the sink echoes meanwhile), then
 * say so; their sockets go to fds.  0 if they did not all open. */
static double blastSetupSeconds;

static int blastFlowsSetup(const struct options *o, int sink, int *fds)
{
    raiseDescriptorLimit(o->flows + 64);
    struct echo e;
    pthread_t echoThread;
    echoStart(&e, &echoThread, sink);
    int epfd = epoll_create1(0);
    if (epfd < 0)
        die("epoll_create1");
    struct flow *flows = calloc((size_t)o->flows, sizeof *flows);
    if (flows == NULL)
        die("calloc");
    for (int i = 0; i < o->flows; i++) {
        flows[i].fd = fds[i] = appSocket(o);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, flows[i].fd, &ev) < 0)
            die("epoll_ctl");
    }
    long setupSent = 0;
    uint64_t setupStart = nowNs();
    int ready = flowsSetup(o, flows, epfd, &setupSent);
    double setupS = (nowNs() - setupStart) / 1e9;
    echoStop(&e, echoThread);
    close(epfd);
    free(flows);
    if (!ready) {
        printf("{\"mode\":\"blast\",\"ok\":false,\"flows\":%d,\"setup_s\":%.3f,"
               "\"error\":\"not every flow's first datagram came back within %.0f s\"}\n",
               o->flows, setupS, o->setupSeconds);
        return 0;
    }
    printf("{\"phase\":\"ready\",\"setup_s\":%.3f}\n", setupS);
    blastSetupSeconds = setupS;
    return 1;
}

static int blast(const struct options *o)
{
    int sink = sinkSocket(o), app = -1;
    int *fds = NULL;
    if (o->flowsGiven) {
        fds = calloc((size_t)o->flows, sizeof *fds);
        if (fds == NULL)
            die("calloc");
        if (!blastFlowsSetup(o, sink, fds))
            return 1;
    } else
        app = appSocket(o);
    struct seen seen;
    seenInit(&seen, o->count);
    struct batch *b = malloc(sizeof *b);
    if (b == NULL)
        die("malloc");
    batchInit(b, MAX_SIZE + 1);
    struct sender s = {.o = o, .fd = app, .fds = fds, .nfds = fds ? o->flows : 0};
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.arrived, NULL);
    pthread_t thread;
    double cpu0 = cpuSeconds();
    if (pthread_create(&thread, NULL, senderMain, &s) != 0)
        die("pthread_create");
    long received = 0, dup = 0, reordered = 0, badLen = 0, foreign = 0, maxSeq = -1;
    uint64_t first = 0, last = 0;
    /* Hard limit: the duration, then at most 10 s of draining. */
    uint64_t hardEnd = nowNs() + (uint64_t)(o->duration * 1e9) + 10000000000u;
    for (;;) {
        uint64_t t = nowNs();
        if (t >= hardEnd)
            break;
        if (atomic_load(&s.done)) {
            /* Sending is over: stop once nothing came for --drain-ms. */
            uint64_t quietSince = last > s.end ? last : s.end;
            if (t > quietSince && t - quietSince >= (uint64_t)o->drainMs * 1000000u)
                break;
        }
        if (!waitReadable(sink, 10))
            continue;
        batchForReceiving(b, 0);
        int n = recvmmsg(sink, b->msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            continue;
        t = nowNs();
        for (int i = 0; i < n; i++) {
            long seq = ours(b->bufs[i], b->msgs[i].msg_len, o->size, &badLen);
            int fresh = seenMark(&seen, seq);
            if (seq < 0 || fresh < 0) {
                foreign++;
                continue;
            }
            if (fresh == 0) {
                dup++;
                continue;
            }
            if (seq < maxSeq)
                reordered++;
            else
                maxSeq = seq;
            if (received++ == 0)
                first = t;
            last = t;
        }
        if (o->inFlight) {
            pthread_mutex_lock(&s.lock);
            atomic_store(&s.received, received);
            pthread_cond_signal(&s.arrived);
            pthread_mutex_unlock(&s.lock);
        }
    }
    pthread_join(thread, NULL);
    double cpu = cpuSeconds() - cpu0;
    double elapsed = received ? (last - s.start) / 1e9 : 0;
    double pps = elapsed > 0 ? received / elapsed : 0;
    double sendSeconds = (s.end - s.start) / 1e9;
    printf("{\"mode\":\"blast\",\"ok\":true,\"flows\":%d,\"size\":%d,\"sent\":%ld,\"send_errors\":%ld,"
           "\"received\":%ld,\"loss_pct\":%.3f,\"dup\":%ld,\"reordered\":%ld,"
           "\"badlen\":%ld,\"foreign\":%ld,\"send_s\":%.6f,\"send_pps\":%.1f,"
           "\"first_arrival_s\":%.6f,\"elapsed_s\":%.6f,\"pps\":%.1f,\"MBps\":%.3f,"
           "\"self_cpu_s\":%.3f,\"in_flight\":%ld,\"stalls\":%ld,\"setup_s\":%.3f}\n",
           o->flows, o->size, s.sent, s.sendErrors, received,
           s.sent ? 100.0 * (s.sent - received) / s.sent : 0.0, dup, reordered, badLen,
           foreign, sendSeconds, sendSeconds > 0 ? s.sent / sendSeconds : 0,
           received ? (first - s.start) / 1e9 : 0, elapsed, pps, pps * o->size / 1e6, cpu,
           o->inFlight, s.stalls, blastSetupSeconds);
    return 0;
}

/* ---- window: W datagrams in flight, each reply sends the next ---- */

static int window(const struct options *o)
{
    int sink = sinkSocket(o), app = appSocket(o);
    struct echo e;
    pthread_t echoThread;
    echoStart(&e, &echoThread, sink);
    struct seen seen;
    seenInit(&seen, o->count + o->window);
    struct batch *in = malloc(sizeof *in), *out = malloc(sizeof *out);
    if (in == NULL || out == NULL)
        die("malloc");
    batchInit(in, MAX_SIZE + 1);
    batchInit(out, (size_t)o->size);
    for (int i = 0; i < BATCH; i++)
        out->iovs[i].iov_len = (size_t)o->size;
    double cpu0 = cpuSeconds();
    long nextSeq = 0, completed = 0, lost = 0, stale = 0, badLen = 0, sendErrors = 0;
    long inFlight = 0, timeouts = 0, lostBelow = 0;
    uint64_t start = nowNs(), deadline = start + (uint64_t)(o->duration * 1e9);
    uint64_t last = start, rttSum = 0;
    int toSend = o->window;
    for (;;) {
        /* Send what the replies (or a timeout) made room for. */
        while (toSend > 0 && nextSeq < o->count + o->window) {
            int n = toSend < BATCH ? toSend : BATCH;
            uint64_t t = nowNs();
            for (int i = 0; i < n; i++)
                stamp(out->bufs[i], (uint32_t)(nextSeq + i), t);
            nextSeq += n;
            aim(out, n, sendTarget, sendTargetLen);
            inFlight += sendBatch(app, out, n, &sendErrors);
            toSend -= n;
        }
        toSend = 0;
        if (completed >= o->count)
            break;
        uint64_t t = nowNs();
        if (t >= deadline)
            break;
        int waitMs = (int)((deadline - t) / 1000000u) + 1;
        if (waitMs > o->timeoutMs)
            waitMs = o->timeoutMs;
        if (!waitReadable(app, waitMs)) {
            if (nowNs() - last >= (uint64_t)o->timeoutMs * 1000000u) {
                /* Nothing came back for a while: what is in flight is lost. */
                timeouts++;
                lost += inFlight;
                inFlight = 0;
                lostBelow = nextSeq; /* their late replies must not widen the window */
                toSend = o->window;
                last = nowNs();
            }
            continue;
        }
        batchForReceiving(in, 0);
        int n = recvmmsg(app, in->msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            continue;
        t = nowNs();
        for (int i = 0; i < n; i++) {
            long seq = ours(in->bufs[i], in->msgs[i].msg_len, o->size, &badLen);
            if (seq < lostBelow || seq >= nextSeq || seenMark(&seen, seq) != 1) {
                stale++;
                continue;
            }
            rttSum += t - sentAt(in->bufs[i]);
            completed++;
            if (inFlight > 0)
                inFlight--;
            toSend++;
            last = t;
        }
    }
    uint64_t end = nowNs();
    double cpu = cpuSeconds() - cpu0;
    echoStop(&e, echoThread);
    double elapsed = (end - start) / 1e9;
    double rtps = elapsed > 0 ? completed / elapsed : 0;
    printf("{\"mode\":\"window\",\"size\":%d,\"window\":%d,\"completed\":%ld,\"lost\":%ld,"
           "\"timeouts\":%ld,\"stale\":%ld,\"badlen\":%ld,\"send_errors\":%ld,"
           "\"echo_send_errors\":%ld,\"elapsed_s\":%.6f,\"rtps\":%.1f,\"MBps\":%.3f,"
           "\"rtt_mean_us\":%.1f,\"self_cpu_s\":%.3f}\n",
           o->size, o->window, completed, lost, timeouts, stale, badLen, sendErrors,
           e.sendErrors, elapsed, rtps, rtps * o->size / 1e6,
           completed ? rttSum / 1e3 / completed : 0.0, cpu);
    return 0;
}

/* ---- ping: one datagram in flight; RTT percentiles ---- */

static int compareU64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double percentile(const uint64_t *sorted, long n, double p)
{
    if (n == 0)
        return 0;
    long i = (long)(p / 100.0 * (n - 1) + 0.5);
    return sorted[i] / 1e3;
}

/* Send one datagram with seq and wait for its echo; RTT in ns, or 0 if lost. */
static uint64_t pingOnce(const struct options *o, int app, unsigned char *out,
                         unsigned char *in, uint32_t seq, long *stale, long *badLen,
                         long *sendErrors)
{
    uint64_t t0 = nowNs();
    stamp(out, seq, t0);
    if (appSend(app, out, (size_t)o->size) < 0)
        ++*sendErrors;
    uint64_t giveUp = t0 + (uint64_t)o->timeoutMs * 1000000u;
    for (;;) {
        uint64_t t = nowNs();
        if (t >= giveUp)
            return 0;
        if (!waitReadable(app, (int)((giveUp - t) / 1000000u) + 1))
            continue;
        ssize_t n = recv(app, in, MAX_SIZE + 1, MSG_DONTWAIT);
        if (n < 0)
            continue;
        uint64_t arrived = nowNs();
        long got = ours(in, (unsigned int)n, o->size, badLen);
        if (got == (long)seq)
            return arrived - t0 ? arrived - t0 : 1;
        ++*stale;
    }
}

static int ping(const struct options *o)
{
    int sink = sinkSocket(o), app = appSocket(o);
    struct echo e;
    pthread_t echoThread;
    echoStart(&e, &echoThread, sink);
    unsigned char *out = calloc(MAX_SIZE + 1, 1), *in = calloc(MAX_SIZE + 1, 1);
    uint64_t *rtts = calloc((size_t)o->count + 1, sizeof *rtts);
    if (out == NULL || in == NULL || rtts == NULL)
        die("calloc");
    memset(out, 'u', MAX_SIZE + 1);
    double cpu0 = cpuSeconds();
    long n = 0, lost = 0, stale = 0, badLen = 0, sendErrors = 0;
    uint64_t start = nowNs(), deadline = start + (uint64_t)(o->duration * 1e9);
    for (long i = 0; i < o->warmup + o->count && nowNs() < deadline; i++) {
        uint64_t rtt = pingOnce(o, app, out, in, (uint32_t)i, &stale, &badLen, &sendErrors);
        if (i < o->warmup)
            continue;
        if (rtt == 0)
            lost++;
        else
            rtts[n++] = rtt;
    }
    double elapsed = (nowNs() - start) / 1e9;
    double cpu = cpuSeconds() - cpu0;
    echoStop(&e, echoThread);
    qsort(rtts, (size_t)n, sizeof *rtts, compareU64);
    uint64_t sum = 0;
    for (long i = 0; i < n; i++)
        sum += rtts[i];
    printf("{\"mode\":\"ping\",\"size\":%d,\"replies\":%ld,\"lost\":%ld,\"stale\":%ld,"
           "\"badlen\":%ld,\"send_errors\":%ld,\"elapsed_s\":%.6f,\"rtt_min_us\":%.1f,"
           "\"rtt_mean_us\":%.1f,\"rtt_p50_us\":%.1f,\"rtt_p90_us\":%.1f,"
           "\"rtt_p99_us\":%.1f,\"rtt_max_us\":%.1f,\"self_cpu_s\":%.3f}\n",
           o->size, n, lost, stale, badLen, sendErrors, elapsed, percentile(rtts, n, 0),
           n ? sum / 1e3 / n : 0.0, percentile(rtts, n, 50), percentile(rtts, n, 90),
           percentile(rtts, n, 99), percentile(rtts, n, 100), cpu);
    return 0;
}

/* ---- probe: is the path up?  One datagram every 50 ms until one returns ---- */

static int probe(const struct options *o)
{
    struct options p = *o;
    p.timeoutMs = 50;
    p.size = HEADER;
    int sink = sinkSocket(&p), app = appSocket(&p);
    struct echo e;
    pthread_t echoThread;
    echoStart(&e, &echoThread, sink);
    unsigned char out[HEADER], *in = calloc(MAX_SIZE + 1, 1);
    if (in == NULL)
        die("calloc");
    long tries = 0, stale = 0, badLen = 0, sendErrors = 0;
    uint64_t start = nowNs(), deadline = start + (uint64_t)(o->duration * 1e9);
    int ok = 0;
    while (!ok && nowNs() < deadline && tries < 100000) {
        ok = pingOnce(&p, app, out, in, (uint32_t)tries, &stale, &badLen, &sendErrors) != 0;
        tries++;
    }
    echoStop(&e, echoThread);
    printf("{\"mode\":\"probe\",\"ok\":%s,\"tries\":%ld,\"elapsed_s\":%.3f}\n",
           ok ? "true" : "false", tries, (nowNs() - start) / 1e9);
    return ok ? 0 : 1;
}

/* ---- flows: F sources, each with W datagrams in flight, one echo ---- */


static uint32_t flowSeq(int flow, long seq)
{
    return ((uint32_t)flow << FLOW_SHIFT) | (uint32_t)seq;
}

static void raiseDescriptorLimit(long needed)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) < 0 || r.rlim_cur == RLIM_INFINITY ||
        (long)r.rlim_cur >= needed)
        return;
    r.rlim_cur = (r.rlim_max == RLIM_INFINITY || (long)r.rlim_max >= needed)
                     ? (rlim_t)needed : r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
}

/* Send up to n new datagrams on a flow; returns how many went out. */
static int flowSend(const struct options *o, struct flow *f, int index, struct batch *out,
                    int n, long *sendErrors)
{
    int k = 0;
    uint64_t t = nowNs();
    for (int slot = 0; slot < o->window && k < n && k < BATCH; slot++) {
        if (f->slots[slot] >= 0)
            continue;
        if (f->nextSeq >= PROBE_SEQ)
            break;
        f->slots[slot] = f->nextSeq;
        stamp(out->bufs[k], flowSeq(index, f->nextSeq), t);
        f->nextSeq++;
        k++;
    }
    if (k == 0)
        return 0;
    sendBatch(f->fd, out, k, sendErrors);
    f->inFlight += k;
    return k;
}

/* Open the flows' sessions: each sends a probe until its echo returns. */
static int flowsSetup(const struct options *o, struct flow *flows, int epfd, long *setupSent)
{
    unsigned char out[HEADER], in[MAX_SIZE + 1];
    uint64_t deadline = nowNs() + (uint64_t)(o->setupSeconds * 1e9);
    struct epoll_event events[64];
    for (int first = 0; first < o->flows; first += SETUP_WAVE) {
        int end = first + SETUP_WAVE < o->flows ? first + SETUP_WAVE : o->flows;
        int waiting = end - first;
        char *done = calloc((size_t)waiting, 1);
        if (done == NULL)
            die("calloc");
        uint64_t lastSent = 0;
        while (waiting > 0) {
            uint64_t t = nowNs();
            if (t >= deadline) {
                free(done);
                return 0;
            }
            if (t - lastSent >= 500000000u) {
                for (int i = first; i < end; i++) {
                    if (done[i - first])
                        continue;
                    stamp(out, flowSeq(i, PROBE_SEQ), t);
                    if (appSend(flows[i].fd, out, HEADER) == HEADER)
                        ++*setupSent;
                }
                lastSent = t;
            }
            int n = epoll_wait(epfd, events, 64, 20);
            for (int e = 0; e < n; e++) {
                int i = (int)events[e].data.u32;
                ssize_t got;
                while ((got = recv(flows[i].fd, in, sizeof in, MSG_DONTWAIT)) >= 0) {
                    long badLen = 0;
                    long seq = ours(in, (unsigned int)got, HEADER, &badLen);
                    if (seq == (long)flowSeq(i, PROBE_SEQ) && i >= first && i < end &&
                        !done[i - first]) {
                        done[i - first] = 1;
                        waiting--;
                    }
                }
            }
        }
        free(done);
    }
    return 1;
}

static int compareU32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double percentile32(const uint32_t *sorted, long n, double p)
{
    if (n == 0)
        return 0;
    long i = (long)(p / 100.0 * (n - 1) + 0.5);
    return sorted[i] / 1e3;
}

static int flowsMode(const struct options *o)
{
    raiseDescriptorLimit(o->flows + 64);
    int sink = sinkSocket(o);
    struct echo e;
    pthread_t echoThread;
    echoStart(&e, &echoThread, sink);
    int epfd = epoll_create1(0);
    if (epfd < 0)
        die("epoll_create1");
    struct flow *flows = calloc((size_t)o->flows, sizeof *flows);
    if (flows == NULL)
        die("calloc");
    for (int i = 0; i < o->flows; i++) {
        flows[i].fd = appSocket(o);
        flows[i].slots = malloc(sizeof(long) * (size_t)o->window);
        if (flows[i].slots == NULL)
            die("malloc");
        for (int s = 0; s < o->window; s++)
            flows[i].slots[s] = -1;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, flows[i].fd, &ev) < 0)
            die("epoll_ctl");
    }
    long setupSent = 0;
    uint64_t setupStart = nowNs();
    int ready = flowsSetup(o, flows, epfd, &setupSent);
    double setupS = (nowNs() - setupStart) / 1e9;
    if (!ready) {
        echoStop(&e, echoThread);
        printf("{\"mode\":\"flows\",\"ok\":false,\"flows\":%d,\"setup_s\":%.3f,"
               "\"error\":\"not every flow's first datagram came back within %.0f s\"}\n",
               o->flows, setupS, o->setupSeconds);
        return 1;
    }
    /* The driver reads the tunnel's CPU time from here on. */
    printf("{\"phase\":\"ready\",\"setup_s\":%.3f}\n", setupS);
    uint32_t *rtts = malloc(sizeof *rtts * (size_t)(o->count + 1));
    struct batch *in = malloc(sizeof *in), *out = malloc(sizeof *out);
    if (rtts == NULL || in == NULL || out == NULL)
        die("malloc");
    batchInit(in, MAX_SIZE + 1);
    batchInit(out, (size_t)o->size);
    for (int i = 0; i < BATCH; i++)
        out->iovs[i].iov_len = (size_t)o->size;
    struct epoll_event events[256];
    long completed = 0, stale = 0, misrouted = 0, badLen = 0, sendErrors = 0, timeouts = 0;
    double cpu0 = cpuSeconds();
    uint64_t start = nowNs(), deadline = start + (uint64_t)(o->duration * 1e9);
    uint64_t lastScan = start;
    for (int i = 0; i < o->flows; i++) {
        flows[i].last = start;
        flowSend(o, &flows[i], i, out, o->window, &sendErrors);
    }
    while (completed < o->count) {
        uint64_t t = nowNs();
        if (t >= deadline)
            break;
        int waitMs = (int)((deadline - t) / 1000000u) + 1;
        if (waitMs > 10)
            waitMs = 10;
        int n = epoll_wait(epfd, events, 256, waitMs);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int ev = 0; ev < n && completed < o->count; ev++) {
            int i = (int)events[ev].data.u32;
            struct flow *f = &flows[i];
            batchForReceiving(in, 0);
            int got = recvmmsg(f->fd, in->msgs, BATCH, MSG_DONTWAIT, NULL);
            if (got <= 0)
                continue;
            uint64_t arrived = nowNs();
            int freed = 0;
            for (int m = 0; m < got; m++) {
                long seq = ours(in->bufs[m], in->msgs[m].msg_len, o->size, &badLen);
                if (seq < 0) {
                    stale++;
                    continue;
                }
                if ((int)((uint32_t)seq >> FLOW_SHIFT) != i) {
                    misrouted++; /* another flow's datagram: sessions mixed up */
                    continue;
                }
                long own = seq & (FLOW_SEQS - 1);
                int slot = -1;
                for (int s = 0; s < o->window; s++)
                    if (f->slots[s] == own) {
                        slot = s;
                        break;
                    }
                if (slot < 0) {
                    stale++; /* a late probe, or a reply after its timeout */
                    continue;
                }
                f->slots[slot] = -1;
                f->inFlight--;
                uint64_t rtt = arrived - sentAt(in->bufs[m]);
                f->rttSum += rtt;
                f->completed++;
                if (completed < o->count)
                    rtts[completed] = rtt > UINT32_MAX ? UINT32_MAX : (uint32_t)rtt;
                completed++;
                freed++;
            }
            if (freed) {
                f->last = arrived;
                flowSend(o, f, i, out, freed, &sendErrors);
            }
        }
        t = nowNs();
        if (t - lastScan >= 10000000u) {
            lastScan = t;
            for (int i = 0; i < o->flows; i++) {
                struct flow *f = &flows[i];
                if (f->inFlight > 0 && t - f->last >= (uint64_t)o->timeoutMs * 1000000u) {
                    /* Nothing came back for a while: what is in flight is lost. */
                    timeouts++;
                    f->lost += f->inFlight;
                    f->inFlight = 0;
                    for (int s = 0; s < o->window; s++)
                        f->slots[s] = -1;
                    f->last = t;
                    flowSend(o, f, i, out, o->window, &sendErrors);
                }
            }
        }
    }
    uint64_t end = nowNs();
    double cpu = cpuSeconds() - cpu0;
    echoStop(&e, echoThread);
    long samples = completed < o->count ? completed : o->count;
    qsort(rtts, (size_t)samples, sizeof *rtts, compareU32);
    /* Per flow: its mean RTT and its share of the round trips. */
    double *means = calloc((size_t)o->flows, sizeof *means);
    if (means == NULL)
        die("calloc");
    long lost = 0, fewest = -1, most = 0;
    int idle = 0;
    for (int i = 0; i < o->flows; i++) {
        lost += flows[i].lost;
        if (fewest < 0 || flows[i].completed < fewest)
            fewest = flows[i].completed;
        if (flows[i].completed > most)
            most = flows[i].completed;
        if (flows[i].completed == 0)
            idle++;
        means[i] = flows[i].completed ? flows[i].rttSum / 1e3 / flows[i].completed : 0;
    }
    /* sort the means (doubles): insertion sort is enough for 1024 */
    for (int i = 1; i < o->flows; i++) {
        double v = means[i];
        int j = i - 1;
        while (j >= 0 && means[j] > v) {
            means[j + 1] = means[j];
            j--;
        }
        means[j + 1] = v;
    }
    double elapsed = (end - start) / 1e9;
    double rtps = elapsed > 0 ? completed / elapsed : 0;
    printf("{\"mode\":\"flows\",\"ok\":true,\"size\":%d,\"flows\":%d,\"window\":%d,"
           "\"setup_s\":%.3f,\"setup_sent\":%ld,\"completed\":%ld,\"lost\":%ld,"
           "\"timeouts\":%ld,\"stale\":%ld,\"misrouted\":%ld,\"badlen\":%ld,"
           "\"send_errors\":%ld,\"echo_send_errors\":%ld,\"elapsed_s\":%.6f,\"rtps\":%.1f,"
           "\"MBps\":%.3f,\"rtt_p50_us\":%.1f,\"rtt_p99_us\":%.1f,\"rtt_max_us\":%.1f,"
           "\"flow_rtt_min_us\":%.1f,\"flow_rtt_median_us\":%.1f,\"flow_rtt_max_us\":%.1f,"
           "\"flow_rt_fewest\":%ld,\"flow_rt_most\":%ld,\"flows_idle\":%d,"
           "\"self_cpu_s\":%.3f}\n",
           o->size, o->flows, o->window, setupS, setupSent, completed, lost, timeouts, stale,
           misrouted, badLen, sendErrors, e.sendErrors, elapsed, rtps, rtps * o->size / 1e6,
           percentile32(rtts, samples, 50), percentile32(rtts, samples, 99),
           percentile32(rtts, samples, 100), means[0], means[o->flows / 2],
           means[o->flows - 1], fewest, most, idle, cpu);
    return 0;
}

int main(int argc, char **argv)
{
    struct options o = {
        .size = 64, .count = 2000000, .warmup = 100, .window = 32,
        .duration = 1.0, .timeoutMs = 200, .drainMs = 300, .flows = 1,
        .setupSeconds = 30,
    };
    int haveTarget = 0, haveSink = 0;
    if (argc < 2)
        usage("no mode");
    o.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *name = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (value == NULL)
            usage("an option lacks its value");
        i++;
        if (!strcmp(name, "--target")) {
            o.targetLen = parseAddress(value, &o.target);
            haveTarget = 1;
        } else if (!strcmp(name, "--sink")) {
            o.sinkLen = parseAddress(value, &o.sink);
            haveSink = 1;
        } else if (!strcmp(name, "--a-bind"))
            o.aBindLen = parseAddress(value, &o.aBind);
        else if (!strcmp(name, "--reply-to"))
            o.replyToLen = parseAddress(value, &o.replyTo);
        else if (!strcmp(name, "--size"))
            o.size = atoi(value);
        else if (!strcmp(name, "--count"))
            o.count = atol(value);
        else if (!strcmp(name, "--warmup"))
            o.warmup = atol(value);
        else if (!strcmp(name, "--window"))
            o.window = atoi(value);
        else if (!strcmp(name, "--duration"))
            o.duration = atof(value);
        else if (!strcmp(name, "--timeout-ms"))
            o.timeoutMs = atoi(value);
        else if (!strcmp(name, "--drain-ms"))
            o.drainMs = atoi(value);
        else if (!strcmp(name, "--flows")) {
            o.flows = atoi(value);
            o.flowsGiven = 1;
        }
        else if (!strcmp(name, "--in-flight"))
            o.inFlight = atol(value);
        else if (!strcmp(name, "--setup-s"))
            o.setupSeconds = atof(value);
        else
            usage("unknown option");
    }
    if (!haveTarget || !haveSink)
        usage("--target and --sink are required");
    if (o.size < HEADER || o.size > MAX_SIZE)
        usage("--size must be 16..65507");
    if (o.count < 1 || o.count > MAX_COUNT)
        usage("--count must be 1..100000000");
    if (o.warmup < 0 || o.warmup > MAX_COUNT)
        usage("--warmup must be 0..100000000");
    if (o.window < 1 || o.window > 4096)
        usage("--window must be 1..4096");
    if (!(o.duration > 0 && o.duration <= 600))
        usage("--duration must be in (0, 600] seconds");
    if (o.timeoutMs < 1 || o.timeoutMs > 10000 || o.drainMs < 1 || o.drainMs > 10000)
        usage("--timeout-ms and --drain-ms must be 1..10000");
    if (o.flows < 1 || o.flows > MAX_FLOWS)
        usage("--flows must be 1..1024");
    if (!(o.setupSeconds > 0 && o.setupSeconds <= 600))
        usage("--setup-s must be in (0, 600] seconds");
    if (!strcmp(o.mode, "flows") && (o.count > FLOW_SEQS || o.window > 64))
        usage("flows: --count at most 4194304 and --window at most 64");
    if (o.inFlight < 0 || o.inFlight > MAX_COUNT)
        usage("--in-flight must be 0..100000000");
    if (o.aBindLen && o.flows > 1)
        usage("--a-bind is one socket: not with --flows");
    if (o.aBindLen) {
        sendTarget = &o.target;
        sendTargetLen = o.targetLen;
    }
    if (o.replyToLen) {
        echoTarget = &o.replyTo;
        echoTargetLen = o.replyToLen;
    }
    runId = (uint32_t)(nowNs() ^ ((uint64_t)getpid() << 16)) | 1u;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(o.mode, "blast"))
        return blast(&o);
    if (!strcmp(o.mode, "window"))
        return window(&o);
    if (!strcmp(o.mode, "ping"))
        return ping(&o);
    if (!strcmp(o.mode, "probe"))
        return probe(&o);
    if (!strcmp(o.mode, "flows"))
        return flowsMode(&o);
    usage("mode is blast, window, ping, probe or flows");
    return 2;
}
