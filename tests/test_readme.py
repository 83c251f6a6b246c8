"""The README's commands are the ones CI runs, and its example runs."""

import re
from pathlib import Path

from conftest import requires_minilm

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    install, test = (block.strip() for block in fenced_blocks("bash")[:2])
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci and test in ci


@requires_minilm
def test_readme_example_runs(capsys):
    exec(compile(fenced_blocks("python")[0], "README.md", "exec"), {})
    assert "torch.Size([1, 3," in capsys.readouterr().out
