#!/bin/bash
# Quiet-machine side-by-side run (issue 12): vLLM-CPU tuned, herd plain vs tuned, batch 1 beside
# llama.cpp. Needs the peers built by shared/peers (install_vllm.sh, llama-cpp-python, make_models.py,
# workload.py) in PEERS_HOME, and a bf16 GGUF of SmolLM2 made with llama_model_quantize
# (allow_requantize; RESULTS.md). About 7 minutes on 2 cores.
cd "$(dirname "$0")/.."
P=${PEERS_HOME:-/work/peers}
echo "=== start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "=== vLLM-CPU 0.32.0 tuned (bind 0-1, tcmalloc+iomp5, compiled)"
(cd $P && PEERS_HOME=$P bash run_vllm_offline.sh final_tuned models/small 0-1 1 0 bfloat16)
echo "=== herd process tuning A/B $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
PYTHONPATH=src HERD_LOG_LEVEL=WARNING timeout 1200 .venv/bin/python benchmarks/bench_process_tuning.py --model-dir $P/models/small --prompts $P/prompts.json --workloads 64 1 --rounds 2 --configs plain tcmalloc,iomp 2>&1 | grep -v "it/s"
echo "=== batch-1 herd vs llama.cpp, SmolLM2 bf16 GGUF $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
PYTHONPATH=src HERD_LOG_LEVEL=WARNING timeout 900 .venv/bin/python benchmarks/bench_batch1_llamacpp.py $P/models/SmolLM2-135M-Instruct.bf16.gguf --llama-python $P/llamacpp/bin/python --rounds 2 2>&1 | grep -v "it/s"
echo "=== vLLM-CPU tuned again $(date -u +%H:%M:%S)"
(cd $P && PEERS_HOME=$P bash run_vllm_offline.sh final_tuned2 models/small 0-1 1 0 bfloat16)
echo "=== end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
