"""Score a finished GSM8K fine-tuning run and record the accuracy Table 2 reads.

    python -m alphaadam.eval.gsm8k_run RUN_DIR --data-dir ../shared/data/gsm8k            # lm-eval
    python -m alphaadam.eval.gsm8k_run RUN_DIR --data-dir ... --harness builtin           # no lm-eval

The run's final checkpoint is exported to ``RUN_DIR/hf_model`` (once), scored, and the result
written to ``RUN_DIR/gsm8k_eval_<harness>.json``; ``summary.json`` gets ``final.accuracy``
(strict ``#### <number>`` match, a fraction) and an ``accuracy_eval`` block saying how it was
obtained. ``--data-dir`` omitted: the hub's ``openai/gsm8k``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from alphaadam import run_dir as rd
from alphaadam.eval import LM_EVAL_TASKS_DIR
from alphaadam.eval.export import HF_MODEL_DIR, export_hf_model

LM_EVAL_TASK = "gsm8k_local"


def run_lm_eval(
    model_dir: Path,
    data_dir: str | None,
    num_fewshot: int | None,
    limit: int | None,
    batch_size: int | str,
    dtype: str,
    device: str | None,
    max_gen_toks: int | None = None,
) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    metadata = {"data_dir": data_dir} if data_dir else {}
    manager = TaskManager(include_path=str(LM_EVAL_TASKS_DIR), metadata=metadata)
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype={dtype}",
        tasks=[LM_EVAL_TASK],
        num_fewshot=num_fewshot,
        task_manager=manager,
        limit=limit,
        batch_size=batch_size,
        device=device,
        gen_kwargs=f"max_gen_toks={max_gen_toks}" if max_gen_toks else None,
    )
    res = out["results"][LM_EVAL_TASK]
    return {
        "accuracy": float(res["exact_match,strict-match"]),
        "exact_match_strict": float(res["exact_match,strict-match"]),
        "exact_match_flexible": float(res["exact_match,flexible-extract"]),
        "num_examples": int(res.get("sample_len", 0)),
        "num_fewshot": out["configs"][LM_EVAL_TASK].get("num_fewshot"),
        "lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
    }


def run_builtin(
    model_dir: Path,
    data_dir: str | None,
    num_fewshot: int,
    limit: int | None,
    batch_size: int,
    dtype: str,
    device: str | None,
    max_new_tokens: int,
) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alphaadam.eval.gsm8k import score_gsm8k
    from alphaadam.tasks.gsm8k import HF_GSM8K_DATASET, load_gsm8k_split

    test = load_gsm8k_split("test", data_dir, HF_GSM8K_DATASET)[:limit]
    fewshot = load_gsm8k_split("train", data_dir, HF_GSM8K_DATASET)[:num_fewshot]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = score_gsm8k(model, tokenizer, test, max_new_tokens, batch_size, fewshot)
    return {
        "accuracy": result["exact_match_strict"],
        "exact_match_strict": result["exact_match_strict"],
        "exact_match_flexible": result["exact_match_flexible"],
        "num_examples": result["num_examples"],
        "num_fewshot": num_fewshot,
        "completions": result["completions"],
    }


def record(run_dir: Path, harness: str, result: dict[str, Any]) -> None:
    (run_dir / f"gsm8k_eval_{harness}.json").write_text(json.dumps(result, indent=2))
    summary = rd.read_summary(run_dir)
    if summary is None:
        raise FileNotFoundError(f"{run_dir} has no summary.json")
    summary["final"]["accuracy"] = result["accuracy"]
    summary["accuracy_eval"] = {
        "harness": harness,
        "metric": "exact_match strict (#### <number>)",
        **{k: v for k, v in result.items() if k != "completions"},
    }
    rd.write_json_atomic(run_dir / rd.SUMMARY, summary)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data-dir", default=None, help="train.jsonl + test.jsonl (else hub)")
    parser.add_argument("--harness", choices=["lm_eval", "builtin"], default="lm_eval")
    parser.add_argument(
        "--num-fewshot",
        type=int,
        default=None,
        help="lm_eval: the task's 5 when omitted; builtin: 0 when omitted",
    )
    parser.add_argument("--limit", type=int, default=None, help="first N test problems")
    parser.add_argument("--batch-size", default="8")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--no-record", action="store_true", help="leave summary.json alone")
    args = parser.parse_args(argv)

    run_dir = Path(args.run_dir)
    model_dir = run_dir / HF_MODEL_DIR
    if not (model_dir / "config.json").is_file():
        export_hf_model(run_dir, model_dir)
    if args.harness == "lm_eval":
        result = run_lm_eval(
            model_dir,
            args.data_dir,
            args.num_fewshot,
            args.limit,
            args.batch_size,
            args.dtype,
            args.device,
            args.max_new_tokens,
        )
    else:
        result = run_builtin(
            model_dir,
            args.data_dir,
            args.num_fewshot or 0,
            args.limit,
            int(args.batch_size),
            args.dtype,
            args.device,
            args.max_new_tokens,
        )
    if not args.no_record:
        record(run_dir, args.harness, result)
    print(json.dumps({k: v for k, v in result.items() if k != "completions"}, indent=2))
    return result


if __name__ == "__main__":
    main()
