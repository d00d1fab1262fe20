// Instructions that upstream ops express exactly print as them, so MLIR checks their types: a
// matmul of two matrices as linalg.matmul into a zero linalg.fill (linalg's matmul adds to its
// destination), a transpose and a softmax as
// linalg ops, a concatenation and a reshape as tensor ops (axes counted from the end counted
// from the front), f32 elementwise arithmetic of one type as a linalg.map of the arith / math
// op (linalg's ops carry upstream's sharding interface), a broadcasting add as a
// linalg.generic whose indexing maps broadcast, a sigmoid (no upstream op) as a linalg.map of
// negf, exp, addf and divf, a cast to bf16 as arith.truncf. Read back, they are the same program (the IR reprints as
// itself).

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module()' > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir

// An edit that makes the matmul's shapes disagree is refused by linalg's verifier.
// RUN: sed 's/tensor<3x5xf32>/tensor<3x6xf32>/g' %t.mlir > %t.bad.mlir
// RUN: not %ppmoe opt %t.bad.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=BAD
// BAD: error: {{.*}}bad.mlir: stage 'input': the IR does not verify: {{.*}}linalg.matmul

// Indexing maps that transpose an operand (linalg's matmul takes them; ppmoe's does not) are
// refused by name.
// RUN: sed 's/linalg.matmul ins(%arg0, %arg1/linalg.matmul indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d2)>, affine_map<(d0, d1, d2) -> (d1, d2)>, affine_map<(d0, d1, d2) -> (d0, d1)>] ins(%arg0, %arg1/; s/tensor<3x5xf32>/tensor<5x3xf32>/g' %t.mlir > %t.maps.mlir
// RUN: not %ppmoe opt %t.maps.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=MAPS
// MAPS: error: {{.*}}maps.mlir: {{.*}}'linalg.matmul': indexing maps

// A matmul into a bare tensor.empty (adding to undefined values) is refused as it is read.
// RUN: sed 's/outs(%1 : tensor<4x5xf32>)/outs(%0 : tensor<4x5xf32>)/' %t.mlir > %t.nofill.mlir
// RUN: not %ppmoe opt %t.nofill.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=NOFILL
// NOFILL: error: {{.*}}nofill.mlir: {{.*}}linalg.matmul{{.*}}expected a zero linalg.fill

// CHECK: [[BIAS:#map[0-9]*]] = affine_map<(d0, d1) -> (d1)>
// CHECK-LABEL: func.func @rank0(
// CHECK: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
// CHECK-NEXT: %[[EMPTY:.*]] = tensor.empty() : tensor<4x5xf32>
// CHECK-NEXT: %[[INIT:.*]] = linalg.fill ins(%[[ZERO]] : f32) outs(%[[EMPTY]] : tensor<4x5xf32>) -> tensor<4x5xf32>
// CHECK-NEXT: %[[MM:.*]] = linalg.matmul ins(%arg0, %arg1 : tensor<4x3xf32>, tensor<3x5xf32>) outs(%[[INIT]] : tensor<4x5xf32>) -> tensor<4x5xf32>
// CHECK-NEXT: tensor.empty() : tensor<4x5xf32>
// CHECK-NEXT: %[[E:.*]] = linalg.map { math.exp } ins(%[[MM]] : tensor<4x5xf32>) outs(
// CHECK-NEXT: tensor.empty() : tensor<4x5xf32>
// CHECK-NEXT: %[[S:.*]] = linalg.map { arith.addf } ins(%[[E]], %[[MM]] : tensor<4x5xf32>, tensor<4x5xf32>) outs(
// CHECK-NEXT: tensor.empty() : tensor<4x5xf32>
// CHECK-NEXT: %[[B:.*]] = linalg.generic {indexing_maps = [{{#map[0-9]*}}, [[BIAS]], {{#map[0-9]*}}], iterator_types = ["parallel", "parallel"]} ins(%[[S]], %arg2 : tensor<4x5xf32>, tensor<5xf32>) outs(
// CHECK: arith.addf
// CHECK: } -> tensor<4x5xf32>
// CHECK-NEXT: tensor.empty() : tensor<4x5xf32>
// CHECK-NEXT: %[[G:.*]] = linalg.map ins(%[[B]] : tensor<4x5xf32>) outs(
// CHECK-NEXT: (%[[IN:.*]]: f32 {{.*}}, %{{.*}}: f32 {{.*}}) {
// CHECK-NEXT: %[[NEG:.*]] = arith.negf %[[IN]] : f32
// CHECK-NEXT: %[[EXP:.*]] = math.exp %[[NEG]] : f32
// CHECK-NEXT: %[[ONE:.*]] = arith.constant 1.000000e+00 : f32
// CHECK-NEXT: %[[DEN:.*]] = arith.addf %[[ONE]], %[[EXP]] : f32
// CHECK-NEXT: %[[SIG:.*]] = arith.divf %[[ONE]], %[[DEN]] : f32
// CHECK-NEXT: linalg.yield %[[SIG]] : f32
// CHECK-NEXT: }
// CHECK-NEXT: tensor.empty() : tensor<4x5xf32>
// CHECK-NEXT: %[[P:.*]] = linalg.softmax dimension(1) ins(%[[G]] : tensor<4x5xf32>)
// CHECK-NEXT: tensor.empty() : tensor<5x4xf32>
// CHECK-NEXT: %[[T:.*]] = linalg.transpose ins(%[[P]] : tensor<4x5xf32>) outs(%{{.*}} : tensor<5x4xf32>) permutation = [1, 0]
// CHECK-NEXT: %[[C:.*]] = tensor.concat dim(1) %[[T]], %[[T]] : (tensor<5x4xf32>, tensor<5x4xf32>) -> tensor<5x8xf32>
// CHECK-NEXT: %[[SHAPE:.*]] = arith.constant dense<40> : tensor<1xi64>
// CHECK-NEXT: %[[R:.*]] = tensor.reshape %[[C]](%[[SHAPE]]) : (tensor<5x8xf32>, tensor<1xi64>) -> tensor<40xf32>
// CHECK-NEXT: arith.truncf %[[R]] : tensor<40xf32> to tensor<40xbf16>

module attributes {ppmoe.stage = "core", ppmoe.source = {model = "../fixtures/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%x: tensor<4x3xf32> {core.input = "x"}, %w: tensor<3x5xf32> {core.input = "w"}, %b: tensor<5xf32> {core.input = "b"}) -> (tensor<40xbf16> {core.output = "z"}) {
    %0 = "core.mat_mul"(%x, %w) : (tensor<4x3xf32>, tensor<3x5xf32>) -> tensor<4x5xf32> loc("mm"("node_mm"))
    %1 = "core.exp"(%0) : (tensor<4x5xf32>) -> tensor<4x5xf32> loc("e"("node_e"))
    %2 = "core.add"(%1, %0) : (tensor<4x5xf32>, tensor<4x5xf32>) -> tensor<4x5xf32> loc("s"("node_s"))
    %3 = "core.add"(%2, %b) : (tensor<4x5xf32>, tensor<5xf32>) -> tensor<4x5xf32> loc("bias"("node_bias"))
    %g = "core.sigmoid"(%3) : (tensor<4x5xf32>) -> tensor<4x5xf32> loc("g"("node_g"))
    %4 = "core.softmax"(%g) {axis = -1 : i64, log = false} : (tensor<4x5xf32>) -> tensor<4x5xf32> loc("p"("node_p"))
    %5 = "core.transpose"(%4) {perm = array<i64: 1, 0>} : (tensor<4x5xf32>) -> tensor<5x4xf32> loc("t"("node_t"))
    %6 = "core.concat"(%5, %5) {axis = -1 : i64} : (tensor<5x4xf32>, tensor<5x4xf32>) -> tensor<5x8xf32> loc("c"("node_c"))
    %7 = "core.reshape_to"(%6) {shape = array<i64: 40>} : (tensor<5x8xf32>) -> tensor<40xf32> loc("r"("node_r"))
    %8 = "core.cast"(%7) {to = "bf16"} : (tensor<40xf32>) -> tensor<40xbf16> loc("z"("node_z"))
    func.return %8 : tensor<40xbf16>
  }
}
