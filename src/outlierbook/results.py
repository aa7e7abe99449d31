"""Results I/O: every chapter writes ``results/<chapter>/<profile>/``, atomically.

- ``metrics.json``: flat ``{name: value}``, floats rounded to 4 decimals, keys sorted; deterministic
  so that it diffs cleanly and can be compared run to run.
- ``table.csv``: tidy rows (``experiment, setting, metric, value`` plus any extra columns).
- ``claims.json``: one record per checked claim (see :mod:`outlierbook.claims`).
- ``run.json``: what produced them (git sha, profile, parameters, package versions, wall time)
  and ``files``, the SHA-256 of each other file; never compared, because it changes run to run.

A run's results are **one set**: nothing is written while the chapter computes; ``save`` writes
the four files into a temporary sibling folder and swaps it with the old folder in one atomic
step (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, undone by the next reader
if a crash falls between them). A run killed at any point leaves the folder as it was or complete.
``load`` refuses a folder whose files disagree with its ``run.json`` (files from different runs),
so a quick build never shows a mixed set as the full run's results. Folders stored before
``files`` existed are checked for what they do record (chapter, profile, each claim's profile).
The results folder is checked for writability when the recorder is created, before any compute.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

import pandas as pd

from .atomic import file_mode, leftovers, recover, replace_folder, umask, write_synced
from .errors import ConfigError, OutlierBookError
from .paths import repo_root, results_dir
from .registry import check_profile

ROUND = 4
VERSIONED_PACKAGES = ("torch", "transformers", "accelerate", "numpy", "pandas", "scipy", "outlierbook")
RESULT_FILES = ("metrics.json", "table.csv", "claims.json", "run.json")


class InconsistentResultsError(OutlierBookError):
    """A results folder whose files do not come from one run."""


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_writable(folder: Path) -> Path:
    """Fail before any compute if ``folder`` cannot hold results (one line naming the fix)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutlierBookError(f"cannot write results into {folder} ({exc.strerror or type(exc).__name__}); make it "
                               "writable, or set OUTLIERBOOK_RESULTS to a writable folder") from None
    return folder


def rounded(value, digits: int = ROUND, small: str = "decimals"):
    """Round floats (recursively in dicts/lists) for stable, diff-friendly output.

    ``small="significant"`` keeps ``digits`` significant digits for magnitudes below 1 instead of
    ``digits`` decimals, so that a measured 3e-6 (e.g. an equivalence check) is not stored as 0.0.
    """
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if small == "significant" and 0 < abs(value) < 1:
            return float(f"{value:.{digits}g}")
        return round(value, digits)
    if isinstance(value, int):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return rounded(value.item(), digits, small)
    if isinstance(value, dict):
        return {str(k): rounded(v, digits, small) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits, small) for v in value]
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
        check_writable(self.dir.parent)
        recover(self.dir)
        self.metrics: dict = {}
        self.rows: list[dict] = []
        self.claims: list[dict] = []
        self._started = time.time()
        self._git_sha = git_sha()  # the code that runs is the code at the start; a long run may outlive commits

    def metric(self, name: str, value) -> None:
        self.update({name: value})

    def update(self, metrics: dict) -> None:
        """Record metrics; a NaN is an error here, not a number in the book.

        NaN is what damaged weights, data or ranges propagate to a metric. An infinity is kept (stored
        as ``"inf"``): the book records settings such as a disabled threshold (``-inf``) beside its
        metrics, and a perplexity can overflow for a broken quantized model, which is a measurement."""
        for name, value in metrics.items():
            if isinstance(value, (float, int)) or (hasattr(value, "item") and getattr(value, "ndim", 1) == 0):
                if math.isnan(float(value)):
                    raise OutlierBookError(f"metric {name} is NaN: a model or an evaluation produced NaN; check the "
                                           "model's weights, the data and the quantization ranges before recording")
        self.metrics.update(metrics)

    def add_rows(self, rows) -> None:
        """Add tidy rows: a list of dicts or a DataFrame."""
        if isinstance(rows, pd.DataFrame):
            rows = rows.to_dict("records")
        self.rows.extend(dict(r) for r in rows)

    def add_claim(self, record: dict) -> None:
        """Keep a claim record (written with the rest of the run by :meth:`save`)."""
        self.claims = [c for c in self.claims if c["id"] != record["id"]] + [record]

    def save(self, extra_run_info: dict | None = None) -> Path:
        """Write the run's files as one set (see the module docstring) and return the folder."""
        texts = {"metrics.json": json.dumps(rounded(self.metrics), indent=1, sort_keys=True) + "\n",
                 "claims.json": json.dumps(rounded(self.claims, small="significant"), indent=1, ensure_ascii=False) + "\n"}
        if self.rows:
            texts["table.csv"] = pd.DataFrame(self.rows).to_csv(index=False, float_format="%.6g")
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
            "files": {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in sorted(texts.items())},
        }
        texts["run.json"] = json.dumps(rounded(run, 6), indent=1, sort_keys=True, default=str) + "\n"
        check_writable(self.dir.parent)
        recover(self.dir)
        new = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=f".{self.dir.name}.tmp-{os.getpid()}-"))
        try:
            for name, text in texts.items():
                write_synced(new / name, text)
                os.chmod(new / name, file_mode())
            os.chmod(new, 0o777 & ~umask())
            replace_folder(new, self.dir)
        finally:
            shutil.rmtree(new, ignore_errors=True)
        return self.dir


def check_consistent(folder: Path, chapter: str, profile: str) -> bool:
    """Raise :class:`InconsistentResultsError` unless the files of ``folder`` come from one run.

    Returns True when ``run.json`` lists the SHA-256 of every file (verified), False for a folder
    stored before it did (then chapter, profile and each claim's profile are what can be checked).
    """
    fix = (f"re-run it (python -m outlierbook run {chapter} --profile {profile}) or restore it "
           f"(git checkout -- {folder.relative_to(folder.parents[2]) if len(folder.parents) > 2 else folder})")
    run_file = folder / "run.json"
    if not run_file.is_file():
        raise InconsistentResultsError(f"{folder} has results but no run.json, so nothing says they come from one run; {fix}")
    try:
        run = json.loads(run_file.read_text())
        claims = json.loads((folder / "claims.json").read_text()) if (folder / "claims.json").is_file() else []
    except json.JSONDecodeError as exc:
        raise InconsistentResultsError(f"{folder}: a results file is not valid JSON ({exc.msg}); {fix}") from None
    if run.get("chapter") != chapter or run.get("profile") != profile:
        raise InconsistentResultsError(f"{folder}: run.json is of chapter {run.get('chapter')!r}, profile "
                                       f"{run.get('profile')!r}, not of this folder; {fix}")
    files = run.get("files")
    if files is None:
        wrong = sorted({c.get("profile") for c in claims if c.get("profile") not in (None, profile)})
        if wrong:
            raise InconsistentResultsError(f"{folder}: claims.json holds {', '.join(wrong)}-profile claims; {fix}")
        return False
    for name in RESULT_FILES:
        if name == "run.json":
            continue
        present = (folder / name).is_file()
        if name not in files and present:
            raise InconsistentResultsError(f"{folder}: {name} is not part of the run that wrote run.json; {fix}")
        if name in files and (not present or sha256_file(folder / name) != files[name]):
            raise InconsistentResultsError(f"{folder}: {name} {'is missing' if not present else 'does not match run.json'}"
                                           f" (the files come from different runs); {fix}")
    return True


def load(chapter: str, profile: str, fallback: str | None = None, root: Path | None = None) -> dict:
    """Load a chapter's metrics, table, claims and run record (``fallback`` profile if the first is
    absent), after :func:`check_consistent`; ``verified`` says whether run.json vouched for every file."""
    for prof in [profile] + ([fallback] if fallback else []):
        check_profile(prof)
        d = Path(root or results_dir()) / chapter / prof
        if not d.exists() and leftovers(d, "old"):
            recover(d)
        if (d / "metrics.json").is_file():
            verified = check_consistent(d, chapter, prof)
            out = {"profile": prof, "verified": verified, "metrics": json.loads((d / "metrics.json").read_text())}
            out["table"] = pd.read_csv(d / "table.csv") if (d / "table.csv").is_file() else pd.DataFrame()
            out["claims"] = json.loads((d / "claims.json").read_text()) if (d / "claims.json").is_file() else []
            out["run"] = json.loads((d / "run.json").read_text())
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
    except InconsistentResultsError:
        raise  # a mixed folder is refused, never shown as the full run's results
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


def verdict_summary(claims: list[dict]) -> str:
    """The plain statement a chapter closes with: which claims held, which did not, which were not testable."""
    groups = {"held": [], "did not hold": [], "not testable here": []}
    for c in claims:
        groups[{True: "held", False: "did not hold", None: "not testable here"}[c.get("holds")]].append(c["id"])
    return "\n".join(f"{name}: {', '.join(ids) if ids else 'none'}" for name, ids in groups.items())


def provenance(stored: dict) -> str:
    """Where a stored run comes from: commit, finish date, whether run.json vouches for every file."""
    run = stored["run"]
    sha = str(run.get("git_sha", "unknown"))
    sha = sha[:10] + ("-dirty" if sha.endswith("-dirty") else "")
    checked = ("every file checked against run.json" if stored.get("verified")
               else "stored before run.json listed its files; chapter and profile checked")
    return f"full run of commit {sha}, finished {str(run.get('finished_utc', '?'))[:10]} ({checked})"


def full_profile_verdicts(chapter: str, profile: str, replace: dict[str, str] | None = None,
                          root: Path | None = None) -> str:
    """The text of a chapter's closing "full profile's verdicts" cell: in a quick build, the stored full run's
    provenance, the plain statement of what held, what did not and what was not testable, and its claim table
    (``replace`` swaps a claim's measured value for a pointer, e.g. wall-clock timings that must stay out of
    checked outputs); in the full run itself, a pointer to the claim checks above it."""
    if profile == "full":
        return "this is the full-profile run: its verdicts are the claim checks above"
    stored = stored_full_run(chapter, root)
    claims = full_profile_claims(chapter, root)
    if stored is None or claims is None:
        return "the full profile has not been run yet"
    for claim_id, text in (replace or {}).items():
        if claim_id in claims.index:
            claims.loc[claim_id, "ours"] = text
    return "\n".join([provenance(stored), verdict_summary(stored["claims"]), "",
                      claims.to_string(max_colwidth=110)])
