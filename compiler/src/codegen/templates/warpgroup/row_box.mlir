              %srow = arith.addi %rbase, {{r0}} : index
              %srow32 = arith.index_cast %srow : index to i32
              %sdst32 = arith.index_cast %psa : index to i32
{{copy}}
