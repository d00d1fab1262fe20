          %clast0 = arith.addi %g0, %cNK : index
          %clast1 = arith.subi %clast0, %c1 : index
          %clast = arith.remui %clast1, %cST : index
{{last}}
{{release}}
