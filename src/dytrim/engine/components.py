"""What a component may own beyond its hooks, built once for every method (baselines-spec.md §14):

- auxiliary heads (`Component.heads()`): attached to the model as `model.aux_heads[name]` before training, so the
  optimiser, the EMA teacher, DDP gradient averaging, checkpoints and exact resume cover them with no extra code;
  `HeadModel` predicts with a named head (evaluation, `Component.eval_head`); a component may instead build the
  evaluation module itself (`Component.eval_module`, a head it owns outside the model, CoSSL's teacher);
- per-sample memory indexed by unlabeled position (`SampleMemory`, DARP, SAW);
- random streams (`owned_generator`, Bernoulli masks, a pass's augmentation), seeded from (seed, component name);
- schedules every K steps / per epoch of a named length: `engine/schedules.py`; the whole-set pass:
  `engine/passes.py`.
Memory, generators and schedules are saved by the component's own state_dict (the checkpoint holds it).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dytrim.engine.hooks import Component
from dytrim.engine.rng import set_generator_state

AUX = "aux_heads"  # the model's attribute holding the components' heads (state_dict keys aux_heads.<name>.*)


def collect_heads(components: Sequence[Any]) -> dict[str, nn.Module]:
    """Every component's (and the SSL base's) heads by name, from their `heads()`; a name used twice is refused."""
    heads: dict[str, nn.Module] = {}
    for c in components:
        for name, head in c.heads().items():
            if name in heads:
                raise ValueError(f"two components own a head named '{name}'")
            heads[name] = head
    return heads


def attach_heads(model: nn.Module, heads: dict[str, nn.Module], device: torch.device) -> bool:
    """Add `heads` to `model` as model.aux_heads (on `device`, in the model's train mode); False when there are
    none (the model is then untouched, so runs without heads are bit-identical to before)."""
    if not heads:
        return False
    model.add_module(AUX, nn.ModuleDict(heads).to(device))
    model.train(model.training)
    return True


def xavier_linear_(linear: nn.Linear, generator: torch.Generator | None = None) -> nn.Linear:
    """`linear` with a Xavier-normal weight and a zero bias (the heads of ABC, ACR and DARP's cRT), in place;
    `generator` (CPU): drawn from it, whatever the head's device, else from the global stream. Returns `linear`."""
    if generator is None:
        nn.init.xavier_normal_(linear.weight)
    else:
        weight = torch.empty(linear.weight.shape, dtype=linear.weight.dtype)
        nn.init.xavier_normal_(weight, generator=generator)
        with torch.no_grad():
            linear.weight.copy_(weight.to(linear.weight.device))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def head_of(model: nn.Module, name: str) -> nn.Module:
    """The auxiliary head `name` of a model (the student or its EMA copy)."""
    return getattr(model, AUX)[name]


class HeadModel(nn.Module):
    """A model that predicts with an auxiliary head: head(model.forward_features(x)). Shares the model's modules."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model, self.name = model, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return head_of(self.model, self.name)(self.model.forward_features(x))


def eval_model(model: nn.Module, components: Sequence[Component]) -> nn.Module:
    """The model evaluation predicts with: `model`, it through the one head a component names (`eval_head`), or the
    module one component builds on it (`eval_module`: a head the component owns, with its own EMA, CoSSL)."""
    named = [c.eval_head for c in components if c.eval_head]
    own = [m for c in components if (m := c.eval_module(model)) is not None]
    if len(named) + len(own) > 1:
        raise ValueError(f"several components choose the evaluation head: {named + [type(m).__name__ for m in own]}")
    return own[0] if own else HeadModel(model, named[0]) if named else model


def owned_generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator of its own for component `name`: seeded from (seed, name), so it is reproducible and draws
    nothing from the global or the augmentation streams. Save it with `generator_state`."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def generator_state(gen: torch.Generator) -> torch.Tensor:
    return gen.get_state()


def load_generator_state(gen: torch.Generator, state: torch.Tensor) -> None:
    set_generator_state(gen, state)


class SampleMemory:
    """A per-sample table [N_u, C] indexed by unlabeled position (e.g. the last weak-view softmax of each sample).

    Rows start at `fill`; `write(pos, values)` keeps the last value written per position (a repeated position in
    one batch keeps its last row, as `t[idx] = v` on a CPU tensor does)."""

    def __init__(self, n: int, width: int, fill: float = 0.0) -> None:
        self.table = torch.full((n, width), float(fill))

    @torch.no_grad()
    def write(self, pos: torch.Tensor, values: torch.Tensor) -> None:
        self.table = self.table.to(values.device)
        self.table[pos] = values.to(self.table.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        table = state["table"]
        if table.shape != self.table.shape:
            raise ValueError(f"sample memory has shape {tuple(table.shape)}; this run has {tuple(self.table.shape)}")
        self.table = table.clone().to(self.table.device)
