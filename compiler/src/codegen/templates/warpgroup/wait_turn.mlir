          %ctw3 = arith.constant 3 : index
          %itp = arith.addi %it, %ctw3 : index
          %tph = arith.divui %itp, %c2 : index
{{wait}}
