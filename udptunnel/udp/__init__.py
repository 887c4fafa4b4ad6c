"""
The UDP side: the sockets the tunnel reads and writes datagrams on, their
bounded batched read loop, replies from the right address, segmented
sends, socket options and the kernel's drop counter.
"""
