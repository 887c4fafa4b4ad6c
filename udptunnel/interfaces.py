"""
The two narrow interfaces that join the thin protocols to the relay.

Protocols call L{IRelay}; the relay calls L{ILink}.  Keeping both small is
what lets each side be tested with a fake of the other.
"""

from zope.interface import Attribute, Interface


class IRelay(Interface):
    """
    The one object that decides where each datagram goes.
    """

    def udpStarted(transport):
        """
        The UDP socket is bound; C{transport} is its L{IUDPTransport}.
        """

    def udpStopped():
        """
        The UDP socket is closed.
        """

    def datagramReceived(data, addr):
        """
        A datagram C{data} came in on the UDP socket from C{addr}.
        """

    def linkConnected(link):
        """
        A TCP connection (an L{ILink}) is established; return whether it may
        go on (and, after a TLS handshake if any, become the link).
        """

    def linkMade(link):
        """
        A TCP connection (an L{ILink}) is ready to carry frames: it becomes
        the link.
        """

    def frameReceived(link, data):
        """
        A complete frame C{data} arrived on C{link}.
        """

    def linkLost(link, reason):
        """
        C{link} is closed, for C{reason} (a L{Failure}).
        """


class ILink(Interface):
    """
    One TCP connection carrying frames.
    """

    peer = Attribute("The remote end, printable.")
    peerHost = Attribute("The remote end's IP literal, or None (Unix socket).")
    established = Attribute(
        "Whether the connection got as far as becoming the link (after its TLS "
        "handshake, if any)."
    )

    def sendFrame(data):
        """
        Send C{data} (0..65535 bytes) as one frame.
        """

    def close():
        """
        Close the connection once buffered data is sent.
        """

    def abort():
        """
        Close the connection at once, without waiting for buffered data.
        """

    def attachProducer(producer):
        """
        Register C{producer} (an L{IPushProducer}) on the connection so a
        full send buffer pauses it and a drained one resumes it.
        """
