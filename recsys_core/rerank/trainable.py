"""What the shared training loop sees of a large model: only its trainable parameters (adapters, heads)."""

from __future__ import annotations

from torch import nn

from recsys_core.errors import ConfigError


class TrainableWeights(nn.Module):
    """The trainable parameters of ``net`` only, shared with it (same tensors), so that the loop's best-weights copies
    and checkpoints hold the adapters and not the frozen base model. Switching train and inference mode reaches the
    whole network (its dropout)."""

    def __init__(self, net: nn.Module, hint: str = "check which modules are trained"):
        super().__init__()
        named = {n.replace(".", "__"): p for n, p in net.named_parameters() if p.requires_grad}
        if not named:
            raise ConfigError(f"no trainable parameter: {hint}")
        self.weights = nn.ParameterDict(named)
        object.__setattr__(self, "net", net)  # not a submodule: its frozen weights stay out of state_dict()

    def train(self, mode: bool = True) -> TrainableWeights:
        super().train(mode)
        self.net.train(mode)
        return self
