"""`emu3 serve`'s command line: registered on `emu3`, loopback by default, clear errors before loading."""

import pytest

from emu3.cli import build_parser, main
from emu3.serve.cli import _is_loopback


def test_serve_is_a_subcommand_bound_to_loopback_by_default(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--model", "--host", "--port", "--api-key", "--queue-size", "--max-batch-images"):
        assert flag in help_text
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert args.host == "127.0.0.1" and args.port == 8000


def test_api_key_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("EMU3_API_KEY", "from-env")
    assert build_parser().parse_args(["serve"]).api_key == "from-env"


@pytest.mark.parametrize("argv, message", [
    (["serve", "--model", "m", "--queue-size", "0"], "queue_size must be > 0"),
    (["serve", "--model", "m", "--preview-interval", "-1"], "preview_interval must be >= 0"),
    (["serve", "--model", "/no/such/folder"], "/no/such/folder"),
])
def test_errors_name_the_problem(capsys, argv, message):
    pytest.importorskip("fastapi")
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_bad_port_is_refused_by_the_parser(capsys, port):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["serve", "--port", port])
    assert done.value.code == 2
    assert f"argument --port: a port is a whole number from 0 to 65535, got '{port}'" in capsys.readouterr().err


def test_loopback_addresses():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.2")
