"""The flow image can be built as shipped: its Python set resolves from binary wheels only (no
compiler in the image), holds no test tool, and its Debian packages resolve in bookworm.

These ask the real package indexes (PyPI, this machine's bookworm apt sources)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import deployspec as spec

LOCK = spec.ROOT / "requirements.lock"
DEV_LOCK = spec.ROOT / "requirements-dev.lock"
DOCKERFILE = (spec.ROOT / "deployments" / "k8s" / "Dockerfile").read_text()
TEST_TOOLS = {"moto", "pytest", "pytest-timeout", "hypothesis", "ruff", "flask", "cfn-lint", "werkzeug"}


def _names(path) -> set[str]:
    return {
        line.split("==")[0].lower()
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    }


def test_the_image_lock_has_no_test_tools_and_the_dev_lock_is_a_superset():
    runtime, dev = _names(LOCK), _names(DEV_LOCK)
    assert runtime & TEST_TOOLS == set()
    assert TEST_TOOLS - {"cfn-lint"} <= dev | {"flask", "werkzeug"}
    assert runtime <= dev
    assert "psycopg2" not in runtime and "psycopg2-binary" in runtime  # barman's driver, as a wheel
    for line in DEV_LOCK.read_text().splitlines():  # the same pins in both
        name = line.split("==")[0].lower()
        if name in runtime:
            assert line in LOCK.read_text().splitlines()


def test_the_image_requirements_resolve_from_manylinux_wheels_only(tmp_path):
    out = subprocess.run(
        [
            spec.ROOT / ".venv" / "bin" / "pip",
            "download",
            "--quiet",
            "--only-binary",
            ":all:",
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
            "--no-deps",
            "-r",
            LOCK,
            "-d",
            tmp_path,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    wheels = {p.name.split("-")[0].lower().replace("_", "-") for p in tmp_path.glob("*.whl")}
    assert len(wheels) == len(_names(LOCK)), "one wheel per locked package"
    assert not list(tmp_path.glob("*.tar.gz")), "an sdist would need a compiler"


def _debian_packages() -> list[str]:
    args = dict(re.findall(r"^ARG (\w+)=(.*)$", DOCKERFILE, re.M))
    block = DOCKERFILE[DOCKERFILE.index("apt-get install") : DOCKERFILE.index("rm -rf /var/lib/apt/lists")]
    packages = []
    for token in re.findall(
        r'"([^"]+)"|\b([a-z0-9][a-z0-9.+-]+)\b', block.split("--no-install-recommends")[1]
    ):
        word = token[0] or token[1]
        packages.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], word))
    return [p for p in packages if p]


def test_the_image_debian_packages_resolve_in_bookworm():
    if shutil.which("apt-get") is None or "bookworm" not in Path("/etc/os-release").read_text():
        pytest.fail(
            "needs Debian bookworm's apt-get: run the tests on the project's test bench (Debian bookworm)"
        )
    packages = _debian_packages()
    assert "postgresql-15=15.20-0+deb12u1" in packages and "postgresql-client-15=15.20-0+deb12u1" in packages
    out = subprocess.run(
        ["apt-get", "install", "--dry-run", "--no-install-recommends", "-qq", *packages],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:] + out.stdout[-2000:]


def test_an_installed_wheel_carries_the_backup_table(tmp_path):
    """The schedules and retentions (backup-table.yaml, at the repository's root) travel in the
    wheel as package data: a non-editable install has no repository root to read them from."""
    import sys
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "backup-table.yaml", "blocks", "tasks", "flows"):
        path = spec.ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert not (site / "backup-table.yaml").exists()  # only packages: the root's copy is not there
    code = "import tasks.table as t; print(sorted(t.backup_table()))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=site, env={"PYTHONPATH": str(site)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(sorted(spec.backup_table()))


def _programs_the_flows_run() -> set[str]:
    """The programs the flows start, read from the code: PostgreSQL's by the names passed to
    `tool(target, ...)` and `bindir / ...`, etcd's from the target block's defaults (the
    throwaway member that restores, drills and verifies run is the `etcd` server)."""
    from blocks.etcd import EtcdTarget

    code = "\n".join(p.read_text() for d in ("tasks", "flows") for p in (spec.ROOT / d).rglob("*.py"))
    found = set(re.findall(r'tool\(target, "([a-z_]+)"\)|bindir(?:\(\))? / "([a-z_]+)"', code))
    programs = {name for pair in found for name in pair if name}
    assert {"pg_dump", "pg_restore", "pg_ctl", "pg_basebackup"} <= programs, programs
    programs |= {"postgres"}  # pg_ctl starts it (PITR recovery and drills)
    if '"tar", "-x"' in code:
        programs.add("tar")
    target = EtcdTarget()
    return programs | {target.etcdctl, target.etcd}


def _owning_package(program: str) -> str:
    from sandbox.services import pg_bindir

    path = shutil.which(program, path=f"{pg_bindir()}:/usr/bin:/bin")
    assert path, f"{program} is not on this test bench, which runs it (scripts/setup.sh)"
    for candidate in dict.fromkeys([path, str(Path(path).resolve()), "/bin/" + program]):
        out = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":")[0]
    raise AssertionError(f"no Debian package owns {path}")


def test_the_image_installs_every_program_the_flows_run():
    """An etcd restore or drill in the cluster restores the snapshot into a throwaway `etcd`
    member: the image must carry the server (etcd-server), not only etcdctl (etcd-client). Each
    program the flows run must come from a package the Dockerfile installs or one it pulls in."""
    if shutil.which("apt-cache") is None or "bookworm" not in Path("/etc/os-release").read_text():
        pytest.fail("needs Debian bookworm's apt-cache: run the tests on the project's test bench")
    listed = [p.split("=")[0] for p in _debian_packages()]
    out = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
         "--no-breaks", "--no-replaces", "--no-enhances", *listed],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    image = {line.strip() for line in out.stdout.splitlines() if not line.startswith(" ")}
    missing = {p: _owning_package(p) for p in sorted(_programs_the_flows_run())}
    missing = {p: pkg for p, pkg in missing.items() if pkg not in image}
    assert missing == {}, f"programs the flows run whose package the image does not install: {missing}"


def test_the_build_context_is_only_what_the_image_copies():
    """.dockerignore is an allow-list: every COPY source gets in; .venv, .run (the test services'
    data and credentials), .git and local stores never reach the build context."""
    ignore = [ln.strip() for ln in (spec.ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in ignore if ln and not ln.startswith("#")]
    assert rules[0] == "*", "start from nothing, then allow what the Dockerfile copies"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            copied |= {src.rstrip("/") for src in line.split()[1:-1] if not src.startswith("--")}
    assert copied == allowed, f"COPY sources {sorted(copied)} vs allowed {sorted(allowed)}"
    for src in copied:
        assert (spec.ROOT / src).exists(), f"the Dockerfile copies {src}, which the repo lacks"
