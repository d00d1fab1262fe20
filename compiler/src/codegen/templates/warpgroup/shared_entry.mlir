          %{{v}}_o = arith.muli {{index}}, %c4 : index
          %{{v}}_a = arith.addi %pre, %{{v}}_o : index
          %{{v}}_i = arith.index_cast %{{v}}_a : index to i64
          %{{v}}_p = llvm.inttoptr %{{v}}_i : i64 to !llvm.ptr<3>
