"""The MACE patch: ``tensor_product: gaunt`` in ``mace_run_train``.

Applying it (``gaunt_plugins.patch("mace")``, ``gaunt-run``, or the automatic hook) changes, and
:meth:`MacePatch.revert` puts back exactly:

- ``mace.modules.interaction_classes`` gains ``GauntRealAgnosticInteractionBlock`` and
  ``GauntRealAgnosticResidualInteractionBlock`` (so ``--interaction`` / ``--interaction_first`` and
  configs naming them resolve);
- ``mace.tools.build_default_arg_parser`` (the one ``mace_run_train`` calls) also accepts
  ``--tensor_product {e3nn,gaunt}``, ``--gaunt_targets``, ``--gaunt_method`` and the Gaunt
  interaction names; a YAML passed with ``--config`` may carry the same keys (one left empty is refused,
  as are ``gaunt_*`` keys without ``tensor_product: gaunt``);
- ``configure_model`` (as imported by ``mace.cli.run_train``): with ``tensor_product: gaunt``
  the arguments are checked (natural-parity hidden irreps, no cuEquivariance/OpenEquivariance) and
  MACE's own constructors build the chosen blocks as Gaunt blocks directly
  (:func:`gaunt_plugins.adapters.mace_blocks.gaunt_construction`: MACE's CG instructions and
  U-matrices for them are never computed); fine-tuning from an e3nn foundation model builds MACE's
  model, loads the foundation's weights and converts the chosen parts with
  :func:`gaunt_plugins.adapters.mace_blocks.gauntify_model`. Fine-tuning from a foundation model with
  Gaunt blocks (with or without the key) rebuilds those blocks as they are
  (:mod:`gaunt_plugins.adapters.mace_finetune`). Otherwise, without the key (or ``tensor_product:
  e3nn``) the original function runs untouched.
- ``load_foundations_elements`` (as imported by ``configure_model``): MACE's element subsetting and weight
  copying, extended to the Gaunt blocks; models without them take MACE's function untouched.
- ``remove_pt_head`` (as ``mace.cli.run_train`` uses it): the single-head copy of a multi-head Gaunt foundation
  model keeps its Gaunt blocks.
- ``main`` of ``mace.cli.run_train`` (the ``mace_run_train`` command): a setting the patch refuses
  (:class:`~gaunt_plugins.adapters.mace_config.GauntSettingsError`, a restart from another model's or an
  unreadable checkpoint) ends the command with its message on one line and status 2, not a traceback.
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
import sys

from .base import FrameworkPatch

__all__ = ["MacePatch"]


def _wrap_parser_builder(original):
    @functools.wraps(original)
    def build_default_arg_parser(*args, **kwargs):
        from gaunt_plugins.adapters.mace_blocks import GAUNT_INTERACTIONS
        from gaunt_plugins.adapters.mace_config import add_arguments

        parser = original(*args, **kwargs)
        add_arguments(parser)
        _check_config_files(parser)
        names = {stock.__name__: gaunt.__name__ for stock, gaunt in GAUNT_INTERACTIONS.items()}
        for action in parser._actions:  # pylint: disable=protected-access
            if action.dest in ("interaction", "interaction_first") and action.choices:
                extra = [g for s, g in names.items() if s in action.choices and g not in action.choices]
                action.choices = list(action.choices) + extra
        return parser

    build_default_arg_parser.__gaunt_original__ = original
    return build_default_arg_parser


def _check_config_files(parser) -> None:
    """After parsing, refuse a Gaunt key left empty in the ``--config`` YAML (the config parser drops it)."""
    parse_known_args = parser.parse_known_args

    @functools.wraps(parse_known_args)
    def checked(*args, **kwargs):
        from gaunt_plugins.adapters.mace_config import GauntSettingsError, check_config_file

        namespace, rest = parse_known_args(*args, **kwargs)
        config = getattr(namespace, "config", None)
        for path in config if isinstance(config, (list, tuple)) else [config] if config else []:
            try:
                check_config_file(path)
            except GauntSettingsError as exc:
                parser.error(str(exc))
        return namespace, rest

    parser.parse_known_args = checked


def _wrap_configure_model(original):
    @functools.wraps(original)
    def configure_model(args, *rest, **kwargs):
        from gaunt_plugins.adapters.mace_config import (GauntSettingsError, check_backends, check_irreps,
                                                        options_from_args)

        foundation = rest[2] if len(rest) > 2 else kwargs.get("model_foundation")
        found = None
        if foundation is not None:
            from gaunt_plugins.adapters.mace_finetune import resolve_settings

            found = resolve_settings(args, foundation)  # the foundation's Gaunt blocks are kept as they are
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
            raise GauntSettingsError(
                "tensor_product: gaunt cannot be combined with use_so3: True (the SO(3) spherical "
                "harmonics carry pseudotensor parities)"
            )
        from gaunt_plugins.adapters.mace_blocks import built_blocks, gaunt_construction, gauntify_model

        if foundation is None:  # a new model: MACE's constructors build the Gaunt blocks directly
            interactions = (getattr(args, "interaction", None), getattr(args, "interaction_first", None))
            with gaunt_construction(options, tuple(name for name in interactions if name)):
                model, output_args = original(args, *rest, **kwargs)
            # MACE logs through the root logger: so do we, into its log file
            logging.info("gaunt-plugins: %s; Gaunt blocks built directly", options.describe())
            for line in built_blocks(model):
                logging.info("gaunt-plugins:   %s", line)
            return model, output_args
        if found is not None:  # a Gaunt foundation: MACE rebuilds its Gaunt blocks and loads them (patched)
            logging.info("gaunt-plugins: the foundation model's Gaunt blocks are kept: %s", found.describe())
            with gaunt_construction(found):
                model, output_args = original(args, *rest, **kwargs)
        else:  # an e3nn foundation: MACE loads its weights into its own blocks, which are then converted
            model, output_args = original(args, *rest, **kwargs)
        model, report = gauntify_model(model, options)
        if found is not None and not report.converted_blocks:
            return model, output_args  # every block asked for came from the foundation
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


def _wrap_load_foundations(original):
    """MACE's element subsetting of a foundation model's weights, extended to the Gaunt blocks."""

    @functools.wraps(original)
    def load_foundations_elements(model, model_foundations, table, *args, **kwargs):
        from gaunt_plugins.adapters.mace_finetune import load_foundations_elements as load

        return load(original, model, model_foundations, table, *args, **kwargs)

    load_foundations_elements.__gaunt_original__ = original
    return load_foundations_elements


def _wrap_remove_pt_head(original):
    """MACE's single-head copy of a multi-head foundation model rebuilds it from its extracted config, which
    names its interaction classes but not its product block: rebuild the Gaunt blocks as they are."""

    @functools.wraps(original)
    def remove_pt_head(model, *args, **kwargs):
        from gaunt_plugins.adapters.mace_blocks import gaunt_construction
        from gaunt_plugins.adapters.mace_finetune import foundation_options

        found = foundation_options(model)
        if found is None:
            return original(model, *args, **kwargs)
        with gaunt_construction(found):
            return original(model, *args, **kwargs)

    remove_pt_head.__gaunt_original__ = original
    return remove_pt_head


def _wrap_main(original):
    """``mace_run_train``: a refused setting is one line on stderr and exit status 2, not a traceback."""

    @functools.wraps(original)
    def main(*args, **kwargs):
        from gaunt_plugins.adapters.mace_config import GauntSettingsError

        try:
            return original(*args, **kwargs)
        except GauntSettingsError as exc:
            print(f"mace_run_train: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    main.__gaunt_original__ = original
    return main


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
        import mace.tools.finetuning_utils
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
        loader = _wrap_load_foundations(mace.tools.finetuning_utils.load_foundations_elements)
        self._replace(mace.tools.finetuning_utils, "load_foundations_elements", loader)
        self._replace(mace.tools.model_script_utils, "load_foundations_elements", loader)
        self._replace(mace.cli.run_train, "main", _wrap_main(mace.cli.run_train.main))
        self._replace(mace.cli.run_train, "remove_pt_head", _wrap_remove_pt_head(mace.cli.run_train.remove_pt_head))
        builder = mace.tools.checkpoint.CheckpointBuilder
        self._replace(builder, "create_checkpoint", _wrap_create_checkpoint(builder.create_checkpoint))

        # --distributed on CPU (gloo), for Gaunt and e3nn models alike
        self._replace(mace.cli.run_train, "init_distributed", _wrap_init_distributed(mace.cli.run_train.init_distributed))
        self._replace(mace.cli.run_train, "DDP", _wrap_ddp(mace.cli.run_train.DDP))
