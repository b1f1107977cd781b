import pytest

from vru_lens.bench import make_items
from vru_lens.evaluate import evaluate
from vru_lens.viz import accuracy_figure, attention_view


def test_accuracy_figure_has_one_trace_per_result(tiny_llama, tiny_gpt2):
    items = make_items(8, seed=1)
    fig = accuracy_figure({"llama": evaluate(tiny_llama, items, progress=False),
                           "gpt2": evaluate(tiny_gpt2, items, progress=False)})
    assert len(fig.data) == 2 and set(fig.data[0].x) == {str(it["n_steps"]) for it in items}
    with pytest.raises(ValueError, match="at least one"):
        accuracy_figure({})


def test_attention_view_renders_html(tiny_llama):
    item = make_items(1, seed=2)[0]
    html = str(attention_view(tiny_llama, item, layer=1, heads=[0, 3]))
    assert "L1H3" in html
    assert "L1H0" in str(attention_view(tiny_llama, item, layer=1, heads=[0], query_steps=True))
    with pytest.raises(ValueError, match="layer"):
        attention_view(tiny_llama, item, layer=7)
