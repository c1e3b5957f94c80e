"""Command-line options, the config file, and the service tree they build."""

import pytest
from twisted.internet.testing import MemoryReactorClock

from pushd.config import Config
from pushd.service import ListenService, PushService
from pushd.tap import Options, makeService


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_defaults():
    """With no options: memory backend on tcp:8000, documented limits."""
    assert parse().config == Config()
    assert Config().listen == ("tcp:8000",)
    assert Config().backend == "memory"


def test_port_and_listen():
    """--port N and --listen endpoints both make pushd listen where asked."""
    assert parse("--port", "9000").config.listen == ("tcp:9000",)
    config = parse("-l", "tcp:1:interface=127.0.0.1", "--listen", "unix:/tmp/s").config
    assert config.listen == ("tcp:1:interface=127.0.0.1", "unix:/tmp/s")


def test_config_file_and_command_line_override(tmp_path):
    """Settings come from the config file, and the command line wins over it."""
    path = tmp_path / "pushd.yaml"
    path.write_text(
        "listen: [tcp:7000]\nmax-subscriptions: 7\nclient_key: abc\n"
        "allowed-origins: [https://example.com]\n"
    )
    config = parse("--config", str(path)).config
    assert (config.listen, config.max_subscriptions, config.client_key) == (
        ("tcp:7000",),
        7,
        "abc",
    )
    assert config.allowed_origins == ("https://example.com",)
    config = parse("-c", str(path), "--max-subscriptions", "100", "-p", "7001").config
    assert (config.listen, config.max_subscriptions) == (("tcp:7001",), 100)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--max-subscriptions", "0"], "max-subscriptions in the command line"),
        (["--ping-interval", "-1"], "ping-interval"),
        (["--port", "http"], "--port takes a number"),
        (["--backend", "nosuch"], "unknown backend 'nosuch'"),
        (["--backend", "memory:x=1"], "backend memory: takes no arguments"),
        (["--listen", "tcp:notaport"], "bad listen endpoint 'tcp:notaport'"),
        (["--nope"], "option --nope not recognized"),
    ],
)
def test_bad_options_fail_with_one_line(argv, message, capsys):
    """A bad option value fails at start with one line naming the option."""
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pushd: error: ") and message in err


@pytest.mark.parametrize(
    "content,message",
    [
        ("max-subscriptions: lots\n", "bad value for max-subscriptions in"),
        ("colour: blue\n", "unknown setting 'colour' in"),
        ("listen: [tcp:1\n", "is not valid YAML at line"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_config_file_fails_with_one_line(tmp_path, content, message, capsys):
    """A bad config file fails at start with one line naming the file and setting."""
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SystemExit):
        parse("--config", str(path))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_missing_config_file(capsys):
    """A missing config file fails at start saying it cannot be read."""
    with pytest.raises(SystemExit):
        parse("--config", "/nonexistent/pushd.yaml")
    assert "cannot read config file /nonexistent/pushd.yaml" in capsys.readouterr().err


def test_example_config_is_valid_and_complete():
    """etc/pushd.yaml parses and mentions every setting."""
    import os

    from pushd.config import SETTINGS, load_file

    path = os.path.join(os.path.dirname(__file__), "..", "etc", "pushd.yaml")
    parse("--config", path)
    text = open(path).read()
    for setting in SETTINGS:
        assert "%s:" % setting.name in text, setting.name
    assert set(load_file(path)) <= {s.name for s in SETTINGS}


def test_make_service_builds_listeners_and_generates_a_secret():
    """Without an api-secret pushd still starts, with a generated one, on every listener asked for."""
    options = parse("-l", "tcp:0:interface=127.0.0.1", "-l", "tcp:0")
    service = makeService(options, reactor=MemoryReactorClock())
    assert isinstance(service, PushService)
    listeners = [s for s in service if isinstance(s, ListenService)]
    assert [s.description for s in listeners] == ["tcp:0:interface=127.0.0.1", "tcp:0"]
    assert len(service.hub.config.api_secret) >= 24


def test_help_lists_every_setting():
    """--help documents every setting."""
    from pushd.config import SETTINGS

    text = str(Options())
    for setting in SETTINGS:
        if setting.name == "anonymous":
            assert "--no-anonymous" in text
        elif not setting.file_only:
            assert "--" + setting.name in text


def test_version(capsys):
    """--version prints pushd's version."""
    import pushd

    with pytest.raises(SystemExit) as exit_info:
        parse("--version")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == "pushd %s\n" % pushd.__version__


def test_config_fields_match_the_settings_table():
    """Every Config field is an option, a file setting and a --help line
    (SETTINGS is made from Config), and every default is a value its own
    option accepts: what --help shows is what pushd runs with."""
    import dataclasses

    from pushd.config import SETTINGS

    fields = {f.name for f in dataclasses.fields(Config)}
    assert fields == {s.name.replace("-", "_") for s in SETTINGS}
    for setting in SETTINGS:
        default = (
            setting.default
            if setting.default is None
            else setting.coerce(setting.default)
        )
        assert getattr(Config(), setting.name.replace("-", "_")) == default, (
            setting.name
        )
