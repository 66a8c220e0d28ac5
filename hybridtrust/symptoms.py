"""From what administrators see to the requirements that cause it, and back.

Nobody arrives with a requirement id: they arrive with AADSTS500011 in a sign-in
log, an Outlook that keeps prompting, or empty free/busy. This table (SYMPTOMS.md,
extended) links each symptom to the catalog rows that produce it. `--symptom TEXT`
runs the rows behind any symptom whose error code or phrase the pasted text
contains, and every failure in the reports names the symptoms it produces.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Symptom:
    key: str
    """A short name: the error code where there is one."""
    sees: str
    """What the administrator sees, as they would describe or paste it."""
    where: str
    matches: tuple[str, ...]
    """Error codes and distinctive phrases; pasted text containing any of them matches."""
    requirements: tuple[str, ...]
    note: str | None = None
    learned: bool = field(default=False)
    """Not in SYMPTOMS.md: added from the troubleshooting articles the catalog is built on."""

    def describe(self) -> str:
        return f"{self.sees} ({self.where})"


SYMPTOMS: tuple[Symptom, ...] = (
    Symptom(
        "AADSTS500011",
        'AADSTS500011 "The resource principal named https://<host> was not found in the tenant"',
        "Outlook sign-in, Entra sign-in logs",
        ("AADSTS500011", "resource principal named"),
        ("HMA-SPN-URLS", "EXO-SPN-AUTHORITIES"),
    ),
    Symptom(
        "AADSTS50011",
        "AADSTS50011: the reply URL does not match (OWA/ECP sign-in)",
        "browser",
        ("AADSTS50011", "reply URL specified in the request does not match", "redirect URI specified in the request"),
        ("OWA-REPLY-URLS",),
    ),
    Symptom(
        "AADSTS70002/AADSTS50012",
        'AADSTS70002 / AADSTS50012 "Client assertion contains an invalid signature" / "The key was not found"',
        "free/busy, Test-OAuthConnectivity",
        ("AADSTS70002", "AADSTS50012", "client assertion contains an invalid signature", "the key was not found"),
        ("EXO-AUTHCERT-PUBLISHED", "HYB-DEDICATED-APP"),
    ),
    Symptom(
        "auth-certificate-not-found",
        '"The Exchange OAuth authentication could not find the authorization certificate with thumbprint ..."',
        "Exchange event log, OWA/ECP",
        ("could not find the authorization certificate",),
        ("EXO-AUTHCERT",),
    ),
    Symptom(
        "owa-redirect-loop",
        'OWA/ECP redirect loop, event 1003 "Could not find a valid certificate", OAuthTokenRequestFailedException',
        "Exchange",
        ("redirect loop", "could not find a valid certificate", "OAuthTokenRequestFailedException"),
        ("EXO-AUTHCERT", "EXO-AUTHCERT-RENEWAL"),
    ),
    Symptom(
        "outlook-prompts",
        "Outlook keeps prompting for a password / still uses Basic or NTLM after enabling HMA; no authorization_uri "
        "in the Bearer challenge",
        "Outlook, HTTP trace",
        (
            "keeps prompting",
            "prompting for a password",
            "prompts for password",
            "authorization_uri",
            "still uses basic",
        ),
        ("HMA-CLIENT-PROFILE", "HMA-DEFAULT-ENDPOINT", "HMA-EVOSTS"),
    ),
    Symptom(
        "401-some-protocols",
        "401 from some servers or some protocols only (MAPI works, EAS fails...)",
        "Outlook, mobile",
        ("401 from some", "some protocols", "mapi works", "eas fails", "activesync fails"),
        ("HMA-VDIR-OAUTH", "HMA-SPN-URLS"),
    ),
    Symptom(
        "2000000-invalid_signature",
        "401 with x-ms-diagnostics 2000000 invalid_signature",
        "HTTP trace",
        ("2000000", "invalid_signature"),
        ("EXO-AUTHMETADATA-FRESH", "EXO-AUTHCERT-PUBLISHED"),
    ),
    Symptom(
        "2000003-ssl-offloading",
        'x-ms-diagnostics 2000003 "hostname component of the audience claim value is invalid ... Actual http://"',
        "HTTP trace",
        ("2000003", "hostname component of the audience claim"),
        (),
        note="SSL offloading in front of Exchange: the load balancer ends TLS and Exchange sees http://. This is "
        "not a configuration row the suite can check: stop offloading (re-encrypt to Exchange) for HMA endpoints.",
    ),
    Symptom(
        "missing-linked-account",
        '"The application is missing a linked account for RBAC roles"',
        "Test-OAuthConnectivity, free/busy",
        ("missing a linked account",),
        ("EXO-PARTNERAPP", "EXO-APPACCOUNT"),
    ),
    Symptom(
        "configuration-for-forest",
        '"Configuration information for forest/domain could not be found"',
        "free/busy on-premises to cloud",
        ("configuration information for forest",),
        ("EXO-IOC-ONPREM",),
    ),
    Symptom(
        "cloud-free-busy-missing",
        "Free/busy of cloud mailboxes missing, falls back to the organization relationship",
        "free/busy",
        ("free/busy of cloud", "falls back to the organization relationship", "organization relationship"),
        ("EXO-IOC-ONPREM", "EXO-IOC-CLOUD", "EXO-PARTNERAPP"),
    ),
    Symptom(
        "HCW8064",
        "HCW8064, 401 on /autodiscover/autodiscover.svc/WSSecurity",
        "HCW, Test-OrganizationRelationship",
        ("HCW8064", "autodiscover.svc/WSSecurity"),
        ("EXO-WSSECURITY",),
    ),
    Symptom(
        "CVE-2025-53786",
        "EWS calls through the shared Exchange Online service principal blocked (after 2025-10-31), CVE-2025-53786",
        "Exchange, HealthChecker",
        ("CVE-2025-53786", "shared Exchange Online service principal", "dedicated hybrid app"),
        ("HYB-DEDICATED-APP", "HYB-SHARED-SP-CLEAN"),
    ),
    Symptom(
        "conversation-history",
        "Skype for Business / Teams conversation history not written to on-premises mailboxes",
        "Outlook Conversation History folder",
        ("conversation history",),
        ("SFB-PARTNERAPP", "SFB-AUTHCERT-PUBLISHED", "SFB-AUTHSERVER"),
    ),
    Symptom(
        "untrusted-issuer",
        'ULS "The issuer of the token is not a trusted issuer"; provider-hosted add-ins 401 after hybrid',
        "SharePoint",
        ("not a trusted issuer", "provider-hosted add-in"),
        ("SPS-REALM", "SPS-TRUSTED-ISSUER"),
    ),
    Symptom(
        "hybrid-search-401",
        "Hybrid search or OneDrive redirection returns 401",
        "SharePoint",
        ("hybrid search", "onedrive redirection"),
        ("SPS-STS-CERT-PUBLISHED", "SPS-SPN", "SPS-APP-PRINCIPAL", "SPS-ACS-PROXY"),
    ),
    Symptom(
        "oauth-over-http",
        "OAuth works over http in production",
        "SharePoint",
        ("oauth works over http", "oauth over http", "AllowOAuthOverHttp"),
        ("SPS-OAUTH-HTTP",),
    ),
    Symptom(
        "builtin-administrator-owa",
        "OWA/ECP sign-in impossible for the built-in Administrator after HMA for OWA/ECP",
        "OWA/ECP",
        ("built-in administrator", "isCriticalSystemObject"),
        ("OWA-VDIR-AUTH",),
        note="Informational: accounts with isCriticalSystemObject are never synced to Entra ID, so they cannot "
        "sign in once OWA/ECP use HMA. Use a synced admin account.",
    ),
    # -- learned from the same troubleshooting articles (not in SYMPTOMS.md) --------------
    Symptom(
        "AADSTS700016",
        'AADSTS700016 "Application with identifier ... was not found in the directory"',
        "Exchange event log, free/busy after enabling the dedicated hybrid app",
        ("AADSTS700016", "was not found in the directory"),
        ("HYB-DEDICATED-APP",),
        learned=True,
    ),
    Symptom(
        "no-free-busy",
        '"No free/busy information could be retrieved" (hatched bars in the Scheduling Assistant)',
        "Outlook, OWA",
        ("no free/busy information could be retrieved", "hatched"),
        ("EXO-IOC-ONPREM", "EXO-IOC-CLOUD", "EXO-PARTNERAPP", "EXO-AUTHCERT-PUBLISHED", "EXO-AUTHSERVER"),
        learned=True,
    ),
    Symptom(
        "auth-certificate-expiring",
        "HealthChecker / MonitorExchangeAuthCertificate: the Auth Certificate expires soon or no next certificate is "
        "staged",
        "HealthChecker, MonitorExchangeAuthCertificate",
        ("auth certificate will expire", "auth certificate expires", "auth certificate has expired"),
        ("EXO-AUTHCERT", "EXO-AUTHCERT-RENEWAL"),
        learned=True,
    ),
)

BY_REQUIREMENT: dict[str, tuple[Symptom, ...]] = {}
for _symptom in SYMPTOMS:
    for _requirement in _symptom.requirements:
        BY_REQUIREMENT[_requirement] = (*BY_REQUIREMENT.get(_requirement, ()), _symptom)


def _contains(text: str, needle: str) -> bool:
    # Error codes match as whole tokens: AADSTS50011 must not match inside AADSTS500011.
    pattern = re.escape(needle.lower())
    if re.fullmatch(r"[a-z]*\d+", needle.lower()):
        pattern = rf"(?<![a-z0-9]){pattern}(?![0-9])"
    return re.search(pattern, text.lower()) is not None


def matching(text: str) -> list[Symptom]:
    """Every symptom whose error code or phrase the pasted text contains."""
    return [symptom for symptom in SYMPTOMS if any(_contains(text, needle) for needle in symptom.matches)]


def nearest(text: str, count: int = 3) -> list[Symptom]:
    """The known symptoms closest to a text that matched none (for the usage error)."""
    words = set(re.findall(r"[a-z0-9/]+", text.lower()))

    def score(symptom: Symptom) -> float:
        candidates = [symptom.key.lower(), symptom.sees.lower(), *(m.lower() for m in symptom.matches)]
        ratio = max(difflib.SequenceMatcher(None, text.lower(), c).ratio() for c in candidates)
        overlap = len(words & set(re.findall(r"[a-z0-9/]+", symptom.sees.lower()))) / (len(words) or 1)
        return ratio + overlap

    return sorted(SYMPTOMS, key=score, reverse=True)[:count]


def of_requirement(requirement_id: str) -> tuple[Symptom, ...]:
    return BY_REQUIREMENT.get(requirement_id, ())
