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
