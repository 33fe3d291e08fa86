"""The fixed-point hyper-synthesis: exactly the integer computation docs/format.md states, so
an encoder and a decoder derive the same tables on any device, thread count and tiling."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from diraccodec.api import compute_for, get_codec
from diraccodec.entropy import latent_stream
from diraccodec.entropy.fixed_point import ACTIVATION_BITS, WEIGHT_BITS, FixedPointNetwork
from diraccodec.entropy.latent_stream import Arithmetic


def _integer_layer(layer, x: np.ndarray) -> np.ndarray:
    """One layer's sums in int64, tap by tap, as the format states them (batch of one)."""
    conv = layer.convolution
    weight, bias = layer.weight.cpu().numpy().astype(np.int64), layer.bias.cpu().numpy().astype(np.int64)
    kernel, padding = conv.kernel_size[0], conv.padding[0]
    rows, columns = x.shape[1:]
    if isinstance(conv, nn.ConvTranspose2d):  # out[2i - p + ky, 2j - p + kx] += w[c, o, ky, kx] x[c, i, j]
        full = np.zeros((weight.shape[1], 2 * rows + kernel, 2 * columns + kernel), dtype=np.int64)
        for ky in range(kernel):
            for kx in range(kernel):
                full[:, ky : ky + 2 * rows : 2, kx : kx + 2 * columns : 2] += np.einsum(
                    "co,cij->oij", weight[:, :, ky, kx], x)
        sums = full[:, padding : padding + 2 * rows, padding : padding + 2 * columns]
    else:  # out[y, x] = sum w[o, c, ky, kx] x[c, y + ky - p, x + kx - p]
        padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
        sums = np.zeros((weight.shape[0], rows, columns), dtype=np.int64)
        for ky in range(kernel):
            for kx in range(kernel):
                sums += np.einsum("oc,cij->oij", weight[:, :, ky, kx], padded[:, ky : ky + rows, kx : kx + columns])
    return sums + bias[:, None, None]


def integer_reference(network: FixedPointNetwork, hyper: np.ndarray) -> np.ndarray:
    """The fixed-point network computed with int64 sums and elementwise float64 steps."""
    x = hyper.astype(np.int64)
    for layer in network.layers:
        limit = int(layer.input_limit)
        sums = _integer_layer(layer, np.clip(x, -limit, limit))
        assert np.abs(sums).max() < 2**53  # every sum is exact in float64
        bits = WEIGHT_BITS + layer.input_bits
        values = sums.astype(np.float64)
        if layer.slope is None:
            return values * 2.0**-bits
        values = np.where(values < 0, values * layer.slope, values)
        x = np.round(values * 2.0 ** (ACTIVATION_BITS - bits)).astype(np.int64)
    raise AssertionError("no last layer")


@pytest.fixture(scope="module")
def codec():
    return get_codec(None, compute_for("cpu"))


@pytest.fixture(scope="module")
def photo_hyper(codec, sample_image) -> dict[float, np.ndarray]:
    """Hyper-latents of a 256x192 crop of the sample photo at the lowest and highest level."""
    rgb = np.asarray(sample_image.crop((100, 40, 356, 232)))
    y = codec.analysis_latents(rgb)
    return {level: codec.quantize(y, level).hyper for level in (1.0, 8.0)}


def test_the_fixed_point_hyper_synthesis_is_the_stated_integer_computation(codec, photo_hyper):
    network = codec.stream._hyper_synthesis_fixed
    float_network = codec.stream._hyper_synthesis64
    for hyper in photo_hyper.values():
        out = network(torch.from_numpy(hyper)[None])[0]
        np.testing.assert_array_equal(out.numpy(), integer_reference(network, hyper))
        # and it is the trained network, up to the rounding of its weights
        with torch.no_grad():
            expected = float_network(torch.from_numpy(hyper).double()[None])[0]
        assert (out - expected).abs().max() < 0.05 and (out - expected).abs().median() < 1e-3


def test_fixed_point_parameters_do_not_depend_on_threads_or_tiles(codec, photo_hyper, monkeypatch):
    # a 12x16 grid (the photo's hyper-latents four times over each way), so that tiles of 2
    # with a margin of 4 are smaller than the grid and the margin has to hold the reach
    hyper = np.tile(photo_hyper[1.0], (1, 4, 4))
    assert min(hyper.shape[1:]) > latent_stream.HYPER_MARGIN * 2 + 2
    threads = torch.get_num_threads()
    try:
        by_threads = []
        for count in (1, 3):  # the tests run one thread: three make the sums split otherwise
            torch.set_num_threads(count)
            by_threads.append(codec.stream.parameters(hyper)[:2])
    finally:
        torch.set_num_threads(threads)
    (mean, table_ids), three_threads = by_threads
    monkeypatch.setattr(latent_stream, "WHOLE_HYPER_GRID", 1)  # tiles of HYPER_TILE with margins
    monkeypatch.setattr(latent_stream, "HYPER_TILE", 2)
    tiled = codec.stream.parameters(hyper)[:2]
    for other_mean, other_tables in (three_threads, tiled):
        assert torch.equal(other_mean, mean)
        np.testing.assert_array_equal(other_tables, table_ids)
    # the format version 1 arithmetic gives (slightly) other parameters for the same latents
    float_mean = codec.stream.parameters(hyper, Arithmetic.FLOAT64_CPU)[0]
    assert not torch.equal(float_mean, mean) and (float_mean - mean).abs().max() < 0.05


def test_huge_hyper_latents_from_a_corrupt_stream_are_clamped_and_stay_exact(codec):
    network = codec.stream._hyper_synthesis_fixed
    hyper = np.random.default_rng(0).integers(-3, 4, size=(1, 96, 2, 3))
    hyper[0, :8, 0, 0] = 2**45
    hyper[0, 8:16, 1, 2] = -(2**50)
    out = network(torch.from_numpy(hyper))[0]
    assert torch.isfinite(out).all()
    np.testing.assert_array_equal(out.numpy(), integer_reference(network, hyper[0]))


def test_only_small_weights_and_leaky_relus_have_a_fixed_point_form():
    torch.manual_seed(0)
    stack = nn.Sequential(nn.ConvTranspose2d(4, 4, 5, 2, 2, 1), nn.LeakyReLU(), nn.Conv2d(4, 2, 3, padding=1))
    FixedPointNetwork(stack)
    with pytest.raises(TypeError, match="ReLU"):
        FixedPointNetwork(nn.Sequential(stack[0], nn.ReLU(), stack[2]))
    with pytest.raises(TypeError, match="only leaky ReLUs may follow a convolution before the last"):
        FixedPointNetwork(nn.Sequential(stack[0], stack[2]))
    stack[2].weight.data *= 1e12  # sums would overflow float64's integers unless inputs were clamped to nothing
    with pytest.raises(ValueError, match="too large"):
        FixedPointNetwork(stack)


def test_each_layer_clamps_its_inputs_where_its_largest_sum_stays_below_2_to_the_53():
    """The clamp is the bound of the sums over each output's own weights (a transposed
    convolution's are its first axis), less the bias: a looser one lets a corrupt stream's huge
    inputs round, and devices would disagree on the tables."""
    from diraccodec.entropy.fixed_point import EXACT_BELOW, SMALLEST_LIMIT, input_limit

    weight = torch.zeros(2, 3, 3, 3, dtype=torch.float64)
    weight[0, 0, 0, 0], weight[1, :, 1, 1] = 4.0, -2.0  # reaches: 4 (first output), 6 (second)
    bias = torch.tensor([0.0, -(2.0**40)], dtype=torch.float64)
    assert input_limit(weight, bias, (1, 2, 3), 0, "layer") == (EXACT_BELOW - 1 - 2.0**40) // 6
    transposed = nn.ConvTranspose2d(2, 3, 3, bias=False)  # its weight is (inputs, outputs, k, k)
    transposed.weight.data.zero_()
    transposed.weight.data[0, 0, 0, 0], transposed.weight.data[1, :, 1, 1] = 4.0, torch.tensor([-4.0, -1.0, -1.0])
    [layer] = FixedPointNetwork(nn.Sequential(transposed)).layers  # the outputs' reaches 8, 1, 1 (the inputs' 4, 6)
    assert layer.input_limit == (EXACT_BELOW - 1) // (8 * 2**WEIGHT_BITS)
    # the smallest clamp allowed is SMALLEST_LIMIT in the inputs' own units, on their grid of 2^-bits
    reach = (EXACT_BELOW - 1) / (SMALLEST_LIMIT * 2**8)
    weight = torch.full((1, 1, 1, 1), reach, dtype=torch.float64)
    assert input_limit(weight, torch.zeros(1, dtype=torch.float64), (1, 2, 3), 8, "layer") >= SMALLEST_LIMIT * 2**8
    with pytest.raises(ValueError, match="too large"):
        input_limit(weight, torch.zeros(1, dtype=torch.float64), (1, 2, 3), 9, "layer")


def test_base_weights_without_a_fixed_point_form_are_refused_in_one_line(tmp_path, codec):
    from safetensors.torch import load_file

    from diraccodec.errors import DiracError
    from diraccodec.modelfiles import _save_listed, export_base_weights, load_base_weights

    model = copy.deepcopy(codec.weights.model)
    model.hyper_synthesis[-1].weight.data *= 1e9
    with pytest.raises(DiracError, match="cannot export these base weights: weights too large"):
        export_base_weights(model, tmp_path / "export.safetensors", {})
    assert not (tmp_path / "export.safetensors").exists()
    # a file written otherwise is refused when it is loaded, before any stream is coded with it
    tensors = load_file(str(codec.weights.path))
    tensors["model.hyper_synthesis.4.weight"] = model.hyper_synthesis[-1].weight.detach().clone()
    _save_listed(tensors, codec.weights.metadata, tmp_path / "base.safetensors")
    with pytest.raises(DiracError, match=r"is not a diraccodec base weights file \(weights too large"):
        load_base_weights(tmp_path / "base.safetensors")
