"""The `adgen` command: one subcommand per task, each imported only when it runs.

Heavy modules (torch, transformers) load inside the subcommand, so `adgen --help` and the API's
job handling stay fast and never touch a GPU.
"""

from __future__ import annotations

import importlib
import sys

# Subcommand name -> (module, one-line help). Each module exposes `main(argv: list[str]) -> int | None`.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("shared.train.workflow", "Fine-tune a model (LoRA or full) with the original ADGEN flags."),
    "eval": ("shared.eval.predict", "Generate predictions for a dataset and score them."),
    "score": ("shared.eval.metrics", "Score a generated_predictions.jsonl file with BLEU-4 and ROUGE."),
    "benchmark": ("shared.eval.benchmark", "Evaluate Original and fine-tuned models; print the ADGEN table."),
    "merge": ("shared.merge", "Merge a LoRA adapter into its base model and save the result."),
    "build-tiny-model": ("shared.modeling.tiny", "Build the small GLM model used by default."),
    "worker": ("shared.jobs.worker", "Run an rq worker on the `train` or `eval` queue."),
    "serve": ("services.api.main", "Run the HTTP API (jobs, /generate, playground) with uvicorn."),
    "infer": ("shared.inference.terminal", "Stream ad copy in an interactive terminal."),
    "dev": ("shared.devstack", "Run Redis, both workers and the API as local processes."),
}


def _print_usage() -> None:
    print("usage: adgen COMMAND [ARGS...]\n\ncommands:")
    for name, (_, help_text) in COMMANDS.items():
        print(f"  {name:<18} {help_text}")
    print("\nRun `adgen COMMAND --help` for the options of one command.")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        _print_usage()
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"adgen: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    code = module.main(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
