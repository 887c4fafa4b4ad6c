"""
Mutual TLS for the tunnel's link: each end presents a certificate and
accepts only a peer whose certificate a given CA signed.

Imported only when TLS is asked for: pyOpenSSL costs a dozen megabytes of
memory, and it is an optional extra (C{pip install '.[tls]'} from a checkout).
"""

from __future__ import annotations

from typing import NamedTuple

from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.protocols.tls import TLSMemoryBIOFactory


class Credentials(NamedTuple):
    """
    This end's certificate and key, and the CA that signs its peers'.
    """

    own: PrivateCertificate
    authority: Certificate


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path!r}: {e.strerror}") from None


def loadCredentials(certPath: str, keyPath: str, caPath: str) -> Credentials:
    """
    Load PEM files, raising L{ValueError} with a message fit for a user when
    one is missing or not what it should be.
    """
    cert, key = _read(certPath, "certificate"), _read(keyPath, "key")
    authority = _read(caPath, "CA certificate")
    try:
        own = PrivateCertificate.loadPEM(cert + b"\n" + key)
    except Exception as e:  # noqa: BLE001 (OpenSSL raises many kinds)
        raise ValueError(
            f"{certPath!r} and {keyPath!r} are not a PEM certificate and its key: {e}"
        ) from None
    try:
        return Credentials(own, Certificate.loadPEM(authority))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{caPath!r} is not a PEM certificate: {e}") from None


def serverFactory(credentials: Credentials, factory: IProtocolFactory) -> IProtocolFactory:
    """
    Wrap C{factory} to present our certificate and to require one from the
    client, signed by the CA.
    """
    wrapped = TLSMemoryBIOFactory(credentials.own.options(credentials.authority), False, factory)
    wrapped.noisy = False
    return wrapped


def clientEndpoint(
    credentials: Credentials, serverName: str, endpoint: IStreamClientEndpoint
) -> IStreamClientEndpoint:
    """
    Wrap C{endpoint} to present our certificate and to accept only a server
    whose certificate the CA signed for C{serverName} (a host name or an IP
    address).
    """
    creator = optionsForClientTLS(
        serverName, trustRoot=credentials.authority, clientCertificate=credentials.own
    )
    return wrapClientTLS(creator, endpoint)
