// Casts no single arith op makes as ppmoe does print as the linalg.map that computes them:
// f32 to i64 as arith.fptosi where the value is in i64's range, i64's bounds beyond it (2^63
// and -2^63 compared in f32), 0 for a NaN; f32 to i32 the same then arith.trunci (ppmoe
// saturates at i64 and wraps); a number to booleans as a comparison with zero that is true
// for a NaN (arith.cmpf une). The core ops they were printed as read still, and the maps read
// back as the casts; a map that saturates at 2^63 exclusive (ogt) is refused by name.

// RUN: sed -n 's|^// HAND-IR: ||p' %s | sed 's|@FIXTURES@|%fixtures|' > %t.hand.mlir
// RUN: %ppmoe opt %t.hand.mlir --pass-pipeline='builtin.module()' > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' | diff %t.mlir -

// CHECK: linalg.map ins(%arg0 : tensor<4xf32>) outs(%{{.*}} : tensor<4xi64>)
// CHECK: %[[NAN:.*]] = arith.cmpf uno, %in, %in : f32
// CHECK-NEXT: %[[HI:.*]] = arith.constant 9.22337203E+18 : f32
// CHECK-NEXT: %[[OVER:.*]] = arith.cmpf oge, %in, %[[HI]] : f32
// CHECK-NEXT: %[[LO:.*]] = arith.constant -9.22337203E+18 : f32
// CHECK-NEXT: %[[UNDER:.*]] = arith.cmpf olt, %in, %[[LO]] : f32
// CHECK-NEXT: %[[I:.*]] = arith.fptosi %in : f32 to i64
// CHECK: %[[A:.*]] = arith.select %[[UNDER]], %{{.*}}, %[[I]] : i64
// CHECK-NEXT: %[[B:.*]] = arith.select %[[OVER]], %{{.*}}, %[[A]] : i64
// CHECK-NEXT: %[[C:.*]] = arith.select %[[NAN]], %{{.*}}, %[[B]] : i64
// CHECK-NEXT: linalg.yield %[[C]] : i64
// CHECK: linalg.map ins(%arg0 : tensor<4xf32>) outs(%{{.*}} : tensor<4xi32>)
// CHECK: arith.trunci %{{.*}} : i64 to i32
// CHECK: linalg.map ins(%arg0 : tensor<4xf32>) outs(%{{.*}} : tensor<4xi1>)
// CHECK: arith.cmpf une, %in, %{{.*}} : f32
// CHECK-NOT: "core.cast"

// RUN: sed '0,/arith.cmpf oge/s//arith.cmpf ogt/' %t.mlir > %t.edge.mlir
// RUN: not %ppmoe opt %t.edge.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=EDGE
// EDGE: error: {{.*}}edge.mlir: {{.*}}'linalg.map' of F32 to I64: its body is not the cast ppmoe prints

// HAND-IR: module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
// HAND-IR:   func.func @rank0(%x: tensor<4xf32> {core.input = "x"}) -> (tensor<4xi64> {core.output = "i"}, tensor<4xi32> {core.output = "j"}, tensor<4xi1> {core.output = "b"}) {
// HAND-IR:     %0 = "core.cast"(%x) {to = "i64"} : (tensor<4xf32>) -> tensor<4xi64> loc("i"("node_i"))
// HAND-IR:     %1 = "core.cast"(%x) {to = "i32"} : (tensor<4xf32>) -> tensor<4xi32> loc("j"("node_j"))
// HAND-IR:     %2 = "core.cast"(%x) {to = "bool"} : (tensor<4xf32>) -> tensor<4xi1> loc("b"("node_b"))
// HAND-IR:     func.return %0, %1, %2 : tensor<4xi64>, tensor<4xi32>, tensor<4xi1>
// HAND-IR:   }
// HAND-IR: }
