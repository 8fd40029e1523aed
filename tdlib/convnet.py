"""A small convolutional masked LM: the toy preset's network.

Attention has to discover that neighbours matter before it can use them, and on
the toy language a small transformer (BERT, RoBERTa, ConvBERT, Nystromformer)
sits for many hundreds of steps on the unigram plateau, predicting word
frequencies only (docs/toy_preset.md has the measurements). A convolution sees
its neighbours from the first step. `ConvMaskedLM` is a stack of pre-norm
residual blocks, each a depthwise convolution over ``kernel_size`` positions, a
gated mixing of the channels and an MLP; ``dilations`` widen the receptive field
so distant visible words reach a masked position. It has no positions to learn
(the convolutions are translation equivariant; the canvas's start and end are
marked by its [CLS]/[SEP] tokens and zero padding).

It is a Hugging Face model like any other: registered with ``AutoConfig`` and
``AutoModelForMaskedLM`` under the type ``tdlib-conv`` when this module is
imported (`tdlib.model` imports it), so `save_pretrained`, ``from_pretrained``,
`tdlib.model.load_checkpoint`, the sampler and the evaluator work unchanged. It
is not a general text model: it knows no position beyond its receptive field.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class ConvMaskedLMConfig(PretrainedConfig):
    """Sizes of a `ConvMaskedLM`."""

    model_type = "tdlib-conv"

    def __init__(self, vocab_size: int = 512, hidden_size: int = 128, num_hidden_layers: int = 4,
                 kernel_size: int = 5, dilations: tuple[int, ...] | list[int] | None = None,
                 intermediate_size: int | None = None, max_position_embeddings: int = 512,
                 pad_token_id: int = 0, tie_word_embeddings: bool = True, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.kernel_size = kernel_size
        # dilation of each block's convolution: 1, 2, 4, 1, 2, 4, ... by default
        self.dilations = list(dilations or [2 ** (i % 3) for i in range(num_hidden_layers)])
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.max_position_embeddings = max_position_embeddings  # the longest canvas it is used on
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)


class _Block(nn.Module):
    """x + conv(LN(x)), then x + MLP(LN(x)): a depthwise convolution mixes positions, a gate mixes channels."""

    def __init__(self, config: ConvMaskedLMConfig, dilation: int):
        super().__init__()
        h, k = config.hidden_size, config.kernel_size
        self.norm1, self.norm2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.conv = nn.Conv1d(h, h, k, padding=dilation * (k // 2), dilation=dilation, groups=h)
        self.gate = nn.Linear(h, 2 * h)
        self.mlp = nn.Sequential(nn.Linear(h, config.intermediate_size), nn.GELU(), nn.Linear(config.intermediate_size, h))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        y = self.conv((self.norm1(x) * keep).transpose(1, 2)).transpose(1, 2)  # (B, L, H) padding reads as zero
        a, b = self.gate(y).chunk(2, dim=-1)  # (B, L, H) each
        x = x + a * torch.sigmoid(b)  # gated linear unit
        return x + self.mlp(self.norm2(x))


class ConvMaskedLM(PreTrainedModel):
    """Token embeddings, residual convolution blocks, and a tied output layer with a bias."""

    config_class = ConvMaskedLMConfig
    base_model_prefix = "convnet"
    _tied_weights_keys = {"decoder.weight": "embeddings.weight"}

    def __init__(self, config: ConvMaskedLMConfig):
        super().__init__(config)
        h = config.hidden_size
        self.embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.blocks = nn.ModuleList(_Block(config, d) for d in config.dilations[: config.num_hidden_layers])
        self.norm = nn.LayerNorm(h)
        self.decoder = nn.Linear(h, config.vocab_size)
        nn.init.normal_(self.embeddings.weight, std=h**-0.5)  # tied logits start near 0, not N(0, H)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's own initialisation: no tiny-weight start, so the convolutions are used from the first step."""

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder = value

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The final hidden states, shape (B, L, H)."""
        keep = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        keep = keep[..., None].to(self.embeddings.weight.dtype)  # (B, L, 1)
        x = self.embeddings(input_ids) * keep  # (B, L, H)
        for block in self.blocks:
            x = block(x, keep)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> MaskedLMOutput:
        """Logits (B, L, V); with ``labels``, the mean cross-entropy over labels != -100."""
        logits = self.decoder(self.hidden(input_ids, attention_mask))  # (B, L, V)
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)


AutoConfig.register(ConvMaskedLMConfig.model_type, ConvMaskedLMConfig)
AutoModelForMaskedLM.register(ConvMaskedLMConfig, ConvMaskedLM)
