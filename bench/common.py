"""What every benchmark script records the same way: package versions, the source commit it ran
on, and the JSON results file (plus cleaning up its scratch data)."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def versions(packages) -> dict:
    """{package: installed version or None}."""
    out = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def source_state() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether src/ has uncommitted changes) of the volbridge checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip())
    except OSError:  # no git here
        return None, None
    return commit or None, dirty


def write_result(out: Path, result: dict) -> int:
    """Write ``result`` (with its ``failures`` list) as JSON to ``out``; the exit status."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    failures = result.get("failures")
    print(f"\nJSON: {out}" + (f"\nFAILURES: {failures}" if failures else ""))
    return 1 if failures else 0


def finish(args, result: dict, work: Path, failures, text: str | None = None) -> int:
    """Write ``result`` to ``args.out`` as JSON (or ``text`` instead, when given: a Markdown report
    that embeds it), drop the scratch directory unless kept; the exit status."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n" if text is None else text)
    print(f"\n{'JSON' if text is None else 'Report'}: {args.out}")
    if args.dir is None and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0
