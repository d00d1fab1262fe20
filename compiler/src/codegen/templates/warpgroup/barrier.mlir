          %{{v}}_c8 = arith.constant 8 : index
          %{{v}}_k = arith.constant {{base}} : index
          %{{v}}_o = arith.muli {{stage}}, %{{v}}_c8 : index
          %{{v}}_o2 = arith.addi %{{v}}_o, %{{v}}_k : index
          %{{v}}_x = arith.addi %bars, %{{v}}_o2 : index
          %{{v}}_ba = arith.index_cast %{{v}}_x : index to i32
