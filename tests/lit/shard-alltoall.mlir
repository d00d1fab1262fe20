// ppmoe-shard: the experts cut over the TP group, the layer in the all-to-all form (tokens
// split, dispatch, exchange, the local experts, exchange back, combine, gather the tokens);
// the dispatch marks the layer's strategy. The rank's share of the tokens and of the routing is
// a tensor.extract_slice marked ppmoe.token_slice (its axis and part count), which reads back
// as the token slice it is.
// The input is a Mixtral block's moe IR as `--emit moe` prints it (its weights' source
// relative to this file).

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard{tp=2 strategy=alltoall})' | FileCheck %s

// CHECK: shard.grid @grid(shape = 1x1x2)
// CHECK-LABEL: func.func @rank0(
// The expert stacks, cut into each rank's two of four experts.
// CHECK-SAME: tensor<2x256x64xf32> {core.weight = "view_7.w_in
// Rank 0's half of the tokens (a token slice: the extract_slice marked with its axis and part count).
// CHECK: tensor.extract_slice %{{.*}}[0, 0] [8, 64] [1, 1] {ppmoe.token_slice = array<i64: 0, 2>} : tensor<16x64xf32> to tensor<8x64xf32>
// CHECK: "moe.dispatch"({{.*}}) {capacity = 16 : i64, num_experts = 4 : i64, ppmoe.strategy = "alltoall"}
// CHECK-NEXT: shard.all_to_all {{.*}} on @grid grid_axes = [2] split_axis = 0 concat_axis = 1
// CHECK: "moe.expert_ffn"
// CHECK: shard.all_to_all
// CHECK-NEXT: "moe.combine"
// CHECK-NEXT: shard.all_gather
// CHECK-LABEL: func.func @rank1(
// CHECK: tensor.extract_slice %{{.*}}[8, 0] [8, 64] [1, 1] {ppmoe.token_slice = array<i64: 0, 2>} : tensor<16x64xf32> to tensor<8x64xf32>
// The pass's own dump (its MoE part is over the module's ops): the expert weights' arguments
// retyped to the rank's block in place, the bucket offsets a new weight argument after them,
// the experts op replaced where it was.
// RUN: %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard{tp=2 strategy=alltoall})' --print-ir-after-all 2>&1 | FileCheck %s --check-prefix=DUMP
// DUMP: IR Dump After ppmoe-shard (sharded)
// DUMP: func.func @rank0({{.*}}%arg2: tensor<2x256x64xf32> {core.weight = "view_7.w_in"} loc(unknown), %arg3: tensor<2x64x128xf32> {core.weight = "view_7.w_out"} loc(unknown), %arg4: tensor<3xi64> {core.weight = "view_7.experts_out.bucket_offsets"} loc(unknown))
// DUMP-NOT: "moe.experts"
// DUMP: "moe.expert_ffn"(%{{[a-z_0-9]+}}, %arg4, %arg2, %arg3)
// DUMP-NOT: "moe.experts"
// DUMP: func.func @rank1(
// The MoE part is decided on the ops alone: IR without locations (upstream's
// --strip-debuginfo) leaves the layers' outputs unnamed, and the forms' buffers are named after
// each layer's place among the function's experts ops, one name per layer.
// RUN: %ppmoe inspect %fixtures/qwen2moe_lm_sdpa/model.onnx --emit moe > %t.lm.mlir
// RUN: mlir-opt --allow-unregistered-dialect --strip-debuginfo %t.lm.mlir > %t.stripped.mlir
// RUN: %ppmoe opt %t.stripped.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2 strategy=alltoall})' | FileCheck %s --check-prefix=UNNAMED
// UNNAMED-LABEL: func.func @rank0(
// UNNAMED-SAME: {core.weight = "moe_layer0.bucket_offsets"}
// UNNAMED-SAME: {core.weight = "moe_layer1.bucket_offsets"}
// UNNAMED-LABEL: func.func @rank1(
// A bf16 LM's tokens are sliced into f32 for the dispatch: widened (arith.extf marked
// ppmoe.widens), then sliced; the two read back as the one token slice of the bf16 tokens, so
// the IR reprints as itself.
// RUN: %ppmoe inspect %fixtures/qwen3moe_lm_bf16_sdpa/model.onnx --emit sharded --tp 2 --moe-strategy alltoall > %t.bf16.mlir
// RUN: FileCheck %s --check-prefix=HALF < %t.bf16.mlir
// RUN: %ppmoe opt %t.bf16.mlir --pass-pipeline='builtin.module()' > %t.bf16.again.mlir
// RUN: diff %t.bf16.mlir %t.bf16.again.mlir
// HALF-LABEL: func.func @rank1(
// HALF: %[[WIDE:[0-9]+]] = arith.extf %{{.*}} {ppmoe.widens = true} : tensor<16x64xbf16> to tensor<16x64xf32>
// HALF-NEXT: %[[MINE:.*]] = tensor.extract_slice %[[WIDE]][8, 0] [8, 64] [1, 1] {ppmoe.token_slice = array<i64: 0, 2>} : tensor<16x64xf32> to tensor<8x64xf32>
// HALF: "moe.dispatch"(%[[MINE]],
// HALF-NOT: "core.token_slice"

#loc = loc(unknown)
module attributes {ppmoe.source = {capacity = "keep", eval_limit = 268435456 : i64, input_shapes = {}, microbatches = 1 : i64, model = "../fixtures/mixtral_block_dynamo/model.onnx"}, ppmoe.stage = "moe"} {
  func.func @rank0(%arg0: tensor<1x16x64xf32> {core.input = "hidden_states"} loc(unknown), %arg1: tensor<64x4xf32> {core.weight = "inner.gate.weight.const1"} loc(unknown), %arg2: tensor<4x256x64xf32> {core.weight = "view_7.w_in"} loc(unknown), %arg3: tensor<4x64x128xf32> {core.weight = "view_7.w_out"} loc(unknown)) -> (tensor<1x16x64xf32> {core.output = "view_7"}) attributes {ppmoe.coords = array<i64: 0, 0, 0>, ppmoe.microbatches = 1 : i64, ppmoe.schedule = "gpipe"} {
    %0 = "core.reshape_to"(%arg0) {shape = array<i64: 16, 64>} : (tensor<1x16x64xf32>) -> tensor<16x64xf32> loc(#loc4)
    %1 = "core.mat_mul"(%0, %arg1) : (tensor<16x64xf32>, tensor<64x4xf32>) -> tensor<16x4xf32> loc(#loc5)
    %2:2 = "moe.route"(%1) {capacity = 0 : i64, core.absent_inputs = array<i64: 1>, n_group = 0 : i64, order = "softmax_then_topk", renormalize = true, routed_scaling_factor = 1.000000e+00 : f64, scoring = "softmax", top_k = 2 : i64, topk_group = 0 : i64} : (tensor<16x4xf32>) -> (tensor<16x2xf32>, tensor<16x2xi64>) loc(#loc10)
    %3 = "moe.experts"(%0, %2#0, %2#1, %arg2, %arg3) {activation = "swiglu", alpha = 1.000000e+00 : f64, beta = 0.000000e+00 : f64, layout = "linear", operandSegmentSizes = array<i32: 1, 1, 1, 1, 1, 0, 0>} : (tensor<16x64xf32>, tensor<16x2xf32>, tensor<16x2xi64>, tensor<4x256x64xf32>, tensor<4x64x128xf32>) -> tensor<16x64xf32> loc(#loc8)
    %4 = "core.reshape_to"(%3) {shape = array<i64: 1, 16, 64>} : (tensor<16x64xf32>) -> tensor<1x16x64xf32> loc(#loc9)
    return %4 : tensor<1x16x64xf32> loc(#loc)
  } loc(#loc)
} loc(#loc)
#loc1 = loc("node_view")
#loc2 = loc("node_linear")
#loc3 = loc("node_view_7")
#loc4 = loc("view"(#loc1))
#loc5 = loc("linear"(#loc2))
#loc6 = loc("view_7.route_weights"(#loc3))
#loc7 = loc("view_7.route_ids"(#loc3))
#loc8 = loc("view_7.experts_out"(#loc3))
#loc9 = loc("view_7"(#loc3))
#loc10 = loc(fused[#loc6, #loc7])

