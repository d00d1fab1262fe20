// ppmoe-compare-as-f32: the causal mask of an LM at 512 tokens compares position ranges (i64
// constants too large to fold into the mask); the pass, written over the module's ops, retypes
// them as f32 (exact below 2^24), so that the comparison is a generated kernel on the GPU. The
// comparison, a `linalg.generic` of `arith.cmpi` over i64, is made again for f32 operands: a
// `linalg.generic` of `arith.cmpf` with the ordered predicate. The next pass binds each weight
// converted to the type its argument declares, so the pipelined IR read from the pass's output
// holds the f32 weight.

// RUN: %ppmoe inspect %fixtures/mixtral_lm_bf16_sdpa/model.onnx --input-shape input_ids=1x512 --emit moe > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard)' | FileCheck %s --check-prefix=BEFORE
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-compare-as-f32)' > %t.after.mlir
// RUN: FileCheck %s --check-prefix=AFTER < %t.after.mlir
// RUN: %ppmoe inspect %t.after.mlir --emit pipelined | FileCheck %s --check-prefix=READ

// BEFORE: {core.weight = "unsqueeze_12"}
// BEFORE: linalg.generic {{.*}} ins(%arg2, %arg3 : tensor<1x1x1x512xi64>, tensor<1x1x512x1xi64>) outs(%{{[0-9]+}} : tensor<1x1x512x512xi1>)
// BEFORE-NEXT: ^bb0(%in: i64 {{.*}}, %in_{{[0-9]+}}: i64 {{.*}}, %out: i1 {{.*}}):
// BEFORE-NEXT: arith.cmpi sle, %in, %in_{{[0-9]+}} : i64
// AFTER: pipeline = "ppmoe-raise-moe{capacity=keep}, ppmoe-shard{tp=1 strategy=ppmoe}, ppmoe-compare-as-f32"
// AFTER: tensor<1x1x1x512xf32> {core.weight = "unsqueeze_12"}
// AFTER: linalg.generic {{.*}} ins(%arg2, %arg3 : tensor<1x1x1x512xf32>, tensor<1x1x512x1xf32>) outs(%{{[0-9]+}} : tensor<1x1x512x512xi1>)
// AFTER-NEXT: ^bb0(%in: f32 {{.*}}, %in_{{[0-9]+}}: f32 {{.*}}, %out: i1 {{.*}}):
// AFTER-NEXT: arith.cmpf ole, %in, %in_{{[0-9]+}} : f32
// AFTER-NOT: arith.cmpi sle
// READ: tensor<1x1x1x512xf32> {core.weight = "unsqueeze_12"}
// READ: linalg.generic {{.*}} ins({{.*}} : tensor<1x1x1x512xf32>, tensor<1x1x512x1xf32>) outs(%{{[0-9]+}} : tensor<1x1x512x512xi1>)
// READ-NEXT: ^bb0(%in: f32 {{.*}}, %in_{{[0-9]+}}: f32 {{.*}}, %out: i1 {{.*}}):
// READ-NEXT: arith.cmpf ole
