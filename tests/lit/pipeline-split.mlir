// ppmoe-pipeline-split, a pass over the module's ops: a Qwen2-MoE LM of two MoE layers cut into
// two stages after its first MoE layer; the hidden state crosses the cut by shard.send /
// shard.recv (into a tensor.empty, first in the later stage), the first stage returns nothing
// and the second reads no input, and each rank's function carries its grid coordinates and the
// schedule. A dp of 2 repeats the stages on ranks 2 and 3.

// RUN: %ppmoe inspect %fixtures/qwen2moe_lm_dynamo/model.onnx --emit moe > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard, ppmoe-dce, ppmoe-pipeline-split{pp=2})' | FileCheck %s
// The same split from the sharded stage's IR read back.
// RUN: %ppmoe inspect %fixtures/qwen2moe_lm_dynamo/model.onnx --emit sharded > %t.sharded.mlir
// RUN: %ppmoe opt %t.sharded.mlir --pass-pipeline='builtin.module(ppmoe-pipeline-split{pp=2})' | FileCheck %s
// RUN: %ppmoe opt %t.sharded.mlir --pass-pipeline='builtin.module(ppmoe-pipeline-split{pp=2 dp=2})' | FileCheck %s --check-prefix=DP
// More stages than MoE layers: refused, naming the grid.
// RUN: not %ppmoe opt %t.sharded.mlir --pass-pipeline='builtin.module(ppmoe-pipeline-split{pp=3})' 2>&1 | FileCheck %s --check-prefix=TOO-MANY

// CHECK: ppmoe.stage = "pipelined"
// CHECK: shard.grid @grid(shape = 1x2x1)
// CHECK-LABEL: func.func @rank0(
// CHECK-SAME: core.input = "input_ids"
// CHECK-SAME: ppmoe.coords = array<i64: 0, 0, 0>, ppmoe.microbatches = 1 : i64, ppmoe.schedule = "gpipe"
// CHECK-NOT: func.func
// CHECK-COUNT-1: "moe.experts"
// CHECK: shard.send [[SENT:%[a-z_0-9]+]] on @grid grid_axes = [1] destination = [1] {ppmoe.tag = [[TAG:[0-9]+]] : i64}
// CHECK-NEXT: return loc
// CHECK-LABEL: func.func @rank1(
// CHECK-NOT: core.input
// CHECK-SAME: ppmoe.coords = array<i64: 0, 1, 0>
// CHECK-NEXT: [[EMPTY:%[0-9]+]] = tensor.empty()
// CHECK-NEXT: shard.recv [[EMPTY]] on @grid grid_axes = [1] source = [0] {ppmoe.tag = [[TAG]] : i64}
// CHECK-COUNT-1: "moe.experts"
// CHECK: return %{{.*}} : tensor<

// DP: shard.grid @grid(shape = 2x2x1)
// DP-LABEL: func.func @rank0(
// DP-SAME: ppmoe.coords = array<i64: 0, 0, 0>
// DP-LABEL: func.func @rank1(
// DP-SAME: ppmoe.coords = array<i64: 0, 1, 0>
// DP-LABEL: func.func @rank2(
// DP-SAME: ppmoe.coords = array<i64: 1, 0, 0>
// DP: shard.send
// DP-LABEL: func.func @rank3(
// DP-SAME: ppmoe.coords = array<i64: 1, 1, 0>
// DP: shard.recv

// TOO-MANY: the grid does not fit the model: 3 pipeline stages for a model of 2 MoE layer(s): at most one stage per layer
