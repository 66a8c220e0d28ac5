"""hma-owa-ecp: Hybrid Modern Authentication for Outlook on the web and the Exchange admin center (S3)."""

from __future__ import annotations

import pytest

from hybridtrust import subjects
from hybridtrust.facts import (
    EXCHANGE_2019_CU14_APR24HU,
    EXCHANGE_ONLINE_APP_ID,
    ExchangeServer,
    Organization,
    VirtualDirectory,
    version_text,
)
from hybridtrust.profile import Profile
from hybridtrust.subjects import TenantUrl
from hybridtrust.testing import NotApplicable, Subject, failure, requirement

OTHER_METHODS = {
    "Adfs": "AdfsAuthentication",
    "Basic": "BasicAuthentication",
    "Fba": "FormsAuthentication",
    "Digest": "DigestAuthentication",
}


@requirement(
    "OWA-BUILD",
    over=subjects.servers(lambda server: not server.is_edge, none_reason="the organization has no Exchange server"),
)
def test_the_server_build_supports_hma_for_owa(server: ExchangeServer) -> None:
    assert server.at_least(EXCHANGE_2019_CU14_APR24HU), failure(
        f"{server.name} runs {server.product}: HMA for OWA/ECP needs Exchange 2019 CU14 with the April 2024 "
        f"hotfix update ({version_text(EXCHANGE_2019_CU14_APR24HU)}) or Exchange Server SE",
        found=server.product,
        expected=f"{version_text(EXCHANGE_2019_CU14_APR24HU)} or later",
        fix=f"Update {server.name} to Exchange 2019 CU14 + April 2024 HU or later, or Exchange Server SE",
    )


@requirement("OWA-REPLY-URLS", over=subjects.owa_ecp_urls)
def test_every_owa_and_ecp_url_is_a_reply_url(reply_url: TenantUrl) -> None:
    principal = reply_url.tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
    assert principal.lists_reply_url(reply_url.url), failure(
        f"{reply_url.url} is not a reply URL of Exchange Online in tenant {reply_url.tenant} (used by "
        f"{', '.join(reply_url.used_by)}): sign-in to OWA/ECP fails with AADSTS50011 (reply URL mismatch)",
        found=list(principal.reply_urls),
        expected=reply_url.url,
        fix=f"Graph PATCH /servicePrincipals/{principal.id} replyUrls = existing + ['{reply_url.url}'] "
        "(re-read first; never replace the list)",
    )


@requirement("OWA-VDIR-AUTH", over=subjects.virtual_directories("OWA", "ECP"))
def test_owa_and_ecp_use_oauth_only(vdir: VirtualDirectory) -> None:
    still_on = [flag for method, flag in OTHER_METHODS.items() if vdir.has_method(method)]
    problems = [f"{flag} is on" for flag in still_on]
    if not vdir.has_method("OAuth"):
        problems.append("OAuthAuthentication is off")
    switches = " ".join(f"-{flag} $false" for flag in still_on)
    assert not problems, failure(
        f"{vdir}: {'; '.join(problems)}. (Accounts with isCriticalSystemObject, such as the built-in "
        "Administrator, are never synced to Entra ID and cannot sign in to OWA/ECP once HMA is on.)",
        found={
            "InternalAuthenticationMethods": list(vdir.internal_authentication),
            "ExternalAuthenticationMethods": list(vdir.external_authentication),
            **{flag: vdir.flags.get(flag) for flag in (*OTHER_METHODS.values(), "OAuthAuthentication")},
        },
        expected="Adfs, Basic, Forms and Digest authentication off; OAuthAuthentication on",
        fix=(f"Set-{vdir.cmdlet_noun} -Identity '{vdir.identity}' {switches}; " if switches else "")
        + f"then Set-{vdir.cmdlet_noun} -Identity '{vdir.identity}' -OAuthAuthentication $true "
        "(S3's order: disable the others on ECP and OWA first, then OAuth on ECP, then on OWA)",
    )


def _download_domains_in_use(org: Organization) -> list[Subject]:
    if not org.organization_config.enable_download_domains:
        raise NotApplicable("download domains are not in use (EnableDownloadDomains is False)")
    return subjects.organization(org)


@requirement("OWA-DOWNLOAD-DOMAINS", over=_download_domains_in_use)
def test_download_domains_have_the_identity_cache_override(org: Organization) -> None:
    overrides = [o for o in org.overrides("OAuth", "OAuthIdentityCacheFixForDownloadDomains") if o.enabled]
    assert overrides, failure(
        "Download domains are in use but no SettingOverride OAuth/OAuthIdentityCacheFixForDownloadDomains with "
        "Enabled=true exists: attachments fail to open in OWA with HMA",
        found=[str(o) for o in org.setting_overrides],
        expected="SettingOverride Component OAuth, Section OAuthIdentityCacheFixForDownloadDomains, Enabled=true",
        fix='New-SettingOverride -Name "OWA HMA Download Domain Support" -Component "OAuth" -Section '
        '"OAuthIdentityCacheFixForDownloadDomains" -Parameters ("Enabled=true") -Reason "Enable support for OWA '
        'HMA when Download Domains are in use"; then Get-ExchangeDiagnosticInfo -Process Microsoft.Exchange.'
        "Directory.TopologyService -Component VariantConfiguration -Argument Refresh",
    )


@requirement("OWA-RESOURCE-FOREST", over=subjects.organization)
def test_resource_forests_have_the_owa_hma_override(org: Organization, profile: Profile) -> None:
    if not profile.organization.resource_forest:
        pytest.skip("the profile declares no account forest / resource forest topology (resource_forest = false)")
    overrides = [o for o in org.overrides("OAuth", "OwaHMAFixForAfRfScenarios") if o.enabled]
    assert overrides, failure(
        "No SettingOverride OAuth/OwaHMAFixForAfRfScenarios with Enabled=true: OWA with HMA fails for linked "
        "mailboxes in the resource forest. (The web.config keys S3 also asks for cannot be read remotely: check "
        "them on every server by hand.)",
        found=[str(o) for o in org.setting_overrides],
        expected="SettingOverride Component OAuth, Section OwaHMAFixForAfRfScenarios, Enabled=true",
        fix='New-SettingOverride -Name "OWA HMA AFRF Support" -Component "OAuth" -Section '
        '"OwaHMAFixForAfRfScenarios" -Parameters ("Enabled=true") -Reason "Enable OWA HMA in AF/RF"',
    )
