/*
 * udptunnel._pump: the compiled fast path of the event loop (optional).
 *
 * Why: on the latency path (one datagram in flight) a round trip wakes each
 * end twice, and in CPython every wake-up costs several microseconds of
 * interpreter work (the reactor turn, the dispatch, the protocol, the relay)
 * on top of its two system calls; the C tool pays only the system calls.
 * Here the reactor's epoll wait, and the work of a wake-up that only moves
 * bytes (a UDP read framed into one TCP write, a TCP read of whole frames
 * sent as datagrams), run in C, without returning to Python; anything else
 * goes back to Python, which stays the one place that decides.
 *
 * The contract (udptunnel/_twisted/pumped.py drives it):
 *
 *   - A Pair joins a UDP socket and a TCP socket.  Python arms each way
 *     before every wait (Pair.up: UDP to TCP, Pair.down: TCP to UDP) only
 *     when nothing but bytes can happen there: the link is established,
 *     Twisted holds nothing queued for the TCP socket, the frame parser
 *     holds no partial frame, the peer is known...  An armed Pair is handled
 *     here only for an event that is exactly EPOLLIN.
 *   - A UDP datagram from another source than Pair's (or with other
 *     pktinfo), a partial TCP write, a partial frame, a send the kernel
 *     refuses, an end of stream or an error: the rest of that read is handed
 *     back to Python, in order, as a 3-tuple (kind, pair, payload) in the
 *     list wait() returns, beside the (fd, events) pairs it did not handle.
 *     What was handed back disarms the way it concerns; Python arms it again
 *     when its state allows.
 *   - Counters (datagrams and bytes each way, the time of the last frame)
 *     accumulate in the Pair; Python takes them after every wait.
 *
 * Nothing here decides anything about the tunnel; it only does, faster,
 * what the Python path does when nothing unusual happens.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

/* What wait() hands back to Python. */
#define HAND_DATAGRAMS 1   /* list of (data, (host, port)): the relay's path */
#define HAND_STREAM 2      /* bytes read from the TCP socket, b"" at its end */
#define HAND_STREAM_LOST 3 /* errno of a failed TCP read */
#define HAND_TCP_REST 4    /* bytes the TCP socket did not take */
#define HAND_FRAMES 5      /* list of frames the UDP socket did not take */
#define HAND_READ_ERROR 6  /* errno of a failed UDP read */

#define MAX_DATAGRAM 65535
#define MAX_READS 256      /* datagrams one turn reads, as the Python path */
#define TCP_READ 65536     /* Twisted's Connection.bufferSize */
#define OUT_SIZE (256 * 1024)
#define MAX_SEGMENTS 64
#define MAX_PAYLOAD 65507
#define INFO_SIZE 32

typedef struct Pair {
    PyObject_HEAD
    int udpFd;
    int tcpFd;
    int up;             /* armed: UDP reads framed into the TCP socket */
    int down;           /* armed: TCP reads of whole frames sent as datagrams */
    int connected;      /* the UDP socket is connected: no address to check */
    int withInfo;       /* wildcard-bound: recvmsg with pktinfo */
    int segments;       /* the kernel segments runs (UDP_SEGMENT) */
    int maxSegment;
    struct sockaddr_storage source;   /* the one source UDP reads may carry */
    socklen_t sourceLen;
    struct sockaddr_storage dest;     /* where frames go */
    socklen_t destLen;
    unsigned char infoIn[INFO_SIZE];  /* the pktinfo expected with them */
    Py_ssize_t infoInLen;
    int infoLevel, infoType;          /* the pktinfo replies go with */
    unsigned char infoOut[INFO_SIZE];
    Py_ssize_t infoOutLen;
    unsigned long long upDatagrams, upBytes, downDatagrams, downBytes;
    double lastFrame;
    int registered;
    int touched;        /* counted something since the last take() */
    int shared;         /* its UDP socket is a shared one: found by source */
    int handedNow;      /* this read hands its datagrams back */
    struct Pair *next;  /* in its hash bucket (shared) */
    PyObject *owner;
} Pair;

typedef struct {
    PyObject_HEAD
    int epfd;
    Pair **byFd;        /* fd -> Pair (borrowed: the table holds a reference) */
    unsigned char *roleOf; /* 1: the Pair's UDP socket, 2: its TCP socket */
    int size;
    struct epoll_event *events;
    int maxEvents;
    unsigned char *udpBuffer;
    unsigned char *tcpBuffer;
    unsigned char *out;
    PyObject *touched;  /* the pairs that counted something since takeTouched() */
    Pair **buckets;     /* (shared UDP socket, source) -> Pair, chained */
    size_t bucketCount; /* a power of two, or 0 */
    size_t pairCount;
} Pump;

static PyTypeObject PairType;

static double
wallClock(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (double)now.tv_sec + now.tv_nsec / 1e9;
}

/* Addresses */

static int
toSockaddr(PyObject *address, struct sockaddr_storage *out, socklen_t *length)
{
    const char *host;
    int port;
    memset(out, 0, sizeof(*out));
    if (!PyArg_ParseTuple(address, "si", &host, &port))
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    struct sockaddr_in *four = (struct sockaddr_in *)out;
    struct sockaddr_in6 *six = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &four->sin_addr) == 1) {
        four->sin_family = AF_INET;
        four->sin_port = htons((uint16_t)port);
        *length = sizeof(*four);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &six->sin6_addr) == 1) {
        six->sin6_family = AF_INET6;
        six->sin6_port = htons((uint16_t)port);
        *length = sizeof(*six);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "not an IP literal: %s", host);
    return -1;
}

static int
sameSource(const Pair *pair, const struct sockaddr_storage *from, socklen_t fromLen)
{
    if (pair->sourceLen == 0 || from->ss_family != pair->source.ss_family)
        return 0;
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)from, *b = (const void *)&pair->source;
        return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
    }
    if (from->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)from, *b = (const void *)&pair->source;
        return a->sin6_port == b->sin6_port
            && memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0;
    }
    (void)fromLen;
    return 0;
}

/* (host, port), as the Python path trims it */
static PyObject *
fromSockaddr(const struct sockaddr_storage *from)
{
    char host[INET6_ADDRSTRLEN];
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)from;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(a->sin_port));
    }
    if (from->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)from;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        return Py_BuildValue("(si)", host, ntohs(a->sin6_port));
    }
    Py_RETURN_NONE;
}

/* The Pair type */

static int
Pair_init(Pair *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"udpFd", "tcpFd", "owner", NULL};
    PyObject *owner = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ii|O", keywords,
                                     &self->udpFd, &self->tcpFd, &owner))
        return -1;
    Py_INCREF(owner);
    Py_XSETREF(self->owner, owner);
    self->maxSegment = MAX_PAYLOAD;
    return 0;
}

static int
Pair_traverse(Pair *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    return 0;
}

static int
Pair_clear(Pair *self)
{
    Py_CLEAR(self->owner);
    return 0;
}

static void
Pair_dealloc(Pair *self)
{
    PyObject_GC_UnTrack(self);
    Pair_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Pair_setSource(Pair *self, PyObject *address)
{
    if (address == Py_None) {
        self->sourceLen = 0;
        Py_RETURN_NONE;
    }
    if (toSockaddr(address, &self->source, &self->sourceLen) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Pair_setDestination(Pair *self, PyObject *address)
{
    if (address == Py_None) {
        self->destLen = 0;
        Py_RETURN_NONE;
    }
    if (toSockaddr(address, &self->dest, &self->destLen) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* setInfo(received: bytes | None, level: int, type: int, reply: bytes | None) */
static PyObject *
Pair_setInfo(Pair *self, PyObject *args)
{
    PyObject *received, *reply;
    int level, type;
    if (!PyArg_ParseTuple(args, "OiiO", &received, &level, &type, &reply))
        return NULL;
    self->infoInLen = self->infoOutLen = 0;
    if (received != Py_None) {
        char *data;
        Py_ssize_t length;
        if (PyBytes_AsStringAndSize(received, &data, &length) < 0)
            return NULL;
        if (length > INFO_SIZE) {
            PyErr_SetString(PyExc_ValueError, "pktinfo too long");
            return NULL;
        }
        memcpy(self->infoIn, data, length);
        self->infoInLen = length;
    }
    if (reply != Py_None) {
        char *data;
        Py_ssize_t length;
        if (PyBytes_AsStringAndSize(reply, &data, &length) < 0)
            return NULL;
        if (length > INFO_SIZE) {
            PyErr_SetString(PyExc_ValueError, "pktinfo too long");
            return NULL;
        }
        memcpy(self->infoOut, data, length);
        self->infoOutLen = length;
        self->infoLevel = level;
        self->infoType = type;
    }
    Py_RETURN_NONE;
}

/* take() -> (upDatagrams, upBytes, downDatagrams, downBytes, lastFrame), zeroed */
static PyObject *
Pair_take(Pair *self, PyObject *unused)
{
    PyObject *result = Py_BuildValue("(KKKKd)", self->upDatagrams, self->upBytes,
                                     self->downDatagrams, self->downBytes, self->lastFrame);
    self->upDatagrams = self->upBytes = self->downDatagrams = self->downBytes = 0;
    self->touched = 0;
    return result;
}

static PyObject *
Pair_getFlag(Pair *self, void *which)
{
    int *flag = (int *)((char *)self + (Py_ssize_t)which);
    return PyBool_FromLong(*flag);
}

static int
Pair_setFlag(Pair *self, PyObject *value, void *which)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete");
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    if (truth < 0)
        return -1;
    *(int *)((char *)self + (Py_ssize_t)which) = truth;
    return 0;
}

static PyObject *
Pair_getInt(Pair *self, void *which)
{
    return PyLong_FromLong(*(int *)((char *)self + (Py_ssize_t)which));
}

static int
Pair_setMaxSegment(Pair *self, PyObject *value, void *unused)
{
    long size = value == NULL ? -1 : PyLong_AsLong(value);
    if (size == -1 && PyErr_Occurred())
        return -1;
    if (size < 0 || size > MAX_PAYLOAD) {
        PyErr_SetString(PyExc_ValueError, "maxSegment out of range");
        return -1;
    }
    self->maxSegment = (int)size;
    return 0;
}

static PyObject *
Pair_getOwner(Pair *self, void *unused)
{
    Py_INCREF(self->owner);
    return self->owner;
}

#define FLAG(name, field, doc) \
    {name, (getter)Pair_getFlag, (setter)Pair_setFlag, doc, (void *)offsetof(Pair, field)}

static PyGetSetDef Pair_getset[] = {
    FLAG("up", up, "Armed: UDP reads are framed into the TCP socket here."),
    FLAG("down", down, "Armed: TCP reads of whole frames are sent as datagrams here."),
    FLAG("connected", connected, "The UDP socket is connected to the peer."),
    FLAG("withInfo", withInfo, "The UDP socket is wildcard-bound: reads carry pktinfo."),
    FLAG("segments", segments, "Runs of equal datagrams leave in one send (UDP_SEGMENT)."),
    FLAG("shared", shared, "Its UDP socket is shared by pairs, each found by its source."),
    {"maxSegment", (getter)Pair_getInt, (setter)Pair_setMaxSegment,
     "The largest segment size a run may have.", (void *)offsetof(Pair, maxSegment)},
    {"udpFd", (getter)Pair_getInt, NULL, "The UDP socket.", (void *)offsetof(Pair, udpFd)},
    {"tcpFd", (getter)Pair_getInt, NULL, "The TCP socket.", (void *)offsetof(Pair, tcpFd)},
    {"owner", (getter)Pair_getOwner, NULL, "Whom the Python side handed this pair.", NULL},
    {NULL}
};

static PyMethodDef Pair_methods[] = {
    {"setSource", (PyCFunction)Pair_setSource, METH_O,
     "The (host, port) UDP reads must come from, or None: every one is handed back."},
    {"setDestination", (PyCFunction)Pair_setDestination, METH_O,
     "The (host, port) frames go to, or None."},
    {"setInfo", (PyCFunction)Pair_setInfo, METH_VARARGS,
     "setInfo(received, level, type, reply): the pktinfo data reads must carry, and "
     "the control message replies go with (None: none)."},
    {"take", (PyCFunction)Pair_take, METH_NOARGS,
     "(upDatagrams, upBytes, downDatagrams, downBytes, lastFrame) since the last take."},
    {NULL}
};

static PyTypeObject PairType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "udptunnel._pump.Pair",
    .tp_basicsize = sizeof(Pair),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A UDP socket and a TCP socket whose bytes the pump may move.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pair_init,
    .tp_dealloc = (destructor)Pair_dealloc,
    .tp_traverse = (traverseproc)Pair_traverse,
    .tp_clear = (inquiry)Pair_clear,
    .tp_getset = Pair_getset,
    .tp_methods = Pair_methods,
};

/* Handing back */

static int
handBack(PyObject *result, int kind, Pair *pair, PyObject *payload)
{
    if (payload == NULL)
        return -1;
    PyObject *item = Py_BuildValue("(iON)", kind, (PyObject *)pair, payload);
    if (item == NULL)
        return -1;
    int failed = PyList_Append(result, item);
    Py_DECREF(item);
    return failed;
}

/* A pair that counted something is listed once for takeTouched(). */
static int
touch(Pump *pump, Pair *pair)
{
    if (pair->touched)
        return 0;
    pair->touched = 1;
    return PyList_Append(pump->touched, (PyObject *)pair);
}

/* UDP to TCP */

static int
flushOut(Pair *pair, Pump *pump, Py_ssize_t *outLength, PyObject *result)
{
    Py_ssize_t length = *outLength, sent = 0;
    *outLength = 0;
    if (length == 0)
        return 0;
    while (sent < length) {
        ssize_t n = send(pair->tcpFd, pump->out + sent, length - sent,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;  /* EAGAIN, or an error Twisted's own write will meet */
        }
        sent += n;
    }
    if (sent == length)
        return 0;
    pair->up = 0;  /* Twisted queues the rest: nothing may overtake it */
    return handBack(result, HAND_TCP_REST,
                    pair, PyBytes_FromStringAndSize((char *)pump->out + sent, length - sent));
}

/* The pair of a shared socket's datagram from this source, or NULL. */
static Pair *lookup(Pump *pump, int fd, const struct sockaddr_storage *from);
static void unhash(Pump *pump, Pair *pair);

static int
infoMatches(const Pair *pair, const unsigned char *info, Py_ssize_t length)
{
    return length == pair->infoInLen && memcmp(info, pair->infoIn, length) == 0;
}

/*
 * One read of a UDP socket: its own pair's (sock), or a shared one's, whose
 * datagrams each go to the pair of their source.  The datagrams of an armed
 * pair are framed into its TCP socket, consecutive ones in one send; the
 * others are handed back in order, in one list, as is every later datagram
 * of a pair once one of its was.
 */
static int
readUDP(Pair *sock, Pump *pump, PyObject *result, int shared)
{
    PyObject *handed = NULL;
    Pair *current = NULL;  /* whose frames the out buffer holds */
    Pair *marked[MAX_READS];
    int markedCount = 0;
    Py_ssize_t outLength = 0;
    int status = 0;
    unsigned char *buffer = pump->udpBuffer;
    union {
        struct cmsghdr align;
        unsigned char space[CMSG_SPACE(INFO_SIZE) + CMSG_SPACE(16)];
    } control;
    for (int i = 0; i < MAX_READS; i++) {
        struct sockaddr_storage from;
        socklen_t fromLen = sizeof(from);
        unsigned char *info = NULL;
        Py_ssize_t infoLength = 0;
        ssize_t n;
        memset(&from, 0, sizeof(from));
        if (sock->withInfo) {
            struct iovec vector = {buffer, MAX_DATAGRAM};
            struct msghdr message = {0};
            message.msg_name = &from;
            message.msg_namelen = fromLen;
            message.msg_iov = &vector;
            message.msg_iovlen = 1;
            message.msg_control = control.space;
            message.msg_controllen = sizeof(control.space);
            n = recvmsg(sock->udpFd, &message, MSG_DONTWAIT);
            if (n >= 0) {
                struct cmsghdr *header = CMSG_FIRSTHDR(&message);
                for (; header != NULL; header = CMSG_NXTHDR(&message, header)) {
                    if ((header->cmsg_level == IPPROTO_IP && header->cmsg_type == IP_PKTINFO)
                        || (header->cmsg_level == IPPROTO_IPV6
                            && header->cmsg_type == IPV6_PKTINFO)) {
                        info = CMSG_DATA(header);
                        infoLength = header->cmsg_len - CMSG_LEN(0);
                        break;
                    }
                }
            }
        } else if (sock->connected) {
            n = recv(sock->udpFd, buffer, MAX_DATAGRAM, MSG_DONTWAIT);
            memcpy(&from, &sock->source, sizeof(from));  /* the kernel filters the rest */
        } else {
            n = recvfrom(sock->udpFd, buffer, MAX_DATAGRAM, MSG_DONTWAIT,
                         (struct sockaddr *)&from, &fromLen);
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            if (errno == ECONNREFUSED)
                continue;  /* the ICMP error of an earlier send */
            int error = errno;
            status = handBack(result, HAND_READ_ERROR, sock, PyLong_FromLong(error));
            break;
        }
        Pair *target;
        int matches;
        if (shared) {
            target = lookup(pump, sock->udpFd, &from);
            matches = target != NULL;
        } else {
            target = sock;
            matches = sock->connected ? sock->sourceLen != 0 : sameSource(sock, &from, fromLen);
        }
        if (matches && sock->withInfo)
            matches = info != NULL && infoMatches(target, info, infoLength);
        if (matches && target->up && !target->handedNow) {
            if (current != target || outLength + 2 + n > OUT_SIZE) {
                if (current != NULL && flushOut(current, pump, &outLength, result) < 0) {
                    status = -1;
                    break;
                }
                current = target;
            }
            if (target->up) {
                pump->out[outLength] = (unsigned char)(n >> 8);
                pump->out[outLength + 1] = (unsigned char)(n & 0xff);
                memcpy(pump->out + outLength + 2, buffer, n);
                outLength += 2 + n;
                target->upDatagrams += 1;
                target->upBytes += n;
                if (!target->touched && touch(pump, target) < 0) {
                    status = -1;
                    break;
                }
                continue;
            }
        }
        /* Python's, and so is every later datagram of this pair. */
        if (target != NULL && !target->handedNow) {
            target->handedNow = 1;
            marked[markedCount++] = target;
        }
        if (handed == NULL && (handed = PyList_New(0)) == NULL) {
            status = -1;
            break;
        }
        PyObject *item = Py_BuildValue("(y#N)", buffer, (Py_ssize_t)n, fromSockaddr(&from));
        if (item == NULL || PyList_Append(handed, item) < 0) {
            Py_XDECREF(item);
            status = -1;
            break;
        }
        Py_DECREF(item);
    }
    for (int i = 0; i < markedCount; i++)
        marked[i]->handedNow = 0;
    if (current != NULL && flushOut(current, pump, &outLength, result) < 0)
        status = -1;
    if (handed != NULL) {
        /* After the read error, if any: Python logs it, then carries these. */
        if (status == 0)
            status = handBack(result, HAND_DATAGRAMS, sock, handed);
        else
            Py_DECREF(handed);
    }
    return status;
}

/* TCP to UDP */

static ssize_t
sendDatagrams(Pair *pair, struct iovec *vectors, int count, int segmentSize)
{
    union {
        struct cmsghdr align;
        unsigned char space[CMSG_SPACE(INFO_SIZE) + CMSG_SPACE(sizeof(uint16_t))];
    } control;
    struct msghdr message = {0};
    message.msg_iov = vectors;
    message.msg_iovlen = count;
    if (!pair->connected) {
        message.msg_name = &pair->dest;
        message.msg_namelen = pair->destLen;
    }
    size_t controlLength = 0;
    memset(&control, 0, sizeof(control));
    if (pair->infoOutLen) {
        struct cmsghdr *header = (struct cmsghdr *)control.space;
        header->cmsg_level = pair->infoLevel;
        header->cmsg_type = pair->infoType;
        header->cmsg_len = CMSG_LEN(pair->infoOutLen);
        memcpy(CMSG_DATA(header), pair->infoOut, pair->infoOutLen);
        controlLength += CMSG_SPACE(pair->infoOutLen);
    }
    if (segmentSize > 0) {
        struct cmsghdr *header = (struct cmsghdr *)(control.space + controlLength);
        uint16_t size = (uint16_t)segmentSize;
        header->cmsg_level = SOL_UDP;
        header->cmsg_type = UDP_SEGMENT;
        header->cmsg_len = CMSG_LEN(sizeof(size));
        memcpy(CMSG_DATA(header), &size, sizeof(size));
        controlLength += CMSG_SPACE(sizeof(size));
    }
    if (controlLength) {
        message.msg_control = control.space;
        message.msg_controllen = controlLength;
    }
    ssize_t n;
    do {
        n = sendmsg(pair->udpFd, &message, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n;
}

/* The frames of data[offset:end] (whole ones) as a list, for Python. */
static PyObject *
framesList(const unsigned char *data, Py_ssize_t offset, Py_ssize_t end)
{
    PyObject *frames = PyList_New(0);
    if (frames == NULL)
        return NULL;
    while (offset < end) {
        Py_ssize_t length = data[offset] << 8 | data[offset + 1];
        PyObject *frame = PyBytes_FromStringAndSize((const char *)data + offset + 2, length);
        if (frame == NULL || PyList_Append(frames, frame) < 0) {
            Py_XDECREF(frame);
            Py_DECREF(frames);
            return NULL;
        }
        Py_DECREF(frame);
        offset += 2 + length;
    }
    return frames;
}

static int
readTCP(Pair *pair, Pump *pump, PyObject *result)
{
    unsigned char *data = pump->tcpBuffer;
    ssize_t n;
    do {
        n = recv(pair->tcpFd, data, TCP_READ, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        pair->down = 0;
        return handBack(result, HAND_STREAM_LOST, pair, PyLong_FromLong(errno));
    }
    if (n == 0) {
        pair->down = 0;
        return handBack(result, HAND_STREAM, pair, PyBytes_FromStringAndSize(NULL, 0));
    }
    /* Whole frames up to wholeEnd; what follows is a partial one. */
    Py_ssize_t wholeEnd = 0;
    while (n - wholeEnd >= 2) {
        Py_ssize_t length = data[wholeEnd] << 8 | data[wholeEnd + 1];
        if (wholeEnd + 2 + length > n)
            break;
        wholeEnd += 2 + length;
    }
    Py_ssize_t offset = 0;
    struct iovec vectors[MAX_SEGMENTS];
    while (offset < wholeEnd) {
        Py_ssize_t size = data[offset] << 8 | data[offset + 1];
        Py_ssize_t stop = offset + 2 + size;
        int count = 1;
        vectors[0].iov_base = data + offset + 2;
        vectors[0].iov_len = size;
        Py_ssize_t total = size;
        if (pair->segments && size > 0 && size <= pair->maxSegment) {
            while (stop < wholeEnd && count < MAX_SEGMENTS) {
                Py_ssize_t next = data[stop] << 8 | data[stop + 1];
                if (next > size || next == 0 || total + next > MAX_PAYLOAD)
                    break;
                vectors[count].iov_base = data + stop + 2;
                vectors[count].iov_len = next;
                count++;
                total += next;
                stop += 2 + next;
                if (next < size)
                    break;  /* a shorter last segment ends the run */
            }
        }
        ssize_t sent = sendDatagrams(pair, vectors, count, count > 1 ? (int)size : 0);
        if (sent < 0) {
            /* Python sends this run again and counts each refusal by its
             * reason; the frames after it follow through Python too. */
            pair->down = 0;
            if (handBack(result, HAND_FRAMES, pair, framesList(data, offset, wholeEnd)) < 0)
                return -1;
            offset = wholeEnd;
            break;
        }
        pair->downDatagrams += count;
        pair->downBytes += total;
        offset = stop;
    }
    if (wholeEnd > 0) {
        pair->lastFrame = wallClock();
        if (touch(pump, pair) < 0)
            return -1;
    }
    if (wholeEnd < n) {
        /* The parser keeps the partial frame; it delivers what completes it. */
        pair->down = 0;
        return handBack(result, HAND_STREAM, pair,
                        PyBytes_FromStringAndSize((char *)data + wholeEnd, n - wholeEnd));
    }
    return 0;
}

/* The Pump type */

static int
Pump_init(Pump *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"epollFd", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i", keywords, &self->epfd))
        return -1;
    self->udpBuffer = PyMem_Malloc(MAX_DATAGRAM);
    self->tcpBuffer = PyMem_Malloc(TCP_READ);
    self->out = PyMem_Malloc(OUT_SIZE);
    self->touched = PyList_New(0);
    if (self->touched == NULL)
        return -1;
    if (!self->udpBuffer || !self->tcpBuffer || !self->out) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int
Pump_traverse(Pump *self, visitproc visit, void *arg)
{
    for (int fd = 0; fd < self->size; fd++)
        Py_VISIT(self->byFd[fd]);
    Py_VISIT(self->touched);
    for (size_t i = 0; i < self->bucketCount; i++)
        for (Pair *pair = self->buckets[i]; pair != NULL; pair = pair->next)
            Py_VISIT(pair);
    return 0;
}

static int
Pump_clear(Pump *self)
{
    for (int fd = 0; fd < self->size; fd++)
        Py_CLEAR(self->byFd[fd]);
    Py_CLEAR(self->touched);
    for (size_t i = 0; i < self->bucketCount; i++) {
        while (self->buckets[i] != NULL)
            unhash(self, self->buckets[i]);
    }
    return 0;
}

static void
Pump_dealloc(Pump *self)
{
    PyObject_GC_UnTrack(self);
    Pump_clear(self);
    PyMem_Free(self->buckets);
    PyMem_Free(self->byFd);
    PyMem_Free(self->roleOf);
    PyMem_Free(self->events);
    PyMem_Free(self->udpBuffer);
    PyMem_Free(self->tcpBuffer);
    PyMem_Free(self->out);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
reserve(Pump *self, int fd)
{
    if (fd < self->size)
        return 0;
    int size = self->size ? self->size : 64;
    while (size <= fd)
        size *= 2;
    Pair **byFd = PyMem_Realloc(self->byFd, size * sizeof(Pair *));
    if (byFd == NULL)
        return -1;
    self->byFd = byFd;
    unsigned char *roleOf = PyMem_Realloc(self->roleOf, size);
    if (roleOf == NULL)
        return -1;
    self->roleOf = roleOf;
    for (int i = self->size; i < size; i++) {
        self->byFd[i] = NULL;
        self->roleOf[i] = 0;
    }
    self->size = size;
    return 0;
}

static int
place(Pump *self, int fd, Pair *pair, unsigned char role)
{
    if (fd < 0)
        return 0;
    if (reserve(self, fd) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    Pair *stale = self->byFd[fd];
    if (stale != NULL && stale != pair) {
        /* Two open sockets never share a descriptor: the pair that had it
         * is stale (its socket closed, its owner not told yet).  It moves
         * nothing from now on. */
        stale->up = stale->down = 0;
    }
    Py_INCREF(pair);
    Py_XSETREF(self->byFd[fd], pair);
    self->roleOf[fd] = role;
    return 0;
}

static void
unplace(Pump *self, int fd, Pair *pair)
{
    if (fd >= 0 && fd < self->size && self->byFd[fd] == pair) {
        self->byFd[fd] = NULL;
        self->roleOf[fd] = 0;
        Py_DECREF(pair);
    }
}

static uint64_t
hashKey(int fd, const struct sockaddr_storage *address)
{
    uint64_t hash = 1469598103934665603ULL ^ (uint64_t)(unsigned)fd;
    const unsigned char *bytes;
    size_t length;
    uint16_t port;
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *four = (const void *)address;
        bytes = (const unsigned char *)&four->sin_addr;
        length = 4;
        port = four->sin_port;
    } else {
        const struct sockaddr_in6 *six = (const void *)address;
        bytes = (const unsigned char *)&six->sin6_addr;
        length = 16;
        port = six->sin6_port;
    }
    hash = (hash ^ port) * 1099511628211ULL;
    for (size_t i = 0; i < length; i++)
        hash = (hash ^ bytes[i]) * 1099511628211ULL;
    return hash;
}

static Pair *
lookup(Pump *pump, int fd, const struct sockaddr_storage *from)
{
    if (pump->bucketCount == 0
        || (from->ss_family != AF_INET && from->ss_family != AF_INET6))
        return NULL;
    Pair *pair = pump->buckets[hashKey(fd, from) & (pump->bucketCount - 1)];
    for (; pair != NULL; pair = pair->next)
        if (pair->udpFd == fd && sameSource(pair, from, 0))
            return pair;
    return NULL;
}

static void
unhash(Pump *pump, Pair *pair)
{
    if (pump->bucketCount == 0)
        return;
    Pair **link = &pump->buckets[hashKey(pair->udpFd, &pair->source) & (pump->bucketCount - 1)];
    for (; *link != NULL; link = &(*link)->next) {
        if (*link == pair) {
            *link = pair->next;
            pair->next = NULL;
            pump->pairCount--;
            Py_DECREF(pair);
            return;
        }
    }
}

static int
rehash(Pump *pump, size_t count)
{
    Pair **buckets = PyMem_Calloc(count, sizeof(Pair *));
    if (buckets == NULL)
        return -1;
    for (size_t i = 0; i < pump->bucketCount; i++) {
        Pair *pair = pump->buckets[i];
        while (pair != NULL) {
            Pair *next = pair->next;
            size_t index = hashKey(pair->udpFd, &pair->source) & (count - 1);
            pair->next = buckets[index];
            buckets[index] = pair;
            pair = next;
        }
    }
    PyMem_Free(pump->buckets);
    pump->buckets = buckets;
    pump->bucketCount = count;
    return 0;
}

static int
hashIn(Pump *pump, Pair *pair)
{
    Pair *stale = lookup(pump, pair->udpFd, &pair->source);
    if (stale == pair)
        return 0;
    if (stale != NULL) {
        /* One session per source: the one that had it is over. */
        stale->up = stale->down = 0;
        unhash(pump, stale);
    }
    if (pump->pairCount >= pump->bucketCount
        && rehash(pump, pump->bucketCount ? pump->bucketCount * 2 : 64) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    size_t index = hashKey(pair->udpFd, &pair->source) & (pump->bucketCount - 1);
    Py_INCREF(pair);
    pair->next = pump->buckets[index];
    pump->buckets[index] = pair;
    pump->pairCount++;
    return 0;
}

static PyObject *
Pump_add(Pump *self, PyObject *object)
{
    if (!PyObject_TypeCheck(object, &PairType)) {
        PyErr_SetString(PyExc_TypeError, "add() takes a Pair");
        return NULL;
    }
    Pair *pair = (Pair *)object;
    if (pair->shared) {
        if (pair->sourceLen == 0) {
            PyErr_SetString(PyExc_ValueError, "a pair of a shared socket needs its source");
            return NULL;
        }
        if (place(self, pair->tcpFd, pair, 2) < 0)
            return NULL;
        if (hashIn(self, pair) < 0) {
            unplace(self, pair->tcpFd, pair);
            return NULL;
        }
    } else {
        if (place(self, pair->udpFd, pair, 1) < 0)
            return NULL;
        if (place(self, pair->tcpFd, pair, 2) < 0) {
            unplace(self, pair->udpFd, pair);
            return NULL;
        }
    }
    pair->registered = 1;
    Py_RETURN_NONE;
}

static PyObject *
Pump_remove(Pump *self, PyObject *object)
{
    if (!PyObject_TypeCheck(object, &PairType)) {
        PyErr_SetString(PyExc_TypeError, "remove() takes a Pair");
        return NULL;
    }
    Pair *pair = (Pair *)object;
    pair->up = pair->down = 0;
    if (pair->shared && pair->registered && pair->sourceLen)
        unhash(self, pair);
    unplace(self, pair->udpFd, pair);
    unplace(self, pair->tcpFd, pair);
    pair->registered = 0;
    Py_RETURN_NONE;
}

/* addShared(pair): a shared UDP socket (pair of no TCP socket): each of its
 * datagrams goes to the pair of its source, or back to this pair's owner. */
static PyObject *
Pump_addShared(Pump *self, PyObject *object)
{
    if (!PyObject_TypeCheck(object, &PairType)) {
        PyErr_SetString(PyExc_TypeError, "addShared() takes a Pair");
        return NULL;
    }
    Pair *pair = (Pair *)object;
    if (place(self, pair->udpFd, pair, 3) < 0)
        return NULL;
    pair->registered = 1;
    Py_RETURN_NONE;
}

/*
 * wait(timeout, maxEvents) -> list: epoll_wait on the reactor's epoll
 * descriptor, for at most timeout seconds (negative: no limit).  Events of
 * armed pairs are handled here, and the wait goes on while nothing else
 * happened; the list holds the (fd, events) left for Python and what was
 * handed back, as soon as there is any, or is empty once the time is up or
 * a signal arrived.
 */
static PyObject *
Pump_wait(Pump *self, PyObject *args)
{
    double timeout;
    int maxEvents;
    if (!PyArg_ParseTuple(args, "di", &timeout, &maxEvents))
        return NULL;
    if (maxEvents < 1)
        maxEvents = 1;
    if (maxEvents > self->maxEvents) {
        struct epoll_event *events = PyMem_Realloc(self->events,
                                                   maxEvents * sizeof(*events));
        if (events == NULL)
            return PyErr_NoMemory();
        self->events = events;
        self->maxEvents = maxEvents;
    }
    PyObject *result = PyList_New(0);
    if (result == NULL)
        return NULL;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int milliseconds;
        if (timeout < 0)
            milliseconds = -1;
        else {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            double left = timeout - ((now.tv_sec - start.tv_sec)
                                     + (now.tv_nsec - start.tv_nsec) / 1e9);
            milliseconds = left <= 0 ? 0 : (int)ceil(left * 1000);
        }
        int count;
        Py_BEGIN_ALLOW_THREADS
        count = epoll_wait(self->epfd, self->events, maxEvents, milliseconds);
        Py_END_ALLOW_THREADS
        if (count < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) {
                    Py_DECREF(result);
                    return NULL;
                }
                return result;
            }
            Py_DECREF(result);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        for (int i = 0; i < count; i++) {
            int fd = self->events[i].data.fd;
            uint32_t events = self->events[i].events;
            Pair *pair = fd >= 0 && fd < self->size ? self->byFd[fd] : NULL;
            int status = 1;  /* 1: not handled here */
            if (pair != NULL && events == EPOLLIN) {
                Py_INCREF(pair);
                unsigned char role = self->roleOf[fd];
                if (role == 1 && pair->up)
                    status = readUDP(pair, self, result, 0);
                else if (role == 3)
                    status = readUDP(pair, self, result, 1);
                else if (role == 2 && pair->down)
                    status = readTCP(pair, self, result);
                Py_DECREF(pair);
            }
            if (status < 0) {
                Py_DECREF(result);
                return NULL;
            }
            if (status == 1) {
                PyObject *item = Py_BuildValue("(iI)", fd, events);
                if (item == NULL || PyList_Append(result, item) < 0) {
                    Py_XDECREF(item);
                    Py_DECREF(result);
                    return NULL;
                }
                Py_DECREF(item);
            }
        }
        if (PyList_GET_SIZE(result) > 0 || milliseconds == 0)
            return result;
    }
}

static PyObject *
Pump_pairOf(Pump *self, PyObject *arg)
{
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd >= 0 && fd < self->size && self->byFd[fd] != NULL) {
        Py_INCREF(self->byFd[fd]);
        return (PyObject *)self->byFd[fd];
    }
    Py_RETURN_NONE;
}

static PyObject *
Pump_takeTouched(Pump *self, PyObject *unused)
{
    if (PyList_GET_SIZE(self->touched) == 0)
        return PyList_New(0);
    PyObject *touched = self->touched;
    self->touched = PyList_New(0);
    if (self->touched == NULL) {
        self->touched = touched;
        return NULL;
    }
    return touched;
}

static PyMethodDef Pump_methods[] = {
    {"pairOf", (PyCFunction)Pump_pairOf, METH_O, "The Pair a descriptor belongs to, or None."},
    {"takeTouched", (PyCFunction)Pump_takeTouched, METH_NOARGS,
     "The pairs that counted something since the last call (each take() them)."},
    {"add", (PyCFunction)Pump_add, METH_O, "Let the pump move the bytes of this Pair."},
    {"addShared", (PyCFunction)Pump_addShared, METH_O,
     "A shared UDP socket, as a Pair with no TCP socket: its datagrams go to the pair "
     "of their source."},
    {"remove", (PyCFunction)Pump_remove, METH_O, "Forget this Pair (disarmed)."},
    {"wait", (PyCFunction)Pump_wait, METH_VARARGS,
     "wait(timeout, maxEvents) -> list of (fd, events) and (kind, pair, payload)."},
    {NULL}
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "udptunnel._pump.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The reactor's epoll wait, and the bytes of armed pairs moved in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_traverse = (traverseproc)Pump_traverse,
    .tp_clear = (inquiry)Pump_clear,
    .tp_methods = Pump_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "udptunnel._pump",
    .m_doc = "The compiled fast path of the event loop (optional).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__pump(void)
{
    if (PyType_Ready(&PairType) < 0 || PyType_Ready(&PumpType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PairType);
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(m, "Pair", (PyObject *)&PairType) < 0
        || PyModule_AddObject(m, "Pump", (PyObject *)&PumpType) < 0
        || PyModule_AddIntConstant(m, "DATAGRAMS", HAND_DATAGRAMS) < 0
        || PyModule_AddIntConstant(m, "STREAM", HAND_STREAM) < 0
        || PyModule_AddIntConstant(m, "STREAM_LOST", HAND_STREAM_LOST) < 0
        || PyModule_AddIntConstant(m, "TCP_REST", HAND_TCP_REST) < 0
        || PyModule_AddIntConstant(m, "FRAMES", HAND_FRAMES) < 0
        || PyModule_AddIntConstant(m, "READ_ERROR", HAND_READ_ERROR) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
