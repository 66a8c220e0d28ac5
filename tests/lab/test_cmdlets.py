"""The lab's cmdlets answer like Exchange and SharePoint, and their changes land in the state."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from hybridtrust.lab.cmdlets import (
    EXCHANGE_CMDLETS,
    MUTATING_VERBS,
    SHAREPOINT_PROJECTIONS,
    CmdletError,
    Invocation,
    invoke,
)
from hybridtrust.lab.contoso import CONTOSO_TENANT, FABRIKAM_TENANT, compliant_organization, flawed_contoso
from hybridtrust.lab.exchange_objects import export_clixml, read_clixml
from hybridtrust.lab.pki import thumbprint
from hybridtrust.lab.state import LabState

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pristine() -> LabState:
    return flawed_contoso(NOW)


@pytest.fixture
def state(pristine: LabState) -> LabState:
    return pristine.copy()


def run(state: LabState, *steps: Invocation, endpoint: str = "exchange") -> list[Any]:
    return list(invoke(state, endpoint, list(steps)))  # type: ignore[arg-type]


def cmd(name: str, **parameters: Any) -> Invocation:
    return Invocation(name, parameters)


def wire(objects: list[Any]) -> list[Any]:
    """What a client reads: the objects through CLIXML and psrpcore's deserializer."""
    return read_clixml(export_clixml(objects))


# -- reading ------------------------------------------------------------------------------------------------------


def test_get_auth_server_returns_every_auth_server(state: LabState) -> None:
    servers = wire(run(state, cmd("Get-AuthServer")))
    assert [str(s.Type) for s in servers] == ["AzureAD", "MicrosoftACS", "AzureAD"]
    assert servers[0].PSTypeNames[0].endswith("SystemConfiguration.AuthServer")


def test_identity_is_case_insensitive_and_parameters_take_unique_prefixes(state: LabState) -> None:
    (server,) = run(state, cmd("Get-AuthServer", Ident=f"EVOSTS - {CONTOSO_TENANT.upper()}"))
    assert server.PSObject.to_string == f"EvoSts - {CONTOSO_TENANT}"


def test_identity_not_found_is_a_non_terminating_exchange_error(state: LabState) -> None:
    (error,) = run(state, cmd("Get-AuthServer", Identity="WindowsAzureACS"))
    assert isinstance(error, CmdletError)
    assert not error.terminating
    assert error.message == (
        "The operation couldn't be performed because object 'WindowsAzureACS' couldn't be found on "
        "'dc01.contoso.local'."
    )
    assert "ManagementObjectNotFoundException" in error.error_id
    assert error.error_id.endswith("Microsoft.Exchange.Management.SystemConfigurationTasks.GetAuthServer")


def test_unknown_cmdlet(state: LabState) -> None:
    with pytest.raises(CmdletError) as raised:
        run(state, cmd("Get-Mailbox"))
    assert raised.value.exception_type == "System.Management.Automation.CommandNotFoundException"
    assert raised.value.message.startswith("The term 'Get-Mailbox' is not recognized as the name of a cmdlet")
    assert raised.value.terminating


def test_unknown_parameter(state: LabState) -> None:
    with pytest.raises(CmdletError) as raised:
        run(state, cmd("Get-AuthServer", Filter="Enabled -eq $true"))
    assert raised.value.message == "A parameter cannot be found that matches parameter name 'Filter'."
    assert raised.value.error_id == "NamedParameterNotFound,Get-AuthServer"
    assert raised.value.exception_type == "System.Management.Automation.ParameterBindingException"


def test_scripts_are_refused_in_the_no_language_runspace(state: LabState) -> None:
    with pytest.raises(CmdletError) as raised:
        run(state, Invocation("Get-AuthServer | Where-Object { $_.Enabled }", {}, is_script=True))
    assert raised.value.error_id == "ScriptsNotAllowed"
    assert raised.value.category == "ParserError"
    assert raised.value.message == (
        "The syntax is not supported by this runspace. This can occur if the runspace is in no-language mode."
    )


def test_select_object_keeps_the_named_properties_as_the_object_spells_them(state: LabState) -> None:
    (server, *_) = wire(
        run(state, cmd("Get-ExchangeServer"), cmd("Select-Object", Property=["name", "AdminDisplayVersion", "NoSuch"]))
    )
    assert server.PSTypeNames[:2] == [
        "Deserialized.Selected.Microsoft.Exchange.Data.Directory.Management.ExchangeServer",
        "Deserialized.System.Management.Automation.PSCustomObject",
    ]
    assert [p.name for p in server.PSObject.extended_properties] == ["Name", "AdminDisplayVersion", "NoSuch"]
    assert server.Name == "EX01" and server.NoSuch is None
    assert str(server.AdminDisplayVersion).startswith("Version 15.")
    (certificate, *_) = wire(
        run(state, cmd("Get-ExchangeCertificate", Server="EX01"), cmd("Select-Object", Property="RawData"))
    )
    assert [p.name for p in certificate.PSObject.extended_properties] == ["RawData"]
    assert isinstance(certificate.RawData, bytes)


def test_select_object_refuses_one_property_named_twice(state: LabState) -> None:
    errors = run(state, cmd("Get-OrganizationConfig"), cmd("Select-Object", Property=["Name", "NAME"]))
    assert [type(error) for error in errors] == [CmdletError]
    assert errors[0].message == 'The property cannot be processed because the property "Name" already exists.'
    assert not errors[0].terminating


def test_certificate_lookups_follow_changes_of_the_organization(state: LabState) -> None:
    # Servers and certificates are looked up in indexes (LabState.derived); a change rebuilds them.
    def thumbprints(server: str) -> list[str]:
        return [thumbprint(bytes(c.RawData)) for c in wire(run(state, cmd("Get-ExchangeCertificate", Server=server)))]

    before = thumbprints("EX02")
    ex01 = next(c for c in state.objects("ExchangeCertificate") if c["Server"] == "EX01")
    with state.changing():
        state.objects("ExchangeCertificate").append(dict(ex01, Server="EX02", Identity="EX02\\copied"))
    assert thumbprints("EX02") == [*before, thumbprint(base64.b64decode(ex01["RawData"]))]
    with state.changing():  # an edit in place: the lists keep their length, the revision moves
        state.objects("ExchangeCertificate")[-1]["Server"] = "EX04"
    assert thumbprints("EX02") == before

    with pytest.raises(CmdletError):
        run(state, cmd("Get-ExchangeCertificate", Server="ex05.contoso.local"))
    with state.changing():
        state.objects("ExchangeServer").append({"Name": "EX05", "Fqdn": "ex05.contoso.local"})
        state.objects("ExchangeCertificate").append(dict(ex01, Server="EX05", Identity="EX05\\copied"))
    assert len(thumbprints("ex05.contoso.local")) == 1
    assert len(wire(run(state, cmd("Get-OwaVirtualDirectory", Server="EX05")))) == 0


def test_virtual_directories_without_ad_properties_only_need_iis(state: LabState) -> None:
    state.document["lab"]["servers_down"] = ["EX03"]
    ad_only = run(state, cmd("Get-OwaVirtualDirectory", ADPropertiesOnly=True))
    assert all(not isinstance(item, CmdletError) for item in ad_only)
    assert len(ad_only) == 4
    live = run(state, cmd("Get-OwaVirtualDirectory"))
    errors = [item for item in live if isinstance(item, CmdletError)]
    assert len(errors) == 1
    assert "ex03.contoso.local" in errors[0].message
    assert not errors[0].terminating
    objects = wire([item for item in live if not isinstance(item, CmdletError)])
    assert [str(o.Server) for o in objects] == ["EX01", "EX02", "EX04"]


def test_iis_flags_are_read_only_without_ad_properties_only(state: LabState) -> None:
    (live,) = wire(run(state, cmd("Get-WebServicesVirtualDirectory", Identity="EX01\\EWS (Default Web Site)")))
    assert live.OAuthAuthentication is True
    (ad,) = wire(
        run(
            state,
            cmd("Get-WebServicesVirtualDirectory", Identity="EX01\\EWS (Default Web Site)", ADPropertiesOnly=True),
        )
    )
    assert ad.OAuthAuthentication is False
    assert "OAuth" in [str(m) for m in ad.InternalAuthenticationMethods]


def test_virtual_directory_server_filter(state: LabState) -> None:
    objects = wire(run(state, cmd("Get-MapiVirtualDirectory", Server="ex02.contoso.local", ADPropertiesOnly=True)))
    assert [str(o.Identity) for o in objects] == ["EX02\\mapi (Default Web Site)"]


def test_exchange_certificates_per_server(state: LabState) -> None:
    (auth_config,) = run(state, cmd("Get-AuthConfig"))
    current = wire([auth_config])[0].CurrentCertificateThumbprint
    ex01 = {thumbprint(bytes(c.RawData)) for c in wire(run(state, cmd("Get-ExchangeCertificate", Server="EX01")))}
    ex04 = {thumbprint(bytes(c.RawData)) for c in wire(run(state, cmd("Get-ExchangeCertificate", Server="EX04")))}
    assert current in ex01
    assert current not in ex04  # a seeded defect


def test_role_assignments_by_assignee(state: LabState) -> None:
    roles = wire(run(state, cmd("Get-ManagementRoleAssignment", RoleAssignee="Exchange Online-ApplicationAccount")))
    assert "MeetingGraphApplication" not in {str(r.Role) for r in roles}
    assert "UserApplication" in {str(r.Role) for r in roles}


# -- changing -----------------------------------------------------------------------------------------------------


def _vdir(state: LabState, noun: str, server: str) -> dict[str, Any]:
    return next(v for v in state.objects(noun) if v["Server"] == server)


def test_set_auth_server(state: LabState) -> None:
    fabrikam = f"EvoSts - {FABRIKAM_TENANT}"
    assert run(state, cmd("Set-AuthServer", Identity=fabrikam, DomainName="fabrikam.onmicrosoft.com")) == []
    (server,) = wire(run(state, cmd("Get-AuthServer", Identity=fabrikam)))
    assert [str(d) for d in server.DomainName] == ["fabrikam.onmicrosoft.com"]
    run(state, cmd("Set-AuthServer", Identity=fabrikam, Enabled=False))
    assert wire(run(state, cmd("Get-AuthServer", Identity=fabrikam)))[0].Enabled is False


def test_only_one_default_authorization_endpoint(state: LabState) -> None:
    with pytest.raises(CmdletError) as raised:
        run(state, cmd("Set-AuthServer", Identity=f"EvoSts - {FABRIKAM_TENANT}", IsDefaultAuthorizationEndpoint=True))
    assert "already set" in raised.value.message
    run(state, cmd("Set-AuthServer", Identity=f"EvoSts - {CONTOSO_TENANT}", IsDefaultAuthorizationEndpoint=False))
    run(state, cmd("Set-AuthServer", Identity=f"EvoSts - {FABRIKAM_TENANT}", IsDefaultAuthorizationEndpoint=True))
    defaults = [s["Name"] for s in state.objects("AuthServer") if s["IsDefaultAuthorizationEndpoint"]]
    assert defaults == [f"EvoSts - {FABRIKAM_TENANT}"]


def test_set_on_a_missing_object_is_terminating(state: LabState) -> None:
    with pytest.raises(CmdletError) as raised:
        run(state, cmd("Set-PartnerApplication", Identity="Nope", Enabled=True))
    assert raised.value.terminating
    assert "couldn't be found" in raised.value.message


def test_what_if_changes_nothing(state: LabState) -> None:
    before = state.objects("MailUser")[0]["HiddenFromAddressListsEnabled"]
    run(
        state,
        cmd("Set-MailUser", Identity="SfBOnline-ApplicationAccount", HiddenFromAddressListsEnabled=True, WhatIf=True),
    )
    assert state.objects("MailUser")[0]["HiddenFromAddressListsEnabled"] == before


def test_set_mail_user_hides_the_account(state: LabState) -> None:
    run(state, cmd("Set-MailUser", Identity="SfBOnline-ApplicationAccount", HiddenFromAddressListsEnabled=True))
    assert wire(run(state, cmd("Get-MailUser", Identity="SfBOnline-ApplicationAccount")))[
        0
    ].HiddenFromAddressListsEnabled


def test_boolean_switches_add_and_remove_methods(state: LabState) -> None:
    identity = "EX02\\Autodiscover (Default Web Site)"
    run(state, cmd("Set-AutodiscoverVirtualDirectory", Identity=identity, WSSecurityAuthentication=True))
    vdir = _vdir(state, "AutodiscoverVirtualDirectory", "EX02")
    assert vdir["InternalAuthenticationMethods"] == ["Basic", "Ntlm", "WindowsIntegrated", "WSSecurity", "OAuth"]
    assert vdir["ExternalAuthenticationMethods"] == vdir["InternalAuthenticationMethods"]
    run(state, cmd("Set-AutodiscoverVirtualDirectory", Identity=identity, OAuthAuthentication=False))
    assert "OAuth" not in _vdir(state, "AutodiscoverVirtualDirectory", "EX02")["ExternalAuthenticationMethods"]


def test_owa_authentication_switches(state: LabState) -> None:
    identity = "EX01\\owa (Default Web Site)"
    run(
        state,
        cmd(
            "Set-OwaVirtualDirectory",
            Identity=identity,
            AdfsAuthentication=False,
            BasicAuthentication=False,
            FormsAuthentication=False,
            DigestAuthentication=False,
        ),
    )
    run(state, cmd("Set-OwaVirtualDirectory", Identity=identity, OAuthAuthentication=True))
    assert _vdir(state, "OwaVirtualDirectory", "EX01")["InternalAuthenticationMethods"] == ["OAuth"]


def test_mapi_iis_authentication_methods(state: LabState) -> None:
    run(
        state,
        cmd(
            "Set-MapiVirtualDirectory",
            Identity="EX02\\mapi (Default Web Site)",
            IISAuthenticationMethods=["OAuth", "Ntlm", "Negotiate"],
        ),
    )
    vdir = _vdir(state, "MapiVirtualDirectory", "EX02")
    assert vdir["ExternalAuthenticationMethods"] == ["Ntlm", "OAuth", "Negotiate"]
    with pytest.raises(CmdletError):
        run(
            state,
            cmd(
                "Set-MapiVirtualDirectory", Identity="EX02\\mapi (Default Web Site)", IISAuthenticationMethods=["Bogus"]
            ),
        )


def test_activesync_has_no_iis_authentication_methods_parameter(state: LabState) -> None:
    with pytest.raises(CmdletError) as raised:
        run(
            state,
            cmd(
                "Set-ActiveSyncVirtualDirectory",
                Identity="EX01\\Microsoft-Server-ActiveSync (Default Web Site)",
                IISAuthenticationMethods=["OAuth"],
            ),
        )
    assert raised.value.error_id == "NamedParameterNotFound,Set-ActiveSyncVirtualDirectory"


def test_new_management_role_assignment(state: LabState) -> None:
    (created,) = wire(
        run(
            state,
            cmd(
                "New-ManagementRoleAssignment",
                Role="MeetingGraphApplication",
                User="Exchange Online-ApplicationAccount",
            ),
        )
    )
    assert str(created.Role) == "MeetingGraphApplication"
    with pytest.raises(CmdletError):
        run(
            state,
            cmd(
                "New-ManagementRoleAssignment",
                Role="MeetingGraphApplication",
                User="Exchange Online-ApplicationAccount",
            ),
        )


def test_connectors_and_availability(state: LabState) -> None:
    run(
        state,
        cmd(
            "Set-IntraOrganizationConnector",
            Identity=f"HybridIOC - {FABRIKAM_TENANT}",
            TargetAddressDomains=["fabrikam.mail.onmicrosoft.com"],
        ),
    )
    (connector,) = wire(run(state, cmd("Get-IntraOrganizationConnector", Identity=f"HybridIOC - {FABRIKAM_TENANT}")))
    assert [str(d) for d in connector.TargetAddressDomains] == ["fabrikam.mail.onmicrosoft.com"]
    (space,) = wire(
        run(
            state,
            cmd(
                "Add-AvailabilityAddressSpace",
                ForestName="contoso.mail.onmicrosoft.com",
                AccessMethod="InternalProxy",
                UseServiceAccount=True,
                ProxyUrl="https://mail.contoso.com/EWS/Exchange.asmx",
            ),
        )
    )
    assert str(space.AccessMethod) == "InternalProxy"
    assert len(run(state, cmd("Get-AvailabilityAddressSpace"))) == 1


def test_new_auth_server_from_metadata(state: LabState) -> None:
    state.objects("AuthServer")[:] = [s for s in state.objects("AuthServer") if s["Type"] != "MicrosoftACS"]
    (server,) = wire(
        run(
            state,
            cmd(
                "New-AuthServer",
                Name="WindowsAzureACS",
                AuthMetadataUrl="https://accounts.accesscontrol.windows.net/contoso.com/metadata/json/1",
            ),
        )
    )
    assert (str(server.Type), server.Realm, server.Enabled) == ("MicrosoftACS", CONTOSO_TENANT, True)


def test_setting_overrides(state: LabState) -> None:
    run(
        state,
        cmd(
            "New-SettingOverride",
            Name="OWA HMA Download Domain Support",
            Component="OAuth",
            Section="OAuthIdentityCacheFixForDownloadDomains",
            Parameters=["Enabled=true"],
            Reason="Enable support for OWA HMA when Download Domains are in use",
        ),
    )
    assert len(run(state, cmd("Get-SettingOverride"))) == 3
    run(state, cmd("Remove-SettingOverride", Identity="OWA HMA Download Domain Support", Confirm=False))
    assert len(run(state, cmd("Get-SettingOverride"))) == 2


def test_organization_config(state: LabState) -> None:
    run(state, cmd("Set-OrganizationConfig", OAuth2ClientProfileEnabled=False))
    assert wire(run(state, cmd("Get-OrganizationConfig")))[0].OAuth2ClientProfileEnabled is False


def test_pipeline_input_binds_identity(state: LabState) -> None:
    run(state, cmd("Get-PartnerApplication"), cmd("Set-PartnerApplication", Enabled=False))
    assert all(p["Enabled"] is False for p in state.objects("PartnerApplication"))


def test_changes_are_persisted(tmp_path, pristine: LabState) -> None:
    path = tmp_path / "lab.json"
    pristine.copy().save(path)
    state = LabState.load(path)
    run(state, cmd("Set-MailUser", Identity="SfBOnline-ApplicationAccount", HiddenFromAddressListsEnabled=True))
    assert LabState.load(path).objects("MailUser")[0]["HiddenFromAddressListsEnabled"] is True


def test_every_mutating_cmdlet_uses_a_mutating_verb() -> None:
    # Get- and Test- read; everything else changes the organization and is counted as mutating.
    for cmdlet in EXCHANGE_CMDLETS.values():
        assert cmdlet.verb in MUTATING_VERBS | {"Get", "Test"}, cmdlet.name


# -- SharePoint ---------------------------------------------------------------------------------------------------


def test_sharepoint_reads(state: LabState) -> None:
    assert run(state, cmd("Add-PSSnapin", Name="Microsoft.SharePoint.PowerShell"), endpoint="sharepoint") == []
    (realm,) = run(state, cmd("Get-SPAuthenticationRealm"), endpoint="sharepoint")
    assert realm != CONTOSO_TENANT  # a seeded defect
    (proxy,) = wire(run(state, cmd("Get-SPServiceApplicationProxy"), endpoint="sharepoint"))
    assert proxy.PSTypeNames[0].endswith("SPAzureAccessControlServiceApplicationProxy")
    assert "InDefaultProxyGroup" not in [p.name for p in proxy.PSObject.extended_properties]  # it knows no groups
    assert set(SHAREPOINT_PROJECTIONS) == {
        "Get-HybridTrustSecurityTokenServiceConfig",
        "Get-HybridTrustAuthenticationProvider",
        "Get-HybridTrustServiceApplicationProxy",
    }
    (noted,) = wire(run(state, cmd("Get-HybridTrustServiceApplicationProxy"), endpoint="sharepoint"))
    assert noted.InDefaultProxyGroup is True
    (config,) = wire(run(state, cmd("Get-HybridTrustSecurityTokenServiceConfig"), endpoint="sharepoint"))
    assert config.AllowOAuthOverHttp is True


def test_sharepoint_fixes(state: LabState) -> None:
    run(state, cmd("Set-SPAuthenticationRealm", Realm=CONTOSO_TENANT), endpoint="sharepoint")
    assert run(state, cmd("Get-SPAuthenticationRealm"), endpoint="sharepoint") == [CONTOSO_TENANT]
    script = "$config = Get-SPSecurityTokenServiceConfig\n$config.AllowOAuthOverHttp = $false\n$config.Update()"
    run(state, Invocation(script, {}, is_script=True), endpoint="sharepoint")
    assert state.sharepoint["SecurityTokenServiceConfig"]["AllowOAuthOverHttp"] is False
    metadata = f"https://accounts.accesscontrol.windows.net/{CONTOSO_TENANT}/metadata/json/1"
    (issuer,) = wire(
        run(
            state,
            cmd("New-SPTrustedSecurityTokenIssuer", Name="ACS2", MetadataEndPoint=metadata, IsTrustBroker=True),
            endpoint="sharepoint",
        )
    )
    assert issuer.RegisteredIssuerName == f"00000001-0000-0000-c000-000000000000@{CONTOSO_TENANT}"
    assert issuer.IsSelfIssuer is False
    (principal,) = wire(
        run(
            state,
            cmd(
                "Register-SPAppPrincipal",
                Site="https://sharepoint.contoso.com",
                NameIdentifier=f"x@{CONTOSO_TENANT}",
                DisplayName="SharePoint Online",
            ),
            endpoint="sharepoint",
        )
    )
    assert principal.NameIdentifier == f"x@{CONTOSO_TENANT}"


def test_sharepoint_script_of_simple_statements(state: LabState) -> None:
    script = (
        "Add-PSSnapin Microsoft.SharePoint.PowerShell\n"
        "function Get-HybridTrustAuthenticationProvider { param($WebApplication) if ($x) { 'y' } }\n"
        "Get-HybridTrustAuthenticationProvider -WebApplication 'https://sharepoint.contoso.com'"
    )
    (provider,) = wire(run(state, Invocation(script, {}, is_script=True), endpoint="sharepoint"))
    assert provider.DisableKerberos is True


def test_compliant_organization_answers_every_get(pristine: LabState) -> None:
    state = compliant_organization(NOW)
    for cmdlet in EXCHANGE_CMDLETS.values():
        if cmdlet.verb != "Get":
            continue
        output = run(state, cmd(cmdlet.name))
        assert all(not isinstance(item, CmdletError) for item in output), cmdlet.name
        wire(output)
