"""Write tests/durations.json (seconds per test file) from a JUnit report of a whole run, so the
next runs start the longest files first (tests/conftest.py orders them; scripts/test.sh).

    bash scripts/test.sh --junitxml=/tmp/junit.xml -o junit_family=xunit1
    PYTHONPATH=. .venv/bin/python scripts/test_durations.py /tmp/junit.xml
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "durations.json"


def per_file(report: Path) -> dict[str, float]:
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(report).iter("testcase"):  # noqa: S314 (our own pytest wrote it)
        if not case.get("file"):
            raise SystemExit(f"{report}: no 'file' on test cases: run pytest with -o junit_family=xunit1")
        seconds[case.get("file", "")] += float(case.get("time") or 0)
    return {name: round(s, 1) for name, s in sorted(seconds.items(), key=lambda kv: -kv[1])}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    OUT.write_text(json.dumps(per_file(Path(sys.argv[1])), indent=1) + "\n")
    print(f"wrote {OUT}")
