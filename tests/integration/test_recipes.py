"""docs/recipes.md section 2 ("Test code that runs commands") as written: each Python block
is a test module, run here by pytest with the package's plugin, as a user's would be."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import required_backends

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
# What the recipe's `my_project.MyBackend` stands for here: a backend of the package.
MY_PROJECT = "from mechasandbox.backends.process import ProcessBackend as MyBackend\n"


def section_blocks(heading: str) -> list[str]:
    text = RECIPES.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    section = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_testing_recipes_run_as_written(pytester: pytest.Pytester) -> None:
    blocks = section_blocks("## 2. Test code that runs commands")
    assert len(blocks) == 4, "a block was added or removed: say here what it should do"
    pytester.makepyfile(
        **{f"test_recipe_{index}": block for index, block in enumerate(blocks)},
        my_project=MY_PROJECT,
    )
    pytester.syspathinsert()
    result = pytester.runpytest("-p", "no:cacheprovider", "-v", "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == outcomes.get("errors", 0) == 0, result.stdout.str()
    result.stdout.fnmatch_lines_random(
        [
            "*test_recipe_0.py::test_agent_reports_failures PASSED*",
            "*test_recipe_1.py::test_command_line_built_by_the_agent PASSED*",
            "*test_recipe_3.py::TestMyBackend::test_echo_and_exit_code PASSED*",
        ]
    )
    real = "*test_recipe_2.py::test_the_command_writes_only_its_workspace*"
    if outcomes.get("skipped", 0):
        # Only the real sandbox may skip, and only where no backend here holds the policy.
        result.stdout.fnmatch_lines([real + " SKIPPED*"])
        result.stdout.fnmatch_lines(["*no sandbox here enforces the policy*"])
        assert outcomes["skipped"] == 1
        assert not required_backends() & {"bubblewrap", "landlock", "seatbelt"}
    else:
        result.stdout.fnmatch_lines([real + " PASSED*"])


def test_the_streaming_recipe_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Section 4 as written, in a workspace of its own holding the `big.log` it reads."""
    (block,) = section_blocks("## 4. Stream a run")
    (tmp_path / "big.log").write_text("ERROR one\nfine\nERROR two\n")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "recipes.md", "exec"), {"__name__": "recipe"})
    out = capfd.readouterr().out
    assert "out: 1\nout: 2\nout: 3\n" in out
    assert "live: checking\nlive: done\nexit status: 0\n" in out
    assert out.endswith("2\n\n")
