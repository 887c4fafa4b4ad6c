"""
The tunnel's core: the services that own its state and make every decision
(which link carries the frames, where a datagram goes, what is dropped and
why), over sessions; and their counters.  It speaks to sockets and
connections only through L{udptunnel.interfaces}.
"""
