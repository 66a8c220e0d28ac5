"""How Entra ID names an on-premises endpoint: service principal names and reply URLs.

The rules are the documented ones (REQUIREMENTS.md): hosts compare
case-insensitively; a trailing ``/`` and ``:443`` are tolerated; a wildcard SPN
``<appId>/*.<parent>`` covers exactly one label (``*.contoso.com`` covers
``mail.contoso.com``, not ``contoso.com``, not ``a.b.contoso.com``).
"""

from __future__ import annotations

from urllib.parse import urlsplit


def normalise_url(url: str) -> str | None:
    """``HTTPS://Mail.Contoso.com:443/OWA/`` -> ``https://mail.contoso.com/owa``; None if not a URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    default = 443 if parts.scheme.lower() == "https" else 80
    netloc = parts.hostname.lower() + (f":{port}" if port and port != default else "")
    path = parts.path.rstrip("/").lower()
    return f"{parts.scheme.lower()}://{netloc}{path}"


def https_root_spn_names(spn: str, host: str) -> bool:
    """Whether an SPN is the ``https://<host>/`` form for this host (HMA-SPN-URLS)."""
    normal = normalise_url(spn)
    return normal is not None and normal == f"https://{host.lower()}"


def https_root_host(spn: str) -> str | None:
    """The host of an SPN of the ``https://<host>/`` form (no path, default port), else None."""
    normal = normalise_url(spn)
    if normal is None or not normal.startswith("https://"):
        return None
    netloc = normal[len("https://") :]
    return None if "/" in netloc or ":" in netloc else netloc


def authority_of(spn: str, app_id: str) -> str | None:
    """The authority an ``<appId>/<authority>`` SPN registers (lower case, ``:443`` dropped), else None."""
    text = spn.strip()
    prefix = app_id.lower() + "/"
    if not text.lower().startswith(prefix):
        return None
    authority = text[len(prefix) :].rstrip("/").lower().rstrip(".")
    if ":" in authority:
        name, _, port = authority.partition(":")
        if port != "443":
            return None
        authority = name
    return authority or None


def wildcard_covers(pattern: str, host: str) -> bool:
    """``*.contoso.com`` covers exactly one more label: mail.contoso.com, not a.b.contoso.com."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == host
    parent = pattern[2:]
    label, dot, rest = host.partition(".")
    return bool(dot) and bool(label) and rest == parent


def authority_spn_covers(spn: str, app_id: str, host: str) -> bool:
    """Whether an SPN registers a host for an application (EXO-SPN-AUTHORITIES accepts three forms).

    ``<appId>/<host>``, ``<appId>/*.<parent>`` (one label), or ``https://<host>/``.
    """
    text = spn.strip()
    prefix = app_id.lower() + "/"
    if text.lower().startswith(prefix):
        authority = text[len(prefix) :].rstrip("/")
        if ":" in authority:
            name, _, port = authority.partition(":")
            if port != "443":
                return False
            authority = name
        return wildcard_covers(authority, host)
    return https_root_spn_names(text, host)


def url_is_listed(url: str, listed: list[str] | tuple[str, ...]) -> bool:
    """Whether a URL is among reply URLs, case-insensitively, tolerating ``/`` and ``:443``."""
    wanted = normalise_url(url)
    return wanted is not None and any(normalise_url(item) == wanted for item in listed)
