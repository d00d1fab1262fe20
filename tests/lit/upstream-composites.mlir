// Functions upstream has no op for print as a linalg.map of the arith and math ops ppmoe
// computes them by (the reciprocal 1 / x, the sigmoid 1 / (1 + exp(-x)), GELU
// 0.5 x (1 + erf(x / sqrt 2)) with its constants exact), and read back only
// op for op and operand for operand; a power by a broadcast scalar (an RMS norm's square) is a
// linalg.generic of math.powf. Read back, the IR reprints as itself.

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module()' > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir

// A reciprocal's body edited to compute 2 / x is no op ppmoe holds: refused by name.
// RUN: sed 's/arith.constant 1.000000e+00/arith.constant 2.000000e+00/' %t.mlir > %t.two.mlir
// RUN: not %ppmoe opt %t.two.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=TWO
// TWO: error: {{.*}}two.mlir: {{.*}}'linalg.map': its body is not an elementwise op ppmoe prints

// A GELU that halves by 0.25 is no op ppmoe holds: refused by name.
// RUN: sed 's/arith.constant 5.000000e-01/arith.constant 2.500000e-01/' %t.mlir > %t.quarter.mlir
// RUN: not %ppmoe opt %t.quarter.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=QUARTER
// QUARTER: error: {{.*}}quarter.mlir: {{.*}}'linalg.map': its body is not an elementwise op ppmoe prints

// CHECK-LABEL: func.func @rank0(
// CHECK: %[[R:.*]] = linalg.map ins(%arg0 : tensor<4x5xf32>) outs(
// CHECK-NEXT: (%[[IN:.*]]: f32 {{.*}}, %{{.*}}: f32 {{.*}}) {
// CHECK-NEXT: %[[ONE:.*]] = arith.constant 1.000000e+00 : f32
// CHECK-NEXT: %[[Q:.*]] = arith.divf %[[ONE]], %[[IN]] : f32
// CHECK-NEXT: linalg.yield %[[Q]] : f32
// CHECK: %[[P:.*]] = linalg.generic {indexing_maps = [#map, #map1, #map]{{.*}} ins(%[[R]], %arg1 : tensor<4x5xf32>, tensor<f32>)
// CHECK: math.powf
// CHECK: linalg.map ins(%[[P]] : tensor<4x5xf32>)
// CHECK: arith.negf
// CHECK-NEXT: math.exp
// CHECK: linalg.map ins(
// CHECK-NEXT: (%[[X:.*]]: f32 {{.*}}, %{{.*}}: f32 {{.*}}) {
// CHECK-NEXT: %[[R2:.*]] = arith.constant 1.41421354 : f32
// CHECK-NEXT: %[[D:.*]] = arith.divf %[[X]], %[[R2]] : f32
// CHECK-NEXT: %[[E:.*]] = math.erf %[[D]] : f32
// CHECK-NEXT: %[[ONE2:.*]] = arith.constant 1.000000e+00 : f32
// CHECK-NEXT: %[[S:.*]] = arith.addf %[[ONE2]], %[[E]] : f32
// CHECK-NEXT: %[[H:.*]] = arith.constant 5.000000e-01 : f32
// CHECK-NEXT: %[[HX:.*]] = arith.mulf %[[H]], %[[X]] : f32
// CHECK-NEXT: %[[G:.*]] = arith.mulf %[[HX]], %[[S]] : f32
// CHECK-NEXT: linalg.yield %[[G]] : f32

module attributes {ppmoe.stage = "core", ppmoe.source = {model = "../fixtures/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%x: tensor<4x5xf32> {core.input = "x"}, %two: tensor<f32> {core.input = "two"}) -> (tensor<4x5xf32> {core.output = "y"}) {
    %0 = "core.reciprocal"(%x) : (tensor<4x5xf32>) -> tensor<4x5xf32> loc("r"("node_r"))
    %1 = "core.pow"(%0, %two) : (tensor<4x5xf32>, tensor<f32>) -> tensor<4x5xf32> loc("p"("node_p"))
    %2 = "core.sigmoid"(%1) : (tensor<4x5xf32>) -> tensor<4x5xf32> loc("s"("node_s"))
    %3 = "core.gelu"(%2) : (tensor<4x5xf32>) -> tensor<4x5xf32> loc("g"("node_g"))
    func.return %3 : tensor<4x5xf32>
  }
}
