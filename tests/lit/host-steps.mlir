// ppmoe-host-steps{steps=...} (--host-steps): the plan steps named run on the host (kernels.host:
// the CPU kernel runs the instruction), each with its members; a collective the step did itself
// becomes NCCL's own (kernels.nccl). A step is named by its kind (the plan op without
// `kernels.`, `pointwise` for a launch of a fused chain, or `all`) or by its instruction's
// number (a member names its step).

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module()' > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2}, ppmoe-rewrite, ppmoe-dce, ppmoe-pipeline-split, ppmoe-plan-kernels)' > %t.kernels.mlir
// RUN: %ppmoe opt %t.kernels.mlir --pass-pipeline='builtin.module(ppmoe-host-steps{steps=route})' | FileCheck %s --check-prefix=ROUTE
// ROUTE: "kernels.cublas_gemm"() {instruction = 1 : i64, op = "mat_mul"}
// ROUTE-NEXT: "kernels.host"() {instruction = 2 : i64, op = "route"}
// ROUTE-NEXT: "kernels.fused"() {instruction = 3 : i64, into = 5 : i64, op = "local_slice"}

// The expert FFN (instruction 4) names its step: the local slice, the FFN and the combine go to
// the host, the all-reduce the step did is NCCL's; the route stays a kernel.
// RUN: %ppmoe opt %t.kernels.mlir --pass-pipeline='builtin.module(ppmoe-host-steps{steps=4})' > %t.host.mlir
// RUN: FileCheck %s --check-prefix=MEMBER < %t.host.mlir
// MEMBER: "kernels.route"() {instruction = 2 : i64
// MEMBER-NEXT: "kernels.host"() {instruction = 3 : i64, op = "local_slice"}
// MEMBER-NEXT: "kernels.host"() {instruction = 4 : i64, op = "expert_ffn"}
// MEMBER-NEXT: "kernels.host"() {instruction = 5 : i64, op = "scatter_combine"}
// MEMBER-NEXT: "kernels.nccl"() {instruction = 6 : i64, op = "all_reduce"}
// The module so made reads back as itself.
// RUN: %ppmoe opt %t.host.mlir --pass-pipeline='builtin.module()' | diff - %t.host.mlir

// RUN: not %ppmoe opt %t.kernels.mlir --pass-pipeline='builtin.module(ppmoe-host-steps{steps=nccl})' 2>&1 | FileCheck %s --check-prefix=BAD
// BAD: ppmoe-host-steps{steps=nccl}: 'nccl' is no step: expected an instruction's number, all, or one of launch, pointwise, route
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

