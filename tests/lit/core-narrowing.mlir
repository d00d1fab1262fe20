// A reshape of an f32 tensor into a half-precision buffer (a bf16 LM's MoE output, which
// ppmoe's experts make in f32) prints as the f32 tensor.reshape (which keeps the element type)
// and an arith.truncf marked ppmoe.narrows, which rounds to nearest even as the runtime stores
// the buffer; it reads back as one reshape with a bf16 result (the IR reprints as itself), and
// no core.reshape_to is left. An unmarked truncf is a cast of its own: the program then has
// one instruction more. A softmax of a half-precision tensor, which ppmoe computes in f32 and
// rounds once, prints as an arith.extf marked ppmoe.widens (exact), the f32 linalg.softmax
// and a narrowing arith.truncf, read back as the one softmax; a widening read by anything but
// one softmax is refused by name.

// RUN: %ppmoe inspect %fixtures/qwen3moe_lm_bf16_sdpa/model.onnx --emit moe > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir
// RUN: %ppmoe inspect %t.mlir --emit sharded --tp 2 | FileCheck %s --check-prefix=TP

// RUN: FileCheck %s --check-prefix=SOFTMAX < %t.mlir
// SOFTMAX: %[[WIDE:.*]] = arith.extf %{{.*}} {ppmoe.widens = true} : tensor<1x4x16x16xbf16> to tensor<1x4x16x16xf32>
// SOFTMAX-NEXT: %[[EMPTY:.*]] = tensor.empty() : tensor<1x4x16x16xf32>
// SOFTMAX-NEXT: %[[P:.*]] = linalg.softmax dimension(3) ins(%[[WIDE]] : tensor<1x4x16x16xf32>) outs(%[[EMPTY]] : tensor<1x4x16x16xf32>)
// SOFTMAX-NEXT: arith.truncf %[[P]] {ppmoe.narrows = true} : tensor<1x4x16x16xf32> to tensor<1x4x16x16xbf16>
// SOFTMAX-NOT: core.softmax

// A bf16 sigmoid (the SiLU of the experts, before the raise) likewise: widened, the f32
// composite as a linalg.map, narrowed; the core IR reads back as itself.
// RUN: %ppmoe inspect %fixtures/qwen3moe_lm_bf16_sdpa/model.onnx --emit core > %t.core.mlir
// RUN: FileCheck %s --check-prefix=SIGMOID < %t.core.mlir
// RUN: %ppmoe opt %t.core.mlir --pass-pipeline='builtin.module()' | diff %t.core.mlir -
// SIGMOID: %[[X:.*]] = arith.extf %{{.*}} {ppmoe.widens = true} : tensor<32x64xbf16> to tensor<32x64xf32>
// SIGMOID-NEXT: %[[E:.*]] = tensor.empty() : tensor<32x64xf32>
// SIGMOID-NEXT: %[[S:.*]] = linalg.map ins(%[[X]] : tensor<32x64xf32>) outs(%[[E]] : tensor<32x64xf32>)
// SIGMOID: arith.negf
// SIGMOID-NEXT: math.exp
// SIGMOID: arith.truncf %[[S]] {ppmoe.narrows = true} : tensor<32x64xf32> to tensor<32x64xbf16>
// SIGMOID-NOT: "core.sigmoid"

// RUN: sed -n 's|^// WIDEN-IR: ||p' %s | sed 's|@FIXTURES@|%fixtures|' > %t.widen.mlir
// RUN: not %ppmoe opt %t.widen.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=ALONE
// ALONE: error: {{.*}}widen.mlir: {{.*}}ppmoe.widens extends a half-precision operand to f32 for the one op that reads it (a linalg.softmax, a linalg.map, a token slice's tensor.extract_slice), as ppmoe prints it
// WIDEN-IR: module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
// WIDEN-IR:   func.func @rank0(%x: tensor<4x8xbf16> {core.input = "x"}) -> (tensor<4x8xf32> {core.output = "y"}) {
// WIDEN-IR:     %w = arith.extf %x {ppmoe.widens = true} : tensor<4x8xbf16> to tensor<4x8xf32> loc("y"("node_y"))
// WIDEN-IR:     func.return %w : tensor<4x8xf32>
// WIDEN-IR:   }
// WIDEN-IR: }

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
