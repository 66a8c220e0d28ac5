<#
.SYNOPSIS
    Writes a hybridtrust evidence bundle (format hybridtrust-evidence/1) of the on-premises
    side of the hybrid OAuth trust, for judging offline with `pytest --profile <name> --evidence <folder>`.

.DESCRIPTION
    Run it where the product's own shell runs, with an account that may read the
    configuration (nothing is changed):

    - in the Exchange Management Shell with -Exchange: every cmdlet the requirement
      catalog reads, once for the whole organization, as exchange/<Cmdlet>.xml
      (virtual directories with -ADPropertiesOnly, so no server needs to be up), the
      role assignments of the two application accounts, and the certificates of every
      Exchange 2013 or later Mailbox/Client Access server as
      exchange/Get-ExchangeCertificate/<server>.xml;
    - in the SharePoint Management Shell (or any Windows PowerShell on a farm server)
      with -SharePoint: the authentication realm, trusted token issuers, service
      application proxies, the SharePoint Online app principal of the hybrid site, and
      two projections of objects too deep for Export-Clixml (the security token service
      configuration and the authentication providers of the hybrid web application),
      as sharepoint/<Name>.xml.

    A cmdlet that fails leaves its file out and is listed under not_collected in
    manifest.json: the offline run then reports the requirements that need it as
    errors, never as passes. Entra ID documents (entra/<tenant id>/...) are not
    written here: a live run of the suite with --save-evidence writes them, or they
    are exported from Graph as CONTRACTS.md describes.

    Exchange Online's connectors (exchange-online/, which EXO-IOC-CLOUD judges) are
    not written here either: this script never connects to Exchange Online. Export
    them in an Exchange Online PowerShell session (the ExchangeOnlineManagement
    module), with an account that may read the organization's configuration, into
    the same bundle folder:

        Connect-ExchangeOnline -UserPrincipalName admin@contoso.onmicrosoft.com
        $folder = New-Item -ItemType Directory -Force -Path 'C:\Evidence\contoso-2026-11-20\exchange-online'
        Get-IntraOrganizationConnector |
            Export-Clixml -Path (Join-Path $folder.FullName 'Get-IntraOrganizationConnector.xml') -Encoding UTF8
        Disconnect-ExchangeOnline -Confirm:$false

    With several tenants, all their connectors go in that one file: run
    Get-IntraOrganizationConnector after each tenant's Connect-ExchangeOnline,
    keep the objects in one list, and export the list once. Without the file the
    offline run reports EXO-IOC-CLOUD as an error ("not collected"), never as a
    pass. For a live run, name that folder in the profile's [exchange_online]
    evidence instead.

    The functions between the "hybridtrust projections" region markers are also sent,
    unchanged, by the suite's live SharePoint source to the farm's remote PowerShell
    endpoint, so a live run and this script describe the farm with the same objects.

.PARAMETER OutputPath
    The bundle folder to write (created if needed). Existing files of the same names
    are replaced.

.PARAMETER Exchange
    Collect the Exchange part (run in the Exchange Management Shell).

.PARAMETER SharePoint
    Collect the SharePoint part (run on a SharePoint farm server).

.PARAMETER WebApplication
    With -SharePoint: the URL of the hybrid web application, as in the profile's
    [sharepoint] web_application, for example https://sharepoint.contoso.com.

.PARAMETER HybridSite
    With -SharePoint: the site the SharePoint Online app principal is registered on
    (the profile's hybrid_site); default: the web application's root site.

.PARAMETER AppPrincipalNameIdentifier
    With -SharePoint: "<object id of the 00000003-0000-0ff1-ce00-000000000000 service
    principal>@<tenant id>", the NameIdentifier Get-SPAppPrincipal looks up (step 8 of
    "Configure server-to-server authentication from SharePoint Server to SharePoint
    Online"). Without it sharepoint/Get-SPAppPrincipal.xml is not written.

.EXAMPLE
    .\HybridTrust-Collect.ps1 -OutputPath C:\Evidence\contoso-2026-11-20 -Exchange

    In the Exchange Management Shell: the Exchange part of the bundle.

.EXAMPLE
    .\HybridTrust-Collect.ps1 -OutputPath C:\Evidence\contoso-2026-11-20 -SharePoint `
        -WebApplication https://sharepoint.contoso.com `
        -AppPrincipalNameIdentifier 5b1c3d0e-7a2f-4c8e-9d6b-0f1e2a3b4c5d@8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35

    On a SharePoint farm server, into the same folder: the SharePoint part.

.NOTES
    Read-only. Writes UTF-8 Export-Clixml files and manifest.json; no credential,
    secret or private key is ever written (Get-ExchangeCertificate objects carry the
    public certificate only).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [string] $OutputPath,

    [switch] $Exchange,

    [switch] $SharePoint,

    [string] $WebApplication,

    [string] $HybridSite,

    [string] $AppPrincipalNameIdentifier
)

Set-StrictMode -Version 2.0

#region hybridtrust projections
# Everything in this region is sent as it is to the farm's remote PowerShell by the live
# SharePoint source (hybridtrust/sources/sharepoint.py): function definitions and comments
# only, no statement that runs on its own. Property names are the contract with
# hybridtrust.facts (SecurityTokenServiceConfig, AuthenticationProvider, ServiceApplicationProxy's
# InDefaultProxyGroup).

function Get-HybridTrustSecurityTokenServiceConfig {
    # The farm's security token service: AllowOAuthOverHttp and the STS signing certificate
    # (LocalLoginProvider.SigningCertificate, which Export-Clixml would serialize too shallowly
    # to read its DER), with the hybrid web application it is judged for (SPS-OAUTH-HTTP).
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string] $WebApplication
    )
    $config = Get-SPSecurityTokenServiceConfig
    $signing = $config.LocalLoginProvider.SigningCertificate
    $rawData = $null
    $thumbprint = $null
    if ($null -ne $signing) {
        $rawData = $signing.RawData
        $thumbprint = $signing.Thumbprint
    }
    [pscustomobject]@{
        PSTypeName                   = 'HybridTrust.SecurityTokenServiceConfig'
        Name                         = $config.Name
        AllowOAuthOverHttp           = [bool]$config.AllowOAuthOverHttp
        SigningCertificateRawData    = $rawData
        SigningCertificateThumbprint = $thumbprint
        WebApplicationUrl            = $WebApplication
    }
}

function Get-HybridTrustAuthenticationProvider {
    # The authentication providers of every zone of the hybrid web application (or of one
    # zone), flattened to the properties SPS-WEBAPP-NTLM reads.
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true)]
        [string] $WebApplication,

        [string] $Zone
    )
    $application = Get-SPWebApplication -Identity $WebApplication
    $zones = @($application.IisSettings.Keys)
    if ($Zone) {
        $zones = @($Zone)
    }
    foreach ($urlZone in $zones) {
        foreach ($provider in @(Get-SPAuthenticationProvider -WebApplication $application -Zone $urlZone)) {
            $names = @($provider.PSObject.Properties | ForEach-Object -Process { $_.Name })
            [pscustomobject]@{
                PSTypeName                         = 'HybridTrust.AuthenticationProvider'
                WebApplicationUrl                  = $WebApplication
                Zone                               = [string]$urlZone
                DisplayName                        = [string]$provider.DisplayName
                ClaimProviderName                  = [string]$provider.ClaimProviderName
                UseWindowsIntegratedAuthentication = ($names -contains 'UseWindowsIntegratedAuthentication') -and [bool]$provider.UseWindowsIntegratedAuthentication
                DisableKerberos                    = ($names -contains 'DisableKerberos') -and [bool]$provider.DisableKerberos
                UseBasicAuthentication             = ($names -contains 'UseBasicAuthentication') -and [bool]$provider.UseBasicAuthentication
                AllowAnonymous                     = ($names -contains 'AllowAnonymous') -and [bool]$provider.AllowAnonymous
            }
        }
    }
}

function Get-HybridTrustServiceApplicationProxy {
    # Every service application proxy, each noted with whether it is a member of the farm's
    # default proxy group (SPS-ACS-PROXY): a proxy does not know its groups, and a web
    # application in the default group only reaches ACS through a proxy in that group.
    [CmdletBinding()]
    param()
    $defaultGroup = Get-SPServiceApplicationProxyGroup -Default
    $members = @($defaultGroup.Proxies | ForEach-Object -Process { $_.Id })
    foreach ($proxy in @(Get-SPServiceApplicationProxy)) {
        # -Force: SharePoint hands out its cached proxy objects, and a note added by an earlier call in
        # this session would otherwise make Add-Member fail.
        Add-Member -InputObject $proxy -NotePropertyName 'InDefaultProxyGroup' -NotePropertyValue ($members -contains $proxy.Id) -Force -PassThru
    }
}

#endregion hybridtrust projections

function Export-HybridTrustDocument {
    # One Export-Clixml file per cmdlet; objects go down the pipeline so that each becomes
    # its own top-level object (-InputObject would serialize the array as one object).
    param(
        [Parameter(Mandatory = $true)]
        [string] $Path,

        [Parameter(Mandatory = $true)]
        [AllowEmptyCollection()]
        [object[]] $Objects
    )
    $folder = Split-Path -Path $Path -Parent
    if (-not (Test-Path -LiteralPath $folder)) {
        New-Item -ItemType Directory -Path $folder -Force | Out-Null
    }
    if ($Objects.Count -eq 0) {
        # "None exist" must read back as an empty document, not as a damaged file: write the
        # empty <Objs> element in full (Export-Clixml with no input may shorten it to <Objs />).
        $empty = '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">' + [Environment]::NewLine + '</Objs>'
        Set-Content -LiteralPath $Path -Value $empty -Encoding UTF8
        return
    }
    $Objects | Export-Clixml -Path $Path -Encoding UTF8 -Force
}

function Invoke-HybridTrustCollection {
    # Runs one collection step; a failure is recorded (with PowerShell's own message) and
    # the file is left out, so the offline run reports "not collected" for what needs it.
    param(
        [Parameter(Mandatory = $true)]
        [string] $Name,

        [Parameter(Mandatory = $true)]
        [string] $Path,

        [Parameter(Mandatory = $true)]
        [scriptblock] $ScriptBlock
    )
    try {
        $objects = @(& $ScriptBlock)
        Export-HybridTrustDocument -Path $Path -Objects $objects
        Write-Verbose -Message "$Name -> $Path ($($objects.Count) objects)"
        return $true
    }
    catch {
        $script:NotCollected[$Name] = $_.Exception.Message
        Write-Warning -Message "$Name was not collected: $($_.Exception.Message)"
        return $false
    }
}

function Test-HybridTrustAuthCertificateServer {
    # Exchange 2013 or later with the Mailbox or Client Access role (not Edge) signs and
    # validates OAuth tokens, so it must hold the auth certificate (EXO-AUTHCERT).
    param(
        [Parameter(Mandatory = $true)]
        [object] $Server
    )
    $major = 0
    $version = $Server.AdminDisplayVersion
    if ($null -ne $version -and $version.PSObject.Properties['Major']) {
        $major = [int]$version.Major
    }
    elseif ([string]$version -match 'Version (\d+)\.') {
        $major = [int]$Matches[1]
    }
    $roles = [string]$Server.ServerRole
    $isMailbox = [bool]$Server.IsMailboxServer -or $roles -match 'Mailbox'
    $isClientAccess = [bool]$Server.IsClientAccessServer -or $roles -match 'ClientAccess'
    $isEdge = [bool]$Server.IsEdgeServer -or $roles -match 'Edge'
    return ($major -ge 15) -and ($isMailbox -or $isClientAccess) -and (-not $isEdge)
}

function Get-HybridTrustExchangeEvidence {
    param(
        [Parameter(Mandatory = $true)]
        [string] $Folder
    )
    $plain = @(
        'Get-AuthServer', 'Get-PartnerApplication', 'Get-AuthConfig', 'Get-ExchangeServer',
        'Get-OrganizationConfig', 'Get-IntraOrganizationConnector', 'Get-AvailabilityAddressSpace',
        'Get-SettingOverride', 'Get-ClientAccessService', 'Get-AcceptedDomain', 'Get-User', 'Get-MailUser'
    )
    $virtualDirectories = @(
        'Get-MapiVirtualDirectory', 'Get-WebServicesVirtualDirectory', 'Get-OabVirtualDirectory',
        'Get-AutodiscoverVirtualDirectory', 'Get-ActiveSyncVirtualDirectory', 'Get-OwaVirtualDirectory',
        'Get-EcpVirtualDirectory'
    )
    # The script blocks run at once, in a child scope of this function: they see its
    # variables ($cmdlet, $serverName), so no closure is needed.
    foreach ($cmdlet in $plain) {
        Invoke-HybridTrustCollection -Name "exchange/$cmdlet" -Path (Join-Path -Path $Folder -ChildPath "$cmdlet.xml") -ScriptBlock {
            & $cmdlet -ErrorAction Stop
        } | Out-Null
    }
    foreach ($cmdlet in $virtualDirectories) {
        # -ADPropertiesOnly reads Active Directory only: no IIS, so no server needs to answer.
        Invoke-HybridTrustCollection -Name "exchange/$cmdlet" -Path (Join-Path -Path $Folder -ChildPath "$cmdlet.xml") -ScriptBlock {
            & $cmdlet -ADPropertiesOnly -ErrorAction Stop
        } | Out-Null
    }

    # The application accounts' roles only (EXO-APPACCOUNT, SFB-ROLES); an account that does
    # not exist simply has no assignment.
    Invoke-HybridTrustCollection -Name 'exchange/Get-ManagementRoleAssignment' -Path (Join-Path -Path $Folder -ChildPath 'Get-ManagementRoleAssignment.xml') -ScriptBlock {
        foreach ($account in @('Exchange Online-ApplicationAccount', 'SfBOnline-ApplicationAccount')) {
            try {
                Get-ManagementRoleAssignment -RoleAssignee $account -ErrorAction Stop
            }
            catch {
                if ($_.CategoryInfo.Reason -ne 'ManagementObjectNotFoundException') {
                    throw
                }
            }
        }
    } | Out-Null

    # Certificates per server: they carry no reliable server name, so each server gets its
    # own file, named by Get-ExchangeServer's Name.
    $collectedFrom = @()
    try {
        $servers = @(Get-ExchangeServer -ErrorAction Stop | Where-Object -FilterScript { Test-HybridTrustAuthCertificateServer -Server $_ })
    }
    catch {
        $servers = @()
        $script:NotCollected['exchange/Get-ExchangeCertificate'] = "Get-ExchangeServer failed: $($_.Exception.Message)"
    }
    foreach ($server in $servers) {
        $serverName = [string]$server.Name
        $certificateFile = Join-Path -Path (Join-Path -Path $Folder -ChildPath 'Get-ExchangeCertificate') -ChildPath "$serverName.xml"
        $collected = Invoke-HybridTrustCollection -Name "exchange/Get-ExchangeCertificate/$serverName" -Path $certificateFile -ScriptBlock {
            Get-ExchangeCertificate -Server $serverName -ErrorAction Stop
        }
        if ($collected) {
            $collectedFrom += $serverName
        }
    }
    return , $collectedFrom
}

function Get-HybridTrustSharePointEvidence {
    param(
        [Parameter(Mandatory = $true)]
        [string] $Folder,

        [Parameter(Mandatory = $true)]
        [string] $WebApplication,

        [string] $HybridSite,

        [string] $AppPrincipalNameIdentifier
    )
    if (-not (Get-PSSnapin -Name 'Microsoft.SharePoint.PowerShell' -ErrorAction SilentlyContinue)) {
        Add-PSSnapin -Name 'Microsoft.SharePoint.PowerShell' -ErrorAction Stop
    }
    $site = $HybridSite
    if (-not $site) {
        $site = $WebApplication
    }

    Invoke-HybridTrustCollection -Name 'sharepoint/Get-SPAuthenticationRealm' -Path (Join-Path -Path $Folder -ChildPath 'Get-SPAuthenticationRealm.xml') -ScriptBlock {
        Get-SPAuthenticationRealm -ErrorAction Stop
    } | Out-Null
    Invoke-HybridTrustCollection -Name 'sharepoint/Get-SPTrustedSecurityTokenIssuer' -Path (Join-Path -Path $Folder -ChildPath 'Get-SPTrustedSecurityTokenIssuer.xml') -ScriptBlock {
        Get-SPTrustedSecurityTokenIssuer -ErrorAction Stop
    } | Out-Null
    Invoke-HybridTrustCollection -Name 'sharepoint/Get-SPServiceApplicationProxy' -Path (Join-Path -Path $Folder -ChildPath 'Get-SPServiceApplicationProxy.xml') -ScriptBlock {
        Get-HybridTrustServiceApplicationProxy -ErrorAction Stop
    } | Out-Null
    if ($AppPrincipalNameIdentifier) {
        Invoke-HybridTrustCollection -Name 'sharepoint/Get-SPAppPrincipal' -Path (Join-Path -Path $Folder -ChildPath 'Get-SPAppPrincipal.xml') -ScriptBlock {
            foreach ($principal in @(Get-SPAppPrincipal -Site $site -NameIdentifier $AppPrincipalNameIdentifier -ErrorAction Stop)) {
                # Get-SPAppPrincipal answers for one site: note which.
                Add-Member -InputObject $principal -NotePropertyName 'Site' -NotePropertyValue $site -Force -PassThru
            }
        } | Out-Null
    }
    else {
        $script:NotCollected['sharepoint/Get-SPAppPrincipal'] = 'not asked: give -AppPrincipalNameIdentifier "<object id of the 00000003 service principal>@<tenant id>"'
        Write-Warning -Message 'sharepoint/Get-SPAppPrincipal was not collected: -AppPrincipalNameIdentifier was not given'
    }
    Invoke-HybridTrustCollection -Name 'sharepoint/Get-HybridTrustSecurityTokenServiceConfig' -Path (Join-Path -Path $Folder -ChildPath 'Get-HybridTrustSecurityTokenServiceConfig.xml') -ScriptBlock {
        Get-HybridTrustSecurityTokenServiceConfig -WebApplication $WebApplication -ErrorAction Stop
    } | Out-Null
    Invoke-HybridTrustCollection -Name 'sharepoint/Get-HybridTrustAuthenticationProvider' -Path (Join-Path -Path $Folder -ChildPath 'Get-HybridTrustAuthenticationProvider.xml') -ScriptBlock {
        Get-HybridTrustAuthenticationProvider -WebApplication $WebApplication -ErrorAction Stop
    } | Out-Null
}

# -- main ------------------------------------------------------------------------------------------------

if (-not $Exchange -and -not $SharePoint) {
    throw 'Say what to collect: -Exchange (in the Exchange Management Shell), -SharePoint (on a farm server), or both.'
}
if ($SharePoint -and -not $WebApplication) {
    throw '-SharePoint needs -WebApplication, the URL of the hybrid web application (the profile''s [sharepoint] web_application).'
}

$script:NotCollected = [ordered]@{}
$bundle = New-Item -ItemType Directory -Path $OutputPath -Force
$manifestPath = Join-Path -Path $bundle.FullName -ChildPath 'manifest.json'
$manifest = [ordered]@{}
if (Test-Path -LiteralPath $manifestPath) {
    # A second run into the same folder (the other product) keeps what the first one recorded.
    $previous = Get-Content -LiteralPath $manifestPath -Raw | ConvertFrom-Json
    foreach ($property in $previous.PSObject.Properties) {
        $manifest[$property.Name] = $property.Value
    }
    if ($previous.PSObject.Properties['not_collected']) {
        foreach ($property in $previous.not_collected.PSObject.Properties) {
            $script:NotCollected[$property.Name] = $property.Value
        }
    }
}

if ($Exchange) {
    $collectedFrom = Get-HybridTrustExchangeEvidence -Folder (Join-Path -Path $bundle.FullName -ChildPath 'exchange')
    $manifest['exchange_certificates_collected_from'] = @($collectedFrom)
    $manifest['virtual_directories'] = 'ADPropertiesOnly'
}
if ($SharePoint) {
    Get-HybridTrustSharePointEvidence -Folder (Join-Path -Path $bundle.FullName -ChildPath 'sharepoint') -WebApplication $WebApplication -HybridSite $HybridSite -AppPrincipalNameIdentifier $AppPrincipalNameIdentifier
    $manifest['web_application'] = $WebApplication
}

$manifest['format'] = 'hybridtrust-evidence/1'
$manifest['collected_at'] = (Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ')
$manifest['collector'] = 'HybridTrust-Collect.ps1'
$manifest['computer'] = $env:COMPUTERNAME
$manifest['not_collected'] = $script:NotCollected
$manifest | ConvertTo-Json -Depth 4 | Set-Content -LiteralPath $manifestPath -Encoding UTF8
Write-Output -InputObject "Evidence bundle written to $($bundle.FullName) ($($script:NotCollected.Count) item(s) not collected)"
