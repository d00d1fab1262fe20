        %cj{{j}} = arith.constant {{j}} : index
        %col{{j}} = arith.addi %cbase, %cj{{j}} : index
        %colc{{j}} = arith.minui %col{{j}}, %nm1 : index
        %wr{{j}} = arith.addi %eN, %colc{{j}} : index
        %wb{{j}} = arith.muli %wr{{j}}, %kw : index
