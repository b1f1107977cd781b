"""Shared fixtures: tiny random models (seconds) and, for tests marked `real`, SmolLM2."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread is faster than two on a shared machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama():
    from vru_lens.models import load_model

    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from vru_lens.models import load_model

    return load_model("tiny-gpt2", device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    from vru_lens.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


def strong_model(hf, std: float = 0.3, seed: int = 1):
    """``hf`` (a transformers model) with large random matrices (norm gains untouched), saved with the tiny
    tokenizer and loaded back through ``load_model(folder)``: patching a head then moves the logits by O(1)."""
    import tempfile
    import warnings

    from vru_lens.models import load_model
    from vru_lens.models.tiny import tiny_tokenizer

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    hf.config.architectures = [type(hf).__name__]
    folder = tempfile.mkdtemp(prefix="vru-strong-")
    hf.eval().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(folder, device="cpu")


@pytest.fixture(scope="session")
def strong():
    """The ``strong_model`` builder, for test modules (conftest is not importable as a module)."""
    return strong_model


@pytest.fixture(scope="session")
def tiny_gemma2_capped(strong):
    """A 2-layer Gemma 2 whose final logit soft-cap (3.0) bites: logits reach the cap."""
    import transformers as tf

    from vru_lens.models.tiny import tiny_tokenizer

    cfg = tf.Gemma2Config(
        vocab_size=len(tiny_tokenizer()), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        sliding_window=4096, final_logit_softcapping=3.0, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return strong(tf.Gemma2ForCausalLM(cfg))


@pytest.fixture(scope="module")
def organism():
    """The shipped VRU model organism (complete circuit C), loaded once per test module (tests may hook it)."""
    from vru_lens.models import load_model

    return load_model("vru-organism", device="cpu")


@pytest.fixture(scope="session")
def circuit():
    """The organism's complete circuit C, from its card."""
    from vru_lens.models.organisms import circuit_heads, organism_card

    return circuit_heads(organism_card("vru-organism"))


def _weights_hash(model) -> str:
    """Every module's name and every state tensor's name, dtype, shape and bytes."""
    import hashlib

    h = hashlib.sha256()
    for name, _ in model.named_modules():
        h.update(name.encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@pytest.fixture(scope="session")
def weights_hash():
    """A hash of a model's modules and weights: a method that gives the model back leaves it unchanged."""
    return _weights_hash
