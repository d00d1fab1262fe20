        %l{{m}} = arith.constant {{m}} : i32
        %cm{{m}} = arith.constant {{m}} : index
        %q{{m}} = arith.addi %col, %cm{{m}} : index
        %g{{m}}h = llvm.extractelement %gx[%l{{m}} : i32] : vector<8xf32>
