"""The `laptop` preset (a pretrained masked LM with its head, WikiText-2 from the hub) wired with local stand-ins,
and the LM head run only at masked positions for every masked-LM family."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

from tdlib.cli import main
from tdlib.heads import init_head, masked_logits, split_mlm
from tdlib.train import PRESETS, TrainConfig, preset

SIZES = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64)
FAMILIES = {  # family -> (config class, masked-LM class, options besides SIZES)
    "bert": ("BertConfig", "BertForMaskedLM", {}),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", dict(pad_token_id=1)),
    "distilbert": ("DistilBertConfig", "DistilBertForMaskedLM", dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64)),
    "electra": ("ElectraConfig", "ElectraForMaskedLM", dict(embedding_size=16)),
    "albert": ("AlbertConfig", "AlbertForMaskedLM", dict(embedding_size=16)),
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForMaskedLM", {}),
    "modernbert": ("ModernBertConfig", "ModernBertForMaskedLM",
                   dict(pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3)),
}


def _tiny(family: str):
    """A tiny masked LM of ``family`` with random weights (seeded), in eval mode."""
    torch.manual_seed(0)
    if family == "toy-conv":
        from tdlib.convnet import ConvMaskedLM, ConvMaskedLMConfig

        return ConvMaskedLM(ConvMaskedLMConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2)).eval()
    config_name, model_name, options = FAMILIES[family]
    if not hasattr(transformers, model_name):
        pytest.skip(f"{model_name} is not in transformers {transformers.__version__}")
    config = getattr(transformers, config_name)(**{**SIZES, **options})
    return getattr(transformers, model_name)(config).eval()


@pytest.mark.parametrize("family", [*FAMILIES, "toy-conv"])
def test_the_head_at_masked_positions_only_gives_the_full_models_logits_there(family):
    model = _tiny(family)
    assert split_mlm(model) is not None, f"{family}: masked_logits would fall back to the full head"
    g = torch.Generator().manual_seed(1)
    xt = torch.randint(5, 100, (3, 16), generator=g)  # (B, L)
    attention_mask = torch.ones_like(xt)
    attention_mask[1, 11:] = 0  # padding at the end of one row
    where = torch.rand(3, 16, generator=g) < 0.4  # (B, L)
    where[1, 11:] = False
    with torch.no_grad():
        full = model(input_ids=xt, attention_mask=attention_mask).logits[where]  # (M, V)
        picked = masked_logits(model, xt, attention_mask, where)  # (M, V)
    assert picked.shape == (int(where.sum()), 100)
    torch.testing.assert_close(picked, full, rtol=1e-5, atol=1e-5)


def test_a_random_head_init_keeps_a_loaded_head():
    model = _tiny("roberta")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert init_head(model, "random", torch.randint(0, 100, (500,))) == "random"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_laptop_preset_fine_tunes_a_pretrained_head_on_wikitext_2():
    config = preset("laptop")
    assert PRESETS["laptop"]["model_name"] != TrainConfig().model_name  # a smaller model than the original's
    assert (config.dataset, config.data_dir, config.head_init) == ("wikitext-2", None, "random")
    assert (config.batch_size, config.max_length, config.head_vocab) == (4, 128, "all")
    assert config.masking == "stratified" and config.loss_weighting in ("elbo", "count")
    assert 5e-5 <= config.learning_rate <= 1e-4 and 0 < config.warmup_steps < config.max_steps
    assert config.time_budget_s is not None and config.time_budget_s >= 900


@pytest.fixture(scope="module")
def wikitext_dir(shared_data, tmp_path_factory):
    """A WikiText-2 folder made from the shared valid.txt: train.txt from its first lines, valid/test after them."""
    source = shared_data / "wikitext-2-raw-v1" / "valid.txt"
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    folder = tmp_path_factory.mktemp("wikitext-2")
    for name, part in (("train.txt", lines[:600]), ("valid.txt", lines[600:900]), ("test.txt", lines[900:1200])):
        (folder / name).write_text("".join(part), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def standin(wikitext_dir, tmp_path_factory):
    """A tiny random model of the laptop preset's architecture, with a tokenizer, saved like a hub download."""
    from tdlib.model import build_scratch_model, save_model

    lines = (wikitext_dir / "train.txt").read_text(encoding="utf-8").splitlines()
    model, tokenizer = build_scratch_model(lines, vocab_size=800, hidden_size=32, num_layers=1, num_heads=2,
                                           max_length=128)
    assert model.config.model_type == "roberta"  # distilroberta-base is a 6-layer RoBERTa
    folder = tmp_path_factory.mktemp("standin") / "distilroberta-standin"
    save_model(model, tokenizer, folder)
    return folder


def test_the_laptop_preset_trains_generates_and_evaluates_with_local_stand_ins(standin, wikitext_dir, tmp_path,
                                                                              capsys):
    out = tmp_path / "run"
    code = main(["train", "--preset", "laptop", "--model-name", str(standin), "--data-dir", str(wikitext_dir),
                 "--max-steps", "2", "--warmup-steps", "1", "--eval-steps", "2", "--save-steps", "2",
                 "--output-dir", str(out), "--quiet"])
    assert code == 0
    assert "trained 2 steps" in capsys.readouterr().out
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["head_init"] == "random" and start["config"]["model_name"] == str(standin)
    assert main(["generate", "--checkpoint", str(out), "--prefix", "The", "--max-length", "24", "--steps", "4",
                 "--num-samples", "2", "--seed", "0", "--json"]) == 0
    samples = json.loads(capsys.readouterr().out)["samples"]
    assert len(samples) == 2 and all(s.startswith("The") for s in samples)
    assert main(["evaluate", "--checkpoint", str(out), "--dataset", "wikitext-2", "--data-dir", str(wikitext_dir),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nelbo_bits_per_char"] > 0


@pytest.mark.parametrize("local_data", [False, True], ids=["hub-data", "hub-model"])
def test_the_laptop_preset_without_the_hub_is_one_error_line_naming_offline_choices(local_data, wikitext_dir,
                                                                                    tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "tdlib", "train", "--preset", "laptop", "--output-dir", str(tmp_path / "run")]
    if local_data:  # the data from the folder: the model is what the hub cannot give
        argv += ["--data-dir", str(wikitext_dir)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
    assert "offline alternatives: --preset toy or --preset cpu" in proc.stderr  # the offline presets, by name
    assert ("--model-name minilm" if local_data else "--dataset toy or pydoc") in proc.stderr
