          %ci{{v}} = arith.constant {{index}} : index
{{address}}
          %n{{v}} = arith.constant {{count}} : i32
          llvm.inline_asm has_side_effects asm_dialect = att "mbarrier.init.shared::cta.b64 [$0], $1;", "r,r" %i{{v}}_ba, %n{{v}} : (i32, i32) -> ()
