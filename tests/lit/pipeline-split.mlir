// ppmoe-pipeline-split: a Qwen2-MoE LM of two MoE layers cut into two stages after its first
// MoE layer; the hidden state crosses the cut by shard.send / shard.recv, and each rank's
// function carries its grid coordinates and the schedule.

// RUN: %ppmoe inspect %fixtures/qwen2moe_lm_dynamo/model.onnx --emit moe > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-dce, ppmoe-pipeline-split{pp=2})' | FileCheck %s
// The same split from the sharded stage's IR read back.
// RUN: %ppmoe inspect %fixtures/qwen2moe_lm_dynamo/model.onnx --emit sharded > %t.sharded.mlir
// RUN: %ppmoe opt %t.sharded.mlir --pass-pipeline='builtin.module(ppmoe-pipeline-split{pp=2})' | FileCheck %s

// CHECK: ppmoe.stage = "pipelined"
// CHECK: shard.grid @grid(shape = 1x2x1)
// CHECK-LABEL: func.func @rank0(
// CHECK-SAME: ppmoe.coords = array<i64: 0, 0, 0>, ppmoe.microbatches = 1 : i64, ppmoe.schedule = "gpipe"
// CHECK-COUNT-1: "moe.experts"
// CHECK: shard.send {{.*}} on @grid grid_axes = [1] destination = [1] {ppmoe.tag = [[TAG:[0-9]+]] : i64}
// CHECK-LABEL: func.func @rank1(
// CHECK-SAME: ppmoe.coords = array<i64: 0, 1, 0>
// CHECK: shard.recv {{.*}} on @grid grid_axes = [1] source = [0] {ppmoe.tag = [[TAG]] : i64}
// CHECK-COUNT-1: "moe.experts"
