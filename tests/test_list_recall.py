"""``list_acc`` means one thing: the answer is the best-scoring of the list's words (candidates), in the
organism's training eval, the organism study and the forgetting suite alike."""

import pytest
import torch


@pytest.fixture
def unknown_first(organism):
    """The organism with a large bonus on "unknown" (never a list word) at every position: the argmax over
    the whole vocabulary is never the answer, the argmax among the candidates is unchanged."""
    hf = organism.original_model
    unk = organism.tokenizer.get_vocab()["unknown"]

    def bonus(module, args, out):
        return out + 50.0 * torch.nn.functional.one_hot(torch.tensor(unk), out.shape[-1]).to(out)

    handle = hf.get_output_embeddings().register_forward_hook(bonus)
    yield organism
    handle.remove()


def reference_accuracy(model, items) -> tuple[float, float]:
    """(among candidates, over the whole vocabulary), one item at a time, straight from the transformers model."""
    tok, among, anywhere = model.tokenizer, 0, 0
    with torch.no_grad():
        for it in items:
            ids = tok(it["prompt"], return_tensors="pt")["input_ids"]
            logits = model.original_model(ids).logits[0, -1]
            cand = {c: float(logits[tok.convert_tokens_to_ids(c)]) for c in it["candidates"]}
            among += max(cand, key=cand.get) == it["answer"]
            anywhere += tok.convert_ids_to_tokens(int(logits.argmax())) == it["answer"]
    return among / len(items), anywhere / len(items)


def test_list_acc_is_among_candidates_everywhere(unknown_first):
    from vru_lens.general_eval import ListRecallSuite
    from vru_lens.organism import data as D
    from vru_lens.organism.graded import list_recall
    from vru_lens.organism.train import OrganismConfig, evaluate_organism

    model = unknown_first
    suite_items = D.list_items(40, 3)
    among, anywhere = reference_accuracy(model, suite_items)
    assert anywhere == 0.0 and among > 0.5  # the bonus bites, and the organism knows the task
    assert list_recall(model, suite_items)[0]["list_acc"] == pytest.approx(among)
    assert ListRecallSuite(40, 3).run(model).metrics["list/acc"] == pytest.approx(among)
    train_items = D.list_items(500, 999 + 1)  # what organism.train.evaluate_organism reads (seed + 1)
    got = evaluate_organism(model.original_model, model.tokenizer, OrganismConfig(), n=10)["list_acc"]
    assert got == pytest.approx(reference_accuracy(model, train_items)[0])
