"""The checkerboard context model: its float64 coding path, exact streams, and a start from the hyperprior."""

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
from diraccodec.entropy.context import CheckerboardContext, anchor_mask, context_parameters64
from diraccodec.modelfiles import default_weights_path, export_base_weights, load_base_weights
from diraccodec.transforms.search import SearchSettings


def active_context(latent_channels: int, seed: int = 0) -> CheckerboardContext:
    """A context model whose last layer is not zero, so that it changes the prediction."""
    torch.manual_seed(seed)
    context = CheckerboardContext(latent_channels)
    for parameter in context.parameters_net[-1].parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return context


def coding_path(context: CheckerboardContext, symbols: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor):
    """The float64 path's chunks, joined: the non-anchors' (M, P) mean and scale in raster order."""
    chunks = list(context_parameters64(context, symbols, mean, scale))
    positions = torch.cat([chunk[0] for chunk in chunks])
    assert torch.equal(positions, (~anchor_mask(*mean.shape[1:])).flatten().nonzero().squeeze(1))
    return torch.cat([chunk[1] for chunk in chunks], 1), torch.cat([chunk[2] for chunk in chunks], 1)


def test_the_coding_path_computes_what_the_masked_convolution_does(monkeypatch):
    context = active_context(6).double()
    y_hat, mean, scale = torch.randn(3, 1, 6, 9, 11, dtype=torch.float64)
    scale = scale.abs()
    dense_mean, dense_scale = context(y_hat, mean, scale)
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


@pytest.fixture(scope="module")
def context_weights(tmp_path_factory) -> Path:
    """A small random base codec with an active context model, as a weights file."""
    torch.manual_seed(1)
    model = MultiRateHyperprior(HyperpriorConfig(8, 12, context="checkerboard"))
    model.context = active_context(12, seed=2)
    path = tmp_path_factory.mktemp("context") / "base.safetensors"
    export_base_weights(model, path, {"purpose": "test"})
    return path


@pytest.mark.parametrize("passes", [0, 1, 2])
def test_context_streams_round_trip_exactly(context_weights: Path, small_image: Image.Image, passes: int):
    codec = BaseCodec(load_base_weights(context_weights))
    assert codec.model.config.context == "checkerboard"
    rgb = np.asarray(small_image)
    reports: list[tuple[int, int]] = []
    latents = codec.analyse(rgb, 4, SearchSettings(passes=passes, progress=lambda *report: reports.append(report)))
    # the halves share the passes, the anchors first; two halves' searches report as one
    assert reports == {0: [], 1: [(1, 1)], 2: [(1, 2), (2, 2)]}[passes]
    hyper_mean, hyper_tables = codec.entropy_parameters(latents.hyper)
    non_anchor = ~anchor_mask(*latents.symbols.shape[1:]).numpy()
    rounded = (codec.analysis_latents(rgb).double() * codec._gains64(4)[0] - latents.mean).round().long().numpy()
    rounded_rest = np.array_equal(latents.symbols[:, non_anchor], rounded[:, non_anchor])
    assert rounded_rest == (passes < 2)  # one pass searches the anchors alone
    assert np.array_equal(latents.symbols[:, ~non_anchor], rounded[:, ~non_anchor]) == (passes == 0)
    assert not np.array_equal(latents.table_ids[:, non_anchor], hyper_tables[:, non_anchor])
    assert torch.equal(latents.mean[:, ~non_anchor], hyper_mean[:, ~non_anchor])
    decoded = codec.read_stream(codec.write_stream(latents), small_image.width, small_image.height)
    np.testing.assert_array_equal(decoded.hyper, latents.hyper)
    np.testing.assert_array_equal(decoded.symbols, latents.symbols)
    np.testing.assert_array_equal(decoded.table_ids, latents.table_ids)
    assert torch.equal(decoded.mean, latents.mean)
    np.testing.assert_array_equal(codec.synthesize(decoded, small_image.width, small_image.height, 4),
                                  codec.synthesize(latents, small_image.width, small_image.height, 4))


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
    plain, with_context = BaseCodec(shipped), BaseCodec(load_base_weights(path))
    rgb = np.asarray(small_image)
    expected, latents = plain.analyse(rgb, 3), with_context.analyse(rgb, 3)
    np.testing.assert_array_equal(latents.symbols, expected.symbols)
    np.testing.assert_array_equal(latents.table_ids, expected.table_ids)
    stream = with_context.write_stream(latents)
    assert abs(len(stream) - len(plain.write_stream(expected))) <= 8
    decoded = with_context.read_stream(stream, small_image.width, small_image.height)
    np.testing.assert_array_equal(with_context.synthesize(decoded, *small_image.size, 3),
                                  plain.synthesize(expected, *small_image.size, 3))


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
