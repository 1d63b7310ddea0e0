"""Every command in README.md and docs/*.md runs as written: the safe ones are run here
(`python scripts/... --help`, `python -m ... --help`), the others are checked against the
repository (the files and directories they name exist, or an earlier `cp` in the same block
makes them; the pytest paths and test names exist; `prefect deployment run` names a deployment
of prefect.yaml; the helm install passes the base job template worker-values.yaml relies on)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests import deployspec as spec

ROOT = spec.ROOT
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH_FLAGS = {"-f", "--file", "--prefect-file", "--base-job-template", "-k", "--values"}


def _shell_blocks(text: str) -> list[str]:
    """The fenced blocks marked bash/sh/shell or unmarked (fences opened and closed line by line)."""
    blocks, current, lang = [], None, ""
    for line in text.splitlines():
        fence = line.strip()
        if fence.startswith("```"):
            if current is None:
                current, lang = [], fence[3:].strip()
            else:
                if lang in ("", "bash", "sh", "shell", "console"):
                    blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def commands() -> list[tuple[str, list[str], set[str]]]:
    """(where, argv, paths made earlier in the block) for every shell line in a fenced block."""
    found = []
    for doc in DOCS:
        for block in _shell_blocks(doc.read_text()):
            made: set[str] = set()
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split(" # ")[0].strip().removeprefix("$ ")
                if not line or line.startswith("#"):
                    continue
                for part in re.split(r"\s*(?:&&|;)\s*", line):
                    try:
                        argv = shlex.split(part)
                    except ValueError:
                        continue
                    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):  # VAR=value cmd
                        argv = argv[1:]
                    if argv:
                        found.append((f"{doc.relative_to(ROOT)}: {part}", argv, set(made)))
                        if argv[0] == "cp" and len(argv) >= 3:
                            made.add(argv[-1])
    return found


COMMANDS = commands()


def _python_entry(argv: list[str]) -> list[str] | None:
    if not argv or not re.match(r"^(python3?(\.11)?|\.venv/bin/python)$", argv[0]):
        return None
    rest = argv[1:]
    if rest[:1] == ["-m"] and len(rest) > 1 and rest[1] != "pytest":
        return ["-m", rest[1]]
    if rest and rest[0].startswith("scripts/") and rest[0].endswith(".py"):
        return [rest[0]]
    return None


ENTRIES = sorted({tuple(e) for _, argv, _ in COMMANDS if (e := _python_entry(argv))})


@pytest.mark.parametrize("entry", ENTRIES, ids=" ".join)
def test_python_commands_of_the_docs_run(entry):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, *entry, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"{' '.join(entry)} --help: {out.stderr[-1500:]}"


def _is_repo_path(value: str) -> bool:
    return not re.search(r"[<>$~*]|^/|^https?:", value) and bool(value)


def test_files_named_in_the_docs_commands_exist():
    missing = []
    for where, argv, made in COMMANDS:
        for i, arg in enumerate(argv):
            values = []
            if arg in PATH_FLAGS and i + 1 < len(argv):
                values.append(argv[i + 1])
            if arg == "--set-file" and i + 1 < len(argv):
                values.append(argv[i + 1].split("=", 1)[-1])
            if arg.startswith(("scripts/", "deployments/", "docs/", "tests/")):
                values.append(arg.split("::")[0])
            for value in values:
                if _is_repo_path(value) and value not in made and not (ROOT / value).exists():
                    missing.append(f"{where} -> {value}")
    assert missing == []


def test_pytest_ids_in_the_docs_exist():
    missing = []
    for where, argv, _ in COMMANDS:
        for arg in argv:
            if arg.startswith("tests/") and "::" in arg:
                path, name = arg.split("::", 1)
                func = name.split("[")[0]
                if (ROOT / path).exists() and f"def {func}(" not in (ROOT / path).read_text():
                    missing.append(f"{where} -> {arg}")
    assert missing == []


def test_deployments_run_by_name_in_the_docs_exist():
    names = {f"{d['entrypoint'].split(':')[1].replace('_', '-')}/{d['name']}" for d in spec.deployments()}
    wrong = [
        f"{where} -> {argv[3]}"
        for where, argv, _ in COMMANDS
        if argv[:3] == ["prefect", "deployment", "run"] and len(argv) > 3 and argv[3] not in names
    ]
    assert wrong == []


def test_the_helm_install_passes_the_base_job_template():
    installs = [
        (w, a) for w, a, _ in COMMANDS if a[:2] == ["helm", "install"] and "worker-values.yaml" in " ".join(a)
    ]
    assert installs
    for where, argv in installs:
        assert "--set-file" in argv, where
        assert "worker.config.baseJobTemplate.configuration=deployments/k8s/base-job-template.json" in argv, (
            where
        )
