"""
Why a connection ended, or a connection attempt failed, in the tunnel's
words.

Twisted's messages say what happened to a socket ("Connection was closed
cleanly", "User timeout caused connection failure"), OpenSSL's what failed
in its state machine (C{[('SSL routines', '', 'tlsv1 alert unknown ca')]}),
service_identity's which object did not match; an operator needs who did
it and what to change.  Everything returned here is escaped for a log line:
a peer's words may be in it.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost, TimeoutError
from twisted.python.failure import Failure

from udptunnel.link.preamble import HandshakeMismatch
from udptunnel.link.proxyheader import ProxyHeaderError
from udptunnel.show import printable

#: L{describeLoss}'s words for a connection its peer closed cleanly, and
#: for one we closed, when we do not say why.
CLOSED_BY_PEER = "closed by the peer"
CLOSED_HERE = "closed here"

#: OpenSSL's reasons that have a cause an operator can act on.
_TLS_REASONS = {
    "certificate verify failed":
        "the peer's certificate is not signed by --tls-ca (or has expired)",
    "tlsv1 alert unknown ca":
        "the peer does not accept our --tls-cert: its CA does not trust our certificate's",
    "sslv3 alert bad certificate": "the peer does not accept our --tls-cert",
    "sslv3 alert certificate expired": "the peer finds our --tls-cert expired",
    "tlsv13 alert certificate required": "the peer wants a certificate we did not send",
    "wrong version number": "the peer does not speak TLS (is TLS on at both ends?)",
    "http request": "the peer speaks plain HTTP, not TLS",
}


def describeLoss(reason: Failure, closedHere: str | None = None) -> str:
    """
    Why a connection ended: Twisted's "Connection was closed cleanly" or
    "in a non-clean fashion" do not say who closed it.

    @param closedHere: why we closed it ourselves, if we did.
    """
    if reason.check(ConnectionDone):
        return closedHere or CLOSED_BY_PEER
    if reason.check(ConnectionLost):
        return closedHere or "connection lost (reset or aborted)"
    return describeTLS(reason) or printable(reason.getErrorMessage())


def describeFailure(reason: Failure, timeout: float | None = None) -> str:
    """
    Why a connection attempt failed.

    @param timeout: how long the endpoint lets an attempt take, in
        seconds, to say so when it timed out (C{None}: unknown).
    """
    if reason.check(TimeoutError):
        # Twisted's "User timeout caused connection failure" reads as if
        # --user-timeout had fired.
        return "connect timed out" + (f" after {timeout:g} s" if timeout is not None else "")
    return describeTLS(reason) or printable(reason.getErrorMessage())


def describeTLS(reason: Failure) -> str | None:
    """
    A TLS failure in words with a hint, or C{None} for any other failure.
    Recognised by the exception's module, so that nothing of pyOpenSSL is
    imported where TLS is not in use.
    """
    error = reason.value
    module = type(error).__module__
    if module.startswith("service_identity"):
        names = [_mismatched(mismatch) for mismatch in getattr(error, "errors", [])]
        return (f"TLS: the server's certificate is not for {' or '.join(names) or 'its name'} "
                "(give --tls-name with a name the certificate carries)")
    if not module.startswith("OpenSSL"):
        return None
    reasons = [str(entry[-1]) for entry in _tlsErrors(error)]
    for known, words in _TLS_REASONS.items():
        if known in reasons:
            return printable(f"TLS: {words} ({known})")
    return printable("TLS failed: " + ("; ".join(reasons) or str(error)))


def _tlsErrors(error: BaseException) -> list[tuple[object, ...]]:
    """
    OpenSSL's error queue as pyOpenSSL gives it: a list of
    C{(library, function, reason)} tuples as the exception's argument.
    """
    entries = error.args[0] if error.args and isinstance(error.args[0], list) else []
    return [entry for entry in entries if isinstance(entry, tuple) and entry]


def _mismatched(mismatch: object) -> str:
    """
    The name a certificate did not carry, from service_identity's
    C{DNSMismatch} or C{IPAddressMismatch} (C{mismatched_id}).
    """
    expected = getattr(mismatch, "mismatched_id", None)
    name = getattr(expected, "hostname", None) or getattr(expected, "ip", None) or expected
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return printable(str(name))


def refusedBy(reason: Failure) -> str | None:
    """
    The pending-closed reason of a connection that our protocol closed for
    what it sent first (its C{--handshake} preamble, its PROXY header), or
    C{None} for any other loss.
    """
    if reason.check(HandshakeMismatch):
        return "handshake"
    if reason.check(ProxyHeaderError):
        return "proxy-header"
    return None
