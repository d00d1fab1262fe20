// Reductions whose axes are known are over static axes (ONNX's axes operand spent). An f32
// sum, mean, maximum or minimum prints as a linalg.generic into a linalg.fill of its identity,
// the reduced loops "reduction": ppmoe accumulates an f32 sum in f64 and rounds once, so a
// sum's generic extends each element to f64 and adds, and is narrowed after (a sum by an
// arith.truncf, a mean by a generic that divides by the count in f64 and truncates, each
// marked ppmoe.narrows and read back as part of the reduction). An RMS norm's mean over the
// hidden axis and Qwen3's q and k norms' over each head's print so; the IR reads back as
// itself; at tp 2 each rank reduces its own heads. An i32 or i64 sum, product, maximum or
// minimum is a generic of arith.addi, muli, maxsi or minsi; any other reduction stays
// `core.reduce_<f>` with its axes an attribute counted from the front.

// RUN: %ppmoe inspect %fixtures/qwen3moe_lm_sdpa/model.onnx --emit moe > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' | FileCheck %s --check-prefix=TP

// CHECK-DAG: [[ID:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
// CHECK-DAG: [[KEEP:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d1, 0)>
// CHECK-LABEL: func.func @rank0(
// CHECK: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f64
// CHECK-NEXT: %[[FILL:.*]] = linalg.fill ins(%[[ZERO]] : f64) outs(%{{.*}} : tensor<1x16x1xf64>)
// CHECK: %[[SUM:.*]] = linalg.generic {indexing_maps = [[[ID]], [[KEEP]]], iterator_types = ["parallel", "parallel", "reduction"]} ins(%{{.*}} : tensor<1x16x64xf32>) outs(%[[FILL]] : tensor<1x16x1xf64>) {
// CHECK-NEXT: ^bb0(%in: f32 {{.*}}, %out: f64 {{.*}}):
// CHECK-NEXT: %[[E:.*]] = arith.extf %in : f32 to f64
// CHECK-NEXT: %[[S:.*]] = arith.addf %out, %[[E]] : f64
// CHECK-NEXT: linalg.yield %[[S]] : f64
// CHECK: linalg.generic {indexing_maps = [[[ID]], [[ID]]], iterator_types = ["parallel", "parallel", "parallel"]} ins(%[[SUM]] : tensor<1x16x1xf64>) outs(%{{.*}} : tensor<1x16x1xf32>) attrs = {ppmoe.narrows = true} {
// CHECK-NEXT: ^bb0(%in: f64 {{.*}}, %out: f32 {{.*}}):
// CHECK-NEXT: %[[N:.*]] = arith.constant 6.400000e+01 : f64
// CHECK-NEXT: %[[Q:.*]] = arith.divf %in, %[[N]] : f64
// CHECK-NEXT: %[[T:.*]] = arith.truncf %[[Q]] : f64 to f32
// CHECK-NEXT: linalg.yield %[[T]] : f32
// CHECK-NOT: "core.reduce_

// TP-LABEL: func.func @rank1(
// TP: linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "parallel", "reduction"]} ins(%{{.*}} : tensor<1x16x2x16xf32>) outs(%{{.*}} : tensor<1x16x2x1xf64>)

// A sum whose body adds in another order, a fill of another value, and a mean that divides
// by another count are no reduction ppmoe prints: refused by name.
// RUN: sed '0,/arith.addf %out, \(%[0-9]*\) : f64/s//arith.addf \1, %out : f64/' %t.mlir > %t.order.mlir
// RUN: not %ppmoe opt %t.order.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=ORDER
// ORDER: error: {{.*}}order.mlir: {{.*}}its body is not a sum in f64, a maxnumf or a minnumf, or an integer addi, muli, maxsi or minsi as ppmoe prints it
// RUN: sed '0,/arith.constant 0.000000e+00 : f64/s//arith.constant 1.000000e+00 : f64/' %t.mlir > %t.fill.mlir
// RUN: not %ppmoe opt %t.fill.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=START
// START: error: {{.*}}fill.mlir: {{.*}}a reduction starts from its destination: expected a linalg.fill of 0 for its Sum
// RUN: sed '0,/arith.constant 6.400000e+01 : f64/s//arith.constant 6.300000e+01 : f64/' %t.mlir > %t.count.mlir
// RUN: not %ppmoe opt %t.count.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=COUNT
// COUNT: error: {{.*}}count.mlir: {{.*}}ppmoe.narrows narrows the result of the collective, matmul, f32 reshape, softmax or sum just before it as ppmoe prints it

// JAX's i32 sums (a routing's counts, left unraised without the weights): a generic of
// arith.addi from an i32 fill of 0 (ppmoe's integer sums wrap at their width, as addi does),
// with no narrowing; the IR reads back as itself.
// RUN: %ppmoe inspect %fixtures/jax_gshard_top2/model.mlir --emit core > %t.core.mlir
// RUN: FileCheck %s --check-prefix=INT < %t.core.mlir
// RUN: %ppmoe opt %t.core.mlir --pass-pipeline='builtin.module()' > %t.core.again.mlir
// RUN: diff %t.core.mlir %t.core.again.mlir
// INT: %[[FROM:.*]] = linalg.fill ins(%{{.*}} : i32) outs(%{{.*}} : tensor<4xi32>)
// INT-NEXT: linalg.generic {indexing_maps = [#map{{[0-9]*}}, #map{{[0-9]*}}], iterator_types = ["reduction", "parallel"]} ins(%{{.*}} : tensor<64x4xi32>) outs(%[[FROM]] : tensor<4xi32>) {
// INT-NEXT: ^bb0(%in: i32 {{.*}}, %out: i32 {{.*}}):
// INT-NEXT: %[[S:.*]] = arith.addi %out, %in : i32
// INT-NEXT: linalg.yield %[[S]] : i32
// INT-NOT: "core.reduce_

// The core op a reduction was printed as before (read still, and printed as the generic); an
// axis past the operand's rank, and a result type that is not the reduction's, are refused
// by name.
// RUN: sed -n 's|^// HAND-IR: ||p' %s | sed 's|@FIXTURES@|%fixtures|' > %t.hand.mlir
// RUN: %ppmoe opt %t.hand.mlir --pass-pipeline='builtin.module()' | FileCheck %s --check-prefix=HAND
// HAND: linalg.generic {{.*}} iterator_types = ["reduction", "parallel"]} ins(%arg0 : tensor<64x4xi32>)
// HAND: arith.addi %out, %in : i32
// RUN: sed 's/axes = array<i64: 0>, keepdims = false/axes = array<i64: 7>, keepdims = false/' %t.hand.mlir > %t.past.mlir
// RUN: not %ppmoe opt %t.past.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=PAST
// PAST: error: {{.*}}past.mlir: {{.*}}(core.reduce_sum): reduction axes [7] are not increasing axes of a rank-2 operand
// RUN: sed 's/axes = array<i64: 0>, keepdims = false/axes = array<i64: 1>, keepdims = false/' %t.hand.mlir > %t.type.mlir
// RUN: not %ppmoe opt %t.type.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=TYPE
// TYPE: error: {{.*}}type.mlir: {{.*}}(core.reduce_sum): a reduction over axes [1] of 64x4 gives 64, where its result type says 4

// An i32 maximum prints as a generic of arith.maxsi from a fill of i32's least value, an i64
// minimum of arith.minsi from i64's greatest, and each reads back as itself. The start is read
// exactly: a fill one below i64's greatest (the same number as an f64) is refused.
// RUN: sed 's/core.reduce_sum/core.reduce_max/' %t.hand.mlir > %t.max.mlir
// RUN: %ppmoe opt %t.max.mlir --pass-pipeline='builtin.module()' > %t.max.out.mlir
// RUN: FileCheck %s --check-prefix=MAX < %t.max.out.mlir
// RUN: %ppmoe opt %t.max.out.mlir --pass-pipeline='builtin.module()' | diff %t.max.out.mlir -
// MAX: %[[LEAST:.*]] = arith.constant -2147483648 : i32
// MAX-NEXT: linalg.fill ins(%[[LEAST]] : i32)
// MAX: arith.maxsi %out, %in : i32
// RUN: sed 's/core.reduce_sum/core.reduce_min/; s/xi32/xi64/g' %t.hand.mlir > %t.min.mlir
// RUN: %ppmoe opt %t.min.mlir --pass-pipeline='builtin.module()' > %t.min.out.mlir
// RUN: FileCheck %s --check-prefix=MIN < %t.min.out.mlir
// MIN: %[[GREATEST:.*]] = arith.constant 9223372036854775807 : i64
// MIN-NEXT: linalg.fill ins(%[[GREATEST]] : i64)
// MIN: arith.minsi %out, %in : i64
// RUN: sed 's/9223372036854775807 : i64/9223372036854775806 : i64/' %t.min.out.mlir > %t.min.off.mlir
// RUN: not %ppmoe opt %t.min.off.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=OFF
// OFF: error: {{.*}}off.mlir: {{.*}}an integer reduction starts from its destination: expected a linalg.fill of 9223372036854775807 for its Min

// HAND-IR: module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
// HAND-IR:   func.func @rank0(%x: tensor<64x4xi32> {core.input = "x"}) -> (tensor<4xi32> {core.output = "n"}) {
// HAND-IR:     %0 = "core.reduce_sum"(%x) {axes = array<i64: 0>, keepdims = false} : (tensor<64x4xi32>) -> tensor<4xi32> loc("n"("node_n"))
// HAND-IR:     func.return %0 : tensor<4xi32>
// HAND-IR:   }
// HAND-IR: }
