// Each MoE layer's strategy is in the IR: ppmoe-shard marks every layer's moe.dispatch with
// the strategy it chose (ppmoe.strategy), and ppmoe-rewrite follows the marks of the IR it is
// given. Here the OLMoE LM's first layer is edited to alltoall on both ranks: the rewrite
// keeps it all-to-all (its dispatch, still marked) and rewrites the second. Marks that differ
// between ranks, or name no strategy, are refused by name.

// RUN: %ppmoe inspect %fixtures/olmoe_lm_dynamo/model.onnx --emit moe > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' > %t.sharded.mlir
// RUN: FileCheck %s --check-prefix=SHARDED < %t.sharded.mlir
// SHARDED-LABEL: func.func @rank0(
// SHARDED: "moe.dispatch"({{.*}}) {capacity = {{[0-9]+}} : i64, num_experts = {{[0-9]+}} : i64, ppmoe.strategy = "ppmoe"}
// SHARDED: "moe.dispatch"({{.*}}) {capacity = {{[0-9]+}} : i64, num_experts = {{[0-9]+}} : i64, ppmoe.strategy = "ppmoe"}

// The first dispatch of each function marked alltoall (awk: the first after each func.func).
// RUN: awk '/func.func @rank/ { first = 1 } first && sub(/ppmoe.strategy = "ppmoe"/, "ppmoe.strategy = \"alltoall\"") { first = 0 } { print }' %t.sharded.mlir > %t.edited.mlir
// RUN: %ppmoe opt %t.edited.mlir --pass-pipeline='builtin.module(ppmoe-rewrite)' | FileCheck %s
// CHECK-LABEL: func.func @rank0(
// CHECK: "moe.dispatch"({{.*}}) {{{.*}}ppmoe.strategy = "alltoall"}
// CHECK: shard.all_to_all
// CHECK: "moe.local_slice"
// CHECK-NOT: "moe.dispatch"
// CHECK-LABEL: func.func @rank1(
// CHECK: "moe.dispatch"({{.*}}) {{{.*}}ppmoe.strategy = "alltoall"}
// CHECK: "moe.local_slice"

// RUN: awk '/func.func @rank0/ { first = 1 } first && sub(/ppmoe.strategy = "ppmoe"/, "ppmoe.strategy = \"alltoall\"") { first = 0 } { print }' %t.sharded.mlir > %t.one-rank.mlir
// RUN: not %ppmoe opt %t.one-rank.mlir --pass-pipeline='builtin.module(ppmoe-rewrite)' 2>&1 | FileCheck %s --check-prefix=DIFFER
// DIFFER: error: {{.*}}one-rank.mlir: @rank1: its ppmoe.strategy marks differ from @rank0's
// RUN: sed 's/ppmoe.strategy = "ppmoe"/ppmoe.strategy = "fastest"/g' %t.sharded.mlir > %t.bogus.mlir
// RUN: not %ppmoe opt %t.bogus.mlir --pass-pipeline='builtin.module(ppmoe-rewrite)' 2>&1 | FileCheck %s --check-prefix=BOGUS
// BOGUS: error: {{.*}}bogus.mlir: ppmoe.strategy = "fastest": the strategies ppmoe-rewrite takes are ppmoe and alltoall
