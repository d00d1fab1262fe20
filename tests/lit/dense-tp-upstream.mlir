// Dense TP through upstream: ppmoe-shard copies each region of the module's ops that MLIR's
// sharding interface covers (Qwen2-MoE's shared expert, a SwiGLU MLP of linalg ops) into a
// function of its own, @region, its weights annotated with ppmoe's split (gate and up by columns,
// down by rows), and hands it to upstream's sharding-propagation and shard-partition; upstream
// propagates the split and places the all-reduce, and each rank's function takes the partitioned
// ops in the region's place at its own process index. --print-ir-after-all shows MLIR's own
// dumps of the two passes over the region.

// RUN: %ppmoe inspect %fixtures/qwen2moe_block_dynamo/model.onnx --emit moe > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' --print-ir-after-all 2> %t.dumps | FileCheck %s
// RUN: FileCheck %s --check-prefix=DUMP < %t.dumps

// The region as ppmoe annotates it, after propagation: the weights split over the grid's tp axis.
// DUMP: IR Dump After ShardingPropagation (sharding-propagation)
// DUMP: shard.grid @grid(shape = 1x1x2)
// DUMP: %[[COLS:.*]] = shard.sharding @grid split_axes = {{\[\[}}], [2]] : !shard.sharding
// DUMP-NEXT: shard.shard %arg1 to %[[COLS]] annotate_for_users : tensor<64x128xf32>
// DUMP: %[[ROWS:.*]] = shard.sharding @grid split_axes = {{\[\[}}2]] : !shard.sharding
// DUMP-NEXT: shard.shard %arg3 to %[[ROWS]] annotate_for_users : tensor<128x64xf32>
// Partitioned: each process holds half of each weight, the partial sums start at zero on all
// but process 0, and one all-reduce closes the MLP.
// DUMP: IR Dump After Partition (shard-partition)
// DUMP: func.func @region(%arg0: tensor<16x64xf32>, %arg1: tensor<64x64xf32>
// DUMP: shard.process_multi_index on @grid axes = [2] : index
// DUMP: scf.if
// DUMP: linalg.matmul ins(%{{.*}}, %arg3 : tensor<16x64xf32>, tensor<64x64xf32>)
// DUMP-NEXT: shard.all_reduce %{{.*}} on @grid grid_axes = [2] : tensor<16x64xf32> -> tensor<16x64xf32>
// DUMP-NEXT: return
// DUMP: IR Dump After ppmoe-shard (sharded)

// Each rank takes the partitioned ops at its index: its own pieces of the three weights (marked
// rank pieces), no scf.if or process index left (the branch on it taken), the all-reduce after
// the down projection.
// CHECK-LABEL: func.func @rank0(
// CHECK-SAME: tensor<64x64xf32> {core.weight = "inner.shared_expert.gate_proj.weight.const1.tp0_1", ppmoe.rank_piece}
// CHECK-SAME: tensor<64x64xf32> {core.weight = "inner.shared_expert.down_proj.weight.const3.tp0_0", ppmoe.rank_piece}
// CHECK-NOT: scf.if
// CHECK-NOT: process_multi_index
// CHECK: %[[DOWN:.*]] = linalg.matmul ins(%mapped{{.*}}, %arg{{[0-9]+}} : tensor<16x64xf32>, tensor<64x64xf32>)
// CHECK-NEXT: shard.all_reduce %[[DOWN]] on @grid grid_axes = [2] : tensor<16x64xf32> -> tensor<16x64xf32>
// CHECK-LABEL: func.func @rank1(
// CHECK-SAME: "inner.shared_expert.gate_proj.weight.const1.tp1_1", ppmoe.rank_piece}
// CHECK-NOT: scf.if

// DeepSeek-V3's shared expert reads the tokens as [1, 16, 64]: its matmuls are batch matmuls
// whose maps broadcast the weight over the batch, which upstream partitions alike.
// RUN: %ppmoe inspect %fixtures/deepseekv3_block_dynamo/model.onnx --emit moe > %t.deepseek.mlir
// RUN: %ppmoe opt %t.deepseek.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' | FileCheck %s --check-prefix=DEEPSEEK
// DEEPSEEK-LABEL: func.func @rank1(
// DEEPSEEK-SAME: tensor<64x16xf32> {core.weight = "{{.*}}.tp1_1", ppmoe.rank_piece}
// DEEPSEEK-SAME: tensor<16x64xf32> {core.weight = "{{.*}}.tp1_0", ppmoe.rank_piece}
// DEEPSEEK: %[[DOWN:.*]] = linalg.batch_matmul indexing_maps = [#map, #map1, #map2] ins(%mapped{{.*}}, %arg{{[0-9]+}} : tensor<1x16x16xf32>, tensor<16x64xf32>)
// DEEPSEEK-NEXT: shard.all_reduce %[[DOWN]] on @grid grid_axes = [2] : tensor<1x16x64xf32>
