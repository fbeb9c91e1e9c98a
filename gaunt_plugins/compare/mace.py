"""MACE side of ``gaunt-compare``: the two configs, the training and evaluation commands, and
reading back what MACE logged.

From the user's ``mace_run_train`` YAML two configs are written, identical except that

- ``upstream`` has no ``tensor_product`` key (and no ``gaunt_*`` keys), and is trained by
  ``mace_run_train`` unpatched: MACE exactly as released;
- ``gaunt`` has ``tensor_product: gaunt`` (a ``gaunt_targets`` / ``gaunt_method`` the user gave is
  kept) and is trained with the gaunt-plugins MACE patch applied, as ``gaunt-run`` does.

Both get the same seed, data, batch size and budget; the output locations (``work_dir``,
``log_dir``, ``model_dir``, ``checkpoints_dir``, ``results_dir``) point into the run's folder of the
report, and relative data paths are made absolute. Numbers are read from MACE's own files: the
results file (one JSON row per optimisation step and per validation), its log (parameter count,
per-epoch training time and the final error tables), and the saved ``<name>.model``, evaluated on
every test set by the training process. MACE appends to its results file and log, so only their
last run is read (:func:`this_run_rows`, :func:`this_run_log`).
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ._mace_eval import saved_model
from .framework import Framework, RunRecord, milli, read_json, read_jsonl, resolve_path
from .._process import Job, child_env, python_cmd

__all__ = ["MaceFramework", "parse_error_tables", "parse_compare_lines", "this_run_rows", "this_run_log"]

GAUNT_KEYS = ("tensor_product", "gaunt_targets", "gaunt_method", "gaunt_conv_products", "gaunt_product_chains",
              "gaunt_product_gain", "gaunt_product_odd_chains")
OUTPUT_DIR_KEYS = ("work_dir", "log_dir", "model_dir", "checkpoints_dir", "results_dir", "downloads_dir")
PATH_KEY = re.compile(r"(_file|_dir|_path|^foundation_model)$")
RUN_START = "===========VERIFYING SETTINGS==========="  # the first line ``mace_run_train`` logs


def _absolutise(value: Any, key: str, bases: List[Path]) -> Any:
    """Relative paths in path-like keys become absolute: relative to the first of ``bases`` (the
    current directory, as ``mace_run_train`` reads them, then the config's folder) where they exist."""
    if isinstance(value, dict):
        return {k: _absolutise(v, str(k), bases) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolutise(v, key, bases) for v in value]
    if isinstance(value, str) and PATH_KEY.search(key) and key not in OUTPUT_DIR_KEYS:
        found = resolve_path(value, bases)
        return str(found) if found is not None else value
    return value


def this_run_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The rows of the last run in a MACE results file: MACE appends to it, and every run starts
    with its validation before training (``mode: eval``, ``epoch: null``, one row per head)."""
    start = 0
    for i, row in enumerate(rows):
        initial = row.get("mode") == "eval" and row.get("epoch") is None
        previous_initial = i > 0 and rows[i - 1].get("mode") == "eval" and rows[i - 1].get("epoch") is None
        if initial and not previous_initial:
            start = i
    return rows[start:]


def this_run_log(text: str) -> str:
    """The part of a MACE log written by its last run (MACE appends to the log file)."""
    index = text.rfind(RUN_START)
    if index < 0:
        return text
    return text[text.rfind("\n", 0, index) + 1:]


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


class MaceFramework(Framework):
    """The MACE comparison; see the module docstring."""

    name = "mace"
    distribution = "mace-torch"
    labels = {"upstream": "upstream MACE (e3nn)", "gaunt": "MACE + tensor_product: gaunt"}

    def _prepare_base(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        return _absolutise(raw, "", self.bases)

    def _config_tests(self) -> List[Tuple[str, str]]:
        tests = self.base.get("test_file")
        return [(Path(p).stem, p) for p in ([tests] if isinstance(tests, str) else list(tests or []))]

    def configured_epochs(self) -> Optional[int]:
        return self.base.get("max_num_epochs")

    def default_seed(self) -> int:
        return int(self.base.get("seed", 123))  # mace_run_train's default

    def device(self) -> str:
        return str(self.options.device or self.base.get("device", "cpu"))

    def variant_config(self, variant: str, folder: Path, seed: int) -> Dict[str, Any]:
        cfg = dict(self.base)
        if variant == "upstream":
            for key in GAUNT_KEYS:
                cfg.pop(key, None)
        else:
            cfg["tensor_product"] = "gaunt"
        if self.epoch_limit() is not None:
            cfg["max_num_epochs"] = self.epoch_limit()
        if self.options.device is not None:
            cfg["device"] = self.options.device
        cfg.update(self.options.set_both)
        cfg.update(self.options.set_variant.get(variant, {}))
        cfg["seed"] = int(seed)
        cfg = _absolutise(cfg, "", self.bases)  # paths given with --set
        folder = folder.resolve()
        cfg.update(work_dir=str(folder), log_dir=str(folder / "logs"), model_dir=str(folder),
                   checkpoints_dir=str(folder / "checkpoints"), results_dir=str(folder / "results"),
                   downloads_dir=str(folder / "downloads"))
        cfg.setdefault("name", "mace")
        return cfg

    def job(self, variant: str, folder: Path, seed: int) -> Job:
        import yaml

        folder.mkdir(parents=True, exist_ok=True)
        cfg = self.variant_config(variant, folder, seed)
        cfg_path = folder / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        args = ["--stats", str(folder / "stats.json")]
        if self.options.max_minutes is not None:
            args += ["--max-seconds", f"{60.0 * self.options.max_minutes:.3f}"]
        if variant == "gaunt":
            args.append("--gaunt")
        if self.tests:  # evaluated in the training process once MACE has saved the model
            args += ["--eval-out", str(folder / "eval.json"), "--eval-batch-size", str(cfg.get("valid_batch_size", 10))]
            for name, path in self.tests.items():
                args += ["--test", f"{name}={path}"]
        args += ["--", "--config", str(cfg_path)]
        drop = ["GAUNT_PLUGINS_AUTOPATCH"] if variant == "upstream" else []
        return Job(cmd=python_cmd("gaunt_plugins.compare._mace_child", *args), cwd=folder, env=child_env(drop=drop),
                   log=folder / "stdout.log", timeout_s=self.timeout_s(), label=variant)

    def eval_job(self, variant: str, folder: Path) -> Optional[Job]:
        """A separate evaluation, only for a model the training process saved but did not evaluate
        (the training process evaluates its model itself, see ``_mace_child``)."""
        cfg = _run_config(folder)
        model = self._files(folder, cfg)["model"]
        if model is None or not self.tests or (folder / "eval.json").exists():
            return None
        args = ["--model", model, "--out", str(folder / "eval.json"),
                "--energy-key", str(cfg.get("energy_key", "REF_energy")),
                "--forces-key", str(cfg.get("forces_key", "REF_forces")),
                "--dtype", str(cfg.get("default_dtype", "float64")),
                "--device", str(cfg.get("device", "cpu")),
                "--batch-size", str(cfg.get("valid_batch_size", 10))]
        for name, path in self.tests.items():
            args += ["--test", f"{name}={path}"]
        return Job(cmd=python_cmd("gaunt_plugins.compare._mace_eval", *args), cwd=folder, env=child_env(),
                   log=folder / "eval.log", timeout_s=self.timeout_s(), label=f"{variant} evaluation")

    # ----------------------------------------------------------------------- reading MACE's files
    @staticmethod
    def _files(folder: Path, cfg: Dict[str, Any]) -> Dict[str, Optional[str]]:
        name = cfg.get("name", "mace")
        results = sorted(glob.glob(str(folder / "results" / f"{glob.escape(name)}_run-*_train.txt")))
        logs = sorted(p for p in glob.glob(str(folder / "logs" / f"{glob.escape(name)}_run-*.log"))
                      if not p.endswith("_debug.log"))
        model = saved_model(folder, name)
        return {"results": results[-1] if results else None, "log": logs[-1] if logs else None,
                "model": str(model) if model else None}

    def read_run(self, folder: Path) -> RunRecord:
        """MACE's results file and log (their last run only), and the instrumentation's stats."""
        files = self._files(folder, _run_config(folder))
        rows = this_run_rows(read_jsonl(Path(files["results"])) if files["results"] else [])
        heads = [r.get("head") for r in rows if r.get("mode") == "eval"]
        head = heads[-1] if heads else None
        opt = [{"epoch": r.get("epoch"), "loss": r.get("loss"), "time": r.get("time")}
               for r in rows if r.get("mode") == "opt"]
        evals = [_eval_row(r) for r in rows if r.get("mode") == "eval" and r.get("head") == head]
        log_text = ""
        if files["log"]:
            log_text = this_run_log(Path(files["log"]).read_text(errors="replace"))
        logged = parse_compare_lines(log_text)
        extra: Dict[str, Any] = {"parameters": logged.get("parameters"), "model_class": logged.get("model_class"),
                                 "gaunt_plugins_log": logged["gaunt_plugins"] or None,
                                 "mace_error_tables": parse_error_tables(log_text) or None}
        return RunRecord(opt=opt, evals=evals, stats=read_json(folder / "stats.json") or {}, files=files, extra=extra)


def _run_config(folder: Path) -> Dict[str, Any]:
    """The config the run in ``folder`` was given (``{}`` before it is written)."""
    import yaml

    try:
        return yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _eval_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A row of MACE's results file (eV, eV/Å) as the harness's validation row (meV, meV/Å)."""
    return {"epoch": row.get("epoch"), "loss": row.get("loss"), "time": row.get("time"),
            "rmse_e_per_atom_meV": milli(row.get("rmse_e_per_atom")),
            "mae_e_per_atom_meV": milli(row.get("mae_e_per_atom")),
            "rmse_f_meV_per_A": milli(row.get("rmse_f")), "mae_f_meV_per_A": milli(row.get("mae_f"))}
