%{{v}}_pc1 = arith.constant 1 : index
%{{v}}_par = arith.andi {{phase}}, %{{v}}_pc1 : index
%{{v}}_p32 = arith.index_cast %{{v}}_par : index to i32
llvm.inline_asm has_side_effects asm_dialect = att "{ .reg .pred p; LAB_WAIT: mbarrier.try_wait.parity.shared::cta.b64 p, [$0], $1; @!p bra LAB_WAIT; }", "r,r" %{{v}}_ba, %{{v}}_p32 : (i32, i32) -> ()
