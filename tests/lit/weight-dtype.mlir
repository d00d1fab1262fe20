// ppmoe-weight-dtype: the float weights stored in bf16 (`--dtype bf16`), each rank's pieces
// after the cut, but the router's gate, kept fp32 (a logit moved by rounding can flip a top-k
// choice); computation stays f32 (the activations' types do not change). The weights are
// rounded with their arguments, once per tp index.

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard{tp=2}, ppmoe-weight-dtype{dtype=bf16})' | FileCheck %s

// CHECK-LABEL: func.func @rank0(
// CHECK-SAME: tensor<64x4xf32> {core.weight = "inner.gate.weight.const1"}
// CHECK-SAME: tensor<2x256x64xbf16> {core.weight = "view_7.w_in"}
// CHECK-SAME: tensor<2x64x128xbf16> {core.weight = "view_7.w_out"}
// CHECK: "moe.expert_ffn"({{.*}} : (tensor<64x64xf32>, tensor<3xi64>, tensor<2x256x64xbf16>, tensor<2x64x128xbf16>) -> tensor<64x64xf32>
// On an LM's sharded IR, the pass alone (its dump, the module as the pass leaves it): an upstream
// op that reads a converted weight is made again as ppmoe prints it for the new types (a matmul
// takes mixed operands; RMSNorm's bf16 weight times f32 activations becomes a generic that
// widens the weight and multiplies in f32); the router's gate stays f32, and so does the matmul
// that reads it.

// RUN: %ppmoe inspect %fixtures/qwen2moe_lm_dynamo/model.onnx --emit sharded --tp 2 > %t.lm.mlir
// RUN: %ppmoe opt %t.lm.mlir --pass-pipeline='builtin.module(ppmoe-weight-dtype{dtype=bf16})' --print-ir-after-all 2>&1 | FileCheck %s --check-prefix=LM

// LM: IR Dump After ppmoe-weight-dtype (sharded)
// LM-LABEL: func.func @rank0(
// LM-SAME: %[[NORM:arg[0-9]+]]: tensor<64xbf16> {core.weight = "lm.model.layers.0.input_layernorm.weight"}
// LM-SAME: %[[GATE:arg[0-9]+]]: tensor<64x4xf32> {core.weight = "lm.model.layers.0.mlp.gate.weight.const4"}
// LM-SAME: %[[WIN:arg[0-9]+]]: tensor<2x128x64xbf16> {core.weight = "sum_1.w_in"}
// LM-SAME: %[[PIECE:arg[0-9]+]]: tensor<64x32xbf16> {core.weight = "val_146.tp0_1", ppmoe.rank_piece}
// LM: linalg.generic {{.*}} ins(%[[NORM]], %{{[0-9]+}} : tensor<64xbf16>, tensor<1x16x64xf32>) outs(%{{[0-9]+}} : tensor<1x16x64xf32>)
// LM-NEXT: ^bb0(%[[W:.*]]: bf16 {{.*}}, %[[X:.*]]: f32 {{.*}}, %{{.*}}: f32 {{.*}}):
// LM-NEXT: %[[WIDE:.*]] = arith.extf %[[W]] : bf16 to f32
// LM-NEXT: arith.mulf %[[WIDE]], %[[X]] : f32
// LM: linalg.batch_matmul {{.*}}ins(%{{[0-9]+}}, %[[PIECE]] : tensor<1x16x64xf32>, tensor<64x32xbf16>) outs(%{{[0-9]+}} : tensor<1x16x32xf32>)
// LM: linalg.matmul ins(%{{[a-z_0-9]+}}, %[[GATE]] : tensor<16x64xf32>, tensor<64x4xf32>)
// LM-NEXT: "moe.route"
// LM: "moe.expert_ffn"({{.*}}%[[WIN]]

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

