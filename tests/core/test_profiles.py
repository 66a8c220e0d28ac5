"""Profiles: the shipped ones load, and every mistake gets one line that says what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridtrust.profile import ProfileError, load_profile
from tests.support import REPOSITORY

EXAMPLE = (REPOSITORY / "profiles" / "example.toml").read_text()


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPOSITORY / "profiles").glob("*.toml")))
def test_shipped_profiles_load(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name and profile.tenants


def test_dedicated_hybrid_app_is_on_by_default_with_exchange_oauth_or_hma() -> None:
    assert "dedicated-hybrid-app" in load_profile("example").scenarios


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('cloud = "global"', 'cloud = "europe"'),
            "[organization] key 'cloud' is 'europe': expected 'global', 'gcchigh', 'dod' or 'china'",
        ),
        (('"sharepoint-s2s"]', '"sharepoint"]'), "key 'scenarios[4]' is 'sharepoint'"),
        (
            ('uri = "https://ex01.contoso.com/PowerShell"', 'uri = "ex01"'),
            "[exchange] key 'uri' is 'ex01': expected an http:// or https:// URL",
        ),
        (("# max_concurrency = 8", "max_concurrency = 40"), "[exchange] key 'max_concurrency' is 40"),
        (('method = "certificate"', 'method = "secret"'), "method 'secret' needs secret_env"),
        (
            ('# secret_env = "HYBRIDTRUST_GRAPH_SECRET"', 'secret_env = "s3cr3t-value!"'),
            "expected the NAME of an environment variable",
        ),
        (
            ('initial_domain = "contoso.onmicrosoft.com"', 'initial_domain = "contoso.com"'),
            "expected the tenant's initial domain",
        ),
        (("[organization]", "[organization"), "not valid TOML"),
    ],
)
def test_mistakes_are_one_line_naming_the_file_and_key(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in EXAMPLE
    path = tmp_path / "broken.toml"
    path.write_text(EXAMPLE.replace(old, new, 1))
    with pytest.raises(ProfileError) as error:
        load_profile(str(path))
    message = str(error.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def test_a_secret_value_never_appears_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "leaky.toml"
    path.write_text(EXAMPLE.replace('# password_env = "HYBRIDTRUST_EXCHANGE_PASSWORD"', 'password = "Pa55w0rd!"'))
    with pytest.raises(ProfileError) as error:
        load_profile(str(path))
    assert "unknown key 'password'" in str(error.value) and "Pa55w0rd!" not in str(error.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # A quoted "false" was read as False by pydantic's lax mode: TLS verification silently off.
        (
            ("# verify_tls = true", 'verify_tls = "false"'),
            "[exchange] key 'verify_tls' is 'false': expected a boolean (true/false, unquoted)",
        ),
        (
            ("# primary = true", 'primary = "false"'),
            "[tenants][1] key 'primary' is 'false': expected a boolean (true/false, unquoted)",
        ),
        (
            ("# primary = true", 'primary = "yes"'),
            "[tenants][1] key 'primary' is 'yes': expected a boolean (true/false, unquoted)",
        ),
        (
            ("# resource_forest = false", "resource_forest = 0"),
            "[organization] key 'resource_forest' is 0: expected a boolean (true/false, unquoted)",
        ),
        (
            ("# dedicated_hybrid_app = true", 'dedicated_hybrid_app = "off"'),
            "[organization] key 'dedicated_hybrid_app' is 'off': expected a boolean (true/false, unquoted)",
        ),
        # Lax integers and numbers took `true` as 1 and "8" as 8.
        (
            ("# max_concurrency = 8", "max_concurrency = true"),
            "[exchange] key 'max_concurrency' is true: expected a whole number (unquoted)",
        ),
        (
            ("# max_concurrency = 8", 'max_concurrency = "8"'),
            "[exchange] key 'max_concurrency' is '8': expected a whole number (unquoted)",
        ),
        (
            ("# operation_timeout_seconds = 120", "operation_timeout_seconds = true"),
            "[exchange] key 'operation_timeout_seconds' is true: expected a number (unquoted)",
        ),
        (
            ("# timeout_seconds = 60", 'timeout_seconds = "60"'),
            "[entra] key 'timeout_seconds' is '60': expected a number (unquoted)",
        ),
        (
            ("# latency_ms = 0", "latency_ms = false"),
            "[lab] key 'latency_ms' is false: expected a whole number (unquoted)",
        ),
    ],
)
def test_booleans_and_numbers_are_not_coerced_from_other_types(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in EXAMPLE
    text = EXAMPLE.replace(old, new, 1)
    # The commented-out tables of the example must exist for their keys to land there.
    text = text.replace("# [entra]", "[entra]").replace("# [lab]", "[lab]")
    path = tmp_path / "quoted.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as error:
        load_profile(str(path))
    assert str(error.value) == f"{path}: {expected}"


def test_real_toml_booleans_and_numbers_still_load(tmp_path: Path) -> None:
    text = (
        EXAMPLE.replace("# verify_tls = true", "verify_tls = false")
        .replace("# primary = true", "primary = true")
        .replace("# resource_forest = false", "resource_forest = true")
        .replace("# dedicated_hybrid_app = true", "dedicated_hybrid_app = false")
        .replace("# max_concurrency = 8", "max_concurrency = 12")
        .replace("# connect_timeout_seconds = 30", "connect_timeout_seconds = 7.5")
        .replace("# operation_timeout_seconds = 120", "operation_timeout_seconds = 90")
    )
    path = tmp_path / "typed.toml"
    path.write_text(text)
    profile = load_profile(str(path))
    assert profile.exchange is not None
    assert profile.exchange.verify_tls is False
    assert profile.tenants[0].primary is True
    assert profile.organization.resource_forest is True
    assert profile.organization.dedicated_hybrid_app is False
    assert profile.exchange.max_concurrency == 12
    assert profile.exchange.connect_timeout_seconds == 7.5
    assert profile.exchange.operation_timeout_seconds == 90
