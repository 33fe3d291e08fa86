"""The diffusion decoder through the API: seeds, weights that fit, modes and the shipped model."""

from __future__ import annotations

import numpy as np
import pytest

import diraccodec
from diraccodec.diffusion.sampler import SamplerSettings
from diraccodec.errors import InvalidOptionError, WrongWeightsError
from diraccodec.modelfiles import DEFAULT_BASE_WEIGHTS, export_diffusion_weights
from tests.conftest import random_unet


def test_same_seed_same_pixels_other_seed_other_pixels(small_image, random_diffusion_weights):
    data = diraccodec.encode(small_image, 3)
    base = np.asarray(diraccodec.decode(data, steps=0), dtype=np.int16)
    decode = lambda **options: np.asarray(  # noqa: E731
        diraccodec.decode(data, steps=4, diffusion_weights=random_diffusion_weights, **options), dtype=np.int16)
    first, again, default, other = decode(seed=7), decode(seed=7), decode(), decode(seed=8)
    assert first.shape == base.shape and np.abs(first - base).mean() > 1  # the sampler changed the image
    synthesis = np.asarray(diraccodec.decode(data, steps=0, restore=False), dtype=np.int16)
    one_step = np.asarray(diraccodec.decode(data, steps=1, diffusion_weights=random_diffusion_weights),
                          dtype=np.int16)  # one step is a step: neither 0-step image
    assert min(np.abs(one_step - synthesis).mean(), np.abs(one_step - base).mean()) > 0.5
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(default, decode(seed=0))
    assert np.abs(other - first).mean() > 0.5


def test_diffusion_for_other_base_weights_is_refused(small_image, tmp_path):
    other = tmp_path / "diffusion.safetensors"
    export_diffusion_weights(random_unet(), SamplerSettings(), b"\x00" * 8, other, {"purpose": "test"})
    data = diraccodec.encode(small_image, 3)
    # eval and compare have no --diffusion-weights: the advice names what every command reads
    with pytest.raises(WrongWeightsError, match=r"trained on base weights .*\(\$DIRAC_DIFFUSION_WEIGHTS, which every "):
        diraccodec.decode(data, steps=2, diffusion_weights=other)


def test_steps_without_diffusion_weights_say_so(small_image, monkeypatch, tmp_path):
    monkeypatch.setenv("DIRAC_DIFFUSION_WEIGHTS", str(tmp_path / "absent.safetensors"))
    from diraccodec import api
    from diraccodec.modelfiles import load_diffusion_weights

    api.models._cached_diffusion.cache_clear()
    load_diffusion_weights.cache_clear()
    try:
        with pytest.raises(InvalidOptionError, match=r"no diffusion weights at .*absent\.safetensors; use 0 steps"):
            diraccodec.decode(diraccodec.encode(small_image, 2), steps=5)
    finally:  # forget the answer for the patched path
        api.models._cached_diffusion.cache_clear()
        load_diffusion_weights.cache_clear()
    assert DEFAULT_BASE_WEIGHTS.exists()


def test_fast_decoding_repeats_itself_and_stays_close_to_the_exact_one(small_image):
    data = diraccodec.encode(small_image, 2)

    def decode(exact: bool) -> np.ndarray:
        return np.asarray(diraccodec.decode(data, steps=3, seed=5, exact=exact), dtype=np.int16)

    fast, again, exact = decode(False), decode(False), decode(True)
    np.testing.assert_array_equal(fast, again)
    base = np.asarray(diraccodec.decode(data, steps=0), dtype=np.int16)
    assert np.abs(exact - base).mean() > 1  # the sampler really changed the image
    # bfloat16 (on CPUs that have it) and oneDNN's sums against the exact float32 kernels, with
    # the shipped weights: within the tolerance docs/format.md states for 1-100 steps
    assert np.abs(fast - exact).mean() <= 0.5 and np.abs(fast - exact).max() <= 8


def test_a_decoder_trained_on_the_filter_enhances_its_output_and_needs_it(small_image, tmp_path):
    from diraccodec import api
    from diraccodec.modelfiles import load_restoration_weights

    restoration = load_restoration_weights()
    assert restoration is not None, "the shipped restoration filter is needed"
    base_id = restoration.base_weights_id
    on_filter = tmp_path / "on-filter" / "diffusion.safetensors"
    export_diffusion_weights(random_unet(), SamplerSettings(), base_id, on_filter, {"purpose": "test"},
                             restoration_weights_id=restoration.weights_id)
    on_synthesis = tmp_path / "on-synthesis" / "diffusion.safetensors"
    export_diffusion_weights(random_unet(), SamplerSettings(), base_id, on_synthesis, {"purpose": "test"})
    data = diraccodec.encode(small_image, 2)
    synthesis = np.asarray(diraccodec.decode(data, steps=0, restore=False))
    restored = np.asarray(diraccodec.decode(data, steps=0))
    assert not np.array_equal(synthesis, restored)

    decoded = np.asarray(diraccodec.decode(data, steps=2, seed=1, diffusion_weights=on_filter))
    plain = api.get_diffusion(api.get_codec(None, api.compute_for()), on_synthesis)
    assert plain.restorer is None
    assert np.array_equal(decoded, plain.enhance(restored, 2, 2, seed=1))
    assert not np.array_equal(decoded, plain.enhance(synthesis, 2, 2, seed=1))

    other = tmp_path / "other" / "diffusion.safetensors"
    export_diffusion_weights(random_unet(), SamplerSettings(), base_id, other, {"purpose": "test"},
                             restoration_weights_id=b"\x01" * 8)
    with pytest.raises(WrongWeightsError, match="restoration weights 0101010101010101, which are not installed"):
        diraccodec.decode(data, steps=2, diffusion_weights=other)


@pytest.mark.slow
@pytest.mark.parametrize("level", [1, 4])
def test_shipped_decoder_trades_a_little_psnr_for_much_lower_lpips(level):
    from PIL import Image

    from diraccodec.evaluation.metrics import lpips
    from tests.conftest import SAMPLE, psnr

    with Image.open(SAMPLE) as image:
        photo = image.convert("RGB").crop((64, 64, 320, 320))
    data = diraccodec.encode(photo, level)
    restored, partway, enhanced = (diraccodec.decode(data, steps=steps) for steps in (0, 5, 20))
    assert lpips(photo, enhanced) < 0.8 * lpips(photo, restored)
    assert psnr(photo, enhanced) > psnr(photo, restored) - 1.5
    # the knob: 5 steps lie between
    assert lpips(photo, enhanced) < lpips(photo, partway) < lpips(photo, restored)
    assert psnr(photo, enhanced) < psnr(photo, partway) < psnr(photo, restored)
