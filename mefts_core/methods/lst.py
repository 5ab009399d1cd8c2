"""Ladder Side-Tuning (LST, Sung et al. 2022) for encoder families: a narrow side network beside a frozen backbone.

Width d' = d/r (FFN I/r, the backbone's head count when d' allows it). Side layer i reads, through a learned
down-projection ("ladder"), the frozen backbone's output h_i of layer i, gated against its own previous output:

    s_0 = down_0(embeddings)
    s_i = side_i( μ_i · down_i(h_i) + (1 − μ_i) · s_{i−1} ),   μ_i = sigmoid(α_i / T), α_i = 0 at init, T = 0.1
    last_hidden_state = up(s_N)                                  (d' -> d; the task head reads it)

The backbone runs under `torch.no_grad()`: no backprop through it, so none of its activations are kept. What the
step stores is the side network's (1/r of the width) and the ladders' inputs h_0..h_N (d wide, one per layer).

Side layers are layers of the backbone's own class at the reduced width, initialised as LST does by structured
pruning of the backbone layer's weights: the residual dimensions with the largest L1 weight mass (one set for the
whole side network, so the side residual stream means the same thing in every layer), per head the head dimensions
with the largest query/key/value mass, and the FFN neurons with the largest mass. docs/method.md §LST.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from mefts_core.errors import ConfigError, is_int, is_number, require
from mefts_core.methods.registry import LayerTraining, MethodSpec

LST_INITS = ("prune", "random")


@dataclass
class LstOptions:
    """Ladder side-tuning: a side network of width d/r fed by gated ladders from the frozen backbone."""

    r: int = field(default=8, metadata={"help": "reduction factor: the side network is d/r wide (FFN I/r)"})
    gate_temperature: float = field(default=0.1, metadata={"help": "T in the ladder gate sigmoid(α/T)"})
    init: str = field(default="prune", metadata={
        "help": "side-layer init (prune: structured pruning of the backbone's weights, as LST does): one of "
                + ", ".join(LST_INITS)})

    def __post_init__(self) -> None:
        require(is_int(self.r) and self.r >= 1, "r", self.r, "must be an integer >= 1")
        require(is_number(self.gate_temperature) and self.gate_temperature > 0, "gate_temperature",
                self.gate_temperature, "must be > 0")
        require(self.init in LST_INITS, "init", self.init, f"must be one of {LST_INITS}")


def side_width(hidden: int, ffn: int, heads: int, r: int) -> tuple[int, int, int]:
    """The side network's (width d/r, FFN I/r, the most heads <= the backbone's that divide d/r)."""
    d, inner = hidden // r, ffn // r
    if d < 1 or inner < 1:
        raise ConfigError("r", r, f"leaves no width: hidden {hidden}/r, FFN {ffn}/r")
    return d, inner, max(h for h in range(1, heads + 1) if d % h == 0)


def _side_config(config, r: int):
    """The backbone's config at the side network's width (side_width)."""
    d, inner, heads = side_width(config.hidden_size, config.intermediate_size, config.num_attention_heads, r)
    side = copy.deepcopy(config)
    side.hidden_size, side.intermediate_size, side.num_attention_heads = d, inner, heads
    return side


# The axes of a BERT/RoBERTa layer's parameters: residual dims, attention inner dims (heads x head_dim), FFN neurons.
_ROLES = (("attention.self.query", ("inner", "resid")), ("attention.self.key", ("inner", "resid")),
          ("attention.self.value", ("inner", "resid")), ("attention.output.dense", ("resid", "inner")),
          ("intermediate.dense", ("ffn", "resid")), ("output.dense", ("resid", "ffn")), ("LayerNorm", ("resid",)))


def _roles(name: str, ndim: int) -> tuple[str, ...]:
    stem = name.rsplit(".", 1)[0]
    for suffix, roles in _ROLES:
        if stem.endswith(suffix):
            return roles[:ndim]
    raise ConfigError("init", "prune", f"no pruning rule for the layer parameter {name!r}; use init=random")


def _mass(layer: nn.Module) -> dict[str, torch.Tensor]:
    """Per role, the L1 weight mass of each index over the layer's linears (the other axis summed)."""
    mass: dict[str, torch.Tensor] = {}
    for name, w in layer.named_parameters():
        if w.dim() != 2:
            continue
        for axis, role in enumerate(_roles(name, 2)):
            m = w.detach().abs().float().sum(1 - axis)  # (size of this axis,)
            mass[role] = mass[role] + m if role in mass else m
    return mass


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(torch.topk(score, k).indices).values


def _pruned_init(side: nn.Module, full: nn.Module, resid: torch.Tensor, full_cfg, side_cfg) -> None:
    """Copy `full`'s weights into the narrower `side` layer at the kept residual, head and FFN indices."""
    mass = _mass(full)
    e, e_side = full_cfg.hidden_size // full_cfg.num_attention_heads, side_cfg.hidden_size // side_cfg.num_attention_heads
    if side_cfg.num_attention_heads == full_cfg.num_attention_heads:  # per head: its strongest head dims
        inner = torch.cat([h * e + _top(mass["inner"][h * e:(h + 1) * e], e_side)
                           for h in range(full_cfg.num_attention_heads)])
    else:  # fewer heads than the backbone: no head structure to keep
        inner = _top(mass["inner"], side_cfg.hidden_size)
    keep = {"resid": resid, "inner": inner, "ffn": _top(mass["ffn"], side_cfg.intermediate_size)}
    src = dict(full.named_parameters())
    with torch.no_grad():
        for name, p in side.named_parameters():
            w = src[name].detach()
            for axis, role in enumerate(_roles(name, p.dim())):
                w = w.index_select(axis, keep[role].to(w.device))
            p.copy_(w)


class LadderSide(nn.Module):
    """The side network: ladders (down_0..down_N), gates α_1..α_N, side layers 1..N and the up-projection."""

    def __init__(self, layers: list[nn.Module], config, opts: LstOptions) -> None:
        super().__init__()
        side_cfg = _side_config(config, opts.r)
        d, d_side = config.hidden_size, side_cfg.hidden_size
        self.temperature = float(opts.gate_temperature)
        self.down = nn.ModuleList(nn.Linear(d, d_side) for _ in range(len(layers) + 1))
        self.alpha = nn.Parameter(torch.zeros(len(layers)))  # μ = 1/2 at init: ladder and side path mixed evenly
        self.layers = nn.ModuleList(type(layer)(side_cfg, layer_idx=i) for i, layer in enumerate(layers))
        self.up = nn.Linear(d_side, d)
        if opts.init == "prune":
            resid = _top(sum(_mass(layer)["resid"] for layer in layers), d_side)
            for s, f in zip(self.layers, layers, strict=True):
                _pruned_init(s, f, resid, config, side_cfg)

    def forward(self, embedded: torch.Tensor, states: list[torch.Tensor], args: tuple, kwargs: dict) -> torch.Tensor:
        """embedded (B, T, d), states: the backbone layers' outputs, each (B, T, d) -> (B, T, d)."""
        s = self.down[0](embedded)  # (B, T, d')
        mu = torch.sigmoid(self.alpha / self.temperature)  # (N,)
        for i, (layer, h) in enumerate(zip(self.layers, states, strict=True)):
            x = mu[i] * self.down[i + 1](h) + (1 - mu[i]) * s  # (B, T, d')
            s = layer(x, *args, **kwargs)
            s = s[0] if isinstance(s, tuple) else s
        return self.up(s)  # (B, T, d)


def apply_lst(model: nn.Module, family, opts: LstOptions) -> list[nn.Parameter]:
    base = model.base_model
    groups = family.groups(base)
    if family.decoder or len(groups) != 1:
        raise ConfigError("method", "lst", f"encoder families only (one layer stack), not model_type="
                                           f"{base.config.model_type!r}")
    layers = list(groups[0][0])
    if opts.init == "prune":
        for name, _ in layers[0].named_parameters():
            _roles(name, 1)  # refuse, before the model is touched, a layer the pruning rules do not know
    like = next(base.parameters())
    base.lst = LadderSide(layers, base.config, opts).to(like.device, like.dtype)
    _route_encoder(base.encoder, layers, base.lst)
    return list(base.lst.parameters())


def _route_encoder(encoder: nn.Module, layers: list[nn.Module], side: LadderSide) -> None:
    """The encoder's forward becomes: the backbone under no_grad (its layer outputs caught by hooks), then the side
    network with gradients. Its output is the side network's; the model's own forward and head are unchanged."""
    frozen = encoder.forward
    states: list[torch.Tensor] = []
    call: dict[str, tuple] = {}

    def catch(module, args, kwargs, output):
        if not call:
            call["args"], call["kwargs"] = args[1:], kwargs  # the mask and the rest, as the backbone's layers get them
        states.append(output[0] if isinstance(output, tuple) else output)

    for layer in layers:
        layer.register_forward_hook(catch, with_kwargs=True)

    def forward(hidden_states, *args, **kwargs):
        states.clear()
        call.clear()
        with torch.no_grad():
            out = frozen(hidden_states, *args, **kwargs)
        out.last_hidden_state = side(hidden_states, list(states), call["args"], call["kwargs"])
        states.clear()
        return out

    encoder.forward = forward


def estimate_lst(opts: LstOptions) -> LayerTraining:
    # the backbone's layers train nothing and run without grad; the side network is counted on its own
    # (mefts_core.measure.ladder)
    return LayerTraining(side=opts.r)


LST = MethodSpec("lst", LstOptions, apply_lst, estimate_lst,
                 description="ladder side-tuning: a d/r-wide side network on the frozen backbone's layer outputs")
