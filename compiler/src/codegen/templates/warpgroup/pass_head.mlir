        scf.for %pass = %c0 to %passes step %c1 {
          %r0 = arith.muli %pass, %cP : index
          %g0 = arith.muli %pass, %cNK : index
          %wgr0 = arith.addi %r0, %wgr : index
          %active = arith.cmpi ult, %wgr0, %cnt : index
          %accs = scf.for %kc = %c0 to %cNK step %c1 iter_args(%a = %acc0) -> ({{acc}}) {
            %gi = arith.addi %g0, %kc : index
