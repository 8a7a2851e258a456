"""`herd demo-model`, `herd fetch-model`, `herd generate` and `herd chat`: the offline engine
from the shell."""

import argparse
import sys
import time
from pathlib import Path

from herd.cli import CliError


def register(sub: argparse._SubParsersAction) -> None:
    from herd.cli.config_args import add_config_args
    from herd.engine.config import flat_fields

    p = sub.add_parser("demo-model", help="write the small random-weight demo Llama to DIR")
    p.add_argument("dir", nargs="?", help="where to write it (default: the herd cache)")
    p.set_defaults(func=demo_model)
    p = sub.add_parser(
        "fetch-model", help="fetch the default model (SmolLM2-135M-Instruct GGUF) into the cache"
    )
    p.set_defaults(func=fetch_model)

    for name, helptext in (("generate", "complete prompts offline"), ("chat", "chat offline")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "--model",
            help="local Hugging Face model directory or .gguf file "
            "(default: SmolLM2-135M-Instruct, fetched on first use)",
        )
        p.add_argument("--max-tokens", type=int, default=64)
        p.add_argument("--temperature", type=float, default=0.0)
        add_config_args(p.add_argument_group("engine"), flat_fields(), skip=("model",))
        p.add_argument("prompt", nargs="+", help="prompt(s) (chat: one user message)")
        p.set_defaults(func=generate)


def demo_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from herd.model.demo import default_demo_dir, write_demo_model

    path = write_demo_model(Path(args.dir) if args.dir else default_demo_dir())
    print(f"wrote a random-weight demo Llama (it outputs gibberish) to {path}")
    return 0


def fetch_model(args: argparse.Namespace) -> int:
    from herd.cli.gateway_cmds import default_model

    print(default_model())
    return 0


def generate(args: argparse.Namespace) -> int:
    from herd.engine.process_tuning import maybe_reexec

    if Path(sys.argv[0]).name == "herd":  # the command itself, never a host calling main()
        maybe_reexec()  # as `herd replica`: tcmalloc / Intel OpenMP preloaded when present
    from herd import SamplingParams
    from herd.cli.config_args import config_values
    from herd.cli.gateway_cmds import default_model
    from herd.engine.config import flat_fields
    from herd.engine.errors import ModelLoadError
    from herd.engine.llm import LLM

    model = args.model or default_model()
    if not args.model:
        print(f"(no --model: using {model})", file=sys.stderr)
    settings = config_values(args, flat_fields())
    settings["model"] = str(model)
    try:
        llm = LLM(**settings)
        params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
        t0 = time.perf_counter()
        if args.command == "chat":
            outs = llm.chat([{"role": "user", "content": " ".join(args.prompt)}], params)
        else:
            outs = llm.generate(args.prompt, params)
    except (ValueError, ModelLoadError) as exc:
        raise CliError(str(exc)) from None
    elapsed = time.perf_counter() - t0
    for out in outs:
        print(out.outputs[0].text)
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print(f"({tokens} tokens in {elapsed:.2f}s)", file=sys.stderr)
    return 0
