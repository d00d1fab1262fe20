// ppmoe-plan-kernels: each rank's instructions as kernel launches, cuBLAS GEMMs and NCCL
// collectives (a function marked kernels.plan_of its program), the generated kernels in a
// gpu.module; the ptx stage's passes lower them to PTX (ppmoe-attach-target, then upstream's GPU
// lowering down to gpu-module-to-binary's gpu.binary of PTX).

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard{tp=2}, ppmoe-rewrite, ppmoe-dce, ppmoe-pipeline-split, ppmoe-plan-kernels)' | FileCheck %s
// RUN: %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-dce, ppmoe-pipeline-split, ppmoe-plan-kernels, %ptx-passes)' | FileCheck %s --check-prefix=PTX
// The kernels IR reads back: it prints as itself, and the ptx stage's passes take it. Its plan must be
// the one its programs get (an edited launch is refused by name), or run steps on the host; its
// kernels' bodies are its own.
// The pass over the module's ops: each rank's kernels and plan moved in after its function,
// which stays; the module becomes a GPU container.
// RUN: %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-dce, ppmoe-pipeline-split, ppmoe-plan-kernels)' --print-ir-after-all 2>&1 | FileCheck %s --check-prefix=DUMP
// DUMP: IR Dump After ppmoe-plan-kernels (kernels)
// DUMP: module attributes {gpu.container_module, ppmoe.source
// DUMP: func.func @rank0(
// DUMP: gpu.module @rank0_kernels
// DUMP: func.func @rank0_plan() attributes {kernels.plan_of = @rank0}
// DUMP-NOT: IR Dump After
// RUN: %ppmoe opt %s --pass-pipeline='builtin.module()' > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-dce, ppmoe-pipeline-split, ppmoe-plan-kernels)' > %t.kernels.mlir
// RUN: %ppmoe opt %t.kernels.mlir --pass-pipeline='builtin.module()' | diff - %t.kernels.mlir
// RUN: %ppmoe opt %t.kernels.mlir --pass-pipeline='builtin.module(%ptx-passes)' | FileCheck %s --check-prefix=PTX
// RUN: sed 's/threads = 512 : i64/threads = 64 : i64/' %t.kernels.mlir > %t.replanned.mlir
// RUN: not %ppmoe opt %t.replanned.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=REPLANNED
// REPLANNED: error: {{.*}}replanned.mlir: the plan of @rank0: op {{[0-9]+}} is `"kernels.route"(){{.*}}threads = 64 : i64
// The plan read is the plan shipped: a step may instead run on the host (the CPU kernel), and
// the module so edited reads back as itself; a field that is not read (the experts' grouping,
// which its kernels decide) is refused.
// RUN: sed 's/"kernels.route"() {instruction = 2 : i64, kernel = @rank0_kernels::@k2_route, op = "route", threads = 512 : i64}/"kernels.host"() {instruction = 2 : i64, op = "route"}/' %t.kernels.mlir > %t.host.mlir
// RUN: %ppmoe opt %t.host.mlir --pass-pipeline='builtin.module()' | FileCheck %s --check-prefix=HOST
// HOST: "kernels.cublas_gemm"() {instruction = 1 : i64, op = "mat_mul"}
// HOST-NEXT: "kernels.host"() {instruction = 2 : i64, op = "route"}
// HOST-NEXT: "kernels.moe_experts"()
// RUN: sed 's/grouping = "device"/grouping = "host"/' %t.kernels.mlir > %t.grouping.mlir
// RUN: not %ppmoe opt %t.grouping.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=GROUPING
// GROUPING: error: {{.*}}grouping.mlir: the plan of @rank0: op 3 is `"kernels.moe_experts"(){{.*}}grouping = "host"{{.*}}`, where the step it reads as prints `{{.*}}grouping = "device"

// CHECK: gpu.module @rank0_kernels
// CHECK: gpu.func @{{.*}}route{{.*}} kernel
// CHECK: func.func @rank0_plan() attributes {kernels.plan_of = @rank0}
// CHECK: "kernels.cublas_gemm"() {instruction = 1 : i64, op = "mat_mul"}
// CHECK: "kernels.moe_local_experts"() {{{.*}}all_reduce = {{[0-9]+}} : i64
// CHECK-NOT: "kernels.host"
// CHECK: gpu.module @rank1_kernels
// PTX: // ---- rank0_kernels ----
// PTX: .target sm_90
// PTX: .entry
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

