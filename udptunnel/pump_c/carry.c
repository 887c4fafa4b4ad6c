/*
 * Carrying: what the pump does with a read of an armed pair's socket, and
 * what it hands back to Python.
 */

#include "pump.h"

static double
wallClock(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (double)now.tv_sec + now.tv_nsec / 1e9;
}


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
int
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
            /* The kernel filters the rest; a recv does not say the source. */
            memcpy(&from, &sock->source, sizeof(from));
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

int
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
