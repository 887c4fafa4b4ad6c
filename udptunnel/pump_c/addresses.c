/*
 * Addresses: the (host, port) of Python and the sockaddr of the kernel.
 */

#include "pump.h"


int
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

int
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
PyObject *
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
