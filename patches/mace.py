"""The MACE patch: ``tensor_product: gaunt`` in ``mace_run_train``.

Applying it (``gaunt_plugins.patch("mace")``, ``gaunt-run``, or the automatic hook) changes, and
:meth:`MacePatch.revert` puts back exactly:

- ``mace.modules.interaction_classes`` gains ``GauntRealAgnosticInteractionBlock`` and
  ``GauntRealAgnosticResidualInteractionBlock`` (so ``--interaction`` / ``--interaction_first`` and
  configs naming them resolve);
- ``mace.tools.build_default_arg_parser`` (the one ``mace_run_train`` calls) also accepts
  ``--tensor_product {e3nn,gaunt}``, ``--gaunt_targets``, ``--gaunt_method`` and the Gaunt
  interaction names; a YAML passed with ``--config`` may carry the same keys;
- ``configure_model`` (as imported by ``mace.cli.run_train``): with ``tensor_product: gaunt``
  the arguments are checked (natural-parity hidden irreps, no cuEquivariance/OpenEquivariance) and
  MACE's own constructors build the chosen blocks as Gaunt blocks directly
  (:func:`gaunt_plugins.adapters.mace_blocks.gaunt_construction`: MACE's CG instructions and
  U-matrices for them are never computed); fine-tuning from a foundation model builds MACE's model,
  loads the foundation's weights and converts the chosen parts with
  :func:`gaunt_plugins.adapters.mace_blocks.gauntify_model`. Without the key (or ``tensor_product:
  e3nn``) the original function runs untouched.
- ``restart_latest`` (any ``tensor_product``): the checkpoints record the run's Gaunt settings
  (``CheckpointBuilder.create_checkpoint``) and a restart from a checkpoint of another model is
  refused once the model is built, before MACE could swallow the mismatch and write over the
  earlier run (:mod:`gaunt_plugins.patches.mace_restart`).
- ``init_distributed`` and ``DDP`` (as ``mace.cli.run_train`` uses them): ``--distributed
  --launcher torchrun --device cpu`` gets a gloo process group and a CPU ``DistributedDataParallel``
  (upstream MACE only initialises nccl/ccl and passes GPU device ids, so CPU runs fail); GPU runs
  are unchanged.

Importing this module imports neither MACE nor torch; :meth:`MacePatch.apply` does.
"""

from __future__ import annotations

import functools
import logging

from .base import FrameworkPatch

__all__ = ["MacePatch"]


def _wrap_parser_builder(original):
    @functools.wraps(original)
    def build_default_arg_parser(*args, **kwargs):
        from gaunt_plugins.adapters.mace_blocks import GAUNT_INTERACTIONS
        from gaunt_plugins.adapters.mace_config import add_arguments

        parser = original(*args, **kwargs)
        add_arguments(parser)
        names = {stock.__name__: gaunt.__name__ for stock, gaunt in GAUNT_INTERACTIONS.items()}
        for action in parser._actions:  # pylint: disable=protected-access
            if action.dest in ("interaction", "interaction_first") and action.choices:
                extra = [g for s, g in names.items() if s in action.choices and g not in action.choices]
                action.choices = list(action.choices) + extra
        return parser

    build_default_arg_parser.__gaunt_original__ = original
    return build_default_arg_parser


def _wrap_configure_model(original):
    @functools.wraps(original)
    def configure_model(args, *rest, **kwargs):
        from gaunt_plugins.adapters.mace_config import check_backends, check_irreps, options_from_args

        options = options_from_args(args)
        if options is None:
            return original(args, *rest, **kwargs)
        check_backends(
            enable_cueq=bool(getattr(args, "enable_cueq", False)),
            enable_oeq=bool(getattr(args, "enable_oeq", False)),
            only_cueq=bool(getattr(args, "only_cueq", False)),
        )
        if getattr(args, "hidden_irreps", None) is not None:
            check_irreps(args.hidden_irreps)
        if getattr(args, "use_so3", False):
            raise ValueError(
                "tensor_product: gaunt cannot be combined with use_so3: True (the SO(3) spherical "
                "harmonics carry pseudotensor parities)"
            )
        from gaunt_plugins.adapters.mace_blocks import built_blocks, gaunt_construction, gauntify_model

        foundation = rest[2] if len(rest) > 2 else kwargs.get("model_foundation")
        if foundation is None:  # a new model: MACE's constructors build the Gaunt blocks directly
            interactions = (getattr(args, "interaction", None), getattr(args, "interaction_first", None))
            with gaunt_construction(options, tuple(name for name in interactions if name)):
                model, output_args = original(args, *rest, **kwargs)
            # MACE logs through the root logger: so do we, into its log file
            logging.info("gaunt-plugins: %s; Gaunt blocks built directly", options.describe())
            for line in built_blocks(model):
                logging.info("gaunt-plugins:   %s", line)
            return model, output_args
        # fine-tuning: MACE loads the foundation's weights into its own blocks, which are then converted
        model, output_args = original(args, *rest, **kwargs)
        model, report = gauntify_model(model, options)
        logging.info(
            "gaunt-plugins: %s; %d tensors kept, %d parameters freshly initialised",
            options.describe(),
            len(report.copied),
            len(report.fresh),
        )
        for line in report.converted_blocks:
            logging.info("gaunt-plugins:   %s", line)
        return model, output_args

    configure_model.__gaunt_original__ = original
    return configure_model


def _wrap_restart_check(original):
    """After the model is built: remember its settings for its checkpoints, and refuse a
    ``restart_latest`` from a checkpoint of another model (see :mod:`.mace_restart`)."""

    @functools.wraps(original)
    def configure_model(args, *rest, **kwargs):
        from .mace_restart import check_restart, remember_settings, run_settings

        model, output_args = original(args, *rest, **kwargs)
        check_restart(args, model)
        remember_settings(model, run_settings(args))
        return model, output_args

    configure_model.__gaunt_original__ = original
    return configure_model


def _wrap_create_checkpoint(original):
    """Every checkpoint carries the settings of the run that wrote it (MACE ignores the extra key)."""

    @functools.wraps(original)
    def create_checkpoint(state):
        from .mace_restart import RECORD_KEY, settings_of

        checkpoint = original(state)
        settings = settings_of(state.model)
        if settings is not None:
            checkpoint[RECORD_KEY] = settings
        return checkpoint

    create_checkpoint.__gaunt_original__ = original
    return staticmethod(create_checkpoint)


def _wrap_init_distributed(original):
    """MACE initialises a process group only for cuda (nccl) and xpu (ccl): on CPU ``--distributed``
    fails. Add the gloo group for ``--device cpu`` (nothing changes on GPUs)."""

    @functools.wraps(original)
    def init_distributed(args):
        result = original(args)
        import torch.distributed as dist

        if (getattr(args, "distributed", False) and getattr(args, "device", None) == "cpu"
                and getattr(args, "launcher", None) != "none" and not dist.is_initialized()):
            dist.init_process_group(backend="gloo", init_method="env://")
        return result

    init_distributed.__gaunt_original__ = original
    return init_distributed


def _wrap_ddp(original):
    """``DDP(model, device_ids=[local_rank])`` as MACE calls it is refused for CPU modules: drop the
    device ids for a model on the CPU (GPU models are wrapped exactly as before)."""

    @functools.wraps(original, updated=())
    def DistributedDataParallel(module, *args, **kwargs):  # pylint: disable=invalid-name
        first = next(module.parameters(), None)
        if first is not None and first.device.type == "cpu":
            kwargs.pop("device_ids", None)
            kwargs.pop("output_device", None)
        return original(module, *args, **kwargs)

    DistributedDataParallel.__gaunt_original__ = original
    return DistributedDataParallel


class MacePatch(FrameworkPatch):
    """Teach mace-torch's training CLI ``tensor_product: gaunt``; see the module docstring."""

    name = "mace"
    distribution = "mace-torch"
    supported = ">=0.3.16,<0.4"

    def _apply(self) -> None:
        import mace.modules
        import mace.tools
        import mace.tools.arg_parser
        import mace.tools.checkpoint
        import mace.tools.model_script_utils
        import mace.cli.run_train

        from gaunt_plugins.adapters.mace_blocks import GAUNT_INTERACTIONS

        for gaunt in GAUNT_INTERACTIONS.values():
            self._replace(mace.modules.interaction_classes, gaunt.__name__, gaunt)

        parser_builder = _wrap_parser_builder(mace.tools.arg_parser.build_default_arg_parser)
        self._replace(mace.tools.arg_parser, "build_default_arg_parser", parser_builder)
        self._replace(mace.tools, "build_default_arg_parser", parser_builder)

        configure = _wrap_configure_model(mace.tools.model_script_utils.configure_model)
        configure = _wrap_restart_check(configure)  # restart_latest only from a checkpoint of this model
        self._replace(mace.tools.model_script_utils, "configure_model", configure)
        self._replace(mace.cli.run_train, "configure_model", configure)
        builder = mace.tools.checkpoint.CheckpointBuilder
        self._replace(builder, "create_checkpoint", _wrap_create_checkpoint(builder.create_checkpoint))

        # --distributed on CPU (gloo), for Gaunt and e3nn models alike
        self._replace(mace.cli.run_train, "init_distributed", _wrap_init_distributed(mace.cli.run_train.init_distributed))
        self._replace(mace.cli.run_train, "DDP", _wrap_ddp(mace.cli.run_train.DDP))
