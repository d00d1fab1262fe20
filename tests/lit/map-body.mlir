// A linalg.map reads back as the elementwise op of its body only where that op reads the map's
// inputs in order and is what the body yields: `arith.divf %b, %a` over inputs (x, y) computes
// y / x, not the x / y a division of (x, y) is, and is refused by name (it was read as x / y).

// RUN: not %ppmoe opt %s --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=SWAPPED
// SWAPPED: error: {{.*}}map-body.mlir: {{.*}}'linalg.map': its body is not an elementwise op ppmoe prints
// RUN: sed 's/arith.divf %b, %a/arith.divf %a, %b/' %s > %t.ordered.mlir
// RUN: %ppmoe opt %t.ordered.mlir --weights %fixtures/mixtral_block_dynamo/model.onnx --pass-pipeline='builtin.module()' | FileCheck %s --check-prefix=ORDERED
// ORDERED: linalg.map { arith.divf } ins(%arg0, %arg1 : tensor<4xf32>, tensor<4xf32>)

module attributes {ppmoe.stage = "core", ppmoe.source = {model = "../fixtures/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%x: tensor<4xf32> {core.input = "x"}, %y: tensor<4xf32> {core.input = "y"}) -> (tensor<4xf32> {core.output = "z"}) {
    %e = tensor.empty() : tensor<4xf32>
    %z = linalg.map ins(%x, %y : tensor<4xf32>, tensor<4xf32>) outs(%e : tensor<4xf32>)
      (%a: f32, %b: f32, %init: f32) {
        %d = arith.divf %b, %a : f32
        linalg.yield %d : f32
      } loc("z"("node_z"))
    func.return %z : tensor<4xf32>
  }
}
