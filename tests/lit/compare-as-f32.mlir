// ppmoe-compare-as-f32: the causal mask of an LM at 512 tokens compares position ranges (i64
// constants too large to fold into the mask); the pass holds them as f32, exact below 2^24,
// so that the comparison is a generated kernel on the GPU.

// RUN: %ppmoe inspect %fixtures/mixtral_lm_bf16_sdpa/model.onnx --input-shape input_ids=1x512 --emit moe > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard)' | FileCheck %s --check-prefix=BEFORE
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-compare-as-f32)' | FileCheck %s --check-prefix=AFTER

// BEFORE: {core.weight = "unsqueeze_12"}
// BEFORE: "core.less_or_equal"(%arg2, %arg3) : (tensor<1x1x1x512xi64>, tensor<1x1x512x1xi64>) -> tensor<1x1x512x512xi1>
// AFTER: tensor<1x1x1x512xf32> {core.weight = "unsqueeze_12"}
// AFTER: "core.less_or_equal"(%arg2, %arg3) : (tensor<1x1x1x512xf32>, tensor<1x1x512x1xf32>) -> tensor<1x1x512x512xi1>
