// An f32 layer norm prints as three linalg.generics that compute what ppmoe computes: the
// row's sum in f64 from a zero fill (the normalised axes' loops "reduction"); its squared
// deviations' sum likewise, the mean the sum over the count; then, every loop parallel, the
// deviation times 1 / sqrt(var + eps) in f64, rounded once to f32 (arith.truncf), times the
// scale plus the bias. The three read back as the one layer norm (its axis counted from the
// front); PhiMoE's LM has five; the IR reads back as itself, at tp 2 each rank normalises
// whole rows, and the pipeline split places the rows' generics with their normalisation.

// RUN: %ppmoe inspect %fixtures/phimoe_lm_sdpa/model.onnx --emit moe > %t.mlir
// RUN: FileCheck %s < %t.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module()' > %t.again.mlir
// RUN: diff %t.mlir %t.again.mlir
// RUN: %ppmoe opt %t.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' | FileCheck %s --check-prefix=TP
// RUN: %ppmoe inspect %t.mlir --pp 2 --emit pipelined | FileCheck %s --check-prefix=STAGE

// CHECK-DAG: [[ID:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
// CHECK-DAG: [[ROW:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d0, d1, 0)>
// CHECK-DAG: [[AXIS:#map[0-9]*]] = affine_map<(d0, d1, d2) -> (d2)>
// CHECK-LABEL: func.func @rank0(
// CHECK: %[[ZERO:.*]] = arith.constant 0.000000e+00 : f64
// CHECK-NEXT: %[[FROM:.*]] = linalg.fill ins(%[[ZERO]] : f64) outs(%{{.*}} : tensor<1x16x1xf64>)
// CHECK-NEXT: %[[SUM:.*]] = linalg.generic {indexing_maps = [[[ID]], [[ROW]]], iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[X:.*]] : tensor<1x16x64xf32>) outs(%[[FROM]] : tensor<1x16x1xf64>) {
// CHECK-NEXT: ^bb0(%in: f32 {{.*}}, %out: f64 {{.*}}):
// CHECK-NEXT: %[[E:.*]] = arith.extf %in : f32 to f64
// CHECK-NEXT: %[[S:.*]] = arith.addf %out, %[[E]] : f64
// CHECK-NEXT: linalg.yield %[[S]] : f64
// CHECK: %[[SQ:.*]] = linalg.generic {indexing_maps = [[[ID]], [[ROW]], [[ROW]]], iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[X]], %[[SUM]] : tensor<1x16x64xf32>, tensor<1x16x1xf64>) outs(%[[FROM]] : tensor<1x16x1xf64>) {
// CHECK-NEXT: ^bb0(%in: f32 {{.*}}, %[[RS:.*]]: f64 {{.*}}, %out: f64 {{.*}}):
// CHECK-NEXT: %[[F:.*]] = arith.extf %in : f32 to f64
// CHECK-NEXT: %[[N:.*]] = arith.constant 6.400000e+01 : f64
// CHECK-NEXT: %[[M:.*]] = arith.divf %[[RS]], %[[N]] : f64
// CHECK-NEXT: %[[D:.*]] = arith.subf %[[F]], %[[M]] : f64
// CHECK-NEXT: %[[D2:.*]] = arith.mulf %[[D]], %[[D]] : f64
// CHECK-NEXT: %[[T:.*]] = arith.addf %out, %[[D2]] : f64
// CHECK-NEXT: linalg.yield %[[T]] : f64
// CHECK: linalg.generic {indexing_maps = [[[ID]], [[ROW]], [[ROW]], [[AXIS]], [[AXIS]], [[ID]]], iterator_types = ["parallel", "parallel", "parallel"]} ins(%[[X]], %[[SUM]], %[[SQ]], %arg2, %arg3 : tensor<1x16x64xf32>, tensor<1x16x1xf64>, tensor<1x16x1xf64>, tensor<64xf32>, tensor<64xf32>) outs(%{{.*}} : tensor<1x16x64xf32>) {
// CHECK-NEXT: ^bb0(%in: f32 {{.*}}, %[[IS:.*]]: f64 {{.*}}, %[[IQ:.*]]: f64 {{.*}}, %[[G:.*]]: f32 {{.*}}, %[[B:.*]]: f32 {{.*}}, %out: f32 {{.*}}):
// CHECK-NEXT: %[[H:.*]] = arith.extf %in : f32 to f64
// CHECK-NEXT: %[[C:.*]] = arith.constant 6.400000e+01 : f64
// CHECK-NEXT: %[[MEAN:.*]] = arith.divf %[[IS]], %[[C]] : f64
// CHECK-NEXT: %[[DEV:.*]] = arith.subf %[[H]], %[[MEAN]] : f64
// CHECK-NEXT: %[[VAR:.*]] = arith.divf %[[IQ]], %[[C]] : f64
// CHECK-NEXT: %[[EPS:.*]] = arith.constant 9.9999997473787516E-6 : f64
// CHECK-NEXT: %[[VE:.*]] = arith.addf %[[VAR]], %[[EPS]] : f64
// CHECK-NEXT: %[[SD:.*]] = math.sqrt %[[VE]] : f64
// CHECK-NEXT: %[[ONE:.*]] = arith.constant 1.000000e+00 : f64
// CHECK-NEXT: %[[INV:.*]] = arith.divf %[[ONE]], %[[SD]] : f64
// CHECK-NEXT: %[[NORM:.*]] = arith.mulf %[[DEV]], %[[INV]] : f64
// CHECK-NEXT: %[[R:.*]] = arith.truncf %[[NORM]] : f64 to f32
// CHECK-NEXT: %[[W:.*]] = arith.mulf %[[R]], %[[G]] : f32
// CHECK-NEXT: %[[Y:.*]] = arith.addf %[[W]], %[[B]] : f32
// CHECK-NEXT: linalg.yield %[[Y]] : f32
// CHECK-NOT: "core.layer_norm"

// TP-LABEL: func.func @rank1(
// TP: linalg.generic {{.*}} iterator_types = ["parallel", "parallel", "reduction"]} ins(%{{.*}} : tensor<1x16x64xf32>) outs(%{{.*}} : tensor<1x16x1xf64>)
// TP-NOT: "core.layer_norm"

// STAGE-LABEL: func.func @rank1(
// STAGE: %[[RECV:.*]] = shard.recv
// STAGE: %[[RSUM:.*]] = linalg.generic {{.*}} ins(%[[RECV]] : tensor<1x16x64xf32>)
// STAGE: %[[RSQ:.*]] = linalg.generic {{.*}} ins(%[[RECV]], %[[RSUM]] : tensor<1x16x64xf32>, tensor<1x16x1xf64>)
// STAGE: linalg.generic {{.*}} ins(%[[RECV]], %[[RSUM]], %[[RSQ]], %arg{{[0-9]+}}, %arg{{[0-9]+}} :

// Refused by name: squares over another count, a normalisation by rsqrt's rounding, rows
// from a fill of 1.
// RUN: sed '0,/arith.constant 6.400000e+01 : f64/s//arith.constant 6.300000e+01 : f64/' %t.mlir > %t.count.mlir
// RUN: not %ppmoe opt %t.count.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=COUNT
// COUNT: error: {{.*}}count.mlir: {{.*}}(a layer norm): its rows are not the f64 sum and squared deviations of its input ppmoe prints, read by it alone
// RUN: sed '0,/math.sqrt \(.*\) : f64/s//math.rsqrt \1 : f64/' %t.mlir > %t.rsqrt.mlir
// RUN: not %ppmoe opt %t.rsqrt.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=RSQRT
// RSQRT: error: {{.*}}rsqrt.mlir: {{.*}}(a layer norm): its body is not the f64 normalisation ppmoe prints
// RUN: sed '0,/arith.constant 0.000000e+00 : f64/s//arith.constant 1.000000e+00 : f64/' %t.mlir > %t.fill.mlir
// RUN: not %ppmoe opt %t.fill.mlir --pass-pipeline='builtin.module()' 2>&1 | FileCheck %s --check-prefix=FILL
// FILL: error: {{.*}}fill.mlir: {{.*}}a layer norm's rows start from their destinations: expected zero linalg.fills

// A bf16 model's layer norm (here written by hand as the core op it was): each generic widens
// the bf16 activations to f64 as it widens f32 ones, the normalisation truncates its f32 result
// to bf16 last (to nearest even, as the runtime stores it); the IR reads back as itself.
// RUN: sed -n 's|^// HALF-IR: ||p' %s | sed 's|@FIXTURES@|%fixtures|' > %t.half.mlir
// RUN: %ppmoe opt %t.half.mlir --pass-pipeline='builtin.module()' > %t.half.out.mlir
// RUN: FileCheck %s --check-prefix=HALF < %t.half.out.mlir
// RUN: %ppmoe opt %t.half.out.mlir --pass-pipeline='builtin.module()' | diff %t.half.out.mlir -
// HALF-COUNT-3: arith.extf %in : bf16 to f64
// HALF: %[[Z:.*]] = arith.addf {{.*}} : f32
// HALF-NEXT: %[[N:.*]] = arith.truncf %[[Z]] : f32 to bf16
// HALF-NEXT: linalg.yield %[[N]] : bf16
// HALF-NOT: "core.layer_norm"
// HALF-IR: module attributes {ppmoe.stage = "core", ppmoe.source = {model = "@FIXTURES@/mixtral_block_dynamo/model.onnx", input_shapes = {}, microbatches = 1 : i64, eval_limit = 268435456 : i64, capacity = "keep"}} {
// HALF-IR:   func.func @rank0(%x: tensor<2x4xbf16> {core.input = "x"}, %s: tensor<4xbf16> {core.input = "s"}) -> (tensor<2x4xbf16> {core.output = "y"}) {
// HALF-IR:     %0 = "core.layer_norm"(%x, %s) {axis = -1 : i64, epsilon = 9.99999974E-6 : f32} : (tensor<2x4xbf16>, tensor<4xbf16>) -> tensor<2x4xbf16> loc("y"("node_y"))
// HALF-IR:     func.return %0 : tensor<2x4xbf16>
// HALF-IR:   }
// HALF-IR: }
