"""The import graph keeps one direction: bench -> tokens -> readout -> stages -> evaluate -> ... -> cli.

Every import in ``vru_lens`` (function-level ones too, found with ``ast``) must point to a module of a
lower layer, or stay inside its own group. A stage takes what it needs from above (an accuracy
function, a ranking) as an argument instead of importing it (DESIGN.md).
"""

import ast
from pathlib import Path

import vru_lens

ROOT = Path(vru_lens.__file__).parent

# (group: a module and everything under it, layer). The longest matching group names a module's place.
LAYERS = {
    # -1: strict JSON files (read by everything, reads nothing of ours)
    "vru_lens.jsonio": -1,
    # 0: the task and the shared vocabulary; nothing of ours below them but jsonio
    "vru_lens.bench": 0, "vru_lens.heads": 0,
    "vru_lens.models.kv_cache": 0, "vru_lens.models.embedded": 0, "vru_lens.models.organisms": 0,
    # 1: plumbing read by every stage
    "vru_lens.results": 1, "vru_lens.tokens": 1, "vru_lens.models.tiny": 1,
    "vru_lens.organism.data": 1,
    # 2: the one way to read a model; the organism's own training loop (plain torch, on its data); figures of
    # results (every result's plot() draws through viz, so it sits below the stages and reads only 0-1)
    "vru_lens.readout": 2, "vru_lens.organism.train": 2, "vru_lens.viz": 2,
    # 3-4: the stages; a ranking flows from patching into fine-tuning, the general suite is used by it
    "vru_lens.probe": 3, "vru_lens.patching": 3, "vru_lens.general_eval": 3,
    "vru_lens.logit_lens": 4, "vru_lens.finetune": 4,
    # 5: every accuracy (the stages below take accuracy functions instead of importing it)
    "vru_lens.evaluate": 5,
    # 6: loading a model, saved deltas included (``load_model(deltas=...)``)
    "vru_lens.models": 6,
    # 7: studies built of stages
    "vru_lens.organism": 7,
    "vru_lens.study": 8, "vru_lens.sweep": 8, "vru_lens.grading": 8,
    "vru_lens.report": 9,
    "vru_lens.cli": 10, "vru_lens": 10,
}


def module_name(path: Path) -> str:
    parts = ["vru_lens", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def imports(path: Path) -> set[str]:
    """The vru_lens modules ``path`` imports (``from pkg import module`` names the module)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "vru_lens"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "vru_lens":
                continue
            subs = {f"{source}.{a.name}" for a in node.names if is_module(f"{source}.{a.name}")}
            out |= subs if subs and len(subs) == len(node.names) else subs | {source}
    return out - {me}


def group(name: str) -> str:
    return max((g for g in LAYERS if name == g or name.startswith(g + ".")), key=len)


def test_layers_table_covers_every_module():
    for path in ROOT.rglob("*.py"):
        assert group(module_name(path)) in LAYERS


def test_no_module_imports_a_layer_above_or_beside_it():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        me = module_name(path)
        for other in sorted(imports(path)):
            a, b = group(me), group(other)
            if a != b and LAYERS[b] >= LAYERS[a]:
                bad.append(f"{me} (layer {LAYERS[a]}) imports {other} (layer {LAYERS[b]})")
    assert not bad, "\n".join(bad)


def test_stages_below_evaluate_do_not_import_it():
    """Fine-tuning and patching take accuracy as a function: neither imports evaluate or a study."""
    for path in [*ROOT.joinpath("finetune").rglob("*.py"), *ROOT.joinpath("patching").rglob("*.py")]:
        above = {m for m in imports(path) if m.split(".")[1] in ("evaluate", "study", "sweep", "report", "cli")}
        assert not above, f"{module_name(path)} imports {above}"


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """A known graph: the walker resolves relative imports, ``from pkg import module`` and imports in functions."""
    got = imports(ROOT / "finetune" / "__init__.py")  # `from ..heads import ...`, `from .adapters import ...`
    assert {"vru_lens.heads", "vru_lens.finetune.adapters"} <= got
    assert "vru_lens.bench.styles" in imports(ROOT / "bench" / "generate.py")  # `from . import styles as P`
    got = imports(ROOT / "models" / "loader.py")  # a function-level import of the adapters
    assert "vru_lens.finetune.adapters" in got
