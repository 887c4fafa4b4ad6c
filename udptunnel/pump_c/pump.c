/*
 * udptunnel._pump: the compiled fast path of the event loop (optional).
 * This file: the Pump type (the wait, the descriptors and sources it knows)
 * and the module; addresses.c, pair.c and carry.c hold the rest.
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
 *   - A Pair joins a UDP socket and a TCP socket (or stands for a UDP
 *     socket that pairs share: each datagram goes to the pair of its
 *     source).  Python arms each way (Pair.up: UDP to TCP, Pair.down: TCP
 *     to UDP) before a wait, whenever its state may have changed, and only
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


#include "pump.h"

static void unhash(Pump *pump, Pair *pair);

/* The Pump type */

static int
Pump_init(Pump *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"epollFd", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i", keywords, &self->epfd))
        return -1;
    if (self->touched != NULL) {
        PyErr_SetString(PyExc_TypeError, "a Pump is made once");
        return -1;
    }
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

Pair *
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

/* The Pair a method was given, or NULL with a TypeError naming the method. */
static Pair *
pairArgument(PyObject *object, const char *method)
{
    if (!PyObject_TypeCheck(object, &PairType)) {
        PyErr_Format(PyExc_TypeError, "%s() takes a Pair", method);
        return NULL;
    }
    return (Pair *)object;
}

static PyObject *
Pump_add(Pump *self, PyObject *object)
{
    Pair *pair = pairArgument(object, "add");
    if (pair == NULL)
        return NULL;
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
    Pair *pair = pairArgument(object, "remove");
    if (pair == NULL)
        return NULL;
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
    Pair *pair = pairArgument(object, "addShared");
    if (pair == NULL)
        return NULL;
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
