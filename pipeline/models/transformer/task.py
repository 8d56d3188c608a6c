"""The train stage's view of the wavelet transformer: its batches (padded token sequences with
their grammar masks), loss (the grammar-masked NLL), training FLOPs, validation and saved form.
`models/diffusion/task.py` is the other family's, with the same interface."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ... import formats
from ...batches import LengthBatches, class_dropout
from ...devices import Distributed, autocast
from ...languages.base import from_description
from ...languages.context import SIZES as CONTEXT_SIZES
from ...params import ParamError, Params
from ...progress import log
from .network import WaveletGPT, WaveletGPTConfig, bits, token_nll

COMPILED_WIDTH_STEP = 64  # torch.compile sees one width per 64 tokens (and dynamic shapes), not one per step


class TokenData:
    """One split's sequences, assembled into padded batches with their grammar masks."""

    def __init__(self, split: formats.TokenSplit, language, pad_to: int = 1, context: bool = False):
        self.encoded = split.encoded
        self.language = language
        self.context = context  # batches carry the scan-state features of every token
        self.start_token = language.vocab_size
        self.pad_to = pad_to
        self.lengths = self.encoded.lengths
        self.e0 = self.encoded.initial_exponents.astype(np.int64)
        self.labels = split.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def width(self, rows: np.ndarray) -> int:
        """The padded width of a batch of these sequences: the longest, rounded up to `pad_to`."""
        return self.pad_to * -(-int(self.lengths[rows].max()) // self.pad_to)

    def batch(self, rows: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """Padded tensors for the given sequences: inputs are the previous tokens (the start token
        first), targets the tokens (-1 on padding), positions those of the targets, `valid` the
        ids the grammar allows at each target (all of them on padding), `context` (with
        context) the scan-state features of each target's place (0 on padding)."""
        width = self.width(rows)
        chosen = self.encoded.select(rows)
        lengths = chosen.lengths
        filled = np.arange(width)[None, :] < lengths[:, None]
        out = {name: np.zeros((len(rows), width), np.int64) for name in ("prev", "bp", "i1", "i2")}
        out["target"] = np.full((len(rows), width), -1, np.int64)
        out["target"][filled] = chosen.tokens
        out["prev"][:, 0] = self.start_token
        out["prev"][:, 1:] = np.where(filled[:, 1:], out["target"][:, :-1], 0)
        for name in ("bp", "i1", "i2"):
            out[name][filled] = getattr(chosen, name)
        if self.language.colour:
            out["component"] = np.zeros((len(rows), width), np.int64)
            out["component"][filled] = chosen.component
        valid = np.ones((len(rows), width, self.language.vocab_size), bool)  # padding: no -inf rows
        valid[filled] = self.language.valid_ids(chosen)
        tensors = {name: torch.from_numpy(a).to(device) for name, a in out.items()}
        tensors["valid"] = torch.from_numpy(valid).to(device)
        if self.context:
            context = np.zeros((len(rows), width, len(CONTEXT_SIZES)), np.int64)
            context[filled] = self.language.context(chosen)
            tensors["context"] = torch.from_numpy(context).to(device)
        tensors["e0"] = torch.from_numpy(self.e0[rows]).to(device)
        tensors["label"] = torch.from_numpy(self.labels[rows]).to(device)
        return tensors


def load_data(tokens_root: Path, pad_to: int = 1, context: bool = False) -> tuple[dict, TokenData, TokenData]:
    """meta.json and both splits, checked against the data contract and the language's grammar."""
    meta = formats.read_meta(tokens_root)
    language = from_description(meta["language"])
    splits = [TokenData(formats.read_split(tokens_root, split, meta, check_grammar=True), language, pad_to, context)
              for split in ("train", "test")]
    return meta, *splits


def model_config(p: Params, meta: dict) -> WaveletGPTConfig:
    shape = p.model
    language = from_description(meta["language"])
    if shape.context == "scan" and not language.has_context:
        raise ParamError("model.context", "scan", f"none with the {language.family} language (it keeps no scan "
                         "state to read context features from)")
    # GPT-2's absolute table is only read for `sequence`/`both`; leave room past the longest sequence.
    n_positions = 1 if shape.position == "wavelet" else 64 * math.ceil(1.25 * meta["max_length"] / 64)
    return WaveletGPTConfig.for_language(
        language,
        n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head, n_positions=n_positions,
        resid_pdrop=shape.dropout, embd_pdrop=shape.dropout, attn_pdrop=shape.dropout,
        position=shape.position, condition=shape.condition, context=shape.context, n_classes=meta["n_classes"],
        initial_exponent_counts=meta["initial_exponent_counts"], longest_sequence=meta["max_length"],
        attn_implementation="sdpa",
    )


@torch.no_grad()
def evaluate(model, data: TokenData, rows: np.ndarray, batch_size: int, device, precision: str) -> dict:
    """Test NLL over the given sequences: bits per token and per image, grammar-masked (the code
    length) and unmasked."""
    model.eval()
    masked = unmasked = 0.0
    tokens = 0
    for start in range(0, len(rows), batch_size):
        batch = data.batch(rows[start:start + batch_size], device)
        with autocast(device, precision):
            logits = model(batch["prev"], batch["bp"], batch["i1"], batch["i2"], batch["e0"], batch["label"],
                           batch.get("context"), batch.get("component"))
        masked += token_nll(logits, batch["target"], batch["valid"]).sum().item()
        unmasked += token_nll(logits, batch["target"], None).sum().item()
        tokens += int((batch["target"] >= 0).sum())
    return {"bits_per_token": bits(masked / tokens), "bits_per_image": bits(masked / len(rows)),
            "unmasked_bits_per_token": bits(unmasked / tokens),
            "unmasked_bits_per_image": bits(unmasked / len(rows)), "images": int(len(rows)),
            "tokens": tokens}


class TransformerTask:
    """What the training loop needs to know about the transformer: its batches, loss, FLOPs,
    validation, final figures and how it is saved. (`models/diffusion/task.py` has the other one.)"""

    def __init__(self, p: Params, tokens_root: Path, device: torch.device, dist: Distributed):
        self.p, self.device, self.dist = p, device, dist
        self.compiled = p.train.compile and device.type == "cuda"
        meta, self.train_data, self.test_data = load_data(tokens_root, COMPILED_WIDTH_STEP if self.compiled else 1,
                                                          p.model.context == "scan")
        self.meta = meta
        self.model = WaveletGPT(model_config(p, meta)).to(device)
        self.batches = LengthBatches(self.train_data.lengths, p.train.batch_size, p.train.seed, dist.world, dist.rank)
        self.model.eval()  # no dropout: counting must not draw from the random stream
        self._flops = quadratic_flops(self._one_step)
        self.model.zero_grad(set_to_none=True)
        self.model.train()
        self.unit = "token"

    def describe(self) -> str:
        return f"{len(self.train_data)} training sequences"

    def batch(self, step: int) -> dict:
        batch = self.train_data.batch(self.batches.rows(step), self.device)
        if self.model.config.condition == "class" and self.p.train.cond_dropout > 0:
            batch["label"] = class_dropout(batch["label"], self.p, step, self.dist, self.model.config.null_class)
        return batch

    def loss(self, trained, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed NLL (nats) of this rank's share, and its token count."""
        logits = trained(batch["prev"], batch["bp"], batch["i1"], batch["i2"], batch["e0"], batch["label"],
                         batch.get("context"), batch.get("component"))
        nll = token_nll(logits, batch["target"], batch["valid"] if self.p.train.grammar_mask else None).sum()
        return nll, (batch["target"] >= 0).sum()

    def _one_step(self, width: int) -> None:
        """Forward and backward of one sequence of `width` tokens, for the FLOP counter."""
        x = torch.zeros(1, width, dtype=torch.long, device=self.device)
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        context = torch.zeros(1, width, len(CONTEXT_SIZES), dtype=torch.long, device=self.device)
        with autocast(self.device, self.p.train.precision):
            logits = self.model(x, x, x, x, zero + self.model.config.e0_min, zero,
                                context if self.model.uses_context else None, x if self.model.uses_component else None)
        logits.float().sum().backward()

    def step_flops(self, step: int) -> float:
        """Training FLOPs of a step (all processes): each rank's batch at its padded width."""
        rows = self.batches.global_rows(step)
        size = self.p.train.batch_size
        return sum(self._flops(len(share), self.train_data.width(share))
                   for share in (rows[r * size:(r + 1) * size] for r in range(self.dist.world)))

    def validate(self, rows: np.ndarray) -> dict:
        return evaluate(self.model, self.test_data, rows, self.p.train.batch_size, self.device, self.p.train.precision)

    def validation_figures(self, val: dict) -> dict:
        return {"val/loss": val["bits_per_token"] * math.log(2), "val/bits_per_token": val["bits_per_token"]}

    def describe_validation(self, val: dict) -> str:
        return f"val {val['bits_per_token']:.4f} bits/token"

    def loss_figures(self, loss: float) -> dict:
        return {"train/loss": loss, "train/bits_per_token": bits(loss)}

    def final(self) -> dict:
        """Test NLL over `train.final_eval_images` test sequences."""
        n = len(self.test_data)
        rows = np.arange(n if self.p.train.final_eval_images is None else min(n, self.p.train.final_eval_images))
        final = self.validate(rows)
        log(f"test NLL over {final['images']} images: {final['bits_per_token']:.4f} bits/token, "
            f"{final['bits_per_image']:.1f} bits/image")
        return final

    @property
    def n_eval(self) -> int:
        return len(self.test_data)

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        for name, text in self.model.language.artifacts().items():
            (folder / name).write_text(text)


def quadratic_flops(one_step) -> "callable":
    """FLOPs of a training step of B sequences of width T, counted by torch's FlopCounterMode.

    A transformer step costs B (a T + b T^2) (projections and MLPs linear in T, attention
    quadratic); two counted widths give a and b exactly, so every step's count is known from its
    batch shape without counting it (a deterministic figure, unlike wall-clock)."""
    counts = {}
    for width in (64, 128):
        with FlopCounterMode(display=False) as counter:
            one_step(width)
        counts[width] = counter.get_total_flops()
    b = (counts[128] - 2 * counts[64]) / (128 ** 2 - 2 * 64 ** 2)
    a = (counts[64] - b * 64 ** 2) / 64
    return lambda batch, width: batch * (a * width + b * width * width)
