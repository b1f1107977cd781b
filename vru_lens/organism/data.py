"""Training data for the VRU model organism: paper-style VRUBench, a list-recall task, a word-level tokenizer.

The organism reads the study's line format with its constant instruction, which the
tokenizer keeps as one token (as it does the format's fixed phrases). Every
``Observation:`` after an action is a query the model is trained on: the
object if that heading was seen before, else ``unknown`` (the same rule as the
final question, so one story gives up to five consistent examples).
"""

from __future__ import annotations

import random
import re

import torch

from ..bench.answers import UNKNOWN
from ..bench.render import render_paper
from ..bench.styles import ANGLES, DIRECTIONS, INSTRUCTION
from ..bench.world import turn

SPECIALS = ["<bos>", "<eos>", "<pad>", "<unk>"]
# The format's fixed phrases are single tokens, and so is each turn ("right by 270 degrees"): a story
# of 5 actions is 23 tokens, not 74, training costs less and every position is a step of the story.
# The wording (instruction, angles, line format) is the bench's own, so training text is evaluation text.
LIST_LEN = 5
TURNS = [f"{d} by {a} degrees" for d in DIRECTIONS for a in ANGLES]  # one token per turn
PHRASES = [INSTRUCTION, "Initial Observation:", "\nAction: Turn to the", *TURNS, "\nObservation:",
           "\nAnswer:", "List:", *(f"\nItem {k}:" for k in range(1, LIST_LEN + 1))]
FORMAT_WORDS = [*PHRASES, *DIRECTIONS, UNKNOWN, ":", "\n"]
_SPLIT = "|".join([r"(?:left|right) by \d+ degrees", *(re.escape(p) for p in PHRASES if " by " not in p),
                   r"[^\s:]+", ":", r"\n"])


def rooms() -> dict[str, list[str]]:
    from ..bench.templates import ROOMS

    return ROOMS


def objects() -> list[str]:
    return sorted({o for objs in rooms().values() for o in objs})


def vocabulary() -> list[str]:
    return SPECIALS + FORMAT_WORDS + objects()


def build_tokenizer():
    """Word-level tokenizer over the format's words and the objects; prepends <bos> like the other models."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True)
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.init_kwargs.update(name_or_path="vru-organism", add_bos_token=True)
    return fast


# ---- paper-style stories: training and evaluation use vru_lens.bench (``bench_items``); this small
# sampler draws unbalanced stories for rejection sampling (informative pairs), in the same format ----

def paper_prompt(slot_objects, steps) -> str:
    """The bench's paper-style text of a sampled walk (every step but the last observes an object)."""
    walk = [{"direction": s["direction"], "angle": s["angle"], "observe": s["observed"] is not None,
             "object": s["observed"]} for s in steps]
    return render_paper(slot_objects, walk)[0]


def paper_item(rng: random.Random, min_steps: int = 2, max_steps: int = 5) -> dict:
    room = rng.choice(sorted(rooms()))
    slot_objects = rng.sample(rooms()[room], 4)
    n = rng.randint(min_steps, max_steps)
    heading, steps = 0, []
    for _ in range(n):
        angle, direction = rng.choice(ANGLES), rng.choice(DIRECTIONS)
        heading = turn(heading, angle, direction)
        steps.append({"angle": angle, "direction": direction, "heading_after": heading,
                      "observed": slot_objects[heading // 90]})
    steps[-1]["observed"] = None
    return _finish(room, slot_objects, steps)


def _finish(room, slot_objects, steps) -> dict:
    seen = {0: slot_objects[0]}
    for s in steps[:-1]:
        seen.setdefault(s["heading_after"], s["observed"])
    answer = seen.get(steps[-1]["heading_after"], UNKNOWN)
    mentioned = list(dict.fromkeys([slot_objects[0], *(s["observed"] for s in steps[:-1])]))
    return {"room": room, "slot_objects": slot_objects, "steps": steps, "prompt": paper_prompt(slot_objects, steps),
            "answer": answer, "answerable": answer != UNKNOWN, "candidates": mentioned + [UNKNOWN],
            "n_steps": len(steps), "n_slots": 4}


def flip_final(item: dict) -> dict:
    """The same story with the final action's direction flipped (left <-> right)."""
    steps = [dict(s) for s in item["steps"]]
    before = steps[-2]["heading_after"] if len(steps) > 1 else 0
    last = steps[-1]
    last["direction"] = "left" if last["direction"] == "right" else "right"
    last["heading_after"] = turn(before, last["angle"], last["direction"])
    return _finish(item["room"], item["slot_objects"], steps)


def bench_items(n: int, seed: int, max_steps: int = 5, split: str = "train", min_steps: int = 2) -> list[dict]:
    """Paper-style items from vru_lens.bench (balanced: no rotation-blind rule beats chance)."""
    from ..bench import BenchConfig, make_items

    return make_items(n, seed, BenchConfig(style="paper", min_steps=min_steps, max_steps=max_steps), split=split)


def paper_items(n: int, seed: int, min_steps: int = 2, max_steps: int = 5) -> list[dict]:
    rng = random.Random(seed)
    return [paper_item(rng, min_steps, max_steps) for _ in range(n)]


def query_targets(item: dict) -> list[tuple[str, int]]:
    """(target word, heading slot) at each Observation: after an action, the last one being the question."""
    seen = {0: item["slot_objects"][0]}
    out = []
    for s in item["steps"]:
        h = s["heading_after"]
        out.append((seen.get(h, UNKNOWN), h // 90))
        if s["observed"]:
            seen.setdefault(h, s["observed"])
    return out


# ---- second task: list recall ("List: a b c d e\nItem 3:" -> c) ----

def list_item(rng: random.Random) -> dict:
    words = rng.sample(objects(), LIST_LEN)
    k = rng.randint(1, LIST_LEN)
    prompt = "List: " + " ".join(words) + f"\nItem {k}:"
    return {"prompt": prompt, "answer": words[k - 1], "candidates": words}


def list_items(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [list_item(rng) for _ in range(n)]


def list_accuracy(logits, items, tokenizer) -> float:
    """``list_acc``, the one definition: the share of ``items`` whose answer scores highest among their
    candidates (the list's words, each by its first token as `` word``), as VRU accuracy is among candidates.
    ``logits``: [item, vocab] at each item's answer position (log-probabilities do as well)."""
    first = lambda word: tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    right = [it["candidates"][int(row[[first(c) for c in it["candidates"]]].argmax())] == it["answer"]
             for row, it in zip(logits, items)]
    return sum(right) / len(items)


# ---- encoding ----

def encode_vru(tokenizer, items, cue: str = ""):
    """Right-padded ids with, per row, query positions (-1 = none), target ids and heading slots.

    Query positions are every ``\\nObservation:`` token (after an action); with an answer cue
    appended, the cue's last token is the final query instead.
    """
    texts = [it["prompt"] + cue for it in items]
    enc = tokenizer(texts)["input_ids"]
    vocab = tokenizer.get_vocab()
    obs = vocab["\nObservation:"]
    n_max = max(len(it["steps"]) for it in items)
    width = max(len(e) for e in enc)
    ids = torch.full((len(items), width), vocab["<pad>"], dtype=torch.long)
    pos = torch.full((len(items), n_max), -1, dtype=torch.long)
    tgt = torch.zeros((len(items), n_max), dtype=torch.long)
    head = torch.zeros((len(items), n_max), dtype=torch.long)
    for r, (e, it) in enumerate(zip(enc, items)):
        ids[r, : len(e)] = torch.tensor(e)
        qs = [p for p in range(len(e)) if e[p] == obs]
        if cue:
            qs[-1] = len(e) - 1
        targets = query_targets(it)
        assert len(qs) == len(targets), (it["prompt"], qs)
        for k, (p, (word, slot)) in enumerate(zip(qs, targets)):
            pos[r, k], tgt[r, k], head[r, k] = p, vocab[word], slot
    return ids, pos, tgt, head


def encode_plain(tokenizer, items):
    """Ids, final position and answer id of prompt -> single-word answer items (the list task)."""
    enc = tokenizer([it["prompt"] for it in items])["input_ids"]
    vocab = tokenizer.get_vocab()
    width = max(len(e) for e in enc)
    ids = torch.full((len(items), width), vocab["<pad>"], dtype=torch.long)
    for r, e in enumerate(enc):
        ids[r, : len(e)] = torch.tensor(e)
    last = torch.tensor([len(e) - 1 for e in enc])
    ans = torch.tensor([vocab[it["answer"]] for it in items])
    return ids, last, ans
