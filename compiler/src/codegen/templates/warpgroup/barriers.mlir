        %cBAR = arith.constant {{stages_bytes}} : index
        %bars = arith.addi %smx, %cBAR : index
        %c256 = arith.constant 256 : index
        %t0 = arith.cmpi eq, %tid, %c0 : index
        scf.if %t0 {
{{inits}}
          llvm.inline_asm has_side_effects asm_dialect = att "fence.mbarrier_init.release.cluster;", "" : () -> ()
        }
