"""Create the Prefect blocks an installation needs, idempotently, from a YAML file or env.

    PREFECT_API_URL=... python scripts/create_blocks.py --file deployments/blocks.example.yaml
    KLB_BLOCKS_YAML="$(cat blocks.yaml)" python scripts/create_blocks.py      # e.g. from a Secret
    python scripts/create_blocks.py --file deployments/blocks.example.yaml --check   # validate only

(copy deployments/blocks.example.yaml to blocks.yaml and edit it for your installation.)
It (0) validates every listed block (nothing is registered or saved if one is invalid),
(1) registers every block type in the `blocks` package (what `prefect block register -m
blocks.<module>` does, for all modules at once), (2) creates or updates each listed block,
(3) creates the `klb-component-<name>` concurrency limits (flows/locks.py). Running it again with
the same file changes nothing. Blocks that are not in the file are left alone.

The file (see deployments/blocks.example.yaml):

    blocks:
      - type: klb-s3-store            # a block type slug
        name: production
        data: {bucket: acme-backups, encryption_key: "${KLB_ENCRYPTION_KEY}"}

`${NAME}` in any string is replaced by the environment variable NAME (an unset one is an error):
keep secrets in the environment, never in the file. Output names blocks, never values.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect.blocks.core import Block
from pydantic import BaseModel, Field, ValidationError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class BlockSpec(BaseModel):
    type: str = Field(description="block type slug, e.g. klb-s3-store")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    data: dict[str, Any] = Field(default_factory=dict)


class BlocksFile(BaseModel):
    blocks: list[BlockSpec] = Field(default_factory=list)
    concurrency_limits: bool = Field(default=True, description="create klb-component-* limits")


class SetupError(Exception):
    """A problem with the blocks file or the environment; the message says what to fix."""


def expand_env(value: Any, env: dict[str, str]) -> Any:
    """Replace ${NAME} in every string of a nested structure by the env var NAME."""
    if isinstance(value, str):

        def sub(match: re.Match) -> str:
            name = match.group(1)
            if name not in env:
                raise SetupError(f"environment variable {name} is referenced but not set")
            return env[name]

        return ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    return value


def block_modules() -> list[str]:
    import blocks

    return sorted(f"blocks.{m.name}" for m in pkgutil.iter_modules(blocks.__path__) if not m.ispkg)


def project_block_types() -> list[type[Block]]:
    """Every concrete block class defined in the blocks package (those with their own slug)."""
    found: dict[str, type[Block]] = {}
    for module_name in block_modules():
        module = importlib.import_module(module_name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Block)
                and obj.__module__ == module_name
                and "_block_type_slug" in obj.__dict__
            ):
                found[obj.get_block_type_slug()] = obj
    return [found[k] for k in sorted(found)]


def load_spec(path: str | None, env: dict[str, str]) -> BlocksFile:
    if path == "-":
        text = sys.stdin.read()
    elif path:
        text = Path(path).read_text()
    elif env.get("KLB_BLOCKS_YAML"):
        text = env["KLB_BLOCKS_YAML"]
    else:
        raise SetupError("no blocks given: pass --file FILE (or -) or set KLB_BLOCKS_YAML")
    raw = yaml.safe_load(text) or {}
    try:
        spec = BlocksFile.model_validate(raw)
    except ValidationError as exc:
        raise SetupError(f"invalid blocks file: {exc}") from None
    seen: set[tuple[str, str]] = set()
    for b in spec.blocks:
        if (b.type, b.name) in seen:
            raise SetupError(f"block {b.type}/{b.name} is listed twice")
        seen.add((b.type, b.name))
    return spec


def build_block(spec: BlockSpec, env: dict[str, str]) -> Block:
    project_block_types()  # import the project's block modules so their slugs resolve
    from blocks.strict import validation_problems

    try:
        cls = Block.get_block_class_from_key(spec.type)
    except Exception:
        raise SetupError(f"unknown block type {spec.type!r} (block {spec.name})") from None
    try:
        return cls.model_validate(expand_env(spec.data, env))
    except ValidationError as exc:
        # pydantic's message shows the input; this leaves it out, so no secret reaches the terminal
        raise SetupError(f"block {spec.type}/{spec.name} is invalid: {validation_problems(exc)}") from None


def _normal(value: Any) -> Any:
    """Drop Prefect's bookkeeping (`_block_document_id`...); 3600 and 3600.0 are the same value."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _state(block: Block) -> str:
    """Comparable content of a block, secrets included (never printed)."""
    dumped = block.model_dump(mode="json", context={"include_secrets": True})
    return json.dumps(_normal(dumped), sort_keys=True)


def apply(spec: BlocksFile, env: dict[str, str], log=print) -> dict[str, str]:
    """Register types, save blocks, create limits. Returns {type/name: created|updated|unchanged}."""
    built = [(s, build_block(s, env)) for s in spec.blocks]  # all valid before anything is saved
    for cls in project_block_types():
        cls.register_type_and_schema()
        log(f"registered block type {cls.get_block_type_slug()}")
    actions: dict[str, str] = {}
    for s, block in built:
        key = f"{s.type}/{s.name}"
        try:
            existing = type(block).load(s.name)
        except ValueError:
            existing = None
        if existing is not None and _state(existing) == _state(block):
            actions[key] = "unchanged"
        else:
            block.save(s.name, overwrite=True)
            actions[key] = "created" if existing is None else "updated"
        log(f"{actions[key]:9} {key}")
    if spec.concurrency_limits:
        from flows.locks import ensure_component_limit, lock_name
        from tasks.components.registry import SPECS

        for name, component in {lock_name(c): c for c in SPECS}.items():
            ensure_component_limit(component)
            log(f"limit     {name} (1 slot)")
    return actions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", "-f", help="blocks YAML file ('-' for stdin); default $KLB_BLOCKS_YAML")
    parser.add_argument("--check", action="store_true", help="validate only; contact no server")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    try:
        spec = load_spec(args.file, env)
        if args.check:
            for s in spec.blocks:
                build_block(s, env)
                print(f"valid     {s.type}/{s.name}")
            return 0
        apply(spec, env)
    except SetupError as exc:
        print(f"create_blocks: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
