/*
 * The Pair type: a UDP socket and a TCP socket whose bytes the pump may
 * move, the ways Python armed, and the counters it takes back.
 */

#include "pump.h"


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
    if (self->shared && self->registered) {
        /* The pump finds it by its source: that stays while it is known. */
        PyErr_SetString(PyExc_ValueError, "the source of a registered shared pair is fixed");
        return NULL;
    }
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
    if ((Py_ssize_t)which == (Py_ssize_t)offsetof(Pair, shared) && self->registered) {
        PyErr_SetString(PyExc_ValueError, "shared is fixed while the pump knows the pair");
        return -1;
    }
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

PyTypeObject PairType = {
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
