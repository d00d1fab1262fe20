// GPipe microbatches: a layer compiled for a batch of 2 in 2 microbatches takes one microbatch
// (batch 1) per program; the schedule is on each rank's function. The microbatch count is the
// IR's own (its header), fixed where the input was cut.

// RUN: %ppmoe inspect %fixtures/gptoss_genai_moe/model.onnx --input-shape /model/layers.0/post_attention_layernorm/output_0=2x16x64 --microbatches 2 --emit moe > %t.moe.mlir
// RUN: FileCheck %s --check-prefix=MOE < %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2}, ppmoe-rewrite, ppmoe-dce, ppmoe-pipeline-split)' | FileCheck %s

// MOE: input_shapes = {"/model/layers.0/post_attention_layernorm/output_0" = array<i64: 2, 16, 64>}, microbatches = 2 : i64
// CHECK-LABEL: func.func @rank0(%arg0: tensor<1x16x64xf32>
// CHECK-SAME: ppmoe.microbatches = 2 : i64, ppmoe.schedule = "gpipe"
// CHECK-LABEL: func.func @rank1(%arg0: tensor<1x16x64xf32>
// CHECK-SAME: ppmoe.microbatches = 2 : i64
