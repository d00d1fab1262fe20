// ppmoe-dce is a pass over the module's MLIR ops: the ops whose results nothing uses are
// erased, last to first (what fed only them goes too), then the weight arguments nothing reads,
// with their types in the function's signature; a shard.send stays, as do the inputs.

// Two dead ops written into a Mixtral block's sharded IR: erased, and the IR is again the one
// the compiler printed.
// RUN: %ppmoe inspect %fixtures/mixtral_block_dynamo/model.onnx --tp 2 --emit sharded > %t.sharded.mlir
// RUN: sed '/tensor.reshape %arg0/a\    %dead = "core.neg"(%reshape) : (tensor<16x64xf32>) -> tensor<16x64xf32>\n    %dead2 = "core.exp"(%dead) : (tensor<16x64xf32>) -> tensor<16x64xf32>' %t.sharded.mlir > %t.dead.mlir
// RUN: FileCheck %s --check-prefix=DEAD < %t.dead.mlir
// DEAD: "core.neg"
// DEAD-NEXT: "core.exp"
// RUN: %ppmoe opt %t.dead.mlir --pass-pipeline='builtin.module(ppmoe-dce)' > %t.clean.mlir
// RUN: FileCheck %s --check-prefix=CLEAN < %t.clean.mlir
// CLEAN: pipeline = "{{.*}}ppmoe-dce, ppmoe-weight-dtype{dtype=fp32}, ppmoe-einsum-to-matmul, ppmoe-compare-as-f32, ppmoe-dce"
// CLEAN-NOT: "core.neg"
// CLEAN-NOT: "core.exp"
// RUN: grep -v 'pipeline = ' %t.sharded.mlir > %t.a
// RUN: grep -v 'pipeline = ' %t.clean.mlir > %t.b
// RUN: diff %t.a %t.b

// The whole weights of Qwen2-MoE's shared expert, which dense TP replaced by each rank's
// pieces: their arguments go, and the signature with them.
// RUN: %ppmoe inspect %fixtures/qwen2moe_block_dynamo/model.onnx --emit moe > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' > %t.shard.mlir
// RUN: FileCheck %s --check-prefix=WHOLE < %t.shard.mlir
// WHOLE: %arg1: tensor<64x128xf32> {core.weight = "inner.shared_expert.gate_proj.weight.const1"}
// RUN: %ppmoe opt %t.shard.mlir --pass-pipeline='builtin.module(ppmoe-dce)' | FileCheck %s
// CHECK-LABEL: func.func @rank0(%arg0: tensor<1x16x64xf32> {core.input = "hidden_states"} loc(unknown), %arg1: tensor<64x4xf32> {core.weight = "inner.gate.weight.const4"}
// CHECK-NOT: tensor<64x128xf32> {core.weight = "inner.shared_expert.gate_proj.weight.const1"}
// CHECK: shard.all_reduce
// CHECK-LABEL: func.func @rank1(
// CHECK-NOT: tensor<64x128xf32> {core.weight = "inner.shared_expert.gate_proj.weight.const1"}
