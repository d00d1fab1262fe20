// The `moe` dialect, defined with IRDL and loaded into every ppmoe context.
//
// Each constraint variable is used once: IRDL makes uses of one variable equal, and the
// operands of these ops are tensors of different shapes.
irdl.dialect @moe {
  // scores [T, E] (+ score-correction bias [E], DeepSeek-V3: it moves the choice, not the
  // weights) -> top-k weights [T, k] and expert ids [T, k].
  irdl.operation @route {
    %logits = irdl.base "!builtin.tensor"
    %bias = irdl.base "!builtin.tensor"
    %weights = irdl.base "!builtin.tensor"
    %ids = irdl.base "!builtin.tensor"
    %k = irdl.base "#builtin.integer"
    %scoring = irdl.base "#builtin.string"
    %order = irdl.base "#builtin.string"
    %true = irdl.is true
    %false = irdl.is false
    %renorm = irdl.any_of(%true, %false)
    %groups = irdl.base "#builtin.integer"
    %topk_groups = irdl.base "#builtin.integer"
    %scale = irdl.base "#builtin.float"
    %capacity = irdl.base "#builtin.integer"
    irdl.operands(logits: %logits, bias: optional %bias)
    irdl.results(weights: %weights, ids: %ids)
    irdl.attributes {"top_k" = %k, "scoring" = %scoring, "order" = %order, "renormalize" = %renorm,
                     "n_group" = %groups, "topk_group" = %topk_groups, "routed_scaling_factor" = %scale,
                     "capacity" = %capacity}
  }
  // x [T, H], weights [T, k], ids [T, k], w_in [E, H, N], w_out [E, F, H] (+ biases) -> [T, H]:
  // sum over k of weight * FFN_id(x). Gated activations read w_in as [gate | up] (N = 2F).
  // The biases are optional: `operandSegmentSizes` says which are there.
  irdl.operation @experts {
    %x = irdl.base "!builtin.tensor"
    %w = irdl.base "!builtin.tensor"
    %ids = irdl.base "!builtin.tensor"
    %w_in = irdl.base "!builtin.tensor"
    %w_out = irdl.base "!builtin.tensor"
    %b_in = irdl.base "!builtin.tensor"
    %b_out = irdl.base "!builtin.tensor"
    %y = irdl.base "!builtin.tensor"
    %activation = irdl.base "#builtin.string"
    // in_out: w_in [E,H,N], w_out [E,F,H]; linear: w_in [E,N,H], w_out [E,H,F] (nn.Linear's).
    %in_out = irdl.is "in_out"
    %linear = irdl.is "linear"
    %layout = irdl.any_of(%in_out, %linear)
    irdl.operands(x: %x, weights: %w, ids: %ids, w_in: %w_in, w_out: %w_out, b_in: optional %b_in, b_out: optional %b_out)
    irdl.results(y: %y)
    irdl.attributes {"activation" = %activation, "layout" = %layout}
  }
  // The distributed forms (DESIGN.md). All-to-all: tokens split over the TP group.
  // x [T/tp, H], ids [T/tp, k] -> buckets [E, C, H] (slot-major positions; C = T/tp * k).
  irdl.operation @dispatch {
    %x = irdl.base "!builtin.tensor"
    %ids = irdl.base "!builtin.tensor"
    %buckets = irdl.base "!builtin.tensor"
    %experts = irdl.base "#builtin.integer"
    %capacity = irdl.base "#builtin.integer"
    irdl.operands(x: %x, ids: %ids)
    irdl.results(buckets: %buckets)
    irdl.attributes {"num_experts" = %experts, "capacity" = %capacity}
  }
  // rows [N, H] grouped by local expert (offsets [L + 1]) through the L local experts.
  irdl.operation @expert_ffn {
    %x = irdl.base "!builtin.tensor"
    %offsets = irdl.base "!builtin.tensor"
    %w_in = irdl.base "!builtin.tensor"
    %w_out = irdl.base "!builtin.tensor"
    %b_in = irdl.base "!builtin.tensor"
    %b_out = irdl.base "!builtin.tensor"
    %y = irdl.base "!builtin.tensor"
    %activation = irdl.base "#builtin.string"
    %in_out = irdl.is "in_out"
    %linear = irdl.is "linear"
    %layout = irdl.any_of(%in_out, %linear)
    irdl.operands(rows: %x, offsets: %offsets, w_in: %w_in, w_out: %w_out, b_in: optional %b_in, b_out: optional %b_out)
    irdl.results(y: %y)
    irdl.attributes {"activation" = %activation, "layout" = %layout}
  }
  // buckets [E, C, H], weights [T/tp, k], ids [T/tp, k] -> [T/tp, H].
  irdl.operation @combine {
    %y = irdl.base "!builtin.tensor"
    %weights = irdl.base "!builtin.tensor"
    %ids = irdl.base "!builtin.tensor"
    %out = irdl.base "!builtin.tensor"
    %capacity = irdl.base "#builtin.integer"
    irdl.operands(buckets: %y, weights: %weights, ids: %ids)
    irdl.results(out: %out)
    irdl.attributes {"capacity" = %capacity}
  }
  // PPMoE: tokens replicated. x [T, H], ids [T, k] -> rows routed to experts
  // [first, first + count) grouped by expert, offsets [count + 1], slots [N] (t * k + j).
  irdl.operation @local_slice {
    %x = irdl.base "!builtin.tensor"
    %ids = irdl.base "!builtin.tensor"
    %rows = irdl.base "!builtin.tensor"
    %offsets = irdl.base "!builtin.tensor"
    %slots = irdl.base "!builtin.tensor"
    %first = irdl.base "#builtin.integer"
    %count = irdl.base "#builtin.integer"
    irdl.operands(x: %x, ids: %ids)
    irdl.results(rows: %rows, offsets: %offsets, slots: %slots)
    irdl.attributes {"first_expert" = %first, "num_local_experts" = %count}
  }
  // out [N, H], slots [N], weights [T, k] -> the [T, H] partial sum the all-reduce completes.
  irdl.operation @scatter_combine {
    %y = irdl.base "!builtin.tensor"
    %slots = irdl.base "!builtin.tensor"
    %weights = irdl.base "!builtin.tensor"
    %partial = irdl.base "!builtin.tensor"
    %tokens = irdl.base "#builtin.integer"
    irdl.operands(expert_out: %y, slots: %slots, weights: %weights)
    irdl.results(partial: %partial)
    irdl.attributes {"tokens" = %tokens}
  }
}
