          %{{r}}c = arith.constant {{offset}} : index
          %{{r}}row = arith.addi %lgrp, %{{r}}c : index
          %{{r}}in = arith.cmpi ult, %{{r}}row, %rows : index
          scf.if %{{r}}in {
            %{{r}}l0 = arith.addi %lbase, %r0 : index
            %{{r}}l = arith.addi %{{r}}l0, %{{r}}row : index
            %{{r}}s32 = memref.load %lists[%{{r}}l] : memref<?xi32>
            %{{r}}s = arith.index_cast %{{r}}s32 : i32 to index
            %{{r}}base = arith.muli %{{r}}s, {{width}} : index
