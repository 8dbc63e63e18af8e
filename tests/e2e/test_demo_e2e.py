"""`make demo` is the product's main job on the embedded defaults: the whole prospect-to-cash story, both ways,
through the real code path. It must end with every record as expected (exit code 0) and print both sides."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2csync.demo import run_demo

pytestmark = pytest.mark.e2e


async def test_the_demo_story_ends_as_expected_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_demo(workdir=tmp_path / "demo") == 0
    out = capsys.readouterr().out
    assert "F&O released products -> Sales products" in out
    assert "order ORD-D01 back" in out and "order FO-D01 (made in F&O)" in out
    assert "FAILED" not in out
    assert out.rstrip().endswith("ended as expected, both ways")
