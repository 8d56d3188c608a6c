"""The wavelet transformer: a GPT-2 decoder (HuggingFace `transformers`) over wavelet tokens.

At step t the input is the previous token (a start token at t = 0) plus the position of the
token being predicted, which the scan grammar knows from the prefix. The paper concatenates a
one-hot token, the raw (bp, i1, i2), a one-hot initial exponent e0 and a one-hot class; a linear
map of a concatenation is a sum of per-part maps, so here each part has its own learned
embedding and they are summed:

    x_t = token[prev_t] + bp[bp_t] + row[i1_t] + col[i2_t] + e0[e0] + class[label]
          (+ state[s_t] + parent[p_t] + neighbours[n_t] + signs[g_t] with `context: scan`)
          (+ component[c_t] for a colour language: Y, Cb, Cr, or R, G, B for pixels)

`position` picks what tells the model where it is: `wavelet` (bp, row, col), `sequence` (GPT-2's
absolute index table only) or `both`. `condition` is `class` (with a null class for classifier-free guidance) or
`none`. `context` is `scan` to add the scan-state features of the place being written
(`languages.context`: what the decoder already knows there) or `none`. Logits cover the language's token ids; ids the grammar forbids at a step are masked to
-inf before the softmax, so the NLL is the true code length of the sequence.

The blocks, LayerNorms and projections are HuggingFace's GPT-2 modules (so `save_pretrained` /
`from_pretrained` work as usual); the forward pass over them is written here, a dozen lines with
PyTorch's SDPA attention, so that training and the KV-cached sampler share it exactly and no
position ids are needed (transformers reads repeated position ids as packed sequences).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2Model
from transformers.models.gpt2.modeling_gpt2 import GPT2PreTrainedModel
from transformers.utils import logging as hf_logging

from ...io import InputError
from ...languages.base import from_description
from ...languages.context import SIZES as CONTEXT_SIZES

hf_logging.disable_progress_bar()  # the stages report their own progress


class WaveletGPTConfig(GPT2Config):
    """GPT-2's configuration plus the token language (what it takes to turn sampled tokens back
    into images) and the sizes of the position and condition tables."""

    model_type = "wavelet_gpt"

    def __init__(self, position: str = "wavelet", condition: str = "class", n_classes: int = 10,
                 language: dict | None = None, token_vocab: int = 8, size: int = 32, max_planes: int = 8,
                 e0_min: int = 0, e0_max: int = 3, initial_exponent_counts: dict | None = None,
                 longest_sequence: int = 2048, context: str = "none", context_sizes: list | None = None,
                 components: int = 1, **kwargs):
        kwargs.setdefault("vocab_size", token_vocab + 1)  # + the start token
        kwargs.setdefault("bos_token_id", token_vocab)
        kwargs.setdefault("eos_token_id", None)
        # GPT-2's tanh GELU (`gelu_new`) as one fused kernel instead of five elementwise ops: the
        # same function, and ~15% faster training on CPU where those ops dominate small models.
        kwargs.setdefault("activation_function", "gelu_pytorch_tanh")
        super().__init__(**kwargs)
        self.position = position
        self.condition = condition
        self.n_classes = n_classes
        # language.describe(): the sampler rebuilds the language (and decodes images) from it.
        self.language = language or {"family": "wavelet", "wavelet": "haar"}
        self.token_vocab = token_vocab
        self.size = size
        self.max_planes = max_planes
        self.e0_min = e0_min
        self.e0_max = e0_max
        # {class: {e0: count}} from the training split; the sampler draws each sample's e0 from it.
        self.initial_exponent_counts = initial_exponent_counts or {}
        self.longest_sequence = longest_sequence  # of the training data: the sampler sizes its cache by it
        self.context = context
        self.context_sizes = list(context_sizes or [])  # ids of each context feature (its table sizes)
        self.components = components  # 3 for a colour language: each token's component is embedded

    @classmethod
    def for_language(cls, language, **kwargs) -> "WaveletGPTConfig":
        """A config whose tables cover every token, position and e0 the language allows."""
        e0_min, e0_max = language.e0_range
        if kwargs.get("context", "none") == "scan":
            if not language.has_context:
                raise ValueError(f"model.context scan needs a language with a scan state (wavelet or BPE); "
                                 f"{language.name} has none: use model.context none")
            kwargs["context_sizes"] = list(CONTEXT_SIZES)
        return cls(language=language.describe(), token_vocab=language.vocab_size, size=language.size,
                   max_planes=language.max_planes, e0_min=e0_min, e0_max=e0_max,
                   components=3 if language.colour else 1, **kwargs)

    @property
    def null_class(self) -> int:
        return self.n_classes

    @property
    def start_token(self) -> int:
        """Input id of the start token (the model never predicts it)."""
        return self.token_vocab


class WaveletGPT(GPT2PreTrainedModel):
    config_class = WaveletGPTConfig
    base_model_prefix = "wavelet_gpt"

    def __init__(self, config: WaveletGPTConfig):
        super().__init__(config)
        d = config.n_embd
        self.transformer = GPT2Model(config)
        self.transformer.wte = None  # inputs come in as the summed embeddings below
        # GPT-2's position table is read only for `sequence` / `both`: keep it out of DDP's way.
        if config.position == "wavelet":
            self.transformer.wpe.requires_grad_(False)
        self.token = nn.Embedding(config.token_vocab + 1, d)
        self.uses_wavelet_position = config.position in ("wavelet", "both")
        if self.uses_wavelet_position:
            self.bp = nn.Embedding(config.max_planes, d)
            self.row = nn.Embedding(config.size, d)
            self.col = nn.Embedding(config.size, d)
        self.e0 = nn.Embedding(config.e0_max - config.e0_min + 1, d)
        if config.condition == "class":
            self.label = nn.Embedding(config.n_classes + 1, d)  # + the null class
        self.uses_context = config.context == "scan"
        if self.uses_context:
            self.scan_context = nn.ModuleList(nn.Embedding(n, d) for n in config.context_sizes)
        self.uses_component = config.components > 1
        if self.uses_component:
            self.component = nn.Embedding(config.components, d)
        self.head = nn.Linear(d, config.token_vocab, bias=False)
        self.post_init()

    def embed(self, prev_tokens, bp, i1, i2, e0, labels, context=None, component=None):
        """(B, T) ids and positions, (B,) e0 and labels, (B, T, features) context ids (with
        `context: scan`), (B, T) components (colour) -> (B, T, n_embd)."""
        x = self.token(prev_tokens)
        if self.uses_wavelet_position:
            x = x + self.bp(bp) + self.row(i1) + self.col(i2)
        if self.uses_component:
            x = x + self.component(component)
        if self.uses_context:
            for j, table in enumerate(self.scan_context):
                x = x + table(context[..., j])
        per_sequence = self.e0(e0 - self.config.e0_min)
        if self.config.condition == "class":
            per_sequence = per_sequence + self.label(labels)
        return x + per_sequence[:, None, :]

    def embed_positions(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Add GPT-2's absolute position embedding for `sequence` / `both`; index: (B or 1, T)
        sequence positions of x's tokens."""
        if self.config.position == "wavelet":
            return x
        # Past the table (a sample longer than any training sequence) the last row repeats.
        return x + self.transformer.wpe(index.clamp(max=self.config.n_positions - 1))

    @property
    def language(self):
        return from_description(self.config.language)

    @classmethod
    def load(cls, model_dir: str | Path) -> "WaveletGPT":
        """The train stage's saved model, or InputError naming what cannot be read."""
        if not Path(model_dir, "config.json").is_file():
            raise InputError(model_dir, "holds no model (config.json)", "train")
        try:
            model = cls.from_pretrained(model_dir)
            from_description(model.config.language)
        except Exception as error:  # transformers, safetensors and json raise many kinds for a damaged file
            raise InputError(model_dir, f"is not a loadable model ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:300]})", "train") from None
        return model

    def forward(self, prev_tokens, bp, i1, i2, e0, labels, context=None, component=None):
        """Logits (B, T, token_vocab) for the tokens at the given positions (causal)."""
        index = torch.arange(prev_tokens.shape[1], device=prev_tokens.device)[None]
        x = self.transformer.drop(self.embed_positions(
            self.embed(prev_tokens, bp, i1, i2, e0, labels, context, component), index))
        dropout = self.config.attn_pdrop if self.training else 0.0
        for block in self.transformer.h:
            q, k, v = _heads(block, x, self.config.n_head)
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
            x = x + _merge_heads(block, attended)
            x = x + block.mlp(block.ln_2(x))
        return self.head(self.transformer.ln_f(x))


def _heads(block, x: torch.Tensor, n_head: int) -> tuple[torch.Tensor, ...]:
    """A GPT-2 block's queries, keys and values for x (B, T, C), each (B, n_head, T, C / n_head)."""
    batch, length, width = x.shape
    q, k, v = block.attn.c_attn(block.ln_1(x)).split(width, dim=2)
    return tuple(a.view(batch, length, n_head, width // n_head).transpose(1, 2) for a in (q, k, v))


def _merge_heads(block, attended: torch.Tensor) -> torch.Tensor:
    """Attention output (B, n_head, T, C / n_head) -> the block's residual update (B, T, C)."""
    batch, heads, length, head_dim = attended.shape
    merged = attended.transpose(1, 2).reshape(batch, length, heads * head_dim)
    return block.attn.resid_dropout(block.attn.c_proj(merged))


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


class Decoder:
    """Token-by-token forward pass with a preallocated KV cache: the sampler's inner loop.

    Every row has its own cached length, so rows can be at different points of their sequences:
    a finished row can restart on a new sequence (`restart`), rows can be dropped (`keep`), and
    new rows can start from prefixes filled in one forward pass (`prefill`). A step attends over
    the longest row's cache with a mask for the others. It runs the model's own modules
    (embeddings, LayerNorms, projections, MLPs) in the model's dtype; only attention is written
    out, reading one buffer per layer instead of concatenating a cache every step.
    """

    def __init__(self, model: WaveletGPT, batch: int, capacity: int = 2048):
        config = model.config
        self.model = model
        parameter = next(model.parameters())
        self.dtype, self.device = parameter.dtype, parameter.device
        self.heads, self.head_dim = config.n_head, config.n_embd // config.n_head
        shape = (config.n_layer, batch, self.heads, capacity, self.head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros_like(self.keys)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.host_lengths = np.zeros(batch, dtype=np.int64)  # the same, without a device sync

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def _fit(self, length: int) -> None:
        """Grow the cache (by doubling) to hold `length` positions: a sample longer than any
        training sequence, which the capacity was sized for."""
        while self.capacity < length:
            self.keys = torch.cat([self.keys, torch.zeros_like(self.keys)], dim=3)
            self.values = torch.cat([self.values, torch.zeros_like(self.values)], dim=3)

    @torch.no_grad()
    def step(self, prev, bp, i1, i2, e0, labels, context=None, component=None) -> torch.Tensor:
        """(B,) previous tokens and next positions, (B,) e0 and labels, (B, features) context
        ids (with `context: scan`), (B,) components (colour) -> logits (B, token_vocab)."""
        m, position = self.model, self.lengths
        width = int(self.host_lengths.max()) + 1
        self._fit(width)
        rows = torch.arange(len(position), device=self.device)
        context = None if context is None else context[:, None]
        component = None if component is None else component[:, None]
        x = m.embed_positions(m.embed(prev[:, None], bp[:, None], i1[:, None], i2[:, None], e0, labels, context,
                                      component), position[:, None])
        mask = (torch.arange(width, device=self.device)[None] <= position[:, None])[:, None, None]
        for layer, block in enumerate(m.transformer.h):
            q, k, v = _heads(block, x, self.heads)
            self.keys[layer, rows, :, position] = k[:, :, 0]
            self.values[layer, rows, :, position] = v[:, :, 0]
            attended = F.scaled_dot_product_attention(q, self.keys[layer, :, :, :width],
                                                      self.values[layer, :, :, :width], attn_mask=mask)
            x = x + _merge_heads(block, attended)
            x = x + block.mlp(block.ln_2(x))
        self.lengths += 1
        self.host_lengths += 1
        return m.head(m.transformer.ln_f(x))[:, 0]

    @torch.no_grad()
    def prefill(self, rows: torch.Tensor, prev, bp, i1, i2, e0, labels, lengths: np.ndarray, context=None,
                component=None) -> None:
        """Rows `rows` start from prefixes: (n, T) inputs padded at the end (context (n, T,
        features), component (n, T)), `lengths` (n,) the true lengths. One causal forward pass
        fills their cache."""
        m, width = self.model, prev.shape[1]
        self._fit(width)
        x = m.embed_positions(m.embed(prev, bp, i1, i2, e0, labels, context, component),
                              torch.arange(width, device=self.device)[None])
        for layer, block in enumerate(m.transformer.h):
            q, k, v = _heads(block, x, self.heads)
            self.keys[layer, rows, :, :width] = k
            self.values[layer, rows, :, :width] = v
            x = x + _merge_heads(block, F.scaled_dot_product_attention(q, k, v, is_causal=True))
            x = x + block.mlp(block.ln_2(x))
        self.lengths[rows] = torch.as_tensor(lengths, device=self.device)
        self.host_lengths[rows.cpu().numpy()] = lengths

    def restart(self, rows: np.ndarray) -> None:
        """Rows `rows` start new sequences (their old cache is masked out, then overwritten)."""
        self.lengths[torch.as_tensor(rows, device=self.device)] = 0
        self.host_lengths[rows] = 0

    def keep(self, rows: np.ndarray) -> None:
        """Keep only rows `rows`, in that order."""
        index = torch.as_tensor(rows, device=self.device)
        self.keys, self.values = self.keys[:, index], self.values[:, index]
        self.lengths, self.host_lengths = self.lengths[index], self.host_lengths[rows]
