// A reduction whose axes are known is `core.reduce_<f>` over static axes, an attribute counted
// from the front (ONNX's axes operand spent): an RMS norm's mean over the hidden axis, Qwen3's
// q and k norms' over each head's. The IR reads back as itself; at tp 2 the heads are split
// and each rank reduces its own heads over the same axis. A reduction whose axes are not
// axes of its operand, or whose result type is not the reduction's, is refused by name.

// RUN: %ppmoe inspect %fixtures/qwen3moe_lm_sdpa/model.onnx --emit moe > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' | FileCheck %s --check-prefix=TP

// CHECK-LABEL: func.func @rank0(
// CHECK: "core.reduce_mean"(%{{.*}}) {axes = array<i64: 2>, keepdims = true} : (tensor<1x16x64xf32>) -> tensor<1x16x1xf32>
// CHECK: "core.reduce_mean"(%{{.*}}) {axes = array<i64: 3>, keepdims = true} : (tensor<1x16x4x16xf32>) -> tensor<1x16x4x1xf32>
// CHECK-NOT: "core.reduce_{{[a-z]*}}"(%{{[^)]*}}, %

// TP-LABEL: func.func @rank1(
// TP: "core.reduce_mean"(%{{.*}}) {axes = array<i64: 3>, keepdims = true} : (tensor<1x16x2x16xf32>) -> tensor<1x16x2x1xf32>

// RUN: sed '0,/axes = array<i64: 2>, keepdims = true/s//axes = array<i64: 7>, keepdims = true/' %t.mlir > %t.past.mlir
// RUN: not %ppmoe opt %t.past.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=PAST
// PAST: error: {{.*}}past.mlir: {{.*}}(core.reduce_mean): reduction axes [7] are not increasing axes of a rank-3 operand

// RUN: sed '0,/axes = array<i64: 2>, keepdims = true/s//axes = array<i64: 1>, keepdims = true/' %t.mlir > %t.type.mlir
// RUN: not %ppmoe opt %t.type.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=TYPE
// TYPE: error: {{.*}}type.mlir: {{.*}}(core.reduce_mean): a reduction over axes [1] of 1x16x64 gives 1x1x64, where its result type says 1x16x1
