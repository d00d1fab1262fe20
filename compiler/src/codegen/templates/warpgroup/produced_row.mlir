          %{{v}}_i4 = arith.constant {{row}} : index
          %{{v}}_row = arith.addi %prow, %{{v}}_i4 : index
          %{{v}}_rm = arith.remui %{{v}}_row, %c8 : index
          %{{v}}_pos = arith.xori %cj, %{{v}}_rm : index
          %{{v}}_posb = arith.muli %{{v}}_pos, %c16 : index
          %{{v}}_rb = arith.muli %{{v}}_row, %c128 : index
          %{{v}}_at = arith.addi %{{v}}_rb, %{{v}}_posb : index
