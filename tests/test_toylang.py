"""The exact HMM (checked by brute-force enumeration) and the toy English language built on it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers import AutoTokenizer

from tdlib.data import make_examples
from tdlib.evaluate import nelbo
from tdlib.oracle import HiddenMarkovModel, MarkovChain
from tdlib.sample import sample
from tdlib.toylang import GRAMMAR, ToyLanguage

# ---- the HMM against enumeration --------------------------------------------------------


def sparse_hmm(seed: int = 0) -> HiddenMarkovModel:
    """A random HMM (3 states, 4 tokens) with some exact zeros, so some sequences are impossible."""
    hmm = HiddenMarkovModel.random(num_states=3, vocab_size=4, seed=seed)
    transition = hmm.transition.clone()
    transition[0, 1] = transition[2, 2] = 0.0  # so "0 3" is impossible
    emission = hmm.emission.clone()
    emission[0, 3] = emission[2, 3] = emission[1, 0] = emission[2, 0] = 0.0  # 0 only from state 0, 3 only from 1
    return HiddenMarkovModel(hmm.initial, transition, emission)


def brute_force_prob(hmm: HiddenMarkovModel, x: list[int]) -> float:
    """p(x) by summing over every state path."""
    total = 0.0
    for path in itertools.product(range(hmm.num_states), repeat=len(x)):
        p = hmm.initial[path[0]] * hmm.emission[path[0], x[0]]
        for (r, s), v in zip(itertools.pairwise(path), x[1:]):
            p = p * hmm.transition[r, s] * hmm.emission[s, v]
        total += float(p)
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_forward_matches_enumeration(seed):
    hmm, length = sparse_hmm(seed), 4
    xs = hmm.all_sequences(length)  # (V**L, L)
    p = hmm.log_prob(xs).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    brute = torch.tensor([brute_force_prob(hmm, x) for x in xs.tolist()], dtype=torch.float64)
    assert torch.allclose(p, brute, rtol=1e-10, atol=1e-15)
    assert (brute == 0).any()  # the zeros in the tables make some sequences impossible
    assert torch.equal(hmm.possible(xs), brute > 0)


def test_prefix_probability_sums_out_the_future():
    hmm = sparse_hmm(2)
    full = hmm.all_sequences(4)
    p_full = hmm.log_prob(full).exp().reshape(-1, hmm.vocab_size)  # (V**3, V): last token varies fastest
    prefixes = hmm.all_sequences(3)
    assert torch.allclose(hmm.log_prob(prefixes).exp(), p_full.sum(-1), atol=1e-14)
    masked = torch.cat([prefixes, torch.full((len(prefixes), 2), hmm.mask_id)], dim=1)
    assert torch.allclose(hmm.log_prob(masked), hmm.log_prob(prefixes), atol=1e-12)
    assert torch.equal(hmm.possible(masked), hmm.log_prob(prefixes).exp() > 0)


@pytest.mark.parametrize("hidden", [(0,), (1, 2), (0, 3), (0, 1, 2, 3), (2,), ()])
def test_denoiser_matches_enumerated_conditionals(hidden):
    hmm, length = sparse_hmm(3), 4
    xs = hmm.all_sequences(length)  # (V**L, L)
    p = hmm.log_prob(xs).exp()  # (V**L,)
    given = hmm.sample(6, length, torch.Generator().manual_seed(0))  # possible sequences
    xt = given.clone()
    xt[:, list(hidden)] = hmm.mask_id
    marg = hmm.marginals(xt)  # (6, L, V)
    logits = hmm(xt)  # (6, L, V + 1)
    assert logits.shape == (6, length, hmm.vocab_size + 1)
    assert torch.isinf(logits[..., -1]).all()
    for b in range(len(xt)):
        visible = [i for i in range(length) if i not in hidden]
        agree = (xs[:, visible] == given[b, visible]).all(-1)  # sequences showing the visible tokens
        for i in range(length):
            # p(x_i = v | visible) = sum over agreeing sequences with x_i = v, normalised
            brute = torch.stack([(p * agree * (xs[:, i] == v)).sum() for v in range(hmm.vocab_size)])
            brute = brute / brute.sum()
            assert torch.allclose(marg[b, i], brute, atol=1e-12), (b, i)


def test_sampled_states_explain_the_tokens():
    hmm = sparse_hmm(4)
    x, z = hmm.sample(500, 6, torch.Generator().manual_seed(1), return_states=True)  # (500, 6) each
    assert (hmm.initial[z[:, 0]] > 0).all()
    assert (hmm.transition[z[:, :-1], z[:, 1:]] > 0).all() and (hmm.emission[z, x] > 0).all()
    assert hmm.possible(x).all()
    # the first token's frequencies match p(x_1) = sum_s pi(s) E(s, v)
    p1 = hmm.initial @ hmm.emission
    freq = torch.bincount(x[:, 0], minlength=hmm.vocab_size).double() / len(x)
    assert (freq - p1).abs().max() < 4 * math.sqrt(0.25 / len(x))


def test_markov_chain_is_the_one_word_per_state_hmm():
    chain = MarkovChain.random(num_states=3, seed=4)
    hmm = HiddenMarkovModel(chain.initial, chain.transition, torch.eye(3))
    xs = chain.all_sequences(4)
    assert torch.allclose(chain.log_prob(xs), hmm.log_prob(xs), atol=1e-13)
    # the chain's own product formula
    direct = chain.initial.log()[xs[:, 0]] + chain.transition.log()[xs[:, :-1], xs[:, 1:]].sum(-1)
    assert torch.allclose(chain.log_prob(xs), direct, atol=1e-12)
    xt = xs[::7].clone()
    xt[:, 1:3] = chain.mask_id
    assert torch.allclose(chain(xt), hmm(xt), atol=1e-12)
    assert chain(xt).shape[-1] == chain.num_states + 1 == chain.mask_id + 1


def test_entropy_rate_estimate_matches_the_closed_form_of_a_chain():
    chain = MarkovChain.random(num_states=4, seed=5)
    mu = chain.stationary()
    assert torch.allclose(mu @ chain.transition, mu, atol=1e-12)
    # H = -sum_s mu(s) sum_r A(s, r) log A(s, r)
    exact = float(-(mu[:, None] * chain.transition * chain.transition.log()).sum())
    est = chain.entropy_rate(num=32, length=1000, burn_in=100, seed=1)
    assert abs(est["nats_per_token"] - exact) < 4 * est["nats_per_token_stderr"]
    assert est["nats_per_token_stderr"] < 0.02


# ---- the toy English language -----------------------------------------------------------


@pytest.fixture(scope="module")
def lang() -> ToyLanguage:
    return ToyLanguage()


@pytest.fixture(scope="module")
def tokenizer(lang):
    return lang.tokenizer()


def test_size_and_table(lang):
    assert 20 <= len(lang.states) <= 40
    assert 250 <= len(lang.words) <= 400
    assert all(w == w.lower() and " " not in w for w in lang.words)
    for words, nxt in GRAMMAR.values():
        assert sum(nxt.values()) == pytest.approx(1.0)
        assert len(set(words.split())) == len(words.split())
    assert torch.allclose(lang.hmm.emission[:, lang.special_ids], torch.zeros(1, dtype=torch.float64))
    assert lang.hmm.stationary().min() > 0  # every state is visited in the long run
    assert 3 <= lang.mean_sentence_length() <= 15


def test_words_get_zipf_weights(lang):
    row = lang.hmm.emission[lang.states.index("subj_noun_c")]
    words = GRAMMAR["subj_noun_c"][0].split()
    p = torch.stack([row[lang.vocab[w]] for w in words])
    # weight of rank r is proportional to 1 / r
    assert torch.allclose(p / p[0], 1.0 / torch.arange(1, len(words) + 1, dtype=torch.float64))


def test_sampled_sentences_are_grammatical_and_read_as_sentences(lang):
    lines = lang.sample_lines(200, 30, seed=0)
    assert all(len(line.split()) == 30 for line in lines)
    share = lang.grammatical_share(lines)
    assert share["share"] == 1.0 and share["sentences"] > 800
    complete = [s for line in lines for s in lang.sentences(line)[:-1]]
    assert all(s.endswith(" .") and " . " not in s for s in complete)
    lengths = torch.tensor([len(s.split()) for s in complete], dtype=torch.float64)
    assert lengths.min() >= 3
    # complete sentences are biased short by the cut-off ones, so only a loose check of the mean
    assert 3 <= float(lengths.mean()) <= 15


GOOD = [
    "the foxes run .", "she sings .", "they sing .", "i sing .", "an owl sings .", "a red owl sleeps .",
    "an old fox sleeps .", "she finds an apple .", "she finds him .", "wolves run .",
    "the old fox finds a red key near the river .", "she sings again .",
]
BAD = [
    "the foxes runs .", "a apple falls .", "she sing .", "they sings .", "i sings .", "a owl sings .",
    "a old fox sleeps .", "an red owl sleeps .", "she finds a apple .", "she finds he .", "him sings .",
    "the fox .", "sings .", ".", "the the fox runs .",
]


@pytest.mark.parametrize("sentence", GOOD)
def test_known_good_sentences(lang, sentence):
    assert lang.grammatical(sentence) == [True]


@pytest.mark.parametrize("sentence", BAD)
def test_known_bad_sentences(lang, sentence):
    assert lang.grammatical(sentence) == [False]


def test_a_cut_off_sentence_counts_as_a_beginning(lang):
    assert lang.grammatical("the fox finds the key near") == [True]
    assert lang.grammatical("she sings . the fox finds a") == [True, True]
    assert lang.grammatical("the fox finds the key near .") == [False]
    assert lang.grammatical("she sings . a apple") == [True, False]


def test_sentences_and_their_convention(lang, tokenizer):
    text = "she sings . the foxes runs . a red"
    assert lang.sentences(text) == ["she sings .", "the foxes runs .", "a red"]
    assert lang.grammatical(text) == [True, False, True]
    ids = tokenizer(text)["input_ids"]
    assert lang.grammatical(ids) == [True, False, True]  # [CLS]/[SEP] dropped
    assert lang.grammatical("she sings . . she") == [True, False, True]
    assert lang.grammatical("she [MASK] .") == [False]
    assert lang.grammatical("she dances wonderfully .") == [False]
    out = lang.grammatical_share([text, "they sing ."])
    assert out == {"share": 0.75, "grammatical": 3, "sentences": 4}


def test_agreement_over_every_word_pair(lang):
    """Every word that can follow "a"/"an"/a pronoun/a plural noun at a sentence start agrees with it."""
    words = lang.words
    vowel_words = {w for w in words if w[0] in "aeiou"}
    third = set(GRAMMAR["verb_intr_3sg"][0].split() + GRAMMAR["verb_tr_3sg"][0].split())
    base = set(GRAMMAR["verb_intr_base"][0].split() + GRAMMAR["verb_tr_base"][0].split())
    ids = torch.tensor([lang.vocab[w] for w in words])

    def followers(first: str) -> set[str]:
        x = torch.stack([torch.full_like(ids, lang.vocab[first]), ids], dim=1)  # (W, 2)
        return {w for w, ok in zip(words, lang.hmm.possible(x).tolist()) if ok}

    assert followers("a") and not followers("a") & vowel_words
    assert followers("an") and followers("an") <= vowel_words
    for pron in ("she", "he", "it"):
        assert followers(pron) == third
    for pron in ("they", "we", "you", "i"):
        assert followers(pron) == base
    assert followers("foxes") <= base and followers("fox") <= third
    assert not followers("him") & (third | base)


def test_corpus_is_deterministic_and_splits_differ(lang):
    a = lang.corpus(50, 20, 20, num_words=24, seed=0)
    b = lang.corpus(50, 20, 20, num_words=24, seed=0)
    c = lang.corpus(50, 20, 20, num_words=24, seed=1)
    assert a == b and a != c
    assert [len(a[s]) for s in ("train", "valid", "test")] == [50, 20, 20]
    assert not set(a["train"]) & set(a["valid"]) and not set(a["train"]) & set(a["test"])
    assert not set(a["valid"]) & set(a["test"])
    assert lang.sample_lines(3, 10, seed=5) == lang.sample_lines(3, 10, seed=5)


def test_tokenizer_round_trips_and_survives_save(lang, tokenizer, tmp_path):
    lines = lang.sample_lines(50, 40, seed=2)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for tok in (tokenizer, reloaded):
        assert tok.mask_token_id == lang.mask_id and tok.pad_token_id == lang.pad_id
        assert (tok.cls_token_id, tok.sep_token_id) == (lang.cls_id, lang.sep_id)
        for line in lines:
            ids = tok(line)["input_ids"]
            assert ids == [lang.cls_id, *lang.encode(line), lang.sep_id]
            assert tok.decode(ids, skip_special_tokens=True) == line
        assert tok("the fox [MASK] .", add_special_tokens=False)["input_ids"][2] == lang.mask_id
        assert tok("the zebra", add_special_tokens=False)["input_ids"][1] == lang.unk_id


def test_canvas_denoiser_equals_the_hmm_on_the_content(lang, tokenizer):
    examples = make_examples(lang.sample_lines(8, 10, seed=3) + ["she sings ."], tokenizer, max_length=14)
    x0 = examples.input_ids  # (9, 14) [CLS] words [SEP] [PAD]...
    scorable = lang.content_mask(x0)
    assert torch.equal(scorable, (x0 > max(lang.special_ids)))
    xt = x0.masked_fill(scorable & (torch.arange(14) % 3 == 1), lang.mask_id)
    logits = lang(xt)  # (9, 14, V)
    assert logits.shape == (9, 14, len(lang.vocab)) and logits.dtype == torch.float64
    for b in range(len(xt)):
        n = int(scorable[b].sum())
        expected = lang.hmm.marginals(xt[b, 1 : n + 1][None])[0].log()  # (n, V)
        assert torch.allclose(logits[b, 1 : n + 1], expected, atol=1e-12)
        frame = ~scorable[b]
        assert (logits[b, frame].argmax(-1) == xt[b, frame]).all()
    assert torch.isinf(logits[..., lang.special_ids][scorable]).all()
    assert torch.allclose(lang.log_prob(x0[:8]), lang.hmm.log_prob(x0[:8, 1:11]), atol=1e-12)


def test_nelbo_with_the_exact_denoiser_equals_the_exact_nll(lang, tokenizer):
    examples = make_examples(lang.sample_lines(300, 20, seed=4), tokenizer, max_length=22)
    x0 = examples.input_ids
    exact = lang.nll(x0, examples.num_characters)
    assert exact["tokens"] == 300 * 20
    out = nelbo(lang, x0, lang.content_mask(x0), mask_id=lang.mask_id,
                num_characters=examples.num_characters, samples_per_sequence=2, seed=0, batch_size=100)
    assert out["tokens"] == exact["tokens"]
    assert abs(out["nelbo_bits_per_char"] - exact["bits_per_char"]) < 4 * out["nelbo_bits_per_char_stderr"]
    assert out["nelbo_bits_per_char_stderr"] < 0.02 * exact["bits_per_char"]


def test_sampler_with_the_exact_denoiser_reproduces_the_language(lang, tokenizer):
    num, n = 400, 16
    x_init = torch.full((num, n + 2), lang.mask_id)
    x_init[:, 0], x_init[:, -1] = lang.cls_id, lang.sep_id
    out = sample(lang, x_init, mask_id=lang.mask_id, num_steps=n, strategy="random", sampling="nucleus",
                 top_p=1.0, temperature=1.0, forbidden_ids=tokenizer.all_special_ids,
                 generator=torch.Generator().manual_seed(0))
    final = out.final  # (num, n + 2)
    assert out.num_steps == n and (out.revealed[1:].sum(-1) == 1).all()  # one token per step and row
    assert not (final == lang.mask_id).any()
    assert lang.grammatical_share(list(final))["share"] == 1.0
    # mean exact NLL per token: the sampler's draws against the language's own
    ours = -lang.log_prob(final) / n  # (num,)
    theirs = -lang.hmm.log_prob(lang.sample_ids(num, n, seed=1)) / n  # (num,)
    stderr = math.sqrt(ours.var() / num + theirs.var() / num)
    assert abs(float(ours.mean() - theirs.mean())) < 4 * stderr
    # and the first word's distribution matches p(x_1)
    p1 = lang.hmm.initial @ lang.hmm.emission  # (V,)
    counts = torch.bincount(final[:, 1], minlength=len(lang.vocab)).double()
    top = p1.argmax()
    assert abs(counts[top] / num - p1[top]) < 4 * math.sqrt(p1[top] * (1 - p1[top]) / num)


def test_entropy_rate_and_unigram_entropy(lang):
    est = lang.entropy_rate(num=16, length=600, burn_in=100, seed=0)
    assert 0 < est["bits_per_token_stderr"] < 0.05 and 0 < est["bits_per_char_stderr"] < 0.02
    # context helps: the rate lies well below the unigram entropy, which lies below log2 |words|
    assert est["bits_per_token"] < lang.unigram_entropy() - 1 < math.log2(len(lang.words))
    # bits per char = bits per token / mean characters per token (a word and the space before it)
    chars = float(lang.unigram() @ lang.chars_per_token.double())
    assert 3 < chars < 8
    assert est["bits_per_char"] == pytest.approx(est["bits_per_token"] / chars, rel=0.02)


def test_an_impossible_canvas_has_no_answer_and_gets_uniform_words():
    from tdlib.price import first_clash
    from tdlib.toylang import ToyLanguage

    language = ToyLanguage()
    tokenizer = language.tokenizer()
    mask = language.mask_id
    ids = tokenizer(". .", add_special_tokens=False)["input_ids"]
    start, end = tokenizer.cls_token_id, tokenizer.sep_token_id
    impossible = torch.tensor([[start, *ids, mask, mask, end]])  # ". ." cannot be written: no sentence is empty
    assert not bool(language.possible(impossible)[0])
    logits = language(impossible)[0, 3]  # a masked position of the impossible canvas
    words = language.hmm.emission.sum(0) > 0
    assert torch.equal(logits[words], torch.zeros(int(words.sum()), dtype=logits.dtype))  # every word alike
    assert torch.isinf(logits[~words]).all() and (logits[~words] < 0).all()  # special tokens never
    possible = torch.tensor([[start, mask, mask, mask, mask, end]])
    row = language(possible)[0, 1]
    assert torch.allclose(row.exp().sum(), torch.tensor(1.0, dtype=row.dtype)) and row.max() < 0  # a real answer
    # the pass that made the canvas impossible is on record
    the = tokenizer("the", add_special_tokens=False)["input_ids"][0]
    trajectory = torch.stack([possible, torch.tensor([[start, the, mask, mask, mask, end]]),
                              torch.tensor([[start, the, ids[0], mask, mask, end]])])  # "the ." cannot be written
    assert first_clash(trajectory, language).tolist() == [2]


def test_a_toy_cell_scores_one_generate_call_exactly():
    from tdlib.sweep import toy_cell
    from tdlib.toylang import ToyLanguage

    language = ToyLanguage()
    row = toy_cell(language, language.tokenizer(), language, length=8, num_steps=8, strategy="random",
                   num_samples=6, seed=0, label="one word per pass")
    assert row["setting"] == "one word per pass" and row["passes"] == 8
    assert row["grammatical_share"] == 1.0  # the exact denoiser, one word per pass: the language itself
    assert row["unigram_entropy"] > 0 and isinstance(row["example"], str)
