// A matmul over two batch axes (attention's scores: [b, heads, m, k] by [b, heads, k, n]) prints
// as linalg.contract, its indexing maps the contraction's, into a zero linalg.fill; read back,
// it reprints as itself. Maps that transpose an operand (which linalg.contract takes, and
// ppmoe's matmul does not) are refused by name.

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module()' > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir

// CHECK-DAG: [[A:#map[0-9]*]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d2, d4)>
// CHECK-DAG: [[B:#map[0-9]*]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d4, d3)>
// CHECK-DAG: [[C:#map[0-9]*]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d1, d2, d3)>
// CHECK-LABEL: func.func @rank0(
// CHECK: %[[INIT:.*]] = linalg.fill
// CHECK-NEXT: linalg.contract indexing_maps = {{\[}}[[A]], [[B]], [[C]]] ins(%arg0, %arg1 : tensor<1x2x4x3xf32>, tensor<1x2x3x5xf32>) outs(%[[INIT]] : tensor<1x2x4x5xf32>)

// RUN: sed 's/(d0, d1, d2, d3, d4) -> (d0, d1, d4, d3)/(d0, d1, d2, d3, d4) -> (d0, d1, d3, d4)/; s/tensor<1x2x3x5xf32>/tensor<1x2x5x3xf32>/g' %t.mlir > %t.bad.mlir
// RUN: not %ppmoe opt %t.bad.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=BAD
// BAD: error: {{.*}}bad.mlir: {{.*}}'linalg.contract': indexing maps

module attributes {ppmoe.stage = "core", ppmoe.source = {model = "../fixtures/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%q: tensor<1x2x4x3xf32> {core.input = "q"}, %k: tensor<1x2x3x5xf32> {core.input = "k"}) -> (tensor<1x2x4x5xf32> {core.output = "s"}) {
    %0 = "core.mat_mul"(%q, %k) : (tensor<1x2x4x3xf32>, tensor<1x2x3x5xf32>) -> tensor<1x2x4x5xf32> loc("s"("node_s"))
    func.return %0 : tensor<1x2x4x5xf32>
  }
}
