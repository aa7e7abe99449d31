"""Results I/O: every chapter writes ``results/<chapter>/<profile>/``, atomically.

- ``metrics.json``: flat ``{name: value}``, floats rounded to 4 decimals, keys sorted; deterministic
  so that it diffs cleanly and can be compared run to run.
- ``table.csv``: tidy rows (``experiment, setting, metric, value`` plus any extra columns).
- ``claims.json``: one record per checked claim (see :mod:`outlierbook.claims`).
- ``run.json``: what produced them (git sha, profile, parameters, package versions, wall time);
  never compared, because it changes run to run.

Each file is written to a temporary sibling and moved into place with ``os.replace``, so an
interrupted run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pandas as pd

from .errors import ConfigError, OutlierBookError
from .paths import repo_root, results_dir
from .registry import check_profile

ROUND = 4
VERSIONED_PACKAGES = ("torch", "transformers", "accelerate", "numpy", "pandas", "scipy", "outlierbook")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rounded(value, digits: int = ROUND):
    """Round floats (recursively in dicts/lists) for stable, diff-friendly output."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return round(value, digits)
    if isinstance(value, int):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return rounded(value.item(), digits)
    if isinstance(value, dict):
        return {str(k): rounded(v, digits) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def dumps(value) -> str:
    """The JSON a checked notebook cell prints: rounded, sorted, one line."""
    return json.dumps(rounded(value), sort_keys=True, ensure_ascii=False)


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo_root(), capture_output=True, text=True, timeout=10)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


class Recorder:
    """Collects one chapter run's metrics, table rows and claim records, and writes them atomically."""

    def __init__(self, chapter: str, profile: str, params: dict | None = None, root: Path | None = None):
        self.chapter = chapter
        self.profile = check_profile(profile)
        self.params = dict(params or {})
        self.dir = Path(root or results_dir()) / chapter / profile
        self.metrics: dict = {}
        self.rows: list[dict] = []
        self.claims: list[dict] = []
        self._started = time.time()
        self._git_sha = git_sha()  # the code that runs is the code at the start; a long run may outlive commits

    def metric(self, name: str, value) -> None:
        self.metrics[name] = value

    def update(self, metrics: dict) -> None:
        self.metrics.update(metrics)

    def add_rows(self, rows) -> None:
        """Add tidy rows: a list of dicts or a DataFrame."""
        if isinstance(rows, pd.DataFrame):
            rows = rows.to_dict("records")
        self.rows.extend(dict(r) for r in rows)

    def add_claim(self, record: dict) -> None:
        self.claims = [c for c in self.claims if c["id"] != record["id"]] + [record]
        self._write_claims()

    def _write_claims(self) -> None:
        atomic_write_text(self.dir / "claims.json", json.dumps(rounded(self.claims), indent=1, ensure_ascii=False) + "\n")

    def save(self, extra_run_info: dict | None = None) -> Path:
        atomic_write_text(self.dir / "metrics.json", json.dumps(rounded(self.metrics), indent=1, sort_keys=True) + "\n")
        if self.rows:
            frame = pd.DataFrame(self.rows)
            atomic_write_text(self.dir / "table.csv", frame.to_csv(index=False, float_format="%.6g"))
        self._write_claims()
        run = {
            "chapter": self.chapter,
            "profile": self.profile,
            "params": self.params,
            "git_sha": self._git_sha,
            **({"git_sha_at_finish": finish_sha} if (finish_sha := git_sha()) != self._git_sha else {}),
            "versions": package_versions(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "wall_time_s": round(time.time() - self._started, 1),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra_run_info or {}),
        }
        atomic_write_text(self.dir / "run.json", json.dumps(rounded(run, 6), indent=1, sort_keys=True, default=str) + "\n")
        return self.dir


def load(chapter: str, profile: str, fallback: str | None = None, root: Path | None = None) -> dict:
    """Load a chapter's metrics, table and claims (``fallback`` profile if the first is absent)."""
    for prof in [profile] + ([fallback] if fallback else []):
        check_profile(prof)
        d = Path(root or results_dir()) / chapter / prof
        if (d / "metrics.json").is_file():
            out = {"profile": prof, "metrics": json.loads((d / "metrics.json").read_text())}
            out["table"] = pd.read_csv(d / "table.csv") if (d / "table.csv").is_file() else pd.DataFrame()
            out["claims"] = json.loads((d / "claims.json").read_text()) if (d / "claims.json").is_file() else []
            run = d / "run.json"
            out["run"] = json.loads(run.read_text()) if run.is_file() else {}
            return out
    raise OutlierBookError(
        f"no results for chapter {chapter!r} (profile {profile}{' or ' + fallback if fallback else ''}); "
        f"run it first: python -m outlierbook run {chapter} --profile {profile}"
    )


def check_param_names(given: dict, allowed) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; this chapter takes: {', '.join(sorted(allowed))}")


def stored_full_run(chapter: str, root: Path | None = None) -> dict | None:
    """:func:`load` of a chapter's full-profile results, or ``None`` if the full profile has not been run."""
    try:
        return load(chapter, "full", root=root)
    except OutlierBookError:
        return None


def full_profile_claims(chapter: str, root: Path | None = None) -> pd.DataFrame | None:
    """The claim verdicts of a chapter's stored full-profile run, one row per claim (``None`` if it has
    not been run): lets a quick build of the book show the real run's outcome beside its own."""
    stored = stored_full_run(chapter, root)
    if stored is None or not stored["claims"]:
        return None
    rows = [{"id": c["id"], "holds": c["holds"], "ours": json.dumps(c.get("ours"), ensure_ascii=False, default=str)}
            for c in stored["claims"]]
    return pd.DataFrame(rows, columns=["id", "holds", "ours"]).set_index("id")


def full_profile_table(chapter: str, prefix: str, root: Path | None = None) -> pd.DataFrame | None:
    """One table of a chapter's stored full-profile run, rebuilt from its ``metrics.json`` keys
    ``prefix/row/column`` (``None`` if the full profile has not been run or stored no such table)."""
    stored = stored_full_run(chapter, root)
    cells: dict[str, dict] = {}
    for key, value in (stored["metrics"] if stored else {}).items():
        if key.startswith(prefix + "/") and key.count("/") >= 2:
            row, column = key[len(prefix) + 1:].rsplit("/", 1)
            cells.setdefault(row, {})[column] = value
    return pd.DataFrame.from_dict(cells, orient="index") if cells else None


def full_profile_verdicts(chapter: str, profile: str, replace: dict[str, str] | None = None,
                          root: Path | None = None) -> str:
    """The text of a chapter's closing "full profile's verdicts" cell: in a quick build, the stored full run's
    claim table (``replace`` swaps a claim's measured value for a pointer, e.g. wall-clock timings that must
    stay out of checked outputs); in the full run itself, a pointer to the claim checks above it."""
    if profile == "full":
        return "this is the full-profile run: its verdicts are the claim checks above"
    claims = full_profile_claims(chapter, root)
    if claims is None:
        return "the full profile has not been run yet"
    for claim_id, text in (replace or {}).items():
        if claim_id in claims.index:
            claims.loc[claim_id, "ours"] = text
    return claims.to_string(max_colwidth=110)
