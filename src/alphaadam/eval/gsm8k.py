"""GSM8K exact-match scoring without lm-evaluation-harness.

Greedy decoding of ``Question: ...\\nAnswer:`` prompts (the format the SFT task trains on and
lm-eval's ``gsm8k`` task uses), then the final number is compared with the gold answer after
``####``. Two extractions, as in lm-eval: *strict* needs the ``#### <number>`` line, *flexible*
takes the last number in the completion.

    python -m alphaadam.eval.gsm8k --model runs/.../final_model --data ../shared/data/gsm8k
"""

from __future__ import annotations

import argparse
import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import torch

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
STOP_STRINGS = ("Question:", "</s>", "<|im_end|>")

# A number: optional sign (before or after a "$"), digits with thousands commas or plain,
# optional decimals. "1,2,3" is three numbers, "1,000" is one.
_NUMBER = r"(-)?\s?\$?\s?(-)?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
_NUMBER_RE = re.compile(_NUMBER)
_STRICT_RE = re.compile(r"####\s*" + _NUMBER)


def format_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question.strip())


def _to_decimal(match: re.Match) -> Decimal:
    sign = "-" if (match.group(1) or match.group(2)) else ""
    return Decimal(sign + match.group(3).replace(",", ""))


def truncate_at_stop(text: str) -> str:
    """The completion up to the first stop string (a model may go on to a new question)."""
    cut = len(text)
    for stop in STOP_STRINGS:
        pos = text.find(stop)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut]


def extract_answer(text: str, strict: bool = False) -> Decimal | None:
    """The final numeric answer of a completion, or ``None``.

    ``strict``: only the number after the first ``####``. Otherwise that number when present,
    else the last number in the text.
    """
    text = truncate_at_stop(text)
    match = _STRICT_RE.search(text)
    if match is not None:
        return _to_decimal(match)
    if strict:
        return None
    matches = list(_NUMBER_RE.finditer(text))
    return _to_decimal(matches[-1]) if matches else None


def gold_answer(answer: str) -> Decimal:
    """The reference number of a GSM8K ``answer`` field (the text after ``####``)."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####' line: {answer[-80:]!r}")
    tail = answer.split("####")[-1].strip()
    try:
        return Decimal(tail.replace(",", "").replace("$", ""))
    except InvalidOperation as err:
        raise ValueError(f"GSM8K gold answer {tail!r} is not a number") from err


def is_correct(completion: str, answer: str, strict: bool = False) -> bool:
    predicted = extract_answer(completion, strict=strict)
    return predicted is not None and predicted == gold_answer(answer)


def read_gsm8k_jsonl(path: str | Path) -> list[dict[str, str]]:
    """The ``question``/``answer`` records of a GSM8K jsonl file, each checked at load: valid
    JSON, both keys, and a gold answer (``#### <number>``), so that a bad line is named by
    file and line now, not found in training (or after it, when the test split is scored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K: missing {path}")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}:{line_no}: not valid JSON ({err.msg} at column {err.colno})"
                ) from None
            if not isinstance(row, dict) or "question" not in row or "answer" not in row:
                raise ValueError(f"{path}:{line_no}: expected keys 'question' and 'answer'")
            try:
                gold_answer(row["answer"])
            except ValueError as err:
                raise ValueError(f"{path}:{line_no}: {err}") from None
            records.append({"question": row["question"], "answer": row["answer"]})
    return records


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> list[str]:
    """Greedy completions, batched with left padding."""
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = model.training
    model.eval()
    completions = []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                stop_strings=list(STOP_STRINGS),
                tokenizer=tokenizer,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            completions += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return completions


def score_gsm8k(
    model,
    tokenizer,
    records: list[dict[str, str]],
    max_new_tokens: int = 256,
    batch_size: int = 8,
    fewshot: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Exact-match accuracy (strict and flexible) of greedy answers on ``records``."""
    prefix = "".join(f"{format_prompt(r['question'])} {r['answer']}\n\n" for r in fewshot or [])
    prompts = [prefix + format_prompt(r["question"]) for r in records]
    completions = generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size)
    strict = [is_correct(c, r["answer"], strict=True) for c, r in zip(completions, records)]
    flexible = [is_correct(c, r["answer"]) for c, r in zip(completions, records)]
    n = len(records)
    return {
        "exact_match_strict": sum(strict) / n,
        "exact_match_flexible": sum(flexible) / n,
        "num_examples": n,
        "completions": completions,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF model directory or hub id")
    parser.add_argument("--tokenizer", default=None, help="defaults to --model")
    parser.add_argument(
        "--data", required=True, help="test.jsonl, or a directory holding test.jsonl"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    parser.add_argument("--num-fewshot", type=int, default=0, help="train.jsonl examples as prefix")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=None, help="write metrics and completions (json)")
    args = parser.parse_args(argv)

    data = Path(args.data)
    test_path = data / "test.jsonl" if data.is_dir() else data
    records = read_gsm8k_jsonl(test_path)[: args.limit]
    fewshot = []
    if args.num_fewshot:
        fewshot = read_gsm8k_jsonl(test_path.parent / "train.jsonl")[: args.num_fewshot]
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model.to(args.device)
    result = score_gsm8k(model, tokenizer, records, args.max_new_tokens, args.batch_size, fewshot)
    summary = {k: v for k, v in result.items() if k != "completions"}
    print(json.dumps(summary, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
