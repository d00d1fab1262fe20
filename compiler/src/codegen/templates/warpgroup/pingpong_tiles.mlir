        %wgG = arith.muli %wg, %G : index
        %tfirst = arith.addi %bid, %wgG : index
        %G2 = arith.muli %G, %c2 : index
        scf.for %s = %tfirst to %total step %G2 {
