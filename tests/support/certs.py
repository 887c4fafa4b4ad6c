"""
A private CA and certificates signed by it, made fresh for the TLS tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(
        now + datetime.timedelta(days=30)
    )


class Authority:
    """
    A CA that issues certificates into C{directory}.
    """

    def __init__(self, directory: str, name: str = "test-ca") -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        )
        self.certificate = _validity(builder).sign(self.key, hashes.SHA256())
        self.path = self._write(
            f"{name}.pem", self.certificate.public_bytes(serialization.Encoding.PEM)
        )

    def _write(self, filename: str, data: bytes) -> str:
        path = os.path.join(self.directory, filename)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def issue(self, common: str) -> tuple[str, str]:
        """
        A certificate for C{common}, valid for C{localhost}, 127.0.0.1 and ::1.

        @return: the paths of the certificate and of its key
        """
        key = ec.generate_private_key(ec.SECP256R1())
        names = x509.SubjectAlternativeName(
            [x509.DNSName("localhost")]
            + [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(names, critical=False)
        )
        certificate = _validity(builder).sign(self.key, hashes.SHA256())
        keyPEM = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        stem = f"{self.name}-{common}"
        return (
            self._write(stem + ".crt", certificate.public_bytes(serialization.Encoding.PEM)),
            self._write(stem + ".key", keyPEM),
        )
