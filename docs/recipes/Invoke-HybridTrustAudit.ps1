<#
.SYNOPSIS
    One scheduled audit on Windows: the collector writes the on-premises evidence, Microsoft Graph
    PowerShell adds the Entra ID documents, and the suite judges the bundle.

.DESCRIPTION
    What the "hybridtrust audit" scheduled task runs (Register-HybridTrustTask.ps1 registers it). Run on
    an Exchange server or a management server with the Exchange Management Tools, where the suite is
    installed in -InstallPath (py -3 -m venv .venv; .venv\Scripts\pip install -e .).

    1. HybridTrust-Collect.ps1 -Exchange, in an Exchange Management Shell session:
       exchange\*.xml and manifest.json into evidence\<date> (read-only).
    2. The Entra ID part of the same bundle (entra\<tenant id>\...), read with Invoke-MgGraphRequest
       (module Microsoft.Graph.Authentication) as an app with Application.Read.All,
       Organization.Read.All and Domain.Read.All, signing in with a certificate from the machine's store:
       the same Graph requests, with the same $select, as a live run of the suite.
    3. The suite on the bundle: reports\<profile>-latest.html, .xml (JUnit), .json and the history the
       trend is drawn from. Its exit status is the task's "Last Run Result": 0 pass, 1 failures at or
       above --fail-on or requirements that could not be evaluated, 4 a usage error.

    Every bundle is kept, so any verdict can be reproduced later with pytest --evidence.

.EXAMPLE
    .\Invoke-HybridTrustAudit.ps1 -TenantId 8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35 `
        -ClientId 3f4c9a43-0f7e-4a56-9a0b-1b2c3d4e5f60 -CertificateThumbprint 1371BEDFDF3ADDD32D64122C5FC63B55176FB5BD
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [string[]] $TenantId,

    [Parameter(Mandatory = $true)]
    [string] $ClientId,

    [Parameter(Mandatory = $true)]
    [string] $CertificateThumbprint,

    [string] $InstallPath = 'C:\hybridtrust',

    [string] $ProfileName = 'contoso',

    [string] $GraphUrl = 'https://graph.microsoft.com/v1.0'
)

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'

# The first-party applications whose service principals the catalog reads (Exchange Online,
# SharePoint Online, Skype for Business Online), and the dedicated hybrid application's name prefix.
$firstPartyAppIds = @(
    '00000002-0000-0ff1-ce00-000000000000',
    '00000003-0000-0ff1-ce00-000000000000',
    '00000004-0000-0ff1-ce00-000000000000'
)
$dedicatedAppPrefix = 'ExchangeServerApp-'

function Save-HybridTrustGraphDocument {
    # One Graph GET saved as the body Graph returned (list responses with every page merged), or, for
    # a 404, Graph's error body: the suite reads that as "this tenant has no such service principal".
    param(
        [Parameter(Mandatory = $true)]
        [string] $Uri,

        [Parameter(Mandatory = $true)]
        [string] $Path,

        [switch] $List
    )
    $folder = Split-Path -Path $Path -Parent
    if (-not (Test-Path -LiteralPath $folder)) {
        New-Item -ItemType Directory -Path $folder -Force | Out-Null
    }
    try {
        $document = Invoke-MgGraphRequest -Method GET -Uri $Uri -OutputType Hashtable
        if ($List) {
            $values = [System.Collections.ArrayList]::new()
            $page = $document
            while ($true) {
                $values.AddRange(@($page['value']))
                if (-not $page.ContainsKey('@odata.nextLink')) {
                    break
                }
                $page = Invoke-MgGraphRequest -Method GET -Uri $page['@odata.nextLink'] -OutputType Hashtable
            }
            $document = [ordered]@{ 'value' = $values }
        }
    }
    catch {
        $response = $_.Exception.Response
        if ($null -eq $response -or [int]$response.StatusCode -ne 404) {
            throw
        }
        $document = @{ 'error' = @{ 'code' = 'Request_ResourceNotFound'; 'message' = $_.Exception.Message } }
    }
    $document | ConvertTo-Json -Depth 20 | Set-Content -LiteralPath $Path -Encoding UTF8
}

$bundle = Join-Path -Path (Join-Path -Path $InstallPath -ChildPath 'evidence') -ChildPath (Get-Date -Format 'yyyy-MM-dd')

# 1. The on-premises evidence, in an Exchange Management Shell session.
. 'C:\Program Files\Microsoft\Exchange Server\V15\bin\RemoteExchange.ps1'
Connect-ExchangeServer -auto -ClientApplication:ManagementShell
& (Join-Path -Path $InstallPath -ChildPath 'hybridtrust\collector\HybridTrust-Collect.ps1') -OutputPath $bundle -Exchange

# The dedicated hybrid applications are also looked up by the appId the AuthServers name (S5).
$hybridAppIds = @(Get-AuthServer | Where-Object -FilterScript { $_.ApplicationIdentifier -match '^[0-9a-fA-F-]{36}$' } |
        ForEach-Object -Process { ([string]$_.ApplicationIdentifier).ToLowerInvariant() } | Sort-Object -Unique)

# 2. The Entra ID documents of every tenant.
foreach ($tenant in $TenantId) {
    Connect-MgGraph -ClientId $ClientId -TenantId $tenant -CertificateThumbprint $CertificateThumbprint -NoWelcome
    $entra = Join-Path -Path (Join-Path -Path $bundle -ChildPath 'entra') -ChildPath $tenant
    Save-HybridTrustGraphDocument -Uri "$GraphUrl/organization" -Path (Join-Path -Path $entra -ChildPath 'organization.json')
    Save-HybridTrustGraphDocument -Uri "$GraphUrl/domains" -Path (Join-Path -Path $entra -ChildPath 'domains.json') -List
    foreach ($appId in $firstPartyAppIds) {
        $uri = "$GraphUrl/servicePrincipals(appId='$appId')?`$select=id,appId,displayName,servicePrincipalNames,replyUrls,keyCredentials"
        Save-HybridTrustGraphDocument -Uri $uri -Path (Join-Path -Path (Join-Path -Path $entra -ChildPath 'servicePrincipals') -ChildPath "$appId.json")
    }
    $filter = "startswith(displayName,'$dedicatedAppPrefix')"
    if ($hybridAppIds.Count -gt 0) {
        $filter += ' or appId in (' + (($hybridAppIds | ForEach-Object -Process { "'$_'" }) -join ', ') + ')'
    }
    $uri = "$GraphUrl/applications?`$filter=$([uri]::EscapeDataString($filter))&`$select=id,appId,displayName,keyCredentials"
    Save-HybridTrustGraphDocument -Uri $uri -Path (Join-Path -Path $entra -ChildPath 'applications.json') -List
    Disconnect-MgGraph | Out-Null
}

# 3. The suite on the bundle.
Set-Location -Path $InstallPath
& (Join-Path -Path $InstallPath -ChildPath '.venv\Scripts\python.exe') -m pytest "--profile=$ProfileName" "--evidence=$bundle" `
    "--reports-dir=$(Join-Path -Path $InstallPath -ChildPath 'reports')" -q --no-header -p no:cacheprovider
exit $LASTEXITCODE
