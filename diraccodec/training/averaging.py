"""An exponential moving average of a model's weights, kept beside the training.

At small batches (4 crops on a CPU) the weights of one step differ noticeably from those a
few hundred steps later, and so do their scores. The average over the last ~1/(1 - decay)
steps is steadier; it travels in the checkpoint and is what export ships when present.
"""

from __future__ import annotations

import torch

AVERAGE_PREFIX = "average."


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.reset(model)

    def reset(self, model: torch.nn.Module) -> None:
        """Start the average afresh at the model's current weights."""
        self.updates = 0
        current = model.state_dict()
        self.tensors = {name: value.detach().clone() for name, value in current.items() if value.is_floating_point()}
        # the model's own tensors (state_dict's share their storage), listed once: building the
        # state dict at every step is Python work a GPU step waits for
        self._model, self._sources = model, [current[name] for name in self.tensors]
        self._averages = list(self.tensors.values())

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold in the current weights; early on the decay is smaller, so the start fades fast."""
        if model is not self._model:
            raise ValueError("the average follows the model it was made for")
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._averages, self._sources, 1 - decay)  # one fused update: few launches

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """For the checkpoint: the averaged tensors and the update count."""
        tensors = {AVERAGE_PREFIX + name: value.cpu().contiguous() for name, value in self.tensors.items()}
        tensors[AVERAGE_PREFIX + "updates"] = torch.tensor([self.updates], dtype=torch.int64)
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Take the average back from a checkpoint's tensors; False if it holds none."""
        if AVERAGE_PREFIX + "updates" not in tensors:
            return False
        for name, value in self.tensors.items():
            value.copy_(tensors[AVERAGE_PREFIX + name])  # on the model's device, in its dtype
        self.updates = int(tensors[AVERAGE_PREFIX + "updates"][0])
        return True
