"""The README's commands are the ones CI runs, and its example runs."""

import re
from pathlib import Path

from conftest import requires_minilm

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_installs_runs_and_tests_exactly_as_the_readme_says():
    install, main_job, test = (block.strip() for block in fenced_blocks("bash")[:3])
    assert main_job.startswith("plant-hf fit") and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci and test in ci and main_job in ci


@requires_minilm
def test_readme_example_runs(capsys):
    exec(compile(fenced_blocks("python")[0], "README.md", "exec"), {})
    assert "torch.Size([1, 3," in capsys.readouterr().out
