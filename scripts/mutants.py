"""Faults the test suite must catch: each a one-line change to the package (a mutant) and the
tests that must then fail. A test that still passes with its fault in place checks less than
its name says.

    python scripts/mutants.py               # every mutant: killed, survived, stale or not run
    python scripts/mutants.py entropy api   # those in files whose path holds either word

Each mutant runs in a copy of the checkout made beside it (so that ../shared/data resolves as
in the checkout) and deleted after; the checkout itself is never changed. A mutant is killed
where its tests fail (pytest's status 1). The status is 1 where a mutant survives, else 3
where one is stale (its line is no longer in the code: the entry needs the line as it now
reads), else 4 where the tests of one could not run (pytest's status 2-5: a test renamed, an
import broken), else 0. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("diraccodec", "tests", "samples", "weights", "pyproject.toml")


class Mutant(NamedTuple):
    path: str  # under the repository root
    line: str  # text found exactly once in the file
    mutated: str  # what it becomes
    tests: tuple[str, ...]  # pytest node ids, at least one of which must fail


def mutant(path: str, line: str, mutated: str, *tests: str) -> Mutant:
    return Mutant(f"diraccodec/{path}", line, mutated, tests)


DEVICES_TEST = ("tests/test_robustness.py::"
                "test_devices_torch_knows_but_the_codec_does_not_run_on_are_refused_and_the_exact_mode_takes_plain_tensors")

MS_SSIM_TEST = "tests/test_metrics.py::test_ms_ssim_is_wang_s_definition"
FD_FEATURES_TEST = "tests/test_metrics.py::test_fd_features_are_alexnet_conv5_of_lpips_normalised_patches"
UNREADABLE_FOLDER_TEST = ("tests/test_batch.py::"
                          "test_a_folder_the_batch_cannot_read_fails_by_name_and_an_empty_name_is_no_folder")
RETIE_TEST = ("tests/test_level_tables.py::"
              "test_unets_are_retied_only_from_the_base_they_name_and_with_the_filter_their_decoder_enhances")
DRC_STREAM_TEST = ("tests/test_robustness.py::"
                   "test_a_drc_stream_without_an_end_is_read_no_further_than_a_file_of_its_size")
URI_FOLDER_TEST = ("tests/test_batch.py::"
                   "test_a_uri_folder_that_cannot_be_listed_fails_by_name_and_the_rest_is_converted")
CALLER_LINE_TEST = "tests/test_api.py::test_a_warning_is_a_dirac_warning_at_the_caller_s_line_however_deep_it_arises"
PACKED_SHARD_TEST = ("tests/test_training.py::"
                     "test_packed_shard_holds_training_photos_under_their_names_and_records_its_downscale")
ODD_NAMES_TEST = "tests/test_robustness.py::test_an_output_named_as_a_folder_and_odd_names_are_one_line"
STEPS_REFERENCE_TEST = ("tests/test_codec.py::"
                        "test_decodes_with_steps_stay_within_the_format_s_tolerance_of_the_reference_decoder")
CPU_PRECISION_TEST = ("tests/test_codec.py::"
                      "test_a_cpu_runs_the_networks_in_float32_whatever_precision_the_caller_allowed")
IMAGE_STREAM_TEST = ("tests/test_robustness.py::"
                     "test_an_image_stream_without_an_end_is_read_no_further_than_an_image_file_within_the_limit")
CLOSED_STDERR_TEST = ("tests/test_robustness.py::"
                      "test_a_standard_error_that_cannot_be_written_stops_no_work_and_keeps_the_status")
RESUME_NOTE_TEST = "tests/test_training.py::test_a_resumed_run_notes_only_the_options_that_differ_from_its_state"
BENCH_STAGES_TEST = ("tests/test_bench.py::"
                     "test_each_stage_is_the_fastest_of_its_repeats_per_megapixel_and_times_only_its_own_calls")
BENCH_SUMMARY_TEST = ("tests/test_bench.py::"
                      "test_the_summary_is_each_figures_median_and_range_in_stage_order_after_a_warm_up")

MUTANTS = (
    # the container
    mutant("container/drc.py", 'raise CorruptFileError("corrupt .drc file (checksum mismatch)")',
           'raise TruncatedFileError("truncated .drc file (checksum mismatch)")',
           "tests/test_container.py::test_malformed_files_are_refused",
           "tests/test_plugin.py::test_damaged_files_raise_the_typed_errors"),
    mutant("container/drc.py", "if TAG_LATENTS not in sections:", "if False:",
           "tests/test_container.py::test_a_file_without_latents_or_pixels_is_corrupt"),
    mutant("container/drc.py", "if width == 0 or height == 0:", "if width == 0:",
           "tests/test_container.py::test_a_file_without_latents_or_pixels_is_corrupt"),
    mutant("container/drc.py", "if tag in sections:", "if False:",
           "tests/test_container.py::test_a_repeated_section_is_corrupt_and_an_empty_last_one_is_read"),
    mutant("container/drc.py", "if length > len(body) - position:", "if length >= len(body) - position:",
           "tests/test_container.py::test_a_repeated_section_is_corrupt_and_an_empty_last_one_is_read"),
    mutant("container/drc.py", "if len(data) < _HEADER.size + _TRAILER.size:", "if len(data) < _HEADER.size:",
           "tests/test_container.py::test_a_header_with_no_room_for_its_checksum_is_truncated"),
    # entropy coding
    mutant("entropy/coder.py", "CHUNK_BITS = 16", "CHUNK_BITS = 15",
           "tests/test_entropy.py::test_the_bytes_of_escapes_are_pinned"),
    mutant("entropy/coder.py", "if np.any(distance >= 1 << MAX_ESCAPE_BITS):",
           "if np.any(distance > 1 << MAX_ESCAPE_BITS):",
           "tests/test_entropy.py::test_escape_beyond_the_code_range_is_refused"),
    mutant("entropy/tables.py", "if np.any(self.lengths < 2) or np.any(self.lengths > self.frequencies.shape[1]):",
           "if np.any(self.lengths < 2):",
           "tests/test_entropy.py::test_a_table_set_and_a_distribution_that_cannot_code_are_refused"),
    mutant("entropy/tables.py", "if excess != 0 or frequencies.sum() != TOTAL:", "if False:",
           "tests/test_entropy.py::test_a_table_set_and_a_distribution_that_cannot_code_are_refused"),
    mutant("entropy/latent_stream.py", "row_level = min(max(math.floor(level), 0), self.num_levels)",
           "row_level = min(max(math.floor(level), 0), self.num_levels - 1)",
           "tests/test_codec.py::test_files_of_the_current_format_versions_read_as_they_were_written"),
    mutant("entropy/latent_stream.py", "        if len(payload) % 4:\n", "        if False:\n",
           "tests/test_codec.py::test_a_latent_stream_of_part_of_a_word_is_corrupt"),
    mutant("entropy/map_coder.py", "return (int(values[row, column - 1]) + int(values[row - 1, column])) // 2",
           "return int(values[row, column - 1])",
           "tests/test_codec.py::test_files_of_the_current_format_versions_read_as_they_were_written"),
    mutant("entropy/map_coder.py", "if not low <= value <= high:", "if False:",
           "tests/test_detail_map.py::test_a_corrupt_map_payload_is_a_clear_error"),
    mutant("entropy/fixed_point.py", "if slope is None and index + 1 < len(modules):", "if False:",
           "tests/test_fixed_point.py::test_only_small_weights_and_leaky_relus_have_a_fixed_point_form"),
    mutant("entropy/fixed_point.py", "(EXACT_BELOW - 1 - float(bias.abs().max()))", "(EXACT_BELOW - 1)",
           "tests/test_fixed_point.py::test_each_layer_clamps_its_inputs_where_its_largest_sum_stays_below_2_to_the_53"),
    mutant("entropy/fixed_point.py", "if limit < SMALLEST_LIMIT * 2.0**input_bits:", "if limit < SMALLEST_LIMIT:",
           "tests/test_fixed_point.py::test_each_layer_clamps_its_inputs_where_its_largest_sum_stays_below_2_to_the_53"),
    mutant("entropy/fixed_point.py", "input_dims = (0, 2, 3) if", "input_dims = (1, 2, 3) if",
           "tests/test_fixed_point.py::test_each_layer_clamps_its_inputs_where_its_largest_sum_stays_below_2_to_the_53"),
    mutant("entropy/context.py",
           "return to_grid(values, ACTIVATION_BITS).clamp_(-self.limits[layer], self.limits[layer])",
           "return to_grid(values, ACTIVATION_BITS)",
           "tests/test_context.py::test_huge_anchors_from_a_corrupt_stream_are_clamped_and_stay_exact"),
    # the encoder's search and the codec's tiles
    mutant("transforms/search.py", "paying = (best_change < 0) & self.movable", "paying = best_change < 0",
           "tests/test_search.py::test_the_search_moves_only_the_symbols_it_may"),
    mutant("transforms/search.py", "start = min(max(core.start - MARGIN_LATENTS, 0), length - size)",
           "start = min(max(core.start, 0), length - size)",
           "tests/test_search.py::test_each_tile_measures_its_cells_errors_as_the_whole_image_does"),
    mutant("transforms/search.py", "(gradient * move + problem.energy * move * move)", "(gradient * move)",
           "tests/test_search.py::test_a_moves_predicted_change_is_its_first_and_second_order_error_and_its_bits"),
    # a synthesis of 8x8 flat blocks (about 20 dB where the codec gives 30-34): the PSNR floors and the stored
    # reference pixels must catch it
    mutant("codec/base_codec.py", "pixels = self.model.synthesis(self.compute.tensor(tile)).float()",
           "pixels = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(self.model.synthesis("
           "self.compute.tensor(tile)).float(), 8), scale_factor=8)",
           "tests/test_codec.py::test_round_trip_keeps_size_and_resembles_the_input",
           "tests/test_codec.py::test_files_of_the_current_format_versions_read_as_they_were_written",
           "tests/test_codec.py::test_greyscale_decodes_to_greyscale",
           "tests/test_codec.py::test_exif_orientation_is_applied_on_encode",
           "tests/test_robustness.py::test_every_pillow_mode_encodes_and_decodes",
           "tests/test_robustness.py::test_alpha_premultiplied_modes_decode_with_their_alpha_and_straight_colours"),
    mutant("codec/base_codec.py", "MARGIN_LATENTS = 4", "MARGIN_LATENTS = 0",
           "tests/test_codec.py::test_tiles_of_the_analysis_and_the_synthesis_give_what_one_pass_over_the_image_does"),
    mutant("codec/base_codec.py", "anchor_search, rest_search = _halves(search)",
           "rest_search, anchor_search = _halves(search)",
           "tests/test_context.py::test_context_streams_round_trip_exactly"),
    mutant("codec/base_codec.py", "distortion_weight=self._lambda(level) * 255**2 / 3,",
           "distortion_weight=self._lambda(level) * 255**2,",
           "tests/test_codec.py::test_the_search_weighs_squared_error_as_the_training_objective_does"),
    # image input and output
    mutant("image/planes.py", "if max(colour[:3]) > 255:", "if max(colour[:3]) >= 255:",
           "tests/test_robustness.py::test_white_marked_transparent_in_an_8_bit_rgb_image_is_the_white_that_goes"),
    mutant("image/planes.py", 'image = image.convert("RGBA" if image.has_transparency_data else "RGB")',
           'image = image.convert("RGB")',
           "tests/test_robustness.py::test_a_palette_with_an_alpha_per_entry_keeps_every_alpha"),
    mutant("image/planes.py", "peak > 255):", "peak >= 255):",
           "tests/test_robustness.py::test_32_bit_grey_samples_peaking_at_255_are_8_bit_values"),
    mutant("image/planes.py", "np.clip(np.round(rgb.astype(np.float32).mean(axis=2)), 0, 255)",
           "np.clip(rgb.astype(np.float32).mean(axis=2), 0, 255)",
           "tests/test_robustness.py::test_grey_decodes_round_the_mean_of_the_channels"),
    mutant("container/drc.py", "if longest is not None and len(data) > longest:", "if False:",
           DRC_STREAM_TEST),
    mutant("image/files.py", "    most = check_start(start)\n", "    most = check_start(start) and None\n",
           DRC_STREAM_TEST),
    mutant("container/drc.py", "        padded = 0\n", "        padded = min(width * height, max_pixels)\n",
           DRC_STREAM_TEST),
    mutant("container/drc.py", "padded = math.prod(coded_size(width, height))", "padded = width * height",
           DRC_STREAM_TEST),
    mutant("image/files.py", "start = _read_to_count(stream, start_bytes)", "start = stream.read(start_bytes)",
           DRC_STREAM_TEST),
    mutant("image/files.py", "        wanted -= _read_into(chunks, stream, min(wanted, size), 1 << 30)",
           "        wanted -= _read_into(chunks, stream, wanted, 1 << 30)",
           "tests/test_robustness.py::test_a_large_input_of_another_kind_is_refused_from_its_first_bytes"),
    mutant("plugin.py", "partial(drc.check_start, max_pixels=max_pixels),",
           "lambda start: drc.check_start(start) and None,",
           DRC_STREAM_TEST),
    mutant("image/planes.py", "if len(raw) != expected or inflater.unconsumed_tail:", "if len(raw) != expected:",
           "tests/test_robustness.py::test_an_alpha_plane_that_is_not_one_whole_stream_of_the_image_size_is_corrupt"),
    mutant("image/planes.py", "if not inflater.eof:  # all its bytes", "if False:  # all its bytes",
           "tests/test_robustness.py::test_an_alpha_plane_that_is_not_one_whole_stream_of_the_image_size_is_corrupt"),
    mutant("image/planes.py", "path.suffix.lower() in IMAGE_SUFFIXES and", "path.suffix in IMAGE_SUFFIXES and",
           "tests/test_robustness.py::test_suffixes_are_known_in_any_case"),
    mutant("image/files.py", "IMAGE_FORMATS[Path(path).suffix.lower()]", "IMAGE_FORMATS[Path(path).suffix]",
           "tests/test_robustness.py::test_suffixes_are_known_in_any_case"),
    mutant("image/files.py", 'image_format in ("JPEG", "BMP")', 'image_format in ("JPEG",)',
           "tests/test_robustness.py::test_alpha_and_sides_are_refused_where_the_format_cannot_hold_them"),
    mutant("image/planes.py", 'image.info["transparency"] = tuple(value >> 8 for value in image.info["transparency"])',
           'image.info["transparency"] = tuple(value for value in image.info["transparency"])',
           "tests/test_robustness.py::test_a_16_bit_rgb_pngs_transparent_colour_is_matched_in_its_high_bytes"),
    mutant("image/planes.py", "return stat.S_ISREG(status.st_mode) and status.st_size == 0",
           "return status.st_size == 0",
           "tests/test_robustness.py::test_a_device_or_a_pipe_is_not_called_empty_and_a_pipe_is_read_once"),
    mutant("console.py", "        except OSError:\n            return len(text)", "        except ValueError:\n"
           "            return len(text)",
           "tests/test_robustness.py::test_a_standard_error_that_cannot_be_written_stops_no_work_and_keeps_the_status"),
    mutant("cli/common.py", "    with contextlib.suppress(OSError):\n        click.echo(line, err=True)",
           "    with contextlib.suppress(ValueError):\n        click.echo(line, err=True)",
           "tests/test_robustness.py::test_a_standard_error_that_cannot_be_written_stops_no_work_and_keeps_the_status"),
    mutant("image/planes.py", 'image.convert("RGBA" if image.has_transparency_data else "RGB")',
           'image.convert("RGBA" if "transparency" in image.info else "RGB")',
           "tests/test_robustness.py::test_a_palette_image_whose_palette_holds_alpha_keeps_it"),
    mutant("image/planes.py", "            image = _detached(image)\n            opened.close()\n",
           "            pass\n",
           "tests/test_robustness.py::test_a_file_of_several_frames_is_closed_and_a_tiffs_exif_kept"),
    mutant("image/planes.py", '        image.info["exif"] = exif\n', "        pass\n",
           "tests/test_robustness.py::test_a_file_of_several_frames_is_closed_and_a_tiffs_exif_kept"),
    mutant("plugin.py", 'checked["max_pixels"] = as_checked.max_pixels',
           'checked["max_pixels"] = checked["max_pixels"]',
           "tests/test_plugin.py::test_image_open_bounds_the_header_by_the_decode_defaults_max_pixels"),
    mutant("plugin.py", "        _ = header.alpha_payload  #", "        pass  #",
           "tests/test_plugin.py::test_damaged_files_raise_the_typed_errors"),
    mutant("image/metadata.py", "    if not len(exif):\n", "    if not len(exif) or complaint:\n",
           "tests/test_metadata.py::test_exif_read_in_part_is_kept_with_a_warning"),
    mutant("image/metadata.py", "            PngImagePlugin.MAX_TEXT_CHUNK = previous", "            pass",
           "tests/test_metadata.py::test_pillows_png_text_limit_is_restored_after_a_read"),
    mutant("image/metadata.py", '"xmp": 65533 - 29}', '"xmp": 65533}',
           "tests/test_metadata.py::test_a_jpeg_output_keeps_xmp_that_exactly_fills_its_marker_and_leaves_out_one_byte_more"),
    mutant("image/metadata.py", "if len(value) <= JPEG_MARKER_ROOM[key]:", "if len(value) < JPEG_MARKER_ROOM[key]:",
           "tests/test_metadata.py::test_a_jpeg_output_keeps_exif_that_exactly_fills_its_marker"),
    mutant("image/metadata.py", "            if tag in tags:\n                kept[tag] = tags[tag]",
           "            if tag in tags and tag != 0x0110:\n                kept[tag] = tags[tag]",
           "tests/test_metadata.py::test_every_descriptive_tag_of_a_tiff_is_kept"),
    mutant("image/metadata.py", '    if complaint:\n        warn(f"EXIF carried in part',
           '    if False:\n        warn(f"EXIF carried in part',
           "tests/test_metadata.py::test_exif_read_in_part_is_kept_with_a_warning"),
    mutant("image/metadata.py", "if not c.filename or Path", "if Path",
           "tests/test_metadata.py::test_exif_that_pillow_raises_on_is_left_out_with_a_warning"),
    mutant("image/metadata.py", "return zlib.compress(part, 9)", "return zlib.compress(part, 6)",
           "tests/test_metadata.py::test_exif_xmp_and_a_profile_are_stored_at_zlibs_highest_compression"),
    mutant("image/profiles.py", "SRGB_TOLERANCE = 1 ", "SRGB_TOLERANCE = 100 ",
           "tests/test_profiles.py::test_adobe_rgb_and_a_gamma_22_display_profile_are_kept"),
    mutant("image/profiles.py", "return int(difference.max()) <= SRGB_TOLERANCE",
           "return int(difference.max()) < SRGB_TOLERANCE",
           "tests/test_profiles.py::test_an_srgb_profile_one_level_off_littlecms_s_counts_as_srgb"),
    mutant("image/profiles.py", 'profile[36:40] == b"acsp"', "True",
           "tests/test_profiles.py::test_bytes_without_an_icc_signature_have_no_colour_space"),
    mutant("image/profiles.py", "MAX_PROFILE_BYTES = 1 << 24", "MAX_PROFILE_BYTES = 1 << 25",
           "tests/test_profiles.py::test_a_stored_profile_inflates_to_16_mib_and_no_further"),
    # the API
    mutant("api/arguments.py", "if not 0 <= steps <= MAX_STEPS:", "if not 0 <= steps < MAX_STEPS:",
           "tests/test_api.py::test_a_file_may_recommend_up_to_100_steps_and_decode_then_runs_them"),
    mutant("api/arguments.py", "if not 0 <= steps <= MAX_STEPS:", "if not steps <= MAX_STEPS:",
           "tests/test_api.py::test_options_and_inputs_of_the_wrong_kind_are_refused_by_name"),
    mutant("api/__init__.py", "    if steps > MAX_STEPS:\n", "    if steps >= MAX_STEPS:\n",
           "tests/test_api.py::test_a_file_may_recommend_up_to_100_steps_and_decode_then_runs_them"),
    mutant("api/arguments.py", "max_pixels < 1:", "max_pixels < 0:",
           "tests/test_api.py::test_options_and_inputs_of_the_wrong_kind_are_refused_by_name"),
    mutant("api/encoding.py", "if self.options.recommended_steps is not None:", "if False:",
           "tests/test_api.py::test_a_file_may_recommend_up_to_100_steps_and_decode_then_runs_them"),
    mutant("api/encoding.py", "if size_at(first, searched=False)[0] > target and (not searches or "
           "size_at(first, searched=True)[0] > target):", "if size_at(first, searched=False)[0] > target:",
           "tests/test_api.py::test_a_size_target_that_only_the_searched_file_meets_is_met"),
    # diffusion
    mutant("diffusion/decoder.py", "if steps <= 0:", "if steps <= 1:",
           "tests/test_diffusion_decoder.py::test_same_seed_same_pixels_other_seed_other_pixels"),
    mutant("diffusion/noise.py", "for shift in (0, 32)]", "for shift in (0, 0)]",
           "tests/test_sampler.py::test_noise_is_standard_normal_and_a_function_of_position_seed_and_draw"),
    mutant("diffusion/noise.py", "((high + key) & _MASK)", "((high ^ key) & _MASK)",
           "tests/test_sampler.py::test_the_noise_is_the_generator_the_format_states"),
    mutant("diffusion/noise.py", ".to(torch.float32) + 0.5)", ".to(torch.float32) + 0.25)",
           "tests/test_sampler.py::test_the_noise_is_the_generator_the_format_states"),
    mutant("diffusion/noise.py", "_GOLDEN = 0x9E3779B9", "_GOLDEN = 0x9E3779B1",
           "tests/test_sampler.py::test_the_noise_is_the_generator_the_format_states"),
    mutant("diffusion/noise.py", "rows = torch.arange(top, min(top + rows_at_once, height)",
           "rows = torch.arange(0, min(rows_at_once, height - top)",
           "tests/test_sampler.py::test_noise_is_standard_normal_and_a_function_of_position_seed_and_draw"),
    mutant("diffusion/sampler.py", "seed, next(draws), device", "seed, 0, device",
           "tests/test_sampler.py::test_each_noise_field_a_sampling_draws_is_a_new_one"),
    mutant("diffusion/detail_map.py", "payload[0] < 8", "payload[0] < 1",
           "tests/test_detail_map.py::test_a_corrupt_map_payload_is_a_clear_error"),
    # evaluation
    mutant("evaluation/metrics.py", "MAX_PSNR = 100.0 ", 'MAX_PSNR = float("inf") ',
           "tests/test_metrics.py::test_psnr_of_an_exact_copy_is_100_db"),
    mutant("evaluation/metrics.py", "dim=0).mean())", "dim=0)[0, 0])",
           "tests/test_metrics.py::test_ms_ssim_sees_every_channel"),
    mutant("evaluation/metrics.py", "np.polyfit(quality_b, np.log(rate_b), 3)",
           "np.polyfit(quality_b, np.log(rate_b), 1)",
           "tests/test_metrics.py::test_bd_rate_is_bjontegaards_cubic_fit"),
    mutant("evaluation/metrics.py", "    stride = min(stride, size)", "    pass",
           "tests/test_metrics.py::test_the_patches_of_a_small_image_cover_it"),
    mutant("evaluation/metrics.py", "MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)",
           "MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.1333, 0.2363)", MS_SSIM_TEST),
    mutant("evaluation/metrics.py", "if min(x.shape[-2:]) // 2**i >= 11]", "if min(x.shape[-2:]) // 2**i > 11]",
           MS_SSIM_TEST),
    mutant("evaluation/metrics.py", "c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2",
           "c1, c2 = (0.01 * 255) ** 2, (0.02 * 255) ** 2", MS_SSIM_TEST),
    mutant("evaluation/metrics.py", "c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2",
           "c1, c2 = (0.02 * 255) ** 2, (0.03 * 255) ** 2", MS_SSIM_TEST),
    mutant("evaluation/metrics.py", "scaled = ((patches(image) * 2 - 1) - model.shift) / model.scale",
           "scaled = patches(image) * 2 - 1", FD_FEATURES_TEST),
    mutant("evaluation/metrics.py", "return model.stack(scaled)[-1].mean(dim=(2, 3))",
           "return model.stack(scaled)[-2].mean(dim=(2, 3))", FD_FEATURES_TEST),
    mutant("perceptual/lpips.py", ".pow(2)).mean(dim=(1, 2, 3))", ".pow(2)).mean()",
           "tests/test_metrics.py::test_lpips_gives_each_image_of_a_batch_its_own_distance"),
    mutant("evaluation/report.py", "bd_rate(*axis(grouped[name]), *axis(grouped[ours]))",
           "bd_rate(*axis(grouped[ours]), *axis(grouped[name]))",
           "tests/test_report.py::test_a_report_gives_the_bd_rate_of_ours_against_each_reference"),
    mutant("evaluation/report.py", "return [*names, base] if base != ours and base in grouped else names",
           "return names", "tests/test_report.py::test_an_encoder_effort_is_measured_against_the_default_effort_too"),
    mutant("evaluation/report.py", "complete=all(", "complete=any(",
           "tests/test_report.py::test_pooled_runs_are_complete_only_where_every_run_was"),
    mutant("evaluation/report.py",
           'data_id = saved[0].get("data_id") if all(report.get("data_id") for report in saved) else None',
           'data_id = saved[-1].get("data_id")',
           "tests/test_report.py::test_pooled_runs_keep_the_images_fingerprint_only_where_every_run_had_it"),
    mutant("evaluation/report.py", "    if isinstance(value, float) and value != value:\n        return None\n", "",
           "tests/test_report.py::test_a_figure_that_could_not_be_measured_is_null_in_the_json"),
    mutant("evaluation/report.py", "{_figure(p.get('encode_seconds_per_mp'), '.2f')} ",
           "{_figure(p['seconds_per_mp'], '.2f')} ",
           "tests/test_report.py::test_the_markdown_table_gives_the_encode_time_in_its_column"),
    mutant("evaluation/report.py", 'return float(f"{value:.7g}")', 'return float(f"{value:.6g}")',
           "tests/test_report.py::test_the_json_keeps_seven_significant_digits_of_each_figure"),
    mutant("evaluation/report.py", "p.steps and p.steps <= 20})", "p.steps and p.steps < 20})",
           "tests/test_report.py::test_the_plot_shows_our_curves_at_0_steps_and_at_the_most_steps_up_to_20"),
    mutant("evaluation/report.py", "{curve_name(OURS, steps[-1])}", "{curve_name(OURS, steps[0])}",
           "tests/test_report.py::test_the_plot_shows_our_curves_at_0_steps_and_at_the_most_steps_up_to_20"),
    mutant("evaluation/run.py", "bits += 8 * len(data)", "bits += len(data)",
           "tests/test_evaluation.py::test_evaluate_scores_file_sizes_means_over_every_image_and_per_step_times"),
    mutant("evaluation/run.py", "/ steps / megapixels", "/ megapixels",
           "tests/test_evaluation.py::test_evaluate_scores_file_sizes_means_over_every_image_and_per_step_times"),
    mutant("evaluation/run.py", "sum(column) / len(images) for column", "column[0] for column",
           "tests/test_evaluation.py::test_evaluate_scores_file_sizes_means_over_every_image_and_per_step_times"),
    mutant("evaluation/codecs.py", 'pillow_codec("JPEG", "JPEG", values, optimize=True)',
           'pillow_codec("JPEG", "JPEG", values)',
           "tests/test_evaluation.py::test_jpeg_reference_optimises_its_huffman_tables"),
    mutant("evaluation/codecs.py", "base_seconds, encode_seconds))", "encode_seconds, base_seconds))",
           "tests/test_evaluation.py::test_our_codec_times_the_encode_apart_from_the_shared_encode_and_synthesis"),
    mutant("cli/research_commands.py", '{format_percent(lpips_value)} (LPIPS)")', '{format_percent(value)} (LPIPS)")',
           "tests/test_evaluation.py::test_report_prints_each_bd_rate_under_its_own_metric"),
    mutant("cli/research_commands.py", "qualities != sorted(set(qualities))", "qualities != sorted(qualities)",
           "tests/test_evaluation.py::test_reference_settings_refuse_a_quality_given_twice"),
    mutant("cli/research_commands.py", "crop = ((image.width - size) // 2, (image.height - size) // 2, size)",
           "crop = (0, 0, size)", "tests/test_evaluation.py::test_compare_crops_a_centred_square_without_a_box"),
    mutant("evaluation/codecs.py", "        with api.model_calls():\n            return timed_round_trip(image, level)",
           "        return timed_round_trip(image, level)",
           "tests/test_evaluation.py::"
           "test_our_codec_scores_decodes_pixels_whatever_the_callers_autocast_or_default_dtype"),
    mutant("bench.py", "    with api.model_calls():\n        return _time_stages(path, options)",
           "    return _time_stages(path, options)",
           "tests/test_bench.py::test_bench_times_the_stages_as_the_api_runs_them_whatever_the_callers_default_dtype"),
    mutant("evaluation/report.py", "return subprocess.list2cmdline(words) if windows else shlex.join(words)",
           "return shlex.join(words)",
           "tests/test_report.py::test_a_recorded_command_reads_back_as_its_words_in_the_systems_shell"),
    mutant("batch/storage.py", "return self._walk_folders(folder, base, error)",
           'raise DiracError(f"cannot list {folder}: {error}") from None', URI_FOLDER_TEST),
    mutant("batch/storage.py", "unreadable[place[len(base) + 1:]] = one_line(str(refusal))",
           "pass", URI_FOLDER_TEST),
    mutant("diffusion/sampler.py", "implied = prediction * a_now**0.5", "implied = prediction * a_now**0.45",
           STEPS_REFERENCE_TEST),
    mutant("diffusion/sampler.py", "x = torch.mul(prediction, a_after**0.5, out=x).add_(predicted_noise",
           "x = torch.mul(prediction, a_after**0.45, out=x).add_(predicted_noise", STEPS_REFERENCE_TEST),
    mutant("diffusion/finishing.py", "residual = filtered + finishing.kept_noise * noise_left[..., top:bottom, :]",
           "residual = filtered + 0.5 * finishing.kept_noise * noise_left[..., top:bottom, :]", STEPS_REFERENCE_TEST),
    mutant("compute.py", "return full_float32(self.device.type)", "return contextlib.nullcontext()",
           CPU_PRECISION_TEST),
    mutant("compute.py", '    operation.fp32_precision = "none"\n    if operation.fp32_precision != value:\n',
           "    if True:\n", CPU_PRECISION_TEST),
    mutant("api/models.py", "without_callers_autocast(), torch.inference_mode(False):", "without_callers_autocast():",
           "tests/test_api.py::test_a_callers_inference_mode_changes_neither_files_nor_pixels"),
    mutant("image/files.py", "    if len(data) > most:\n", "    if False:\n", IMAGE_STREAM_TEST),
    mutant("errors.py", "        if sys.stderr is None:  # closed", "        if False:  # closed", CLOSED_STDERR_TEST),
    mutant("console.py", "return sys.stderr if sys.stderr is not None else _discarded()", "return sys.stderr",
           CLOSED_STDERR_TEST),
    mutant("cli/common.py", "        if not math.isfinite(number):\n", "        if False:\n",
           "tests/test_cli.py::test_batch_with_a_level_out_of_range_fails_once_before_any_file"),
    mutant("errors.py", 'return label if label.startswith("the image ") else f"image {label}"',
           'return f"image {label}"',
           "tests/test_plugin.py::test_bad_options_raise_invalid_option_error"),
    mutant("api/__init__.py", "image = open_image(image, max_pixels)  # a .drc file",
           "image = open_image(image, max_pixels, label)  # a .drc file",
           "tests/test_api.py::test_a_path_is_named_by_itself_in_errors_and_an_empty_one_is_refused"),
    mutant("cli/codec_commands.py", "        check_weights_there(diffusion_weights)\n", "        pass\n",
           "tests/test_cli.py::test_decode_and_batch_take_the_restoration_switch_and_diffusion_weights"),
    mutant("api/encoding.py", "progress(earlier + done, earlier + total)", "progress(done, total)",
           "tests/test_api.py::test_a_size_target_reports_the_search_of_every_trial_as_one_count"),
    # training states
    mutant("training/checkpoint.py", "round(state.seconds / 3600, 3)", "round(state.seconds / 60, 3)",
           "tests/test_training.py::test_exported_weights_record_the_hours_the_state_trained"),
    mutant("training/checkpoint.py", "AVERAGE_PREFIX)) and tensor.is_floating_point():", "AVERAGE_PREFIX)):",
           "tests/test_training.py::test_a_travel_copy_keeps_integer_tensors_as_they_are"),
    mutant("training/checkpoint.py", "if moments_step != state.step:", "if False:",
           "tests/test_training.py::test_an_older_checkpoint_refuses_adam_moments_from_another_step"),
    mutant("training/checkpoint.py",
           "            if len(head) < length:  # a header longer than a part: read the whole stream\n"
           "                return read_state(path)[0]\n", "",
           "tests/test_training.py::test_a_state_whose_header_outgrows_its_first_part_still_reads_its_metadata"),
    mutant("training/base.py", "(options.freeze_hyperprior and not frozen)", "(options.freeze_hyperprior != frozen)",
           RESUME_NOTE_TEST),
    mutant("training/base.py", "options.context not in (None, model.config.context)",
           "options.context != model.config.context", RESUME_NOTE_TEST),
    # restoration, finishing and the time grid
    mutant("restoration/filter.py", "(0, -width % self.size_multiple, 0, -height % self.size_multiple)",
           "(0, -height % self.size_multiple, 0, -width % self.size_multiple)",
           "tests/test_restoration.py::test_a_base_of_any_size_is_restored_as_if_its_edges_ran_on_to_the_size_multiple"),
    mutant("restoration/filter.py", 'mode="replicate")', 'mode="constant")',
           "tests/test_restoration.py::test_a_base_of_any_size_is_restored_as_if_its_edges_ran_on_to_the_size_multiple"),
    mutant("restoration/filter.py", ".mul_(255).round_()", ".mul_(255)",
           "tests/test_restoration.py::test_the_restored_8_bit_pixels_are_rounded_to_the_nearest_level_not_truncated"),
    mutant("restoration/filter.py", "FIXED_TIME = 0.1", "FIXED_TIME = 0.4",
           "tests/test_restoration.py::test_the_shipped_filter_runs_its_unet_at_the_time_it_was_trained_at"),
    mutant("diffusion/schedule.py", "COSINE_OFFSET = 0.008", "COSINE_OFFSET = 0.02",
           "tests/test_sampler.py::test_the_signal_level_is_the_cosine_schedule_of_nichol_and_dhariwal"),
    mutant("diffusion/finishing.py", "self.lattice_period >= 0 and self.lattice_cells > 0",
           "self.lattice_period >= 0",
           "tests/test_finishing.py::test_settings_measuring_the_lattice_over_no_cells_are_refused"),
    mutant("diffusion/finishing.py",
           "positions = [min(max(ladder_position(chosen_for, value), 1.0), float(top)) for value in ladder]",
           "positions = [max(ladder_position(chosen_for, value), 1.0) for value in ladder]",
           "tests/test_finishing.py::test_levels_above_the_old_ladder_take_its_top_level_s_settings"),
    mutant("diffusion/schedule.py", "if power == 1.0:", "if False:",
           "tests/test_sampler.py::test_the_even_grid_is_bit_for_bit_the_float64_linspace_of_earlier_files"),
    mutant("diffusion/schedule.py", "steps + 1, dtype=torch.float64)\n    progress",
           "steps + 1, dtype=torch.float32).double()\n    progress",
           "tests/test_sampler.py::test_the_even_grid_is_bit_for_bit_the_float64_linspace_of_earlier_files"),
    mutant("errors.py", "if isinstance(error, KeyError) and error.args:", "if False:",
           "tests/test_training.py::test_train_and_export_commands"),
    mutant("modelfiles.py", "    if not _is_safetensors(data):", "    if False:",
           "tests/test_cli.py::test_decode_and_batch_take_the_restoration_switch_and_diffusion_weights"),
    mutant("training/data.py", "        shutil.rmtree(packing, ignore_errors=True)\n", "", PACKED_SHARD_TEST),
    mutant("training/data.py", "    if not packed:\n", "    if False:\n", PACKED_SHARD_TEST),
    mutant("training/data.py", "if any(Path(folder).resolve().is_relative_to(output) for folder in folders):",
           "if False:", PACKED_SHARD_TEST),
    mutant("training/data.py", "            (replaced / name).rename(output / name)\n", "            pass\n",
           PACKED_SHARD_TEST),
    mutant("training/data.py", "    output = Path(output).resolve()\n", "    output = Path(output)\n",
           PACKED_SHARD_TEST),
    mutant("training/entropy.py", "    check_resumed_base(options.checkpoint, weights)\n", "",
           "tests/test_training.py::test_entropy_finetune_lowers_the_rate_and_leaves_the_transforms_alone"),
    mutant("training/checkpoint.py", "if not name.startswith(\".\")]:", "]:",
           "tests/test_training.py::test_a_state_never_replaces_what_is_not_a_state"),
    mutant("training/loop.py", "if now - last_save > options.checkpoint_minutes * 60:", "if False:",
           "tests/test_training.py::test_a_long_run_saves_its_state_every_checkpoint_minutes_before_it_ends"),
    mutant("training/loop.py", "if run.state.step != saved_step or not state_parts(options.checkpoint):",
           "if run.state.step != saved_step:",
           "tests/test_training.py::test_a_run_that_takes_no_step_still_leaves_a_state"),
    mutant("training/loop.py", "self.end = until if self.end is None else min(self.end, until)", "self.end = until",
           "tests/test_training.py::test_minutes_that_end_before_a_later_deadline_still_end_the_run"),
    mutant("training/loop.py", "if options.minutes is None or done == 0 or", "if done == 0 or",
           "tests/test_training.py::test_a_deadline_ends_a_run_to_a_step_count_early_without_changing_the_count"),
    mutant("training/loop.py", "self.next_step_seconds = 0.0 if first else seconds", "self.next_step_seconds = seconds",
           "tests/test_training.py::test_a_slow_first_step_does_not_end_a_budgeted_run_early"),
    mutant("training/loop.py", "    options = replace(options)\n", "    pass\n",
           "tests/test_training.py::test_a_time_budget_sets_the_step_count_and_a_run_without_moments_warms_up"),
    mutant("training/loop.py", "                signal.signal(number, handler)", "                pass",
           "tests/test_training.py::test_training_gives_the_callers_signal_handlers_back"),
    mutant("training/loop.py", "        _count_compilations_anew()\n", "        pass\n",
           "tests/test_training.py::test_a_compiled_run_says_what_the_compiler_made_of_its_steps"),
    mutant("training/loop.py", "if run.state.step == first_step and run.step_model is not run.model:", "if False:",
           "tests/test_training.py::test_a_compiled_step_that_fails_as_it_runs_is_taken_again_uncompiled"),
    mutant("training/loop.py", "    run.generator.set_state(drawn_from)\n", "    pass\n",
           "tests/test_training.py::test_a_compiled_step_that_fails_as_it_runs_is_taken_again_uncompiled"),
    mutant("training/loop.py", "if is_out_of_memory(error):  # the uncompiled step needs more", "if False:",
           "tests/test_training.py::test_a_compiled_step_that_fails_as_it_runs_is_taken_again_uncompiled"),
    mutant("training/reconstructions.py", "torch.autocast(self.run.device.type, enabled=False), full_float32():",
           "torch.autocast(self.run.device.type, enabled=False):",
           "tests/test_diffusion_training.py::test_the_frozen_stages_reconstruct_in_full_float32_beside_tf32_steps"),
    mutant("training/crops.py", "self._below(self.heights[chosen] - patch + 1), self._below(width - patch + 1)",
           "self._below(self.heights[chosen] - patch), self._below(width - patch)",
           "tests/test_training.py::test_crops_reach_the_last_row_and_column_of_a_photo"),
    mutant("training/crops.py", "torch.minimum((fraction * bound).long(), bound - 1)", "(fraction * bound).long()",
           "tests/test_training.py::test_a_draw_of_one_still_crops_inside_the_photo"),
    mutant("training/crops.py", "if largest < 1:", "if largest <= 1:",
           "tests/test_training.py::test_a_photo_exactly_the_patch_size_is_trained_on"),
    mutant("training/crops.py", "        scale = min(scale, largest)", "        pass",
           "tests/test_training.py::test_a_small_photos_downscales_stop_where_it_would_lose_its_shape"),
    mutant("training/crops.py", "if shape not in sizes:", "if True:",
           "tests/test_training.py::test_a_photo_too_small_for_several_downscales_is_kept_once"),
    # weights files
    mutant("modelfiles.py", "ids[name] = listed_id(path.resolve().parent / path.name) if path.exists() else None",
           "ids[name] = listed_id(path.resolve().parent / path.name)",
           "tests/test_restoration.py::test_base_weights_that_are_not_there_are_named_by_no_id"),
    mutant("modelfiles.py", "shared = weights.weights_id if weights.hyper_level_tables is None else "
           "weights.shared_tables_id", "shared = weights.weights_id",
           "tests/test_level_tables.py::test_tables_fitted_again_keep_naming_the_weights_without_them"),
    mutant("modelfiles.py", " or not all(torch.equal(old_state[k], new_state[k]) for k in old_state):", ":",
           RETIE_TEST),
    mutant("modelfiles.py", "        if tied_to != old.weights_id:", "        if False:", RETIE_TEST),
    mutant("modelfiles.py", "    if decoder.restoration_weights_id not in (None, filter_weights.weights_id):",
           "    if False:", RETIE_TEST),
    # the Pillow plugin
    mutant("plugin.py", "from diraccodec.container import MAGIC", "from diraccodec.container import MAGIC, drc",
           "tests/test_package.py::test_the_package_and_the_command_s_entry_import_nothing_heavy"),
    mutant("plugin.py", "            self._data = None  # kept until now", "            pass  # kept until now",
           "tests/test_plugin.py::test_an_opened_image_is_decoded_once_however_often_its_pixels_are_read"),
    mutant("plugin.py", 'options["quality"] = image.encoderinfo.get("level", DEFAULT_QUALITY)',
           'options["quality"] = DEFAULT_QUALITY',
           "tests/test_plugin.py::test_save_with_an_opened_images_info_keeps_its_own_level"),
    mutant("plugin.py", 'max_pixels = _decode_defaults.get("max_pixels", drc.DEFAULT_MAX_PIXELS)',
           "max_pixels = drc.DEFAULT_MAX_PIXELS",
           "tests/test_plugin.py::test_image_open_bounds_the_header_by_the_decode_defaults_max_pixels"),
    mutant("plugin.py", "            if self.fp and self._exclusive_fp:\n                self.fp.close()\n", "",
           "tests/test_plugin.py::test_a_file_opened_by_path_is_closed_once_loaded"),
    mutant("plugin.py", "if not any(options.get(name) is not None for name in _RATE_OPTIONS):",
           "if not any(name in options for name in _RATE_OPTIONS):",
           "tests/test_plugin.py::test_save_with_quality_none_uses_the_default_level"),
    mutant("plugin.py", "        self._data = None  # a load after close", "        pass  # a load after close",
           "tests/test_plugin.py::test_load_after_close_without_an_earlier_load_fails_without_decoding"),
    # batches
    mutant("batch/storage.py", "return Path(url2pathname(urlsplit(str(location)).path))",
           "return Path(unquote(urlsplit(str(location)).path))",
           "tests/test_batch_ray.py::test_a_file_uri_with_a_drive_is_that_drive_s_path_on_windows"),
    mutant("batch/jobs.py", "suffix = path.suffix.lower()", "suffix = path.suffix",
           "tests/test_robustness.py::test_suffixes_are_known_in_any_case"),
    mutant("batch/jobs.py", 'if lower.startswith(upper + "/")', "if lower.startswith(upper)",
           "tests/test_robustness.py::test_a_store_folder_is_inside_another_only_below_its_path"),
    mutant("batch/local.py", "while queue and len(running) < workers and not broken:",
           "while queue and len(running) <= workers and not broken:",
           "tests/test_batch.py::test_a_pool_holds_one_file_per_worker_at_most"),
    mutant("batch/local.py",
           "remove_left_by(worker_ids, [path for job in running.values() if (path := local_path(job.target))])",
           "pass",
           "tests/test_batch.py::test_a_worker_killed_mid_write_leaves_no_temporary_file",
           "tests/test_batch.py::test_a_batch_stopped_as_on_windows_leaves_no_temporary_file"),
    mutant("image/files.py", 'return f".{shown}.{writer}-"', 'return f".{shown}.{writer}"',
           "tests/test_batch.py::test_only_the_ended_workers_temporary_files_are_removed"),
    mutant("batch/local.py", "return max(1, min(4, (os.cpu_count() or 1)))",
           "return max(1, min(5, (os.cpu_count() or 1)))",
           "tests/test_batch.py::test_default_workers_is_one_per_core_up_to_four"),
    mutant("batch/storage.py", "                with contextlib.suppress(OSError):\n"
           "                    self.filesystem.delete_file(temporary)\n", "",
           "tests/test_batch.py::test_a_failed_write_to_a_file_uri_leaves_no_output_and_no_temporary"),
    mutant("batch/storage.py", "key = (parts.scheme, parts.netloc, parts.query)",
           "key = (parts.scheme, parts.netloc, '')",
           "tests/test_batch.py::test_uris_that_differ_in_their_query_get_filesystems_of_their_own"),
    # messages, progress and devices
    mutant("errors.py", '{"Cc", "Zl", "Zp"}', '{"Cc", "Zl"}',
           "tests/test_robustness.py::test_messages_escape_every_line_and_paragraph_separator"),
    mutant("errors.py", "{'' if number == 1 else 's'}", "{'' if number <= 1 else 's'}",
           "tests/test_robustness.py::test_counts_in_messages_take_the_plural_but_for_one"),
    mutant("errors.py", 'print(one_line(f"dirac: warning: {message}"), file=sys.stderr)',
           'print(f"dirac: warning: {message}", file=sys.stderr)',
           "tests/test_robustness.py::test_a_warning_naming_a_file_with_a_line_break_is_one_line"),
    mutant("errors.py", 'type(error).__name__ == "OutOfMemoryError"', "False",
           "tests/test_robustness.py::test_cuda_running_out_of_memory_is_named_so_not_a_corrupt_file"),
    mutant("console.py", "return console.is_terminal and not console.is_dumb_terminal", "return console.is_terminal",
           "tests/test_robustness.py::test_a_dumb_terminal_gets_lines_and_a_terminal_each_item_once"),
    mutant("console.py", "console=console)\n        return\n", "console=console)\n",
           "tests/test_robustness.py::test_a_dumb_terminal_gets_lines_and_a_terminal_each_item_once"),
    mutant("compute.py", 'if resolved.type not in ("cpu", "cuda"):', "if False:",
           DEVICES_TEST),
    mutant("compute.py", "return torch.contiguous_format if self.exact else torch.channels_last",
           "return torch.channels_last",
           DEVICES_TEST),
    mutant("image/files.py", "    if flags & os.O_ACCMODE == os.O_RDONLY:\n", "    if False:\n",
           "tests/test_robustness.py::test_a_descriptor_open_for_reading_or_of_another_process_is_not_written_into"),
    mutant("image/files.py", 'ours = named is not None and named["process"] in (None, "self", str(os.getpid()))',
           "ours = named is not None",
           "tests/test_robustness.py::test_a_descriptor_open_for_reading_or_of_another_process_is_not_written_into"),
    mutant("image/files.py", "    if number == 1 and sys.stdout is not None:\n", "    if False:\n",
           "tests/test_robustness.py::test_text_printed_before_an_image_on_standard_output_comes_first"),
    # bench
    mutant("bench.py", "unique.setdefault(os.path.realpath(path), path)", "unique.setdefault(str(len(unique)), path)",
           "tests/test_bench.py::test_an_image_named_twice_is_timed_once"),
    mutant("bench.py", "        decode_with_pillow(encode_with_pillow(warm, image_format, **settings))", "        pass",
           "tests/test_bench.py::test_the_summary_is_each_figures_median_and_range_in_stage_order_after_a_warm_up"),
    mutant("bench.py", "best = min(best, synchronized_clock() - started)", "best = synchronized_clock() - started",
           BENCH_STAGES_TEST),
    mutant("bench.py", 'if device is not None and device.type == "cuda":', "if False:",
           "tests/test_bench.py::test_a_stage_on_a_gpu_is_timed_until_its_work_is_done"),
    mutant("bench.py", "    for _ in range(repeat):", "    for _ in range(1):", BENCH_STAGES_TEST),
    mutant("bench.py", "megapixels = width * height / 1e6", "megapixels = width * width / 1e6", BENCH_STAGES_TEST),
    mutant("bench.py", 'figures["bpp"] = 8 * len(encoded) / (width * height)',
           'figures["bpp"] = len(encoded) / (width * height)', BENCH_STAGES_TEST),
    mutant("bench.py", 'figures[f"{key} encode"] = encode_seconds / megapixels',
           'figures[f"{key} encode"] = decode_seconds / megapixels', BENCH_STAGES_TEST),
    mutant("bench.py", 'figures[f"{key} bpp"] = 8 * len(reference) / (width * height)',
           'figures[f"{key} bpp"] = 8 * len(encoded) / (width * height)', BENCH_STAGES_TEST),
    mutant("bench.py", 'seconds["diffusion step"] = max(five - one, 0.0) / EXTRA_STEPS',
           'seconds["diffusion step"] = max(five - one, 0.0)', BENCH_STAGES_TEST),
    mutant("bench.py", "diffusion.sample(base, level, 1 + EXTRA_STEPS))", "diffusion.sample(base, level, EXTRA_STEPS))",
           BENCH_STAGES_TEST),
    mutant("bench.py", "lambda: codec.write_stream(codec.quantize(latents, level, rgb), level))",
           "lambda: codec.quantize(latents, level, rgb))", BENCH_STAGES_TEST),
    mutant("bench.py", "lambda: api.decode(\n        encoded, 0,", "lambda: api.decode(\n        encoded, 2,",
           BENCH_STAGES_TEST),
    mutant("bench.py", "lambda: codec.synthesize(decoded, width, height, level))",
           "lambda: codec.synthesize(codec.read_stream(payload, width, height, level), width, height, level))",
           BENCH_STAGES_TEST),
    mutant("bench.py", "    for steps in (0, 2):", "    for steps in ():", BENCH_SUMMARY_TEST),
    mutant("bench.py", '"median": statistics.median(values)', '"median": statistics.mean(values)', BENCH_SUMMARY_TEST),
    mutant("bench.py", "key=lambda name: list(per_image[names[0]]).index(name))", "key=str)", BENCH_SUMMARY_TEST),
    mutant("bench.py", "return image.width * image.height", "return image.width ** 2", BENCH_SUMMARY_TEST),
    mutant("bench.py", 'for k in ("median", "min", "max")) + " |")', 'for k in ("min", "median", "max")) + " |")',
           "tests/test_bench.py::test_the_markdown_gives_median_min_and_max_in_the_columns_it_names"),
    # the command line
    mutant("cli/entry.py", "    if isinstance(error, RuntimeError) and isinstance(error.__cause__, KeyboardInterrupt):",
           "    if False:", "tests/test_robustness.py::test_ctrl_c_while_the_command_loads_is_one_line"),
    mutant("cli/entry.py", "import signal\n", "import signal\nimport click\n",
           "tests/test_robustness.py::test_ctrl_c_while_the_command_loads_is_one_line"),
    mutant("cli/group.py", "            if (interruption := interruption_in(error)) is None:",
           "            if not isinstance(error, KeyboardInterrupt):",
           "tests/test_robustness.py::test_ctrl_c_wrapped_outside_a_command_is_one_line"),
    mutant("cli/group.py", "str(error))\n            sys.exit(EXIT_USER_ERROR)", "str(error))\n            sys.exit(0)",
           "tests/test_cli.py::test_dirac_alone_shows_its_commands_with_the_status_of_a_usage_error"),
    mutant("cli/group.py",
           'say(one_line(f"dirac: error: {error.format_message()} (see: {path} --help)"))',
           'say(f"dirac: error: {error.format_message()} (see: {path} --help)")',
           "tests/test_cli.py::test_a_usage_error_quoting_a_line_break_stays_one_line"),
    mutant("cli/group.py", 'say(one_line(f"dirac: error: {error.format_message()}"))',
           'say(f"dirac: error: {error.format_message()}")',
           "tests/test_cli.py::test_a_click_error_outside_usage_is_one_line_with_its_status"),
    mutant("cli/group.py", "sys.exit(error.exit_code)", "sys.exit(1)",
           "tests/test_cli.py::test_a_click_error_outside_usage_is_one_line_with_its_status"),
    mutant("cli/group.py", "keep_status=ending.code not in (0, None))", "keep_status=False)",
           "tests/test_cli.py::test_a_command_s_own_failure_keeps_its_status_where_its_text_cannot_be_written_either"),
    mutant("errors.py", "warnings.warn(message, category, stacklevel=level)",
           "warnings.warn(message, category, stacklevel=2)", CALLER_LINE_TEST),
    mutant("errors.py", '_CALLING_PACKAGES = ("PIL", "torch")', '_CALLING_PACKAGES = ("torch",)', CALLER_LINE_TEST),
    mutant("errors.py", "(frame.f_code.co_filename == contextlib.__file__ or", "(False or", CALLER_LINE_TEST),
    mutant("cli/common.py", '            self.fail("it is empty: name a file", param, ctx)', "            pass",
           ODD_NAMES_TEST),
    mutant("cli/common.py", "if len(given) != 1:", "if len(given) > 1:",
           "tests/test_cli.py::test_encode_without_a_rate_is_a_one_line_usage_error"),
    mutant("cli/common.py", 'path.suffix.lower() != ".png"', 'path.suffix != ".png"',
           "tests/test_cli.py::test_plot_takes_a_png_suffix_in_any_case"),
    mutant("cli/common.py", '[key.strip().lower() for key in text.split(",") if key.strip()]',
           '[key.strip() for key in text.split(",") if key.strip()]',
           "tests/test_cli.py::test_references_are_read_in_any_case"),
    mutant("cli/codec_commands.py", 'value = value.lower() if value.startswith(".") else',
           'value = value if value.startswith(".") else',
           "tests/test_cli.py::test_format_takes_a_dotted_suffix_in_upper_case"),
    mutant("cli/codec_commands.py", "image = api.decode(data, steps, seed, weights=weights,",
           "image = api.decode(data, steps, None, weights=weights,",
           "tests/test_cli.py::test_decode_follows_the_seed_it_is_given"),
    mutant("cli/codec_commands.py", "effort=effort, steps=recommended_steps, detail_map=detail_map,",
           "effort=effort, steps=None, detail_map=detail_map,",
           "tests/test_cli.py::test_encode_stores_the_recommended_steps_it_is_given"),
    mutant("cli/codec_commands.py",
           "    check_image_fits(image_format, header.width, header.height, header.colour_mode.has_alpha)", "    pass",
           "tests/test_cli.py::test_decoding_alpha_to_jpeg_fails_before_the_decode"),
    mutant("batch/jobs.py",
           "check_image_fits(image_format, header.width, header.height, header.colour_mode.has_alpha)  #", "pass  #",
           "tests/test_cli.py::test_an_image_wider_than_webp_holds_fails_before_the_decode"),
    mutant("image/files.py", "if most is not None and max(width, height) > most:",
           "if most is not None and width > most:",
           "tests/test_robustness.py::test_alpha_and_sides_are_refused_where_the_format_cannot_hold_them"),
    mutant("image/metadata.py", "if part is not None and len(part) > limit:", "if False:",
           "tests/test_metadata.py::test_a_part_longer_than_a_decoder_inflates_is_left_out_with_a_warning"),
    mutant("cli/codec_commands.py", "    info = api.inspect(data, max_pixels)  # before the write",
           "    write_output(output, data)  # before the write",
           "tests/test_cli.py::test_an_encoded_file_that_does_not_read_back_is_never_written"),
    mutant("batch/jobs.py", "        api.check_quality(settings.quality, codec.num_levels)\n", "        pass\n",
           "tests/test_cli.py::test_batch_with_a_level_out_of_range_fails_once_before_any_file"),
    mutant("batch/jobs.py", "if may_take_steps and any(job.decodes for job in jobs):", "if False:",
           "tests/test_batch.py::test_diffusion_weights_are_checked_only_where_a_decode_may_run_steps"),
    mutant("batch/jobs.py", "may_take_steps = settings.steps or (", "may_take_steps = bool(settings.steps) and (",
           "tests/test_batch.py::test_diffusion_weights_are_checked_only_where_a_decode_may_run_steps"),
    mutant("batch/jobs.py", "settings.steps is None and settings.diffusion_weights is not None)",
           "settings.steps is None and False)",
           "tests/test_batch.py::test_diffusion_weights_are_checked_only_where_a_decode_may_run_steps"),
    mutant("cli/codec_commands.py", "encoded = [r for r in chosen if r.job.encodes and r.pixels]",
           "encoded = [r for r in chosen if r.pixels]",
           "tests/test_cli.py::test_batch_summary_bpp_counts_the_encoded_files_alone"),
    mutant("batch/jobs.py", "if job.unreadable is not None:", "if False:", UNREADABLE_FOLDER_TEST),
    mutant("batch/jobs.py", "(nested == path or nested in path.parents)", "(nested in path.parents)",
           UNREADABLE_FOLDER_TEST),
    mutant("batch/storage.py", "if Path(place) == folder:", "if False:", UNREADABLE_FOLDER_TEST),
    mutant("cli/codec_commands.py", "also = f\" and {counted(folders, 'unreadable folder')}\" if folders else \"\"",
           "also = \"\"", UNREADABLE_FOLDER_TEST),
    mutant("cli/codec_commands.py", "chosen = [r for r in files if r.status == status]",
           "chosen = [r for r in results if r.status == status]", UNREADABLE_FOLDER_TEST),
    mutant("batch/storage.py", "                folders.clear()\n", "                pass\n", UNREADABLE_FOLDER_TEST),
    mutant("batch/storage.py", " and getattr(error, \"winerror\", None) not in _NO_TARGET_WINERRORS:", ":",
           "tests/test_batch.py::test_a_name_that_cannot_be_looked_at_fails_alone_and_windows_invalid_names_are_no_files"),
    mutant("batch/storage.py", "if failures and len(failures) == len(names):", "if failures:",
           "tests/test_batch.py::test_a_name_that_cannot_be_looked_at_fails_alone_and_windows_invalid_names_are_no_files"),
)


def copy_checkout(folder: Path) -> None:
    """What the tests read of the checkout (the package, the tests, the sample and the weights), into `folder`."""
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, folder / name)


def outcome(fault: Mutant, copy: Path) -> str:
    """'killed', 'survived', 'stale' or 'error', for one mutant applied to the copy and taken
    back after. Only failing tests kill: pytest's other statuses (collection, usage, no test
    run) say nothing of the fault."""
    file = copy / fault.path
    text = file.read_text()
    if text.count(fault.line) != 1:
        return "stale"
    file.write_text(text.replace(fault.line, fault.mutated))
    # the copy's code, and pytest's options as given here alone (PYTEST_ADDOPTS could deselect a test)
    environment = {**{name: value for name, value in os.environ.items() if name != "PYTEST_ADDOPTS"},
                   "PYTHONPATH": str(copy)}
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *fault.tests],
                              cwd=copy, env=environment, capture_output=True, text=True)
    finally:
        file.write_text(text)
    return {0: "survived", 1: "killed"}.get(done.returncode, "error")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="*", help="only the mutants in files whose path holds one of these")
    words = parser.parse_args().words
    chosen = [fault for fault in MUTANTS if not words or any(word in fault.path for word in words)]
    if not chosen:
        parser.error(f"no mutant in a file whose path holds {' or '.join(words)}")
    copy = Path(tempfile.mkdtemp(prefix=".mutants-", dir=ROOT.parent))
    try:
        copy_checkout(copy)
        started, outcomes = time.perf_counter(), []
        for number, fault in enumerate(chosen, 1):
            outcomes.append(outcome(fault, copy))
            print(f"[{number}/{len(chosen)}] {outcomes[-1]:8} {fault.path}: {fault.line.strip()[:60]!r}", flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    counts = {kind: outcomes.count(kind) for kind in ("killed", "survived", "stale", "error")}
    print(f"{counts['killed']} killed, {counts['survived']} survived, {counts['stale']} stale, {counts['error']} "
          f"could not run, of {len(chosen)} in {time.perf_counter() - started:.0f} s")
    return 1 if counts["survived"] else 3 if counts["stale"] else 4 if counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
