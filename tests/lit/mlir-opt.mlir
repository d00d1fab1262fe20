// IR through upstream's mlir-opt reads back as the program it was.
//
// -canonicalize hoists the bodies' constants (a reciprocal's 1, a mean's count, a norm's epsilon)
// out to the function and moves a commutative op's constant operand to the right; ppmoe puts each
// constant back into the body that reads it (passes/sink_constants.rs) and takes an addition or
// product of a composite in either order (the same bits).
//
// --mlir-print-op-generic prints the module's attributes (ppmoe.stage among them) after its body:
// the IR is still known as ppmoe's.

// RUN: %ppmoe inspect %fixtures/qwen3moe_lm_sdpa/model.onnx --emit moe > %t.moe.mlir
// RUN: mlir-opt --allow-unregistered-dialect --mlir-print-debuginfo -canonicalize %t.moe.mlir > %t.hoisted.mlir
// RUN: FileCheck %s --check-prefix=HOISTED < %t.hoisted.mlir
// HOISTED: [[ONE:%.*]] = arith.constant 1.000000e+00 : f32
// HOISTED: linalg.map ins(
// HOISTED-NEXT: (%[[IN:.*]]: f32 {{.*}}, %{{.*}}: f32 {{.*}}) {
// HOISTED-NEXT: arith.divf [[ONE]], %[[IN]] : f32
// RUN: %ppmoe opt %t.hoisted.mlir --pass-pipeline='builtin.module()' | diff - %t.moe.mlir

// RUN: mlir-opt --allow-unregistered-dialect --mlir-print-debuginfo --mlir-print-op-generic %t.moe.mlir > %t.generic.mlir
// RUN: FileCheck %s --check-prefix=GENERIC < %t.generic.mlir
// GENERIC: "builtin.module"() ({
// GENERIC: "linalg.map"
// RUN: %ppmoe opt %t.generic.mlir --pass-pipeline='builtin.module()' | diff - %t.moe.mlir

// A top-k of k = 1 (DeepSeek-V3's pick of the best group) in the core IR: -canonicalize folds
// its position along the axis, a loop of one step, to the constant 0; the pick reads back, and
// the canonicalized core IR gives the same sharded IR as the core IR itself.
// RUN: %ppmoe inspect %fixtures/deepseekv3_block_dynamo/model.onnx --emit core > %t.ds.mlir
// RUN: mlir-opt --allow-unregistered-dialect --mlir-print-debuginfo -cse -canonicalize %t.ds.mlir > %t.ds-canon.mlir
// RUN: FileCheck %s --check-prefix=FOLDED < %t.ds-canon.mlir
// FOLDED: arith.cmpi eq, %{{.*}}, %c0_i64 : i64
// RUN: %ppmoe inspect %t.ds-canon.mlir --tp 2 --emit sharded | grep -v ppmoe.source > %t.ds-canon.sharded
// RUN: %ppmoe inspect %t.ds.mlir --tp 2 --emit sharded | grep -v ppmoe.source > %t.ds.sharded
// RUN: diff %t.ds-canon.sharded %t.ds.sharded
