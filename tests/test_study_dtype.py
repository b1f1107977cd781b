"""Stage keys do not hold the weights' dtype, so a result computed in one dtype is read back by a run in another:
the manifest records which dtype computed each file, and reading one across dtypes says so in one line."""

import json

from vru_lens.study import StudyConfig, run_study

TINY = dict(n_eval=6, n_pairs=4, n_boot=0, stages=("eval",), compare=())


def _run(out, dtype):
    lines = []
    study = run_study("tiny-llama", out, StudyConfig(**TINY), device="cpu", progress=False, log=lines.append,
                      dtype=dtype)
    return study, lines


def test_a_file_read_into_a_run_of_another_dtype_is_named(tmp_path, one_thread):
    study, lines = _run(tmp_path, None)
    name = study.files["eval"]
    manifest = json.loads((study.folder / "study.json").read_text())
    assert manifest["dtypes"] == {name: "float32"} and lines == ["[tiny-llama] eval"]
    _, same = _run(tmp_path, "float32")
    assert same == []  # read back in its own dtype: nothing to say
    other, crossed = _run(tmp_path, "bfloat16")
    assert other.files["eval"] == name  # the same key: read back, not recomputed
    assert len(crossed) == 1 and "computed in float32, into a bfloat16 run" in crossed[0] and name in crossed[0]
    assert json.loads((study.folder / "study.json").read_text())["dtypes"] == {name: "float32"}
