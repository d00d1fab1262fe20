// A reshape of an f32 tensor into a half-precision buffer (a bf16 LM's MoE output, which
// ppmoe's experts make in f32) prints as the f32 tensor.reshape (which keeps the element type)
// and an arith.truncf marked ppmoe.narrows, which rounds to nearest even as the runtime stores
// the buffer; it reads back as one reshape with a bf16 result (the IR reprints as itself), and
// no core.reshape_to is left. An unmarked truncf is a cast of its own: the program then has
// one instruction more.

// RUN: %ppmoe inspect %fixtures/qwen3moe_lm_bf16_sdpa/model.onnx --emit moe > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir
// RUN: %ppmoe inspect %t.mlir --emit sharded --tp 2 | FileCheck %s --check-prefix=TP

// CHECK-LABEL: func.func @rank0(
// CHECK: %[[EXPERTS:[0-9]+]] = "moe.experts"
// CHECK-SAME: -> tensor<16x64xf32>
// CHECK-NEXT: %[[SHAPE:.*]] = arith.constant dense<[1, 16, 64]> : tensor<3xi64>
// CHECK-NEXT: %[[WIDE:.*]] = tensor.reshape %[[EXPERTS]](%[[SHAPE]]) : (tensor<16x64xf32>, tensor<3xi64>) -> tensor<1x16x64xf32>
// CHECK-NEXT: arith.truncf %[[WIDE]] {ppmoe.narrows = true} : tensor<1x16x64xf32> to tensor<1x16x64xbf16>
// CHECK-NOT: core.reshape_to

// At tp 2 the experts' partial sums are all-reduced in f32 before the narrowing reshape.
// TP-LABEL: func.func @rank1(
// TP: tensor.reshape %{{.*}} : (tensor<16x64xf32>, tensor<3xi64>) -> tensor<1x16x64xf32>
// TP-NEXT: arith.truncf %{{.*}} {ppmoe.narrows = true} : tensor<1x16x64xf32> to tensor<1x16x64xbf16>

// RUN: sed '0,/\(arith.truncf %reshape_[0-9]*\) {ppmoe.narrows = true}/s//\1/' %t.mlir > %t.cast.mlir
// RUN: %ppmoe opt %t.cast.mlir --pass-pipeline='builtin.module()' | FileCheck %s --check-prefix=CAST
// CAST: %[[WIDE:.*]] = tensor.reshape %{{.*}} : (tensor<16x64xf32>, tensor<3xi64>) -> tensor<1x16x64xf32>
// CAST-NEXT: arith.truncf %[[WIDE]] : tensor<1x16x64xf32> to tensor<1x16x64xbf16>
