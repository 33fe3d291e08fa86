"""The checkerboard context model: its coding paths (float64, fixed point), exact streams, and a start from the
hyperprior."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diraccodec.codec.base_codec import BaseCodec
from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
from diraccodec.entropy import context as context_module
from diraccodec.entropy.context import CheckerboardContext, ContextLayers, anchor_mask, context_parameters
from diraccodec.entropy.fixed_point import ACTIVATION_BITS
from diraccodec.entropy.latent_stream import Arithmetic
from diraccodec.modelfiles import default_weights_path, export_base_weights, load_base_weights
from diraccodec.transforms.search import SearchSettings


def active_context(latent_channels: int, seed: int = 0) -> CheckerboardContext:
    """A context model whose last layer is not zero, so that it changes the prediction."""
    torch.manual_seed(seed)
    context = CheckerboardContext(latent_channels)
    for parameter in context.parameters_net[-1].parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return context


def coding_path(context: CheckerboardContext, symbols: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                fixed: bool = False):
    """A coding path's chunks, joined: the non-anchors' (M, P) mean and scale in raster order."""
    chunks = list(context_parameters(ContextLayers(context, fixed), symbols, mean, scale))
    positions = torch.cat([chunk[0] for chunk in chunks])
    assert torch.equal(positions, (~anchor_mask(*mean.shape[1:])).flatten().nonzero().squeeze(1))
    return torch.cat([chunk[1] for chunk in chunks], 1), torch.cat([chunk[2] for chunk in chunks], 1)


def test_the_coding_path_computes_what_the_masked_convolution_does(monkeypatch):
    context = active_context(6)
    y_hat, mean, scale = torch.randn(3, 1, 6, 9, 11, dtype=torch.float64)
    scale = scale.abs()
    dense_mean, dense_scale = context.double()(y_hat, mean, scale)
    non_anchor = ~anchor_mask(9, 11)
    monkeypatch.setattr(context_module, "POSITIONS_AT_ONCE", 7)  # several chunks, one of them short
    symbols = (y_hat - mean)[0]
    sparse_mean, sparse_scale = coding_path(context, symbols, mean[0], scale[0])
    torch.testing.assert_close(sparse_mean, dense_mean[0][:, non_anchor], rtol=0, atol=1e-12)
    torch.testing.assert_close(sparse_scale, dense_scale[0][:, non_anchor], rtol=0, atol=1e-12)
    assert not torch.allclose(sparse_mean, mean[0][:, non_anchor])  # the context did change the mean
    # a non-anchor's prediction reads the anchors alone
    other = torch.where(non_anchor, torch.randn_like(symbols), symbols)
    assert torch.equal(coding_path(context, other, mean[0], scale[0])[0], sparse_mean)


def integer_context(context: CheckerboardContext, symbols: np.ndarray, mean: np.ndarray, scale: np.ndarray):
    """The fixed-point context as docs/format.md states it, in int64 sums: the non-anchors' mean and
    scale, (M, P) in raster order."""
    layers = ContextLayers.fixed_point(context)

    def integers(tensor: torch.Tensor) -> np.ndarray:
        return tensor.numpy().astype(np.int64)

    def on_grid(values: np.ndarray, layer: int) -> np.ndarray:
        return np.clip(np.round(values * 2.0**16), -layers.limits[layer], layers.limits[layer]).astype(np.int64)

    channels, rows, columns = mean.shape
    is_anchor = anchor_mask(rows, columns).numpy()
    anchors = np.pad(on_grid(np.where(is_anchor, symbols + mean, 0.0), 0), ((0, 0), (2, 2), (2, 2)))
    features = np.repeat(integers(layers.feature_bias), rows * columns, axis=1).reshape(channels, rows, columns)
    for (dy, dx), weight in zip(layers.taps, layers.tap_weights, strict=True):
        features += np.einsum("oc,cij->oij", integers(weight), anchors[:, dy : dy + rows, dx : dx + columns])
    non_anchor = ~is_anchor
    hidden = on_grid(np.concatenate([mean[:, non_anchor], scale[:, non_anchor],
                                     features[:, non_anchor] * 2.0**-32]), 1)
    sums = integers(layers.first_bias) + integers(layers.first_weight) @ hidden
    values = np.where(sums < 0, sums * 0.01, sums.astype(np.float64))
    hidden = on_grid(values * 2.0**-32, 2)
    change = (integers(layers.last_bias) + integers(layers.last_weight) @ hidden) * 2.0**-32
    return mean[:, non_anchor] + change[:channels], np.abs(scale[:, non_anchor] + change[channels:])


def test_the_fixed_point_context_is_the_stated_integer_computation_in_any_chunks(monkeypatch):
    context = active_context(6)
    generator = torch.Generator().manual_seed(5)
    symbols = torch.randint(-4, 5, (6, 9, 11), generator=generator).double()
    mean = torch.round(torch.randn(6, 9, 11, generator=generator, dtype=torch.float64) * 2.0**32) * 2.0**-32
    scale = torch.round(torch.rand(6, 9, 11, generator=generator, dtype=torch.float64) * 2.0**34) * 2.0**-32
    fixed_mean, fixed_scale = coding_path(context, symbols, mean, scale, fixed=True)
    expected_mean, expected_scale = integer_context(context, symbols.numpy(), mean.numpy(), scale.numpy())
    np.testing.assert_array_equal(fixed_mean.numpy(), expected_mean)
    np.testing.assert_array_equal(fixed_scale.numpy(), expected_scale)
    monkeypatch.setattr(context_module, "POSITIONS_AT_ONCE", 7)  # other chunks: the very same values
    assert all(torch.equal(*pair) for pair in zip(coding_path(context, symbols, mean, scale, fixed=True),
                                                   (fixed_mean, fixed_scale), strict=True))
    # and it is the trained context, up to the rounding of its weights and inputs
    float_mean, float_scale = coding_path(context, symbols, mean, scale)
    assert (float_mean - fixed_mean).abs().max() < 1e-3 and (float_scale - fixed_scale).abs().max() < 1e-3
    assert not torch.allclose(fixed_mean, mean[:, ~anchor_mask(9, 11)])  # the context did change the mean


def test_huge_anchors_from_a_corrupt_stream_are_clamped_and_stay_exact():
    """Anchors past the first layer's clamp give what anchors at the clamp give: every sum stays
    an exact integer, so every device reads the same (wrong, but identical) parameters."""
    context = active_context(6)
    layers = ContextLayers.fixed_point(context)
    generator = torch.Generator().manual_seed(3)
    mean = torch.zeros(6, 5, 7, dtype=torch.float64)
    scale = torch.round(torch.rand(6, 5, 7, generator=generator, dtype=torch.float64) * 2.0**20) * 2.0**-16
    at_clamp = torch.full((6, 5, 7), layers.limits[0] * 2.0**-ACTIVATION_BITS, dtype=torch.float64)
    at_clamp[1::2] *= -1
    huge = at_clamp * 2.0**30
    for clamped, reference in zip(coding_path(context, huge, mean, scale, fixed=True),
                                  coding_path(context, at_clamp, mean, scale, fixed=True), strict=True):
        assert torch.isfinite(clamped).all()
        assert torch.equal(clamped, reference)


@pytest.fixture(scope="module")
def context_weights(tmp_path_factory) -> Path:
    """A small random base codec with an active context model, as a weights file."""
    torch.manual_seed(1)
    model = MultiRateHyperprior(HyperpriorConfig(8, 12, context="checkerboard"))
    model.context = active_context(12, seed=2)
    path = tmp_path_factory.mktemp("context") / "base.safetensors"
    export_base_weights(model, path, {"purpose": "test"})
    return path


def test_a_context_model_without_a_fixed_point_form_is_not_exported(tmp_path: Path):
    from diraccodec.errors import DiracError

    model = MultiRateHyperprior(HyperpriorConfig(8, 12, context="checkerboard"))
    model.context = active_context(12)
    model.context.parameters_net[0].weight.data *= 1e10
    with pytest.raises(DiracError, match=r"cannot export these base weights: .*its first layer would clamp"):
        export_base_weights(model, tmp_path / "base.safetensors", {})


@pytest.mark.parametrize("passes", [0, 1, 2])
def test_context_streams_round_trip_exactly(context_weights: Path, small_image: Image.Image, passes: int):
    codec = BaseCodec(load_base_weights(context_weights))
    assert codec.model.config.context == "checkerboard"
    rgb = np.asarray(small_image)
    reports: list[tuple[int, int]] = []
    latents = codec.analyse(rgb, 4, SearchSettings(passes=passes, progress=lambda *report: reports.append(report)))
    # the halves share the passes, the anchors first; two halves' searches report as one
    assert reports == {0: [], 1: [(1, 1)], 2: [(1, 2), (2, 2)]}[passes]
    hyper_mean, hyper_tables, _ = codec.stream.parameters(latents.hyper)
    non_anchor = ~anchor_mask(*latents.symbols.shape[1:]).numpy()
    rounded = (codec.analysis_latents(rgb).double() * codec._gains64(4)[0] - latents.mean).round().long().numpy()

    def rounded_in(part: np.ndarray) -> bool:  # over the image's cells: the padding's latents are 0
        return np.array_equal(latents.coded(latents.symbols, part), latents.coded(rounded, part))

    assert latents.cells == (5, 6) and not latents.symbols[:, 5:].any() and not latents.symbols[:, :, 6:].any()
    assert rounded_in(non_anchor) == (passes < 2)  # one pass searches the anchors alone
    assert rounded_in(~non_anchor) == (passes == 0)
    assert not np.array_equal(latents.table_ids[:, non_anchor], hyper_tables[:, non_anchor])
    assert torch.equal(latents.mean[:, ~non_anchor], hyper_mean[:, ~non_anchor])
    decoded = codec.read_stream(codec.write_stream(latents, 4), small_image.width, small_image.height, 4)
    np.testing.assert_array_equal(decoded.hyper, latents.hyper)
    np.testing.assert_array_equal(decoded.symbols, latents.symbols)
    np.testing.assert_array_equal(decoded.table_ids, latents.table_ids)
    assert torch.equal(decoded.mean, latents.mean)
    np.testing.assert_array_equal(codec.synthesize(decoded, small_image.width, small_image.height, 4),
                                  codec.synthesize(latents, small_image.width, small_image.height, 4))


def test_a_context_stream_round_trips_in_either_format_versions_arithmetic(context_weights: Path,
                                                                            small_image: Image.Image):
    codec = BaseCodec(load_base_weights(context_weights))
    rgb = np.asarray(small_image)
    y = codec.analysis_latents(rgb)
    means = []
    for arithmetic in Arithmetic:
        latents = codec.quantize(y, 4, rgb, SearchSettings(passes=1), arithmetic)
        decoded = codec.read_stream(codec.write_stream(latents, 4), *small_image.size, 4, arithmetic)
        np.testing.assert_array_equal(decoded.symbols, latents.symbols)
        np.testing.assert_array_equal(decoded.table_ids, latents.table_ids)
        assert torch.equal(decoded.mean, latents.mean)
        means.append(latents.mean)
    assert not torch.equal(*means) and (means[0] - means[1]).abs().max() < 1e-2


@pytest.mark.cuda
def test_a_context_stream_reads_alike_on_the_cpu_and_cuda(context_weights: Path, small_image: Image.Image):
    from diraccodec.api import compute_for

    weights = load_base_weights(context_weights)
    cpu, cuda = BaseCodec(weights, compute_for("cpu")), BaseCodec(weights, compute_for("cuda"))
    latents = cuda.analyse(np.asarray(small_image), 4, SearchSettings(passes=1))
    stream = cuda.write_stream(latents, 4)
    for codec in (cpu, cuda):
        decoded = codec.read_stream(stream, small_image.width, small_image.height, 4)
        np.testing.assert_array_equal(decoded.symbols, latents.symbols)
        np.testing.assert_array_equal(decoded.table_ids, latents.table_ids)
        assert torch.equal(decoded.mean, latents.mean)


def test_the_search_moves_only_the_half_it_is_given(context_weights: Path, small_image: Image.Image):
    codec = BaseCodec(load_base_weights(context_weights))
    rgb = np.asarray(small_image)
    plain = codec.analyse(rgb, 4)
    is_anchor = anchor_mask(*plain.symbols.shape[1:]).numpy()
    searched = codec._search(rgb, 4, plain.mean, plain.table_ids, plain.symbols, SearchSettings(passes=2),
                             is_anchor)
    np.testing.assert_array_equal(searched[:, ~is_anchor], plain.symbols[:, ~is_anchor])
    assert not np.array_equal(searched[:, is_anchor], plain.symbols[:, is_anchor])


def test_a_new_context_model_codes_as_its_hyperprior(tmp_path: Path, small_image: Image.Image):
    """Started from trained hyperprior weights, a context model makes the same symbols and pixels,
    in the stream's other order; its training can only improve on that."""
    shipped = load_base_weights(default_weights_path())
    model = MultiRateHyperprior(replace(shipped.model.config, context="checkerboard"))
    missing, unexpected = model.load_state_dict(shipped.model.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("context.") for key in missing)
    path = tmp_path / "base.safetensors"
    export_base_weights(model, path, {})
    # its weights carry the shipped model's shared hyper tables alone
    plain, with_context = BaseCodec(replace(shipped, hyper_level_tables=None)), BaseCodec(load_base_weights(path))
    rgb = np.asarray(small_image)
    expected, latents = plain.analyse(rgb, 3), with_context.analyse(rgb, 3)
    np.testing.assert_array_equal(latents.symbols, expected.symbols)
    np.testing.assert_array_equal(latents.table_ids, expected.table_ids)
    stream = with_context.write_stream(latents, 3)
    assert abs(len(stream) - len(plain.write_stream(expected, 3))) <= 8
    decoded = with_context.read_stream(stream, small_image.width, small_image.height, 3)
    np.testing.assert_array_equal(with_context.synthesize(decoded, *small_image.size, 3),
                                  plain.synthesize(expected, *small_image.size, 3))


@pytest.mark.slow
def test_the_cost_script_times_both_codecs(tmp_path: Path, small_image: Image.Image):
    import subprocess
    import sys

    small_image.save(tmp_path / "a.png")
    script = Path(__file__).resolve().parent.parent / "scripts" / "context_cost.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path), "--images", "1", "--repeat", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 5 and rows[0].startswith("| stage")
    assert all(float(row.split("|")[2]) > 0 for row in rows[1:])
    for count in ("--images", "--repeat"):  # none would time nothing: an infinite time, or nan
        refused = subprocess.run([sys.executable, str(script), str(tmp_path), count, "0"],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and refused.stderr.endswith(f"argument {count}: must be 1 or more, got 0\n")
