{{rows}}
          scf.for %pk = %c0 to %cNK step %c1 {
            %pg = arith.addi {{g0}}, %pk : index
            %ps = arith.remui %pg, %cST : index
            %pph = arith.divui %pg, %cST : index
            %reuse = arith.cmpi uge, %pg, %cST : index
            scf.if %reuse {
              %pph1 = arith.subi %pph, %c1 : index
{{wait_empty}}
            }
            %pgk = arith.muli %pk, %c128 : index
            %pss = arith.muli %ps, %cSB : index
            %psa = arith.addi %smx, %pss : index
            %psb = arith.addi %psa, %cRO : index
{{full}}
            scf.if %lead {
              llvm.inline_asm has_side_effects asm_dialect = att "{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [$0], $1; }", "r,r" %pf_ba, %cWB : (i32, i32) -> ()
              %tk = arith.muli %pk, %c64 : index
              %tk32 = arith.index_cast %tk : index to i32
{{boxes}}
            }
{{row_copies}}
{{rows_arrive}}
          }
