llvm.inline_asm has_side_effects asm_dialect = att "{ .reg .b64 st; mbarrier.arrive.shared::cta.b64 st, [$0]; }", "r" {{at}} : (i32) -> ()
