// An einsum that is a plain contraction prints as linalg.contract, its labels loops numbered by
// first appearance (so the maps do not depend on the letters), and reads back as the einsum its
// maps say. An einsum that sums over no label (an outer product, which linalg.contract does not
// take) is a linalg.generic of arith.mulf (upstream-generic.mlir), but where its maps are numpy
// broadcasting's, as cab,ab->cab's are: that one stays a core op, since the generic would read
// back as a multiplication. Read back, the IR reprints as itself; ppmoe-einsum-to-matmul then
// makes the contraction a batched matmul as before.

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module()' > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-einsum-to-matmul)' | FileCheck %s --check-prefix=MATMUL

// cab,dab->acd: c, a, b, d are loops 0 to 3; b (loop 2) is summed.
// CHECK-DAG: [[X:#map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>
// CHECK-DAG: [[Y:#map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d3, d1, d2)>
// CHECK-DAG: [[O:#map[0-9]*]] = affine_map<(d0, d1, d2, d3) -> (d1, d0, d3)>
// CHECK-LABEL: func.func @rank0(
// CHECK: linalg.contract indexing_maps = {{\[}}[[X]], [[Y]], [[O]]] ins(%arg0, %arg1 : tensor<3x2x4xf32>, tensor<5x2x4xf32>) outs(%{{.*}} : tensor<2x3x5xf32>)
// CHECK: "core.einsum"(%arg0, %arg2) {equation = "cab,ab->cab"}

// MATMUL-NOT: linalg.contract
// MATMUL: linalg.batch_matmul

// A map that is no plain loop of the contraction's (d1 + d2) is refused by linalg's verifier.
// RUN: sed 's/-> (d3, d1, d2)>/-> (d3, d1, d1 + d2)>/' %t.mlir > %t.bad.mlir
// RUN: not %ppmoe opt %t.bad.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=BAD
// BAD: error: {{.*}}bad.mlir: stage 'input': the IR does not verify: provided affine_map is not a projected permutation

module attributes {ppmoe.stage = "core", ppmoe.source = {model = "../fixtures/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%x: tensor<3x2x4xf32> {core.input = "x"}, %y: tensor<5x2x4xf32> {core.input = "y"}, %s: tensor<2x4xf32> {core.input = "s"}) -> (tensor<2x3x5xf32> {core.output = "z"}, tensor<3x2x4xf32> {core.output = "o"}) {
    %0 = "core.einsum"(%x, %y) {equation = "cab,dab->acd"} : (tensor<3x2x4xf32>, tensor<5x2x4xf32>) -> tensor<2x3x5xf32> loc("z"("node_z"))
    %1 = "core.einsum"(%x, %s) {equation = "cab,ab->cab"} : (tensor<3x2x4xf32>, tensor<2x4xf32>) -> tensor<3x2x4xf32> loc("o"("node_o"))
    func.return %0, %1 : tensor<2x3x5xf32>, tensor<3x2x4xf32>
  }
}
