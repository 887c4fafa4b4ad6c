"""
What the tests share, and nothing else: no test lives here.

  - L{fakes}: stand-ins for a link, a UDP socket and the core, for tests
    that need no reactor;
  - L{net}: loopback sockets, one free-port helper, polling waits, one
    datagram recorder and the frame format written out by hand;
  - L{streams}: checksummed datagram streams and echo peers driven by
    threads, for tests against processes;
  - L{processes}: the installed C{twistd} run as a user would, and the test
    cases that start, watch and stop it;
  - L{system}: what C{/proc} says about a process, network namespaces and
    the kernel features some tests need;
  - L{certs}: a throwaway certificate authority;
  - L{pump}: the compiled pump as the install built it.
"""

import os

#: The source tree's top: where C{udptunnel/}, C{contrib/} and
#: C{benchmarks/} are.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
