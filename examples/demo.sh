#!/usr/bin/env bash
# The main job on a bundled example: a real Qwen2-MoE causal LM (tiny, random) exported by
# PyTorch's dynamo exporter is compiled for a tp x pp grid; the MoE layers found and the
# rewritten IR (PPMoE: local slice + one all-reduce) are shown; the bundle runs on the CPU
# backend, one thread per rank, and is checked against PyTorch's output.
#
#   bash examples/demo.sh [FIXTURE [TP [PP]]]   (default: qwen2moe_lm_dynamo 2 2)
set -euo pipefail
cd "$(dirname "$0")/.."
fixture=${1:-qwen2moe_lm_dynamo}
tp=${2:-2}
pp=${3:-2}
dir=tests/fixtures/$fixture
input=$(sed -n 's/.*"input_name": "\(.*\)".*/\1/p' "$dir/fixture.json")
output=$(tr -d '\n ' < "$dir/fixture.json" | sed -n 's/.*"outputs":\["\([^"]*\)".*/\1/p' | tr -c 'A-Za-z0-9_.\n-' '_')
work=${TMPDIR:-/tmp}/ppmoe-demo
cargo build --quiet --bin ppmoe
ppmoe=target/debug/ppmoe

echo "== $fixture: the MoE layers found =="
$ppmoe inspect "$dir/model.onnx" --summary
echo
echo "== the pipelined IR of rank 0 (tp $tp x pp $pp), MoE and communication ops =="
$ppmoe inspect "$dir/model.onnx" --tp "$tp" --pp "$pp" --emit pipelined \
  | awk '/func.func @rank1/ { rest = 1 } !rest { print }' | grep -E 'moe\.|shard\.' | cut -c1-160
echo
echo "== compile for tp $tp x pp $pp =="
$ppmoe compile "$dir/model.onnx" -o "$work/bundle" --tp "$tp" --pp "$pp"
echo
echo "== run on the CPU backend ($((tp * pp)) ranks as threads), check against PyTorch =="
$ppmoe run "$work/bundle" --input "$dir/$input.npy" --output-dir "$work/out" --backend cpu --check "$dir/$output.npy"
