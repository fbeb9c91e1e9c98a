"""fairchem (EquiformerV2, fairchem-core 1.10) side of ``gaunt-compare``.

From the user's fairchem ``--config-yml`` two configs are written, identical except that

- ``upstream``: the model (or hydra backbone) section without ``tensor_product`` / ``gaunt_*`` keys,
  and with the stock model name (a Gaunt class named by dotted path or registry name is mapped
  back to ``equiformer_v2_backbone`` / ``equiformer_v2``); trained by fairchem unpatched;
- ``gaunt``: the same section with ``tensor_product: gaunt`` (the Gaunt self-mix in every
  transformer block); trained with the gaunt-plugins fairchem patch applied, as ``gaunt-run`` does.

Both are trained by fairchem's own entry point (``fairchem --mode train``) in a child process
(:mod:`._fairchem_child`) with the same ``--seed``, data and budget; ``optim.max_epochs`` carries
``--epochs``. Numbers come from fairchem itself: its validation metrics (the values it logs, one
row per validation), per-step times and losses recorded around its own ``_forward``/``_backward``,
and the best checkpoint evaluated on every ``--test`` set with fairchem's data pipeline.
"""

from __future__ import annotations

import copy
import re
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

from .mace import _mean, _read_json, read_results
from .process import Job, child_env, python_cmd

__all__ = ["FairchemFramework", "parse_val_lines"]

GAUNT_KEYS = ("tensor_product", "gaunt_method", "gaunt_zero_init", "gaunt_targets")
STOCK_NAMES = {
    "gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2Backbone": "equiformer_v2_backbone",
    "equiformer_v2_gaunt_backbone": "equiformer_v2_backbone",
    "gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2": "equiformer_v2",
    "equiformer_v2_gaunt": "equiformer_v2",
}
UNLIMITED_EPOCHS = 100000


def _set_dotted(cfg: Dict[str, Any], dotted: str, value: Any) -> None:
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _model_section(cfg: Dict[str, Any]):
    """``(section, name_key)``: the hydra backbone (``model``) or the flat model (``name``)."""
    model = cfg.get("model")
    if not isinstance(model, dict):
        raise ValueError("fairchem config: expected a `model:` mapping")
    if model.get("name") == "hydra":
        backbone = model.get("backbone")
        if not isinstance(backbone, dict):
            raise ValueError("fairchem config: hydra model without a `backbone:` mapping")
        return backbone, "model"
    return model, "name"


def parse_val_lines(log_text: str) -> List[Dict[str, float]]:
    """The validation metrics fairchem logged (the line after ``Evaluating on val.``)."""
    out = []
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith("Evaluating on val."):
            for nxt in lines[i + 1:i + 50]:
                if "epoch: " in nxt and ": " in nxt:
                    body = nxt
                    for marker in ("(INFO): ", "INFO: "):
                        if marker in nxt:
                            body = nxt.split(marker, 1)[1]
                            break
                    row = {}
                    for part in body.split(", "):
                        key, _, value = part.partition(": ")
                        try:
                            row[key.strip()] = float(value)
                        except ValueError:
                            pass
                    if "epoch" in row:
                        out.append(row)
                    break
    return out


class FairchemFramework:
    """The EquiformerV2 comparison; see the module docstring."""

    name = "fairchem"
    distribution = "fairchem-core"
    labels = {"upstream": "upstream EquiformerV2", "gaunt": "EquiformerV2 + Gaunt self-mix"}

    def __init__(self, config_path: Path, *, epochs: Optional[int], max_minutes: Optional[float],
                 seed: Optional[int], tests: List[str], set_both: Dict[str, Any],
                 set_variant: Dict[str, Dict[str, Any]], device: Optional[str], cwd: Path,
                 timeout_minutes: Optional[float] = None):
        import yaml

        self.config_path = Path(config_path)
        self.cwd = Path(cwd)
        raw = yaml.safe_load(self.config_path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{config_path}: expected a YAML mapping")
        _model_section(raw)  # validates
        self.user_config = raw
        self.base = copy.deepcopy(raw)
        self.bases = bases = [self.cwd, self.config_path.resolve().parent]
        self._resolve_sources(self.base)
        self.epochs = epochs
        self.max_minutes = max_minutes
        self.seed = seed
        self.device = device
        self.set_both = set_both
        self.set_variant = set_variant
        self.timeout_minutes = timeout_minutes
        self.tests = self._test_sets(tests, bases)
        self._progress_state: Dict[str, Dict[str, Any]] = {}

    def _resolve_sources(self, cfg: Dict[str, Any]) -> None:
        """Relative ``dataset.<split>.src`` paths become absolute (current directory, then the config's)."""
        dataset = cfg.get("dataset")
        for split in dataset.values() if isinstance(dataset, dict) else []:
            if isinstance(split, dict) and isinstance(split.get("src"), str):
                split["src"] = self._resolve(split["src"], self.bases)

    @staticmethod
    def _resolve(path: str, bases: List[Path]) -> str:
        p = Path(path).expanduser()
        if p.is_absolute():
            return str(p)
        for base in bases:
            if (base / p).exists():
                return str((base / p).resolve())
        return path

    def _test_sets(self, tests: List[str], bases: List[Path]) -> Dict[str, str]:
        import glob

        out: Dict[str, str] = {}
        specs = []
        for spec in tests:
            name, sep, path = spec.partition("=")
            if not sep:
                name, path = None, spec
            if glob.has_magic(path):
                base = Path(path).expanduser()
                matches = sorted(glob.glob(str(base if base.is_absolute() else self.cwd / base)))
                if not matches:
                    raise FileNotFoundError(f"--test {spec}: no file matches")
                specs += [(Path(m).stem, m) for m in matches]
            else:
                specs.append((name or Path(path).stem, path))
        test = (self.base.get("dataset") or {}).get("test") if isinstance(self.base.get("dataset"), dict) else None
        if isinstance(test, dict) and isinstance(test.get("src"), str):
            specs.append(("test", test["src"]))
        for name, path in specs:
            resolved = self._resolve(path, bases)
            if not Path(resolved).exists():
                raise FileNotFoundError(f"test set {name}: {path} does not exist")
            resolved = str(Path(resolved).resolve())
            if resolved in out.values():
                continue
            unique, k = name, 2
            while unique in out:
                unique, k = f"{name}_{k}", k + 1
            out[unique] = resolved
        return out

    # ----------------------------------------------------------------------- configs
    def budget(self) -> Dict[str, Any]:
        epochs = self.epochs if self.epochs is not None else (
            None if self.max_minutes is not None else (self.base.get("optim") or {}).get("max_epochs"))
        return {"epochs": epochs, "max_minutes": self.max_minutes}

    def seed_of(self, cfg: Dict[str, Any]) -> int:
        return 0 if self.seed is None else int(self.seed)  # fairchem's --seed default

    def device_of(self, cfg: Dict[str, Any]) -> str:
        if self.device is not None:
            return self.device
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:  # pragma: no cover
            return "cpu"

    def variant_config(self, variant: str, vdir: Path) -> Dict[str, Any]:
        cfg = copy.deepcopy(self.base)
        section, name_key = _model_section(cfg)
        if variant == "upstream":
            for key in GAUNT_KEYS:
                section.pop(key, None)
            section[name_key] = STOCK_NAMES.get(section.get(name_key), section.get(name_key))
        elif variant == "gaunt":
            section["tensor_product"] = "gaunt"
        optim = cfg.setdefault("optim", {})
        if self.epochs is not None:
            optim["max_epochs"] = int(self.epochs)
        elif self.max_minutes is not None:
            optim["max_epochs"] = UNLIMITED_EPOCHS
        for key, value in list(self.set_both.items()) + list(self.set_variant.get(variant, {}).items()):
            _set_dotted(cfg, key, value)
        self._resolve_sources(cfg)
        return cfg

    def config_differences(self) -> Dict[str, Any]:
        def flat(d, prefix=""):
            out = {}
            for k, v in d.items():
                if isinstance(v, dict):
                    out.update(flat(v, f"{prefix}{k}."))
                else:
                    out[f"{prefix}{k}"] = v
            return out

        a = flat(self.variant_config("upstream", Path("/x")))
        b = flat(self.variant_config("gaunt", Path("/x")))
        return {k: {"upstream": a.get(k), "gaunt": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}

    def prepare(self, variant: str, vdir: Path) -> Job:
        import yaml

        vdir.mkdir(parents=True, exist_ok=True)
        cfg = self.variant_config(variant, vdir)
        cfg_path = vdir / "config.yml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        args = ["--stats", str(vdir / "stats.json"), "--results", str(vdir / "compare_results.jsonl")]
        if self.max_minutes is not None:
            args += ["--max-seconds", f"{60.0 * self.max_minutes:.3f}"]
        if variant == "gaunt":
            args.append("--gaunt")
        if self.tests:
            args += ["--eval-out", str(vdir / "eval.json")]
            for name, path in self.tests.items():
                args += ["--test", f"{name}={path}"]
        fc = ["--mode", "train", "--config-yml", str(cfg_path), "--run-dir", str(vdir), "--identifier", variant,
              "--timestamp-id", variant, "--seed", str(self.seed_of(cfg)),
              "--print-every", str(cfg.get("cmd", {}).get("print_every", 10) if isinstance(cfg.get("cmd"), dict)
                                   else 10)]
        if self.device_of(cfg) == "cpu":
            fc.append("--cpu")
        drop = ["GAUNT_PLUGINS_AUTOPATCH"] if variant == "upstream" else []
        timeout = None if self.timeout_minutes is None else 60.0 * self.timeout_minutes
        return Job(cmd=python_cmd("gaunt_plugins.compare._fairchem_child", *args, "--", *fc), cwd=vdir,
                   env=child_env(drop=drop), log=vdir / "stdout.log", timeout_s=timeout, label=variant)

    # ----------------------------------------------------------------------- reading back
    def progress(self, variant: str, vdir: Path, elapsed_s: float) -> List[str]:
        state = self._progress_state.setdefault(variant, {"rows": 0, "last_report": 0.0})
        rows = read_results(vdir / "compare_results.jsonl")
        stats = _read_json(vdir / "stats.json") or {}
        lines = []
        for row in rows[state["rows"]:]:
            if row.get("mode") == "eval":
                epoch = row.get("epoch")
                ep = next((e for e in stats.get("epochs", []) if e.get("epoch") == epoch), {})
                total = self.budget()["epochs"]
                of = f"/{total}" if total and total < UNLIMITED_EPOCHS else ""
                metrics = ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                    if k not in ("mode", "epoch", "fairchem_epoch", "step", "time"))
                lines.append(f"epoch {(epoch or 0) + 1}{of}: valid {metrics}"
                             + (f", {ep['train_s']:.1f} s/epoch" if ep.get("train_s") else ""))
        state["rows"] = len(rows)
        if not lines and elapsed_s - state["last_report"] >= 60.0:
            phase = "setting up (data, model)" if not stats.get("train_start") else (
                "final evaluation" if stats.get("train_end") else f"training epoch {len(stats.get('epochs', [])) + 1}")
            lines.append(f"{phase}, {elapsed_s / 60:.1f} min elapsed")
        if lines:
            state["last_report"] = elapsed_s
        return lines

    def eval_job(self, variant: str, vdir: Path) -> Optional[Job]:
        return None  # evaluated in the training process (the trainer holds the data pipeline)

    def collect(self, variant: str, vdir: Path) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        ckpt_dir = vdir / "checkpoints" / variant
        out["files"] = {"results": str(vdir / "compare_results.jsonl"), "log": str(vdir / "stdout.log"),
                        "checkpoint": str(ckpt_dir / "best_checkpoint.pt") if (ckpt_dir / "best_checkpoint.pt").exists()
                        else (str(ckpt_dir / "checkpoint.pt") if (ckpt_dir / "checkpoint.pt").exists() else None)}
        stats = _read_json(vdir / "stats.json") or {}
        rows = read_results(vdir / "compare_results.jsonl")
        opt = [r for r in rows if r.get("mode") == "opt"]
        evals = [r for r in rows if r.get("mode") == "eval"]
        step_times = [float(r["time"]) for r in opt]
        epoch_train_s = [e["train_s"] for e in stats.get("epochs", [])]
        log_text = ""
        try:
            log_text = (vdir / "stdout.log").read_text(errors="replace")
        except OSError:
            pass
        m = re.search(r"gaunt-compare: model (\S+) has (\d+) parameters", log_text)
        out.update(
            parameters=int(m.group(2)) if m else stats.get("parameters"),
            model_class=m.group(1) if m else stats.get("model_class"),
            epochs=len(epoch_train_s),
            steps=len(opt),
            time_per_step_s=_mean(step_times),
            median_step_s=float(statistics.median(step_times)) if step_times else None,
            steps_per_s=(len(step_times) / sum(step_times)) if step_times and sum(step_times) > 0 else None,
            time_per_epoch_s=_mean(epoch_train_s),
            time_per_epoch_after_first_s=_mean(epoch_train_s[1:]) if len(epoch_train_s) > 1 else None,
            median_epoch_s=float(statistics.median(epoch_train_s)) if epoch_train_s else None,
            valid_time_per_epoch_s=_mean([r.get("time") for r in evals]),
            train_s=stats.get("train_s"),
            setup_s=(stats["train_start"] - stats["process_start"]) if stats.get("train_start") else None,
            stop_reason=stats.get("stop_reason"),
            cuda_peak_mib=(stats["cuda_peak_bytes"] / 2**20) if stats.get("cuda_peak_bytes") else None,
        )
        t0 = stats.get("train_start")
        elapsed = {e["epoch"]: e["start"] + e["train_s"] - t0 for e in stats.get("epochs", []) if t0}
        curve: Dict[str, Any] = {"epoch": [], "train_loss": [], "valid_loss": [], "valid_mae_e_meV": [],
                                 "valid_mae_f_meV_per_A": [], "train_elapsed_s": []}
        for r in evals:
            e = r.get("epoch")
            curve["epoch"].append(e)
            curve["train_loss"].append(_mean([o["loss"] for o in opt if o.get("epoch") == e]))
            curve["valid_loss"].append(r.get("loss"))
            curve["valid_mae_e_meV"].append(1e3 * r["energy_mae"] if "energy_mae" in r else None)
            curve["valid_mae_f_meV_per_A"].append(1e3 * r["forces_mae"] if "forces_mae" in r else None)
            curve["train_elapsed_s"].append(elapsed.get(e))
        out["curves"] = curve
        out["valid_metrics"] = [{k: v for k, v in r.items() if k != "mode"} for r in evals]
        gaunt_lines = [ln.split("gaunt-plugins", 1)[1].strip(": ") for ln in log_text.splitlines()
                       if "gaunt-plugins" in ln and "INFO" in ln]
        if gaunt_lines:
            out["gaunt_plugins_log"] = gaunt_lines[:20]
        ev = _read_json(vdir / "eval.json")
        if ev:
            if ev.get("tests"):
                out["tests"] = ev["tests"]
            if ev.get("error"):
                out["eval_error"] = ev["error"]
            out["evaluated_model_parameters"] = ev.get("parameters")
            out["evaluated_checkpoint"] = ev.get("checkpoint")
            out["eval_wall_s"] = ev.get("eval_wall_s")
        return out
