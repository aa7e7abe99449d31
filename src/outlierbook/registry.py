"""The chapter registry: the single source of truth for what the book contains.

Each chapter is a jupytext percent file ``notebooks/<id>.py``. ``profiles`` holds the parameters
the runner injects for each profile (on top of the notebook's own defaults); ``needs`` lists the
shared setup the chapter reuses (fine-tuned classification heads), prepared once per run.
A test checks ``_toc.yml`` against this list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .paths import notebooks_dir

PROFILES = ("quick", "full")
PRETRAINED_HERE = "models pre-trained here"  # chapter 6's claims are measured on the small models it pre-trains


@dataclass(frozen=True)
class Chapter:
    id: str
    title: str
    depends_on: tuple[str, ...] = ()
    profiles: dict = field(default_factory=lambda: {"quick": {}, "full": {}})
    needs: tuple[str, ...] = ()  # GLUE tasks whose fine-tuned head the chapter loads
    timeout: int = 1800  # per cell, seconds
    # the model the chapter's claims are measured on when it is not the ``model`` parameter (a chapter that
    # trains its own models): the scorecard gives it a column of its own instead of the default model's
    claims_model: str | None = None

    @property
    def source(self) -> Path:
        return notebooks_dir() / f"{self.id}.py"

    @property
    def executed(self) -> Path:
        return notebooks_dir() / f"{self.id}.ipynb"


CHAPTERS: tuple[Chapter, ...] = (
    Chapter(
        id="00_how_to_run",
        title="How to read and run this book",
        needs=("sst2",),
    ),
    Chapter(
        id="01_quantization_primer",
        title="Quantization primer",
        profiles={"quick": {}, "full": {"n_sentences": 256}},
    ),
    Chapter(
        id="02_the_problem",
        title="The problem: PTQ of a pretrained transformer",
        needs=("sst2", "mrpc", "rte"),
        profiles={"quick": {}, "full": {"n_calib": 256, "eval_limit": None, "calib_seeds": [0, 1, 2, 3, 4],
                                        "node_study_tasks": ["stsb", "sst2", "mrpc", "rte"]}},
    ),
    Chapter(
        id="03_anatomy_of_outliers",
        title="Anatomy of outliers",
        needs=("sst2",),
        profiles={"quick": {}, "full": {"n_sentences": 512, "eval_limit": None}},
    ),
    Chapter(
        id="04_understanding",
        title="Understanding and overcoming: mixed precision, per-embedding groups, QAT",
        timeout=6 * 3600,  # full profile: one cell runs the whole range-setting search
        needs=("sst2", "mrpc", "rte", "stsb"),
        profiles={"quick": {}, "full": {
            "problem_tasks": ["stsb", "sst2", "mrpc", "rte"], "eval_limit": None, "seeds": [0, 1, 2, 3, 4],
            "act_settings": [["current_minmax", 1, 1], ["running_minmax", 1, 16], ["running_minmax", 4, 16],
                             ["running_minmax", 16, 16], ["mse", 4, 4]],
            # QAT: one pass over each task's training split (SST-2: 2105 steps of 32, about 35 min per run here)
            "lowbit_tasks": ["sst2", "stsb"], "qat_steps": "epoch", "qat_batch_size": 32}},
    ),
    Chapter(
        id="05_outlier_suppression",
        title="Outlier Suppression: Gamma Migration and Token-Wise Clipping",
        timeout=6 * 3600,  # full profile: the Table 3 cell alone took > 30 min on 2 cores
        needs=("sst2", "mrpc", "rte"),
        profiles={"quick": {}, "full": {"tasks": ["stsb", "sst2", "mrpc", "rte"], "eval_limit": None, "n_calib": 256,
                                        "twc_max_candidates": None,
                                        # OS-10's bit-width, one SST-2 epoch per variant (about 35 min each here)
                                        "qat_bits": ["4-4-4"], "qat_steps": "epoch", "qat_batch_size": 32,
                                        "selective_gm": ["sgm+minmax", "sgm+twc"], "authors_omse": True}},
    ),
    Chapter(
        id="06_quantizable",
        title="Quantizable Transformers: clipped softmax and gated attention",
        timeout=12 * 3600,  # full profile: one cell pre-trains several models
        claims_model=PRETRAINED_HERE,
        profiles={"quick": {}, "full": {
            "hidden": 128, "layers": 4, "heads": 4, "ffn": 512, "seq_len": 128, "batch_size": 16, "steps": 2000,
            "lr": 1e-3, "decoder_lr": 3e-3, "warmup": 0.05, "gamma_ramp": 0.05, "track_every": 100, "eval_blocks": 256,
            "seeds": [0, 1], "ptq_seeds": [0, 1], "calib_batches": 8, "alphas": [1.0, 2.0, 3.84, 8.0],
            "alpha_seq_lens": [32, 64, 128],
            # the pilot's history: the decoder at lr 1e-3 with the OPT script's weight decay on LN γ kept its outliers
            # flat (as did the encoder at 1e-3); at 3e-3 the encoder stalls. Each attempt stays in the chapter.
            "pilot_attempts": {"encoder, lr 3e-3": ["encoder", {"lr": 3e-3}],
                               "decoder, lr 1e-3, weight decay on LN γ (first pilot)": ["decoder", {"lr": 1e-3, "wd_ln_gamma": True}],
                               "decoder, weight decay on LN γ": ["decoder", {"wd_ln_gamma": True}]}}},
    ),
    Chapter(
        id="07_naq",
        title="Nonlinearity-aware quantization",
        needs=("sst2",),
        profiles={"quick": {}, "full": {
            "eval_limit": None, "n_calib": 256, "qp_values": [-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0],
            "as_values": [-3.0, -2.0, -1.0, 0.0], "sum_values": [200.0, 400.0, 800.0, 1600.0, 3200.0, 6400.0, 12800.0, 25600.0],
            "combined_pairs": [[-3.0, 200.0], [-1.0, 1600.0], [0.0, 12800.0]]}},
    ),
    Chapter(
        id="08_composing",
        title="Composing the methods",
        timeout=12 * 3600,  # full profile: one cell runs every recipe on four tasks with three seeds
        needs=("sst2", "mrpc", "rte"),
        profiles={"quick": {}, "full": {"tasks": ["stsb", "sst2", "mrpc", "rte"], "eval_limit": None, "n_calib": 256,
                                        "seeds": [0, 1, 2], "twc_max_candidates": None}},
    ),
    Chapter(
        id="09_int8",
        title="From simulation to silicon",
        needs=("sst2", "mrpc", "rte"),
        profiles={"quick": {}, "full": {"tasks": ["stsb", "sst2", "mrpc", "rte"], "eval_limit": None, "n_calib": 256,
                                        "twc_max_candidates": None, "latency_rounds": 20, "latency_threads": [1, 2]}},
    ),
    Chapter(
        id="10_base_size",
        title="Does it hold at base size?",
        timeout=6 * 3600,  # full profile: each table's cell runs every seed on two tasks of a 110 M model
        needs=("sst2",),  # MiniLM's SST-2 classifier for the anatomy beside MPNet's (full profile)
        profiles={"quick": {}, "full": {
            "tasks": ["stsb", "sst2"], "eval_limit": None, "n_sentences": 256, "n_calib": 256, "calib_batch_size": 32,
            "sweep_wrappers": [[8, 8], [6, 6], [4, 8]], "seeds": [0, 1, 2], "perm_examples": 64,
            "os_bits": ["6-6-6", "8-8-8"], "twc_max_candidates": 10, "twc_fine_epochs": 1,
            "naq_qp": [-1.0, 0.0], "naq_as": [-1.0], "naq_sum": [1600.0, 12800.0]}},
    ),
    Chapter(
        id="11_retrofit",
        title="Retrofitting the fix where the outliers are real",
        timeout=4 * 3600,  # full profile: one cell trains every masked-LM variant at two seeds
        profiles={"quick": {}, "full": {
            # the first run (without pi_seeds and track_quality) took 90 minutes on 2 cores: masked LM 1.6 s per
            # step of 16 x 128 tokens, SST-2 under 1 s per step of 32 sentences. The extra pi_init runs at both
            # seeds and the tracked FP / W8A8 quality add an estimated 25 minutes (not yet measured)
            "mlm_steps": 180, "mlm_batch_size": 16, "freeze_encoder_steps": 30, "track_every": 30,
            "eval_blocks": 128, "calib_batches": 8, "ptq_seeds": [0], "seeds": [0, 1], "pi_inits": [0.25, 0.9],
            "pi_seeds": [0, 1], "track_quality": True, "tracked_examples": 128,
            "task_steps": 150, "task_batch_size": 32, "task_track_every": 30, "task_eval_limit": None,
            "probe_sentences": 32, "task_calib": 256}},
    ),
)


def chapter_ids() -> list[str]:
    return [c.id for c in CHAPTERS]


def get(chapter_id: str) -> Chapter:
    for c in CHAPTERS:
        if c.id == chapter_id:
            return c
    raise ConfigError(f"unknown chapter {chapter_id!r}; known chapters: {', '.join(chapter_ids())}")


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; use one of: {', '.join(PROFILES)}")
    return profile


def in_dependency_order(ids: list[str] | None = None) -> list[Chapter]:
    """Chapters (all, or the named ones plus their dependencies) with every dependency first."""
    wanted = chapter_ids() if not ids or ids == ["all"] else ids
    order: list[Chapter] = []
    seen: set[str] = set()

    def visit(cid: str, stack: tuple[str, ...]) -> None:
        if cid in stack:
            raise ConfigError(f"dependency cycle among chapters: {' -> '.join(stack + (cid,))}")
        if cid in seen:
            return
        chapter = get(cid)
        for dep in chapter.depends_on:
            visit(dep, stack + (cid,))
        seen.add(cid)
        order.append(chapter)

    for cid in wanted:
        visit(cid, ())
    return order
