"""The book's command line: ``python -m outlierbook <command>``.

  list                          the chapters, in dependency order
  prepare --profile P           shared setup done once: the fine-tuned heads chapters reuse
  run IDS|all --profile P [--set k=v ...]
                                execute chapters with papermill (dependency order), stamp them
  check --profile P             refuse stale, errored or wrong-profile executed notebooks
  validate                      nbval re-runs the executed notebooks and compares checked cells
  book --profile P              check, then build the HTML book (jupyter-book, warnings fatal)

Every user error prints one line naming the problem and the fix, and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .errors import OutlierBookError


def _prepare(profile: str, chapter_ids: list[str]) -> None:
    from .nbsetup import set_environment, seed_everything, quiet_libraries

    set_environment()
    seed_everything(0)
    quiet_libraries()
    from .models.tasks import budget, get_finetuned, finetune_info
    from .registry import in_dependency_order

    tasks = sorted({t for c in in_dependency_order(chapter_ids) for t in c.needs})
    for task in tasks:
        cfg = budget(task, profile)
        cached = (cfg.path() / "model.safetensors").is_file()
        print(f"[prepare] {task}: {'cached' if cached else 'fine-tuning'} ({cfg.steps} steps) -> {cfg.path()}", flush=True)
        get_finetuned(cfg)
        print(f"[prepare] {task}: dev {finetune_info(cfg).get('dev')}", flush=True)


def _select_finetune(tasks: list[str], model: str | None) -> int:
    from .data.glue import task_spec
    from .nbsetup import quiet_libraries, seed_everything, set_environment

    names = [task_spec(t).name for t in tasks]  # unknown task names fail here, before any compute
    set_environment()
    seed_everything(0)
    quiet_libraries()
    from .models.load import EMBEDDED
    from .models.selection import select_finetune, selection_path

    for name in names:
        print(f"[select-finetune] {name}: searching on held-out training data", flush=True)
        record = select_finetune(name, model or EMBEDDED)
        dev = record["dev"]
        print(f"[select-finetune] {name}: chose lr {record['chosen']['lr']:g}, {record['chosen']['epochs']} epochs; "
              f"dev {dev['metric']} {dev['value']:.2f} vs majority {dev['majority']:.2f} "
              f"({'competent' if dev['competent'] else 'NOT competent'}) -> {selection_path(name, model or EMBEDDED)}",
              flush=True)
    return 0


def _sanitize_file():
    from .paths import repo_root

    return repo_root() / "tests" / "nbval_sanitize.cfg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m outlierbook", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    p = sub.add_parser("prepare")
    p.add_argument("--profile", default="quick")
    p.add_argument("chapters", nargs="*", default=["all"])
    p = sub.add_parser("run")
    p.add_argument("chapters", nargs="+")
    p.add_argument("--profile", default="quick")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--log-output", action="store_true", help="stream cell output to the terminal")
    p.add_argument("--jobs", type=int, default=1, help="chapters side by side, each in its own process with "
                   "OUTLIERBOOK_THREADS / jobs threads (default 1: one after the other)")
    p = sub.add_parser("check")
    p.add_argument("--profile", default="quick")
    p = sub.add_parser("validate")
    p.add_argument("--jobs", type=int, default=1, help="notebooks side by side, each at the thread count it was "
                   "executed with")
    p.add_argument("pytest_args", nargs="*")
    p = sub.add_parser("book")
    p.add_argument("--profile", default="quick")
    p = sub.add_parser("select-finetune", help="choose a task's full fine-tuning budget on held-out training data")
    p.add_argument("tasks", nargs="+")
    p.add_argument("--model", default=None, help="hub id or local folder (default: the embedded model)")
    args = parser.parse_args(argv)

    try:
        from . import registry, runner

        if args.command == "list":
            for c in registry.in_dependency_order():
                deps = f" (after {', '.join(c.depends_on)})" if c.depends_on else ""
                print(f"{c.id:32s} {c.title}{deps}")
            return 0
        if args.command == "prepare":
            registry.check_profile(args.profile)
            _prepare(args.profile, args.chapters)
            return 0
        if getattr(args, "jobs", 1) < 1:
            raise OutlierBookError(f"--jobs must be at least 1, got {args.jobs}")
        if args.command == "run":
            registry.check_profile(args.profile)
            overrides = runner.parse_overrides(args.overrides)
            chapters = registry.in_dependency_order(args.chapters)
            if overrides and len(chapters) > 1:
                raise OutlierBookError("--set applies to one chapter; name a single chapter with its parameters")
            from .paths import results_dir
            from .results import check_writable

            for chapter in chapters:  # validate every chapter's parameters and results folder before running any
                runner.parameters_for(chapter, args.profile, overrides)
                check_writable(results_dir() / chapter.id)
            if os.environ.get("OUTLIERBOOK_PREPARED") != args.profile:  # a side-by-side parent prepared them
                _prepare(args.profile, [c.id for c in chapters])
            if args.jobs != 1:
                return _run_side_by_side(chapters, args.profile, args.jobs, args.log_output)
            import time

            for chapter in chapters:
                print(f"[run] {chapter.id} ({args.profile})", flush=True)
                t0 = time.perf_counter()
                out = runner.run_chapter(chapter, args.profile, overrides, log_output=args.log_output)
                print(f"[run] {chapter.id}: wrote {out.relative_to(out.parents[1])} "
                      f"in {time.perf_counter() - t0:.0f} s", flush=True)
            return 0
        if args.command == "select-finetune":
            return _select_finetune(args.tasks, args.model)
        if args.command == "check":
            found = runner.problems(args.profile)
            for line in found:
                print(f"[check] {line}", file=sys.stderr)
            if found:
                print(f"error: {len(found)} chapter(s) cannot be rendered; re-run them with "
                      f"python -m outlierbook run all --profile {args.profile}", file=sys.stderr)
                return 1
            print(f"[check] all {len(registry.CHAPTERS)} chapters executed with profile {args.profile} and fresh")
            return 0
        if args.command == "validate":
            from .paths import notebooks_dir

            from . import side_by_side

            notebooks = [str(c.executed) for c in registry.in_dependency_order()]
            missing = [n for n in notebooks if not os.path.isfile(n)]
            if missing:
                raise OutlierBookError(f"not executed yet: {', '.join(missing)}; run: python -m outlierbook run all")
            stamps = runner.stamps(registry.in_dependency_order())
            env = {"OUTLIERBOOK_EXECUTING": "1", **side_by_side.thread_env(runner.executed_threads(stamps))}
            cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider",
                   "--nbval-sanitize-with", str(_sanitize_file()), "--rootdir", str(notebooks_dir()), "-o", "addopts="]
            if args.jobs == 1:
                return subprocess.call([*cmd, *notebooks, *args.pytest_args], env={**os.environ, **env})
            seconds = {str(c.executed): stamps[c.id].get("seconds", 0.0) for c in registry.in_dependency_order()}
            jobs = [side_by_side.Job(Path(n).stem, [*cmd, n, *args.pytest_args])
                    for n in side_by_side.longest_first(notebooks, seconds)]
            codes = side_by_side.run_jobs(jobs, args.jobs, env, label="nbval")
            failed = [n for n, rc in codes.items() if rc != 0]
            if failed:
                print(f"error: nbval failed for {', '.join(failed)} (their logs are above)", file=sys.stderr)
                return 1
            print(f"[nbval] all {len(codes)} notebooks passed")
            return 0
        if args.command == "book":
            found = runner.problems(args.profile)
            if found:
                raise OutlierBookError("cannot build the book: " + "; ".join(found))
            from .paths import repo_root
            from . import fp_models, scorecard, teaching

            teaching.write_fragment()  # the teaching page's run times and exercise list, from this build's notebooks
            scorecard.write_fragment()  # every ledger claim with its stored verdict
            fp_models.write_fragment()  # how each fine-tuned FP model was chosen, and whether it is competent
            jb = Path(sys.executable).with_name("jupyter-book")
            return subprocess.call([str(jb) if jb.exists() else "jupyter-book", "build", str(repo_root()),
                                    "-W", "-n", "--keep-going"])
    except OutlierBookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_side_by_side(chapters, profile: str, jobs: int, log_output: bool) -> int:
    """``run`` with ``--jobs``: each chapter in its own ``run`` process at OUTLIERBOOK_THREADS / jobs threads."""
    from . import runner, side_by_side
    from .nbsetup import DEFAULT_THREADS

    seconds = {cid: s["seconds"] for cid, s in runner.stamps(chapters).items() if "seconds" in s}
    order = side_by_side.longest_first([c.id for c in chapters], seconds)
    extra = ["--log-output"] if log_output else []
    jobs_list = [side_by_side.Job(cid, [sys.executable, "-m", "outlierbook", "run", cid, "--profile", profile, *extra])
                 for cid in order]
    env = {**side_by_side.thread_env(side_by_side.threads_per_job(DEFAULT_THREADS, jobs)), "OUTLIERBOOK_PREPARED": profile}
    codes = side_by_side.run_jobs(jobs_list, jobs, env)
    failed = [cid for cid, rc in codes.items() if rc != 0]
    if failed:
        print(f"error: {len(failed)} chapter(s) failed: {', '.join(failed)}; each executed notebook shows its "
              "failing cell", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
