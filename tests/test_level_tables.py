"""Hyper-latent tables per level: counted from photos, carried by a copy of the base weights,
coding the same symbols (and so the same pixels) in fewer bytes where they fit."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

import diraccodec
from diraccodec.api import get_codec
from diraccodec.cli import main
from diraccodec.console import tracked
from diraccodec.entropy.tables import TOTAL, TableSet, tables_from_counts
from diraccodec.errors import DiracError
from diraccodec.modelfiles import (
    DEFAULT_BASE_WEIGHTS,
    LEVEL_TABLES,
    load_base_weights,
    released_base_weights,
    write_shared_tables_copy,
    write_with_level_tables,
)
from diraccodec.training.entropy import fit_level_tables

PRIOR = TableSet(np.array([[100, 65_000, 434, 2], [32_768, 32_767, 1, 0]]), np.array([-1, 0]), np.array([4, 3]))


def test_tables_from_counts_follow_the_counts_and_stay_near_the_prior_where_few_were_seen():
    counts = np.zeros((4, 4))
    counts[2, 0] = 10_000  # level 1, channel 0: nearly always -1
    tables = tables_from_counts(counts, PRIOR, pseudo_counts=16)
    assert tables.count == 4 and np.array_equal(tables.offsets, [-1, 0, -1, 0])
    for row in range(4):
        assert tables.row(row).sum() == TOTAL and tables.row(row).min() >= 1
    assert abs(int(tables.row(0)[1]) - 65_000) <= 2  # unseen: the prior, to rounding
    assert tables.row(2)[0] > 60_000  # seen: the counts


@pytest.fixture(scope="module")
def shared_weights(tmp_path_factory) -> Path:
    """The shipped model with its shared hyper tables alone: the earlier release's base weights."""
    path = tmp_path_factory.mktemp("shared-tables") / "base.safetensors"
    write_shared_tables_copy(DEFAULT_BASE_WEIGHTS.resolve(), path)
    return path


@pytest.fixture(scope="module")
def level_weights(tmp_path_factory, sample_image, shared_weights) -> Path:
    """Those weights with tables counted on three crops of the sample."""
    folder = tmp_path_factory.mktemp("level-tables")
    photos = []
    for index, box in enumerate(((0, 0, 192, 128), (192, 0, 384, 128), (0, 128, 192, 256))):
        photos.append(folder / f"crop{index}.png")
        sample_image.crop(box).save(photos[-1])
    tables = fit_level_tables(load_base_weights(shared_weights), photos)
    write_with_level_tables(shared_weights, folder / "base-levels.safetensors", tables, {"purpose": "test"})
    return folder / "base-levels.safetensors"


def test_per_level_tables_code_the_same_symbols_in_fewer_bytes(level_weights, shared_weights, sample_image):
    photo = sample_image.crop((0, 0, 192, 128))  # one the tables were counted on
    weights = load_base_weights(level_weights)
    assert weights.weights_id != load_base_weights(shared_weights).weights_id
    for level in (0, 1.5, 8):
        shared = diraccodec.encode(photo, level, effort=1, weights=shared_weights)
        counted = diraccodec.encode(photo, level, effort=1, weights=level_weights)
        shared_latents, counted_latents = (
            codec.read_stream(diraccodec.inspect(data).header.sections[b"LATS"], *photo.size, level)
            for codec, data in ((get_codec(shared_weights), shared), (get_codec(level_weights), counted)))
        assert np.array_equal(shared_latents.hyper, counted_latents.hyper)
        assert np.array_equal(shared_latents.symbols, counted_latents.symbols)
        assert np.array_equal(np.asarray(diraccodec.decode(shared, weights=shared_weights, restore=False)),
                              np.asarray(diraccodec.decode(counted, weights=level_weights, restore=False)))
        assert len(counted) < len(shared) if level == 0 else len(counted) <= len(shared)


def test_the_shipped_weights_less_their_level_tables_are_the_earlier_release(shared_weights):
    shipped = load_base_weights(DEFAULT_BASE_WEIGHTS.resolve())
    earlier = load_base_weights(shared_weights)
    assert shipped.hyper_level_tables is not None and earlier.hyper_level_tables is None
    assert earlier.weights_id == shipped.shared_tables_id  # byte for byte: the same SHA-256
    releases = released_base_weights()
    assert releases[earlier.weights_id.hex()] != releases[shipped.weights_id.hex()]
    with pytest.raises(DiracError, match="names no weights with shared tables"):
        write_shared_tables_copy(shared_weights, shared_weights.parent / "again.safetensors")


def test_files_of_the_earlier_release_decode_to_the_same_pixels(shared_weights, sample_image, tmp_path):
    photo = sample_image.crop((64, 32, 160, 128))
    earlier = diraccodec.encode(photo, 0.5, effort=1, weights=shared_weights)  # rounding: the same latents
    current = diraccodec.encode(photo, 0.5, effort=1)
    assert diraccodec.inspect(earlier).header.weights_id == load_base_weights(shared_weights).weights_id
    for steps in (0, 2):  # the shipped filter and decoder serve the earlier files too
        assert np.array_equal(np.asarray(diraccodec.decode(earlier, steps=steps, seed=1)),
                              np.asarray(diraccodec.decode(current, steps=steps, seed=1)))
    (tmp_path / "earlier.drc").write_bytes(earlier)
    result = CliRunner().invoke(main, ["info", str(tmp_path / "earlier.drc")])
    assert result.exit_code == 0, result.output
    assert "the same model" in result.output and re.search(r"diffusion\s+available", result.output)


def test_the_whole_level_picks_the_tables_and_they_are_checked_on_load(level_weights, small_image, tmp_path):
    from safetensors.torch import load_file, save_file

    from diraccodec.modelfiles import record_in_manifest

    codec = get_codec(level_weights)
    data = diraccodec.encode(small_image.crop((0, 0, 32, 32)), 2, weights=level_weights)
    stream = diraccodec.inspect(data).header.sections[b"LATS"]
    hyper = codec.read_stream(stream, 32, 32, 2).hyper
    assert np.array_equal(codec.read_stream(stream, 32, 32, 2.75).hyper, hyper)  # level 2's tables
    assert not np.array_equal(codec.read_stream(stream, 32, 32, 6).hyper, hyper)  # level 6's tables misread it
    tensors = load_file(str(level_weights))
    tensors[f"{LEVEL_TABLES}.offsets"] = tensors[f"{LEVEL_TABLES}.offsets"][:-1]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={"config": load_base_weights(level_weights).metadata["config"]})
    record_in_manifest(broken)
    with pytest.raises(DiracError, match="not a diraccodec base weights file"):
        load_base_weights(broken)


def test_train_level_tables_writes_a_weights_set_that_decodes_the_same_pixels(sample_image, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    sample_image.crop((0, 0, 128, 128)).save(photos / "one.png")
    output = tmp_path / "levels"
    result = CliRunner().invoke(main, ["train", "level-tables", str(output), "--data", str(photos)])
    assert result.exit_code == 0, result.output
    assert "counted on 1 photo\n" in result.output
    assert "hyper-latents: 1/1 (" in result.output  # progress, in a log as on a terminal
    base = load_base_weights((output / "base.safetensors").resolve())
    assert base.hyper_level_tables is not None
    photo = sample_image.crop((128, 64, 224, 160))
    shipped = diraccodec.encode(photo, 1)
    expected = {steps: np.asarray(diraccodec.decode(shipped, steps=steps)) for steps in (0, 2)}
    for variable, name in (("DIRAC_WEIGHTS", "base"), ("DIRAC_RESTORATION_WEIGHTS", "restoration"),
                           ("DIRAC_DIFFUSION_WEIGHTS", "diffusion")):
        monkeypatch.setenv(variable, str(output / f"{name}.safetensors"))
    counted = diraccodec.encode(photo, 1)
    assert diraccodec.inspect(counted).header.weights_id == base.weights_id
    for steps, pixels in expected.items():  # the filter and the decoder name the new weights
        assert np.array_equal(np.asarray(diraccodec.decode(counted, steps=steps)), pixels)


def test_tables_fitted_again_keep_naming_the_weights_without_them(level_weights, shared_weights, tmp_path):
    """Refitting the level tables of weights that have them: the new set still names the
    weights without level tables, whose files it decodes (not the set it was refitted from)."""
    again = tmp_path / "again.safetensors"
    write_with_level_tables(level_weights, again, load_base_weights(level_weights).hyper_level_tables,
                            {"purpose": "test"})
    assert load_base_weights(again).shared_tables_id == load_base_weights(shared_weights).weights_id
    assert load_base_weights(level_weights).shared_tables_id == load_base_weights(shared_weights).weights_id


def test_unets_are_not_tied_to_weights_that_reconstruct_otherwise(tmp_path):
    from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
    from diraccodec.modelfiles import (
        DEFAULT_DIFFUSION_WEIGHTS,
        DEFAULT_RESTORATION_WEIGHTS,
        export_base_weights,
        retie_unets,
    )

    other = tmp_path / "other.safetensors"
    export_base_weights(MultiRateHyperprior(HyperpriorConfig(8, 8)), other, {"purpose": "test"})
    with pytest.raises(DiracError, match="does not reconstruct as"):
        retie_unets(DEFAULT_BASE_WEIGHTS, other, DEFAULT_RESTORATION_WEIGHTS, DEFAULT_DIFFUSION_WEIGHTS, tmp_path)


def test_weights_files_list_their_metadata_in_the_order_given():
    """safetensors alone writes metadata in a hash map's order, which differs between processes;
    the weights id is the file's hash, so the writer fixes the order."""
    import torch
    from safetensors.torch import load

    from diraccodec.modelfiles import serialized

    tensors = {"a": torch.arange(3), "b": torch.ones(2, 2)}
    for order in (("info", "config", "note"), ("note", "config", "info")):
        data = serialized(tensors, {key: f"{key} value" for key in order})
        header = data[8 : 8 + int.from_bytes(data[:8], "little")].decode()
        assert [header.index(f'"{key}":') for key in order] == sorted(header.index(f'"{key}":') for key in order)
        assert torch.equal(load(data)["b"], tensors["b"])
    assert torch.equal(load(serialized(tensors, {}))["a"], tensors["a"])


def test_level_tables_into_the_folder_of_the_weights_they_read_are_refused(tmp_path, monkeypatch):
    import shutil

    from click.testing import CliRunner

    from diraccodec.cli import main
    from diraccodec.modelfiles import DEFAULT_BASE_WEIGHTS

    folder = tmp_path / "w"
    folder.mkdir()
    (tmp_path / "no-photos").mkdir()
    shutil.copy(DEFAULT_BASE_WEIGHTS, folder / "base.safetensors")
    before = (folder / "base.safetensors").read_bytes()
    result = CliRunner().invoke(main, ["train", "level-tables", str(folder), "--weights",
                                       str(folder / "base.safetensors"), "--data", str(tmp_path / "no-photos")])
    assert result.exit_code == 2, result.output
    assert f"holds {folder / 'base.safetensors'}, which the tables are counted from" in result.output
    assert (folder / "base.safetensors").read_bytes() == before  # it was replaced under the installed U-Nets
    monkeypatch.setenv("DIRAC_RESTORATION_WEIGHTS", "none")  # no file: nothing of the current folder's is read
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "level-tables", ".", "--data", str(tmp_path / "no-photos")])
    assert result.exit_code == 2 and "no training photos under" in result.output, result.output


def test_long_work_in_a_log_prints_a_line_at_each_tenth_done():
    log = io.StringIO()
    console = Console(file=log, width=200)  # not a terminal: no live bar
    assert list(tracked(range(25), "photos", console)) == list(range(25))
    lines = log.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"photos: {done}/25" for done in
                                                        (3, 5, 8, 10, 13, 15, 18, 20, 23, 25)]


def test_unets_are_retied_only_from_the_base_they_name_and_with_the_filter_their_decoder_enhances(tmp_path):
    """retie_unets moves a filter and a decoder to base weights that reconstruct exactly as their
    source: the same parameters, value for value (not merely the same layers); U-Nets trained on
    another base's pixels, or a decoder trained on another filter's output, stay as they are."""
    import torch

    from diraccodec.codec.hyperprior import HyperpriorConfig, MultiRateHyperprior
    from diraccodec.diffusion.sampler import SamplerSettings
    from diraccodec.modelfiles import (
        DEFAULT_RESTORATION_WEIGHTS,
        export_base_weights,
        export_diffusion_weights,
        export_restoration_weights,
        load_diffusion_weights,
        load_restoration_weights,
        retie_unets,
    )
    from diraccodec.restoration.filter import RestorationFilter
    from tests.conftest import random_unet

    def base(name: str, seed: int, info: str) -> Path:
        torch.manual_seed(seed)
        export_base_weights(MultiRateHyperprior(HyperpriorConfig(8, 8)), tmp_path / name, {"purpose": info})
        return tmp_path / name

    source, same, other = base("source.safetensors", 0, "source"), base("same.safetensors", 0, "a copy"), base(
        "other.safetensors", 1, "other values")
    source_id, same_id = (load_base_weights(path).weights_id for path in (source, same))
    assert source_id != same_id
    restoration, diffusion = tmp_path / "restoration.safetensors", tmp_path / "diffusion.safetensors"
    export_restoration_weights(RestorationFilter(random_unet()), source_id, restoration, {"purpose": "test"})
    filter_id = load_restoration_weights(restoration).weights_id

    def decoder(enhances: bytes) -> Path:
        export_diffusion_weights(random_unet(), SamplerSettings(), source_id, diffusion, {"purpose": "test"}, enhances)
        load_diffusion_weights.cache_clear()
        return diffusion

    output = tmp_path / "retied"
    output.mkdir()
    with pytest.raises(DiracError, match=r"^other\.safetensors does not reconstruct as source\.safetensors"):
        retie_unets(source, other, restoration, decoder(filter_id), output)
    with pytest.raises(DiracError, match=f"^the restoration weights name base {load_base_weights().weights_id.hex()}"):
        retie_unets(source, same, DEFAULT_RESTORATION_WEIGHTS, decoder(filter_id), output)
    with pytest.raises(DiracError, match=r"^the diffusion decoder enhances another restoration filter$"):
        retie_unets(source, same, restoration, decoder(bytes(8)), output)
    assert not any(output.iterdir())
    new_filter, new_decoder = retie_unets(source, same, restoration, decoder(filter_id), output)
    assert load_restoration_weights(new_filter).base_weights_id == same_id
    retied = load_diffusion_weights(new_decoder)
    assert retied.base_weights_id == same_id
    assert retied.restoration_weights_id == load_restoration_weights(new_filter).weights_id
