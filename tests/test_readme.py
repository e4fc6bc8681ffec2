"""The README and the pages in docs/ stay true.

The line before each ```python or ```bash block says what the block needs:

- ``<!-- offline -->``: runs as written, in a subprocess, in a temporary folder (relative paths
  such as ``runs/...`` land there) whose ``~`` holds the small official-format fixtures the
  text names (``~/hotpotqa``); ``python -m experiments.train`` gets tiny ``--set`` sizes
  appended so that it runs in seconds. Blocks of one page run in order, sharing that folder.
- ``<!-- needs network -->``, ``<!-- gpu -->``, ``<!-- tpu -->``, ``<!-- not run -->``: not run.
  Python is compiled and its imports resolved; shell is checked by ``bash -n``, each
  ``python -m`` command's arguments are parsed by that module (a train command's ``--set``
  keys are applied to its config, a reproduce command lists its cells), scripts and make
  targets must exist.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import importlib.util
import io
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FIXTURES = ROOT / "tests" / "data" / "fixtures"
MARKERS = ("offline", "needs network", "gpu", "tpu", "not run")
# Appended to every `python -m experiments.train` of an offline block (tests/training/
# test_cli.py's sizes): the same code path as the page's command, in seconds.
TINY = ["data.num_train=24", "data.num_eval=8", "data.batch_size=4", "train.num_steps=4",
        "train.checkpoint_every=2", "model.d_model=16", "model.num_layers=1"]
# Commands that compile models: a page running any of them takes well over 20 s.
SLOW_COMMANDS = ("experiments.train", "experiments.evaluate", "benchmarks.")
TORCH = importlib.util.find_spec("torch") is not None
FENCE = re.compile(r"^(?:<!-- (?P<marker>[^>]*?) -->\n)?```(?P<language>\w*)\n(?P<body>.*?)^```$",
                   re.M | re.S)


@dataclasses.dataclass(frozen=True)
class Block:
    page: pathlib.Path
    line: int
    language: str
    marker: str | None
    body: str

    def __str__(self):
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: pathlib.Path) -> list[Block]:
    """The page's python and bash blocks, with the marker line before each."""
    text = page.read_text()
    return [Block(page, text.count("\n", 0, match.start("body")), match["language"],
                  match["marker"], match["body"])
            for match in FENCE.finditer(text) if match["language"] in ("python", "bash")]


def commands(body: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    lines = (re.sub(r"(^|\s+)#.*$", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def python_module(command: str) -> tuple[str, list[str]] | None:
    """``(module, arguments)`` of a ``python -m module ...`` command, else None."""
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
        words.pop(0)
    if words[:2] == ["python", "-m"]:
        return words[2], words[3:]
    return None


BLOCKS = [block for page in PAGES for block in code_blocks(page)]
CHECKED = [block for block in BLOCKS if block.marker != "offline"]
OFFLINE_PAGES = [page for page in PAGES
                 if any(b.marker == "offline" for b in code_blocks(page))]


def _is_slow(page: pathlib.Path) -> bool:
    return any(name in command for block in code_blocks(page)
               if block.marker == "offline" and block.language == "bash"
               for command in commands(block.body) for name in SLOW_COMMANDS)


# --- what every page must satisfy ---------------------------------------------------------

def test_readme_starts_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands_ = [line.split("#")[0].strip() for line in first_block.splitlines()
                 if line.strip()]
    assert commands_ == ["make demo", "make test"]


def test_readme_every_code_block_says_what_it_needs():
    unmarked = [f"{b}: {b.marker!r}" for b in BLOCKS if b.marker not in MARKERS]
    assert not unmarked, f"blocks without one of the markers {MARKERS}: {unmarked}"
    readme = [b for b in BLOCKS if b.page == README]
    assert any(b.marker == "offline" and b.language == "python" for b in readme)
    assert any(b.marker == "offline" and b.language == "bash" for b in readme)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_and_docs_links_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", file.read_text(), flags=re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


# --- blocks that are not run: checked -------------------------------------------------------

class _Parsed(BaseException):
    """Raised in place of running a command once its arguments have parsed (a BaseException,
    so that no ``except Exception`` in a script swallows it)."""


def _parse_arguments(module_name: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    module = importlib.import_module(module_name)
    parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(parse_args(self, args, namespace))

    error = io.StringIO()
    with monkeypatch.context() as patch, contextlib.redirect_stderr(error):
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
        try:
            module.main(argv)
        except _Parsed as parsed:
            return parsed.args[0]
        except SystemExit:
            pass
    pytest.fail(f"python -m {module_name} {shlex.join(argv)}: arguments rejected\n"
                f"{error.getvalue()}")


def _check_command(command: str, monkeypatch, capsys) -> None:
    words = shlex.split(command)
    module = python_module(command)
    if module:
        name, argv = module
        args = _parse_arguments(name, argv, monkeypatch)
        if name == "experiments.train":
            from experiments.cli import load_config

            monkeypatch.chdir(ROOT)  # config paths are relative to the clone
            load_config(args.config, args.set)
        if name == "experiments.reproduce":
            from experiments import reproduce

            assert reproduce.main([*argv, "--list"]) == 0, capsys.readouterr().err
            capsys.readouterr()
        return
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words.pop(0)
    if words[0] == "export":
        return
    if words[0] in ("srun", "mpirun"):  # a cluster launcher wrapping one of our scripts
        words = words[words.index("bash"):]
    if words[0] == "bash":
        assert (ROOT / words[1]).is_file(), f"{command}: no script {words[1]}"
    elif words[:3] == ["gcloud", "storage", "buckets"]:
        return  # Google Cloud's own CLI (syntax checked by bash -n only)
    elif words[0] == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in words[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make {target}"
    elif words[:3] == ["pip", "install", "-e"]:
        assert words[3] == "." and "[project]" in (ROOT / "pyproject.toml").read_text()
    else:
        pytest.fail(f"{command}: the test does not know how to check this command")


# Test-only dependencies that exist on Python 3.11 alone (requirements-test.txt): a block that
# imports one is checked only where it is installed.
TORCH_STACK = ("torch", "sentence_transformers")


def _uses_missing_torch_stack(block: Block) -> bool:
    names = {alias.name.split(".")[0] for node in ast.walk(ast.parse(block.body))
             if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(ast.parse(block.body))
              if isinstance(node, ast.ImportFrom) and node.module}
    return any(name in names and importlib.util.find_spec(name) is None
               for name in TORCH_STACK)


def _check_imports(block: Block) -> None:
    if _uses_missing_torch_stack(block):
        return  # compiled above; its imports need the Python 3.11 test stack
    for node in ast.walk(ast.parse(block.body)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"), f"{block}: {node.module}.{alias.name}"


@pytest.mark.parametrize("block", CHECKED, ids=str)
def test_readme_blocks_that_are_not_run_are_checked(block, monkeypatch, capsys):
    if block.language == "python":
        compile(block.body, str(block), "exec")
        _check_imports(block)
        return
    syntax = subprocess.run(["bash", "-n"], input=block.body, text=True, capture_output=True,
                            check=False)
    assert syntax.returncode == 0, f"{block}: {syntax.stderr}"
    for command in commands(block.body):
        _check_command(command, monkeypatch, capsys)


# --- offline blocks: run ------------------------------------------------------------------

def _sandbox(tmp_path) -> tuple[pathlib.Path, dict]:
    """(the folder to run in, the environment): ``~`` holds the fixture files the pages
    name, and ``experiments/`` is there as in a clone (configs are named relative to it)."""
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "hotpotqa").mkdir(parents=True)
    shutil.copy(FIXTURES / "hotpot_dev_distractor.json",
                home / "hotpotqa" / "hotpot_dev_distractor_v1.json")
    work.mkdir()
    (work / "experiments").symlink_to(ROOT / "experiments")
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return work, env


def _run(what: str, argv: list[str], work: pathlib.Path, env: dict) -> None:
    result = subprocess.run(argv, cwd=work, env=env, text=True, capture_output=True,
                            timeout=600, check=False)
    output = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, f"{what} failed (exit {result.returncode}):\n{output}"


@pytest.mark.parametrize("page", [pytest.param(p, marks=[pytest.mark.slow] * _is_slow(p),
                                               id=str(p.relative_to(ROOT)))
                                  for p in OFFLINE_PAGES])
def test_readme_offline_blocks_run(page, tmp_path):
    work, env = _sandbox(tmp_path)
    for block in code_blocks(page):
        if block.marker != "offline":
            continue
        if block.language == "python":
            if _uses_missing_torch_stack(block):
                continue  # torch / sentence-transformers: test dependencies on 3.11 only
            script = tmp_path / f"block_{block.line}.py"
            script.write_text(block.body)
            _run(str(block), [sys.executable, str(script)], work, env)
            continue
        for command in commands(block.body):
            module = python_module(command)
            if module and module[0] == "experiments.train":
                command += "".join(f" --set {setting}" for setting in TINY)
            if module and module[0] == "benchmarks.torch_reference" and not TORCH:
                continue  # torch is a test dependency on Python 3.11 only
            _run(f"{block}: {command}", ["bash", "-c", command], work, env)
