"""The base codec: RGB pixels to a range-coded latent stream and back.

Determinism is designed in, because the decoder must rebuild the encoder's tables bit for
bit. The only float computation that selects tables is the hyper-synthesis (hyper-latents
to the mean and scale of each latent) and the gains; both run in float64 on the CPU in one
thread, from integer inputs, so the same file yields the same tables with any thread
count, in any process, and whichever device runs the big transforms.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import constriction
import numpy as np
import torch

from diraccodec.codec.hyperprior import MultiRateHyperprior
from diraccodec.compute import single_thread, thread_invariant
from diraccodec.entropy.coder import decode_values, encode_values
from diraccodec.entropy.tables import TableSet, snap_scales
from diraccodec.errors import CorruptFileError
from diraccodec.transforms.networks import HYPER_STRIDE, LATENT_STRIDE
from diraccodec.transforms.search import SearchProblem, SearchSettings, response_energy, search_symbols
from diraccodec.transforms.tiling import apply_tiled


@dataclass
class BaseWeights:
    """A base weights file, loaded: the model, the integer tables built from it and its identity."""

    model: MultiRateHyperprior
    hyper_tables: TableSet
    latent_tables: TableSet
    latent_scales: np.ndarray
    weights_id: bytes
    path: Path
    metadata: dict[str, str]


TILE_LATENTS = 32  # transforms run on tiles of 32x32 latents (512x512 pixels) ...
MARGIN_LATENTS = 4  # ... each with 4 latents (64 pixels) of context on every side


@dataclass
class Latents:
    """What a .drc file's latent stream carries: integer hyper-latents and latent symbols."""

    hyper: np.ndarray  # (N, Hp/64, Wp/64) int64
    symbols: np.ndarray  # (M, Hp/16, Wp/16) int64: round(y * gain - mean)


def padded_size(height: int, width: int) -> tuple[int, int]:
    return -(-height // HYPER_STRIDE) * HYPER_STRIDE, -(-width // HYPER_STRIDE) * HYPER_STRIDE


class BaseCodec:
    def __init__(self, weights: BaseWeights, device: str | torch.device = "cpu") -> None:
        self.weights = weights
        self.device = torch.device(device)
        self.model = weights.model.to(self.device)
        self.num_levels = self.model.config.num_levels
        self._hyper_synthesis64 = copy.deepcopy(weights.model.hyper_synthesis).cpu().double()
        self._log_gain64 = weights.model.log_gain.detach().cpu().double()
        self._log_inverse_gain64 = weights.model.log_inverse_gain.detach().cpu().double()
        self._response_energies: dict[float, torch.Tensor] = {}

    def _gains64(self, quality: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gain and inverse gain for a 1-based quality, in float64, shape (M, 1, 1)."""
        level = min(max(quality - 1.0, 0.0), self.num_levels - 1.0)
        low = min(int(level), self.num_levels - 2)
        weight = level - low

        def mix(table: torch.Tensor) -> torch.Tensor:
            return ((1 - weight) * table[low] + weight * table[low + 1]).exp()[:, None, None]

        return mix(self._log_gain64), mix(self._log_inverse_gain64)

    def _entropy_parameters(self, z: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Mean (float64) and table index of every latent, from integer hyper-latents."""
        with torch.no_grad(), single_thread():
            mean, scale = self._hyper_synthesis64(torch.from_numpy(z).double()[None]).chunk(2, dim=1)
        table_ids = snap_scales(scale.abs()[0].numpy(), self.weights.latent_scales)
        return mean[0], table_ids

    def _hyper_table_ids(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(np.arange(shape[0])[:, None, None], shape)

    def _lambda(self, quality: float) -> float:
        """The level's rate-distortion trade-off, geometric between levels for fractions."""
        lambdas = np.log(self.model.config.lambdas)
        return float(np.exp(np.interp(quality - 1.0, np.arange(lambdas.size), lambdas)))

    @torch.no_grad()
    def analyse(self, rgb: np.ndarray, quality: float, search: SearchSettings = SearchSettings()) -> Latents:
        """The integer symbols that the stream will carry for this image and level.

        search.passes > 0 lets the encoder move symbols where that lowers the training
        objective on this image (diraccodec.transforms.search), measured after search.restoration
        (the decoder's filter at 0 steps) where given; 0 rounds the analysis.
        """
        height, width = rgb.shape[:2]
        padded_height, padded_width = padded_size(height, width)
        padded = np.pad(rgb, ((0, padded_height - height), (0, padded_width - width), (0, 0)), mode="edge")
        x = torch.from_numpy(padded).permute(2, 0, 1)[None].to(self.device).float().div_(255)
        del padded
        y = apply_tiled(
            self.model.analysis,
            x,
            Fraction(1, LATENT_STRIDE),
            TILE_LATENTS * LATENT_STRIDE,
            MARGIN_LATENTS * LATENT_STRIDE,
        )
        gain, _ = self._gains64(quality)
        y_scaled = y[0].cpu().double() * gain
        z = self.model.hyper_analysis(y_scaled.float()[None].to(self.device))[0]
        hyper = torch.round(z).cpu().to(torch.int64).numpy()
        mean, table_ids = self._entropy_parameters(hyper)
        symbols = torch.round(y_scaled - mean).to(torch.int64).numpy()
        if search.passes > 0:
            inverse_gain = self._gains64(quality)[1].float().to(self.device)
            if quality not in self._response_energies:
                self._response_energies[quality] = response_energy(self.model.synthesis, inverse_gain)
            problem = SearchProblem(
                synthesis=self.model.synthesis,
                pixels=x[0, :, :height, :width],
                mean=mean.float().to(self.device),
                inverse_gain=inverse_gain,
                table_ids=table_ids,
                price=self.weights.latent_tables.bits,
                distortion_weight=self._lambda(quality) * 255**2 / 3,
                energy=self._response_energies[quality],
                restoration=search.restoration,
                level=torch.tensor([float(quality)], device=self.device),
            )
            with torch.enable_grad():
                symbols = search_symbols(problem, symbols, search.passes, search.progress)
        return Latents(hyper, symbols)

    def write_stream(self, latents: Latents) -> bytes:
        _, table_ids = self._entropy_parameters(latents.hyper)
        encoder = constriction.stream.queue.RangeEncoder()
        encode_values(encoder, latents.hyper, self._hyper_table_ids(latents.hyper.shape), self.weights.hyper_tables)
        encode_values(encoder, latents.symbols, table_ids, self.weights.latent_tables)
        return encoder.get_compressed().astype("<u4").tobytes()

    def read_stream(self, payload: bytes, width: int, height: int) -> Latents:
        if len(payload) % 4:
            raise CorruptFileError("corrupt .drc file (latent stream length is not a whole number of words)")
        padded_height, padded_width = padded_size(height, width)
        hyper_shape = (self.model.config.channels, padded_height // HYPER_STRIDE, padded_width // HYPER_STRIDE)
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        try:
            decoder = constriction.stream.queue.RangeDecoder(words)
            hyper = decode_values(decoder, self._hyper_table_ids(hyper_shape), self.weights.hyper_tables)
            hyper = hyper.reshape(hyper_shape)
            _, table_ids = self._entropy_parameters(hyper)
            symbols = decode_values(decoder, table_ids, self.weights.latent_tables).reshape(table_ids.shape)
        except (ValueError, RuntimeError, OverflowError, AssertionError) as error:
            # constriction reports data that no symbol sequence could produce by an assertion
            raise CorruptFileError(f"corrupt .drc file (latent stream: {error})") from None
        return Latents(hyper, symbols)

    @torch.no_grad()
    def synthesize(self, latents: Latents, width: int, height: int, quality: float) -> np.ndarray:
        mean, _ = self._entropy_parameters(latents.hyper)
        _, inverse_gain = self._gains64(quality)
        y_hat = (torch.from_numpy(latents.symbols).double() + mean) * inverse_gain
        y_hat = y_hat.float()[None].to(self.device)
        with thread_invariant():  # the same pixels with any number of threads
            x_hat = apply_tiled(
                self.model.synthesis,
                y_hat,
                Fraction(LATENT_STRIDE),
                TILE_LATENTS,
                MARGIN_LATENTS,
            )
        del y_hat
        x_hat = x_hat[0, :, :height, :width].nan_to_num_(nan=0.0).clamp_(0, 1).mul_(255).round_()
        return np.ascontiguousarray(x_hat.to(torch.uint8).permute(1, 2, 0).cpu().numpy())

    def compress(self, rgb: np.ndarray, quality: float, search: SearchSettings = SearchSettings()) -> bytes:
        return self.write_stream(self.analyse(rgb, quality, search))

    def decompress(self, payload: bytes, width: int, height: int, quality: float) -> np.ndarray:
        return self.synthesize(self.read_stream(payload, width, height), width, height, quality)
