          %cRB0 = arith.constant {{row_sums}} : index
          %rbe = arith.addi %e, %cRB0 : index
{{row_entry}}
          %rbase32 = llvm.load %rb_p : !llvm.ptr<3> -> i32
          %rbase = arith.index_cast %rbase32 : i32 to index
