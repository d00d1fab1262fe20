// What `ppmoe opt` refuses, by name: an unknown pass, an option a pass does not take, a pass
// that reads the model, a pass before what it needs or on IR past what it transforms, part of
// the ptx stage, a pipeline that does not parse.

// RUN: not %ppmoe opt %s --pass-pipeline='builtin.module(canonicalize)' 2>&1 | FileCheck %s --check-prefix=UNKNOWN
// UNKNOWN: error: {{.*}}opt-errors.mlir: --pass-pipeline: no pass 'canonicalize'; the passes: ppmoe-import, ppmoe-lower-core, ppmoe-raise-moe, ppmoe-shard,

// RUN: not %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-dce{tp=2})' 2>&1 | FileCheck %s --check-prefix=OPTION
// OPTION: error: {{.*}}ppmoe-dce: no option 'tp'; it takes: none

// RUN: not %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard{tp=zero})' 2>&1 | FileCheck %s --check-prefix=VALUE
// VALUE: error: {{.*}}ppmoe-shard{tp=zero}: 'zero' is not a count of at least 1

// RUN: not %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-lower-core)' 2>&1 | FileCheck %s --check-prefix=MODEL
// MODEL: error: {{.*}}ppmoe-lower-core reads the model, not IR: it cannot run in opt

// RUN: not %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-rewrite)' 2>&1 | FileCheck %s --check-prefix=ORDER
// ORDER: error: {{.*}}opt-errors.mlir: ppmoe-rewrite takes IR of stage 'sharded'; this IR is at stage 'moe'

// A pass on IR past what it transforms: the first pass of a stage takes the stage before's IR.
// RUN: not %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-shard{tp=2})' 2>&1 | FileCheck %s --check-prefix=PAST
// PAST: error: {{.*}}opt-errors.mlir: ppmoe-shard takes IR of stage 'moe'; this IR is at stage 'sharded'
// RUN: not %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-raise-moe)' 2>&1 | FileCheck %s --check-prefix=RAISED
// RAISED: error: {{.*}}ppmoe-raise-moe takes IR of stage 'core'; this IR is at stage 'moe'

// The ptx stage's passes run together: upstream's GPU lowering half done is no stage's IR.
// RUN: not %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-pipeline-split, ppmoe-plan-kernels, convert-gpu-to-nvvm)' 2>&1 | FileCheck %s --check-prefix=PTX
// PTX: error: {{.*}}opt-errors.mlir: --pass-pipeline: the ptx stage's passes run together, in order: ppmoe-attach-target, convert-scf-to-cf,

// RUN: not %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard{tp=2)' 2>&1 | FileCheck %s --check-prefix=PARSE
// PARSE: error: {{.*}}--pass-pipeline: a '{' without its '}'

// The empty pipeline prints the IR as read.
// RUN: %ppmoe opt %s --pass-pipeline='builtin.module()' | FileCheck %s --check-prefix=EMPTY
// EMPTY: ppmoe.stage = "moe"
// EMPTY: "moe.experts"
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

