"""
Why a connection ended or an attempt failed, in the tunnel's words
(L{udptunnel.link.why}): who closed it, and for TLS what to change.
"""

from __future__ import annotations

from OpenSSL import SSL
from service_identity.exceptions import (
    DNSMismatch,
    IPAddressMismatch,
    VerificationError,
)
from service_identity.hazmat import DNS_ID, IPAddress_ID
from twisted.internet.error import ConnectionDone, ConnectionLost, TimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from udptunnel.link.why import describeFailure, describeLoss


def tlsError(reason: str) -> Failure:
    return Failure(SSL.Error([("SSL routines", "", reason)]))


class LossTests(SynchronousTestCase):
    def test_whoClosed(self) -> None:
        """
        A connection closed cleanly was closed by the peer, one lost was reset or
        aborted; when we closed it, the reason we give is said instead.
        """
        self.assertEqual(describeLoss(Failure(ConnectionDone())), "closed by the peer")
        self.assertEqual(describeLoss(Failure(ConnectionLost())),
                         "connection lost (reset or aborted)")
        self.assertEqual(describeLoss(Failure(ConnectionDone()), "closed here"), "closed here")
        self.assertEqual(describeLoss(Failure(ConnectionLost()), "not the link after 10 s"),
                         "not the link after 10 s")

    def test_peersWordsEscaped(self) -> None:
        """
        An error whose text a peer chose reaches the log escaped.
        """
        why = describeLoss(Failure(ValueError("bad\x1b[2J\nFORGED")))
        self.assertEqual(why, "bad\\x1b[2J\\nFORGED")


class TLSTests(SynchronousTestCase):
    """
    The TLS failures an operator meets, each with what to change.
    """

    def test_nameMismatch(self) -> None:
        """
        A server certificate without the name the client checks is one line that
        names each missing name (DNS or IP) and says to give C{--tls-name}; no
        exception class is named.
        """
        error = VerificationError(errors=[
            DNSMismatch(mismatched_id=DNS_ID("other.example")),
            IPAddressMismatch(mismatched_id=IPAddress_ID("127.0.0.1"))])
        why = describeLoss(Failure(error))
        self.assertEqual(why, "TLS: the server's certificate is not for other.example or "
                              "127.0.0.1 (give --tls-name with a name the certificate carries)")
        self.assertNotIn("VerificationError", why)

    def test_knownReasons(self) -> None:
        """
        Each OpenSSL reason an operator can act on is said in words after
        C{TLS: }, with what to change, and the reason itself in parentheses.
        """
        for reason, words in (
                ("certificate verify failed", "not signed by --tls-ca"),
                ("tlsv1 alert unknown ca", "does not accept our --tls-cert"),
                ("tlsv13 alert certificate required", "wants a certificate"),
                ("wrong version number", "does not speak TLS")):
            why = describeLoss(tlsError(reason))
            self.assertTrue(why.startswith("TLS: "), why)
            self.assertIn(words, why)
            self.assertIn(f"({reason})", why)

    def test_otherReasons(self) -> None:
        """
        An OpenSSL reason without words of ours is given as it is after
        C{TLS failed: }, escaped.
        """
        self.assertEqual(describeLoss(tlsError("some new \x1b reason")),
                         "TLS failed: some new \\x1b reason")

    def test_attemptFailures(self) -> None:
        """
        A connect attempt that timed out says so, with the endpoint's timeout; a
        TLS failure of an attempt is in the same words as one of a connection.
        """
        self.assertEqual(describeFailure(Failure(TimeoutError()), 30), "connect timed out after 30 s")
        self.assertIn("not signed by --tls-ca",
                      describeFailure(tlsError("certificate verify failed")))
