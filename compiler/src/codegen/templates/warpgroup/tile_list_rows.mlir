          %cRPRE = arith.constant {{row_sums}} : index
          %xr = arith.addi %x1, %cRPRE : index
{{rows_entry}}
          llvm.store %xc32, %xr_p : i32, !llvm.ptr<3>
