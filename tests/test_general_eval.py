"""General-ability suite: packaged data loads, subsamples are seeded, KL behaves."""

import pytest
import torch

from vru_lens.general_eval import TASKS, GeneralSuite, _coarse_kl, compare, load_task, subsample

torch.set_num_threads(1)  # a shared 2-core machine: OpenMP spinning makes >1 thread far slower


@pytest.mark.parametrize("task", TASKS)
def test_tasks_load_with_gold(task):
    docs = load_task(task)
    assert len(docs) > 100
    for d in docs[:50]:
        assert 0 <= d["gold"] < len(d["requests"])
        assert all(isinstance(c, str) and isinstance(x, str) and x for c, x in d["requests"])
    assert subsample(docs, 10, 1, task) == subsample(docs, 10, 1, task) != subsample(docs, 10, 2, task)


def test_coarse_kl_is_a_lower_bound():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5, 50, generator=g).log_softmax(-1)
    q = torch.randn(5, 50, generator=g).log_softmax(-1)
    full = (p.exp() * (p - q)).sum(-1)
    top = p.topk(10, dim=-1).indices
    coarse = _coarse_kl(p.gather(-1, top), q.gather(-1, top))
    assert (coarse <= full + 1e-6).all() and (coarse > 0).all()
    torch.testing.assert_close(_coarse_kl(p, q), full, atol=1e-5, rtol=1e-5)  # every token kept -> exact


def test_suite_same_items_and_kl(tiny_llama):
    from vru_lens.finetune import HeadDeltas

    m = tiny_llama
    suite = GeneralSuite(n_per_task=2, mmlu_n=2, wiki_n=2, wiki_tokens=24, kl_top_k=32, tasks=("arc_easy", "lambada"))
    before = suite.run(m, progress=False)
    same = suite.run(m, reference=before, progress=False)
    assert same.metrics["wiki/kl"] == pytest.approx(0.0, abs=1e-5)
    d = HeadDeltas(m, [(0, 0), (1, 1)], "qo")
    with torch.no_grad():
        for p in d.deltas.values():
            p.normal_(0, 0.5)
    with d.applied(m):
        after = suite.run(m, reference=before, progress=False)
    assert after.metrics["wiki/kl"] > 1e-4
    table = compare(before, after)
    assert {"arc_easy", "lambada", "average", "wiki/ppl", "wiki/kl"} <= set(table.metric)
    assert table.set_index("metric").loc["wiki/kl", "before"] == 0.0


def test_kl_reference_follows_each_article_when_lengths_differ(tiny_llama, tmp_path):
    """Rows are scored sorted by length: the reference must be kept by article, or the KL compares
    one article's distributions with another's (a shape error, or a wrong number, once lengths differ)."""
    from vru_lens.general_eval import GeneralResult

    suite = GeneralSuite(n_per_task=0, mmlu_n=0, wiki_n=6, wiki_tokens=4096, kl_top_k=16, tasks=())
    texts = suite.data()["wiki"]
    lengths = [len(tiny_llama.tokenizer(t)["input_ids"]) for t in texts]
    assert lengths != sorted(lengths), lengths  # the scoring order is not the articles' order
    before = suite.run(tiny_llama, progress=False)
    assert [len(v) for _, v in before.reference] == [n - 1 for n in lengths]
    assert suite.run(tiny_llama, reference=before, progress=False).metrics["wiki/kl"] == pytest.approx(0.0, abs=1e-5)
    before.save(tmp_path / "g.json")
    before.save_reference(tmp_path / "g.pt")
    cached = GeneralResult.load(tmp_path / "g.json").load_reference(tmp_path / "g.pt")
    assert suite.run(tiny_llama, reference=cached, progress=False).metrics["wiki/kl"] == pytest.approx(0.0, abs=1e-5)
