"""`emu3 serve`'s command line: registered on `emu3`, loopback by default, clear errors before loading."""

import pytest

from emu3.cli import build_parser, main
from emu3.serve.cli import _is_loopback, _settings
from emu3.serve.settings import Settings


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
    (["serve", "--model", "m", "--max-batch-images", "0"], "max_batch_images must be > 0"),
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


@pytest.mark.parametrize("interval", ["nan", "inf", "-1"])
def test_a_bad_preview_interval_is_refused_by_the_parser(capsys, interval):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["serve", "--preview-interval", interval])
    assert done.value.code == 2
    assert (f"argument --preview-interval: the preview interval is a finite number >= 0, got '{interval}'"
            in capsys.readouterr().err)


@pytest.mark.parametrize("interval", [float("nan"), float("inf"), -1.0])
def test_settings_refuse_a_preview_interval_that_is_not_a_finite_number_from_0(interval):
    with pytest.raises(ValueError, match="preview_interval must be a finite number >= 0"):
        Settings(preview_interval=interval)


@pytest.mark.parametrize("key", ["pässwort", "tab\tkey"])
def test_a_key_that_is_not_printable_ascii_is_refused_before_loading(capsys, key):
    """Clients send non-ASCII header text as Latin-1, UTF-8 or not at all: a 'pässwort' key sent as UTF-8
    got 401."""
    pytest.importorskip("fastapi")
    assert main(["serve", "--model", "/no/such/folder", "--api-key", key]) == 2
    err = capsys.readouterr().err
    assert "emu3 serve: error: api_key must be printable ASCII" in err and key not in err


def test_loopback_addresses():
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.2")


@pytest.mark.parametrize("flag, max_n", [("8", 4), ("4", 4), ("2", 2), ("1", 1)])
def test_max_batch_images_also_caps_n(flag, max_n):
    """A request's images are generated in one model call: n may never exceed the batch limit."""
    settings = _settings(build_parser().parse_args(["serve", "--model", "m", "--max-batch-images", flag]))
    assert (settings.max_batch_images, settings.max_n) == (int(flag), max_n)


def test_settings_refuse_n_above_the_batch_limit():
    with pytest.raises(ValueError, match=r"max_n \(3\) must be at most max_batch_images \(2\)"):
        Settings(max_batch_images=2, max_n=3)
