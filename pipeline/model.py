"""The wavelet transformer: a GPT-2 decoder (HuggingFace `transformers`) over wavelet tokens.

At step t the input is the previous token (a start token at t = 0) plus the position of the
token being predicted, which the scan grammar knows from the prefix. The paper concatenates a
one-hot token, the raw (bp, i1, i2), a one-hot initial exponent e0 and a one-hot class; a linear
map of a concatenation is a sum of per-part maps, so here each part has its own learned
embedding and they are summed:

    x_t = token[prev_t] + bp[bp_t] + row[i1_t] + col[i2_t] + e0[e0] + class[label]

`position` picks what tells the model where it is: `wavelet` (bp, row, col; GPT-2's absolute
table is fed position 0 throughout, so it is one learned bias), `sequence` (GPT-2's absolute index
only) or `both`. `condition` is `class` (with a null class for classifier-free guidance) or
`none`. Logits cover the 8 token ids; ids the grammar forbids at a step are masked to -inf before
the softmax, so the NLL is the true code length of the sequence.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2Model
from transformers.models.gpt2.modeling_gpt2 import GPT2PreTrainedModel
from transformers.utils import logging as hf_logging

from .grammar import TOKEN_NAMES, VOCAB_SIZE

START = VOCAB_SIZE  # input id of the start token; the model never predicts it
POSITIONS = ("wavelet", "sequence", "both")
CONDITIONS = ("class", "none")
hf_logging.disable_progress_bar()  # the stages report their own progress
# transformers renamed GPT2Model's `past_key_values` argument to `cache` during 5.x.
_CACHE_KWARG = "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"


class WaveletGPTConfig(GPT2Config):
    """GPT-2's configuration plus what it takes to turn sampled tokens back into images."""

    model_type = "wavelet_gpt"

    def __init__(self, position: str = "wavelet", condition: str = "class", n_classes: int = 10,
                 size: int = 32, max_planes: int = 8, e0_min: int = 0, e0_max: int = 3,
                 wavelet: str = "haar", method: str = "zeroblock", final_exponent: int = -3,
                 initial_threshold: str = "per_image", image_height: int = 28, image_width: int = 28,
                 initial_exponent_counts: dict | None = None, token_names: list | None = None,
                 **kwargs):
        kwargs.setdefault("vocab_size", VOCAB_SIZE + 1)
        kwargs.setdefault("bos_token_id", START)
        kwargs.setdefault("eos_token_id", None)
        super().__init__(**kwargs)
        self.position = position
        self.condition = condition
        self.n_classes = n_classes
        self.size = size
        self.max_planes = max_planes
        self.e0_min = e0_min
        self.e0_max = e0_max
        self.wavelet = wavelet
        self.method = method
        self.final_exponent = final_exponent
        self.initial_threshold = initial_threshold
        self.image_height = image_height
        self.image_width = image_width
        # {class: {e0: count}} from the training split; the sampler draws each sample's e0 from it.
        self.initial_exponent_counts = initial_exponent_counts or {}
        self.token_names = token_names or list(TOKEN_NAMES)

    @property
    def null_class(self) -> int:
        return self.n_classes


class WaveletGPT(GPT2PreTrainedModel):
    config_class = WaveletGPTConfig
    base_model_prefix = "wavelet_gpt"

    def __init__(self, config: WaveletGPTConfig):
        super().__init__(config)
        d = config.n_embd
        self.transformer = GPT2Model(config)
        self.transformer.wte = None  # inputs come in as summed embeddings below
        self.token = nn.Embedding(VOCAB_SIZE + 1, d)
        self.uses_wavelet_position = config.position in ("wavelet", "both")
        if self.uses_wavelet_position:
            self.bp = nn.Embedding(config.max_planes, d)
            self.row = nn.Embedding(config.size, d)
            self.col = nn.Embedding(config.size, d)
        self.e0 = nn.Embedding(config.e0_max - config.e0_min + 1, d)
        if config.condition == "class":
            self.label = nn.Embedding(config.n_classes + 1, d)  # + the null class
        self.head = nn.Linear(d, VOCAB_SIZE, bias=False)
        self.post_init()

    def embed(self, prev_tokens, bp, i1, i2, e0, labels):
        """(B, T) ids and positions, (B,) e0 and labels -> (B, T, n_embd)."""
        x = self.token(prev_tokens)
        if self.uses_wavelet_position:
            x = x + self.bp(bp) + self.row(i1) + self.col(i2)
        per_sequence = self.e0(e0 - self.config.e0_min)
        if self.config.condition == "class":
            per_sequence = per_sequence + self.label(labels)
        return x + per_sequence[:, None, :]

    def position_ids(self, start: int, length: int, device) -> torch.Tensor:
        if self.config.position == "wavelet":
            return torch.zeros(1, length, dtype=torch.long, device=device)
        # Past GPT-2's table (a sample longer than any training sequence) the last row repeats.
        return torch.arange(start, start + length, device=device).clamp_(max=self.config.n_positions - 1)[None]

    def forward(self, prev_tokens, bp, i1, i2, e0, labels, cache=None, use_cache: bool = False,
                start: int = 0):
        """Logits (B, T, VOCAB_SIZE) for the tokens at the given positions, and the KV cache."""
        x = self.embed(prev_tokens, bp, i1, i2, e0, labels)
        kwargs = {_CACHE_KWARG: cache} if cache is not None else {}
        out = self.transformer(inputs_embeds=x, position_ids=self.position_ids(start, x.shape[1], x.device),
                               use_cache=use_cache, **kwargs)
        return self.head(out.last_hidden_state), out.get(_CACHE_KWARG)


def masked_logits(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Ids the grammar forbids get -inf (valid: bool, same shape as logits)."""
    return logits.masked_fill(~valid, float("-inf"))


def token_nll(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Per-token negative log-likelihood in nats, (B, T); padding (target -1) gives 0.

    With `valid`, the softmax runs over the grammar's valid ids only (the code length of the
    sequence); without, over all ids.
    """
    logits = logits.float()
    if valid is not None:
        logits = masked_logits(logits, valid)
    pad = targets < 0
    nll = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    return nll.masked_fill(pad, 0.0)


def bits(nats: float) -> float:
    return nats / math.log(2)


def unpack_valid(masks: torch.Tensor) -> torch.Tensor:
    """(...,) uint8 grammar bitmasks -> (..., VOCAB_SIZE) bool."""
    shifts = torch.arange(VOCAB_SIZE, device=masks.device)
    return ((masks.long()[..., None] >> shifts) & 1).bool()
