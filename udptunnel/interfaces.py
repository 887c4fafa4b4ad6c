"""
The narrow interfaces that join the thin protocols to the relay.

The UDP socket's protocol calls an L{IDatagramRelay}, the TCP protocol an
L{ILinkRelay}; the relay calls L{ILink} and L{IDatagramSocket}.  Keeping
them small is what lets each side be tested with a fake of the other.  The
single-link relay is both (L{IRelay}); a server with sessions is only an
L{ILinkRelay} (its sockets belong to its sessions), a client with sessions
only an L{IDatagramRelay} (its connections report to their own session).
"""

from zope.interface import Attribute, Interface


class IDatagramRelay(Interface):
    """
    What the UDP socket's protocol reports to.
    """

    def udpStarted(transport):
        """
        The UDP socket is bound; C{transport} is its L{IDatagramSocket}.
        """

    def udpStopped():
        """
        The UDP socket is closed.
        """

    def datagramsReceived(datagrams):
        """
        Datagrams came in on the UDP socket: a list of C{(data, addr)}, all
        that one read of the socket found.
        """

    def internalError(where, failure):
        """
        The protocol caught an exception of the tunnel's own code while
        handing it traffic (C{where}: C{"datagrams"} or C{"frames"}): count
        and log it; the caller goes on with the next read.
        """


class ILinkRelay(Interface):
    """
    What the TCP protocol reports to.
    """

    def linkConnected(link):
        """
        A TCP connection (an L{ILink}) is established; return whether it is
        admitted.  An admitted connection waits, with a deadline, to become
        the link.  Its C{remoteHost} is C{None} when nobody can judge it yet
        (behind a balancer, until L{linkIdentified}) or ever (a Unix
        socket's peer).
        """

    def linkIdentified(link):
        """
        A connection waiting for its PROXY protocol header got it:
        C{link.remoteHost} and C{link.remote} are now the client's it names
        (the balancer's for a header that names none).  Return whether
        C{--allow} admits that client; a refused one is forgotten, and the
        protocol closes it without reporting its loss.
        """

    def linkMade(link):
        """
        C{link} is ready to carry frames (its TLS handshake, if any, is
        done): it becomes the link now, or waits to take over (its first
        frame, or a silent link).
        """

    def framesReceived(link, frames):
        """
        Complete frames arrived on C{link}: a list of C{bytes}, all that one
        read of the connection completed.  From a waiting connection, they
        make it the link.
        """

    def linkLost(link, reason):
        """
        C{link} is closed, for C{reason} (a L{Failure}).
        """

    def internalError(where, failure):
        """
        As L{IDatagramRelay.internalError}.
        """


class IRelay(IDatagramRelay, ILinkRelay):
    """
    The one object that decides where each datagram goes, on both sides.
    """


class ILink(Interface):
    """
    One TCP connection carrying frames.
    """

    remote = Attribute("The TCP peer (the other end of the connection), printable.")
    remoteHost = Attribute("The TCP peer's IP literal, or None (Unix socket).")
    laneChanged = Attribute("Called (when not None) after the link wrote frames or started "
                            "closing: the compiled pump's lane of it looks again at whether "
                            "it may write to it.")

    def sendFrames(datagrams):
        """
        Send each of C{datagrams} (0..65535 bytes) as a frame, all in one
        write.
        """

    def close():
        """
        Close the connection once buffered data is sent.
        """

    def abort():
        """
        Close the connection at once, without waiting for buffered data.
        """

    def drain():
        """
        Close the sending half once buffered data is sent (a FIN), and go on
        reading until the peer closes its own: what it had sent arrives.
        Where half a connection cannot be closed (TLS), as L{close}.
        """

    def framesOnly():
        """
        Whether every byte from here on is frames, with nothing held or
        pending before them (established, not paused, no partial frame):
        then the bytes may be split and sent somewhere other than through
        the protocol (the compiled pump).
        """

    def plainTransport():
        """
        The TCP transport whose socket frames may be written to directly
        (no TLS layer, writes not forced through Twisted), or C{None}.
        """

    def deliverFrames(frames):
        """
        Give the relay C{frames} as if this link had read them.
        """

    def attachProducer(producer):
        """
        Register C{producer} (an L{IPushProducer}) on the connection so a
        full send buffer pauses it and a drained one resumes it.
        """


class IDatagramSocket(Interface):
    """
    What the relay needs of the UDP socket.
    """

    connected = Attribute("Whether the socket is connected to one peer (the kernel drops "
                          "every other source).")
    localAddresses = Attribute("On a wildcard-bound socket, what replies to each source go "
                               "from (L{udptunnel.udp.replies.LocalAddresses}); else None.")
    segments = Attribute("Its L{udptunnel.udp.gso.SegmentSender}: whether runs of datagrams "
                         "leave in one send, and up to which size.")

    def deliver(datagrams):
        """
        Hand the protocol C{datagrams}, a list of C{(data, (host, port))},
        as one read of this socket.
        """

    def readFailed(error):
        """
        A read of this socket failed with the L{OSError} C{error}.
        """

    def fileno():
        """
        The socket's descriptor, or -1 once it is closed.
        """

    def sendTo(data, addr):
        """
        Send one datagram to C{addr}, an C{(IP literal, port)} pair, at once;
        raise L{OSError} (C{EMSGSIZE}, C{EAGAIN}, ...) if the kernel refuses.
        """

    def stopReading():
        """
        Stop reading datagrams (flow control).
        """

    def startReading():
        """
        Read datagrams again.
        """

    def getHost():
        """
        The bound address.
        """

    def getHandle():
        """
        The kernel socket (to tune its options).
        """

    def sendMany(datagrams, addr, failed):
        """
        Send each of C{datagrams} to C{addr} at once, in as few calls as the
        kernel allows (runs of one size in one segmented send, where it can
        segment); tell C{failed(error, size, addr)} of each one the kernel
        refused.  Return how many were sent, and their bytes.
        """

    def kernelDrops():
        """
        The kernel's count of the datagrams it dropped on this socket (its
        receive buffer was full), or C{None} where the platform does not
        say.
        """

    def stopListening():
        """
        Close the socket (a server session's, when the session ends).
        """
