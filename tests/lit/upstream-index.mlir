// A one-hot along a new last axis, a gather of elements (GatherElements) and a scatter of
// elements (ScatterElements, no reduction or a sum) of static shapes print as linalg.generic
// ops over their i64 indices: the one-hot compares each position along the new axis with its
// index (wrapped once where negative) and extracts `on` or `off` from its values, the gather
// extracts from its data at its own position with the index along the axis, the scatter starts
// from its data (its destination) and, in a reduction loop over the updates, takes each update
// whose index is the element's position (the later of two wins). The value a body extracts
// from is read from outside the body: it reads back as the instruction's operand (the
// one-hot's third, the gather's first), as the scatter's destination reads back as its data,
// and the IR reprints as itself. A one-hot along another axis stays core.one_hot. Upstream's -cse -canonicalize
// hoists the bodies' constants; they are put back, and the IR reads back as the same program.

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module()' > %t.printed.mlir
// RUN: FileCheck %s < %t.printed.mlir
// RUN: %ppmoe opt %t.printed.mlir --pass-pipeline='builtin.module()' | diff - %t.printed.mlir
// RUN: mlir-opt --allow-unregistered-dialect --mlir-print-debuginfo -cse -canonicalize %t.printed.mlir > %t.canonical.mlir
// RUN: FileCheck %s --check-prefix=HOISTED < %t.canonical.mlir
// RUN: %ppmoe opt %t.canonical.mlir --pass-pipeline='builtin.module()' | diff - %t.printed.mlir

// CHECK-LABEL: func.func @rank0(
// CHECK-SAME: %[[IDS:arg0]]: tensor<16xi64>
// CHECK-SAME: %[[DEPTH:arg1]]: tensor<i64>
// CHECK-SAME: %[[VALUES:arg2]]: tensor<2xf32>
// CHECK-SAME: %[[DATA:arg3]]: tensor<16x8xf32>
// CHECK-SAME: %[[PICKS:arg4]]: tensor<16x2xi64>
// CHECK: linalg.generic {{.*}} ins(%[[IDS]], %[[DEPTH]] : tensor<16xi64>, tensor<i64>) outs(%{{.*}} : tensor<16x4xf32>)
// CHECK: arith.cmpi slt,
// CHECK: linalg.index 1 : index
// CHECK: arith.cmpi eq,
// CHECK: tensor.extract %[[VALUES]][%{{.*}}] : tensor<2xf32>
// CHECK: tensor.extract %[[VALUES]][%{{.*}}] : tensor<2xf32>
// CHECK: linalg.generic {{.*}} ins(%[[PICKS]] : tensor<16x2xi64>) outs(%{{.*}} : tensor<16x2xf32>)
// CHECK: arith.constant 8 : i64
// CHECK: %[[ROW:.*]] = linalg.index 0 : index
// CHECK: tensor.extract %[[DATA]][%[[ROW]], %{{.*}}] : tensor<16x8xf32>
// CHECK: linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[PICKS]], %[[UPDATES:arg5]] : tensor<16x2xi64>, tensor<16x2xf32>) outs(%[[DATA]] : tensor<16x8xf32>)
// CHECK: linalg.index 1 : index
// CHECK: arith.select %{{.*}}, %{{.*}}, %{{.*}} : f32
// CHECK: "core.one_hot"(%[[IDS]], %[[DEPTH]], %[[VALUES]]) {axis = 0 : i64}
// HOISTED: %[[ZERO:.*]] = arith.constant 0 : i64
// HOISTED: linalg.generic
// HOISTED: arith.cmpi slt, %{{.*}}, %[[ZERO]] : i64

module attributes {ppmoe.stage = "core", ppmoe.source = {model = "../fixtures/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%arg0: tensor<16xi64> {core.input = "ids"}, %arg1: tensor<i64> {core.input = "depth"}, %arg2: tensor<2xf32> {core.input = "values"}, %arg3: tensor<16x8xf32> {core.input = "data"}, %arg4: tensor<16x2xi64> {core.input = "picks"}, %arg5: tensor<16x2xf32> {core.input = "updates"}) -> (tensor<16x4xf32> {core.output = "hot"}, tensor<16x2xf32> {core.output = "picked"}, tensor<16x8xf32> {core.output = "scattered"}, tensor<4x16xf32> {core.output = "cold"}) attributes {ppmoe.coords = array<i64: 0, 0, 0>} {
    %0 = "core.one_hot"(%arg0, %arg1, %arg2) {axis = -1 : i64} : (tensor<16xi64>, tensor<i64>, tensor<2xf32>) -> tensor<16x4xf32> loc("hot"("node_hot"))
    %1 = "core.gather_elements"(%arg3, %arg4) {axis = 1 : i64} : (tensor<16x8xf32>, tensor<16x2xi64>) -> tensor<16x2xf32> loc("picked"("node_picked"))
    %2 = "core.scatter_elements"(%arg3, %arg4, %arg5) {axis = 1 : i64, reduction = "none"} : (tensor<16x8xf32>, tensor<16x2xi64>, tensor<16x2xf32>) -> tensor<16x8xf32> loc("scattered"("node_scattered"))
    %3 = "core.one_hot"(%arg0, %arg1, %arg2) {axis = 0 : i64} : (tensor<16xi64>, tensor<i64>, tensor<2xf32>) -> tensor<4x16xf32> loc("cold"("node_cold"))
    return %0, %1, %2, %3 : tensor<16x4xf32>, tensor<16x2xf32>, tensor<16x8xf32>, tensor<4x16xf32>
  }
}
