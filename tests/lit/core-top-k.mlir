// An f32 top-k whose k is known (ONNX's TopK with its k operand spent: top_k_axis) prints as
// two linalg.generics: each element's rank, counted from a zero fill over the other elements
// of its row (a "reduction" loop), how many come first in the order top-k picks in (a greater
// value, a NaN above every number, an equal value at a lower index); then the pick, the
// result's loops and a "reduction" loop over the row taking the value and index whose rank is
// the result's position. JAX's top-2 routing (left unraised without its weights) has one; its
// IR reads back as itself, and at tp 2 through ppmoe-shard.

// RUN: %ppmoe inspect %fixtures/jax_moe_block/model.mlir --emit moe > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' | FileCheck %s --check-prefix=TP

// CHECK-DAG: [[OTHER:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
// CHECK-DAG: [[SAME:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
// CHECK-LABEL: func.func @rank0(
// CHECK: %[[ZERO:.*]] = arith.constant 0 : i64
// CHECK-NEXT: %[[FROM:.*]] = linalg.fill ins(%[[ZERO]] : i64) outs(%{{.*}} : tensor<16x4xi64>)
// CHECK-NEXT: %[[RANKS:.*]] = linalg.generic {indexing_maps = [[[OTHER]], [[SAME]], [[SAME]]], iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[X:.*]], %[[X]] : tensor<16x4xf32>, tensor<16x4xf32>) outs(%[[FROM]] : tensor<16x4xi64>) {
// CHECK-NEXT: ^bb0(%in: f32 {{.*}}, %[[B:.*]]: f32 {{.*}}, %out: i64 {{.*}}):
// CHECK-NEXT: %[[J:.*]] = linalg.index 2 : index
// CHECK-NEXT: %[[I:.*]] = linalg.index 1 : index
// CHECK-NEXT: %[[AN:.*]] = arith.cmpf uno, %in, %in : f32
// CHECK-NEXT: %[[BN:.*]] = arith.cmpf uno, %[[B]], %[[B]] : f32
// CHECK-NEXT: %[[GT:.*]] = arith.cmpf ogt, %in, %[[B]] : f32
// CHECK-NEXT: %[[NUM:.*]] = arith.cmpf ord, %[[B]], %[[B]] : f32
// CHECK-NEXT: %[[NANUP:.*]] = arith.andi %[[AN]], %[[NUM]] : i1
// CHECK-NEXT: %[[OVER:.*]] = arith.ori %[[GT]], %[[NANUP]] : i1
// CHECK-NEXT: %[[EQ:.*]] = arith.cmpf oeq, %in, %[[B]] : f32
// CHECK-NEXT: %[[NANS:.*]] = arith.andi %[[AN]], %[[BN]] : i1
// CHECK-NEXT: %[[SAMEV:.*]] = arith.ori %[[EQ]], %[[NANS]] : i1
// CHECK-NEXT: %[[LOWER:.*]] = arith.cmpi ult, %[[J]], %[[I]] : index
// CHECK-NEXT: %[[TIE:.*]] = arith.andi %[[SAMEV]], %[[LOWER]] : i1
// CHECK-NEXT: %[[AHEAD:.*]] = arith.ori %[[OVER]], %[[TIE]] : i1
// CHECK-NEXT: %[[ONE:.*]] = arith.extui %[[AHEAD]] : i1 to i64
// CHECK-NEXT: %[[R:.*]] = arith.addi %out, %[[ONE]] : i64
// CHECK-NEXT: linalg.yield %[[R]] : i64
// CHECK: linalg.generic {indexing_maps = [[[OTHER]], [[OTHER]], [[SAME]], [[SAME]]], iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[X]], %[[RANKS]] : tensor<16x4xf32>, tensor<16x4xi64>) outs(%{{.*}}, %{{.*}} : tensor<16x2xf32>, tensor<16x2xi64>) {
// CHECK-NEXT: ^bb0(%in: f32 {{.*}}, %[[RK:.*]]: i64 {{.*}}, %out: f32 {{.*}}, %[[AT:.*]]: i64 {{.*}}):
// CHECK-NEXT: %[[P:.*]] = linalg.index 1 : index
// CHECK-NEXT: %[[S:.*]] = linalg.index 2 : index
// CHECK-NEXT: %[[P64:.*]] = arith.index_cast %[[P]] : index to i64
// CHECK-NEXT: %[[HIT:.*]] = arith.cmpi eq, %[[RK]], %[[P64]] : i64
// CHECK-NEXT: %[[V:.*]] = arith.select %[[HIT]], %in, %out : f32
// CHECK-NEXT: %[[S64:.*]] = arith.index_cast %[[S]] : index to i64
// CHECK-NEXT: %[[K:.*]] = arith.select %[[HIT]], %[[S64]], %[[AT]] : i64
// CHECK-NEXT: linalg.yield %[[V]], %[[K]] : f32, i64
// CHECK-NOT: "core.top_k

// TP-LABEL: func.func @rank1(
// TP: linalg.generic {{.*}} outs(%{{.*}}, %{{.*}} : tensor<16x2xf32>, tensor<16x2xi64>)

// Refused by name: ranks that put a NaN below the numbers (ord for uno), a pick of another
// rank (ne for eq), ranks from a fill of 1.
// RUN: sed '0,/arith.cmpf uno/s//arith.cmpf ord/' %t.mlir > %t.nan.mlir
// RUN: not %ppmoe opt %t.nan.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=NAN
// NAN: error: {{.*}}nan.mlir: {{.*}}(a top-k): its ranks are not the count of what comes first in its own input's row ppmoe prints, read by it alone
// RUN: sed '0,/arith.cmpi eq, %in_/s//arith.cmpi ne, %in_/' %t.mlir > %t.pick.mlir
// RUN: not %ppmoe opt %t.pick.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=PICK
// PICK: error: {{.*}}pick.mlir: {{.*}}(a top-k): its maps or body are not the pick by rank ppmoe prints
// RUN: sed '0,/arith.constant 0 : i64/s//arith.constant 1 : i64/' %t.mlir > %t.fill.mlir
// RUN: not %ppmoe opt %t.fill.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=FILL
// FILL: error: {{.*}}fill.mlir: {{.*}}a top-k's ranks and picks start from their destinations: expected zero linalg.fills
