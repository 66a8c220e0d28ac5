"""The lab's lean request parsing reads requests exactly as http.server does."""

from __future__ import annotations

import io
from http.client import HTTPException, HTTPMessage, LineTooLong, parse_headers
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace
from typing import Any

import pytest

from hybridtrust.lab.http import MAX_HEADERS, Headers, _Handler, read_headers

NAMES = ("Host", "content-type", "X-Dup", "X-Folded", "Connection", "Missing")


def _reading(message: Any) -> dict[str, Any]:
    """Everything the lab and BaseHTTPRequestHandler read from a header object."""
    return {
        "items": list(message.items()),
        "keys": list(message.keys()),
        "get": [message.get(name) for name in NAMES],
        "item": [message[name] for name in NAMES],
        "in": [name in message for name in NAMES],
        "all": [message.get_all(name) for name in NAMES],
        "len": len(message),
    }


@pytest.mark.parametrize(
    "block",
    [
        b"Host: ex01\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: 12\r\n\r\nBODY",
        b"X-Dup: one\r\nx-dup:two\r\nX-DUP:\t three \r\n\r\n",  # duplicated: get() is the first
        b"Host: ex01\nConnection: keep-alive\n\nBODY",  # bare LF line ends
        b"Host:\r\nX-Latin: caf\xe9\r\n\r\n",  # empty and non-ASCII values
        b"Host: ex01\r\n",  # the connection ended before the blank line
    ],
)
def test_plain_header_blocks_read_as_the_stdlib_reads_them(block: bytes) -> None:
    rfile, stdlib_rfile = io.BytesIO(block), io.BytesIO(block)
    headers = read_headers(rfile)
    assert isinstance(headers, Headers)
    assert _reading(headers) == _reading(parse_headers(stdlib_rfile))
    assert rfile.tell() == stdlib_rfile.tell()


@pytest.mark.parametrize(
    "block",
    [
        b"Host: ex01\r\nX-Folded: first\r\n  second\r\n\r\n",  # obsolete line folding
        b"Host: ex01\r\nNot a header\r\nContent-Length: 5\r\n\r\n",  # ends the headers for email
        b"X-Dup: a\rb\r\nHost: ex01\r\n\r\n",  # a bare CR splits the line for email
        b"Host: ex01\r\nX-Last: no line end",  # the connection ended inside a line
    ],
)
def test_unusual_header_blocks_are_left_to_the_email_parser(block: bytes) -> None:
    rfile, stdlib_rfile = io.BytesIO(block + b"\r\nBODY"), io.BytesIO(block + b"\r\nBODY")
    headers = read_headers(rfile)
    assert isinstance(headers, HTTPMessage)
    assert _reading(headers) == _reading(parse_headers(stdlib_rfile))
    assert rfile.tell() == stdlib_rfile.tell()  # the body starts where it started


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"X-Big: " + b"x" * 70_000 + b"\r\n\r\n", LineTooLong),
        (b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n", HTTPException),
    ],
)
def test_oversized_header_blocks_fail_as_in_the_stdlib(block: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as ours:
        read_headers(io.BytesIO(block))
    with pytest.raises(error) as stdlib:
        parse_headers(io.BytesIO(block))
    assert type(ours.value) is type(stdlib.value)
    assert str(ours.value) == str(stdlib.value)


class _StdlibHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _parse(handler_class: type[BaseHTTPRequestHandler], request: bytes) -> dict[str, Any]:
    """parse_request on a request, without a socket: its result, its reading and what it answered."""
    handler = handler_class.__new__(handler_class)
    handler.server = SimpleNamespace(name="test", server_header="Microsoft-HTTPAPI/2.0")  # type: ignore[assignment]
    handler.rfile = io.BytesIO(request)
    handler.wfile = io.BytesIO()
    handler.client_address = ("127.0.0.1", 0)
    handler.request_version = "HTTP/0.9"
    handler.raw_requestline = handler.rfile.readline(65537)
    handler.date_time_string = lambda timestamp=None: "Mon, 01 Jan 2024 00:00:00 GMT"  # type: ignore[method-assign]
    handler.version_string = lambda: "Microsoft-HTTPAPI/2.0"  # type: ignore[method-assign]
    result = handler.parse_request()
    headers = getattr(handler, "headers", None)
    return {
        "result": result,
        "command": handler.command,
        "path": getattr(handler, "path", None),
        "version": handler.request_version,
        "close": handler.close_connection,
        "headers": _reading(headers) if result else None,
        "answer": handler.wfile.getvalue(),
        "rest": handler.rfile.read(),
    }


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /wsman HTTP/1.1\r\nHost: ex01\r\nContent-Length: 4\r\n\r\nBODY",
        b"POST //wsman HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"POST /wsman HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"POST /wsman HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nBODY",
        b"GET /wsman\r\n\r\n",
        b"POST /wsman\r\n\r\n",
        b"POST /wsman HTTP/2.0\r\n\r\n",
        b"POST /wsman HTTP/1.x\r\n\r\n",
        b"POST /wsman HTTP/1.1 extra\r\n\r\n",
        b"\r\n",
        b"POST /wsman HTTP/1.1\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n",
        b"POST /wsman HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n",
        b"POST /wsman HTTP/1.1\r\nX-Folded: first\r\n  second\r\n\r\n",
    ],
)
def test_requests_are_parsed_and_refused_as_by_the_stdlib(request_bytes: bytes) -> None:
    assert _parse(_Handler, request_bytes) == _parse(_StdlibHandler, request_bytes)
