"""Batch-1 greedy decode, herd beside llama.cpp on the same GGUF file, same machine, same run.

    .venv/bin/python benchmarks/bench_batch1_llamacpp.py MODEL.gguf \
        --llama-python /work/peers/llamacpp/bin/python --rounds 3

llama.cpp runs through llama-cpp-python in its own virtualenv (`--llama-python`; see
shared/notes/cpu-peers.md for the build), in a subprocess per round; herd runs eager and compiled
in this process. Each round times one 128-token completion of the same short prompt after a
warm-up, EOS suppressed on both sides, threads = the machine's cores. The order within a round
alternates (herd first, then llama.cpp first) so a drifting machine load does not favour one.
"""

import argparse
import json
import os
import subprocess
import sys
import time

PROMPT = "The history of the city begins"

LLAMA_CPP = """
import json, sys, time
from llama_cpp import Llama
path, n, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=512, n_threads=threads, n_batch=64, verbose=False)
eos = llm.token_eos()
kw = dict(max_tokens=n, temperature=0.0, logit_bias={eos: -1e9})
llm.create_completion(sys.argv[5], **{**kw, "max_tokens": 8})
out = []
for _ in range(rounds):
    llm.reset()
    t0 = time.perf_counter()
    r = llm.create_completion(sys.argv[5], **kw)
    out.append(r["usage"]["completion_tokens"] / (time.perf_counter() - t0))
print(json.dumps(out))
"""


# herd's batch-1 paths: the fused C++ step (the default), a compiled graph, eager op by op
HERD = {
    "herd fused": dict(enforce_eager=True),
    "herd compiled": dict(enforce_eager=False, fused_decode_max_batch=0),
    "herd eager": dict(enforce_eager=True, fused_decode_max_batch=0),
}


def herd_rounds(path: str, n: int, rounds: int, **kw) -> list[float]:
    from herd import LLM, SamplingParams

    llm = LLM(path, dtype="bfloat16", compile_max_batch=1, max_num_seqs=1, **kw)
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=8))  # warm-up, compiles
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        done = llm.generate([PROMPT], params, use_tqdm=False)
        out.append(len(done[0].outputs[0].token_ids) / (time.perf_counter() - t0))
    return out


def llamacpp_rounds(python: str, path: str, n: int, rounds: int) -> list[float]:
    args = [python, "-c", LLAMA_CPP, path, str(n), str(os.cpu_count()), str(rounds), PROMPT]
    res = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a GGUF file both engines load (bf16 for the issue's figure)")
    ap.add_argument("--llama-python", required=True, help="python of llama-cpp-python's venv")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--herd", nargs="+", default=list(HERD), choices=list(HERD))
    a = ap.parse_args()
    results: dict[str, list[float]] = {"llama.cpp": [], **{k: [] for k in a.herd}}
    for r in range(a.rounds):
        sides = ["llama.cpp", "herd"] if r % 2 else ["herd", "llama.cpp"]
        for side in sides:
            if side == "llama.cpp":
                results["llama.cpp"] += llamacpp_rounds(a.llama_python, a.model, a.tokens, 2)
            else:
                for name in a.herd:
                    results[name] += herd_rounds(a.model, a.tokens, 2, **HERD[name])
        print(f"round {r + 1}/{a.rounds}: load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    table = {k: {"median_tok_s": sorted(v)[len(v) // 2], "all": v} for k, v in results.items()}
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
