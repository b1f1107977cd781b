"""Text that ships says what the code does: the list task's example, and the ranking methods by name."""

import json
import re
from pathlib import Path

import vru_lens

ROOT = Path(vru_lens.__file__).parent
LIST_EXAMPLE = re.compile(r"List: (\w+ )*\w+\\nItem \d+:")  # as written in the cards and docs ("\n" spelt out)


def test_the_list_task_example_is_the_prompt_the_code_builds():
    import random

    from vru_lens.organism.data import list_item
    from vru_lens.organism.recipe import RECIPE, card

    prompt = list_item(random.Random(0))["prompt"]
    assert LIST_EXAMPLE.fullmatch(prompt.replace("\n", "\\n")), prompt
    texts = {"recipe.card": card(RECIPE, {})["format"], "docs/organism.md": (ROOT.parent / "docs/organism.md").read_text()}
    for path in sorted((ROOT / "models/organism").glob("*/organism.json")):
        texts[str(path.relative_to(ROOT))] = json.loads(path.read_text())["format"]
    assert len(texts) >= 3
    for name, text in texts.items():
        assert "list recall" in text and LIST_EXAMPLE.search(text), f"{name} describes another list task"
        assert "Find:" not in text, name


def test_method_help_and_docstring_name_every_ranking_method():
    from typer.main import get_command

    from vru_lens.cli import app
    from vru_lens.patching import METHODS

    group = get_command(app)
    for command in ("rank-heads", "run"):
        (option,) = [p for p in group.commands[command].params if p.name == "method"]
        missing = [m for m in METHODS if m not in option.help]
        assert not missing, f"`{command} --method` help omits {missing}"
    first_line = vru_lens.patching.__doc__.splitlines()[0]
    assert not [m for m in METHODS if m not in first_line], first_line
