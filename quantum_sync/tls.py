"""Client-side TLS: verify the server's certificate and host name, or refuse (contract §6).

The sync client talks https (treq) and wss (Autobahn) to the server. Both go through the
helpers here, so the rules are the same for both:

- the trust roots are the system's (``platformTrust``) or, with ``--ca-cert PATH``, exactly
  the certificates in that PEM file (a home network's own CA, see docs/security.md);
- the chain must verify and the leaf must match the host name (or IP address) through
  ``service_identity``; anything else aborts the handshake;
- each refusal is logged once per connection attempt with the host and the reason
  (``TLS: certificate of HOST refused: REASON``), so a user sees why nothing syncs.

API:

- :func:`load_trust_root` (``--ca-cert`` → trust root; raises :class:`TLSConfigError`)
- :func:`client_tls_options` (one host → ``IOpenSSLClientConnectionCreator``)
- :func:`https_policy` (→ ``IPolicyForHTTPS`` for ``treq.HTTPClient(Agent(reactor, contextFactory=...))``)
- :func:`client_endpoint` (host, port, tls → ``IStreamClientEndpoint`` for Autobahn/ClientService)
- :func:`tls_failure_reason` (a Failure from a request or connection → a one-line reason or None)
"""

import re

from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

log = Logger()

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)

#: OpenSSL X509_V_ERR_* codes a user is likely to meet, in words.
_VERIFY_ERRORS = {
    2: "the issuer certificate is unknown",
    9: "the certificate is not yet valid",
    10: "the certificate has expired",
    18: "the certificate is self-signed and not in the trusted roots",
    19: "a self-signed certificate in the chain is not in the trusted roots",
    20: "the issuer is not in the trusted roots (use --ca-cert for a private CA)",
    21: "the certificate chain cannot be verified (no issuer for the first certificate)",
    23: "the certificate has been revoked",
    24: "an intermediate is not a valid CA",
    26: "the certificate may not be used for a TLS server",
}


class TLSConfigError(ValueError):
    """``--ca-cert`` names a file that is missing, unreadable or holds no certificate."""


def load_trust_root(ca_cert_path=None):
    """The trust root for ``ca_cert_path`` (every certificate in that PEM file), or the
    system's roots when it is None."""
    if ca_cert_path is None:
        return platformTrust()
    try:
        with open(ca_cert_path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise TLSConfigError(f"--ca-cert {ca_cert_path}: {e.strerror}") from None
    blocks = _PEM_CERTIFICATE.findall(pem)
    if not blocks:
        raise TLSConfigError(f"--ca-cert {ca_cert_path}: no PEM certificate in the file")
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:  # pyOpenSSL raises its own error types for bad PEM
        raise TLSConfigError(f"--ca-cert {ca_cert_path}: unreadable certificate ({e})") from None
    return trustRootFromCertificates(certificates)


def _describe_verify_error(err: int) -> str:
    return _VERIFY_ERRORS.get(err, f"OpenSSL verification error {err}")


@implementer(IOpenSSLClientConnectionCreator)
class VerifyingClientCreator:
    """Twisted's ``optionsForClientTLS`` with a verify callback that logs why a
    certificate is refused. Chain checks are OpenSSL's; the host name check is
    ``service_identity``'s, as in Twisted; refusal aborts the handshake."""

    def __init__(self, hostname: str, trust_root):
        self.hostname = hostname
        self._inner = optionsForClientTLS(hostname, trustRoot=trust_root)
        is_ip = isIPAddress(hostname) or isIPv6Address(hostname)
        self._service_id = IPAddress_ID(hostname) if is_ip else DNS_ID(hostname)

    def clientConnectionForTLS(self, tlsProtocol):
        connection = self._inner.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verifier(tlsProtocol)
        )
        return connection

    def _verifier(self, tlsProtocol):
        state = {"logged": False, "protocol": tlsProtocol}

        def refuse(reason):
            if not state["logged"]:
                state["logged"] = True
                log.error(
                    "TLS: certificate of {host} refused: {reason}",
                    host=self.hostname,
                    reason=reason,
                )

        def verify(connection, x509, err, depth, ok):
            try:
                if not ok:
                    refuse(_describe_verify_error(err))
                    return False
                if depth != 0:
                    return True
                try:
                    verify_service_identity(extract_patterns(x509), [self._service_id], [])
                except VerificationError as e:
                    refuse(f"it does not match the host name {self.hostname!r} ({e})")
                    protocol = state["protocol"]
                    if protocol is not None:
                        protocol.failVerification(Failure())
                    return False
                return True
            except BaseException:
                # An exception escaping an OpenSSL callback is lost; log it and refuse.
                log.failure("TLS: error while verifying the certificate of {host}", host=self.hostname)
                return False
            finally:
                if depth == 0:
                    state["protocol"] = None

        return verify


def client_tls_options(hostname: str, ca_cert_path=None, trust_root=None):
    """An ``IOpenSSLClientConnectionCreator`` for ``hostname`` that verifies the chain
    against ``trust_root`` (or the roots loaded from ``ca_cert_path``, or the system's)
    and the host name. Use it for wss connections."""
    if trust_root is None:
        trust_root = load_trust_root(ca_cert_path)
    return VerifyingClientCreator(hostname, trust_root)


@implementer(IPolicyForHTTPS)
class VerifyingPolicy:
    """``IPolicyForHTTPS`` for treq/Agent: every https connection verified as above.
    The trust root is loaded once, when the policy is made."""

    def __init__(self, ca_cert_path=None):
        self.ca_cert_path = ca_cert_path
        self._trust_root = load_trust_root(ca_cert_path)

    def creatorForNetloc(self, hostname: bytes, port: int):
        return VerifyingClientCreator(hostname.decode("ascii"), self._trust_root)


def https_policy(ca_cert_path=None) -> VerifyingPolicy:
    """The policy to give ``Agent(reactor, contextFactory=https_policy(...))``.
    Raises :class:`TLSConfigError` for an unusable ``ca_cert_path``."""
    return VerifyingPolicy(ca_cert_path)


def client_endpoint(reactor, host: str, port: int, tls: bool, ca_cert_path=None, trust_root=None):
    """A client endpoint to ``host:port``, wrapped in verified TLS when ``tls`` is true
    (for wss:// with Autobahn's ``WebSocketClientFactory`` under a ``ClientService``)."""
    endpoint = HostnameEndpoint(reactor, host, port)
    if not tls:
        return endpoint
    return wrapClientTLS(client_tls_options(host, ca_cert_path, trust_root), endpoint)


def _leaf_reasons(failure):
    """The exceptions inside ``failure``, unwrapping treq/Agent's ResponseNeverReceived,
    ResponseFailed, RequestTransmissionFailed and ConnectingCancelledError wrappers."""
    stack, seen = [failure], []
    while stack:
        item = stack.pop()
        value = item.value if isinstance(item, Failure) else item
        reasons = getattr(value, "reasons", None)
        if isinstance(reasons, list):
            stack.extend(reasons)
        else:
            seen.append(value)
    return seen


def tls_failure_reason(failure):
    """A one-line reason when ``failure`` (from a treq request or a TLS connection) is a
    refused certificate or another TLS handshake error; None when it is not about TLS."""
    for value in _leaf_reasons(failure):
        if isinstance(value, VerificationError):
            return f"the server certificate does not match the host name ({value})"
        if isinstance(value, SSL.Error):
            detail = "; ".join(
                str(part[-1]) for part in (value.args[0] if value.args and isinstance(value.args[0], list) else [])
                if isinstance(part, tuple)
            )
            return f"TLS handshake failed: {detail or value}"
    return None
