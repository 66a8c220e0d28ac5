"""Judgements that more than one requirement makes, written once.

Requirement tests call these like any assert: they raise AssertionError with a
`failure(...)` message when the organization does not meet the requirement.
"""

from __future__ import annotations

import datetime as dt

from hybridtrust.certificates import Certificate
from hybridtrust.facts import (
    EXCHANGE_ONLINE_APP_ID,
    Application,
    AuthServer,
    ExchangeServer,
    Organization,
    ServicePrincipal,
    Tenant,
)
from hybridtrust.testing import failure, listing

RENEWAL_DAYS = 60
"""MonitorExchangeAuthCertificate stages the next certificate 60 days ahead."""
WARNING_DAYS = 30
AUTH_CERTIFICATE_SUBJECT = "CN=Microsoft Exchange Server Auth Certificate"


def assert_auth_certificate_on_server(org: Organization, server: ExchangeServer, now: dt.datetime) -> None:
    """EXO-AUTHCERT / HMA-AUTHCERT: the current auth certificate exists here, valid for more than 30 days."""
    thumbprint = org.auth_config.current_thumbprint
    assert thumbprint, failure(
        "Get-AuthConfig names no CurrentCertificateThumbprint: Exchange has no OAuth signing certificate",
        found="CurrentCertificateThumbprint empty",
        expected="the thumbprint of the Exchange OAuth certificate",
        fix="Create and publish a new auth certificate: New-ExchangeCertificate -KeySize 2048 -PrivateKeyExportable "
        "$true -SubjectName 'cn=Microsoft Exchange Server Auth Certificate' -DomainName @() -Services SMTP; "
        "Set-AuthConfig -NewCertificateThumbprint <thumbprint> -NewCertificateEffectiveDate (Get-Date); "
        "Set-AuthConfig -PublishCertificate; then rerun the Hybrid Configuration Wizard",
        severity="critical",
    )
    certificate = org.certificates_of(server.name).find(thumbprint)
    elsewhere = org.auth_certificate(thumbprint)
    assert certificate is not None, failure(
        f"The auth certificate {thumbprint} is not in the certificate store of {server.name}: OAuth tokens "
        f'signed or validated by {server.name} fail ("could not find the authorization certificate with '
        f'thumbprint {thumbprint}")',
        found=f"{server.name}: no certificate {thumbprint}",
        expected=f"certificate {thumbprint} on every Exchange 2013+ server",
        fix=(
            f"Export the certificate with its private key from a server that has it (Export-ExchangeCertificate "
            f"-Thumbprint {thumbprint} -BinaryEncoded -Password <password>) and import it on {server.name} "
            f"(Import-ExchangeCertificate -Server {server.name} -FileData <bytes> -Password <password>)"
            if elsewhere
            else f"No server holds {thumbprint}: renew the auth certificate (New-ExchangeCertificate ...; "
            "Set-AuthConfig -NewCertificateThumbprint ... -NewCertificateEffectiveDate (Get-Date); "
            "Set-AuthConfig -PublishCertificate; Set-AuthConfig -ClearPreviousCertificate)"
        ),
        severity="critical",
    )
    days = certificate.days_left(now)
    assert days > 0, failure(
        f"The auth certificate on {server.name} expired on {certificate.not_after:%Y-%m-%d}: every OAuth "
        "request of the hybrid (free/busy, OWA/ECP with HMA, eDiscovery) fails",
        found=certificate.describe(now),
        expected="a valid certificate",
        fix="Renew the auth certificate now: New-ExchangeCertificate -KeySize 2048 -PrivateKeyExportable $true "
        "-SubjectName 'cn=Microsoft Exchange Server Auth Certificate' -DomainName @() -Services SMTP; "
        "Set-AuthConfig -NewCertificateThumbprint <thumbprint> -NewCertificateEffectiveDate (Get-Date); "
        "Set-AuthConfig -PublishCertificate; Set-AuthConfig -ClearPreviousCertificate; then rerun the HCW",
        severity="critical",
    )
    assert days > WARNING_DAYS, failure(
        f"The auth certificate on {server.name} expires on {certificate.not_after:%Y-%m-%d} "
        f"({days:.0f} days left, the threshold is {WARNING_DAYS})",
        found=certificate.describe(now),
        expected=f"more than {WARNING_DAYS} days left",
        fix="Stage the next certificate before it expires: New-ExchangeCertificate ...; Set-AuthConfig "
        "-NewCertificateThumbprint <thumbprint> -NewCertificateEffectiveDate <date>; or run "
        "MonitorExchangeAuthCertificate.ps1, which renews it",
        severity="high",
    )


def assert_certificate_published(
    principal: ServicePrincipal | Application,
    certificate: Certificate,
    now: dt.datetime,
    *,
    patch_target: str,
) -> None:
    """A certificate is a Verify keyCredential, not expired, of a service principal or application."""
    credential = principal.verify_credential_for(certificate.thumbprint)
    present = listing(cred.describe() for cred in principal.key_credentials) if principal.key_credentials else "[]"
    assert credential is not None, failure(
        f"The certificate {certificate.thumbprint} is not a keyCredential of {principal}: tokens it signs are "
        'rejected (AADSTS70002 / AADSTS50012 "The key was not found")',
        found=f"keyCredentials {present}",
        expected=f"an AsymmetricX509Cert/Verify keyCredential for {certificate.thumbprint}",
        fix=f"Graph PATCH {patch_target} keyCredentials = existing + {{type: AsymmetricX509Cert, usage: Verify, "
        f"key: <DER of {certificate.thumbprint}>, endDateTime: {certificate.not_after:%Y-%m-%dT%H:%M:%SZ}}} "
        "(re-read first, never drop a key; the Hybrid Configuration Wizard does the same)",
    )
    assert credential.is_verify_certificate(), failure(
        f"{principal} holds {certificate.thumbprint} as {credential.type}/{credential.usage}, not "
        "AsymmetricX509Cert/Verify",
        found=credential.describe(),
        expected="AsymmetricX509Cert/Verify",
        fix=f"Graph PATCH {patch_target} keyCredentials: add the certificate as AsymmetricX509Cert/Verify",
    )
    assert not credential.expired(now), failure(
        f"The keyCredential for {certificate.thumbprint} on {principal} ended on {credential.end:%Y-%m-%d}",
        found=credential.describe(),
        expected=f"endDateTime after {now:%Y-%m-%d}",
        fix=f"Graph PATCH {patch_target} keyCredentials = existing + the renewed certificate",
    )


def dedicated_application(org: Organization, tenant: Tenant) -> tuple[AuthServer | None, Application | None]:
    """S5: the tenant's evoSTS AuthServer naming an application, and that application if Entra ID has it."""
    for server in org.auth_servers_of(tenant, "AzureAD"):
        if server.application_identifier and server.application_identifier.lower() != EXCHANGE_ONLINE_APP_ID:
            return server, tenant.application(server.application_identifier)
    return None, None


def on_premises_auth_thumbprints(org: Organization) -> set[str]:
    """Every Exchange auth certificate the organization has or had (AuthConfig and certificate stores)."""
    config = org.auth_config
    thumbprints = {t for t in (config.current_thumbprint, config.next_thumbprint, config.previous_thumbprint) if t}
    for server in org.auth_certificate_servers:
        if org.missing_certificates([server.name]):
            continue
        for certificate in org.certificates_of(server.name).certificates:
            if certificate.subject.lower() == AUTH_CERTIFICATE_SUBJECT.lower():
                thumbprints.add(certificate.thumbprint)
    return thumbprints
