"""The training loop: checkpoints, metrics, exact resume, overfitting, distributed."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tdlib.checkpoint import validate_model_dir
from tdlib.data import make_examples
from tdlib.errors import UserError
from tdlib.heads import (
    freeze_bottom,
    head_parameters,
    init_head_transform,
    init_output_bias,
    param_groups,
    set_dropout,
)
from tdlib.masking import MaskingCollator, content_ids
from tdlib.model import build_causal_model, load_checkpoint
from tdlib.objectives import MaskedDiffusionLoss
from tdlib.train import PRESETS, TrainConfig, load_or_train, lr_at, preset, train

REPO = Path(__file__).resolve().parents[1]


def smoke(out, **kw) -> TrainConfig:
    values = dict(output_dir=str(out), max_steps=8, eval_steps=4, save_steps=4)
    values.update(kw)
    return preset("smoke", **values)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    seen = []
    result = train(smoke(out), progress=False, callbacks=[seen.append])
    return out, result, seen


def test_load_or_train_loads_a_finished_run_and_trains_only_when_needed(finished_run, tmp_path):
    out, _, _ = finished_run
    stamp = (out / "metrics.jsonl").stat().st_mtime_ns
    model, tokenizer = load_or_train(out)
    assert not model.training and tokenizer.mask_token_id is not None
    assert (out / "metrics.jsonl").stat().st_mtime_ns == stamp  # loaded, not retrained
    fresh = tmp_path / "fresh"
    (fresh / "checkpoint-2").mkdir(parents=True)  # an interrupted run without a final model
    model, _ = load_or_train(fresh, max_steps=2, eval_steps=2, save_steps=2)
    assert validate_model_dir(fresh / "final-model") is None
    assert same(weights(fresh / "final-model"), {k: v.contiguous() for k, v in model.state_dict().items()
                                                 if k in weights(fresh / "final-model")})


def test_smoke_run_writes_checkpoints_and_metrics(finished_run):
    out, result, seen = finished_run
    assert result.final_step == 8
    assert validate_model_dir(out / "final-model") is None
    assert validate_model_dir(out / "checkpoint-4") is None
    assert (out / "checkpoint-4" / "trainer_state.pt").is_file()
    assert (out / "latest").read_text().strip() == "checkpoint-4"
    assert not (out / "latest").is_symlink()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records == [json.loads(json.dumps(r)) for r in seen]  # callbacks see what the file holds
    trains = [r for r in records if "loss" in r]
    assert [r["step"] for r in trains] == [2, 4, 6, 8]
    assert all({"loss", "lr", "tokens_per_s"} <= r.keys() for r in trains)
    evals = [r for r in records if "eval_loss_by_ratio" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert set(evals[0]["eval_loss_by_ratio"]) == {"1.0", "0.9", "0.8", "0.7", "0.6", "0.5", "0.4", "0.3", "0.2", "0.1"}
    assert 0 < evals[-1]["nelbo_bits_per_char"] < 20


def test_existing_run_is_not_overwritten_without_resume(finished_run):
    out, _, _ = finished_run
    with pytest.raises(UserError, match="--resume"):
        train(smoke(out), progress=False)


def test_stopped_run_resumes_to_identical_weights(finished_run, tmp_path):
    out, _, _ = finished_run
    stopped = tmp_path / "stopped"
    train(smoke(stopped, time_budget_s=0.0), progress=False)  # stops (and saves) after one step
    assert (stopped / "latest").read_text().strip() == "checkpoint-1"
    train(smoke(stopped), resume=True, progress=False)
    assert same(weights(stopped / "final-model"), weights(out / "final-model"))
    steps = [json.loads(line)["step"] for line in (stopped / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [2, 4, 6, 8]  # nothing lost, nothing twice


def test_a_budget_that_runs_out_at_the_last_step_is_a_normal_end(tmp_path):
    out = tmp_path / "one"
    result = train(smoke(out, max_steps=1, time_budget_s=0.0), progress=False)
    events = [json.loads(line).get("event") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert not result.stopped_early and "stopped" not in events and events[-1] == "end"
    assert (out / "final-model").is_dir() and not (out / "checkpoint-1").exists()


def _train_cmd(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "tdlib", "train", "--preset", "smoke", "--max-steps", str(steps),
            "--save-steps", "3", "--eval-steps", "100", "--output-dir", str(out), "--quiet"]


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    # enough steps after the first checkpoint that even a fast machine is still training when the
    # kill lands (a smoke step is ~15 ms there), and a poll much shorter than one step
    steps = 30
    subprocess.run(_train_cmd(full, steps), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_train_cmd(killed, steps), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "latest").exists(), "the run never wrote its first checkpoint"
    assert not (killed / "final-model").exists()
    subprocess.run(_train_cmd(killed, steps) + ["--resume"], check=True, env=env, capture_output=True)
    assert same(weights(killed / "final-model"), weights(full / "final-model"))


def test_truncated_newest_checkpoint_is_skipped_on_resume(finished_run, tmp_path):
    out, _, _ = finished_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.rmtree(run / "final-model")
    # a second, damaged checkpoint named as newest
    shutil.copytree(run / "checkpoint-4", run / "checkpoint-6")
    w = run / "checkpoint-6" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    (run / "latest").write_text("checkpoint-6\n")
    from tdlib.checkpoint import resolve_checkpoint_for_resume

    assert resolve_checkpoint_for_resume(run).name == "checkpoint-4"


def test_loss_falls_when_overfitting_one_batch(scratch):
    model, tokenizer = scratch
    model = type(model)(model.config)  # fresh weights
    texts = ["the cat sat on the mat and the dog sat on the log"] * 4
    enc = tokenizer(texts, padding="max_length", max_length=24, return_tensors="pt")
    examples = [{"input_ids": i, "attention_mask": a} for i, a in zip(enc["input_ids"], enc["attention_mask"])]
    batch = MaskingCollator(tokenizer, ratios=[0.5], prefix_length=0, seed=0)(examples)
    loss_fn = MaskedDiffusionLoss(model, "uniform")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = loss_fn(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_elbo_weighting_divides_by_t(scratch):
    model, tokenizer = scratch
    model = type(model)(model.config).eval()  # no dropout: both losses see the same logits
    enc = tokenizer(["one two three four five six seven"] * 2, return_tensors="pt")
    examples = [{"input_ids": i, "attention_mask": a} for i, a in zip(enc["input_ids"], enc["attention_mask"])]
    batch = MaskingCollator(tokenizer, ratios=[0.5], prefix_length=0, seed=1)(examples)
    with torch.no_grad():
        uniform = MaskedDiffusionLoss(model, "uniform")(batch)
        elbo = MaskedDiffusionLoss(model, "elbo")(batch)
    masked = (batch["labels"] != -100).sum()
    expected = uniform * masked / 0.5 / batch["scorable"].sum()
    assert torch.allclose(elbo, expected, rtol=1e-5)


class _CountDependentModel(torch.nn.Module):
    """Logits whose cross-entropy grows with the number of masked tokens in the row: a bound with known value."""

    def __init__(self, mask_id: int, vocab: int):
        super().__init__()
        self.mask_id, self.vocab = mask_id, vocab

    def forward(self, input_ids, attention_mask=None):
        m = (input_ids == self.mask_id).sum(1, keepdim=True).float()  # (B, 1)
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., 0] = m  # class 0 gains weight with m, at every position of the row
        return type("Out", (), {"logits": logits})()


def test_count_weighting_estimates_the_same_bound_as_elbo_with_less_variance():
    # n scorable tokens, labels never class 0: CE of a masked token is f(m) = log(e^m + V - 1) when m are masked.
    # Both estimators have expectation sum_{m=1..n} f(m) / n per token under t ~ U(0, 1) (LEARNING_GUIDE §2).
    n, vocab, mask_id, draws = 8, 16, 15, 4000
    model = _CountDependentModel(mask_id, vocab)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(1, mask_id, (draws, n), generator=g)
    t = torch.rand(draws, generator=g)
    where = torch.rand(draws, n, generator=g) < t[:, None]
    xt = torch.where(where, torch.full_like(x0, mask_id), x0)
    labels = torch.where(where, x0, torch.full_like(x0, -100))
    scorable = torch.ones(draws, n, dtype=torch.bool)
    exact = sum(math.log(math.exp(m) + vocab - 1) for m in range(1, n + 1)) / n
    groups = 80  # batch means of 50 rows each (equal n: a batch's loss is the mean of its rows' estimates)
    spread = {}
    for weighting in ("elbo", "count"):
        loss = MaskedDiffusionLoss(model, weighting)
        means = torch.stack([loss({"input_ids": xt[rows], "attention_mask": None, "labels": labels[rows],
                                   "t": t[rows], "scorable": scorable[rows]})
                             for rows in torch.arange(draws).chunk(groups)])
        spread[weighting] = means.std().item()
        assert abs(means.mean().item() - exact) < 4 * spread[weighting] / math.sqrt(groups), (weighting, means.mean())
    assert spread["count"] < 0.9 * spread["elbo"]  # no 1/t blow-up of a chance count at small t


def test_freeze_bottom_stops_the_embeddings_and_lowest_layers_from_training(scratch):
    config = copy.deepcopy(scratch[0].config)
    config.num_hidden_layers = 2
    model = type(scratch[0])(config).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = freeze_bottom(model, embeddings=True, layers=1)
    assert frozen == sum(p.numel() for p in model.parameters() if not p.requires_grad) > 0
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-2)
    x = torch.randint(5, 100, (2, 16))
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert not any(k.startswith("roberta.embeddings.") or ".layer.0." in k for k in changed)
    assert any(".layer.1." in k for k in changed) and "lm_head.bias" in changed  # the rest still trains
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied: frozen too
    with pytest.raises(UserError, match="freeze-layers"):
        freeze_bottom(model, layers=model.config.num_hidden_layers + 1)


def test_unigram_head_init_makes_the_first_guess_the_unigram_distribution(scratch):
    model, tokenizer = scratch
    model = type(model)(model.config).eval()
    lines = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"]
    examples = make_examples(lines, tokenizer, 16, "lines")
    assert init_output_bias(model, content_ids(examples, tokenizer))
    bias = model.get_output_embeddings().bias
    ids = examples.input_ids[examples.attention_mask.bool()]
    content = ids[~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))]
    counts = torch.bincount(content, minlength=bias.numel()).double() + 0.5
    expected = torch.log_softmax(counts.log(), 0)
    assert torch.allclose(torch.log_softmax(bias.double(), 0), expected, atol=1e-5)
    most = int(torch.bincount(content).argmax())
    assert int(bias.argmax()) == most and bias[tokenizer.mask_token_id] < bias[most] - 1


def test_good_turing_head_init_gives_the_unseen_tokens_the_share_of_the_tokens_seen_once(scratch):
    model, tokenizer = scratch
    model = type(model)(model.config).eval()
    lines = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"]
    examples = make_examples(lines, tokenizer, 16, "lines")
    assert init_output_bias(model, content_ids(examples, tokenizer), good_turing=True)
    p = torch.softmax(model.get_output_embeddings().bias.detach().double(), 0)
    ids = examples.input_ids[examples.attention_mask.bool()]
    counts = torch.bincount(ids[~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))],
                            minlength=p.numel()).double()
    n1, total = int((counts == 1).sum()), counts.sum()
    assert n1 > 0 and p[counts == 0].sum().item() == pytest.approx((n1 / total).item(), rel=1e-5)
    seen = counts > 0  # among the seen tokens the proportions stay those of the counts (+ 1/2)
    assert torch.allclose(p[seen] / p[seen].sum(), (counts[seen] + 0.5) / (counts[seen] + 0.5).sum(), atol=1e-6)


def test_identity_head_init_makes_the_head_read_the_body_through_the_embeddings(scratch):
    model, tokenizer = scratch
    model = type(model)(model.config).eval()
    assert init_head_transform(model)
    head = model.lm_head
    assert torch.equal(head.dense.weight, torch.eye(head.dense.in_features))
    h = 0.4 * torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))  # MiniLM-like spread
    embeddings = model.get_input_embeddings().weight
    exact = head.layer_norm(F.gelu(h + 3.0)) @ embeddings.T + head.bias
    assert torch.allclose(head(h), exact, atol=1e-5)
    passthrough = head.layer_norm(h) @ embeddings.T + head.bias  # what the shift buys: nearly LayerNorm(h)
    assert torch.allclose(head(h), passthrough, atol=0.1 * passthrough.abs().max().item())
    assert not torch.allclose(head.layer_norm(F.gelu(h)) @ embeddings.T + head.bias, passthrough,
                              atol=0.1 * passthrough.abs().max().item())  # without it, GELU bends h
    gpt2 = build_causal_model(tokenizer, model.config, max_length=32, seed=0)
    assert not init_head_transform(gpt2)  # its head is one output layer: nothing to start as the identity


def test_head_lr_scale_puts_only_the_heads_own_parameters_in_scaled_groups(scratch):
    model, _ = scratch
    head = {id(p) for p in head_parameters(model)}
    assert head and id(model.get_input_embeddings().weight) not in head  # tied decoder stays with the body
    groups = param_groups(model, 0.01, head_lr_scale=10.0)
    scaled = {id(p) for g in groups if g["lr_scale"] == 10.0 for p in g["params"]}
    assert scaled == head
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(param_groups(model, 0.01)) == 2  # unscaled: the two groups older checkpoints saved


@pytest.mark.parametrize("kw", [dict(head_init="identity", head_lr_scale=5.0), dict(dropout=0.0),
                                dict(loss_weighting="count", freeze_embeddings=True, freeze_layers=1)],
                         ids=["head-options", "no-dropout", "count-frozen"])
def test_training_options_train_and_resume_exactly(finished_run, tmp_path, kw):
    full = tmp_path / "full"
    train(smoke(full, **kw), progress=False)
    stopped = tmp_path / "stopped"
    train(smoke(stopped, time_budget_s=0.0, **kw), progress=False)
    train(smoke(stopped, **kw), resume=True, progress=False)
    assert same(weights(stopped / "final-model"), weights(full / "final-model"))
    assert not same(weights(full / "final-model"), weights(finished_run[0] / "final-model"))


def test_resuming_with_other_frozen_parameters_is_a_user_error(tmp_path):
    train(smoke(tmp_path, time_budget_s=0.0), progress=False)
    with pytest.raises(UserError, match="other trainable parameters"):
        train(smoke(tmp_path, freeze_embeddings=True), resume=True, progress=False)


def test_set_dropout_turns_off_every_dropout_and_says_so_in_the_config(scratch):
    model, _ = scratch
    model = copy.deepcopy(model).train()
    x = torch.randint(5, 100, (2, 16))
    torch.manual_seed(0)
    noisy = model(input_ids=x).logits
    assert not torch.equal(noisy, model(input_ids=x).logits)  # the scratch RoBERTa starts with dropout 0.1
    assert set_dropout(model, 0.0) > 0
    assert torch.equal(model(input_ids=x).logits, model(input_ids=x).logits)
    assert model.config.hidden_dropout_prob == 0.0 and model.config.attention_probs_dropout_prob == 0.0
    with pytest.raises(UserError, match="dropout"):
        set_dropout(model, 1.0)


def test_lr_warms_up_then_decays_to_zero():
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=4)
    lrs = [lr_at(s, cfg, 10) for s in range(10)]
    assert lrs[:4] == sorted(lrs[:4]) and lrs[3] < 1.0
    assert lrs[4:] == sorted(lrs[4:], reverse=True)
    assert lr_at(10, cfg, 10) == 0.0


def test_lr_over_time_warms_up_by_steps_then_decays_by_the_clock():
    cfg = TrainConfig(learning_rate=1.0, warmup_steps=4, time_budget_s=100.0, lr_over_time=True)
    assert lr_at(0, cfg, 10, elapsed_s=0.0) == pytest.approx(1 / 5)  # warming up: the clock does not matter yet
    assert lr_at(4, cfg, 10, elapsed_s=25.0) == pytest.approx(0.75)  # the step count no longer matters
    assert lr_at(9, cfg, 10, elapsed_s=25.0) == lr_at(4, cfg, 10, elapsed_s=25.0)
    assert lr_at(1, cfg, 10, elapsed_s=90.0) == pytest.approx(0.1)  # whichever is smaller
    assert lr_at(50, cfg, 10, elapsed_s=100.0) == 0.0 and lr_at(50, cfg, 10, elapsed_s=130.0) == 0.0


def test_lr_over_time_ends_normally_at_the_budget_and_checkpoints_by_the_clock(tmp_path, ticking_clock):
    ticking_clock(0.05)
    out = tmp_path / "timed"
    result = train(smoke(out, max_steps=10**6, eval_steps=10**6, save_steps=10**6, log_steps=1, warmup_steps=1,
                         time_budget_s=2.0, lr_over_time=True, save_at_s=(0.5,)), progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    events = [r.get("event") for r in records]
    assert not result.stopped_early and "stopped" not in events and events[-1] == "end"
    assert 2 < result.final_step < 10**6 and steps[-1]["step"] == result.final_step
    assert steps[-1]["elapsed_s"] >= 2.0 and steps[-2]["elapsed_s"] < 2.0  # it ran until the budget, no further
    lrs = [r["lr"] for r in steps[1:]]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.25 * lrs[0]  # decayed by the clock
    [mark] = [r for r in records if r.get("event") == "checkpoint"]
    assert mark["at_s"] == [0.5] and mark["elapsed_s"] >= 0.5 and (out / mark["checkpoint"]).is_dir()
    state = torch.load(out / mark["checkpoint"] / "trainer_state.pt", weights_only=True)
    assert 0.5 <= state["elapsed_s"] < 2.0  # a resume goes on from the clock's reading, not from zero


def test_a_resumed_run_keeps_the_clock_of_its_checkpoint(tmp_path):
    out = tmp_path / "resumed"
    cfg = dict(max_steps=10**6, eval_steps=10**6, save_steps=10**6, log_steps=1, warmup_steps=1)
    train(smoke(out, time_budget_s=0.0, **cfg), progress=False)  # one step, then a budget stop with a checkpoint
    state_file = out / "checkpoint-1" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "elapsed_s": 1000.0}, state_file)  # as if the budget had already been spent
    result = train(smoke(out, time_budget_s=900.0, lr_over_time=True, **cfg), resume=True, progress=False)
    assert result.final_step == 2 and not result.stopped_early  # one step at lr 0, then a normal end


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(prefix_length=200), "prefix-length"),
        (dict(ratios=(1.5,)), "outside"),
        (dict(loss_weighting="nope"), "loss-weighting"),
        (dict(batch_size=0), "batch-size"),
        (dict(learning_rate=-1.0), "learning-rate"),
        (dict(head_init="zeros"), "head-init"),
        (dict(head_lr_scale=0.0), "head-lr-scale"),
        (dict(dropout=1.0), "dropout"),
        (dict(freeze_layers=-1), "freeze-layers"),
        (dict(lr_over_time=True), "lr-over-time"),
        (dict(lr_over_time=True, time_budget_s=math.inf), "lr-over-time"),
        (dict(save_at_s=(60.0,)), "save_at_s"),
    ],
)
def test_bad_settings_are_user_errors(overrides, match):
    with pytest.raises(UserError, match=match):
        preset("smoke", **overrides)


def _launch_two_cpu_processes(out: Path, *train_args: str) -> list[dict]:
    """`tdlib train --preset smoke` under `accelerate launch` with two CPU processes; the metrics records."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "tdlib", "train", "--preset", "smoke", *train_args, "--eval-steps", "100",
           "--output-dir", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert validate_model_dir(out / "final-model") is None
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate_launch(tmp_path):
    out = tmp_path / "ddp"
    records = _launch_two_cpu_processes(out, "--max-steps", "4", "--save-steps", "2")
    assert validate_model_dir(out / "checkpoint-2") is None
    assert [r["step"] for r in records if "loss" in r] == [2, 4]  # one writer: no duplicated lines from the second


@pytest.mark.slow
def test_two_cpu_processes_agree_on_when_the_clock_ends_the_run(tmp_path):
    # each process reads its own clock; if they disagreed on the last step, one would wait forever in an all-reduce
    records = _launch_two_cpu_processes(tmp_path / "ddp-clock", "--time-budget", "5", "--lr-over-time")
    steps = [r["step"] for r in records if "loss" in r]
    assert records[-1]["event"] == "end" and records[-1]["step"] == steps[-1] > 2
    assert steps == sorted(set(steps))  # one writer


def test_causal_baseline_trains_resumes_and_scores_exact_nll(finished_run, tmp_path):
    from tdlib.evaluate import causal_nll
    from tdlib.model import load_causal

    full, stopped = tmp_path / "ar", tmp_path / "ar-stopped"
    result = train(smoke(full, objective="causal"), progress=False)
    assert "nll_bits_per_char" in result.last_eval and result.last_eval["nll_bits_per_char"] > 0
    train(smoke(stopped, objective="causal", time_budget_s=0.0), progress=False)
    train(smoke(stopped, objective="causal"), resume=True, progress=False)
    assert same(weights(stopped / "final-model"), weights(full / "final-model"))
    frozen = tmp_path / "ar-frozen"  # freezing is for a pretrained start: the from-scratch baseline ignores it
    train(smoke(frozen, objective="causal", freeze_embeddings=True, freeze_layers=1), progress=False)
    assert same(weights(frozen / "final-model"), weights(full / "final-model"))
    model, tokenizer = load_causal(full / "final-model")
    assert model.config.vocab_size == len(tokenizer)  # the masked model's tokenizer, shared
    # exact NLL: a sum of per-token terms, so scoring two halves adds up to scoring the whole
    ids = tokenizer(["def f(x): return x", "class A: pass"], padding=True, return_tensors="pt")
    scorable = ids["attention_mask"].bool() & ~torch.isin(ids["input_ids"], torch.tensor(tokenizer.all_special_ids))
    whole = causal_nll(model, ids["input_ids"], scorable, attention_mask=ids["attention_mask"], num_characters=30)
    halves = [causal_nll(model, ids["input_ids"][i : i + 1], scorable[i : i + 1],
                         attention_mask=ids["attention_mask"][i : i + 1], num_characters=30) for i in range(2)]
    assert whole["nll_bits_per_char"] == pytest.approx(sum(h["nll_bits_per_char"] for h in halves), rel=1e-5)


def _masked_batch(tokenizer, seed: int = 3):
    enc = tokenizer(["the cat sat on the mat and the dog sat on the log"] * 3, return_tensors="pt")
    examples = [{"input_ids": i, "attention_mask": a} for i, a in zip(enc["input_ids"], enc["attention_mask"])]
    batch = MaskingCollator(tokenizer, ratios=[0.6], prefix_length=0, seed=seed)(examples)
    return batch


def test_a_head_vocabulary_of_every_token_gives_the_full_loss(scratch):
    model, tokenizer = scratch
    model = type(model)(model.config).eval()
    batch = _masked_batch(tokenizer)
    every = torch.arange(model.config.vocab_size)
    full = MaskedDiffusionLoss(model, "elbo")(batch)
    assert torch.allclose(MaskedDiffusionLoss(model, "elbo", every)(batch), full, rtol=1e-6)


def test_a_restricted_head_vocabulary_is_a_softmax_over_those_columns_only(scratch):
    model, tokenizer = scratch
    model = type(model)(model.config).eval()
    batch = _masked_batch(tokenizer)
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    where = labels != -100
    vocab = torch.unique(torch.cat([labels[where], torch.arange(5, 40)]))  # every label, and some other tokens
    loss = MaskedDiffusionLoss(model, "uniform", vocab)(batch)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[where][:, vocab]  # (M, S)
    column = (labels[where][:, None] == vocab).float().argmax(1)
    expected = F.cross_entropy(logits, column)
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert loss < MaskedDiffusionLoss(model, "uniform")(batch)  # fewer tokens share the mass


def test_head_vocab_train_trains_over_the_training_tokens_and_keeps_the_whole_vocabulary(tmp_path):
    seen = []
    result = train(smoke(tmp_path / "run", max_steps=4, head_vocab="train"), progress=False,
                   callbacks=[seen.append])
    start = next(r for r in seen if r.get("event") == "start")
    model, _ = load_checkpoint(result.final_model, device="cpu")
    vocab = model.get_output_embeddings().weight.shape[0]  # the saved model keeps every token
    assert 0 < start["head_vocab"] < vocab
    assert any(math.isfinite(r.get("nelbo_bits_per_char", math.nan)) for r in seen)  # scored over every token
    with pytest.raises(UserError, match="--head-vocab"):
        smoke(tmp_path / "bad", head_vocab="some")


def test_the_defaults_are_the_original_experiment_and_presets_list_only_their_differences():
    assert TrainConfig() == preset("seed")
    assert (TrainConfig().model_name, TrainConfig().dataset, TrainConfig().example_mode) == (
        "roberta-base", "wikitext-2", "lines")
    defaults = dataclasses.asdict(TrainConfig())
    for name, values in PRESETS.items():
        assert all(defaults[k] != v for k, v in values.items()), name


def test_a_checkpoint_of_an_older_run_with_mask_probs_in_its_config_resumes(finished_run, tmp_path):
    out = tmp_path / "older"
    shutil.copytree(finished_run[0], out)
    for folder in [out / "final-model", *out.glob("checkpoint-*")]:
        recorded = json.loads((folder / "training_config.json").read_text())
        recorded["mask_probs"] = recorded.pop("ratios")  # as runs before the rename wrote it
        (folder / "training_config.json").write_text(json.dumps(recorded))
    shutil.rmtree(out / "final-model")
    result = train(smoke(out), resume=True, progress=False)
    assert result.final_step == 8 and result.final_model is not None
