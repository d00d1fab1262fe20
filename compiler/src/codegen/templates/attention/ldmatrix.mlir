        %{{out}}c = arith.constant {{off}} : index
        %{{out}}a = arith.addi {{base}}, %{{out}}c : index
        %{{out}}i = arith.index_cast %{{out}}a : index to i64
        %{{out}}p = llvm.inttoptr %{{out}}i : i64 to !llvm.ptr<3>
        %{{out}} = nvvm.ldmatrix %{{out}}p {num = 4 : i32, layout = #nvvm.mma_layout<col>, shape = #nvvm.ld_st_matrix_shape<m = 8, n = 8>, eltType = #nvvm.ld_st_matrix_elt_type<b16>} : (!llvm.ptr<3>) -> !llvm.struct<(i32, i32, i32, i32)>
