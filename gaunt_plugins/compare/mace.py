"""MACE side of ``gaunt-compare``: the two configs, the training and evaluation commands, and
reading back what MACE logged.

From the user's ``mace_run_train`` YAML two configs are written, identical except that

- ``upstream`` has no ``tensor_product`` key (and no ``gaunt_*`` keys), and is trained by
  ``mace_run_train`` unpatched: MACE exactly as released;
- ``gaunt`` has ``tensor_product: gaunt`` (a ``gaunt_targets`` / ``gaunt_method`` the user gave is
  kept) and is trained with the gaunt-plugins MACE patch applied, as ``gaunt-run`` does.

Both get the same seed, data, batch size and budget; the output locations (``work_dir``,
``log_dir``, ``model_dir``, ``checkpoints_dir``, ``results_dir``) point into the variant's folder of
the report, and relative data paths are made absolute. Numbers are read from MACE's own files:
the results file (one JSON row per optimisation step and per validation), its log (parameter
count, per-epoch training time and the final error tables), and the saved ``<name>.model``, which
is evaluated on every test set in a separate process.
"""

from __future__ import annotations

import glob
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

from .process import Job, child_env, python_cmd

__all__ = ["MaceFramework", "read_results", "parse_error_tables", "parse_compare_lines"]

VARIANTS = ("upstream", "gaunt")
GAUNT_KEYS = ("tensor_product", "gaunt_targets", "gaunt_method")
OUTPUT_DIR_KEYS = ("work_dir", "log_dir", "model_dir", "checkpoints_dir", "results_dir", "downloads_dir")
PATH_KEY = re.compile(r"(_file|_dir|_path|^foundation_model)$")
UNLIMITED_EPOCHS = 100000


def _absolutise(value: Any, key: str, bases: List[Path]) -> Any:
    """Relative paths in path-like keys become absolute: relative to the first of ``bases`` (the
    current directory, as ``mace_run_train`` reads them, then the config's folder) where they exist."""
    if isinstance(value, dict):
        return {k: _absolutise(v, str(k), bases) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolutise(v, key, bases) for v in value]
    if isinstance(value, str) and PATH_KEY.search(key) and key not in OUTPUT_DIR_KEYS:
        path = Path(value).expanduser()
        if not path.is_absolute():
            for base in bases:
                if (base / path).exists():
                    return str((base / path).resolve())
    return value


def read_results(path: Path) -> List[Dict[str, Any]]:
    """The JSON rows of a MACE results file (a partially written last line is skipped)."""
    rows = []
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


_TABLE_TITLE = re.compile(r"Error-table on (.+?):\s*$")


def parse_error_tables(log_text: str) -> Dict[str, List[Dict[str, str]]]:
    """MACE's final error tables (``Error-table on TEST:`` ...) as ``{title: [row dicts]}``."""
    tables: Dict[str, List[Dict[str, str]]] = {}
    lines = log_text.splitlines()
    i = 0
    while i < len(lines):
        match = _TABLE_TITLE.search(lines[i])
        if not match:
            i += 1
            continue
        title = match.group(1)
        header: Optional[List[str]] = None
        rows = []
        i += 1
        while i < len(lines) and (lines[i].startswith("+") or lines[i].startswith("|")):
            if lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if header is None:
                    header = cells
                else:
                    rows.append(dict(zip(header, cells)))
            i += 1
        tables[title] = rows
    return tables


_PARAMS = re.compile(r"gaunt-compare: model (\S+) has (\d+) parameters \((\d+) trainable\)")
_EPOCH = re.compile(r"gaunt-compare: epoch (\d+) trained in ([0-9.]+) s \((\S+) steps\)")
_GAUNT_LINE = re.compile(r"gaunt-plugins: (.+)$")


def parse_compare_lines(log_text: str) -> Dict[str, Any]:
    """What the instrumentation logged through MACE's logger (parameters, epoch times) and the
    gaunt-plugins conversion summary."""
    out: Dict[str, Any] = {"epoch_train_s": {}, "gaunt_plugins": []}
    for line in log_text.splitlines():
        m = _PARAMS.search(line)
        if m:
            out["model_class"] = m.group(1)
            out["parameters"] = int(m.group(2))
            out["trainable_parameters"] = int(m.group(3))
        m = _EPOCH.search(line)
        if m:
            out["epoch_train_s"][int(m.group(1))] = float(m.group(2))
        m = _GAUNT_LINE.search(line)
        if m:
            out["gaunt_plugins"].append(m.group(1).strip())
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return float(statistics.fmean(values)) if values else None


class MaceFramework:
    """The MACE comparison; see the module docstring."""

    name = "mace"
    distribution = "mace-torch"
    labels = {"upstream": "upstream MACE (e3nn)", "gaunt": "MACE + tensor_product: gaunt"}

    def __init__(self, config_path: Path, *, epochs: Optional[int], max_minutes: Optional[float],
                 seed: Optional[int], tests: List[str], set_both: Dict[str, Any],
                 set_variant: Dict[str, Dict[str, Any]], device: Optional[str], cwd: Path,
                 timeout_minutes: Optional[float] = None):
        import yaml

        self.config_path = Path(config_path)
        self.cwd = Path(cwd)
        raw = yaml.safe_load(self.config_path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{config_path}: expected a YAML mapping of mace_run_train options")
        self.user_config = raw
        self.base = _absolutise(dict(raw), "", [self.cwd, self.config_path.resolve().parent])
        self.epochs = epochs
        self.max_minutes = max_minutes
        self.seed = seed
        self.device = device
        self.set_both = set_both
        self.set_variant = set_variant
        self.timeout_minutes = timeout_minutes
        self.tests = self._test_sets(tests)
        self._progress_state: Dict[str, Dict[str, Any]] = {}

    # ----------------------------------------------------------------------- configs
    def _test_sets(self, tests: List[str]) -> Dict[str, str]:
        specs: List[tuple] = []
        for spec in tests:
            name, sep, path = spec.partition("=")
            if not sep:
                name, path = None, spec
            if glob.has_magic(path):  # --test 'data/test_*.xyz'
                base = Path(path).expanduser()
                pattern = str(base if base.is_absolute() else self.cwd / base)
                matches = sorted(glob.glob(pattern))
                if not matches:
                    raise FileNotFoundError(f"--test {spec}: no file matches")
                specs.extend((Path(m).stem, m) for m in matches)
            else:
                specs.append((name or Path(path).stem, path))
        cfg_tests = self.base.get("test_file")
        for path in ([cfg_tests] if isinstance(cfg_tests, str) else list(cfg_tests or [])):
            specs.append((Path(path).stem, path))
        out: Dict[str, str] = {}
        for name, path in specs:
            resolved = Path(path).expanduser()
            if not resolved.is_absolute():
                resolved = (self.cwd / resolved).resolve()
            if str(resolved) in out.values():
                continue
            if not resolved.exists():
                raise FileNotFoundError(f"test set {name}: {resolved} does not exist")
            unique, k = name, 2
            while unique in out:
                unique, k = f"{name}_{k}", k + 1
            out[unique] = str(resolved)
        return out

    def budget(self) -> Dict[str, Any]:
        epochs = self.epochs if self.epochs is not None else (
            None if self.max_minutes is not None else self.base.get("max_num_epochs"))
        return {"epochs": epochs, "max_minutes": self.max_minutes}

    def variant_config(self, variant: str, vdir: Path) -> Dict[str, Any]:
        cfg = dict(self.base)
        for key in GAUNT_KEYS:
            if variant == "upstream":
                cfg.pop(key, None)
        if variant == "gaunt":
            cfg["tensor_product"] = "gaunt"
        if self.epochs is not None:
            cfg["max_num_epochs"] = int(self.epochs)
        elif self.max_minutes is not None:
            cfg["max_num_epochs"] = UNLIMITED_EPOCHS
        if self.seed is not None:
            cfg["seed"] = int(self.seed)
        if self.device is not None:
            cfg["device"] = self.device
        cfg.update(self.set_both)
        cfg.update(self.set_variant.get(variant, {}))
        cfg = _absolutise(cfg, "", [self.cwd, self.config_path.resolve().parent])  # paths given with --set
        vdir = vdir.resolve()
        cfg.update(work_dir=str(vdir), log_dir=str(vdir / "logs"), model_dir=str(vdir),
                   checkpoints_dir=str(vdir / "checkpoints"), results_dir=str(vdir / "results"),
                   downloads_dir=str(vdir / "downloads"))
        cfg.setdefault("name", "mace")
        return cfg

    @staticmethod
    def seed_of(cfg: Dict[str, Any]) -> int:
        return int(cfg.get("seed", 123))  # mace_run_train's default

    @staticmethod
    def device_of(cfg: Dict[str, Any]) -> str:
        return str(cfg.get("device", "cpu"))

    def config_differences(self) -> Dict[str, Any]:
        """Keys whose value differs between the two variants' configs (besides output folders)."""
        a = self.variant_config("upstream", Path("/x"))
        b = self.variant_config("gaunt", Path("/x"))
        return {k: {"upstream": a.get(k), "gaunt": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}

    def prepare(self, variant: str, vdir: Path) -> Job:
        import yaml

        vdir.mkdir(parents=True, exist_ok=True)
        cfg = self.variant_config(variant, vdir)
        cfg_path = vdir / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        args = ["--stats", str(vdir / "stats.json")]
        if self.max_minutes is not None:
            args += ["--max-seconds", f"{60.0 * self.max_minutes:.3f}"]
        if variant == "gaunt":
            args.append("--gaunt")
        if self.tests:  # evaluated in the training process once MACE has saved the model
            args += ["--eval-out", str(vdir / "eval.json"), "--eval-batch-size", str(cfg.get("valid_batch_size", 10))]
            for name, path in self.tests.items():
                args += ["--test", f"{name}={path}"]
        args += ["--", "--config", str(cfg_path)]
        drop = ["GAUNT_PLUGINS_AUTOPATCH"] if variant == "upstream" else []
        timeout = None
        if self.timeout_minutes is not None:
            timeout = 60.0 * self.timeout_minutes
        return Job(cmd=python_cmd("gaunt_plugins.compare._mace_child", *args), cwd=vdir, env=child_env(drop=drop),
                   log=vdir / "stdout.log", timeout_s=timeout, label=variant)

    # ----------------------------------------------------------------------- reading MACE's files
    def _files(self, vdir: Path) -> Dict[str, Optional[Path]]:
        cfg = self.variant_config("x", vdir)
        name = cfg["name"]
        results = sorted(glob.glob(str(vdir / "results" / f"{glob.escape(name)}_run-*_train.txt")))
        logs = sorted(p for p in glob.glob(str(vdir / "logs" / f"{glob.escape(name)}_run-*.log")) if not p.endswith("_debug.log"))
        model = None
        for candidate in (vdir / f"{name}_stagetwo.model", vdir / f"{name}.model"):
            if candidate.exists():
                model = candidate
                break
        return {"results": Path(results[-1]) if results else None, "log": Path(logs[-1]) if logs else None,
                "model": model}

    def progress(self, variant: str, vdir: Path, elapsed_s: float) -> List[str]:
        """New progress lines since the last call (one per validated epoch)."""
        state = self._progress_state.setdefault(variant, {"rows": 0, "last_report": 0.0, "epochs": 0})
        files = self._files(vdir)
        lines = []
        stats = _read_json(vdir / "stats.json") or {}
        if files["results"] is not None:
            rows = read_results(files["results"])
            for row in rows[state["rows"]:]:
                if row.get("mode") == "eval" and row.get("epoch") is not None:
                    epoch = row["epoch"]
                    ep = next((e for e in stats.get("epochs", []) if e.get("epoch") == epoch), {})
                    budget = ""
                    if self.max_minutes is not None and stats.get("train_start"):
                        budget = f", training {ep.get('start', 0) + ep.get('train_s', 0) - stats['train_start']:.0f}/" \
                                 f"{60 * self.max_minutes:.0f} s"
                    epochs_total = self.budget()["epochs"]
                    of = f"/{epochs_total}" if epochs_total and epochs_total < UNLIMITED_EPOCHS else ""
                    lines.append(
                        f"epoch {epoch + 1}{of}: valid loss {row.get('loss', float('nan')):.5g}, "
                        f"RMSE E {1e3 * row.get('rmse_e_per_atom', float('nan')):.2f} meV/atom, "
                        f"RMSE F {1e3 * row.get('rmse_f', float('nan')):.2f} meV/A"
                        + (f", {ep['train_s']:.1f} s/epoch" if ep.get("train_s") is not None else "") + budget
                    )
                    state["epochs"] += 1
            state["rows"] = len(rows)
        if not lines and elapsed_s - state["last_report"] >= 60.0:
            phase = "setting up (data, model)" if not stats.get("train_start") else (
                "final evaluation" if stats.get("train_end") else f"training epoch {len(stats.get('epochs', [])) + 1}")
            lines.append(f"{phase}, {elapsed_s / 60:.1f} min elapsed")
        if lines:
            state["last_report"] = elapsed_s
        return lines

    def eval_job(self, variant: str, vdir: Path) -> Optional[Job]:
        """A separate evaluation, only for a model the training process saved but did not evaluate
        (the training process evaluates its model itself, see ``_mace_child``)."""
        model = self._files(vdir)["model"]
        if model is None or not self.tests or (vdir / "eval.json").exists():
            return None
        cfg = self.variant_config(variant, vdir)
        args = ["--model", str(model), "--out", str(vdir / "eval.json"),
                "--energy-key", str(cfg.get("energy_key", "REF_energy")),
                "--forces-key", str(cfg.get("forces_key", "REF_forces")),
                "--dtype", str(cfg.get("default_dtype", "float64")),
                "--device", str(cfg.get("device", "cpu")),
                "--batch-size", str(cfg.get("valid_batch_size", 10))]
        for name, path in self.tests.items():
            args += ["--test", f"{name}={path}"]
        timeout = None if self.timeout_minutes is None else 60.0 * self.timeout_minutes
        return Job(cmd=python_cmd("gaunt_plugins.compare._mace_eval", *args), cwd=vdir, env=child_env(),
                   log=vdir / "eval.log", timeout_s=timeout, label=f"{variant} evaluation")

    def collect(self, variant: str, vdir: Path) -> Dict[str, Any]:
        """Everything the run logged, as report numbers."""
        files = self._files(vdir)
        out: Dict[str, Any] = {"files": {k: (str(v) if v else None) for k, v in files.items()}}
        stats = _read_json(vdir / "stats.json") or {}
        log_text = files["log"].read_text(errors="replace") if files["log"] else ""
        logged = parse_compare_lines(log_text)
        out["parameters"] = logged.get("parameters", stats.get("parameters"))
        out["model_class"] = logged.get("model_class", stats.get("model_class"))
        if logged["gaunt_plugins"]:
            out["gaunt_plugins_log"] = logged["gaunt_plugins"]
        rows = read_results(files["results"]) if files["results"] else []
        heads = [r.get("head") for r in rows if r.get("mode") == "eval"]
        head = heads[-1] if heads else None
        opt = [r for r in rows if r.get("mode") == "opt"]
        evals = [r for r in rows if r.get("mode") == "eval" and r.get("head") == head]
        step_times = [float(r["time"]) for r in opt if "time" in r]
        epochs = sorted({int(r["epoch"]) for r in opt})
        epoch_train = stats.get("epochs", [])
        epoch_train_s = [e["train_s"] for e in epoch_train]
        out.update(
            epochs=len(epochs),
            steps=len(opt),
            time_per_step_s=_mean(step_times),
            median_step_s=float(statistics.median(step_times)) if step_times else None,
            steps_per_s=(len(step_times) / sum(step_times)) if step_times and sum(step_times) > 0 else None,
            time_per_epoch_s=_mean(epoch_train_s),
            time_per_epoch_after_first_s=_mean(epoch_train_s[1:]) if len(epoch_train_s) > 1 else None,
            median_epoch_s=float(statistics.median(epoch_train_s)) if epoch_train_s else None,
            valid_time_per_epoch_s=_mean([r.get("time") for r in evals if r.get("epoch") is not None]),
            train_s=stats.get("train_s"),
            setup_s=(stats["train_start"] - stats["process_start"]) if stats.get("train_start") and stats.get(
                "process_start") else None,
            stop_reason=stats.get("stop_reason"),
            cuda_peak_mib=(stats["cuda_peak_bytes"] / 2**20) if stats.get("cuda_peak_bytes") else None,
        )
        # learning curves (MACE's results file, plus the epoch timing of the instrumentation)
        train_loss = {}
        for e in epochs:
            losses = [float(r["loss"]) for r in opt if int(r["epoch"]) == e]
            train_loss[e] = _mean(losses)
        t0 = stats.get("train_start")
        elapsed = {e["epoch"]: (e["start"] + e["train_s"] - t0) for e in epoch_train if t0}
        curve = {"epoch": [], "train_loss": [], "valid_loss": [], "valid_rmse_e_per_atom_meV": [],
                 "valid_mae_e_per_atom_meV": [], "valid_rmse_f_meV_per_A": [], "valid_mae_f_meV_per_A": [],
                 "train_elapsed_s": []}
        for r in evals:
            if r.get("epoch") is None:
                continue
            e = int(r["epoch"])
            curve["epoch"].append(e)
            curve["train_loss"].append(train_loss.get(e))
            curve["valid_loss"].append(_f(r.get("loss")))
            curve["valid_rmse_e_per_atom_meV"].append(_milli(r.get("rmse_e_per_atom")))
            curve["valid_mae_e_per_atom_meV"].append(_milli(r.get("mae_e_per_atom")))
            curve["valid_rmse_f_meV_per_A"].append(_milli(r.get("rmse_f")))
            curve["valid_mae_f_meV_per_A"].append(_milli(r.get("mae_f")))
            curve["train_elapsed_s"].append(elapsed.get(e))
        initial = next((r for r in evals if r.get("epoch") is None), None)
        if initial is not None:  # the validation before any training (plotted at epoch 0, time 0)
            curve["initial"] = {"valid_loss": _f(initial.get("loss")),
                                "valid_rmse_e_per_atom_meV": _milli(initial.get("rmse_e_per_atom")),
                                "valid_mae_e_per_atom_meV": _milli(initial.get("mae_e_per_atom")),
                                "valid_rmse_f_meV_per_A": _milli(initial.get("rmse_f")),
                                "valid_mae_f_meV_per_A": _milli(initial.get("mae_f"))}
        out["curves"] = curve
        if curve["epoch"]:
            out["valid_final"] = {k: v[-1] for k, v in curve.items() if isinstance(v, list) and k != "epoch"}
            out["valid_final"]["epoch"] = curve["epoch"][-1]
        tables = parse_error_tables(log_text)
        if tables:
            out["mace_error_tables"] = tables
        ev = _read_json(vdir / "eval.json")
        if ev:
            if ev.get("tests"):
                out["tests"] = ev["tests"]
            if ev.get("error"):
                out["eval_error"] = ev["error"]
            out["evaluated_model_parameters"] = ev.get("parameters")
            out["eval_wall_s"] = ev.get("eval_wall_s")
        return out


def _f(x):
    return None if x is None else float(x)


def _milli(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else 1e3 * float(x)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
