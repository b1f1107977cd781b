"""Shared fixtures: tiny random models (seconds) and, for tests marked `real`, SmolLM2."""

import pytest
import torch

torch.set_num_threads(2)


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
