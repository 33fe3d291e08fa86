"""The sampler: counter-based noise, the schedule, the DDIM update, tiling and seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diraccodec.diffusion import sampler
from diraccodec.diffusion.finishing import FinishingSettings, finish
from diraccodec.diffusion.noise import gaussian_noise, mix32
from diraccodec.diffusion.sampler import SamplerSettings, sample_residual
from diraccodec.diffusion.schedule import respaced_times, signal_level
from diraccodec.restoration.unet import RESIDUAL_SCALE
from tests.conftest import random_unet


def residual(model, base, level, steps, seed, sampler=SamplerSettings(), finishing=FinishingSettings()):
    """The residual a decode adds: sampling, then the finishing."""
    if steps <= 0:
        return torch.zeros_like(base)
    return finish(sample_residual(model, base, level, steps, seed, sampler), finishing.at(level, steps))


def test_noise_is_standard_normal_and_a_function_of_position_seed_and_draw():
    noise = gaussian_noise((1, 3, 200, 300), seed=5, draw=0)
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 1) < 0.01
    assert abs(((noise**4).mean() / noise.var() ** 2).item() - 3) < 0.05  # the kurtosis of a normal
    neighbours = torch.corrcoef(torch.stack([noise[..., 1:].flatten(), noise[..., :-1].flatten()]))[0, 1]
    assert abs(neighbours.item()) < 0.01
    torch.testing.assert_close(gaussian_noise((1, 3, 200, 300), 5, 0), noise, atol=0, rtol=0)
    for other in (gaussian_noise((1, 3, 200, 300), 6, 0), gaussian_noise((1, 3, 200, 300), 5, 1)):
        assert abs(torch.corrcoef(torch.stack([noise.flatten(), other.flatten()]))[0, 1].item()) < 0.01
    # made in bands of rows, each value the same in any band: a GPU makes larger ones than a CPU
    tall = gaussian_noise((1, 2, 600, 7), seed=2**40 + 3, draw=4)
    assert not torch.equal(tall, gaussian_noise((1, 2, 600, 7), seed=3, draw=4))  # every bit of the seed counts
    for band_rows in (1, 3, 599):
        assert torch.equal(tall, gaussian_noise((1, 2, 600, 7), 2**40 + 3, 4, values_at_once=band_rows * 2 * 7))
    with pytest.raises(ValueError, match="one image"):
        gaussian_noise((2, 3, 4, 4), 0, 0)


def reference_mix32(value: int) -> int:
    """docs/format.md's mix32, in Python's exact integers."""
    value ^= value >> 16
    value = (value * 0x21F0AAAD) & 0xFFFFFFFF
    value ^= value >> 15
    value = (value * 0x735A2D97) & 0xFFFFFFFF
    return value ^ (value >> 15)


def reference_uniform(counter: int, key: int) -> np.float32:
    """docs/format.md's uniform: the hash in exact integers, then float32 as the format rounds it."""
    hashed = reference_mix32(reference_mix32((counter & 0xFFFFFFFF) ^ key) ^ (((counter >> 32) + key) & 0xFFFFFFFF))
    return (np.float32(hashed >> 8) + np.float32(0.5)) * np.float32(2.0**-24)


def reference_noise(shape: tuple[int, int, int, int], seed: int, draw: int) -> np.ndarray:
    """docs/format.md's noise generator, written from its text alone, one value at a time."""
    _, channels, height, width = shape
    seed %= 1 << 64  # two's complement for a negative seed

    def key(stream: int) -> int:
        value = 0x9E3779B9
        for word in (seed & 0xFFFFFFFF, seed >> 32, draw & 0xFFFFFFFF, stream):
            value = reference_mix32((value + word) & 0xFFFFFFFF)
        return value

    keys = key(0), key(1)
    noise = np.empty((1, channels, height, width), np.float32)
    for index in np.ndindex(channels, height, width):
        counter = (index[0] * height + index[1]) * width + index[2]
        radius = np.sqrt(np.float32(-2.0) * np.log(reference_uniform(counter, keys[0])))
        noise[(0, *index)] = radius * np.cos(np.float32(2 * np.pi) * reference_uniform(counter, keys[1]))
    return noise


def test_the_hash_is_integer_arithmetic_that_no_device_can_round():
    values = torch.tensor([0, 1, 2, 0xFFFFFFFF, 123456789], dtype=torch.int64)
    hashed = mix32(values)
    assert hashed.dtype == torch.int64 and int(hashed.min()) >= 0 and int(hashed.max()) < 2**32
    assert hashed.tolist() == [reference_mix32(v) for v in values.tolist()]


def test_the_noise_is_the_generator_the_format_states():
    """The noise a decode draws is part of what a conforming decoder reproduces: every hash and
    uniform exactly as docs/format.md writes them (counters past 2^32 too), and the values within
    the float functions' last bits, for any seed (a negative one as two's complement) and draw."""
    from diraccodec.diffusion.noise import _uniform

    counters = [0, 1, 77, 0xFFFFFFFF, (1 << 32) + 5, (1 << 40) - 1]
    for key in (0, 0x9E3779B9, 0xFFFFFFFF):
        made = _uniform(torch.tensor(counters, dtype=torch.int64), key).numpy()
        assert made.tolist() == [float(reference_uniform(counter, key)) for counter in counters]
    for seed, draw in ((0, 0), (2**40 + 3, 7), (-1, 1), (2**64 - 1, 1)):
        shape = (1, 3, 5, 7)
        np.testing.assert_allclose(gaussian_noise(shape, seed, draw).numpy(), reference_noise(shape, seed, draw),
                                   rtol=0, atol=1e-5)
    assert torch.equal(gaussian_noise((1, 3, 4, 4), -1, 0), gaussian_noise((1, 3, 4, 4), 2**64 - 1, 0))


@pytest.mark.cuda
def test_the_same_noise_on_the_gpu():
    cpu = gaussian_noise((1, 3, 333, 517), 11, 2)
    gpu = gaussian_noise((1, 3, 333, 517), 11, 2, "cuda").cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=0)  # docs/format.md: within 1e-5


def test_sampler_is_seeded_and_tile_invariant():
    model = random_unet()
    base = torch.rand(1, 3, 200, 264)
    # neither the kept noise nor the detail gain's blur may show tiles
    finishing = FinishingSettings(residual_gain=(1.3,), kept_noise=(0.5,), detail_gain=(2.0,))
    tiled_settings = SamplerSettings(tile=64, margin=96)
    whole = residual(model, base, 3.0, 3, 1, SamplerSettings(tile=4096), finishing)
    tiled = residual(model, base, 3.0, 3, 1, tiled_settings, finishing)
    other = residual(model, base, 3.0, 3, 2, tiled_settings, finishing)
    assert whole.shape == base.shape
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=0)
    assert (other - whole).abs().mean() > 1e-3


def test_an_8_bit_base_samples_as_its_float_values_do_tiled_or_not(monkeypatch):
    """The decoder hands the sampler its 8-bit base, which becomes float a tile at a time (a
    size that fills no tile and no multiple of the U-Net's, so edges are replicated too)."""
    from diraccodec.transforms import tiling

    windows: list[object] = []
    cut = tiling.tile_windows

    def counted(*size: int):
        for window in cut(*size):
            windows.append(window)
            yield window

    monkeypatch.setattr(tiling, "tile_windows", counted)
    model = random_unet()
    pixels = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (1, 3, 60, 235), dtype=np.uint8))
    for settings, tiles in ((SamplerSettings(tile=4096), 0), (SamplerSettings(tile=16, margin=32), 2 * 60)):
        windows.clear()
        eight_bit = sample_residual(model, pixels, 2.0, 2, 5, settings)
        assert len(windows) == tiles  # per step, for 2 steps
        floats = sample_residual(model, pixels.float() / 255, 2.0, 2, 5, settings)
        assert torch.equal(eight_bit.prediction, floats.prediction)
        assert torch.equal(eight_bit.noise_left, floats.noise_left)
    with pytest.raises(ValueError, match="8-bit pixels or floats"):
        sample_residual(model, pixels.long(), 2.0, 1, 5)


def test_the_residual_respects_the_bound():
    model = random_unet()
    base = torch.rand(1, 3, 40, 56)
    settings = SamplerSettings(bound_low_level=0.05, bound_high_level=0.01)
    assert residual(model, base, 8.0, 2, 0, settings).abs().max() <= 0.01 + 1e-6
    assert settings.bound(1.0, 8.0) == 0.05 and settings.bound(4.5, 8.0) == pytest.approx(0.03)


def test_the_grid_ends_at_the_end_time_and_one_step_does_not_depend_on_it():
    grid = respaced_times(3, 0.4, 0.1)
    torch.testing.assert_close(grid, torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64))
    model = random_unet()
    base = torch.rand(1, 3, 40, 56)
    late, early = SamplerSettings(end_time=0.1), SamplerSettings(end_time=0.0)
    assert torch.equal(residual(model, base, 4.0, 1, 0, late), residual(model, base, 4.0, 1, 0, early))
    assert not torch.equal(residual(model, base, 4.0, 3, 0, late), residual(model, base, 4.0, 3, 0, early))


def test_one_step_leaves_the_ddim_state_at_the_end_of_the_grid():
    model = random_unet()
    base = torch.rand(1, 3, 64, 64)
    plain = SamplerSettings(tile=4096)
    one = sample_residual(model, base, 2.0, 1, 7, plain)
    a_start, a_end = (signal_level(torch.tensor(t)).item() for t in (plain.start_time, plain.end_time))
    start = gaussian_noise((1, 3, 64, 64), 7, 0) * (1 - a_start) ** 0.5
    predicted, scale = one.prediction / RESIDUAL_SCALE, RESIDUAL_SCALE / a_end**0.5
    start_noise = (start - a_start**0.5 * predicted) / (1 - a_start) ** 0.5
    state_at_end = a_end**0.5 * predicted + (1 - a_end) ** 0.5 * start_noise
    torch.testing.assert_close(one.prediction + one.noise_left, state_at_end * scale, atol=1e-5, rtol=1e-5)
    # a grid ending at 0 leaves no noise to keep
    clean = sample_residual(model, base, 2.0, 3, 7, SamplerSettings(tile=4096, end_time=0.0))
    assert clean.noise_left.abs().max() < 1e-6


@pytest.mark.parametrize("eta, renoise", [(0.0, False), (0.6, False), (0.0, True)])
def test_the_sampler_computes_the_ddim_update_as_written(eta, renoise):
    """The sampler writes each step over its own tensors (memory); the numbers are the textbook
    update's, to the last bit, against this plain transcription of it."""
    from diraccodec.diffusion.sampler import sample_ddim

    times = respaced_times(4, 0.4, 0.1, 1.0)
    generator = torch.Generator().manual_seed(2)
    draws = [torch.randn(1, 3, 16, 24, generator=generator) for _ in range(8)]

    def denoise(x: torch.Tensor, time: float) -> torch.Tensor:
        return torch.tanh(0.7 * x + time)

    def level(index: int) -> float:
        return signal_level(times[index]).item()

    noise = iter(draws)
    x = next(noise) * (1 - level(0)) ** 0.5
    for index in range(4):
        prediction = denoise(x, float(times[index]))
        a_now = level(index)
        predicted_noise = (x - a_now**0.5 * prediction) / max((1 - a_now) ** 0.5, 1e-8)
        if index == 3:
            break
        a_after = level(index + 1)
        if renoise:
            x = a_after**0.5 * prediction + (1 - a_after) ** 0.5 * next(noise)
            continue
        sigma = eta * (((1 - a_after) / (1 - a_now)) * (1 - a_now / a_after)) ** 0.5
        x = a_after**0.5 * prediction + max(1 - a_after - sigma**2, 0.0) ** 0.5 * predicted_noise
        if sigma > 0:
            x = x + sigma * next(noise)
    noise_left = predicted_noise * ((1 - level(4)) / level(4)) ** 0.5
    sampled = sample_ddim(denoise, times, iter(draws).__next__, eta, renoise)
    assert torch.equal(sampled[0], prediction) and torch.equal(sampled[1], noise_left)
    with pytest.raises(ValueError, match="at least one step"):
        sample_ddim(denoise, times[:1], iter(draws).__next__)


def test_renoising_sampler_is_seeded_tile_invariant_and_differs_from_ddim():
    model = random_unet()
    base = torch.rand(1, 3, 72, 88)
    renoise = SamplerSettings(renoise=True, tile=4096)
    whole = residual(model, base, 3.0, 4, 3, renoise)
    tiled = residual(model, base, 3.0, 4, 3, SamplerSettings(renoise=True, tile=32, margin=96))
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=0)
    torch.testing.assert_close(residual(model, base, 3.0, 4, 3, renoise), whole, atol=0, rtol=0)
    ddim = residual(model, base, 3.0, 4, 3, SamplerSettings(tile=4096))
    assert (ddim - whole).abs().mean() > 1e-4
    # one step draws only the starting noise: both updates agree there
    torch.testing.assert_close(residual(model, base, 3.0, 1, 3, renoise),
                               residual(model, base, 3.0, 1, 3, SamplerSettings(tile=4096)))


def test_a_grid_power_below_one_takes_short_steps_first_and_applies_at_its_level():
    torch.testing.assert_close(respaced_times(4, 0.4, 0.1, 1.0), torch.linspace(0.4, 0.1, 5, dtype=torch.float64))
    grid = respaced_times(20, 0.4, 0.1, 0.4)
    assert grid[0] == pytest.approx(0.4) and grid[-1] == pytest.approx(0.1)
    sizes = (grid[:-1] - grid[1:]).tolist()
    assert all(size > 0 for size in sizes) and sizes == sorted(sizes)  # the steps grow
    assert grid[-2] == pytest.approx(0.1 + 0.3 / 20**0.4)  # the last prediction comes at a noisier time
    model = random_unet()
    base = torch.rand(1, 3, 40, 56)
    even, short_first = SamplerSettings(), SamplerSettings(grid_power=(0.4, 1.0))
    assert not torch.equal(residual(model, base, 1.0, 3, 0, even), residual(model, base, 1.0, 3, 0, short_first))
    assert torch.equal(residual(model, base, 3.0, 3, 0, even), residual(model, base, 3.0, 3, 0, short_first))
    with pytest.raises(ValueError, match="grid_power"):
        SamplerSettings(grid_power=(0.0,))


def input_radius(model, size: int = 384) -> int:
    """How far from the centre the input pixels lie that move the centre output pixel."""
    noisy = torch.zeros(1, 3, size, size, requires_grad=True)
    out = model(noisy, torch.tensor([0.3]), torch.full((1, 3, size, size), 0.5), torch.tensor([2.0]))
    out[0, 0, size // 2, size // 2].backward()
    rows, columns = torch.nonzero(noisy.grad[0].abs().sum(0) > 0, as_tuple=True)
    return int(max((rows - size // 2).abs().max(), (columns - size // 2).abs().max()))


def test_a_deepened_unet_computes_the_same_function_and_tiles_with_a_wider_margin():
    model = random_unet()
    deeper = model.deepened(2)
    noisy, base = torch.randn(1, 3, 48, 64), torch.rand(1, 3, 48, 64)
    time, level = torch.tensor([0.3]), torch.tensor([2.0])
    torch.testing.assert_close(deeper(noisy, time, base, level), model(noisy, time, base, level), atol=0, rtol=0)
    with pytest.raises(ValueError, match="cannot deepen"):
        deeper.deepened(1)
    for parameter in deeper.parameters():  # the added blocks no longer the identity: a wider view
        parameter.data.normal_(0, 0.1)
    shallow_radius, deep_radius = input_radius(model), input_radius(deeper)
    assert shallow_radius <= model.receptive_radius < 96 and deep_radius <= deeper.receptive_radius
    assert deep_radius > 96 and deeper.tile_margin(96) % 8 == 0 and deeper.tile_margin(96) >= deep_radius
    image = torch.rand(1, 3, 200, 232)
    whole = residual(deeper, image, 3.0, 2, 1, SamplerSettings(tile=4096))
    tiled = residual(deeper, image, 3.0, 2, 1, SamplerSettings(tile=64, margin=16))
    torch.testing.assert_close(tiled, whole, atol=1e-4, rtol=0)


def test_the_fused_pixel_norm_is_a_per_pixel_layer_norm_with_its_modulation():
    from diraccodec.restoration.unet import PixelNorm

    torch.manual_seed(0)
    norm = PixelNorm(16)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, 9, 11)
    scale, shift = torch.randn(2, 16, 1, 1), torch.randn(2, 16, 1, 1)
    centred = x - x.mean(dim=1, keepdim=True)
    expected = centred * torch.rsqrt(centred.pow(2).mean(dim=1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm(x, scale, shift), expected * (1 + scale) + shift, atol=1e-5, rtol=1e-5)
    # a batch of one folds the modulation into the kernel, channels-last or not
    one = x[:1].contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(norm(one, scale[:1], shift[:1]), expected[:1] * (1 + scale[:1]) + shift[:1],
                               atol=1e-5, rtol=1e-5)


def test_cuda_graphs_are_asked_for_on_a_gpu_only(monkeypatch):
    """Which function the sampler gets; no CUDA is touched until a replay is called."""
    from diraccodec.compute import CPU, CUDA_GRAPHS_ENV, Compute, GraphReplay

    def network(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    monkeypatch.setenv(CUDA_GRAPHS_ENV, "1")
    replay = Compute(torch.device("cuda")).replayed(network)
    assert isinstance(replay, GraphReplay) and replay.function is network and replay.captures == 0
    assert Compute(CPU).replayed(network) is network  # a CPU has no graphs: the function itself
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "0")
    assert Compute(torch.device("cuda")).replayed(network) is network  # off unless asked for


@pytest.mark.cuda
def test_replayed_steps_give_the_pixels_of_plain_ones(monkeypatch, small_image):
    import numpy as np

    import diraccodec
    from diraccodec.compute import CUDA_GRAPHS_ENV, GraphReplay

    model, level = random_unet().cuda(), torch.tensor([2.0], device="cuda")  # made outside: a host copy stops a capture
    replay = GraphReplay(lambda x, t: model(x[:, :3], t, x[:, 3:], level))
    for shape in ((1, 6, 64, 64), (1, 6, 64, 96), (1, 6, 64, 64)):
        x, t = torch.rand(shape, device="cuda"), torch.rand(1, device="cuda")
        with torch.no_grad():
            torch.testing.assert_close(replay(x, t), model(x[:, :3], t, x[:, 3:], level))
    assert len(replay.graphs) == 2 and replay.captures == 2 and not replay.refused
    one_kept = GraphReplay(replay.function, max_graphs=1)
    for shape in ((1, 6, 64, 64), (1, 6, 64, 96), (1, 6, 64, 64)):
        with torch.no_grad():
            one_kept(torch.rand(shape, device="cuda"), torch.rand(1, device="cuda"))
    assert len(one_kept.graphs) == 2 and one_kept.captures == 2  # none dropped while in use
    one_kept.trim()
    assert list(one_kept.graphs) == [((((1, 6, 64, 64)), torch.float32, (24576, 4096, 64, 1)),
                                      ((1,), torch.float32, (1,)))]  # the last used stays
    data = diraccodec.encode(small_image, 3, device="cuda")
    plain = np.asarray(diraccodec.decode(data, 5, device="cuda"))
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "1")

    def captured() -> int:
        return sum(step.captures for steps in sampler._REPLAYED_STEPS.values() for step in steps.values())

    assert np.array_equal(np.asarray(diraccodec.decode(data, 5, device="cuda")), plain) and captured() >= 1
    first = captured()
    assert np.array_equal(np.asarray(diraccodec.decode(data, 5, device="cuda")), plain)
    assert captured() == first  # a second decode replays the graphs the first one captured


def test_graphs_of_a_decode_s_many_tile_shapes_are_captured_once_and_trimmed_after():
    """Tiles come in the same order at every step: dropping the least recently used graph when
    there are more shapes than kept graphs would capture every tile again at every step."""
    from diraccodec.compute import GraphReplay

    class Captured(GraphReplay):  # the graph's bookkeeping, without a GPU: replaying runs the function
        def _capture(self, buffers):
            graph = type("Graph", (), {"replay": lambda graph: None})()
            return graph, buffers, self.function(*buffers)

    replay = Captured(lambda x: x * 2, max_graphs=4)
    shapes = [(1, 6, 8, 8 + width) for width in range(9)]
    for _ in range(20):  # the steps
        for shape in shapes:
            replay(torch.ones(shape))
    assert replay.captures == 9 and len(replay.graphs) == 9
    replay.trim()
    assert [key[0][0] for key in replay.graphs] == shapes[-4:]


def test_a_replayed_step_is_kept_with_its_model_and_goes_with_it(monkeypatch):
    import gc
    import weakref

    from diraccodec.compute import CPU, Compute

    made = []
    monkeypatch.setattr(Compute, "uses_graphs", property(lambda self: True))
    monkeypatch.setattr(Compute, "replayed", lambda self, function: made.append(function) or function)
    compute, model, other = Compute(CPU, exact=True), random_unet(), random_unet()  # exact: no autocast
    step = sampler.step_network(model, compute)
    assert sampler.step_network(model, compute) is step and len(made) == 1  # made once per model
    assert sampler.step_network(other, compute) is not step and len(made) == 2
    x, t, level = torch.rand(1, 6, 32, 32), torch.rand(1), torch.tensor([2.0])
    with torch.no_grad():
        torch.testing.assert_close(step(x, t, level), model(x[:, :3], t, x[:, 3:], level))
    held = weakref.ref(model)
    del model, step
    gc.collect()
    assert held() is None and len(sampler._REPLAYED_STEPS) == 1  # the cache does not keep a model alive


def test_weights_stored_in_the_autocast_dtype_sample_the_same_bits_with_fewer_casts(monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    from diraccodec import compute as compute_module
    from diraccodec.compute import CPU, Compute

    monkeypatch.setattr(compute_module, "cpu_computes_bfloat16", lambda: True)  # autocast on any CPU
    fast = Compute(CPU)
    assert fast.low_precision == torch.bfloat16
    model = random_unet()
    plain, stored = fast.prepare(model), fast.prepare_for_autocast(model)
    assert stored.conv_in.weight.dtype == torch.bfloat16 and stored.embed[0].bias.dtype == torch.bfloat16
    assert stored.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert stored.down_blocks[0].norm_in.weight.dtype == torch.float32  # norms keep their precision
    assert model.conv_in.weight.dtype == torch.float32  # the caller's module is untouched
    base = torch.rand(1, 3, 48, 64)

    def sampled(unet: torch.nn.Module) -> tuple[torch.Tensor, int]:
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            result = sample_residual(unet, base, 3.0, 2, 5, SamplerSettings(), fast).prediction
        return result, sum(event.count for event in trace.key_averages() if event.key == "aten::_to_copy")

    (plain_result, plain_casts), (stored_result, stored_casts) = sampled(plain), sampled(stored)
    assert torch.equal(stored_result, plain_result)
    assert stored_casts < plain_casts / 2
    assert Compute(CPU, exact=True).prepare_for_autocast(model).conv_in.weight.dtype == torch.float32


def test_each_noise_field_a_sampling_draws_is_a_new_one(monkeypatch):
    """The starting noise and every renoising draw are fields of their own: one field drawn
    again would correlate the steps' noise, and the seeded image would still repeat itself."""
    draws = []
    drawn = sampler.gaussian_noise

    def recorded(shape, seed, draw, device="cpu"):
        draws.append((seed, draw))
        return drawn(shape, seed, draw, device)

    monkeypatch.setattr(sampler, "gaussian_noise", recorded)
    sample_residual(random_unet(), torch.rand(1, 3, 32, 32), 3.0, 4, 9, SamplerSettings(renoise=True))
    assert draws == [(9, draw) for draw in range(4)]


def test_the_even_grid_is_bit_for_bit_the_float64_linspace_of_earlier_files():
    """Power 1 is the grid of files from before the power existed: its times must keep every
    bit, or their decodes change (a float32 grid, or the power's formula, round otherwise)."""
    for steps, start, end in ((7, 0.9, 0.05), (12, 0.7, 0.0), (3, 0.4, 0.1), (5, 0.63, 0.17)):
        grid = respaced_times(steps, start, end, 1.0)
        assert grid.dtype == torch.float64
        assert torch.equal(grid, torch.linspace(start, end, steps + 1, dtype=torch.float64))
    assert respaced_times(7, 0.9, 0.05).tolist()[1:3] == [0.7785714285714286, 0.6571428571428571]


def test_the_signal_level_is_the_cosine_schedule_of_nichol_and_dhariwal():
    """a(t) = f(t) / f(0), f(t) = cos((t + s) / (1 + s) * pi / 2)^2 with their offset s = 0.008
    (Improved DDPM, 2021), kept within [1e-5, 1]: computed here from the formula in float64."""
    def cosine(time: float) -> float:
        return math.cos((time + 0.008) / 1.008 * math.pi / 2) ** 2

    def expected(time: float) -> float:
        return min(max(cosine(time) / cosine(0.0), 1e-5), 1.0)

    times = [0.0, 0.02, 0.1, 0.25, 0.5, 0.8, 0.99, 1.0]
    levels = signal_level(torch.tensor(times, dtype=torch.float64))
    torch.testing.assert_close(levels, torch.tensor([expected(t) for t in times], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    assert levels[0] == 1.0 and levels[-1] == 1e-5
