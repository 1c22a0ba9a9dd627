"""xmppd.config: TOML -> typed settings, and ConfigError messages that name the file, the key and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmppd.config import DEFAULT_PLUGINS, SCHEMA, ConfigError, load, parse

PATH = "/etc/xmppd/test.toml"


def error_of(data: dict, path: str = PATH) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data, path)
    return info.value


def assert_located(error: ConfigError, key: str, path: str = PATH) -> str:
    """The message names the file and the key and says how to fix it."""
    text = str(error)
    assert text.startswith(f"{path}:"), text
    assert key in text, text
    assert "fix:" in text, text
    assert error.path == path and error.key is not None and key in error.key
    return text


# -- defaults --------------------------------------------------------------------------------------------


def test_empty_document_gives_every_default():
    config = parse({}, None)
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            assert config.get(section, key) == spec.default, (section, key)
    assert config.domains == ["localhost"]
    assert config.data_dir == Path("xmppd-data")
    assert config.plugins.enabled == DEFAULT_PLUGINS
    assert config.plugins.plugin_paths == []
    assert config.plugins.options == {}
    assert config.hosts == {}
    assert config.path is None


def test_load_none_gives_defaults():
    config = load(None)
    assert config.domains == ["localhost"]
    assert config.get("tls", "required") is True
    assert config.get("storage", "backend") == "sqlite"


def test_default_lists_are_not_shared_between_configs():
    first = parse({}, None)
    first.sections["server"]["admins"].append("x@localhost")
    first.plugins.enabled.append("extra")
    second = parse({}, None)
    assert second.get("server", "admins") == []
    assert "extra" not in second.plugins.enabled
    assert "extra" not in DEFAULT_PLUGINS


def test_given_values_override_defaults_and_others_stay():
    config = parse(
        {
            "server": {"domains": ["example.org"], "max_stanza_size": 65536, "auth_timeout": 2.5},
            "tls": {"required": False},
            "storage": {"backend": "memory"},
            "logging": {"level": "debug"},
        },
        PATH,
    )
    assert config.domains == ["example.org"]
    assert config.get("server", "max_stanza_size") == 65536
    assert config.get("server", "auth_timeout") == 2.5
    assert config.get("server", "max_failed_auth") == 3
    assert config.get("tls", "required") is False
    assert config.get("storage", "backend") == "memory"
    assert config.get("logging", "level") == "debug"
    assert config.path == PATH


def test_domains_are_prepared_case_folded():
    config = parse({"server": {"domains": ["Example.ORG", "CHAT.example.NET", "ÉXAMPLE.com"]}}, PATH)
    assert config.domains == ["example.org", "chat.example.net", "éxample.com"]


# -- type errors -----------------------------------------------------------------------------------------

TYPE_ERRORS = [
    ("server", "domains", "example.org"),
    ("server", "domains", ["ok.org", 5]),
    ("server", "data_dir", 5),
    ("server", "max_stanza_size", "big"),
    ("server", "max_stanza_size", True),
    ("server", "max_stanza_size", 1.5e6),
    ("server", "auth_timeout", "30"),
    ("server", "auth_timeout", False),
    ("server", "admins", "admin@example.org"),
    ("server", "admins", [1]),
    ("server", "max_sessions_per_user", "10"),
    ("server", "max_failed_auth", 2.0),
    ("listen", "c2s", "tcp:5222"),
    ("listen", "c2s", [5222]),
    ("listen", "c2s_direct_tls", "tcp:5223"),
    ("listen", "control", ["/run/x.sock"]),
    ("tls", "certificate", 1),
    ("tls", "key", None),
    ("tls", "required", "yes"),
    ("tls", "required", 1),
    ("storage", "backend", 1),
    ("logging", "level", 3),
]


@pytest.mark.parametrize(("section", "key", "value"), TYPE_ERRORS)
def test_wrong_type_names_file_key_and_fix(section, key, value):
    error = error_of({section: {key: value}})
    text = assert_located(error, f"[{section}] {key}")
    assert SCHEMA[section][key].fix in text


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("server", "max_stanza_size", 100),
        ("server", "auth_timeout", 0),
        ("server", "max_sessions_per_user", 0),
        ("server", "max_failed_auth", -1),
    ],
)
def test_values_below_minimum_are_refused(section, key, value):
    text = assert_located(error_of({section: {key: value}}), f"[{section}] {key}")
    assert "at least" in text


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("storage", "backend", "mysql", "mysql"),
        ("logging", "level", "verbose", "verbose"),
    ],
)
def test_values_outside_choices_are_refused(section, key, value, words):
    text = assert_located(error_of({section: {key: value}}), f"[{section}] {key}")
    assert words in text


@pytest.mark.parametrize("section", ["server", "listen", "tls", "storage", "logging"])
def test_section_that_is_not_a_table(section):
    assert_located(error_of({section: "oops"}), f"[{section}]")


def test_plugins_not_a_table():
    assert_located(error_of({"plugins": ["disco"]}), "[plugins]")


def test_hosts_not_a_table():
    assert_located(error_of({"hosts": ["localhost"]}), "[hosts]")


def test_host_entry_not_a_table():
    assert_located(error_of({"hosts": {"localhost": "disco"}}), '[hosts."localhost"]')


@pytest.mark.parametrize(
    ("key", "value"),
    [("enabled", "disco"), ("enabled", ["disco", 1]), ("plugin_paths", "./p"), ("plugin_paths", [None])],
)
def test_plugins_lists_must_be_lists_of_strings(key, value):
    assert_located(error_of({"plugins": {key: value}}), f"[plugins] {key}")


def test_host_plugins_must_be_a_list_of_strings():
    error = error_of({"hosts": {"localhost": {"plugins": "disco"}}})
    assert_located(error, '[hosts."localhost"] plugins')


# -- unknown keys and sections ---------------------------------------------------------------------------


def test_unknown_key_lists_known_keys():
    text = assert_located(error_of({"server": {"domain": ["x.org"]}}), "[server] domain")
    assert "unknown key" in text
    assert "domains" in text  # the known keys are listed in the fix


def test_unknown_section():
    text = assert_located(error_of({"database": {"url": "x"}}), "[database]")
    assert "unknown section" in text


def test_unknown_host_key():
    text = assert_located(error_of({"hosts": {"localhost": {"tls": True}}}), '[hosts."localhost"] tls')
    assert "unknown key" in text


def test_plugin_scalar_instead_of_table():
    text = assert_located(error_of({"plugins": {"ping": 30}}), "[plugins] ping")
    assert "[plugins.ping]" in text


# -- domains and hosts -----------------------------------------------------------------------------------


def test_no_domain():
    assert_located(error_of({"server": {"domains": []}}), "[server] domains")


@pytest.mark.parametrize("domain", ["bad domain", "a..b", "", "x@y"])
def test_invalid_domain(domain):
    text = assert_located(error_of({"server": {"domains": [domain]}}), "[server] domains")
    assert repr(domain) in text


def test_hosts_for_an_unknown_domain():
    error = error_of({"server": {"domains": ["example.org"]}, "hosts": {"other.org": {"plugins": []}}})
    text = assert_located(error, '[hosts."other.org"]')
    assert "not a served domain" in text


def test_hosts_override_per_domain():
    config = parse(
        {
            "server": {"domains": ["a.example", "b.example"]},
            "plugins": {"enabled": ["disco", "ping"]},
            "hosts": {"b.example": {"plugins": ["version"]}, "a.example": {}},
        },
        PATH,
    )
    assert config.plugins_for("a.example") == ["disco", "ping"]  # no list of its own
    assert config.plugins_for("b.example") == ["version"]
    assert config.hosts["a.example"].plugins is None


def test_hosts_keys_match_domains_whatever_their_case():
    config = parse(
        {"server": {"domains": ["Example.ORG"]}, "hosts": {"EXAMPLE.org": {"plugins": ["ping"]}}}, PATH
    )
    assert config.plugins_for("example.org") == ["ping"]


# -- tls -------------------------------------------------------------------------------------------------


def test_certificate_without_key():
    text = assert_located(error_of({"tls": {"certificate": "/etc/cert.pem"}}), "[tls] certificate")
    assert "key" in text


def test_key_without_certificate():
    assert_located(error_of({"tls": {"key": "/etc/key.pem"}}), "[tls]")


def test_certificate_and_key_together():
    config = parse({"tls": {"certificate": "c.pem", "key": "k.pem"}}, PATH)
    assert config.get("tls", "certificate") == "c.pem"


# -- plugins ---------------------------------------------------------------------------------------------


def test_plugin_option_tables():
    config = parse(
        {
            "plugins": {
                "enabled": ["ping", "mine"],
                "plugin_paths": ["./local"],
                "ping": {"keepalive_interval": 60},
                "mine": {"greeting": "hi", "nested": {"a": 1}},
            }
        },
        PATH,
    )
    assert config.plugins.enabled == ["ping", "mine"]
    assert config.plugins.plugin_paths == ["./local"]
    assert config.plugins.options == {
        "ping": {"keepalive_interval": 60},
        "mine": {"greeting": "hi", "nested": {"a": 1}},
    }


def test_empty_enabled_list_is_allowed():
    assert parse({"plugins": {"enabled": []}}, PATH).plugins.enabled == []


def test_error_helper_locates_in_file():
    config = parse({}, PATH)
    error = config.error("problem", key="[plugins] enabled", fix="do this")
    assert str(error) == f"{PATH}: [plugins] enabled: problem; fix: do this"
    assert "(defaults)" in str(parse({}, None).error("x"))


# -- files -----------------------------------------------------------------------------------------------


def test_load_file(tmp_path):
    path = tmp_path / "xmppd.toml"
    path.write_text(
        '[server]\ndomains = ["Example.org"]\nmax_failed_auth = 5\n\n'
        '[plugins]\nenabled = ["ping"]\n\n[plugins.ping]\nkeepalive_interval = 0\n\n'
        '[hosts."example.org"]\nplugins = []\n'
    )
    config = load(str(path))
    assert config.path == str(path)
    assert config.domains == ["example.org"]
    assert config.get("server", "max_failed_auth") == 5
    assert config.plugins.options == {"ping": {"keepalive_interval": 0}}
    assert config.plugins_for("example.org") == []


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nmax_failed_auth = "3"\n')
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert_located(info.value, "[server] max_failed_auth", path=str(path))


def test_sample_configuration_is_valid():
    sample = Path(__file__).resolve().parents[2] / "etc" / "xmppd.toml"
    config = load(str(sample))
    assert config.domains == ["localhost"]


def test_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[server\ndomains = [\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    text = str(info.value)
    assert text.startswith(f"{path}:")
    assert "not valid TOML" in text and "line" in text
    assert "fix:" in text


def test_duplicate_key_is_invalid_toml(tmp_path):
    path = tmp_path / "dup.toml"
    path.write_text("[tls]\nrequired = true\nrequired = false\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(str(path))


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as info:
        load(str(path))
    text = str(info.value)
    assert str(path) in text and "not found" in text and "fix:" in text


def test_unreadable_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path))  # a directory
    assert str(tmp_path) in str(info.value) and "fix:" in str(info.value)
