"""The ``vru-lens`` command: one subcommand per stage.

Each stage's command lives in its own module here and is registered below;
heavy imports (torch, transformers) happen inside the commands, so
``vru-lens --help`` stays instant.
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Viewpoint-rotation understanding: benchmark, evaluate, probe, rank heads, fine-tune heads.")

from . import bench as _bench  # noqa: E402
from . import evaluate as _evaluate  # noqa: E402

app.command("bench")(_bench.bench)
app.command("eval")(_evaluate.eval_cmd)
from . import probe as _probe  # noqa: E402
app.command("probe")(_probe.probe)
from . import finetune as _finetune  # noqa: E402
app.command("finetune")(_finetune.finetune)
from . import rank_heads as _rank  # noqa: E402
app.command("rank-heads")(_rank.rank_heads)
from . import run as _run  # noqa: E402
app.command("run")(_run.run)
from . import knockout as _knockout  # noqa: E402
app.command("knockout")(_knockout.knockout)
from . import grade as _grade  # noqa: E402
app.command("grade")(_grade.grade)
from . import organism as _organism  # noqa: E402
app.add_typer(_organism.app, name="organism")
from . import sweep as _sweep  # noqa: E402
app.command("sweep")(_sweep.sweep)
