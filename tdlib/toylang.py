"""A toy language with exact answers: simple English sentences from a hidden Markov model.

The course's "swiss roll". The hidden states are grammatical roles (a determiner
before a consonant, a plural subject noun, a transitive verb after a singular
subject, ...) and each state emits English words, so the sentences read as
simple English: "the old fox finds a red key near the river . she sings again ."
The whole language is the table `GRAMMAR` below: read it top to bottom. After the
end-of-sentence state "." the next sentence starts, so a long draw is a stream of
sentences; a line of the corpus is one draw of ``num_words`` words from the start,
usually cut off in the middle of its last sentence.

Agreement is built into the states, so it is right in every sentence the model
can produce: "a" only before consonant-initial words and "an" only before
vowel-initial ones; a singular subject (a noun or she/he/it) takes "sings", a
plural one (a noun or they/we/you/i) takes "sing"; subject pronouns (she, they)
only before verbs, object pronouns (her, them) only after verbs and prepositions.

Everything is exact, in float64 (see `tdlib.oracle.HiddenMarkovModel`): sampling,
log p(x), the denoiser p(x_i | visible tokens) on tokenized canvases
(`ToyLanguage.__call__`, usable with `tdlib.sample.sample` and
`tdlib.evaluate.nelbo`), and grammaticality (does the language give a sentence
probability > 0). The entropy rate is estimated (with a standard error) from
exact log-probabilities of long draws, because the model is not unifilar: "the"
opens both singular and plural noun phrases, so the state is not a function of
the words. `ToyLanguage.tokenizer` builds a word-level Hugging Face tokenizer whose
ids are the model's token ids.

This module is not a grammar of English: it has no tense, no questions, no
meaning (a fox may carry an island). It trains nothing and reads no files.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch

from tdlib.oracle import HiddenMarkovModel

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4, never emitted
END_WORD = "."

# ---- words, most frequent first (weight of the word of rank r in a state ~ 1 / r**ZIPF) ----

ZIPF = 1.0

ANIMALS_C = "fox dog cat bird girl boy man woman child mouse horse rabbit frog bear wolf duck king queen farmer teacher sailor goat"
ANIMALS_C_PL = "foxes dogs cats birds girls boys men women children mice horses rabbits frogs bears wolves ducks kings queens farmers teachers sailors goats"
ANIMALS_V = "owl eagle ant elephant otter ape uncle aunt artist actor"
ANIMALS_V_PL = "owls eagles ants elephants otters apes uncles aunts artists actors"
THINGS_C = "key river tree house ball book box stone road garden hill door window cake bell boat hat cup flower bridge lamp ship"
THINGS_C_PL = "keys rivers trees houses balls books boxes stones roads gardens hills doors windows cakes bells boats hats cups flowers bridges lamps ships"
THINGS_V = "apple egg orange umbrella island arrow oak acorn"
THINGS_V_PL = "apples eggs oranges umbrellas islands arrows oaks acorns"
ADJECTIVES_C = "red big small little happy green blue brown quiet tiny tall dark cold warm young soft lazy clever brave sleepy white black wild"
ADJECTIVES_V = "old angry empty open ugly eager icy"
INTRANSITIVE_3SG = "sings runs sleeps jumps swims laughs dances walks smiles waits cries hides flies rests plays falls"
INTRANSITIVE_BASE = "sing run sleep jump swim laugh dance walk smile wait cry hide fly rest play fall"
TRANSITIVE_3SG = "finds sees likes takes wants carries watches loves helps follows holds eats pushes catches builds chases"
TRANSITIVE_BASE = "find see like take want carry watch love help follow hold eat push catch build chase"
DETERMINERS_SG = "the this that every my your his our their"
DETERMINERS_PL = "the some many two three these those my our their all"

# ---- where a clause may start: the start state, after "." and after a conjunction ----

CLAUSE_START = {
    "subj_det": 0.25, "subj_a": 0.12, "subj_an": 0.04,
    "subj_det_pl": 0.12, "subj_adj_pl": 0.02, "subj_noun_pl": 0.05,
    "pron_3sg": 0.22, "pron_base": 0.18,
}  # fmt: skip

# ---- the language: state -> (its words, most frequent first; next state -> probability) ----

GRAMMAR: dict[str, tuple[str, dict[str, float]]] = {
    # subject, singular: "the old fox", "a red fox", "an owl", "an old owl"
    "subj_det":     (DETERMINERS_SG, {"subj_adj_c": 0.20, "subj_adj_v": 0.08, "subj_noun_c": 0.57, "subj_noun_v": 0.15}),
    "subj_a":       ("a",            {"subj_adj_c": 0.30, "subj_noun_c": 0.70}),
    "subj_an":      ("an",           {"subj_adj_v": 0.30, "subj_noun_v": 0.70}),
    "subj_adj_c":   (ADJECTIVES_C,   {"subj_noun_c": 0.75, "subj_noun_v": 0.25}),
    "subj_adj_v":   (ADJECTIVES_V,   {"subj_noun_c": 0.75, "subj_noun_v": 0.25}),
    "subj_noun_c":  (ANIMALS_C,      {"verb_intr_3sg": 0.45, "verb_tr_3sg": 0.55}),
    "subj_noun_v":  (ANIMALS_V,      {"verb_intr_3sg": 0.45, "verb_tr_3sg": 0.55}),
    # subject, plural: "the foxes", "some little owls", "wolves"
    "subj_det_pl":  (DETERMINERS_PL, {"subj_adj_pl": 0.30, "subj_noun_pl": 0.70}),
    "subj_adj_pl":  (f"{ADJECTIVES_C} {ADJECTIVES_V}", {"subj_noun_pl": 1.0}),
    "subj_noun_pl": (f"{ANIMALS_C_PL} {ANIMALS_V_PL}", {"verb_intr_base": 0.45, "verb_tr_base": 0.55}),
    # subject pronouns: "she sings", "they sing", "i sing"
    "pron_3sg":     ("she he it",       {"verb_intr_3sg": 0.45, "verb_tr_3sg": 0.55}),
    "pron_base":    ("they we you i",   {"verb_intr_base": 0.45, "verb_tr_base": 0.55}),
    # verbs: the form agrees with the subject; a transitive verb takes an object
    "verb_intr_3sg":  (INTRANSITIVE_3SG,  {".": 0.45, "adverb": 0.25, "prep": 0.20, "conj": 0.10}),
    "verb_intr_base": (INTRANSITIVE_BASE, {".": 0.45, "adverb": 0.25, "prep": 0.20, "conj": 0.10}),
    "verb_tr_3sg":    (TRANSITIVE_3SG,    {"obj_det": 0.35, "obj_a": 0.20, "obj_an": 0.06, "obj_det_pl": 0.12, "obj_noun_pl": 0.05, "obj_pron": 0.22}),
    "verb_tr_base":   (TRANSITIVE_BASE,   {"obj_det": 0.35, "obj_a": 0.20, "obj_an": 0.06, "obj_det_pl": 0.12, "obj_noun_pl": 0.05, "obj_pron": 0.22}),
    # object (after a verb or a preposition): "a red key", "an apple", "the trees", "him"
    "obj_det":      (DETERMINERS_SG, {"obj_adj_c": 0.20, "obj_adj_v": 0.08, "obj_noun_c": 0.57, "obj_noun_v": 0.15}),
    "obj_a":        ("a",            {"obj_adj_c": 0.30, "obj_noun_c": 0.70}),
    "obj_an":       ("an",           {"obj_adj_v": 0.30, "obj_noun_v": 0.70}),
    "obj_adj_c":    (ADJECTIVES_C,   {"obj_noun_c": 0.75, "obj_noun_v": 0.25}),
    "obj_adj_v":    (ADJECTIVES_V,   {"obj_noun_c": 0.75, "obj_noun_v": 0.25}),
    "obj_noun_c":   (f"{THINGS_C} {ANIMALS_C}", {".": 0.50, "prep": 0.15, "adverb": 0.20, "conj": 0.15}),
    "obj_noun_v":   (f"{THINGS_V} {ANIMALS_V}", {".": 0.50, "prep": 0.15, "adverb": 0.20, "conj": 0.15}),
    "obj_det_pl":   (DETERMINERS_PL, {"obj_adj_pl": 0.30, "obj_noun_pl": 0.70}),
    "obj_adj_pl":   (f"{ADJECTIVES_C} {ADJECTIVES_V}", {"obj_noun_pl": 1.0}),
    "obj_noun_pl":  (f"{THINGS_C_PL} {ANIMALS_C_PL} {THINGS_V_PL} {ANIMALS_V_PL}", {".": 0.50, "prep": 0.15, "adverb": 0.20, "conj": 0.15}),
    "obj_pron":     ("him her them it me us you", {".": 0.50, "prep": 0.15, "adverb": 0.20, "conj": 0.15}),
    # the rest of a clause: "near the river", "again", "and ...", "."
    "prep":         ("near under with behind in on over beside", {"obj_det": 0.60, "obj_a": 0.20, "obj_an": 0.05, "obj_det_pl": 0.10, "obj_pron": 0.05}),
    "adverb":       ("again today slowly quietly now often too happily loudly here soon", {".": 0.75, "conj": 0.15, "prep": 0.10}),
    "conj":         ("and but so because", CLAUSE_START),
    ".":            (END_WORD,       CLAUSE_START),
}  # fmt: skip


def _split_words(words: str | Sequence[str]) -> list[str]:
    """Words of a text (whitespace-separated) or the list itself."""
    return words.split() if isinstance(words, str) else list(words)


class ToyLanguage:
    """The language of `GRAMMAR` as an HMM over token ids: [PAD] [UNK] [CLS] [SEP] [MASK], then the words."""

    def __init__(
        self,
        grammar: dict[str, tuple[str, dict[str, float]]] = GRAMMAR,
        start: dict[str, float] = CLAUSE_START,
        zipf: float = ZIPF,
    ):
        self.states = list(grammar)
        index = {s: k for k, s in enumerate(self.states)}
        self.words: list[str] = []
        for text, _ in grammar.values():
            self.words += [w for w in text.split() if w not in self.words]
        self.vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *self.words])}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(len(SPECIAL_TOKENS))
        num_states, vocab_size = len(self.states), len(self.vocab)
        for name, row in [("start", start), *((s, nxt) for s, (_, nxt) in grammar.items())]:
            if abs(sum(row.values()) - 1.0) > 1e-9 or not set(row) <= set(index):
                raise ValueError(f"row {name!r}: probabilities must sum to 1 over known states, got {row}")
        initial = torch.zeros(num_states, dtype=torch.float64)  # (S,)
        transition = torch.zeros(num_states, num_states, dtype=torch.float64)  # (S, S)
        emission = torch.zeros(num_states, vocab_size, dtype=torch.float64)  # (S, V)
        for s, p in start.items():
            initial[index[s]] = p
        for k, (text, nxt) in enumerate(grammar.values()):
            for s, p in nxt.items():
                transition[k, index[s]] = p
            for rank, w in enumerate(text.split(), start=1):
                # Zipf: the word of rank r in a state has weight 1 / r**zipf
                emission[k, self.vocab[w]] = 1.0 / rank**zipf
        self.hmm = HiddenMarkovModel(initial, transition, emission, mask_id=self.mask_id)
        self._frame_ids = torch.tensor([self.pad_id, self.cls_id, self.sep_id])
        # a token covers its word and the space before it (as tdlib.data counts characters)
        self.chars_per_token = torch.tensor([0] * len(SPECIAL_TOKENS) + [len(w) + 1 for w in self.words])  # (V,)

    @property
    def special_ids(self) -> list[int]:
        """Ids of [PAD] [UNK] [CLS] [SEP] [MASK]: no state emits them."""
        return list(range(len(SPECIAL_TOKENS)))

    # ---- text ----------------------------------------------------------------------------

    def encode(self, text: str | Sequence[str]) -> list[int]:
        """Token ids of the words of ``text`` (unknown words -> [UNK]); no special tokens added."""
        return [self.vocab.get(w, self.unk_id) for w in _split_words(text)]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The words of ``ids`` joined by single spaces; [PAD] [CLS] [SEP] are dropped."""
        tokens = [*SPECIAL_TOKENS, *self.words]
        frame = {self.pad_id, self.cls_id, self.sep_id}
        return " ".join(tokens[i] for i in torch.as_tensor(ids).tolist() if i not in frame)

    def sample_ids(self, num: int, num_words: int, seed: int = 0) -> torch.Tensor:
        """``num`` draws of ``num_words`` token ids from the start state, shape (num, num_words)."""
        return self.hmm.sample(num, num_words, torch.Generator().manual_seed(int(seed)))

    def sample_lines(self, num: int, num_words: int, seed: int = 0) -> list[str]:
        """``num`` lines, each one draw of ``num_words`` words from the start state; fixed by ``seed``."""
        return [self.decode(row) for row in self.sample_ids(num, num_words, seed)]

    def corpus(self, num_train: int, num_valid: int, num_test: int, num_words: int = 32, seed: int = 0) -> dict[str, list[str]]:
        """Train/valid/test lines: independent draws, each split from its own seed derived from ``seed``."""
        sizes = {"train": num_train, "valid": num_valid, "test": num_test}
        return {
            split: self.sample_lines(n, num_words, zlib.crc32(f"toylang/{split}/{seed}".encode()))
            for split, n in sizes.items()
        }

    def tokenizer(self, model_max_length: int = 512):
        """A word-level `transformers.PreTrainedTokenizerFast` whose ids are this language's ids."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        backend = Tokenizer(models.WordLevel(vocab=self.vocab, unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)],
        )
        # joins words with single spaces ("##" never starts a word; no clean-up of " .")
        backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=model_max_length,
            clean_up_tokenization_spaces=False,
        )

    # ---- the exact denoiser on tokenized canvases -----------------------------------------

    def _content(self, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each row's content (the run of words/[MASK] after [CLS]) moved to the left.

        Returns tokens (B, L) padded with [MASK] (summed out, so exact), ``run``
        (B, L) true on real content, and ``cols`` (B, L), the canvas column of each.
        """
        length = xt.shape[1]
        is_content = ~torch.isin(xt, self._frame_ids.to(xt.device))  # (B, L)
        start = is_content.int().argmax(1)  # (B,) first content column
        cols = start[:, None] + torch.arange(length, device=xt.device)  # (B, L)
        inside = cols < length
        cols = cols.clamp(max=length - 1)
        run = (is_content.gather(1, cols) & inside).int().cumprod(1).bool()  # (B, L) the first run only
        tokens = torch.where(run, xt.gather(1, cols), self.mask_id)  # (B, L)
        return tokens, run, cols

    def content_mask(self, xt: torch.Tensor) -> torch.Tensor:
        """True at content positions of canvases ``[CLS] content [SEP] [PAD]...``, shape (B, L)."""
        _, run, cols = self._content(xt.cpu())
        mask = torch.zeros(xt.shape, dtype=torch.bool)  # (B, L)
        rows, j = run.nonzero(as_tuple=True)
        mask[rows, cols[rows, j]] = True
        return mask.to(xt.device)

    def __call__(self, xt: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Exact denoiser: log p(x_i = v | visible content) as logits (B, L, V), float64.

        Content positions holding [MASK] get the exact conditional; every other
        position (visible words, [CLS], [SEP], [PAD]) a row that is 0 at its own
        token and -inf elsewhere. ``attention_mask`` is not needed ([PAD] marks padding).

        An *impossible* canvas (its visible words have probability 0, as when one
        pass reveals two words that cannot stand together) has no exact answer:
        p(x_i | visible) is 0/0. Its masked positions then get logits 0 for every
        word and -inf for the special tokens (uniform over the words), so a sampler can finish the canvas; what it writes there is
        noise, not the language. Grade exact runs by `tdlib.price.first_clash` and
        `tdlib.price.possible_share`, never by text written after the clash.
        """
        device, xt = xt.device, xt.cpu()
        tokens, run, cols = self._content(xt)
        probs = self.hmm.marginals(tokens)  # (B, L, V) content columns; rows of 0 or NaN on an impossible canvas
        no_answer = ~(probs.sum(-1) > 0)  # (B, L) masked positions of impossible canvases
        logp = probs.log()
        if no_answer.any():
            words = self.hmm.emission.sum(0) > 0  # (V,) tokens some state emits
            logp[no_answer] = torch.zeros_like(logp[0, 0]).masked_fill(~words, float("-inf"))  # uniform over words
        logits = torch.nn.functional.one_hot(xt, len(self.vocab)).double().log()  # (B, L, V)
        rows, j = run.nonzero(as_tuple=True)
        logits[rows, cols[rows, j]] = logp[rows, j]
        return logits.to(device)

    def log_prob(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Exact log p(content) in nats of canvases (B, L), float64, shape (B,); [MASK] positions are summed out."""
        tokens, _, _ = self._content(input_ids.cpu())
        return self.hmm.log_prob(tokens)

    def possible(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Whether the visible content words of canvases (B, L) can stand together (p > 0), exactly, shape (B,).

        [MASK] positions may hold any word; [CLS] [SEP] [PAD] are the frame, not content.
        """
        tokens, _, _ = self._content(input_ids.cpu())
        return self.hmm.possible(tokens).to(input_ids.device)

    def nll(self, input_ids: torch.Tensor, num_characters: int) -> dict:
        """Exact negative log-likelihood of tokenized examples: bits per character and nats per token."""
        nats = float(-self.log_prob(input_ids).sum())
        tokens = int(self._content(input_ids.cpu())[1].sum())
        return {
            "bits_per_char": nats / math.log(2.0) / num_characters,
            "nats_per_token": nats / tokens,
            "nats": nats,
            "tokens": tokens,
            "characters": int(num_characters),
        }

    # ---- long-run statistics -------------------------------------------------------------

    def entropy_rate(self, num: int = 64, length: int = 2000, burn_in: int = 200, seed: int = 0) -> dict:
        """Entropy rate per token and per character of the sentence stream, estimated, with standard errors.

        Not a closed form: the model is not unifilar, so the rate is estimated from
        exact log-probabilities of ``num`` long draws (Shannon-McMillan-Breiman;
        see `HiddenMarkovModel.entropy_rate`). A token's characters are its word
        and the space before it.
        """
        est = self.hmm.entropy_rate(num, length, burn_in, seed, cost=self.chars_per_token)
        return {
            "nats_per_token": est["nats_per_token"],
            "nats_per_token_stderr": est["nats_per_token_stderr"],
            "bits_per_token": est["nats_per_token"] / math.log(2.0),
            "bits_per_token_stderr": est["nats_per_token_stderr"] / math.log(2.0),
            "bits_per_char": est["nats_per_unit"] / math.log(2.0),
            "bits_per_char_stderr": est["nats_per_unit_stderr"] / math.log(2.0),
            "tokens": est["tokens"],
        }

    def unigram(self) -> torch.Tensor:
        """Long-run frequency of each token id, mu @ E, shape (V,)."""
        return self.hmm.stationary() @ self.hmm.emission

    def unigram_entropy(self) -> float:
        """Entropy of the long-run token frequencies, in bits (what a model without context pays)."""
        p = self.unigram()
        p = p[p > 0]
        # H = -sum_v p(v) log2 p(v)
        return float(-(p * p.log2()).sum())

    def mean_sentence_length(self) -> float:
        """Mean tokens per sentence, "." included: 1 / mu(".") for the stationary state distribution mu."""
        return float(1.0 / self.hmm.stationary()[self.states.index(END_WORD)])

    # ---- grammaticality ------------------------------------------------------------------

    def _words(self, sample: str | Sequence[int] | torch.Tensor) -> list[str]:
        """The words of a text, or of token ids with [PAD] [CLS] [SEP] dropped."""
        return sample.split() if isinstance(sample, str) else self.decode(sample).split()

    def sentences(self, sample: str | Sequence[int] | torch.Tensor) -> list[str]:
        """The sentences of a text or of token ids, split after each "."; a last one may lack its "."."""
        out, current = [], []
        for w in self._words(sample):
            current.append(w)
            if w == END_WORD:
                out.append(" ".join(current))
                current = []
        if current:
            out.append(" ".join(current))
        return out

    def grammatical(self, sample: str | Sequence[int] | torch.Tensor) -> list[bool]:
        """For each sentence of ``sample``: can the language produce it (probability > 0)?

        The convention: every sentence starts at the clause-start distribution
        (the start state of a draw, which is also where "." leads, so sentences
        are judged one by one). A sentence ending in "." must be a complete
        sentence; a last sentence without "." (cut off by the end of the canvas)
        counts when it is a possible beginning of a sentence. Unknown words,
        [UNK] and [MASK] make a sentence ungrammatical.
        """
        found = self.sentences(sample)
        if not found:
            return []
        # the padding sums the future out: a prefix is possible iff some continuation is
        return self.hmm.possible(self._padded([self.encode(s) for s in found])).tolist()

    def grammatical_share(self, samples: Sequence[str | Sequence[int] | torch.Tensor]) -> dict:
        """Share of grammatical sentences over a batch of samples, with the counts behind it."""
        verdicts = [ok for sample in samples for ok in self.grammatical(sample)]
        good = sum(verdicts)
        return {
            "share": good / len(verdicts) if verdicts else math.nan,
            "grammatical": good,
            "sentences": len(verdicts),
        }

    def text_log_probs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact log p of each text as one draw from the start, in nats (-inf: impossible), and its word counts."""
        ids = [self.encode(text) for text in texts]
        if not ids:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
        return self.hmm.log_prob(self._padded(ids)), torch.tensor([len(row) for row in ids])  # (N,), (N,)

    def _padded(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Rows of token ids as one tensor (N, longest), padded with [MASK], which sums those positions out.

        A [MASK] written inside a row reads as [UNK], which the language never emits: text holding
        one is impossible, not partly unknown.
        """
        rows = [[self.unk_id if i == self.mask_id else i for i in row] for row in ids]
        longest = max([1, *(len(row) for row in rows)])
        return torch.tensor([row + [self.mask_id] * (longest - len(row)) for row in rows])  # (N, longest)

    def score(self, texts: Sequence[str]) -> dict[str, float]:
        """Exact scores of samples: the share of grammatical sentences, of possible texts, and the true NLL per word.

        ``true_nll_per_token`` is -log p(text) / words in nats, pooled over the
        texts the language can produce at all (an impossible one has p = 0);
        ``possible_share`` says how many those are.
        """
        logp, words = self.text_log_probs(texts)  # (N,), (N,)
        possible = torch.isfinite(logp)  # (N,)
        counted = int(words[possible].sum())
        return {
            "grammatical_share": self.grammatical_share(texts)["share"],
            "possible_share": float(possible.double().mean()),
            # -sum log p(text) / sum words, over the possible texts
            "true_nll_per_token": float(-logp[possible].sum() / counted) if counted else math.nan,
        }
