        scf.if %{{t}}in {
          %{{t}}d = arith.divui %{{t}}w, %c4 : index
          %{{t}}u = arith.remui %{{t}}w, %c4 : index
          %{{t}}cr = arith.constant {{key_row_words}} : index
          %{{t}}r = arith.muli %{{t}}d, %{{t}}cr : index
          %{{t}}x = arith.addi %{{t}}r, %{{t}}u : index
          memref.store %cwk{{r}}, %ks[%{{t}}x] : memref<{{kw}}xvector<4xi32>, 3>
        }
