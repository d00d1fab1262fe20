#!/usr/bin/env bash
# The main job on a bundled example: a real Mixtral MoE block exported by PyTorch's dynamo
# exporter is compiled, its IR shown, its bundle run on the CPU backend and checked against
# PyTorch's output.
#
#   bash examples/demo.sh [FIXTURE]     (default: mixtral_block_dynamo; see tests/fixtures)
set -euo pipefail
cd "$(dirname "$0")/.."
fixture=${1:-mixtral_block_dynamo}
dir=tests/fixtures/$fixture
input=$(sed -n 's/.*"input_name": "\(.*\)".*/\1/p' "$dir/fixture.json")
output=$(tr -d '\n ' < "$dir/fixture.json" | sed -n 's/.*"outputs":\["\([^"]*\)".*/\1/p')
work=${TMPDIR:-/tmp}/ppmoe-demo
cargo build --quiet --bin ppmoe
ppmoe=target/debug/ppmoe

echo "== $fixture: the core stage (first lines) =="
$ppmoe inspect "$dir/model.onnx" --emit core | head -n 12
echo "..."
echo "== compile =="
$ppmoe compile "$dir/model.onnx" -o "$work/bundle"
echo "== run on the CPU backend, check against PyTorch =="
$ppmoe run "$work/bundle" --input "$dir/$input.npy" --output-dir "$work/out" --backend cpu --check "$dir/$output.npy"
