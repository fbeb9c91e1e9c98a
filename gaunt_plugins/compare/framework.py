"""The interface between the comparison harness and one framework (MACE, fairchem).

A :class:`Framework` turns the user's config into one training job per (variant, seed), and reads
back what that job left in its folder as a :class:`RunRecord`: the optimisation-step rows and the
validation rows (metrics in meV and meV/Å, under the names of :data:`EVAL_METRICS`), the child's
stats file, the framework's log and the paths it wrote. What the harness reports is computed from
a record by the same code for every framework (:meth:`Framework.collect`).

Subclasses implement the framework-specific half: how the config is read and turned into the two
variants, which command trains and evaluates, and where the framework writes its numbers.
"""

from __future__ import annotations

import abc
import copy
import glob
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

from .._process import Job

__all__ = ["CompareOptions", "Framework", "RunRecord", "EVAL_METRICS", "UNLIMITED_EPOCHS", "read_jsonl",
           "read_json", "flatten", "resolve_path", "resolve_test_sets", "summarise", "milli"]

VARIANTS = ("upstream", "gaunt")
UNLIMITED_EPOCHS = 100000  # the epoch limit written into a config when only a wall-clock budget is given

# validation metrics, as every framework's rows are normalised: key -> (label, unit) of progress lines
EVAL_METRICS: Dict[str, Tuple[str, str]] = {
    "rmse_e_per_atom_meV": ("RMSE E", "meV/atom"),
    "mae_e_per_atom_meV": ("MAE E", "meV/atom"),
    "mae_e_meV": ("MAE E", "meV"),
    "rmse_f_meV_per_A": ("RMSE F", "meV/A"),
    "mae_f_meV_per_A": ("MAE F", "meV/A"),
}
# a progress line shows the first of each group that the rows have
PROGRESS_METRICS = (("rmse_e_per_atom_meV", "mae_e_per_atom_meV", "mae_e_meV"), ("rmse_f_meV_per_A", "mae_f_meV_per_A"))


@dataclass(frozen=True)
class CompareOptions:
    """What ``gaunt-compare``'s command line asks of both variants."""

    epochs: Optional[int] = None
    max_minutes: Optional[float] = None
    seed: Optional[int] = None  # the first seed (default: the config's)
    tests: Sequence[str] = ()  # ``[NAME=]PATH`` specs, globs allowed
    set_both: Mapping[str, Any] = field(default_factory=dict)
    set_variant: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: Optional[str] = None
    cwd: Path = Path(".")
    timeout_minutes: Optional[float] = None


@dataclass
class RunRecord:
    """What one training run left in its folder, in the harness's terms.

    ``opt``: one row per optimisation step (``epoch``, ``loss``, ``time`` in s); ``evals``: one row
    per validation (``epoch``, ``None`` before training; ``loss``; ``time``; :data:`EVAL_METRICS`);
    ``stats``: the child's stats file (``_budget.StatsFile``); ``extra``: framework-specific report
    entries (the parameter count it logged, its own error tables, ...).
    """

    opt: List[Dict[str, Any]]
    evals: List[Dict[str, Any]]
    stats: Dict[str, Any]
    files: Dict[str, Optional[str]]
    extra: Dict[str, Any] = field(default_factory=dict)


def read_jsonl(path: Optional[Path]) -> List[Dict[str, Any]]:
    """The JSON rows of a file written one row per line (a partially written last line is skipped)."""
    rows: List[Dict[str, Any]] = []
    if path is None:
        return rows
    try:
        text = Path(path).read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the dotted keys of ``--set``)."""
    out: Dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolve_path(path: str, bases: Sequence[Path]) -> Optional[Path]:
    """``path`` made absolute against the first of ``bases`` where it exists (``None`` if it exists
    under none; an absolute path is returned as it is)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in bases:
        if (base / p).exists():
            return (base / p).resolve()
    return None


def resolve_test_sets(specs: Sequence[str], config_tests: Sequence[Tuple[str, str]],
                      bases: Sequence[Path]) -> Dict[str, str]:
    """``{name: absolute path}`` of the ``--test [NAME=]PATH`` specs (globs expand to one set per file,
    named by its stem) followed by the config's own test files; a file is listed once, names are
    made unique (``name_2``), and a missing file raises ``FileNotFoundError``."""
    named: List[Tuple[str, str]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        if glob.has_magic(path):  # --test 'data/test_*.xyz'
            pattern = Path(path).expanduser()
            matches = sorted(glob.glob(str(pattern if pattern.is_absolute() else bases[0] / pattern)))
            if not matches:
                raise FileNotFoundError(f"--test {spec}: no file matches")
            named.extend((Path(m).stem, m) for m in matches)
        else:
            named.append((name or Path(path).stem, path))
    named.extend(config_tests)
    out: Dict[str, str] = {}
    for name, path in named:
        resolved = resolve_path(path, bases)
        if resolved is None or not resolved.exists():
            raise FileNotFoundError(f"test set {name}: {path} does not exist")
        resolved = resolved.resolve()
        if str(resolved) in out.values():
            continue
        unique, k = name, 2
        while unique in out:
            unique, k = f"{name}_{k}", k + 1
        out[unique] = str(resolved)
    return out


def _mean(values) -> Optional[float]:
    values = [float(v) for v in values if v is not None]
    return float(statistics.fmean(values)) if values else None


def summarise(record: RunRecord) -> Dict[str, Any]:
    """The report numbers of one run: sizes, steps and epochs, timings, learning curves."""
    opt, evals, stats = record.opt, record.evals, record.stats
    step_times = [float(r["time"]) for r in opt if r.get("time") is not None]
    epochs = sorted({int(r["epoch"]) for r in opt if r.get("epoch") is not None})
    epoch_train_s = [e["train_s"] for e in stats.get("epochs", [])]
    out: Dict[str, Any] = {
        "parameters": stats.get("parameters"),
        "model_class": stats.get("model_class"),
        "epochs": len(epochs),
        "steps": len(opt),
        "time_per_step_s": _mean(step_times),
        "median_step_s": float(statistics.median(step_times)) if step_times else None,
        "steps_per_s": len(step_times) / sum(step_times) if step_times and sum(step_times) > 0 else None,
        "time_per_epoch_s": _mean(epoch_train_s),
        "time_per_epoch_after_first_s": _mean(epoch_train_s[1:]) if len(epoch_train_s) > 1 else None,
        "median_epoch_s": float(statistics.median(epoch_train_s)) if epoch_train_s else None,
        "valid_time_per_epoch_s": _mean(r.get("time") for r in evals if r.get("epoch") is not None),
        "train_s": stats.get("train_s"),
        "setup_s": (stats["train_start"] - stats["process_start"])
        if stats.get("train_start") and stats.get("process_start") else None,
        "stop_reason": stats.get("stop_reason"),
        "stage_two": stats.get("stage_two"),
        "cuda_peak_mib": stats["cuda_peak_bytes"] / 2**20 if stats.get("cuda_peak_bytes") else None,
    }
    train_loss = {e: _mean(r["loss"] for r in opt if r.get("epoch") == e) for e in epochs}
    t0 = stats.get("train_start")
    elapsed = {e["epoch"]: e["start"] + e["train_s"] - t0 for e in stats.get("epochs", []) if t0}
    metrics = [k for k in EVAL_METRICS if any(r.get(k) is not None for r in evals)]
    curve: Dict[str, Any] = {"epoch": [], "train_loss": [], "valid_loss": [], "train_elapsed_s": []}
    curve.update({f"valid_{k}": [] for k in metrics})
    for row in evals:
        if row.get("epoch") is None:
            continue
        e = int(row["epoch"])
        curve["epoch"].append(e)
        curve["train_loss"].append(train_loss.get(e))
        curve["valid_loss"].append(row.get("loss"))
        curve["train_elapsed_s"].append(elapsed.get(e))
        for k in metrics:
            curve[f"valid_{k}"].append(row.get(k))
    initial = next((r for r in evals if r.get("epoch") is None), None)
    if initial is not None:  # the validation before any training (plotted at epoch 0, time 0)
        curve["initial"] = {"valid_loss": initial.get("loss"),
                            **{f"valid_{k}": initial.get(k) for k in metrics}}
    out["curves"] = curve
    if curve["epoch"]:
        out["valid_final"] = {k: v[-1] for k, v in curve.items() if isinstance(v, list) and k != "epoch"}
        out["valid_final"]["epoch"] = curve["epoch"][-1]
    return out


def milli(x) -> Optional[float]:
    """eV -> meV (``None`` and NaN stay ``None``)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else 1e3 * float(x)


class Framework(abc.ABC):
    """One framework's side of ``gaunt-compare``; see the module docstring.

    The constructor reads the YAML at ``config_path`` (a mapping, else ``ValueError``), lets the
    subclass normalise it (:meth:`_prepare_base`: absolute data paths, validation), and resolves the
    test sets (``--test`` plus the config's own, :meth:`_config_tests`).
    """

    name: ClassVar[str]
    distribution: ClassVar[str]  # the framework's package, for its version in the report
    labels: ClassVar[Dict[str, str]]  # variant -> how the report names it

    def __init__(self, config_path: Path, options: CompareOptions):
        import yaml

        self.config_path = Path(config_path)
        self.options = options
        self.bases = [Path(options.cwd), self.config_path.resolve().parent]
        raw = yaml.safe_load(self.config_path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{config_path}: expected a YAML mapping of {self.name} options")
        self.user_config = raw
        self.base = self._prepare_base(copy.deepcopy(raw))
        self.tests = resolve_test_sets(list(options.tests), self._config_tests(), self.bases)
        self._progress: Dict[str, Dict[str, Any]] = {}

    # ------------------------------------------------------------------ framework-specific
    @abc.abstractmethod
    def _prepare_base(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        """The user's config, checked, with relative data paths made absolute."""

    @abc.abstractmethod
    def _config_tests(self) -> List[Tuple[str, str]]:
        """``(name, path)`` of the test files the config itself names."""

    @abc.abstractmethod
    def configured_epochs(self) -> Optional[int]:
        """The epoch limit the config sets."""

    @abc.abstractmethod
    def default_seed(self) -> int:
        """The seed the config trains with (``--seed`` overrides it)."""

    @abc.abstractmethod
    def device(self) -> str:
        """The device both variants train on."""

    @abc.abstractmethod
    def variant_config(self, variant: str, folder: Path, seed: int) -> Dict[str, Any]:
        """The config ``variant`` trains with, writing into ``folder``, with ``seed``."""

    @abc.abstractmethod
    def job(self, variant: str, folder: Path, seed: int) -> Job:
        """Write the variant's config into ``folder`` and return the command that trains it (and
        evaluates the result on :attr:`tests`)."""

    @abc.abstractmethod
    def read_run(self, folder: Path) -> RunRecord:
        """What the run in ``folder`` logged (this run's rows only)."""

    def eval_job(self, variant: str, folder: Path) -> Optional[Job]:
        """A separate evaluation, for a trained model the training job did not evaluate; ``None``
        when there is nothing to do."""
        return None

    # ------------------------------------------------------------------ shared
    def budget(self) -> Dict[str, Any]:
        epochs = self.options.epochs
        if epochs is None and self.options.max_minutes is None:
            epochs = self.configured_epochs()
        return {"epochs": epochs, "max_minutes": self.options.max_minutes}

    def seeds(self, count_or_list: Sequence[int] | int) -> List[int]:
        """``n`` -> ``[s, s + 1, ..., s + n - 1]`` from the first seed; a list is taken as given."""
        if isinstance(count_or_list, int):
            first = self.options.seed if self.options.seed is not None else self.default_seed()
            return [first + i for i in range(count_or_list)]
        return [int(s) for s in count_or_list]

    def timeout_s(self) -> Optional[float]:
        return None if self.options.timeout_minutes is None else 60.0 * self.options.timeout_minutes

    def epoch_limit(self) -> Optional[int]:
        """The epoch limit written into the variants' configs (``None``: the config's own)."""
        if self.options.epochs is not None:
            return int(self.options.epochs)
        if self.options.max_minutes is not None:
            return UNLIMITED_EPOCHS
        return None

    def settings(self, variant: str, seeds: Sequence[int]) -> Dict[str, Any]:
        """What ``variant``'s runs are trained with (see :mod:`.settings`): its config (flattened;
        output folders replaced by one placeholder, the first seed), ``seeds``, budget, test sets
        and device, as JSON types."""
        from .settings import normalise

        config = flatten(self.variant_config(variant, Path("/x"), int(list(seeds)[0])))
        return normalise({"config": config, "seeds": [int(s) for s in seeds], "budget": self.budget(),
                          "tests": dict(self.tests), "device": self.device()})

    def config_differences(self) -> Dict[str, Dict[str, Any]]:
        """Keys whose value differs between the two variants' configs (output folders aside)."""
        seed = self.default_seed() if self.options.seed is None else self.options.seed
        a = flatten(self.variant_config("upstream", Path("/x"), seed))
        b = flatten(self.variant_config("gaunt", Path("/x"), seed))
        return {k: {"upstream": a.get(k), "gaunt": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}

    def collect(self, folder: Path) -> Dict[str, Any]:
        """The report entry of the run in ``folder``: :func:`summarise` of its record, the
        framework's extra entries, and the test-set evaluation (``eval.json``)."""
        record = self.read_run(folder)
        out: Dict[str, Any] = {"files": dict(record.files)}
        out.update(summarise(record))
        for key, value in record.extra.items():
            if value is not None:
                out[key] = value
        ev = read_json(folder / "eval.json")
        if ev:
            if ev.get("tests"):
                out["tests"] = ev["tests"]
            if ev.get("error"):
                out["eval_error"] = ev["error"]
            for key in ("parameters", "checkpoint"):
                if ev.get(key) is not None:
                    out[f"evaluated_{'model_parameters' if key == 'parameters' else key}"] = ev[key]
            out["eval_wall_s"] = ev.get("eval_wall_s")
        return out

    def progress(self, folder: Path, elapsed_s: float) -> List[str]:
        """New progress lines of the run in ``folder`` since the last call: one per validated epoch,
        else a phase line every minute."""
        state = self._progress.setdefault(str(folder), {"evals": 0, "last_report": 0.0})
        record = self.read_run(folder)
        stats = record.stats
        lines = []
        total = self.budget()["epochs"]
        of = f"/{total}" if total and total < UNLIMITED_EPOCHS else ""
        trained = [r for r in record.evals if r.get("epoch") is not None]
        for row in trained[state["evals"]:]:
            epoch = row["epoch"]
            ep = next((e for e in stats.get("epochs", []) if e.get("epoch") == epoch), {})
            parts = [f"valid loss {row['loss']:.5g}" if row.get("loss") is not None else "valid"]
            for keys in PROGRESS_METRICS:
                key = next((k for k in keys if row.get(k) is not None), None)
                if key is not None:
                    label, unit = EVAL_METRICS[key]
                    parts.append(f"{label} {row[key]:.2f} {unit}")
            if ep.get("train_s") is not None:
                parts.append(f"{ep['train_s']:.1f} s/epoch")
            if self.options.max_minutes is not None and stats.get("train_start") and ep:
                parts.append(f"training {ep['start'] + ep['train_s'] - stats['train_start']:.0f}/"
                             f"{60 * self.options.max_minutes:.0f} s")
            lines.append(f"epoch {epoch + 1}{of}: " + ", ".join(parts))
        state["evals"] = len(trained)
        if not lines and elapsed_s - state["last_report"] >= 60.0:
            phase = "setting up (data, model)" if not stats.get("train_start") else (
                "final evaluation" if stats.get("train_end") else f"training epoch {len(stats.get('epochs', [])) + 1}")
            lines.append(f"{phase}, {elapsed_s / 60:.1f} min elapsed")
        if lines:
            state["last_report"] = elapsed_s
        return lines
