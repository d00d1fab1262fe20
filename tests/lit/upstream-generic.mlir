// Elementwise instructions beyond f32 arithmetic of one type print as a linalg.generic of one
// scalar op, each operand read through numpy broadcasting's indexing map: a float comparison
// as arith.cmpf with the ordered predicate (NaN compares false, as in ppmoe), an integer one as
// arith.cmpi, a boolean not as arith.xori with true, a boolean and as arith.andi, a where as
// arith.select, f32 max as arith.maxnumf, i32 arithmetic as arith.muli (wrapping, as ppmoe's does); casts from booleans
// and integers as the arith cast that converts as ppmoe does (extui, trunci, sitofp); a
// broadcast to a static shape (what ONNX's Expand becomes) as the operand's element yielded; a
// slice of static bounds (what ONNX's Slice becomes) as tensor.extract_slice; an f32 einsum
// that sums over no label (an outer product) as a linalg.generic of arith.mulf whose maps are
// its labels' (read back as the einsum of those maps); a matmul with a bf16 result as linalg's
// with an f32 one (ppmoe accumulates in f32) and an arith.truncf marked ppmoe.narrows, which
// reads back as part of the matmul (rounded once). Read back, they are the same program (the
// IR reprints as itself).

// RUN: %ppmoe opt %s --pass-pipeline='builtin.module()' > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir

// A body whose operands are swapped computes another function (y < x): refused as read.
// RUN: sed 's/arith.cmpf olt, %in, %in_0/arith.cmpf olt, %in_0, %in/' %t.mlir > %t.swap.mlir
// RUN: not %ppmoe opt %t.swap.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=SWAP
// SWAP: error: {{.*}}swap.mlir: {{.*}}'linalg.generic': its body is not one elementwise op over its operands as ppmoe prints it

// A slice past the input's end is refused by tensor.extract_slice's verifier.
// RUN: sed 's/tensor.extract_slice %arg0\[1, 0\]/tensor.extract_slice %arg0[3, 0]/' %t.mlir > %t.past.mlir
// RUN: not %ppmoe opt %t.past.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=PAST
// PAST: error: {{.*}}past.mlir: stage 'input': the IR does not verify: slice along dimension 0 runs out-of-bounds: 4 >= 4 (loc("s"("node_s")))

// A narrowing cast whose wide matmul result another op reads too is refused: that reader
// would read the narrowed buffer.
// RUN: sed 's/^\( *\)%[0-9]* = arith.truncf \(%[0-9]*\) {ppmoe.narrows = true} : \(.*\) to \(tensor<[0-9x]*xbf16>\).*$/&\n\1%%again = arith.truncf \2 : \3 to \4/' %t.mlir > %t.twice.mlir
// RUN: not %ppmoe opt %t.twice.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=TWICE
// TWICE: error: {{.*}}twice.mlir: {{.*}}ppmoe.narrows casts a result that other ops read too

// An unsigned conversion of a signed integer is no cast ppmoe makes: refused by name.
// RUN: sed 's/arith.sitofp/arith.uitofp/' %t.mlir > %t.unsigned.mlir
// RUN: not %ppmoe opt %t.unsigned.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=UNSIGNED
// UNSIGNED: error: {{.*}}unsigned.mlir: {{.*}}'arith.uitofp' from i32 to f32: ppmoe converts those types by arith.sitofp

// CHECK-DAG: [[SAME:#map[0-9]*]] = affine_map<(d0, d1) -> (d0, d1)>
// CHECK-DAG: [[SCALAR:#map[0-9]*]] = affine_map<(d0, d1) -> ()>
// CHECK-DAG: [[ROW:#map[0-9]*]] = affine_map<(d0, d1) -> (d1)>
// CHECK-DAG: [[AB:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
// CHECK-DAG: [[AC:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
// CHECK-DAG: [[ABC:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
// CHECK-LABEL: func.func @rank0(
// CHECK: %[[LT:.*]] = linalg.generic {indexing_maps = [[[SAME]], [[SCALAR]], [[SAME]]], iterator_types = ["parallel", "parallel"]} ins(%arg0, %arg1 : tensor<4x5xf32>, tensor<f32>) outs(%{{.*}} : tensor<4x5xi1>) {
// CHECK-NEXT: ^bb0(%in: f32 {{.*}}, %in_0: f32 {{.*}}, %out: i1 {{.*}}):
// CHECK-NEXT: %[[C:.*]] = arith.cmpf olt, %in, %in_0 : f32
// CHECK-NEXT: linalg.yield %[[C]] : i1
// CHECK: %[[GE:.*]] = linalg.generic {{.*}} ins(%[[LT]] : tensor<4x5xi1>) outs(
// CHECK-NEXT: ^bb0(%in: i1 {{.*}}, %out: i1 {{.*}}):
// CHECK-NEXT: %[[TRUE:.*]] = arith.constant true
// CHECK-NEXT: %[[NOT:.*]] = arith.xori %in, %[[TRUE]] : i1
// CHECK: %[[W:.*]] = linalg.generic {indexing_maps = [[[SAME]], [[SAME]], [[SCALAR]], [[SAME]]], {{.*}} ins(%[[GE]], %arg0, %arg1 : tensor<4x5xi1>, tensor<4x5xf32>, tensor<f32>)
// CHECK: arith.select %in, %in_0, %in_1 : f32
// CHECK: %[[M:.*]] = linalg.generic {{.*}} ins(%[[W]], %arg0 : tensor<4x5xf32>, tensor<4x5xf32>)
// CHECK: arith.maxnumf %in, %in_0 : f32
// CHECK: %[[EQ:.*]] = linalg.generic {indexing_maps = [[[SAME]], [[ROW]], [[SAME]]], {{.*}} ins(%arg2, %arg3 : tensor<4x5xi64>, tensor<5xi64>) outs(%{{.*}} : tensor<4x5xi1>)
// CHECK: arith.cmpi eq, %in, %in_0 : i64
// CHECK: %[[B:.*]] = arith.extui %[[EQ]] : tensor<4x5xi1> to tensor<4x5xi32>
// CHECK-NEXT: %[[T:.*]] = arith.trunci %arg2 : tensor<4x5xi64> to tensor<4x5xi32>
// CHECK: %[[N:.*]] = linalg.generic {{.*}} ins(%[[B]], %[[T]] : tensor<4x5xi32>, tensor<4x5xi32>)
// CHECK: arith.muli %in, %in_0 : i32
// CHECK: arith.sitofp %[[N]] : tensor<4x5xi32> to tensor<4x5xf32>
// CHECK: linalg.generic {indexing_maps = [[[ROW]], [[SAME]]], iterator_types = ["parallel", "parallel"]} ins(%arg3 : tensor<5xi64>) outs(%{{.*}} : tensor<4x5xi64>) {
// CHECK-NEXT: ^bb0(%in: i64 {{.*}}, %out: i64 {{.*}}):
// CHECK-NEXT: linalg.yield %in : i64
// CHECK: tensor.extract_slice %arg0[1, 0] [2, 3] [1, 2] : tensor<4x5xf32> to tensor<2x3xf32>
// CHECK: linalg.generic {indexing_maps = [[[AB]], [[AC]], [[ABC]]], iterator_types = ["parallel", "parallel", "parallel"]} ins(%arg0, %arg0 : tensor<4x5xf32>, tensor<4x5xf32>) outs(%{{.*}} : tensor<4x5x5xf32>)
// CHECK-NEXT: ^bb0(%in: f32 {{.*}}, %in_0: f32 {{.*}}, %out: f32 {{.*}}):
// CHECK-NEXT: arith.mulf %in, %in_0 : f32
// CHECK: linalg.generic {{.*}} ins(%[[LT]], %[[EQ]] : tensor<4x5xi1>, tensor<4x5xi1>)
// CHECK-NEXT: ^bb0(%in: i1 {{.*}}, %in_0: i1 {{.*}}, %out: i1 {{.*}}):
// CHECK-NEXT: arith.andi %in, %in_0 : i1
// CHECK: %[[MM:.*]] = linalg.matmul ins(%arg4, %arg5 : tensor<4x3xbf16>, tensor<3x5xbf16>) outs(%{{.*}} : tensor<4x5xf32>) -> tensor<4x5xf32>
// CHECK-NEXT: arith.truncf %[[MM]] {ppmoe.narrows = true} : tensor<4x5xf32> to tensor<4x5xbf16>
// CHECK-NOT: "core.

module attributes {ppmoe.stage = "core", ppmoe.source = {model = "../fixtures/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
  func.func @rank0(%x: tensor<4x5xf32> {core.input = "x"}, %k: tensor<f32> {core.input = "k"}, %i: tensor<4x5xi64> {core.input = "i"}, %j: tensor<5xi64> {core.input = "j"}, %hx: tensor<4x3xbf16> {core.input = "hx"}, %hw: tensor<3x5xbf16> {core.input = "hw"}) -> (tensor<4x5xf32> {core.output = "y"}, tensor<4x5xi32> {core.output = "n"}, tensor<4x5xi64> {core.output = "e"}, tensor<2x3xf32> {core.output = "s"}, tensor<4x5x5xf32> {core.output = "o"}, tensor<4x5xi1> {core.output = "a"}, tensor<4x5xbf16> {core.output = "h"}) {
    %0 = "core.less"(%x, %k) : (tensor<4x5xf32>, tensor<f32>) -> tensor<4x5xi1> loc("lt"("node_lt"))
    %1 = "core.not"(%0) : (tensor<4x5xi1>) -> tensor<4x5xi1> loc("ge"("node_ge"))
    %2 = "core.where"(%1, %x, %k) : (tensor<4x5xi1>, tensor<4x5xf32>, tensor<f32>) -> tensor<4x5xf32> loc("w"("node_w"))
    %3 = "core.max"(%2, %x) : (tensor<4x5xf32>, tensor<4x5xf32>) -> tensor<4x5xf32> loc("m"("node_m"))
    %4 = "core.equal"(%i, %j) : (tensor<4x5xi64>, tensor<5xi64>) -> tensor<4x5xi1> loc("eq"("node_eq"))
    %5 = "core.cast"(%4) {to = "i32"} : (tensor<4x5xi1>) -> tensor<4x5xi32> loc("b"("node_b"))
    %6 = "core.cast"(%i) {to = "i32"} : (tensor<4x5xi64>) -> tensor<4x5xi32> loc("t"("node_t"))
    %7 = "core.mul"(%5, %6) : (tensor<4x5xi32>, tensor<4x5xi32>) -> tensor<4x5xi32> loc("n"("node_n"))
    %8 = "core.cast"(%7) {to = "f32"} : (tensor<4x5xi32>) -> tensor<4x5xf32> loc("f"("node_f"))
    %9 = "core.add"(%3, %8) : (tensor<4x5xf32>, tensor<4x5xf32>) -> tensor<4x5xf32> loc("y"("node_y"))
    %10 = "core.expand_to"(%j) {shape = array<i64: 4, 5>} : (tensor<5xi64>) -> tensor<4x5xi64> loc("e"("node_e"))
    %11 = "core.extract_slice"(%x) {offsets = array<i64: 1, 0>, sizes = array<i64: 2, 3>, strides = array<i64: 1, 2>} : (tensor<4x5xf32>) -> tensor<2x3xf32> loc("s"("node_s"))
    %12 = "core.einsum"(%x, %x) {equation = "ab,ac->abc"} : (tensor<4x5xf32>, tensor<4x5xf32>) -> tensor<4x5x5xf32> loc("o"("node_o"))
    %13 = "core.and"(%0, %4) : (tensor<4x5xi1>, tensor<4x5xi1>) -> tensor<4x5xi1> loc("a"("node_a"))
    %14 = "core.mat_mul"(%hx, %hw) : (tensor<4x3xbf16>, tensor<3x5xbf16>) -> tensor<4x5xbf16> loc("h"("node_h"))
    func.return %9, %7, %10, %11, %12, %13, %14 : tensor<4x5xf32>, tensor<4x5xi32>, tensor<4x5xi64>, tensor<2x3xf32>, tensor<4x5x5xf32>, tensor<4x5xi1>, tensor<4x5xbf16>
  }
}
