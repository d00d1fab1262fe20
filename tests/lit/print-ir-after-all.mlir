// --print-ir-after-all: one dump per pass, headed by its name, on standard error (the final
// IR on standard output).

// RUN: %ppmoe opt %s --print-ir-after-all --pass-pipeline='builtin.module(ppmoe-shard{tp=2}, ppmoe-rewrite, ppmoe-dce, ppmoe-pipeline-split)' 2>&1 >/dev/null | FileCheck %s
// RUN: %ppmoe inspect %fixtures/mixtral_block_dynamo/model.onnx --print-ir-after-all --emit sharded 2>&1 >/dev/null | FileCheck %s --check-prefix=INSPECT
// The kernel plan is a pass of the same pass manager: its module (each rank's program, its
// kernels and its launches) dumped after it; then the ptx stage's passes, upstream's among
// them, each dumped after it, down to the gpu.binary of PTX.
// RUN: %ppmoe opt %s --print-ir-after-all --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-pipeline-split, ppmoe-plan-kernels, %ptx-passes)' 2>&1 >/dev/null | FileCheck %s --check-prefix=KERNELS
// KERNELS: // -----// IR Dump After ppmoe-pipeline-split (pipelined) //----- //
// KERNELS: // -----// IR Dump After ppmoe-plan-kernels (kernels) //----- //
// KERNELS: module attributes
// KERNELS-SAME: gpu.container_module
// KERNELS-SAME: ppmoe.stage = "kernels"
// KERNELS: gpu.func @
// KERNELS: "kernels.moe_experts"
// KERNELS: // -----// IR Dump After ppmoe-attach-target (ptx) //----- //
// KERNELS: gpu.module @rank0_kernels [#nvvm.target<O = 3, chip = "sm_90", features = "+ptx78">]
// KERNELS: // -----// IR Dump After convert-scf-to-cf (ptx) //----- //
// KERNELS: // -----// IR Dump After convert-gpu-to-nvvm (ptx) //----- //
// KERNELS: llvm.func @
// KERNELS: // -----// IR Dump After gpu-module-to-binary (ptx) //----- //
// KERNELS: gpu.binary @rank0_kernels  [#gpu.object<#nvvm.target<O = 3, chip = "sm_90", features = "+ptx78">, properties = {{.*}}, assembly = "
// KERNELS-SAME: .version 7.8
// KERNELS-SAME: .target sm_90
// KERNELS-NOT: IR Dump After

// CHECK: // -----// IR Dump After ppmoe-shard (sharded) //----- //
// CHECK-NEXT: #loc = loc(unknown)
// CHECK: shard.all_to_all
// CHECK: // -----// IR Dump After ppmoe-rewrite (sharded) //----- //
// CHECK-NOT: shard.all_to_all
// CHECK: "moe.local_slice"
// CHECK: // -----// IR Dump After ppmoe-dce (sharded) //----- //
// CHECK: // -----// IR Dump After ppmoe-pipeline-split (pipelined) //----- //
// CHECK-NOT: IR Dump After

// INSPECT: IR Dump After ppmoe-import (onnx)
// INSPECT: "onnx.MatMul"
// INSPECT: IR Dump After ppmoe-lower-core (core)
// INSPECT: IR Dump After ppmoe-raise-moe (moe)
// INSPECT: IR Dump After ppmoe-shard (sharded)
// INSPECT: IR Dump After ppmoe-rewrite (sharded)
// INSPECT: IR Dump After ppmoe-dce (sharded)
// INSPECT: IR Dump After ppmoe-weight-dtype (sharded)
// INSPECT: IR Dump After ppmoe-einsum-to-matmul (sharded)
// INSPECT: IR Dump After ppmoe-compare-as-f32 (sharded)
// INSPECT-NOT: IR Dump After
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

