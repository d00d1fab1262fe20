// An arg-max of floats along one axis prints as a linalg.generic of two results (the best
// value so far and its i64 position) from zero fills, its axis's loop "reduction": each step
// takes the element where it is the first (linalg.index 0) or beats the best strictly
// (arith.cmpf ogt; a tie keeps the earlier position, a NaN never beats), as ppmoe picks; only
// the position is read. A running sum whose axis is known (ONNX's CumSum with its axis
// operand spent: cum_sum_axis) prints as a linalg.generic with one loop more than its
// input's rank, the source position's, "reduction": each step adds the element where its
// source position is at or before the result's (arith.cmpi ule of the two linalg.indexes) and
// keeps the sum where not. JAX's GShard routing (left unraised without its weights) has both;
// its IR reads back as itself, and at tp 2 through ppmoe-shard.

// RUN: %ppmoe inspect %fixtures/jax_gshard_top2/model.mlir --emit moe > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' | FileCheck %s --check-prefix=TP

// CHECK-DAG: [[ID:#map[0-9]*]] = affine_map<(d0, d1) -> (d0, d1)>
// CHECK-DAG: [[ROW:#map[0-9]*]] = affine_map<(d0, d1) -> (d0)>
// CHECK-DAG: [[SOURCE:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d2, d1)>
// CHECK-DAG: [[RESULT:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
// CHECK-LABEL: func.func @rank0(
// CHECK: %[[V:.*]] = linalg.fill ins(%{{.*}} : f32) outs(%{{.*}} : tensor<64xf32>)
// CHECK: %[[Z:.*]] = arith.constant 0 : i64
// CHECK-NEXT: %[[K:.*]] = linalg.fill ins(%[[Z]] : i64) outs(%{{.*}} : tensor<64xi64>)
// CHECK-NEXT: %[[PAIR:.*]]:2 = linalg.generic {indexing_maps = [[[ID]], [[ROW]], [[ROW]]], iterator_types = ["parallel", "reduction"]} ins(%{{.*}} : tensor<64x4xf32>) outs(%[[V]], %[[K]] : tensor<64xf32>, tensor<64xi64>) {
// CHECK-NEXT: ^bb0(%in: f32 {{.*}}, %out: f32 {{.*}}, %[[AT:.*]]: i64 {{.*}}):
// CHECK-NEXT: %[[I:.*]] = linalg.index 1 : index
// CHECK-NEXT: %[[C0:.*]] = arith.constant 0 : index
// CHECK-NEXT: %[[FIRST:.*]] = arith.cmpi eq, %[[I]], %[[C0]] : index
// CHECK-NEXT: %[[BEATS:.*]] = arith.cmpf ogt, %in, %out : f32
// CHECK-NEXT: %[[TAKE:.*]] = arith.ori %[[FIRST]], %[[BEATS]] : i1
// CHECK-NEXT: %[[VALUE:.*]] = arith.select %[[TAKE]], %in, %out : f32
// CHECK-NEXT: %[[P:.*]] = arith.index_cast %[[I]] : index to i64
// CHECK-NEXT: %[[Q:.*]] = arith.select %[[TAKE]], %[[P]], %[[AT]] : i64
// CHECK-NEXT: linalg.yield %[[VALUE]], %[[Q]] : f32, i64
// CHECK: arith.trunci %[[PAIR]]#1 : tensor<64xi64> to tensor<64xi32>
// CHECK: %[[FROM:.*]] = linalg.fill ins(%{{.*}} : i32) outs(%{{.*}} : tensor<64x4xi32>)
// CHECK-NEXT: linalg.generic {indexing_maps = [[[SOURCE]], [[RESULT]]], iterator_types = ["parallel", "parallel", "reduction"]} ins(%{{.*}} : tensor<64x4xi32>) outs(%[[FROM]] : tensor<64x4xi32>) {
// CHECK-NEXT: ^bb0(%in: i32 {{.*}}, %out: i32 {{.*}}):
// CHECK-NEXT: %[[J:.*]] = linalg.index 2 : index
// CHECK-NEXT: %[[R:.*]] = linalg.index 0 : index
// CHECK-NEXT: %[[IN_SUM:.*]] = arith.cmpi ule, %[[J]], %[[R]] : index
// CHECK-NEXT: %[[ADDED:.*]] = arith.addi %out, %in : i32
// CHECK-NEXT: %[[KEPT:.*]] = arith.select %[[IN_SUM]], %[[ADDED]], %out : i32
// CHECK-NEXT: linalg.yield %[[KEPT]] : i32
// CHECK-NOT: "core.arg_max"
// CHECK-NOT: "core.cum_sum

// TP-LABEL: func.func @rank1(
// TP: linalg.generic {{.*}} iterator_types = ["parallel", "reduction"]} ins(%{{.*}} : tensor<64x4xf32>) outs(%{{.*}}, %{{.*}} : tensor<64xf32>, tensor<64xi64>)
// TP: linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "reduction"]} ins(%{{.*}} : tensor<64x4xi32>) outs(%{{.*}} : tensor<64x4xi32>)

// Refused by name: an arg-max that takes ties last (arith.cmpf oge), one whose best values
// are read, a running sum from a fill of 1.
// RUN: sed '0,/arith.cmpf ogt/s//arith.cmpf oge/' %t.mlir > %t.ties.mlir
// RUN: not %ppmoe opt %t.ties.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=TIES
// TIES: error: {{.*}}ties.mlir: {{.*}}an arg-max): its body is not the first-or-strictly-better pick ppmoe prints
// RUN: sed '0,/arith.constant 0 : i32/s//arith.constant 1 : i32/' %t.mlir > %t.fill.mlir
// RUN: not %ppmoe opt %t.fill.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=FILL
// FILL: error: {{.*}}fill.mlir: {{.*}}a running sum starts from its destination: expected a zero linalg.fill
// RUN: sed -n 's|^// HAND-IR: ||p' %s | sed 's|@FIXTURES@|%fixtures|' > %t.hand.mlir
// RUN: %ppmoe opt %t.hand.mlir --pass-pipeline='builtin.module()' > %t.hand.out.mlir
// RUN: FileCheck %s --check-prefix=HAND < %t.hand.out.mlir
// RUN: sed 's|return %\([0-9]*\)#1, \(.*\) : tensor<64xi64>,|return %\1#0, \2 : tensor<64xf32>,|; s|-> (tensor<64xi64> {core.output = "i"}|-> (tensor<64xf32> {core.output = "i"}|' %t.hand.out.mlir > %t.best.mlir
// RUN: not %ppmoe opt %t.best.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=BEST
// BEST: error: {{.*}}best.mlir: {{.*}}an arg-max's best values (its first result) are read; ppmoe makes only the positions

// The core ops they were printed as before read still and print as the generics; an f32
// running sum from the end (which ppmoe adds from the end) stays a core op.
// HAND: linalg.generic {{.*}} iterator_types = ["parallel", "reduction"]} ins(%arg0 : tensor<64x4xf32>)
// HAND: arith.cmpf olt, %in, %out : f32
// HAND: linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "reduction"]} ins(%arg1 : tensor<64x4xi32>)
// HAND: arith.cmpi ugt, %{{.*}}, %{{.*}} : index
// HAND: "core.cum_sum_axis"(%arg0) {axis = 1 : i64, exclusive = false, reverse = true} : (tensor<64x4xf32>) -> tensor<64x4xf32>

// HAND-IR: module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
// HAND-IR:   func.func @rank0(%x: tensor<64x4xf32> {core.input = "x"}, %n: tensor<64x4xi32> {core.input = "n"}) -> (tensor<64xi64> {core.output = "i"}, tensor<64x4xi32> {core.output = "c"}, tensor<64x4xf32> {core.output = "r"}) {
// HAND-IR:     %0 = "core.arg_max"(%x) {axis = -1 : i64, keepdims = false, max = false} : (tensor<64x4xf32>) -> tensor<64xi64> loc("i"("node_i"))
// HAND-IR:     %1 = "core.cum_sum_axis"(%n) {axis = 1 : i64, exclusive = true, reverse = true} : (tensor<64x4xi32>) -> tensor<64x4xi32> loc("c"("node_c"))
// HAND-IR:     %2 = "core.cum_sum_axis"(%x) {axis = 1 : i64, exclusive = false, reverse = true} : (tensor<64x4xf32>) -> tensor<64x4xf32> loc("r"("node_r"))
// HAND-IR:     func.return %0, %1, %2 : tensor<64xi64>, tensor<64x4xi32>, tensor<64x4xf32>
// HAND-IR:   }
// HAND-IR: }
