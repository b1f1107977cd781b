"""Prompts -> token ids, candidate answer ids and step-end positions, for any tokenizer.

Everything model-facing is rendered here so that evaluation, probing,
patching and fine-tuning see the same text: plain prompts end in an answer
cue and answers start with a space; chat prompts go through the tokenizer's
chat template and answers start the assistant turn. A prompt in the study's
format (style "paper", ending in an empty ``Observation:``) is its own answer
cue; as a chat it gets the study's system message and no extra instruction. Batches are right-padded:
with causal attention no real token ever sees a pad, so no mask is needed and
every position keeps its own index. ``PairTokens.from_prompts`` tokenizes pairs of the
user's own task (any prompts, single-token answers) into the same shape as VRUBench pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from .bench.styles import SYSTEM, is_paper
from .bench.templates import ANSWER_CUE, CHAT_INSTRUCTION


def render(prompt: str, tokenizer, chat: bool = False) -> str:
    """The text the model reads for a VRUBench prompt."""
    paper = is_paper(prompt)
    if not chat:
        return prompt if paper else prompt + ANSWER_CUE
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; run without --chat / chat=False")
    if paper:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    else:
        messages = [{"role": "user", "content": prompt + CHAT_INSTRUCTION}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def is_chat_model(model_or_tokenizer, name: str | None = None) -> bool:
    """Whether a model is instruction-tuned, so VRUBench should reach it as a chat (the study's setting).

    True when the tokenizer has a chat template and the model's name says instruct/chat/-it; a
    base model whose tokenizer merely ships a template (gemma-3-270m) reads plain text.
    """
    import re

    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    name = name or getattr(model_or_tokenizer, "vru_name", None) or getattr(tok, "name_or_path", "") or ""
    return bool(getattr(tok, "chat_template", None)) and bool(re.search(r"instruct|chat|(^|[-_])it($|[-_])", name.lower()))


def chat_for(model_or_tokenizer, chat: bool | None) -> bool:
    """``chat`` if given, else the model's kind (``is_chat_model``): the one reading of ``chat=None``
    that every function taking ``chat`` uses, so that all of them render the same prompts."""
    return is_chat_model(model_or_tokenizer) if chat is None else bool(chat)


def answer_text(answer: str, chat: bool = False) -> str:
    return answer if chat else " " + answer


def encode(tokenizer, text: str, chat: bool = False) -> list[int]:
    """Token ids of a rendered prompt (chat templates carry their own special tokens)."""
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


def answer_ids(tokenizer, answer: str, chat: bool = False) -> list[int]:
    ids = tokenizer(answer_text(answer, chat), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {answer!r} encodes to no tokens")
    return ids


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch"]]:
    """Right-padded ids and true lengths."""
    if not seqs:
        raise ValueError("nothing to encode: the batch is empty")
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lengths


def batches(n: int, batch_size: int):
    """Index slices covering range(n) in chunks."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def char_to_token_positions(tokenizer, text: str, char_ends: list[int], chat: bool = False) -> list[int]:
    """For each character offset (end of a span), the index of the token holding its last character."""
    enc = tokenizer(text, add_special_tokens=not chat, return_offsets_mapping=True)
    spans = enc["offset_mapping"]
    out = []
    for end in char_ends:
        hits = [i for i, (a, b) in enumerate(spans) if a < end <= b or (b == end and b > a)]
        if not hits:
            raise ValueError(f"no token ends at character {end} of the rendered prompt")
        out.append(hits[0])
    return out


def step_positions(tokenizer, item: dict, chat: bool = False) -> list[int]:
    """Token positions of the end of every step and of the question, in the rendered prompt."""
    text = render(item["prompt"], tokenizer, chat)
    shift = text.index(item["prompt"])
    ends = [e + shift for e in (*item["step_ends"], item["question_end"])]
    return char_to_token_positions(tokenizer, text, ends, chat)


@dataclass
class PairTokens:
    """Tokenized counterfactual pairs: equal length within a pair, right-padded across pairs."""

    clean: Int[Tensor, "pair pos"]
    corrupt: Int[Tensor, "pair pos"]
    lengths: Int[Tensor, "pair"]  # true length; the final position is lengths - 1
    clean_answer: Int[Tensor, "pair"]  # first token of the clean answer
    corrupt_answer: Int[Tensor, "pair"]  # first token of the corrupted answer
    pairs: object  # where they came from: a bench.PairSet (items, prompts, dropped counts) or PromptPairs (from_prompts)

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def final_pos(self) -> Int[Tensor, "pair"]:
        return self.lengths - 1

    def to(self, device) -> "PairTokens":
        move = lambda t: t.to(device)  # noqa: E731
        return PairTokens(move(self.clean), move(self.corrupt), move(self.lengths), move(self.clean_answer),
                          move(self.corrupt_answer), self.pairs)

    @classmethod
    def from_prompts(cls, tokenizer, clean, corrupt, clean_answers, corrupt_answers, chat: bool | None = None,
                     answer_token: str = "single") -> "PairTokens":
        """Pairs of the user's own prompts and answers (``tokens.from_prompts``)."""
        return from_prompts(tokenizer, clean, corrupt, clean_answers, corrupt_answers, chat, answer_token)

    def __getitem__(self, sl: slice) -> "PairTokens":
        """Pairs ``sl``, trimmed to their longest prompt (the source ``pairs`` kept whole)."""
        width = int(self.lengths[sl].max())
        return PairTokens(self.clean[sl, :width], self.corrupt[sl, :width], self.lengths[sl], self.clean_answer[sl],
                          self.corrupt_answer[sl], self.pairs)

    def chunks(self, batch_size: int):
        """(slice, trimmed pairs) in batches of ``batch_size``: the one way every stage batches pairs."""
        for sl in batches(len(self), batch_size):
            yield sl, self[sl]

    def clean_examples(self) -> list[tuple[list[int], int]]:
        """(clean prompt + clean answer ids, index of the answer token) per pair: what training on the pairs reads."""
        return [(self.clean[i, :n].tolist() + [int(self.clean_answer[i])], n) for i, n in enumerate(self.lengths.tolist())]


def tokenize_pairs(tokenizer, items, chat: bool | None = None, max_pairs: int | None = None,
                   kind: str = "observed") -> PairTokens:
    """Counterfactual pairs matched for this tokenizer (unmatched ones dropped and counted).

    kind "observed" (both answers observed objects; the main set) or "unknown" (object vs unknown).
    chat: None = the model's kind (``chat_for``).
    """
    from .bench.pairs import build_pairs

    chat = chat_for(tokenizer, chat)

    count = lambda p: len(encode(tokenizer, render(p, tokenizer, chat), chat))  # noqa: E731
    first = lambda a: answer_ids(tokenizer, a, chat)[0]  # noqa: E731
    pairs = build_pairs(items, count, first, max_pairs=max_pairs, kind=kind)
    pid = pad_id(tokenizer)
    clean, lengths = pad_right([encode(tokenizer, render(p, tokenizer, chat), chat) for p in pairs.clean_prompts], pid)
    corrupt, lengths2 = pad_right([encode(tokenizer, render(p, tokenizer, chat), chat) for p in pairs.corrupt_prompts], pid)
    if not torch.equal(lengths, lengths2):
        bad = int((lengths != lengths2).nonzero()[0])
        raise AssertionError(f"pair {bad} ({pairs.items[bad]['id']}) has unequal token lengths")
    return PairTokens(
        clean, corrupt, lengths,
        torch.tensor([first(a) for a in pairs.clean_answers]),
        torch.tensor([first(a) for a in pairs.corrupt_answers]),
        pairs,
    )


ANSWER_TOKENS = ("single", "first")  # answers must be one token / the first token of a longer answer is read


@dataclass
class PromptPairs:
    """The prompt pairs of a task of the user's own, as given (what a ``PairTokens.pairs`` holds for them)."""

    clean: list  # prompts: text, or token ids used as they are
    corrupt: list
    clean_answers: list  # answers: text that follows the prompt (leading space included), or a token id
    corrupt_answers: list
    chat: bool
    answer_token: str  # "single" or "first" (ANSWER_TOKENS)
    multi_token: list  # pair indices whose answers had more than one token (their first token is read)

    def summary(self) -> dict:
        return {"source": "prompts", "n_pairs": len(self.clean), "chat": self.chat, "answer_token": self.answer_token,
                "multi_token_answers": len(self.multi_token)}


def _prompt_ids(tokenizer, prompt, chat: bool, where: str) -> list[int]:
    if isinstance(prompt, str):
        if not chat:
            return encode(tokenizer, prompt)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("this tokenizer has no chat template; build the pairs with chat=False")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return encode(tokenizer, text, chat=True)
    ids = list(prompt) if not isinstance(prompt, torch.Tensor) else prompt.tolist()
    if chat or not ids or not all(isinstance(t, int) and 0 <= t < len(tokenizer) for t in ids):
        raise ValueError(f"{where} must be text, or a non-empty list of token ids below {len(tokenizer)} "
                         f"(ids are read as they are, so chat must be False), got {str(prompt)[:80]!r}")
    return ids


def _answer_id(tokenizer, answer, answer_token: str, where: str) -> tuple[int, bool]:
    """(the token read, whether the answer had more than one)."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(tokenizer):
            raise ValueError(f"{where} {answer} is not a token id of this tokenizer (0..{len(tokenizer) - 1})")
        return answer, False
    if not isinstance(answer, str):
        raise ValueError(f"{where} must be text or a token id, got {answer!r}")
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{where} {answer!r} encodes to no tokens")
    if len(ids) > 1 and answer_token != "first":
        pieces = [tokenizer.decode([t]) for t in ids]
        raise ValueError(f"{where} {answer!r} is {len(ids)} tokens {pieces}; give a one-token answer, or "
                         f"answer_token='first' to read its first token {pieces[0]!r}")
    return ids[0], len(ids) > 1


def from_prompts(tokenizer, clean, corrupt, clean_answers, corrupt_answers, chat: bool | None = None,
                 answer_token: str = "single") -> PairTokens:
    """Counterfactual pairs of the user's own task, tokenized like VRUBench pairs (``PairTokens.from_prompts``).

    ``clean``/``corrupt``: prompts (text, or lists of token ids used as they are); pair i must have equal
    token lengths. ``clean_answers``/``corrupt_answers``: the text the model should continue with (a leading
    space included where the tokenizer needs one) or a token id. Chat (None: as ``is_chat_model`` says;
    ids are always plain) renders each prompt as one user turn. An answer of several tokens is refused unless
    ``answer_token="first"``: the first token is read (the next-token logit difference sees no other).
    Everything is checked before anything is returned; a bad pair is named.
    """
    if answer_token not in ANSWER_TOKENS:
        raise ValueError(f"answer_token must be one of {', '.join(ANSWER_TOKENS)}, got {answer_token!r}")
    lists = {"clean": clean, "corrupt": corrupt, "clean_answers": clean_answers, "corrupt_answers": corrupt_answers}
    lists = {k: list(v) for k, v in lists.items()}
    sizes = {k: len(v) for k, v in lists.items()}
    if len(set(sizes.values())) != 1 or not sizes["clean"]:
        raise ValueError(f"clean, corrupt and both answer lists must be equally long and not empty, got {sizes}")
    if chat is None:
        chat = all(isinstance(p, str) for p in lists["clean"]) and is_chat_model(tokenizer)
    ids, answers, multi = {"clean": [], "corrupt": []}, {"clean": [], "corrupt": []}, []
    for i in range(sizes["clean"]):
        for side in ("clean", "corrupt"):
            ids[side].append(_prompt_ids(tokenizer, lists[side][i], chat, f"pair {i}: the {side} prompt"))
        n_clean, n_corrupt = len(ids["clean"][i]), len(ids["corrupt"][i])
        if n_clean != n_corrupt:
            raise ValueError(f"pair {i} has unequal token lengths (clean {n_clean}, corrupt {n_corrupt}): "
                             f"{str(lists['clean'][i])[:60]!r} / {str(lists['corrupt'][i])[:60]!r}; reword one "
                             "so that both tokenize to the same length")
        for side in ("clean", "corrupt"):
            tid, long = _answer_id(tokenizer, lists[f"{side}_answers"][i], answer_token, f"pair {i}: the {side} answer")
            answers[side].append(tid)
            if long and i not in multi:
                multi.append(i)
        if answers["clean"][i] == answers["corrupt"][i]:
            raise ValueError(f"pair {i}: the clean and corrupt answers read the same token "
                             f"{tokenizer.decode([answers['clean'][i]])!r}, so their logit difference is always 0")
    pid = pad_id(tokenizer)
    clean_ids, lengths = pad_right(ids["clean"], pid)
    corrupt_ids, _ = pad_right(ids["corrupt"], pid)
    source = PromptPairs(lists["clean"], lists["corrupt"], lists["clean_answers"], lists["corrupt_answers"],
                         bool(chat), answer_token, multi)
    return PairTokens(clean_ids, corrupt_ids, lengths, torch.tensor(answers["clean"]), torch.tensor(answers["corrupt"]),
                      source)
