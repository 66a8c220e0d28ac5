"""The steady-state transport: Basic/certificate requests after the first go to urllib3, and fail as requests' do."""

from __future__ import annotations

import email.parser
import http.client
import io
import re
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import urllib3
from pypsrp.wsman import WSMan, _TransportHTTP
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError

from hybridtrust.lab.contoso import flawed_contoso
from hybridtrust.lab.server import Lab, start_lab
from hybridtrust.sources import remoting
from hybridtrust.sources.exchange import certificate_command
from hybridtrust.sources.remoting import Command, Outcome, RemotingSettings, close_pool, open_pool
from hybridtrust.sources.steady_transport import SteadyTransport, _requests_error, use_steady_transport
from tests.sources.test_exchange_source import settings_for
from tests.support import NOW


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with start_lab(flawed_contoso(NOW), services=()) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(lab: Lab) -> Iterator[None]:
    yield
    lab.exchange.faults.clear()


class SessionSends:
    """Counts the requests that go through requests' Session.send."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.cookies: list[str | None] = []
        original = requests.Session.send

        def send(session: requests.Session, request: Any, **kwargs: Any) -> Any:
            self.count += 1
            self.cookies.append(request.headers.get("Cookie"))
            return original(session, request, **kwargs)

        monkeypatch.setattr(requests.Session, "send", send)


def run(pool: Any, command: Command, settings: RemotingSettings) -> Outcome:
    outcome, _lost = remoting._run_one(pool, command, settings, time.monotonic)
    return outcome


def test_after_the_first_request_basic_over_https_bypasses_requests(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    sends = SessionSends(monkeypatch)
    settings = settings_for(lab.exchange)
    pool = open_pool(settings, 1)
    try:
        assert isinstance(pool.connection.transport, SteadyTransport)
        outcomes = [run(pool, certificate_command(server), settings) for server in ("EX01", "EX02", "EX01")]
    finally:
        close_pool(pool)
    assert sends.count == 1  # the shell's Create; the pool's Receive, 9 pipeline requests and Delete went straight
    assert all(outcome.error is None and outcome.records for outcome in outcomes)
    assert outcomes[0].records[0].properties == outcomes[2].records[0].properties


def test_sign_ins_bound_to_the_connection_keep_pypsrps_transport() -> None:
    ntlm = WSMan("exchange.contoso.com", port=80, ssl=False, auth="ntlm", username="u", password="p")
    kerberos = WSMan("exchange.contoso.com", ssl=True, auth="kerberos")
    basic = WSMan("exchange.contoso.com", ssl=True, auth="basic", username="u", password="p", no_proxy=True)
    proxied = WSMan("exchange.contoso.com", ssl=True, auth="basic", username="u", password="p")  # env proxies apply
    assert not use_steady_transport(ntlm) and type(ntlm.transport) is _TransportHTTP
    assert not use_steady_transport(kerberos) and type(kerberos.transport) is _TransportHTTP
    assert not use_steady_transport(proxied) and type(proxied.transport) is _TransportHTTP
    assert use_steady_transport(basic) and type(basic.transport) is SteadyTransport


def _sizes(error: str | None) -> str | None:
    return (
        None if error is None else re.sub(r"\d+ bytes read, \d+ more expected", "N bytes read, M more expected", error)
    )


def _failures(lab: Lab, arm: Any, monkeypatch: pytest.MonkeyPatch, *, steady: bool) -> tuple[str | None, ...]:
    """The outcomes of a certificate query that meets `arm`'s fault, and of the query after it."""
    with monkeypatch.context() as patch:
        if not steady:
            patch.setattr(remoting, "use_steady_transport", lambda wsman: False)
        settings = settings_for(lab.exchange)
        pool = open_pool(settings, 1)
    try:
        assert isinstance(pool.connection.transport, SteadyTransport) is steady
        run(pool, certificate_command("EX01"), settings)
        arm(lab)
        failed = run(pool, certificate_command("EX02"), settings)
        lab.exchange.faults.clear()
        after = run(pool, certificate_command("EX02"), settings)
    finally:
        close_pool(pool)
    return failed.error, after.error


@pytest.mark.parametrize(
    ("arm", "fails"),
    [
        pytest.param(lambda lab: lab.exchange.faults.http_status(500, action="Command", times=1), True, id="http-500"),
        pytest.param(lambda lab: lab.exchange.faults.http_status(401, action="Receive", times=1), True, id="http-401"),
        pytest.param(lambda lab: lab.exchange.faults.http_status(502, action="Receive", times=1), True, id="http-502"),
        pytest.param(
            lambda lab: lab.exchange.faults.reset_receive(times=1, command_only=True), True, id="reset-mid-receive"
        ),
        pytest.param(lambda lab: lab.exchange.faults.refuse(times=1), True, id="reset-at-request"),
        # urllib3 retries a 503 only for idempotent methods, so a POST's 503 is an error on both paths.
        pytest.param(lambda lab: lab.exchange.faults.http_status(503, times=1), True, id="http-503"),
        # pypsrp polls again after WinRM's OperationTimeout fault, on both paths.
        pytest.param(lambda lab: lab.exchange.faults.operation_timeout(times=1), False, id="winrm-operation-timeout"),
    ],
)
def test_failures_read_as_they_do_through_requests(
    lab: Lab, arm: Any, fails: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    through_requests = _failures(lab, arm, monkeypatch, steady=False)
    steady = _failures(lab, arm, monkeypatch, steady=True)
    assert (steady[0] is not None) is fails
    # How much of a cut answer arrived depends on whether the output was ready: not the point here.
    assert [_sizes(error) for error in steady] == [_sizes(error) for error in through_requests]


def test_a_response_that_sets_a_cookie_sends_the_rest_through_requests(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A load balancer keeps a shell on one server with an affinity cookie: requests must carry it.
    settings = settings_for(lab.exchange)
    pool = open_pool(settings, 1)
    transport = pool.connection.transport
    try:
        run(pool, certificate_command("EX01"), settings)
        lane = transport._lane
        assert lane is not None
        real_pool = lane.pool

        class CookiePool:
            def urlopen(self, *args: Any, **kwargs: Any) -> urllib3.HTTPResponse:
                answer = real_pool.urlopen(*args, **kwargs)
                body = answer.read()
                answer.release_conn()
                message = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(
                    "Set-Cookie: affinity=ex01; Path=/\r\n\r\n"
                )
                return urllib3.HTTPResponse(
                    body=io.BytesIO(body),
                    headers={**answer.headers, "Set-Cookie": "affinity=ex01; Path=/"},
                    status=answer.status,
                    preload_content=False,
                    original_response=SimpleNamespace(msg=message, isclosed=lambda: True),
                )

        lane.pool = CookiePool()
        sends = SessionSends(monkeypatch)
        outcome = run(pool, certificate_command("EX02"), settings)
        assert outcome.error is None and outcome.records
        assert transport._lane is None
        assert transport.session.cookies.get("affinity") == "ex01"
        sends.cookies.clear()
        assert run(pool, certificate_command("EX01"), settings).error is None
        assert sends.cookies == ["affinity=ex01"] * 3  # Command, Receive, Signal: through requests, with the cookie
    finally:
        close_pool(pool)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")), requests.exceptions.ConnectionError),
        (MaxRetryError(None, "/wsman", ConnectTimeoutError("timed out")), requests.exceptions.ConnectTimeout),
        (MaxRetryError(None, "/wsman", NewConnectionError(None, "refused")), requests.exceptions.ConnectionError),
        (MaxRetryError(None, "/wsman", Urllib3SSLError("verify failed")), requests.exceptions.SSLError),
        (MaxRetryError(None, "/wsman", ResponseError("too many 503")), requests.exceptions.RetryError),
        (ReadTimeoutError(None, "/wsman", "read timed out"), requests.exceptions.ReadTimeout),
        (Urllib3SSLError("bad record mac"), requests.exceptions.SSLError),
    ],
)
def test_urllib3_errors_become_the_requests_errors_its_adapter_raises(raised: Exception, expected: type) -> None:
    assert type(_requests_error(raised)) is expected
