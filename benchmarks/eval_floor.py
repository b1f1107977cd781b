"""The work floor of candidate scoring on VRUBench items, counted from the real tokens.

Work is counted in token-forwards (one position through the whole model). Scoring a candidate needs
the log-probability of each of its tokens after the prompt, so any exact method reads the prompt once
per item and each candidate's tokens after its first once (the first token's log-probability is read at
the prompt's last position):

    floor = sum over items of (P_i + sum over candidates c of (len_c - 1))      (a prompt KV cache reused)

The schedules counted:
    naive      one forward per (item, candidate) on prompt + candidate:  sum_i sum_c (P_i + len_c)
    reference  one forward per item on the prompt (every first token read there), plus one forward of
               prompt + candidate[:-1] per multi-token candidate, in right-padded batches of ``--batch-size``
               (``score_candidates(..., reuse_prompt=False)``: what runs while hooks are on the model)
    floor      the prompt's keys and values reused for the multi-token candidates: what ``score_candidates``
               does by default (``readout.score_prefixed``), plus the padding of its batches
naive / floor is the most any exact scorer can save in the transformer body. The count leaves out the
unembedding: the naive loop unembeds every position over the whole vocabulary, ``score_candidates`` only
the positions it reads, so a measured speed-up can pass the body ratio.

``benchmarks/bench_eval.py`` prints these counts (``work``) beside its measured times:

    python benchmarks/bench_eval.py --model smollm2-135m-instruct --n 64 --batch-size 16
"""

from __future__ import annotations


def count(prompt_lens: list[int], cand_lens: list[list[int]], batch_size: int) -> dict:
    """Token-forwards of the naive loop, the reference schedule (unpadded and padded) and the floor."""
    naive = sum(p * len(cs) + sum(cs) for p, cs in zip(prompt_lens, cand_lens))
    rows = []  # the reference schedule's rows, in the order it builds them
    for p, cs in zip(prompt_lens, cand_lens):
        rows.append(p)
        rows += [p + n - 1 for n in cs if n > 1]
    ours = sum(rows)
    ours_padded = sum(len(rows[b:b + batch_size]) * max(rows[b:b + batch_size]) for b in range(0, len(rows), batch_size))
    floor = sum(p + sum(n - 1 for n in cs) for p, cs in zip(prompt_lens, cand_lens))
    multi = sum(n > 1 for cs in cand_lens for n in cs)
    return {"items": len(prompt_lens), "mean_prompt": sum(prompt_lens) / len(prompt_lens),
            "candidates_per_item": sum(map(len, cand_lens)) / len(cand_lens),
            "multi_token_candidates_per_item": multi / len(cand_lens),
            "token_forwards": {"naive": naive, "reference": ours, "reference_padded": ours_padded, "floor": floor},
            "bound_on_speedup_vs_naive": {"reference": naive / ours, "reference_padded": naive / ours_padded,
                                          "floor": naive / floor}}


def counts_for(model, items, batch_size: int) -> dict:
    """``count`` for these items as ``score_candidates`` tokenizes them (its defaults: chat for an instruct model)."""
    from vru_lens.tokens import answer_ids, chat_for, encode, render

    tok, chat = model.tokenizer, chat_for(model, None)
    prompts = [len(encode(tok, render(it["prompt"], tok, chat), chat)) for it in items]
    cands = [[len(answer_ids(tok, c, chat)) for c in it["candidates"]] for it in items]
    return count(prompts, cands, batch_size)
