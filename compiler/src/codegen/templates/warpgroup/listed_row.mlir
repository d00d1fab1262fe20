%{{v}}l = arith.addi %lbase, {{row}} : index
%{{v}}s32 = memref.load %lists[%{{v}}l] : memref<?xi32>
%{{v}}s = arith.index_cast %{{v}}s32 : i32 to index
