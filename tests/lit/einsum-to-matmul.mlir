// ppmoe-einsum-to-matmul, a pass over the module's ops: an einsum left in the program (here
// written by hand at the core stage; its weights' source is a fixture, of which it takes none)
// is replaced in place by a batched matmul between reshapes, printed as upstream's
// linalg.batch_matmul (one batch, no broadcasting). ppmoe-shard prints the einsum as the
// linalg.contract it is; the pass erases it with its destination's fill.

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-einsum-to-matmul)' | FileCheck %s

// CHECK-LABEL: func.func @rank0(
// CHECK-NOT: "core.einsum"
// CHECK-NOT: linalg.contract
// CHECK: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
// CHECK-NEXT: %[[EMPTY:.*]] = tensor.empty() : tensor<2x3x5xf32>
// CHECK-NEXT: %[[INIT:.*]] = linalg.fill ins(%[[ZERO]] : f32) outs(%[[EMPTY]] : tensor<2x3x5xf32>) -> tensor<2x3x5xf32>
// CHECK-NEXT: linalg.batch_matmul ins(%{{.*}}, %{{.*}} : tensor<2x3x4xf32>, tensor<2x4x5xf32>) outs(%[[INIT]] : tensor<2x3x5xf32>) -> tensor<2x3x5xf32>
// CHECK-NOT: "core.einsum"
// CHECK-NOT: linalg.contract
// CHECK-NOT: linalg.fill

module attributes {ppmoe.stage = "core", ppmoe.source = {model = "../fixtures/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%x: tensor<2x3x4xf32> {core.input = "x"}, %y: tensor<2x4x5xf32> {core.input = "y"}) -> (tensor<2x3x5xf32> {core.output = "z"}) {
    %0 = "core.einsum"(%x, %y) {equation = "bij,bjk->bik"} : (tensor<2x3x4xf32>, tensor<2x4x5xf32>) -> tensor<2x3x5xf32> loc("z"("node_einsum"))
    func.return %0 : tensor<2x3x5xf32>
  }
}
