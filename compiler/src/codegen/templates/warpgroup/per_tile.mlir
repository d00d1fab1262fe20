{{prologue}}
        %cntup = arith.addi %cnt, %cPm1 : index
        %passes = arith.divui %cntup, %cP : index
        %total = arith.muli %passes, %cNK : index
        %acc0 = llvm.mlir.zero : {{acc}}
{{passes}}
      }
