"""Shared pytest fixtures: paths to the parity fixtures in ../shared (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EMU3_FIXTURE = SHARED / "fixtures" / "emu3-tiny-original"
EMU35_FIXTURE = SHARED / "fixtures" / "emu35-tiny-original"


@pytest.fixture(scope="session")
def emu3_fixture() -> Path:
    """The tiny Emu3 checkpoint in the original format, with golden outputs of the original code."""
    if not EMU3_FIXTURE.is_dir():
        pytest.skip(f"parity fixture not found at {EMU3_FIXTURE}")
    return EMU3_FIXTURE


@pytest.fixture(scope="session")
def emu35_fixture() -> Path:
    """The tiny Emu3.5 checkpoint in the official formats, with golden outputs."""
    if not EMU35_FIXTURE.is_dir():
        pytest.skip(f"parity fixture not found at {EMU35_FIXTURE}")
    return EMU35_FIXTURE


@pytest.fixture(scope="session")
def golden(emu3_fixture: Path) -> dict:
    """golden.json of the Emu3 fixture."""
    import json

    return json.loads((emu3_fixture / "golden.json").read_text())


@pytest.fixture(scope="session")
def golden_tensors(emu3_fixture: Path) -> dict:
    """golden.safetensors of the Emu3 fixture."""
    from safetensors.torch import load_file

    return load_file(str(emu3_fixture / "golden.safetensors"))


@pytest.fixture(scope="session")
def tiny(emu3_fixture: Path):
    """The fixture's LM, tokenizer and vision tokenizer loaded once (fp32, CPU)."""
    from emu3.pipelines import Emu3

    return Emu3.load(emu3_fixture / "Emu3-tiny")
