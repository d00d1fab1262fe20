// ppmoe-shard's dense part: Megatron tensor parallelism of an OLMoE LM's attention (q, k, v
// by columns, o by rows, one all-reduce each), each rank holding its pieces of the weights
// (marked `ppmoe.rank_piece`); ppmoe-dce then drops the whole weights nothing reads any more.

// RUN: %ppmoe inspect %fixtures/olmoe_lm_sdpa/model.onnx --emit moe > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' | FileCheck %s --check-prefixes=CHECK,WHOLE
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2}, ppmoe-dce)' | FileCheck %s --check-prefixes=CHECK,DCE

// CHECK: shard.grid @grid(shape = 1x1x2)
// CHECK-LABEL: func.func @rank0(
// The q and k norms' weights (OLMoE normalises q and k over all heads) cut into rank 0's
// pieces, the whole ones left for ppmoe-dce.
// WHOLE-SAME: tensor<64xf32> {core.weight = "lm.model.layers.0.self_attn.q_norm.weight"}
// WHOLE-SAME: tensor<32xf32> {core.weight = "lm.model.layers.0.self_attn.k_norm.weight"}
// DCE-NOT: {core.weight = "lm.model.layers.0.self_attn.k_norm.weight"}
// CHECK-SAME: tensor<32xf32> {core.weight = "lm.model.layers.0.self_attn.q_norm.weight.tp0_0", ppmoe.rank_piece}
// CHECK-SAME: tensor<16xf32> {core.weight = "lm.model.layers.0.self_attn.k_norm.weight.tp0_0", ppmoe.rank_piece}
// CHECK: shard.all_reduce {{.*}} on @grid grid_axes = [2] :
// CHECK-LABEL: func.func @rank1(
// CHECK-SAME: {core.weight = "lm.model.layers.0.self_attn.q_norm.weight.tp1_0", ppmoe.rank_piece}

// An op the split leaves as it was stays the module's own op on every rank, as written: an
// attribute put by hand on the first layer norm's generic is still there after ppmoe-shard
// (it edits the ops; it does not print the ranks' programs afresh).
// RUN: sed '0,/iterator_types = \["parallel", "parallel", "parallel"\]}/s//iterator_types = ["parallel", "parallel", "parallel"], user.mark}/' %t.moe.mlir > %t.marked.mlir
// RUN: %ppmoe opt %t.marked.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' | FileCheck %s --check-prefix=KEPT
// KEPT-LABEL: func.func @rank0(
// KEPT: linalg.generic {{.*}}attrs = {{ *}}{user.mark}
// KEPT-LABEL: func.func @rank1(
// KEPT: linalg.generic {{.*}}attrs = {{ *}}{user.mark}
