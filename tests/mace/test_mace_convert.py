"""``gaunt-convert-mace``: every transferable weight bit-identical, the rest reported."""
from __future__ import annotations

from pathlib import Path

import pytest

import mace  # noqa: F401
import torch

from conftest import acac_batch, tiny_model

from gaunt_plugins.adapters.mace_blocks import GauntProductBasisBlock, GauntRealAgnosticResidualInteractionBlock
from gaunt_plugins.adapters.mace_convert import main

pytestmark = pytest.mark.e3nn044


def test_convert_keeps_every_transferable_weight_bit_identical(tmp_path, float64, capsys):
    model = tiny_model(residual_first=False)
    for p in model.parameters():  # make every weight distinguishable from a fresh initialisation
        p.data.add_(torch.randn_like(p) * 0.1)
    torch.save(model, tmp_path / "in.model")
    assert main([str(tmp_path / "in.model"), str(tmp_path / "out.model")]) == 0
    printed = capsys.readouterr().out
    gaunt = torch.load(tmp_path / "out.model", weights_only=False)

    assert isinstance(gaunt.interactions[1], GauntRealAgnosticResidualInteractionBlock)
    assert all(isinstance(p, GauntProductBasisBlock) for p in gaunt.products)
    old, new = model.state_dict(), gaunt.state_dict()
    copied, fresh = [], []
    for name, tensor in new.items():
        if name in old and old[name].shape == tensor.shape:
            assert torch.equal(tensor, old[name]), name  # bit for bit
            copied.append(name)
        else:
            fresh.append(name)
    # everything MACE users carry over is there
    for prefix in ("node_embedding.", "radial_embedding.", "atomic_energies_fn.", "scale_shift.", "readouts.",
                   "interactions.0.linear_up.", "interactions.1.skip_tp.", "interactions.1.conv_tp_weights.layer0.",
                   "products.0.linear.", "products.1.linear."):
        assert any(n.startswith(prefix) for n in copied), prefix
    # each copied tensor is printed, and so is each fresh parameter
    for name in copied:
        assert f"  {name}\n" in printed, name
    fresh_parameters = {n for n, _ in gaunt.named_parameters()} - set(copied)
    assert fresh_parameters and all(f"  {n}\n" in printed for n in fresh_parameters)
    assert {n for n in fresh_parameters} <= set(fresh)
    assert all(".conv_tp." in n or "symmetric_contractions" in n or "conv_tp_weights.layer" in n
               or ".linear.weight" in n for n in fresh_parameters), fresh_parameters
    assert torch.equal(gaunt.atomic_energies_fn.atomic_energies, model.atomic_energies_fn.atomic_energies)

    # the converted model is a working, symmetric model
    energy = gaunt(acac_batch(2), training=False, compute_force=True)["energy"]
    assert torch.isfinite(energy).all()


def test_convert_targets_and_errors(tmp_path, float64, capsys):
    model = tiny_model()
    torch.save(model, tmp_path / "in.model")
    assert main([str(tmp_path / "in.model"), str(tmp_path / "conv.model"), "--targets", "conv", "-q"]) == 0
    conv = torch.load(tmp_path / "conv.model", weights_only=False)
    # products untouched: all their tensors bit-identical
    for name, tensor in model.products.state_dict().items():
        assert torch.equal(conv.products.state_dict()[name], tensor)
    assert main([str(tmp_path / "in.model"), str(tmp_path / "x.model"), "--targets", "edges"]) == 2
    assert "unknown target" in capsys.readouterr().err
    torch.save(torch.nn.Linear(2, 2), tmp_path / "not_mace.model")
    assert main([str(tmp_path / "not_mace.model"), str(tmp_path / "x.model")]) == 2


def test_convert_never_writes_over_the_input_or_an_existing_file(tmp_path, float64, capsys):
    model = tiny_model()
    src, dst = tmp_path / "up.model", tmp_path / "out.model"
    torch.save(model, src)
    original = src.read_bytes()
    assert main([str(src), str(src), "-q"]) == 2
    assert "is the input" in capsys.readouterr().err and src.read_bytes() == original
    dst.write_bytes(b"a model the user already had")
    assert main([str(src), str(dst), "-q"]) == 2
    assert "exists" in capsys.readouterr().err and dst.read_bytes() == b"a model the user already had"
    assert main([str(src), str(dst), "-q", "--force"]) == 0
    assert isinstance(torch.load(dst, weights_only=False).products[0], GauntProductBasisBlock)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.model", "up.model"]  # no temporary file left


def test_a_failed_write_leaves_the_existing_output_intact(tmp_path, float64, monkeypatch, capsys):
    """The converted model goes to a temporary file in the output's folder, renamed when complete."""
    torch.save(tiny_model(), tmp_path / "up.model")
    (tmp_path / "out.model").write_bytes(b"earlier conversion")
    real_save = torch.save
    written = []

    def save_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        written.append(str(f))
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_then_fail)
    assert main([str(tmp_path / "up.model"), str(tmp_path / "out.model"), "--force", "-q"]) == 2
    assert f"cannot write {tmp_path / 'out.model'}: disk full" in capsys.readouterr().err
    (tmp,) = written
    assert Path(tmp).parent == tmp_path and Path(tmp).name != "out.model"
    assert (tmp_path / "out.model").read_bytes() == b"earlier conversion"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.model", "up.model"]


def test_a_compiled_model_is_refused_with_what_to_convert_instead(tmp_path, float64, capsys):
    """``<name>_compiled.model`` is MACE's TorchScript export: the error names it and the ``.model``."""
    from e3nn.util import jit

    model = tiny_model()
    torch.save(model, tmp_path / "acac.model")
    torch.jit.save(jit.compile(model), str(tmp_path / "acac_compiled.model"))
    assert main([str(tmp_path / "acac_compiled.model"), str(tmp_path / "gaunt.model")]) == 2
    err = capsys.readouterr().err
    assert "TorchScript export" in err and "Convert the pickled model instead" in err
    assert str(tmp_path / "acac.model") in err
    assert not (tmp_path / "gaunt.model").exists()


def _tiny_saved(tmp_path) -> Path:
    src = tmp_path / "up.model"
    torch.save(tiny_model(), src)
    return src


@pytest.mark.parametrize("case", ["output folder", "xyz input", "truncated input", "folder input", "cuda device"])
def test_bad_paths_and_devices_get_one_line_naming_the_file(case, tmp_path, float64, capsys):
    """A folder as output (even with --force), an .xyz, truncated or folder input, and --device cuda on a machine
    without CUDA: status 2 and one line naming the file or device and what was expected, nothing written."""
    src = _tiny_saved(tmp_path)
    xyz = tmp_path / "data.xyz"
    xyz.write_text("1\nenergy=-1.0\nH 0 0 0\n")
    truncated = tmp_path / "cut.model"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    (tmp_path / "folder").mkdir()
    argv, named, expected = {
        "output folder": ([src, tmp_path / "folder", "--force"], tmp_path / "folder", "is a folder: give the path of "
                          "the model file to write"),
        "xyz input": ([xyz, tmp_path / "o.model"], xyz, "cannot be read as a model (UnpicklingError"),
        "truncated input": ([truncated, tmp_path / "o.model"], truncated, "cannot be read as a model (RuntimeError"),
        "folder input": ([tmp_path / "folder", tmp_path / "o.model"], tmp_path / "folder", "is a folder: expected a "
                         "MACE model saved with torch.save"),
        "cuda device": ([src, tmp_path / "o.model", "--device", "cuda"], "--device cuda",
                        "no CUDA device is available"),
    }[case]
    if case == "cuda device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([str(a) for a in argv] + ["-q"]) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"gaunt-convert-mace: {named}") and expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not list((tmp_path / "folder").iterdir())


def test_converting_an_already_converted_model_says_nothing_changed(tmp_path, float64, capsys):
    """``--targets product`` on a model whose products are Gaunt blocks already: the summary says nothing was
    converted and names the blocks, and the output is a copy of the input's weights."""
    src = _tiny_saved(tmp_path)
    assert main([str(src), str(tmp_path / "p.model"), "--targets", "product", "-q"]) == 0
    capsys.readouterr()
    assert main([str(tmp_path / "p.model"), str(tmp_path / "again.model"), "--targets", "product"]) == 0
    out = capsys.readouterr().out
    assert ("gaunt-convert-mace: nothing to convert: the blocks --targets product chooses (products.0, products.1) "
            "are Gaunt blocks already") in out
    once, twice = torch.load(tmp_path / "p.model", weights_only=False), torch.load(tmp_path / "again.model",
                                                                                    weights_only=False)
    assert all(torch.equal(t, twice.state_dict()[n]) for n, t in once.state_dict().items())
    assert main([str(tmp_path / "p.model"), str(tmp_path / "both.model"), "--targets", "conv,product"]) == 0
    out = capsys.readouterr().out
    assert "already Gaunt blocks, unchanged: products.0, products.1" in out
    assert out.strip().splitlines()[-1].endswith("already Gaunt, unchanged: products.0, products.1")
