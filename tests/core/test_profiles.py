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
