"""`adgen infer`: type product tags, watch the ad copy stream in; `exit` or Ctrl-D quits.

Like the original tools' terminal demo, except that each response is generated without the
earlier turns, because ad copy needs no chat history. Ctrl-C stops a response while it streams,
and quits at the prompt.
"""

from __future__ import annotations

import argparse
import sys

from shared.argparsing import str_to_bool
from shared.hparams import ADGEN_SOURCE_PREFIX
from shared.inference.params import GenerationParams

EXIT_WORDS = {"exit", "quit"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adgen infer", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        "--model_name_or_path",
        dest="model",
        help="Model to serve: a merged folder, tiny-glm or a hub id; default: the API's start-up "
        "choice (SERVED_MODEL, the newest merged model, else BASE_MODEL). With --checkpoint_dir, the base.",
    )
    parser.add_argument("--checkpoint_dir", help="LoRA adapter folder applied to the base model.")
    parser.add_argument(
        "--source_prefix", default=ADGEN_SOURCE_PREFIX, help="Text put before the tags (default: ADGEN's)."
    )

    defaults = GenerationParams()
    generation = parser.add_argument_group("generation")
    generation.add_argument(
        "--max_new_tokens", type=int, default=defaults.max_new_tokens, help="Maximum new tokens per response."
    )
    generation.add_argument(
        "--do_sample",
        type=str_to_bool,
        nargs="?",
        const=True,
        default=defaults.do_sample,
        metavar="BOOL",
        help="Sample (true) or decode greedily (false).",
    )
    generation.add_argument(
        "--temperature", type=float, default=defaults.temperature, help="Sampling temperature."
    )
    generation.add_argument("--top_p", type=float, default=defaults.top_p, help="Nucleus sampling mass.")
    generation.add_argument(
        "--repetition_penalty",
        type=float,
        default=defaults.repetition_penalty,
        help="Above 1 discourages repeats.",
    )
    generation.add_argument(
        "--seed", type=int, help="Random seed of sampling; default: a new seed per response."
    )
    return parser


def stream_response(engine, prompt: str, params: GenerationParams, source_prefix: str) -> None:
    from shared.inference.requests import ErrorEvent, TokenEvent

    handle = engine.submit(prompt, params, source_prefix=source_prefix or None)
    print("Assistant: ", end="", flush=True)
    try:
        for event in handle:
            if isinstance(event, TokenEvent):
                print(event.text, end="", flush=True)
            elif isinstance(event, ErrorEvent):
                print(f"\n[error: {event.message}]", flush=True)
    except KeyboardInterrupt:
        handle.cancel()
        print("\n[stopped]", flush=True)
        return
    print("\n", flush=True)


def main(argv: list[str]) -> int:
    from shared.logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging("WARNING")
    try:
        params = GenerationParams(
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            temperature=args.temperature,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
        )
    except ValueError as error:
        print(f"adgen infer: error: {error}", file=sys.stderr)
        return 2

    from shared.inference.engine import ContextTooLong, Engine
    from shared.merge import MergeError
    from shared.settings import get_settings

    engine = Engine(get_settings())
    try:
        if args.checkpoint_dir:
            served = engine.load(args.checkpoint_dir, base_model=args.model)
        else:
            served = engine.load(args.model)
    except (MergeError, OSError) as error:
        print(f"adgen infer: error: {error}", file=sys.stderr)
        return 2
    print(f"Serving {served.name} ({served.path}). Type product tags; `exit` or Ctrl-D quits.\n")
    try:
        while True:
            try:
                prompt = input("User: ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                break
            if prompt.lower() in EXIT_WORDS:
                break
            if not prompt:
                continue
            try:
                stream_response(engine, prompt, params, args.source_prefix)
            except ContextTooLong as error:
                print(f"[error: {error}]\n")
    finally:
        engine.close()
    return 0
