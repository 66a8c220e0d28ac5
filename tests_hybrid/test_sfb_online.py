"""sfb-online: OAuth between Skype for Business Online and Exchange on-premises (S1).

Skype for Business Online was retired in 2021: in a tenant without its service
principal (00000004-...) the cloud-side rows are skipped with that reason.
"""

from __future__ import annotations

import datetime as dt

import pytest

from hybridtrust import subjects
from hybridtrust.checks import assert_certificate_published
from hybridtrust.facts import (
    EXCHANGE_ONLINE_APP_ID,
    SKYPE_APPLICATION_ACCOUNT,
    SKYPE_ONLINE_APP_ID,
    Account,
    Organization,
    Tenant,
)
from hybridtrust.matching import normalise_url
from hybridtrust.testing import failure, listing, requirement

APPLICATION_ACCOUNT = SKYPE_APPLICATION_ACCOUNT
ROLES = ("UserApplication", "ArchiveApplication")


def _skype_online_in(tenant: Tenant) -> None:
    if not tenant.has_service_principal(SKYPE_ONLINE_APP_ID):
        pytest.skip(
            f"tenant {tenant} has no Skype for Business Online service principal ({SKYPE_ONLINE_APP_ID}): "
            "the service was retired in 2021"
        )


def _application_account(org: Organization) -> Account | None:
    return org.skype_application_account()


@requirement("SFB-AUTHSERVER", over=subjects.tenants)
def test_an_acs_auth_server_trusts_skype_for_business_online(tenant: Tenant, org: Organization) -> None:
    _skype_online_in(tenant)
    expected = [org.cloud.acs_metadata_url(name) for name in (tenant.id, *tenant.verified_domains)]
    wanted = {normalise_url(url) for url in expected}
    servers = [
        server
        for server in org.auth_servers
        if server.is_acs and normalise_url(server.auth_metadata_url or "") in wanted
    ]
    assert servers, failure(
        f"No MicrosoftACS AuthServer reads {expected[0]}: Skype for Business Online cannot authenticate to "
        "Exchange (conversation history is not written)",
        found=[f"{s.name} ({s.type}, {s.auth_metadata_url})" for s in org.auth_servers],
        expected=f"AuthServer WindowsAzureACS, Type MicrosoftACS, AuthMetadataUrl {expected[0]}, Realm {tenant.id}",
        fix=f"New-AuthServer -Name 'WindowsAzureACS' -AuthMetadataUrl {expected[0]}",
    )
    good = [s for s in servers if s.enabled and (s.realm or "").lower() == tenant.id]
    assert good, failure(
        f"The ACS AuthServer {listing(servers)} is "
        + ("disabled" if not any(s.enabled for s in servers) else f"not in realm {tenant.id}"),
        found={s.name: {"Enabled": s.enabled, "Realm": s.realm} for s in servers},
        expected={"Enabled": True, "Realm": tenant.id},
        fix=f"Set-AuthServer -Identity '{servers[0].name}' -Enabled $true",
    )


@requirement("SFB-APPACCOUNT", over=subjects.organization)
def test_the_skype_application_account_exists_and_is_hidden(org: Organization) -> None:
    account = _application_account(org)
    domains = org.primary_tenant.verified_domains
    assert account is not None, failure(
        f"The mail user {APPLICATION_ACCOUNT} does not exist",
        found=[user.name for user in org.mail_users],
        expected=f"{APPLICATION_ACCOUNT} with ExternalEmailAddress {APPLICATION_ACCOUNT}@<verified domain>",
        fix=f"New-MailUser -Name {APPLICATION_ACCOUNT} -ExternalEmailAddress {APPLICATION_ACCOUNT}@"
        f"{domains[0] if domains else '<verified domain>'} (S1 step 3), then hide it",
    )
    assert account.hidden_from_address_lists, failure(
        f"{APPLICATION_ACCOUNT} is visible in the address lists",
        found={"HiddenFromAddressListsEnabled": False},
        expected={"HiddenFromAddressListsEnabled": True},
        fix=f"Set-MailUser -Identity {APPLICATION_ACCOUNT} -HiddenFromAddressListsEnabled $true",
    )


@requirement("SFB-ROLES", over=subjects.organization)
def test_the_skype_application_account_holds_its_roles(org: Organization) -> None:
    account = _application_account(org)
    assert account is not None, failure(
        f"The mail user {APPLICATION_ACCOUNT} does not exist, so it holds no role (see SFB-APPACCOUNT)",
        found=None,
        expected=list(ROLES),
    )
    missing = [role for role in ROLES if role not in org.roles_of(account)]
    assert not missing, failure(
        f"{APPLICATION_ACCOUNT} lacks the management roles {listing(missing)}",
        found=sorted(org.roles_of(account)),
        expected=list(ROLES),
        fix="; ".join(f"New-ManagementRoleAssignment -Role {role} -User {APPLICATION_ACCOUNT}" for role in missing),
    )


@requirement("SFB-PARTNERAPP", over=subjects.organization)
def test_the_skype_partner_application_is_enabled_and_linked(org: Organization) -> None:
    partner = org.partner_application(SKYPE_ONLINE_APP_ID)
    assert partner is not None, failure(
        f"No PartnerApplication {SKYPE_ONLINE_APP_ID} (S1 names it SfBOnline)",
        found=[f"{app.name} ({app.application_identifier})" for app in org.partner_applications],
        expected=f"PartnerApplication SfBOnline, ApplicationIdentifier {SKYPE_ONLINE_APP_ID}, Enabled",
        fix=f"New-PartnerApplication -Name SfBOnline -ApplicationIdentifier {SKYPE_ONLINE_APP_ID} -Enabled $true "
        f"-LinkedAccount {APPLICATION_ACCOUNT}",
    )
    account = _application_account(org)
    problems = []
    if not partner.enabled:
        problems.append("it is disabled")
    if account is None or not account.known_as(partner.linked_account):
        problems.append(f"LinkedAccount is {partner.linked_account!r}, not {APPLICATION_ACCOUNT}")
    assert not problems, failure(
        f"The Skype for Business Online partner application {partner.name}: {'; '.join(problems)}",
        found={"Enabled": partner.enabled, "LinkedAccount": partner.linked_account},
        expected={"Enabled": True, "LinkedAccount": APPLICATION_ACCOUNT},
        fix=f"Set-PartnerApplication -Identity '{partner.name}' -Enabled $true -LinkedAccount {APPLICATION_ACCOUNT}",
    )


@requirement("SFB-AUTHCERT-PUBLISHED", over=subjects.tenants)
def test_the_auth_certificate_is_published_to_skype_online(tenant: Tenant, org: Organization, now: dt.datetime) -> None:
    _skype_online_in(tenant)
    current = org.auth_certificate()
    assert current is not None, failure(
        f"The current auth certificate {org.auth_config.current_thumbprint} is on no server (see EXO-AUTHCERT)",
        found=org.auth_config.current_thumbprint,
        expected="the auth certificate in the servers' certificate stores",
    )
    principal = tenant.service_principal(SKYPE_ONLINE_APP_ID)
    assert_certificate_published(principal, current, now, patch_target=f"/servicePrincipals/{principal.id}")


@requirement("SFB-SPN", over=subjects.tenants)
def test_exchange_online_carries_the_skype_wildcard_spn(tenant: Tenant, org: Organization) -> None:
    _skype_online_in(tenant)
    domains = [d for d in org.smtp_domains if d in tenant.verified_domains] or [
        d for d in tenant.verified_domains if not d.endswith((".onmicrosoft.com", ".onmicrosoft.us"))
    ]
    principal = tenant.service_principal(EXCHANGE_ONLINE_APP_ID)
    prefix = EXCHANGE_ONLINE_APP_ID + "/"
    wildcards = [spn[len(prefix) :] for spn in principal.service_principal_names if spn.lower().startswith(prefix)]
    missing = [d for d in domains if not any(w.lower() == f"*.{d}" for w in wildcards)]
    assert domains and not missing, failure(
        f"Exchange Online in tenant {tenant} lacks {listing(f'{prefix}*.{d}' for d in missing or ['<verified domain>'])} "
        "(S1 step 7)",
        found=[w for w in wildcards if w.startswith("*.")] or wildcards[:5],
        expected=[f"{prefix}*.{d}" for d in domains],
        fix=f"Graph PATCH /servicePrincipals/{principal.id} servicePrincipalNames = existing + "
        f"{listing(f'{prefix}*.{d}' for d in missing)}",
    )
