// Every pass runs as an MLIR pass over the module, and the IR after any one of them reads back:
// its header records the passes that made it (`ppmoe.source.pipeline`), which reading it runs
// on the source for the weights, and the sharded IR marks the weights dense TP cut for the rank
// (`ppmoe.rank_piece`), which ppmoe-rewrite must tell from replicated ones. So a pipeline run
// one pass per `ppmoe opt` gives the IR of the pipeline run at once.

// RUN: %ppmoe inspect %fixtures/olmoe_lm_sdpa/model.onnx --emit moe > %t.moe.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2})' > %t.1.mlir
// RUN: FileCheck %s --check-prefix=SHARD < %t.1.mlir
// RUN: %ppmoe opt %t.1.mlir --pass-pipeline='builtin.module(ppmoe-rewrite)' > %t.2.mlir
// RUN: %ppmoe opt %t.2.mlir --pass-pipeline='builtin.module(ppmoe-dce)' > %t.3.mlir
// RUN: %ppmoe opt %t.3.mlir --pass-pipeline='builtin.module(ppmoe-pipeline-split{pp=2})' > %t.4.mlir
// RUN: %ppmoe opt %t.moe.mlir --pass-pipeline='builtin.module(ppmoe-shard{tp=2}, ppmoe-rewrite, ppmoe-dce, ppmoe-pipeline-split{pp=2})' > %t.once.mlir
// RUN: diff %t.once.mlir %t.4.mlir
// RUN: FileCheck %s --check-prefix=PIPELINED < %t.4.mlir

// SHARD: pipeline = "ppmoe-raise-moe{capacity=keep}, ppmoe-shard{tp=2 strategy=ppmoe}"
// SHARD: ppmoe.stage = "sharded"
// SHARD: {core.weight = "{{[^"]*}}.tp0_{{[0-9]+}}", ppmoe.rank_piece}
// PIPELINED: pipeline = "ppmoe-raise-moe{capacity=keep}, ppmoe-shard{tp=2 strategy=ppmoe}, ppmoe-rewrite, ppmoe-dce, ppmoe-pipeline-split{pp=2 dp=1}"
// PIPELINED: ppmoe.stage = "pipelined"
// PIPELINED: shard.grid @grid(shape = 1x2x2)
// PIPELINED-NOT: ppmoe.rank_piece
