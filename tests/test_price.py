"""The exact price of parallel reveals, checked by brute-force enumeration; dilated plans; pair information; clashes."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch

from tdlib.oracle import HiddenMarkovModel, MarkovChain
from tdlib.price import (
    first_clash,
    information_by_distance,
    pair_information,
    parallel_price,
    plan_steps,
    possible_share,
    random_plan,
)
from tdlib.schedules import dilated_plan, dilated_plan_for, masked_counts
from tdlib.toylang import ToyLanguage


@pytest.fixture(scope="module")
def toy() -> ToyLanguage:
    return ToyLanguage()


def small_hmm(seed: int = 1) -> HiddenMarkovModel:
    """3 states, 3 tokens, with an exact zero so that some sequences are impossible."""
    hmm = HiddenMarkovModel.random(num_states=3, vocab_size=3, seed=seed)
    transition = hmm.transition.clone()
    transition[0, 2] = 0.0
    return HiddenMarkovModel(hmm.initial, transition, hmm.emission)


@functools.lru_cache(maxsize=4)
def small_table(seed: int = 1, length: int = 5) -> torch.Tensor:
    """`joint_table` of `small_hmm` (seed), computed once."""
    return joint_table(small_hmm(seed), length)


def joint_table(hmm: HiddenMarkovModel, length: int) -> torch.Tensor:
    """p(x_1..L) as a tensor of shape (V,) * L, by summing over every state path (no forward algorithm)."""
    paths = torch.cartesian_prod(*[torch.arange(hmm.num_states)] * length).reshape(-1, length)  # (S**L, L)
    words = torch.cartesian_prod(*[torch.arange(hmm.vocab_size)] * length).reshape(-1, length)  # (V**L, L)
    # p(z) = pi(z_1) prod_k A(z_k-1, z_k); p(x | z) = prod_k E(z_k, x_k)
    p_path = hmm.initial[paths[:, 0]] * hmm.transition[paths[:, :-1], paths[:, 1:]].prod(-1)  # (S**L,)
    p_words = hmm.emission[paths[:, None, :], words[None, :, :]].prod(-1)  # (S**L, V**L)
    return (p_path @ p_words).reshape((hmm.vocab_size,) * length)


def marginal(table: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """The joint of the positions ``keep`` (in increasing order), the others summed out."""
    drop = [d for d in range(table.dim()) if d not in keep]
    return table.sum(drop) if drop else table


def brute_force_price(table: torch.Tensor, plan: list[list[int]]) -> float:
    """KL(p || q) in bits per token, q the product of each pass's single-position conditionals, by enumeration."""
    length = table.dim()
    kl = 0.0
    for x in itertools.product(range(table.shape[0]), repeat=length):
        p = float(table[x])
        if p == 0:
            continue
        q, seen = 1.0, []
        for group in plan:
            for i in group:
                keep = sorted([*seen, i])
                joint = marginal(table, keep)[tuple(x[k] for k in keep)]
                given = marginal(table, sorted(seen))[tuple(x[k] for k in sorted(seen))] if seen else 1.0
                q *= float(joint / given)  # p(x_i | x_seen)
            seen += group
        kl += p * math.log2(p / q)
    return kl / length


def brute_force_information(table: torch.Tensor, visible: dict[int, int], i: int, j: int) -> float:
    """I(x_i; x_j | the visible tokens) in bits, by enumeration of the joint table."""
    index = [visible.get(k, slice(None)) for k in range(table.dim())]
    cond = table[tuple(index)]  # the free positions, in order
    free = [k for k in range(table.dim()) if k not in visible]
    pair = marginal(cond, [free.index(i), free.index(j)])
    pair = pair / pair.sum()
    pa, pb = pair.sum(1, keepdim=True), pair.sum(0, keepdim=True)
    terms = torch.where(pair > 0, pair * (pair / (pa * pb)).log2(), torch.zeros_like(pair))
    return float(terms.sum())


# ---- the price of a plan against enumeration ----------------------------------------------


@pytest.mark.parametrize("plan", [[[0, 2, 4], [1, 3]], [[1], [0, 3, 4], [2]], [[0, 1, 2, 3, 4]], [[4, 0], [2], [1, 3]]])
def test_exact_price_matches_enumeration(plan):
    hmm = small_hmm()
    table = small_table()
    result = parallel_price(hmm, plan, exact=True)
    assert result.exact and result.num_tokens == 5 and result.step_bits.shape == (len(plan),)
    assert result.bits_per_token == pytest.approx(brute_force_price(table, plan), abs=1e-12)
    assert float(result.step_bits.sum()) / 5 == pytest.approx(result.bits_per_token, abs=1e-12)


def test_monte_carlo_price_agrees_with_exact():
    hmm = small_hmm(seed=3)
    plan = [[0, 3], [1, 4], [2]]
    exact = parallel_price(hmm, plan, exact=True).bits_per_token
    estimate = parallel_price(hmm, plan, num_samples=2000, seed=0)
    assert estimate.num_samples == 2000 and not estimate.exact
    assert abs(estimate.bits_per_token - exact) < 4 * estimate.stderr
    assert estimate.step_stderr.shape == (3,) and bool((estimate.step_stderr > 0).all())


def test_plan_as_tensor_of_passes_equals_the_sets():
    hmm = small_hmm()
    sets = [[1], [0, 3, 4], [2]]
    steps = plan_steps(sets)
    assert steps.tolist() == [2, 1, 3, 2, 2]
    assert parallel_price(hmm, steps, exact=True).bits_per_token == pytest.approx(
        parallel_price(hmm, sets, exact=True).bits_per_token, abs=1e-15)


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]])
def test_one_position_per_pass_is_free(order):
    hmm = small_hmm()
    plan = [[i] for i in order]
    assert parallel_price(hmm, plan, exact=True).bits_per_token == pytest.approx(0.0, abs=1e-12)
    assert abs(parallel_price(hmm, plan, num_samples=64).bits_per_token) < 1e-12


def test_all_at_once_costs_the_dependence():
    hmm = small_hmm()
    assert parallel_price(hmm, [list(range(5))], exact=True).bits_per_token > 0.01


def test_random_order_one_per_pass_is_free_and_many_per_pass_is_not(toy):
    free = parallel_price(toy, lambda g: random_plan(8, 8, g), length=8, num_samples=16)
    assert abs(free.bits_per_token) < 1e-10
    paid = parallel_price(toy, lambda g: random_plan(8, 2, g), length=8, num_samples=16)
    assert paid.bits_per_token > 0.05 and paid.step_bits.shape == (2,)


def test_dilated_is_cheaper_than_random_on_the_toy_language(toy):
    length, steps = 24, 6
    dilated = parallel_price(toy, dilated_plan(length, steps), num_samples=40, seed=1)
    rand = parallel_price(toy, lambda g: random_plan(length, steps, g), length=length, num_samples=40, seed=1)
    assert dilated.bits_per_token < rand.bits_per_token - 3 * (dilated.stderr + rand.stderr)


def test_bad_plans_are_refused():
    hmm = small_hmm()
    with pytest.raises(ValueError):
        plan_steps([[0, 1], [1, 2]])  # position 1 twice
    with pytest.raises(ValueError):
        plan_steps([[0], [2]])  # position 1 never
    with pytest.raises(ValueError):
        parallel_price(hmm, lambda g: [[0, 1]])  # no length with a per-draw plan


# ---- plans ---------------------------------------------------------------------------------


def sizes_of(plan: list[list[int]]) -> list[int]:
    return [len(s) for s in plan]


def linear_sizes(n: int, k: int) -> list[int]:
    counts = masked_counts("linear", n, k)
    return [a - b for a, b in zip(counts[:-1], counts[1:])]


@pytest.mark.parametrize("n", [1, 2, 5, 7, 16, 46])
@pytest.mark.parametrize("k", [1, 2, 3, 6, 12, 46, 50])
def test_dilated_plan_covers_once_with_linear_sizes(n, k):
    plan = dilated_plan(n, k)
    assert len(plan) == k
    assert sorted(i for s in plan for i in s) == list(range(n))
    assert sizes_of(plan) == linear_sizes(n, k)
    if k <= n:
        assert all(plan)
    else:
        assert all(len(s) <= 1 for s in plan)


def test_dilated_plan_spreads_each_pass():
    assert dilated_plan(10, 3) == [[1, 4, 7], [0, 3, 6, 9], [2, 5, 8]]  # the docstring's example
    for k in (12, 6):
        gaps = [b - a for s in dilated_plan(46, k) for a, b in itertools.pairwise(sorted(s))]
        assert min(gaps) >= k
    # random passes put neighbours together
    g = torch.Generator().manual_seed(0)
    assert min(b - a for s in random_plan(46, 12, g) for a, b in itertools.pairwise(sorted(s))) == 1


def test_dilated_plan_for_maps_onto_columns():
    cols = [5, 6, 7, 9, 10, 11, 12]  # e.g. after a prompt, around a given word
    plan = dilated_plan_for(cols, 3)
    assert plan == [[cols[i] for i in s] for s in dilated_plan(7, 3)]
    assert sorted(c for s in plan for c in s) == cols
    assert dilated_plan_for(torch.tensor(cols), 3) == plan


def test_random_plan_follows_the_schedule():
    plan = random_plan(46, 12, torch.Generator().manual_seed(1))
    assert sizes_of(plan) == linear_sizes(46, 12)
    assert sorted(i for s in plan for i in s) == list(range(46))


# ---- pair information ----------------------------------------------------------------------


def test_pair_information_matches_enumeration():
    hmm = small_hmm()
    table = small_table()
    m = hmm.mask_id
    for visible in ({}, {2: 1}, {0: 0, 3: 2}):
        canvas = torch.tensor([visible.get(k, m) for k in range(5)])
        free = [k for k in range(5) if k not in visible]
        for i, j in itertools.combinations(free, 2):
            got = float(pair_information(hmm, canvas, i, j))
            assert got == pytest.approx(brute_force_information(table, visible, i, j), abs=1e-10)
            assert float(pair_information(hmm, canvas, j, i)) == pytest.approx(got, abs=1e-12)  # symmetric
            assert got >= -1e-12


def test_pair_information_of_a_chain_and_of_known_positions():
    chain = MarkovChain.random(num_states=3, seed=2)
    m = chain.mask_id
    canvas = torch.tensor([m, m, 1, m, m])
    # a Markov chain: the past and the future are independent given the present
    assert float(pair_information(chain, canvas, 0, 4)) == pytest.approx(0.0, abs=1e-12)
    assert float(pair_information(chain, canvas, 0, 1)) > 0
    assert float(pair_information(chain, canvas, 2, 4)) == 0.0  # position 2 is known
    # vectorised: one value per pair, as the pairs one by one
    batch = pair_information(chain, canvas, torch.tensor([0, 1, 3]), torch.tensor([1, 3, 4]))
    single = [float(pair_information(chain, canvas, i, j)) for i, j in [(0, 1), (1, 3), (3, 4)]]
    assert batch.tolist() == pytest.approx(single, abs=1e-12)


def test_information_fades_with_distance_on_the_toy_language(toy):
    info = information_by_distance(toy, length=24, max_distance=8)
    assert info.shape == (8,) and bool((info >= 0).all())
    assert info[0] > info[2] > info[5] > info[7]
    assert info[0] > 1.0 and info[7] < 0.05
    middle = information_by_distance(toy, length=24, max_distance=3, position=10)
    assert middle[0] == pytest.approx(float(pair_information(toy, torch.full((24,), toy.mask_id), 10, 11)))


# ---- clashes -------------------------------------------------------------------------------


def framed(toy: ToyLanguage, words: list[str | None]) -> list[int]:
    """[CLS] words [SEP] [PAD], None for [MASK]."""
    ids = [toy.mask_id if w is None else toy.vocab[w] for w in words]
    return [toy.cls_id, *ids, toy.sep_id, toy.pad_id]


def test_first_clash_on_hand_made_trajectories(toy):
    steps = [  # canvases before any pass and after passes 1, 2, 3, one row per canvas
        [[None] * 4, [None] * 4, [".", None, None, None]],
        [["she", None, None, None], ["she", "sings", None, None], [".", "she", None, None]],
        [["she", None, "the", "."], ["she", "sings", ".", "they"], [".", "she", "sings", None]],
        [["she", "sees", "the", "."], ["she", "sings", ".", "they"], [".", "she", "sings", "."]],
    ]
    tokens = torch.tensor([[framed(toy, row) for row in canvases] for canvases in steps])  # (S+1, B, L)
    # row 0: "the ." cannot stand together, and both came in pass 2; row 1 stays possible;
    # row 2 starts with ".", which no draw from the start state does
    assert toy.possible(tokens[1]).tolist() == [True, True, False]
    assert first_clash(tokens, toy).tolist() == [2, 0, -1]
    assert possible_share(tokens, toy) == pytest.approx(1 / 3)
    assert possible_share(tokens[-1], toy) == pytest.approx(1 / 3)


def test_first_clash_on_a_plain_hmm_with_another_mask_id():
    hmm = small_hmm()
    x = hmm.sample(1, 4, torch.Generator().manual_seed(0))[0]
    assert bool(hmm.possible(x[None]))
    hidden = -1  # a sampler's own mask id
    before = torch.full((4,), hidden)
    tokens = torch.stack([before, torch.where(torch.arange(4) < 2, x, hidden), x])[:, None]  # (3, 1, 4)
    assert first_clash(tokens, hmm, mask_id=hidden).tolist() == [0]


# ---- figures -------------------------------------------------------------------------------


def test_price_figures_draw():
    import io

    from tdlib.price_plots import information_by_distance_figure, price_by_plan_figure

    fig = information_by_distance_figure(torch.tensor([2.0, 1.0, 0.3, 0.0]), label="toy")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and len(ax.lines[0].get_xdata()) == 3  # the zero cannot sit on a log axis
    fig = price_by_plan_figure({"random": [(12, 0.12, 0.01), (6, 0.28, 0.01)], "dilated": [(6, 0.01, 0.002)]},
                               entropy_rate=2.5)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["entropy rate", "random", "dilated"]
    fig.savefig(io.BytesIO(), format="png")
