<#
.SYNOPSIS
    Registers the Windows scheduled task "\hybridtrust\hybridtrust audit": every weekday at 05:30,
    Invoke-HybridTrustAudit.ps1 collects the evidence and the suite judges it.

.DESCRIPTION
    Run once, elevated, on the server where the suite is installed in -InstallPath, with
    Invoke-HybridTrustAudit.ps1 copied there. The task runs as -Account, which needs read access to the
    Exchange configuration (the "View-Only Organization Management" role group) and the private key of
    the Entra ID app's certificate in its certificate store. The task's "Last Run Result" is the suite's
    exit status: 0 pass, 1 failures or requirements that could not be evaluated, 4 a usage error.

.EXAMPLE
    .\Register-HybridTrustTask.ps1 -Account 'CONTOSO\svc-hybridtrust' -TenantId 8a3f2c1e-5b7d-4e9a-9c2f-1d6e0b4a7c35 `
        -ClientId 3f4c9a43-0f7e-4a56-9a0b-1b2c3d4e5f60 -CertificateThumbprint 1371BEDFDF3ADDD32D64122C5FC63B55176FB5BD
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory = $true)]
    [string] $Account,

    [Parameter(Mandatory = $true)]
    [string[]] $TenantId,

    [Parameter(Mandatory = $true)]
    [string] $ClientId,

    [Parameter(Mandatory = $true)]
    [string] $CertificateThumbprint,

    [string] $InstallPath = 'C:\hybridtrust',

    [string] $ProfileName = 'contoso'
)

Set-StrictMode -Version 2.0
$ErrorActionPreference = 'Stop'

$script = Join-Path -Path $InstallPath -ChildPath 'Invoke-HybridTrustAudit.ps1'
if (-not (Test-Path -LiteralPath $script)) {
    throw "Copy docs\recipes\Invoke-HybridTrustAudit.ps1 to $InstallPath first."
}
$arguments = @(
    '-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-File', "`"$script`"",
    '-TenantId', ($TenantId -join ','), '-ClientId', $ClientId, '-CertificateThumbprint', $CertificateThumbprint,
    '-InstallPath', "`"$InstallPath`"", '-ProfileName', $ProfileName
) -join ' '

$action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument $arguments -WorkingDirectory $InstallPath
$trigger = New-ScheduledTaskTrigger -Weekly -DaysOfWeek 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday' -At '05:30'
$settings = New-ScheduledTaskSettingsSet -StartWhenAvailable -ExecutionTimeLimit (New-TimeSpan -Hours 1) -MultipleInstances IgnoreNew
$credential = Get-Credential -UserName $Account -Message 'The account the audit runs as'
$password = $credential.GetNetworkCredential().Password
Register-ScheduledTask -TaskName 'hybridtrust audit' -TaskPath '\hybridtrust\' -Action $action -Trigger $trigger `
    -Settings $settings -User $credential.UserName -Password $password `
    -Description "hybridtrust: collect evidence and audit the hybrid OAuth trust of $ProfileName" -Force
