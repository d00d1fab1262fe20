          %{{v}}so = arith.constant {{offset}} : index
{{first_entry}}
          llvm.store %z32, %{{v}}s0_p : i32, !llvm.ptr<3>
          %{{v}}run = scf.for %y = %c0 to %cE step %c1 iter_args(%r = %z32) -> (i32) {
            %y1 = arith.addi %y, %c1 : index
            %y1o = arith.addi %y1, %{{v}}so : index
{{entry}}
            %yv = llvm.load %ys_p : !llvm.ptr<3> -> i32
            %r2 = arith.addi %r, %yv : i32
            llvm.store %r2, %ys_p : i32, !llvm.ptr<3>
            scf.yield %r2 : i32
          }
