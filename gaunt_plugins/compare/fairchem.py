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

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .framework import Framework, RunRecord, milli, read_json, read_jsonl, resolve_path
from .._process import Job, child_env, python_cmd

__all__ = ["FairchemFramework", "parse_val_lines"]

GAUNT_KEYS = ("tensor_product", "gaunt_method", "gaunt_zero_init", "gaunt_normalize", "gaunt_targets")
STOCK_NAMES = {
    "gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2Backbone": "equiformer_v2_backbone",
    "equiformer_v2_gaunt_backbone": "equiformer_v2_backbone",
    "gaunt_plugins.adapters.equiformer_v2.GauntEquiformerV2": "equiformer_v2",
    "equiformer_v2_gaunt": "equiformer_v2",
}
# fairchem's validation metric names -> the harness's (eV -> meV)
EVAL_KEYS = {"energy_mae": "mae_e_meV", "forces_mae": "mae_f_meV_per_A"}


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


class FairchemFramework(Framework):
    """The EquiformerV2 comparison; see the module docstring."""

    name = "fairchem"
    distribution = "fairchem-core"
    labels = {"upstream": "upstream EquiformerV2", "gaunt": "EquiformerV2 + Gaunt self-mix"}

    def _prepare_base(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        _model_section(raw)  # validates
        self._resolve_sources(raw)
        return raw

    def _resolve_sources(self, cfg: Dict[str, Any]) -> None:
        """Relative ``dataset.<split>.src`` paths become absolute (current directory, then the config's)."""
        dataset = cfg.get("dataset")
        for split in dataset.values() if isinstance(dataset, dict) else []:
            if isinstance(split, dict) and isinstance(split.get("src"), str):
                found = resolve_path(split["src"], self.bases)
                split["src"] = str(found) if found is not None else split["src"]

    def _config_tests(self) -> List[Tuple[str, str]]:
        dataset = self.base.get("dataset")
        test = dataset.get("test") if isinstance(dataset, dict) else None
        return [("test", test["src"])] if isinstance(test, dict) and isinstance(test.get("src"), str) else []

    def configured_epochs(self) -> Optional[int]:
        return (self.base.get("optim") or {}).get("max_epochs")

    def default_seed(self) -> int:
        return 0  # fairchem's --seed default

    def device(self) -> str:
        if self.options.device is not None:
            return self.options.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def variant_config(self, variant: str, folder: Path, seed: int) -> Dict[str, Any]:
        import copy

        cfg = copy.deepcopy(self.base)
        section, name_key = _model_section(cfg)
        if variant == "upstream":
            for key in GAUNT_KEYS:
                section.pop(key, None)
            section[name_key] = STOCK_NAMES.get(section.get(name_key), section.get(name_key))
        else:
            section["tensor_product"] = "gaunt"
        if self.epoch_limit() is not None:
            cfg.setdefault("optim", {})["max_epochs"] = self.epoch_limit()
        for key, value in list(self.options.set_both.items()) + list(self.options.set_variant.get(variant, {}).items()):
            _set_dotted(cfg, key, value)
        self._resolve_sources(cfg)
        return cfg

    def job(self, variant: str, folder: Path, seed: int) -> Job:
        import yaml

        folder.mkdir(parents=True, exist_ok=True)
        cfg = self.variant_config(variant, folder, seed)
        cfg_path = folder / "config.yml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        args = ["--stats", str(folder / "stats.json"), "--results", str(folder / "compare_results.jsonl")]
        if self.options.max_minutes is not None:
            args += ["--max-seconds", f"{60.0 * self.options.max_minutes:.3f}"]
        if variant == "gaunt":
            args.append("--gaunt")
        if self.tests:
            args += ["--eval-out", str(folder / "eval.json")]
            for name, path in self.tests.items():
                args += ["--test", f"{name}={path}"]
        print_every = cfg["cmd"].get("print_every", 10) if isinstance(cfg.get("cmd"), dict) else 10
        fc = ["--mode", "train", "--config-yml", str(cfg_path), "--run-dir", str(folder), "--identifier", variant,
              "--timestamp-id", variant, "--seed", str(seed), "--print-every", str(print_every)]
        if self.device() == "cpu":
            fc.append("--cpu")
        drop = ["GAUNT_PLUGINS_AUTOPATCH"] if variant == "upstream" else []
        return Job(cmd=python_cmd("gaunt_plugins.compare._fairchem_child", *args, "--", *fc), cwd=folder,
                   env=child_env(drop=drop), log=folder / "stdout.log", timeout_s=self.timeout_s(), label=variant)

    def read_run(self, folder: Path) -> RunRecord:
        """The rows the instrumentation wrote around fairchem's own calls, and fairchem's log."""
        ckpt = next((p for p in sorted((folder / "checkpoints").glob("*/best_checkpoint.pt"))), None) or next(
            (p for p in sorted((folder / "checkpoints").glob("*/checkpoint.pt"))), None)
        files = {"results": str(folder / "compare_results.jsonl"), "log": str(folder / "stdout.log"),
                 "checkpoint": str(ckpt) if ckpt else None}
        rows = read_jsonl(folder / "compare_results.jsonl")
        opt = [r for r in rows if r.get("mode") == "opt"]
        raw_evals = [r for r in rows if r.get("mode") == "eval"]
        evals = [dict({"epoch": r.get("epoch"), "loss": r.get("loss"), "time": r.get("time")},
                      **{ours: milli(r.get(theirs)) for theirs, ours in EVAL_KEYS.items()}) for r in raw_evals]
        try:
            log_text = (folder / "stdout.log").read_text(errors="replace")
        except OSError:
            log_text = ""
        gaunt_lines = [ln.split("gaunt-plugins", 1)[1].strip(": ") for ln in log_text.splitlines()
                       if "gaunt-plugins" in ln and "INFO" in ln]
        extra = {"valid_metrics": [{k: v for k, v in r.items() if k != "mode"} for r in raw_evals],
                 "gaunt_plugins_log": gaunt_lines[:20] or None}
        return RunRecord(opt=opt, evals=evals, stats=read_json(folder / "stats.json") or {}, files=files, extra=extra)
