"""Training the diffusion decoder: its loss, its data and its checkpoints."""

from __future__ import annotations

import pytest
import torch

from diraccodec.modelfiles import DEFAULT_BASE_WEIGHTS
from tests.conftest import random_unet


def test_export_command_recognises_a_diffusion_checkpoint(diffusion_weights, tmp_path):
    from click.testing import CliRunner

    from diraccodec.cli import main
    from diraccodec.training.checkpoint import load_checkpoint_metadata

    checkpoint = diffusion_weights.parent / "ck.safetensors"
    assert load_checkpoint_metadata(checkpoint).metadata["kind"] == "diffusion"
    result = CliRunner().invoke(main, ["train", "export", str(checkpoint), str(tmp_path / "d.safetensors")])
    assert result.exit_code == 0 and "diffusion decoder" in result.output
    from diraccodec.modelfiles import load_diffusion_weights

    exported, fixture = (load_diffusion_weights(path).model.state_dict()
                         for path in (tmp_path / "d.safetensors", diffusion_weights))
    assert exported.keys() == fixture.keys() and all(torch.equal(exported[k], fixture[k]) for k in fixture)


def test_a_state_without_its_kind_is_known_by_what_it_holds():
    from diraccodec.training.export import state_kind

    assert state_kind({"config": {}, "base_weights_id": "00", "kind": "restoration"}) == "restoration"
    assert state_kind({"config": {}, "base_weights_id": "00"}) == "diffusion"  # a U-Net names its base
    assert state_kind({"config": {}, "batch_size": 8}) == "base"


@pytest.mark.parametrize("kind", ["vae", ["vae"]])  # a later version's, a hand-edited one
def test_a_state_of_a_model_this_version_does_not_know_is_one_line(diffusion_weights, tmp_path, monkeypatch, kind):
    from click.testing import CliRunner

    from diraccodec.cli import main
    from diraccodec.training import export
    from diraccodec.training.checkpoint import TrainingState

    checkpoint = diffusion_weights.parent / "ck.safetensors"
    monkeypatch.setattr(export, "load_checkpoint_metadata", lambda path: TrainingState(1, 1.0, {"kind": kind}))
    result = CliRunner().invoke(main, ["train", "export", str(checkpoint), str(tmp_path / "w.safetensors")])
    assert (result.exit_code, result.output) == (
        2, f"dirac: error: {checkpoint} trains a model this version does not know: {kind!r}\n"), result.output


def test_own_prediction_training_feeds_the_model_its_first_step():
    from diraccodec.training.diffusion import diffusion_loss

    model = random_unet()
    batch, base = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    levels = torch.tensor([2.0, 5.0])
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    torch.manual_seed(0)
    truth = diffusion_loss(model, batch, base, levels, 0.7)
    torch.manual_seed(0)
    own = diffusion_loss(model, batch, base, levels, 0.7, own_prediction_fraction=1.0)
    handle.remove()
    assert len(seen) == 1 + 2  # one pass with the truth; a first step, then the trained pass
    assert own["loss"].requires_grad and torch.isfinite(own["loss"])
    assert not torch.equal(seen[0], seen[2])  # the trained pass saw another input
    assert truth["residual_mse"] != own["residual_mse"]


def test_relative_loss_weighs_every_crop_by_its_own_base_error():
    from diraccodec.training.diffusion import diffusion_loss

    class KeepsTheBase(torch.nn.Module):  # predicts a zero residual: exactly the base image
        def __init__(self) -> None:
            super().__init__()
            self.gain = torch.nn.Parameter(torch.zeros(()))

        def forward(self, noisy, time, base, levels):
            return noisy * self.gain

    batch = torch.rand(2, 3, 16, 16)
    base = batch.clone()
    base[0] += 0.02 * torch.randn(3, 16, 16)  # a fine level's small residual
    base[1] += 0.2 * torch.randn(3, 16, 16)  # a coarse level's large one
    base = base.clamp(0, 1)  # as the base codec's reconstructions are
    levels = torch.tensor([8.0, 1.0])

    def distance(a, b):
        return (a - b).abs().mean(dim=(1, 2, 3))
    absolute = diffusion_loss(KeepsTheBase(), batch, base, levels, 0.7)
    relative = diffusion_loss(KeepsTheBase(), batch, base, levels, 0.7, distance, 2.0, relative_loss=True)
    # Keeping the base scores 1 per crop on each term, whatever the residual's size.
    assert relative["loss"].item() == pytest.approx(1 + 2.0, rel=1e-4)
    assert absolute["loss"].item() > 1.5  # dominated by the coarse crop's large residual
    relative["loss"].backward()


def train_recording_batches(sample_image, tmp_path, monkeypatch, **options):
    """Train a tiny decoder on the sample image; every batch's (crops, bases, levels) and the options."""
    from diraccodec.training import diffusion

    seen = []

    def recording_loss(unet, batch, base, levels, *args, **kwargs):
        seen.append((batch, base, levels))
        return real_loss(unet, batch, base, levels, *args, **kwargs)

    real_loss = diffusion.diffusion_loss
    monkeypatch.setattr(diffusion, "diffusion_loss", recording_loss)
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    sample_image.save(photos / "a.png")
    settings = diffusion.DiffusionTrainingOptions(
        data=(photos,), checkpoint=tmp_path / "ck.safetensors", patch_size=64, widths=(8, 16, 16),
        checkpoint_minutes=1e9, threads=1, **options,
    )
    diffusion.train_diffusion(settings)
    return seen, settings


def test_diffusion_training_draws_levels_only_from_the_level_range(sample_image, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from diraccodec.cli import main

    seen, _ = train_recording_batches(sample_image, tmp_path, monkeypatch, steps=3, batch_size=4,
                                      level_range=(6.5, 7.0))
    drawn = [level for _, _, levels in seen for level in levels.tolist()]
    assert len(drawn) == 12 and all(6.5 <= level <= 7.0 for level in drawn) and len(set(drawn)) > 1
    result = CliRunner().invoke(main, ["train", "diffusion", "--data", str(tmp_path / "photos"), "--level-range", "0,9",
                                       "--checkpoint", str(tmp_path / "other.safetensors"), "--steps", "1"])
    assert result.exit_code == 2 and "--level-range 0,9 is outside the base's levels 1-8" in result.output


def test_training_on_the_filter_feeds_the_model_the_filter_output(sample_image, tmp_path, monkeypatch):
    from diraccodec.modelfiles import (
        DEFAULT_RESTORATION_WEIGHTS,
        load_base_weights,
        load_diffusion_weights,
        load_restoration_weights,
    )
    from diraccodec.training import diffusion

    seen, options = train_recording_batches(sample_image, tmp_path, monkeypatch, steps=1, batch_size=2,
                                            restoration_weights=DEFAULT_RESTORATION_WEIGHTS)
    batch, base, levels = seen[0]
    restoration = load_restoration_weights(DEFAULT_RESTORATION_WEIGHTS.resolve())
    with torch.no_grad():
        synthesis = load_base_weights(DEFAULT_BASE_WEIGHTS.resolve()).model.reconstruct(batch, level_index=levels - 1)
        expected = restoration.model.restore(synthesis, levels).clamp(0, 1).mul(255).round().div(255)
    assert torch.allclose(base, expected, atol=1e-6) and not torch.allclose(base, synthesis, atol=1e-3)

    diffusion.export_diffusion_checkpoint(options.checkpoint, tmp_path / "w" / "diffusion.safetensors")
    exported = load_diffusion_weights(tmp_path / "w" / "diffusion.safetensors")
    assert exported.restoration_weights_id == restoration.weights_id


def test_the_frozen_stages_reconstruct_in_full_float32_beside_tf32_steps(sample_image, tmp_path, monkeypatch):
    """On a GPU the trained model's steps run in TF32, and so did the frozen base and filter that
    make its inputs, which the decoder runs in full float32: the reconstructions it learnt from
    differed from those it is given."""
    from diraccodec.codec.hyperprior import MultiRateHyperprior
    from diraccodec.modelfiles import DEFAULT_RESTORATION_WEIGHTS
    from diraccodec.restoration.filter import RestorationFilter

    def full_float32_now() -> bool:
        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        if hasattr(matmul, "fp32_precision") and hasattr(cudnn, "conv"):
            return matmul.fp32_precision == cudnn.conv.fp32_precision == "ieee"
        return not matmul.allow_tf32 and not cudnn.allow_tf32

    seen = []
    for owner, name in ((MultiRateHyperprior, "reconstruct"), (RestorationFilter, "restore")):
        def recorded(*arguments, _function=getattr(owner, name), _name=name, **options):
            seen.append((_name, full_float32_now()))
            return _function(*arguments, **options)

        monkeypatch.setattr(owner, name, recorded)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    previous = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = True  # as start_run sets them on a GPU
    try:
        train_recording_batches(sample_image, tmp_path, monkeypatch, steps=2, batch_size=2,
                                restoration_weights=DEFAULT_RESTORATION_WEIGHTS)
        assert not full_float32_now()  # the steps' own setting is back
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = previous
    assert seen == [("reconstruct", True), ("restore", True)] * 2


def test_training_with_more_blocks_deepens_the_checkpoint_and_resumes_it(sample_image, tmp_path, monkeypatch):
    from diraccodec.errors import DiracError
    from diraccodec.restoration.unet import ResidualUNet, ResidualUNetConfig
    from diraccodec.training.checkpoint import load_checkpoint, load_checkpoint_metadata
    from diraccodec.training.diffusion import deepen_checkpoint

    _, settings = train_recording_batches(sample_image, tmp_path, monkeypatch, steps=2, batch_size=2)
    checkpoint = settings.checkpoint
    shallow = ResidualUNet(ResidualUNetConfig.from_fields(load_checkpoint_metadata(checkpoint).metadata["config"]))
    load_checkpoint(checkpoint, shallow, None, None)
    assert deepen_checkpoint(checkpoint, 2) and not deepen_checkpoint(checkpoint, 2)
    state = load_checkpoint_metadata(checkpoint)
    deep = ResidualUNet(ResidualUNetConfig.from_fields(state.metadata["config"]))
    load_checkpoint(checkpoint, deep, None, None)
    assert state.step == 2 and deep.config.blocks == 2 and deep.config.widths == (8, 16, 16)
    noisy, base = torch.randn(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    arguments = (noisy, torch.tensor([0.2]), base, torch.tensor([4.0]))
    torch.testing.assert_close(deep(*arguments), shallow(*arguments), atol=0, rtol=0)
    with pytest.raises(DiracError, match="has 2 blocks per resolution"):
        deepen_checkpoint(checkpoint, 1)
    seen, _ = train_recording_batches(sample_image, tmp_path, monkeypatch, steps=3, batch_size=2)
    assert len(seen) == 1  # resumed at step 2, at the checkpoint's depth
    assert load_checkpoint_metadata(checkpoint).metadata["config"]["blocks"] == 2


def test_each_adversarial_term_reaches_only_its_own_side():
    from diraccodec.training.adversarial import PatchCritic, adversarial_terms

    torch.manual_seed(0)
    critic = PatchCritic()
    photo, base = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    source = torch.rand(2, 3, 32, 32, requires_grad=True)  # stands in for the decoder's parameters
    decoder_term, critic_term = adversarial_terms(critic, photo, source.sigmoid(), base)
    assert all(parameter.requires_grad for parameter in critic.parameters())  # left trainable
    decoder_term.backward(retain_graph=True)
    assert source.grad is not None and source.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in critic.parameters())
    source.grad = None
    critic_term.backward()
    assert source.grad is None
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in critic.parameters())
    assert critic(photo, base).shape == (2, 1, 4, 4)  # a logit per patch


def test_the_adversarial_term_trains_a_critic_in_the_state_and_exports_the_unet_alone(sample_image, tmp_path,
                                                                                         monkeypatch):
    from safetensors import safe_open

    from diraccodec.errors import DiracError
    from diraccodec.modelfiles import load_diffusion_weights
    from diraccodec.training.checkpoint import load_checkpoint_metadata, read_state
    from diraccodec.training.diffusion import deepen_checkpoint, export_diffusion_checkpoint

    seen, options = train_recording_batches(sample_image, tmp_path, monkeypatch, steps=2, batch_size=2,
                                            adversarial_weight=0.1, lpips_weight=0.0)
    checkpoint = options.checkpoint
    state, tensors = read_state(checkpoint)
    assert state.metadata["critic"] == {"widths": [64, 128, 256]} and state.metadata["adversarial_weight"] == 0.1
    assert any(name.startswith("model.critic.") for name in tensors)
    assert any(name.startswith("adam.") for name in tensors)
    exported = tmp_path / "w" / "diffusion.safetensors"
    export_diffusion_checkpoint(checkpoint, exported)
    with safe_open(str(exported), "pt") as handle:
        assert not any("critic" in name for name in list(handle.keys()))
    loaded = load_diffusion_weights(exported)
    assert loaded is not None and loaded.model.config.widths == (8, 16, 16)
    unet_weights = {name.removeprefix("model.unet."): tensor for name, tensor in tensors.items()
                    if name.startswith("model.unet.")}
    assert all(torch.equal(loaded.model.state_dict()[name], unet_weights[name]) for name in unet_weights)
    with pytest.raises(DiracError, match="holds a critic"):
        deepen_checkpoint(checkpoint, 2)
    seen, _ = train_recording_batches(sample_image, tmp_path, monkeypatch, steps=3, batch_size=2)  # resumes
    assert len(seen) == 1 and load_checkpoint_metadata(checkpoint).step == 3
    plain = tmp_path / "plain"
    plain.mkdir()
    train_recording_batches(sample_image, plain, monkeypatch, steps=1, batch_size=2)
    with pytest.raises(DiracError, match="holds no critic"):
        train_recording_batches(sample_image, plain, monkeypatch, steps=2, batch_size=2, adversarial_weight=0.1)


def test_a_level_range_given_high_first_is_named_so():
    from click.testing import CliRunner

    from diraccodec.cli import main

    result = CliRunner().invoke(main, ["train", "diffusion", "--level-range", "5,1", "--steps", "1"])
    assert result.exit_code == 2 and result.output == "dirac: error: --level-range takes LOW,HIGH with LOW at " \
        "most HIGH, got '5,1'\n", result.output  # it said the range was outside the base's levels
