"""pypsrp's WinRM transport, with the steady-state requests of stateless sign-ins sent straight to urllib3.

Why: a certificate query is three HTTP requests (Command, Receive, Signal), a thousand-server
audit three thousand. pypsrp sends each through ``requests``, whose per-request work
(``Session.prepare_request`` merging settings with runtime Protocol checks, ``Session.send``'s
hooks, cookie extraction and redirect resolution, the adapter's response object) costs about
0.35 ms of the client's CPU per request on top of urllib3, which does the HTTP itself. In a
1,000-server audit that was a quarter of the client's CPU, all of it under one GIL that the
sixteen connection threads share (README "Performance").

What changes, and what does not:

- Only Basic and certificate sign-ins over https take this path. Their authentication is in
  every request (a header) or in the TLS session, never in the connection's state. Negotiate,
  Kerberos, NTLM and CredSSP authenticate the connection and wrap every message, and a 401
  midway must reach their auth handler: those keep pypsrp's path unchanged.
- The first request of a shell still goes through pypsrp and requests (session, proxy and
  TLS settings, the first sign-in). The later ones reuse what requests prepared: the headers
  it sent (``session.headers`` and the Authorization its auth added), the urllib3 pool of its
  adapter (the same connections, the same TLS verification and client certificate) and the
  adapter's retry policy.
- Failures look exactly as they do through requests: urllib3's exceptions become the
  ``requests`` exceptions requests' adapter raises (`describe_transport_error` reads those),
  HTTP errors become pypsrp's ``AuthenticationError`` / ``WinRMTransportError``, and
  read/connect timeouts are retried as pypsrp retries them.
- A response that sets a cookie (a load balancer's affinity cookie) is filed into the
  session's jar, and that transport goes back to requests for good, which sends the cookie.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from pypsrp.exceptions import AuthenticationError, WinRMTransportError
from pypsrp.wsman import WSMan, _TransportHTTP
from requests.cookies import extract_cookies_to_jar
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    DecodeError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError

log = logging.getLogger(__name__)

STATELESS_SIGN_INS = frozenset({"basic", "certificate"})
"""Sign-ins whose proof travels with every request or in TLS, not in the connection's state."""


def use_steady_transport(wsman: WSMan) -> bool:
    """Send `wsman`'s steady-state requests through `SteadyTransport` when its sign-in allows; True if so."""
    transport = wsman.transport
    if type(transport) is not _TransportHTTP:
        return False
    if transport.auth not in STATELESS_SIGN_INS or not transport.ssl or transport.wrap_required:
        return False
    if getattr(transport, "proxy", None) or not getattr(transport, "no_proxy", False):
        return False  # a proxy (or the environment's) is requests' to apply; RemotingSettings never uses one
    # The same object, now of the subclass: every setting pypsrp gave it stays as it is.
    transport.__class__ = SteadyTransport
    return True


class SteadyTransport(_TransportHTTP):
    """pypsrp's `_TransportHTTP` whose requests after the first go to urllib3 directly (see the module)."""

    _lane: _Lane | None = None
    _lane_closed: bool = False

    def send(
        self,
        message: bytes,
        *,
        retries_on_read_timeout: int = 0,
        timeout: int | float | tuple[int | float, int | float] | None = None,
    ) -> bytes:
        lane = self._lane
        if lane is None:
            content = super().send(message, retries_on_read_timeout=retries_on_read_timeout, timeout=timeout)
            if not self._lane_closed and self.session is not None:
                self._lane = _Lane.open(self.session, self.endpoint)
                self._lane_closed = self._lane is None
            return content
        attempt = 0
        while True:
            try:
                status, content, headers = lane.post(message, timeout or (self.connection_timeout, self.read_timeout))
            except (requests.ReadTimeout, requests.ConnectTimeout) as error:
                # pypsrp's own loop: a Receive (retries_on_read_timeout=5) is safe to send again.
                log.debug("%s on attempt %d", type(error).__name__, attempt)
                if attempt >= retries_on_read_timeout:
                    raise
                attempt += 1
                time.sleep(self.reconnection_backoff * (2**attempt - 1))
                continue
            if "Set-Cookie" in headers:
                # Filed in the session's jar by the lane; requests sends it from now on.
                self._lane, self._lane_closed = None, True
            return self._answer(status, content, headers)

    def _answer(self, status: int, content: bytes, headers: Any) -> bytes:
        """What pypsrp's `_send_request` returns or raises for a response (never an encrypted one here)."""
        if status == 401:
            raise AuthenticationError(f"Failed to authenticate the user {self.username} with {self.auth}")
        if 400 <= status < 600:
            raise WinRMTransportError("http", status, _text(content, headers.get("Content-Type", "")))
        if 300 <= status < 400:
            # requests would follow it (a POST turned GET); WinRM never redirects, so say where it pointed.
            raise WinRMTransportError("http", status, f"redirected to {headers.get('Location') or 'nowhere'}")
        return content


@dataclass
class _Lane:
    """One shell's steady-state requests: the pool, headers and retries requests set up for it."""

    pool: urllib3.HTTPConnectionPool
    path: str
    headers: dict[str, str]
    retries: Any
    session: requests.Session
    """Where a cookie a response sets is filed."""
    template: requests.PreparedRequest
    """The request requests prepared (its headers are the lane's); cookies are extracted against it."""

    @classmethod
    def open(cls, session: requests.Session, endpoint: str) -> _Lane | None:
        """The lane for `endpoint`, or None where requests would do something this does not (cookies)."""
        if len(session.cookies):
            return None
        template = session.prepare_request(
            requests.Request("POST", endpoint, data=b"", headers={"Content-Type": "application/soap+xml;charset=UTF-8"})
        )
        if template.hooks.get("response"):
            return None  # an auth handler that answers responses (none for Basic or certificates)
        adapter = session.get_adapter(endpoint)
        if not isinstance(adapter, requests.adapters.HTTPAdapter):
            return None
        pool = adapter.get_connection_with_tls_context(template, session.verify, cert=session.cert)
        adapter.cert_verify(pool, endpoint, session.verify, session.cert)
        headers = {name: value for name, value in template.headers.items() if name.lower() != "content-length"}
        return cls(pool, adapter.request_url(template, {}), headers, adapter.max_retries, session, template)

    def post(self, body: bytes, timeout: Any) -> tuple[int, bytes, Any]:
        """One POST: status, body and headers (a cookie it sets is filed in the session's jar)."""
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        headers = {**self.headers, "Content-Length": str(len(body))}
        try:
            response = self.pool.urlopen(
                "POST",
                self.path,
                body=body,
                headers=headers,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                retries=self.retries,
                timeout=urllib3.Timeout(connect=connect, read=read),
            )
        except Exception as error:
            raise _requests_error(error) from error
        try:
            content = _read(response)
        finally:
            response.release_conn()
        if "Set-Cookie" in response.headers:
            extract_cookies_to_jar(self.session.cookies, self.template, response)
        return response.status, content, response.headers


def _read(response: urllib3.BaseHTTPResponse) -> bytes:
    """The body, failures worded as requests' ``Response.content`` words them."""
    try:
        return response.read(decode_content=False)
    except ProtocolError as error:
        raise requests.exceptions.ChunkedEncodingError(error) from error
    except DecodeError as error:
        raise requests.exceptions.ContentDecodingError(error) from error
    except ReadTimeoutError as error:
        raise requests.exceptions.ConnectionError(error) from error
    except Urllib3SSLError as error:
        raise requests.exceptions.SSLError(error) from error


def _requests_error(error: Exception) -> Exception:
    """urllib3's exception as requests' HTTPAdapter.send raises it."""
    if isinstance(error, (ProtocolError, OSError)):
        return requests.exceptions.ConnectionError(error)
    if isinstance(error, MaxRetryError):
        reason = error.reason
        if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
            return requests.exceptions.ConnectTimeout(error)
        if isinstance(reason, ResponseError):
            return requests.exceptions.RetryError(error)
        if isinstance(reason, Urllib3SSLError):
            return requests.exceptions.SSLError(error)
        return requests.exceptions.ConnectionError(error)
    if isinstance(error, ClosedPoolError):
        return requests.exceptions.ConnectionError(error)
    if isinstance(error, Urllib3SSLError):
        return requests.exceptions.SSLError(error)
    if isinstance(error, ReadTimeoutError):
        return requests.exceptions.ReadTimeout(error)
    if isinstance(error, HTTPError):
        return requests.exceptions.RequestException(error)
    return error


def _text(content: bytes, content_type: str) -> str:
    """The body as text (requests' ``Response.text`` with WinRM's charset, which it always names)."""
    if not content:
        return ""
    charset = "utf-8"
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"')
    try:
        return content.decode(charset, errors="replace")
    except LookupError:
        return content.decode("utf-8", errors="replace")
