        scf.if %{{t}}in {
          %{{t}}cv = arith.constant {{vpr}} : index
          %{{t}}key = arith.divui %{{t}}w, %{{t}}cv : index
          %{{t}}u = arith.remui %{{t}}w, %{{t}}cv : index
          %{{t}}cr = arith.constant {{value_row_words}} : index
          %{{t}}r = arith.muli %{{t}}key, %{{t}}cr : index
          %{{t}}x = arith.addi %{{t}}r, %{{t}}u : index
          memref.store %cwv{{r}}, %vs[%{{t}}x] : memref<{{vw}}xvector<4xi32>, 3>
        }
