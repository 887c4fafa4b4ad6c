/*
 * The compiled pump's parts (see pump.c): what its four files share.
 */

#ifndef UDPTUNNEL_PUMP_H
#define UDPTUNNEL_PUMP_H

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
    Pair **byFd;        /* fd -> Pair (a reference each) */
    unsigned char *roleOf; /* 1: the Pair's UDP socket, 2: its TCP socket,
                            * 3: a shared UDP socket (the Pair stands for it) */
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

extern PyTypeObject PairType;

/* addresses.c */
int toSockaddr(PyObject *address, struct sockaddr_storage *out, socklen_t *length);
int sameSource(const Pair *pair, const struct sockaddr_storage *from, socklen_t fromLen);
PyObject *fromSockaddr(const struct sockaddr_storage *from);

/* carry.c */
int readUDP(Pair *sock, Pump *pump, PyObject *result, int shared);
int readTCP(Pair *pair, Pump *pump, PyObject *result);

/* pump.c */
Pair *lookup(Pump *pump, int fd, const struct sockaddr_storage *from);

#endif
